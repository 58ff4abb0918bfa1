//! reidcam's inference path against onnxruntime, side by side in one process and one run.
//!
//! For each model × batch × threads: one `Embedder` with our kernels (what `reidcam` runs), one
//! with tract's own operators (`--kernels tract`, the stock baseline) and one onnxruntime session
//! (all graph optimisations, `threads` intra-op threads), fed the same preprocessed crops.
//! onnxruntime gets the model with its subnormal weights set to zero, as our kernels do at load
//! time (`embed::flush_subnormal_weights`; with torchreid's weights its NCHWc kernels are 4×
//! slower without that) — the ratio is against that, its faster run; its time on the file as
//! given is printed too. The engines run in turns of ~100 ms each (order rotating) until
//! `--seconds` have passed, so that machine noise hits all of them alike; medians per crop and
//! their ratios to onnxruntime are printed, with the smallest cosine between reidcam's and
//! onnxruntime's embeddings (a wrong kernel shows there, not only in the tests).
//!
//! ```text
//! cargo bench --bench versus_onnxruntime -- [--model M.onnx]... [--batch 1,8] [--threads 1,2]
//!     [--seconds 3] [--json out.json]
//! ```
//!
//! onnxruntime is loaded at run time from `$ORT_DYLIB_PATH`, else from the onnxruntime wheel in
//! `tools/.venv` (`tools/setup-python.sh`); the default models are the shared references
//! (`$REIDCAM_SHARED`, default `../shared`) and ours in `models/`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;
use serde::Serialize;

use reidcam::bench::{Percentiles, synthetic_crop};
use reidcam::embed::{Kernels, cosine};
use reidcam::{EmbedConfig, Embedder, ManifestChoice, Preprocessor};

struct Options {
    models: Vec<PathBuf>,
    batches: Vec<usize>,
    threads: Vec<usize>,
    seconds: f64,
    json: Option<PathBuf>,
}

fn list(value: &str, flag: &str) -> Vec<usize> {
    value
        .split(',')
        .map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{flag}: expected numbers like 1,8, got {value:?}"))
        })
        .collect()
}

fn options() -> Options {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut o = Options {
        models: Vec::new(),
        batches: vec![1, 8],
        threads: vec![1, 2],
        seconds: 3.0,
        json: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--model" => o.models.push(PathBuf::from(value())),
            "--batch" => o.batches = list(&value(), "--batch"),
            "--threads" => o.threads = list(&value(), "--threads"),
            "--seconds" => {
                o.seconds = value()
                    .parse()
                    .expect("--seconds: expected a number of seconds")
            }
            "--json" => o.json = Some(PathBuf::from(value())),
            // cargo bench passes --bench to harness-less benches.
            "--bench" => {}
            other => panic!(
                "unknown argument {other:?}; expected --model, --batch, --threads, --seconds, --json"
            ),
        }
    }
    if o.models.is_empty() {
        let shared = std::env::var_os("REIDCAM_SHARED")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo.join("../shared"));
        o.models = vec![
            shared.join("models/osnet_x0_25_msmt17.onnx"),
            shared.join("models/person-reidentification-retail-0267.onnx"),
            repo.join("models/default.onnx"),
            repo.join("models/default_int8.onnx"),
        ];
    }
    o
}

/// The onnxruntime shared library: `$ORT_DYLIB_PATH`, else the one in the tools venv's wheel.
fn onnxruntime_library() -> PathBuf {
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH") {
        return PathBuf::from(path);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/.venv/lib");
    let found = std::fs::read_dir(&venv).ok().and_then(|pythons| {
        pythons.flatten().find_map(|python| {
            let capi = python.path().join("site-packages/onnxruntime/capi");
            std::fs::read_dir(capi).ok()?.flatten().find_map(|f| {
                let name = f.file_name().to_string_lossy().into_owned();
                name.starts_with("libonnxruntime.so").then(|| f.path())
            })
        })
    });
    found.unwrap_or_else(|| {
        panic!(
            "no libonnxruntime.so under {}: run tools/setup-python.sh, or set ORT_DYLIB_PATH",
            venv.display()
        )
    })
}

