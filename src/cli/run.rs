//! `reidcam run`: the configuration file (or built-in defaults) with command-line overrides on
//! top, signal handling (SIGINT/SIGTERM stop and save, SIGHUP reloads), systemd notification,
//! and the end-of-run summary.

use std::path::PathBuf;

use clap::Args;

use reidcam::config::{ConfigError, ConfigFile, RunConfig};
use reidcam::daemon::{self, Controls, Summary};

#[derive(Args, Clone)]
pub struct RunArgs {
    /// TOML configuration (see docs/daemon.md, "Configuration"); without it, built-in defaults.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Frame source: /dev/videoN, an image directory, .mjpeg/.y4m/.mp4/.264, or synthetic[:WxH].
    #[arg(long, value_name = "SOURCE")]
    source: Option<String>,
    /// Person detection: model (the default person detector, models/detector.onnx), motion,
    /// zones, or a YOLOX ONNX file.
    #[arg(long, value_name = "model|motion|zones|PATH.onnx")]
    detector: Option<String>,
    /// ReID embedding model (ONNX).
    #[arg(long, value_name = "MODEL.onnx")]
    model: Option<PathBuf>,
    /// Gallery file ('' for memory only).
    #[arg(long, value_name = "FILE")]
    gallery: Option<String>,
    /// Events output: '-' for stdout, or a file.
    #[arg(long, value_name = "FILE")]
    events: Option<String>,
    /// Stop after this many frames.
    #[arg(long, value_name = "N")]
    max_frames: Option<u64>,
    /// Camera name in events.
    #[arg(long)]
    camera: Option<String>,
    /// Board profile (GPIO for the LED and the enroll button).
    #[arg(long, value_name = "board/NAME.toml")]
    board: Option<String>,
    /// Pace replays at their frame rate.
    #[arg(long)]
    realtime: bool,
    /// Also write the summary as JSON to this file.
    #[arg(long, value_name = "FILE")]
    summary_json: Option<PathBuf>,
}

impl RunArgs {
    /// The file (or defaults) with the overrides applied, validated.
    fn load(&self) -> Result<RunConfig, ConfigError> {
        let (mut file, origin) = match &self.config {
            Some(path) => (ConfigFile::load(path)?, path.display().to_string()),
            None => (ConfigFile::default(), "built-in defaults".to_string()),
        };
        if let Some(s) = &self.source {
            file.source.path = s.clone();
        }
        if let Some(d) = &self.detector {
            match d.as_str() {
                "model" | "motion" | "zones" => file.detector.kind = d.clone(),
                path => {
                    file.detector.kind = "model".into();
                    file.detector.model.path = PathBuf::from(path);
                }
            }
        }
        if let Some(m) = &self.model {
            file.model.path = m.display().to_string();
        }
        if let Some(g) = &self.gallery {
            file.gallery.path = g.clone();
        }
        if let Some(e) = &self.events {
            file.events.output = e.clone();
        }
        if let Some(n) = self.max_frames {
            file.source.max_frames = n;
        }
        if let Some(c) = &self.camera {
            file.camera = c.clone();
        }
        if let Some(b) = &self.board {
            file.board = b.clone();
        }
        file.source.realtime |= self.realtime;
        file.validate(&origin)
    }
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let controls = Controls::default();
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    for signal in [SIGINT, SIGTERM] {
        // A second SIGINT/SIGTERM while stopping exits at once (status 1).
        signal_hook::flag::register_conditional_shutdown(signal, 1, controls.stop.clone())?;
        signal_hook::flag::register(signal, controls.stop.clone())?;
    }
    signal_hook::flag::register(SIGHUP, controls.reload.clone())?;

    let summary = daemon::run(
        || args.load(),
        &controls,
        daemon::sd_notify,
        daemon::watchdog_period(),
    )?;
    print_summary(&summary);
    if let Some(path) = &args.summary_json {
        std::fs::write(path, serde_json::to_string_pretty(&summary)? + "\n").map_err(|e| {
            anyhow::anyhow!("{}: cannot write the run summary: {e}", path.display())
        })?;
    }
    Ok(())
}

fn print_summary(s: &Summary) {
    let c = &s.counts;
    let m = &s.per_frame_ms;
    eprintln!("source: {}", s.source);
    eprintln!("detector: {}", s.detector);
    eprintln!("model: {}", s.model);
    eprintln!(
        "{} frames in {:.1} s ({:.1} fps), ended by {}",
        s.frames, s.seconds, s.fps, s.ended_by
    );
    eprintln!(
        "{} detections, {} tracks, {} crops embedded ({:.2} ms each), {} events",
        c.detections, c.tracks, c.crops_embedded, s.embed_per_crop_ms, c.events
    );
    if c.events_failed > 0 {
        eprintln!(
            "events not written: {} (the output refused them; the camera ran on)",
            c.events_failed
        );
    }
    eprintln!(
        "identities: {} new, {} known matches, {} ambiguous, {} enrolled; {} in the gallery",
        c.identities_new, c.matches_known, c.ambiguous, c.enrolled, s.identities
    );
    eprintln!(
        "per frame (ms): capture {:.2}, detect {:.2} (every {} frame(s), {} runs), track {:.2}, embed {:.2}, gallery {:.3}, events {:.3}, total {:.2}",
        m.capture,
        m.detect,
        s.detect_every,
        c.detector_runs,
        m.track,
        m.embed,
        m.gallery,
        m.events,
        m.total
    );
    let r = &c.crops_rejected;
    eprintln!(
        "crops not embedded: score {}, small {}, shape {}, edge {}, overlap {}, blur {}",
        r.score, r.small, r.shape, r.edge, r.overlap, r.blur
    );
    eprintln!(
        "memory: RSS {} KiB after {} frames, {} KiB at the end (max {} KiB); gallery saved {} time(s); camera reopened {} time(s)",
        s.rss_after_warmup_kib,
        s.warmup_frames,
        s.rss_end_kib,
        s.rss_max_kib,
        s.gallery_saves,
        s.camera_reopens
    );
    if s.bad_frames > 0 || s.damaged.is_some() {
        eprintln!(
            "replay: {} damaged frame(s) skipped{}",
            s.bad_frames,
            s.damaged
                .as_deref()
                .map(|d| format!("; ended at a damaged part: {d}"))
                .unwrap_or_default()
        );
    }
}
