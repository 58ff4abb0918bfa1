//! The person detector's network through reidcam against tract's own ops and onnxruntime, side
//! by side in one process and one run.
//!
//! For each model × input size × threads: the network as `reidcam run` loads it (our kernels),
//! the same network with tract's own operators, and one onnxruntime session (all graph
//! optimisations, `threads` intra-op threads, subnormal weights zeroed as our kernels do), fed
//! the same input — a Market frame letterboxed by the detector itself — in turns of ~100 ms
//! (`common::in_turns`; on 2 threads a pause before each, while the last engine's idle threads
//! spin). Printed: median ms per frame of the network alone (the letterbox and
//! decoding are ours in every case) and the ratios to onnxruntime. Every row also checks the
//! answer on all 16 shared Market frames: the boxes after decoding and NMS must be the same
//! people as onnxruntime's (IoU ≥ 0.98 pairwise, scores within 0.01); the largest raw |Δ| of
//! the head is printed.
//!
//! ```text
//! cargo bench --bench detector_versus_onnxruntime -- [--model M.onnx@WxH]... [--threads 1,2]
//!     [--seconds 3] [--json out.json]
//! ```
//!
//! Default models: ours (`models/detector.onnx`) at 736×416 and 416×416, and the shared COCO
//! YOLOX-Nano (`$REIDCAM_SHARED/models/yolox_nano.onnx`, fixed at 416×416).

mod common;

use std::path::{Path, PathBuf};

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;
use serde::Serialize;

use common::median;
use reidcam::detect::{Detections, YoloxConfig, YoloxDetector, decode_yolox, iou};
use reidcam::embed::{Kernels, Network};
use reidcam::frame::{RgbImage, load_image};

struct Options {
    models: Vec<(PathBuf, u32, u32)>,
    common: common::Common,
}

fn options() -> Options {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut o = Options {
        models: Vec::new(),
        common: common::Common::default(),
    };
    for (flag, value) in common::flags() {
        match flag.as_str() {
            "--model" => {
                let parsed = value.rsplit_once('@').and_then(|(path, size)| {
                    let (w, h) = size.split_once('x')?;
                    Some((PathBuf::from(path), w.parse().ok()?, h.parse().ok()?))
                });
                o.models.push(parsed.unwrap_or_else(|| {
                    panic!(
                        "--model: expected PATH@WxH (e.g. models/detector.onnx@736x416), got {value:?}"
                    )
                }));
            }
            other if o.common.take(other, &value) => {}
            other => {
                panic!(
                    "unknown argument {other:?}; expected --model, --threads, --seconds, --json, --cpuid"
                )
            }
        }
    }
    if o.models.is_empty() {
        let shared = common::shared();
        o.models = vec![
            (repo.join("models/detector.onnx"), 736, 416),
            (repo.join("models/detector.onnx"), 416, 416),
            (shared.join("models/yolox_nano.onnx"), 416, 416),
        ];
    }
    o
}

/// The shared Market frames (1920×1080).
fn frames() -> Vec<RgbImage> {
    let dir = common::shared().join("data/market1501-frames/frames");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (set REIDCAM_SHARED)", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| load_image(f).expect("a shared frame decodes"))
        .collect()
}

#[derive(Serialize)]
struct Row {
    cpu: String,
    kernels: String,
    model: String,
    width: u32,
    height: u32,
    threads: usize,
    /// Median time of the network per frame, ms.
    reidcam_ms: f64,
    tract_ms: f64,
    onnxruntime_ms: f64,
    /// reidcam / onnxruntime (≤ 1: reidcam is at least as fast).
    ratio: f64,
    tract_ratio: f64,
    /// Over the 16 frames: boxes after NMS (reidcam's; onnxruntime's must match them), and the
    /// largest |Δ| of a raw head value to onnxruntime's.
    boxes: usize,
    max_delta: f64,
    /// Why the boxes differ from onnxruntime's, if they do.
    mismatch: Option<String>,
    rounds: usize,
}

/// Whether two frames' boxes are the same people: pairwise, in order (both are sorted by score).
fn same_boxes(ours: &Detections, theirs: &Detections) -> Result<(), String> {
    if ours.len() != theirs.len() {
        return Err(format!("{} boxes vs {}", ours.len(), theirs.len()));
    }
    for (a, b) in ours.iter().zip(theirs.iter()) {
        if iou(a.rect, b.rect) < 0.98 || (a.score - b.score).abs() > 0.01 {
            return Err(format!("{a:?} vs {b:?}"));
        }
    }
    Ok(())
}