#[derive(Serialize)]
struct Row {
    model: String,
    batch: usize,
    threads: usize,
    /// Median latency per crop, ms.
    reidcam_ms: f64,
    tract_ms: f64,
    onnxruntime_ms: f64,
    /// onnxruntime on the model file as given (subnormal weights kept).
    onnxruntime_as_is_ms: f64,
    /// Subnormal weights set to zero for onnxruntime.
    flushed_weights: usize,
    /// reidcam / onnxruntime (≤ 1: reidcam is at least as fast).
    ratio: f64,
    /// stock tract / onnxruntime.
    tract_ratio: f64,
    /// Smallest cosine between reidcam's and onnxruntime's embedding of the same crop.
    min_cosine: f64,
    /// Turns per engine.
    rounds: usize,
    /// What our kernels replaced.
    fused_pointwise: usize,
    fused_depthwise: usize,
}

fn median(samples: &mut [f64]) -> f64 {
    Percentiles::of(samples).p50
}

fn compare(
    env: &ort::environment::Environment,
    model: &Path,
    batch: usize,
    threads: usize,
    seconds: f64,
) -> Option<Row> {
    let load = |kernels| {
        let config = EmbedConfig {
            batch,
            threads,
            kernels,
        };
        Embedder::load(model, ManifestChoice::Sidecar, &config)
    };
    let mut ours = match load(Kernels::Reidcam) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("skipped: {e}");
            return None;
        }
    };
    let mut stock = load(Kernels::Tract).expect("loads with our kernels, so with tract's");
    let spec = ours.manifest().input.clone();
    let (h, w) = (spec.height as usize, spec.width as usize);

    // The same crops for everyone: a synthetic person-sized image per slot, shifted per slot.
    let mut pre = Preprocessor::with_max_source(&spec, 120, 260);
    let mut input = vec![0.0f32; batch * 3 * h * w];
    for slot in 0..batch {
        let crop = synthetic_crop(96 + 3 * slot as u32, 240 + 2 * slot as u32);
        let values = &mut input[slot * 3 * h * w..][..3 * h * w];
        pre.run(crop.view(), crop.bounds(), values)
            .expect("the crop fits");
        ours.input_slot(slot).copy_from_slice(values);
        stock.input_slot(slot).copy_from_slice(values);
    }

    let bytes = std::fs::read(model).expect("the model loaded, so it reads");
    let (flushed, flushed_weights) =
        reidcam::embed::flush_subnormal_weights(&bytes, &model.display().to_string())
            .expect("the model loaded, so it decodes");
    let session = |bytes: &[u8]| -> ort::Result<Session> {
        Session::builder(env)?
            .with_optimization_level(GraphOptimizationLevel::Level3)?
            .with_intra_threads(threads)?
            .with_inter_threads(1)?
            .commit_from_memory(bytes)
    };
    let open = |bytes: &[u8]| {
        session(bytes)
            .unwrap_or_else(|e| panic!("onnxruntime cannot load {}: {e}", model.display()))
    };
    let mut session = open(&flushed);
    let mut as_is = open(&bytes);
    let shape = [batch, 3, h, w];
    let run_ort = |session: &mut Session| -> Vec<f32> {
        let tensor = TensorRef::from_array_view((shape, input.as_slice())).expect("input tensor");
        let outputs = session.run(ort::inputs![tensor]).expect("onnxruntime run");
        let (_, values) = outputs[0].try_extract_tensor::<f32>().expect("f32 output");
        values.to_vec()
    };

    // Agreement first (also the warm-up).
    let reference = run_ort(&mut session);
    let dim = ours.dim();
    let embeddings = ours.run(batch).expect("reidcam run").as_flat().to_vec();
    let mut min_cosine = f64::INFINITY;
    for slot in 0..batch {
        let (ours, theirs) = (
            &embeddings[slot * dim..][..dim],
            &reference[slot * dim..][..dim],
        );
        min_cosine = min_cosine.min(f64::from(cosine(ours, theirs)));
    }
    for _ in 0..3 {
        stock.run(batch).expect("tract run");
        run_ort(&mut session);
        run_ort(&mut as_is);
        ours.run(batch).expect("reidcam run");
    }

    // Turns of ~100 ms per engine (at least 3 batches), rotating: short enough that machine noise
    // hits every engine, long enough that an engine's idle threads (onnxruntime's spin after a
    // run) only touch the first batch of the next turn; the medians drop those.
    let (mut t_ours, mut t_stock, mut t_ort) = (Vec::new(), Vec::new(), Vec::new());
    let mut t_as_is = Vec::new();
    let started = Instant::now();
    let mut round = 0;
    let turn_time = Duration::from_millis(100);
    while started.elapsed() < Duration::from_secs_f64(seconds) || round < 3 {
        for turn in 0..4 {
            let engine = (round + turn) % 4;
            let turn_started = Instant::now();
            let mut runs = 0;
            while runs < 3 || turn_started.elapsed() < turn_time {
                let t = Instant::now();
                match engine {
                    0 => drop(ours.run(batch).expect("reidcam run")),
                    1 => drop(stock.run(batch).expect("tract run")),
                    2 => drop(run_ort(&mut session)),
                    _ => drop(run_ort(&mut as_is)),
                }
                let ms = t.elapsed().as_secs_f64() * 1e3 / batch as f64;
                [&mut t_ours, &mut t_stock, &mut t_ort, &mut t_as_is][engine].push(ms);
                runs += 1;
            }
        }
        round += 1;
    }
    let (reidcam_ms, tract_ms, onnxruntime_ms) = (
        median(&mut t_ours),
        median(&mut t_stock),
        median(&mut t_ort),
    );
    let name = model
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Some(Row {
        model: name,
        batch,
        threads,
        reidcam_ms,
        tract_ms,
        onnxruntime_ms,
        onnxruntime_as_is_ms: median(&mut t_as_is),
        flushed_weights,
        ratio: reidcam_ms / onnxruntime_ms,
        tract_ratio: tract_ms / onnxruntime_ms,
        min_cosine,
        rounds: round,
        fused_pointwise: ours.rewritten().pointwise,
        fused_depthwise: ours.rewritten().depthwise,
    })
}

