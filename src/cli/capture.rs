//! `reidcam capture`: grab frames from a V4L2 device and, with a model, run the pipeline on a
//! fixed zone of each frame (crop → embed → in-memory gallery). For checking a camera, recording
//! raw frames, and the QEMU/vivid end-to-end test.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use serde::Serialize;

use reidcam::Preprocessor;
use reidcam::capture::v4l2::{Negotiated, V4l2Config, V4l2Source};
use reidcam::capture::{FrameSource, PixelFormat};
use reidcam::frame::Rect;
use reidcam::gallery::{Gallery, GalleryConfig, Observation, StorageFormat, Timestamp};

use crate::{KernelsArg, ModelArgs};

#[derive(Args)]
pub struct CaptureArgs {
    /// V4L2 device.
    #[arg(long, default_value = "/dev/video0", value_name = "PATH")]
    device: PathBuf,
    /// Pixel format: YUYV, NV12, RGB3 (RGB24) or MJPG.
    #[arg(long, default_value = "YUYV")]
    format: PixelFormat,
    /// Frame size, WIDTHxHEIGHT.
    #[arg(long, default_value = "640x480", value_parser = reidcam::capture::parse_size)]
    size: (u32, u32),
    /// Frames per second to ask for (default: the driver's).
    #[arg(long)]
    fps: Option<u32>,
    /// Frames to capture.
    #[arg(long, default_value_t = 30)]
    frames: usize,
    /// Set a device control first, NAME=VALUE (repeatable), e.g. 'OSD Text Mode=2' on vivid.
    #[arg(long = "control", value_parser = parse_control, value_name = "NAME=VALUE")]
    controls: Vec<(String, i64)>,
    /// Zone to embed, X,Y,W,H (default: the whole frame).
    #[arg(long, value_parser = parse_rect)]
    zone: Option<Rect>,
    /// ONNX embedding model: embed the zone of every frame and match it in a gallery.
    #[arg(long, value_name = "MODEL.onnx")]
    model: Option<PathBuf>,
    /// Manifest to use instead of the sidecar.
    #[arg(long, value_name = "MANIFEST.toml", requires = "model")]
    manifest: Option<PathBuf>,
    /// Write the first frame, as the driver delivered it, to this file.
    #[arg(long, value_name = "FILE")]
    save_raw: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn parse_control(s: &str) -> Result<(String, i64), String> {
    let (name, value) = s
        .rsplit_once('=')
        .ok_or_else(|| format!("{s:?}: expected NAME=VALUE"))?;
    let value = value
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: the value must be an integer"))?;
    Ok((name.trim().to_owned(), value))
}

fn parse_rect(s: &str) -> Result<Rect, String> {
    let parts: Vec<u32> = s
        .split(',')
        .map(|p| p.trim().parse::<u32>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("{s:?}: expected X,Y,W,H"))?;
    match parts[..] {
        [x, y, w, h] if w > 0 && h > 0 => Ok(Rect::new(x, y, w, h)),
        _ => Err(format!("{s:?}: expected X,Y,W,H with W and H > 0")),
    }
}

#[derive(Default, Serialize)]
struct Events {
    new: usize,
    known: usize,
    ambiguous: usize,
    unstored: usize,
}

#[derive(Serialize)]
struct Report {
    device: PathBuf,
    format: Negotiated,
    frames: usize,
    embedded: usize,
    seconds: f64,
    fps_measured: f64,
    sequence_first_last: [u64; 2],
    /// Frames the driver numbered but we never saw.
    dropped: u64,
    events: Events,
    zone: [u32; 4],
    first_embedding: Vec<f32>,
}

pub fn run(args: CaptureArgs) -> anyhow::Result<()> {
    if args.frames == 0 {
        bail!("--frames must be at least 1");
    }
    let (width, height) = args.size;
    let mut config = V4l2Config::new(&args.device, args.format, width, height);
    config.fps = args.fps;
    config.controls = args.controls.clone();
    let mut source = V4l2Source::open(&config)?;
    let zone = args.zone.unwrap_or(Rect::new(0, 0, width, height));
    if zone.x.saturating_add(zone.width) > width || zone.y.saturating_add(zone.height) > height {
        bail!("--zone {zone:?} does not fit in the {width}x{height} frame");
    }

    // Everything the per-frame loop uses is made here, before the first frame.
    let mut pipeline = match &args.model {
        Some(model) => {
            let model_args = ModelArgs {
                model: model.clone(),
                manifest: args.manifest.clone(),
                batch: 1,
                threads: 1,
                kernels: KernelsArg::Reidcam,
            };
            let embedder = model_args.load()?;
            let pre =
                Preprocessor::with_max_source(&embedder.manifest().input, zone.width, zone.height);
            let gallery = Gallery::with_budget(
                GalleryConfig {
                    dim: embedder.dim(),
                    exemplars: super::gallery::DEFAULT_EXEMPLARS,
                    format: StorageFormat::Int8,
                    budget_bytes: 1 << 20,
                },
                super::match_policy(embedder.manifest()),
            )?;
            Some((embedder, pre, gallery))
        }
        None => None,
    };

    let mut events = Events::default();
    let (mut first_seq, mut last_seq, mut embedded) = (0u64, 0u64, 0usize);
    let mut first_embedding = Vec::new();
    let started = Instant::now();
    for i in 0..args.frames {
        let frame = source.next_frame()?;
        if i == 0 {
            first_seq = frame.sequence;
            if let Some(path) = &args.save_raw {
                std::fs::write(path, frame.raw)
                    .with_context(|| format!("{}: cannot write", path.display()))?;
            }
        }
        last_seq = frame.sequence;
        if let Some((embedder, pre, gallery)) = pipeline.as_mut() {
            pre.run(frame.image, zone, embedder.input_slot(0))?;
            let out = embedder.run(1)?;
            let row = out.row(0);
            if i == 0 {
                first_embedding = row.to_vec();
            }
            // Gallery times are wall-clock (they are persisted); driver timestamps are monotonic.
            match gallery.observe(row, Timestamp::now())? {
                Observation::New { .. } => events.new += 1,
                Observation::Known { .. } => events.known += 1,
                Observation::Ambiguous { .. } => events.ambiguous += 1,
                Observation::Unstored { .. } => events.unstored += 1,
            }
            embedded += 1;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let report = Report {
        device: args.device.clone(),
        format: source.negotiated().clone(),
        frames: args.frames,
        embedded,
        seconds,
        fps_measured: args.frames as f64 / seconds,
        sequence_first_last: [first_seq, last_seq],
        dropped: (last_seq - first_seq + 1).saturating_sub(args.frames as u64),
        events,
        zone: [zone.x, zone.y, zone.width, zone.height],
        first_embedding,
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &report)?;
        writeln!(out)?;
    } else {
        writeln!(out, "{}", source.describe())?;
        writeln!(
            out,
            "{} frames in {:.2} s ({:.2} fps), sequence {}..{}, {} dropped",
            report.frames, seconds, report.fps_measured, first_seq, last_seq, report.dropped
        )?;
        if embedded > 0 {
            let e = &report.events;
            writeln!(
                out,
                "{embedded} zone crops embedded: {} new, {} known, {} ambiguous, {} unstored",
                e.new, e.known, e.ambiguous, e.unstored
            )?;
        }
    }
    Ok(())
}
