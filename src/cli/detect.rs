//! `reidcam detect`: the person detector alone on still images — one JSON line per image with
//! its boxes — to check what a detector finds (`tools/detector_check.py` compares it with a
//! reference), and its time per image.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;

use reidcam::config::find_model;
use reidcam::detect::{Detections, Detector, YoloxConfig, YoloxDetector};

#[derive(Args)]
pub struct DetectArgs {
    /// Detector ONNX (a sidecar manifest says how to feed it); default: models/detector.onnx.
    #[arg(long, value_name = "D.onnx")]
    detector: Option<PathBuf>,
    /// Network input WxH for free-size models (multiples of 32); default: the manifest's.
    #[arg(long, value_name = "WxH")]
    size: Option<String>,
    /// Least score (objectness × person).
    #[arg(long, default_value_t = 0.5)]
    score: f32,
    /// Threads the network's largest layers are shared between (as `[detector] threads`).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    threads: u16,
    /// Then time the network per operator kind on the last image, on stderr.
    #[arg(long)]
    profile: bool,
    /// Runs `--profile` times the network over.
    #[arg(long, default_value_t = 20, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    profile_runs: u32,
    /// Images (JPEG/PNG), or directories of them (name order).
    #[arg(required = true, value_name = "IMAGE|DIR")]
    inputs: Vec<PathBuf>,
}

pub fn run(args: DetectArgs) -> anyhow::Result<()> {
    let mut config = YoloxConfig {
        path: match args.detector {
            Some(p) => p,
            None => find_model("detector.onnx")
                .context("models/detector.onnx not found: name one with --detector")?,
        },
        score_threshold: args.score,
        min_height: 0,
        threads: usize::from(args.threads),
        ..YoloxConfig::default()
    };
    if let Some(size) = &args.size {
        let (w, h) = size
            .split_once('x')
            .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
            .with_context(|| format!("--size {size:?}: expected WxH, e.g. 736x416"))?;
        (config.input_width, config.input_height) = (w, h);
    }
    let mut detector = YoloxDetector::load(config)?;
    eprintln!("detector: {}", detector.describe());
    let mut files = Vec::new();
    for input in &args.inputs {
        if input.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(input)
                .with_context(|| format!("{}: cannot list", input.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                        matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png")
                    })
                })
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(input.clone());
        }
    }
    let mut out = Detections::new();
    let mut total = std::time::Duration::ZERO;
    for file in &files {
        let image = reidcam::frame::load_image(file)?;
        let started = Instant::now();
        detector.detect(image.view(), &mut out)?;
        total += started.elapsed();
        let boxes: Vec<_> = out
            .iter()
            .map(|d| serde_json::json!([d.rect.x, d.rect.y, d.rect.width, d.rect.height, d.score]))
            .collect();
        out!(
            "{}",
            serde_json::json!({"file": file.display().to_string(), "boxes": boxes})
        );
    }
    if !files.is_empty() {
        eprintln!(
            "{} images, {:.1} ms per image (letterbox, network, decoding)",
            files.len(),
            total.as_secs_f64() * 1e3 / files.len() as f64
        );
    }
    if args.profile {
        eprintln!(
            "{}",
            reidcam::embed::profile_table(&detector.profile(args.profile_runs as usize)?)
        );
    }
    Ok(())
}