fn main() {
    let o = options();
    let library = onnxruntime_library();
    let env = ort::init_from(&library)
        .unwrap_or_else(|e| panic!("cannot load onnxruntime from {}: {e}", library.display()))
        .with_name("reidcam-bench")
        .build()
        .expect("onnxruntime environment");
    println!(
        "onnxruntime: {} ; reidcam kernels: {}",
        library.display(),
        Kernels::Reidcam
    );
    println!(
        "{:<44} {:>5} {:>7} {:>11} {:>11} {:>11} {:>11} {:>9} {:>9} {:>9}",
        "model",
        "batch",
        "threads",
        "reidcam ms",
        "tract ms",
        "ort ms",
        "ort as-is",
        "reid/ort",
        "tract/ort",
        "min cos"
    );
    let mut rows = Vec::new();
    for model in &o.models {
        if !model.exists() {
            eprintln!("{}: missing, skipped", model.display());
            continue;
        }
        for &batch in &o.batches {
            for &threads in &o.threads {
                let Some(row) = compare(&env, model, batch, threads, o.seconds) else {
                    continue;
                };
                println!(
                    "{:<44} {:>5} {:>7} {:>11.3} {:>11.3} {:>11.3} {:>11.3} {:>9.3} {:>9.3} {:>9.5}",
                    row.model,
                    row.batch,
                    row.threads,
                    row.reidcam_ms,
                    row.tract_ms,
                    row.onnxruntime_ms,
                    row.onnxruntime_as_is_ms,
                    row.ratio,
                    row.tract_ratio,
                    row.min_cosine
                );
                rows.push(row);
            }
        }
    }
    if let Some(path) = &o.json {
        let text = serde_json::to_string_pretty(&rows).expect("rows serialise");
        std::fs::write(path, text)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }
    // Not a speed gate (these machines are noisy), but a wrong answer fails the run: float
    // models agree to 1e-5, int8 ones (two engines' integer paths) to 1e-3.
    let wrong: Vec<&Row> = rows.iter().filter(|r| r.min_cosine < 0.999).collect();
    for row in &wrong {
        eprintln!(
            "{} batch {} threads {}: embeddings differ from onnxruntime's (min cosine {:.5})",
            row.model, row.batch, row.threads, row.min_cosine
        );
    }
    if !wrong.is_empty() || rows.is_empty() {
        std::process::exit(1);
    }
}