fn compare(
    env: &ort::environment::Environment,
    (model, w, h): &(PathBuf, u32, u32),
    threads: usize,
    seconds: f64,
    frames: &[RgbImage],
) -> Row {
    let config = YoloxConfig {
        path: model.clone(),
        input_width: *w,
        input_height: *h,
        threads,
        ..YoloxConfig::default()
    };
    let mut ours = YoloxDetector::load(config).expect("the detector loads");
    let (w, h) = ours.network().input_size();
    let mut stock = Network::load_with_kernels(model, w, h, threads, Kernels::Tract)
        .expect("loads with our kernels, so with tract's");
    let bytes = std::fs::read(model).expect("the model loaded, so it reads");
    let (flushed, _) =
        reidcam::embed::flush_subnormal_weights(&bytes, &model.display().to_string())
            .expect("the model loaded, so it decodes");
    let session = || -> ort::Result<Session> {
        Session::builder(env)?
            .with_optimization_level(GraphOptimizationLevel::Level3)?
            .with_intra_threads(threads)?
            .with_inter_threads(1)?
            .commit_from_memory(&flushed)
    };
    let mut session =
        session().unwrap_or_else(|e| panic!("onnxruntime cannot load {}: {e}", model.display()));
    let shape = [1, 3, h as usize, w as usize];
    let run_ort = |session: &mut Session, input: &[f32]| -> Vec<f32> {
        let tensor = TensorRef::from_array_view((shape, input)).expect("input tensor");
        let outputs = session.run(ort::inputs![tensor]).expect("onnxruntime run");
        let (_, values) = outputs[0].try_extract_tensor::<f32>().expect("f32 output");
        values.to_vec()
    };

    // The answer on every frame.
    let decode = ours.decoding();
    let (mut boxes, mut max_delta, mut mismatch) = (0, 0.0f64, None);
    let mut candidates = Vec::with_capacity(512);
    let (mut mine, mut theirs) = (Detections::new(), Detections::new());
    for (i, frame) in frames.iter().enumerate() {
        let ratio = ours.letterbox(frame.view()).expect("letterbox");
        let input = ours.network_mut().input_mut().to_vec();
        let reference = run_ort(&mut session, &input);
        let got = ours.network_mut().run().expect("reidcam run");
        for (a, b) in got.iter().zip(&reference) {
            max_delta = max_delta.max(f64::from((a - b).abs()));
        }
        let size = (frame.width(), frame.height());
        decode_yolox(got, &decode, ratio, size, &mut candidates, &mut mine);
        decode_yolox(
            &reference,
            &decode,
            ratio,
            size,
            &mut candidates,
            &mut theirs,
        );
        boxes += mine.len();
        if let Err(why) = same_boxes(&mine, &theirs) {
            mismatch.get_or_insert(format!("frame {i}: {why}"));
        }
    }
    // The last frame's input for the timing.
    let input = ours.network_mut().input_mut().to_vec();
    stock.input_mut().copy_from_slice(&input);
    for _ in 0..2 {
        stock.run().expect("tract run");
        run_ort(&mut session, &input);
        ours.network_mut().run().expect("reidcam run");
    }
    let (mut times, rounds) =
        common::in_turns(3, seconds, common::settle(threads), |engine| match engine {
            0 => drop(ours.network_mut().run().expect("reidcam run")),
            1 => drop(stock.run().expect("tract run")),
            _ => drop(run_ort(&mut session, &input)),
        });
    let [t_ours, t_stock, t_ort] = &mut times[..] else {
        unreachable!("three engines")
    };
    let (reidcam_ms, tract_ms, onnxruntime_ms) = (median(t_ours), median(t_stock), median(t_ort));
    Row {
        cpu: reidcam::bench::cpu_model(),
        kernels: reidcam::bench::kernel_sets(),
        model: model
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        width: w,
        height: h,
        threads,
        reidcam_ms,
        tract_ms,
        onnxruntime_ms,
        ratio: reidcam_ms / onnxruntime_ms,
        tract_ratio: tract_ms / onnxruntime_ms,
        boxes,
        max_delta,
        mismatch,
        rounds,
    }
}

fn main() {
    let o = options();
    let env = common::onnxruntime_environment();
    let frames = frames();
    println!(
        "{:<22} {:>8} {:>7} {:>11} {:>9} {:>9} {:>9} {:>9} {:>6} {:>9}",
        "model",
        "size",
        "threads",
        "reidcam ms",
        "tract ms",
        "ort ms",
        "reid/ort",
        "tract/ort",
        "boxes",
        "max |Δ|"
    );
    let mut rows = Vec::new();
    for model in &o.models {
        if !model.0.exists() {
            eprintln!("{}: missing, skipped", model.0.display());
            continue;
        }
        for &threads in &o.common.threads {
            let row = compare(&env, model, threads, o.common.seconds, &frames);
            println!(
                "{:<22} {:>8} {:>7} {:>11.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>6} {:>9.2e}",
                row.model,
                format!("{}x{}", row.width, row.height),
                row.threads,
                row.reidcam_ms,
                row.tract_ms,
                row.onnxruntime_ms,
                row.ratio,
                row.tract_ratio,
                row.boxes,
                row.max_delta
            );
            rows.push(row);
        }
    }
    common::write_json(o.common.json.as_deref(), &rows);
    // Not a speed gate (these machines are noisy), but a wrong answer fails the run.
    let wrong: Vec<_> = rows.iter().filter(|r| r.mismatch.is_some()).collect();
    for row in &wrong {
        eprintln!(
            "{} {}x{} threads {}: boxes differ from onnxruntime's: {}",
            row.model,
            row.width,
            row.height,
            row.threads,
            row.mismatch.as_deref().unwrap_or_default()
        );
    }
    if !wrong.is_empty() || rows.is_empty() {
        std::process::exit(1);
    }
}
