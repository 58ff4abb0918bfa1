//! reidcam's inference path against onnxruntime, side by side in one process and one run.
//!
//! For each model × batch × threads: one `Embedder` with our kernels (what `reidcam` runs), one
//! with tract's own operators (`--kernels tract`, the stock baseline) and one onnxruntime session
//! (all graph optimisations, `threads` intra-op threads), fed the same preprocessed crops.
//! onnxruntime gets the model with its subnormal weights set to zero, as our kernels do at load
//! time (`embed::flush_subnormal_weights`; with torchreid's weights its NCHWc kernels are 4×
//! slower without that) — the ratio is against that, its faster run; its time on the file as
//! given is printed too. The engines run in turns of ~100 ms each (order rotating) until
//! `--seconds` have passed, so that machine noise hits all of them alike (on 2 threads with a
//! pause before each turn: `common::in_turns`); medians per crop and
//! their ratios to onnxruntime are printed, with the smallest cosine between reidcam's and
//! onnxruntime's embeddings (a wrong kernel shows there, not only in the tests).
//!
//! An int8 model `X_int8.onnx` with its float `X.onnx` beside it gets a fifth engine in the
//! rotation, reidcam on the float model: the `int8/float` column (< 1: int8 is worth it). Its
//! embeddings are checked against the float model's: reidcam's int8 path must be at least as
//! close to float as onnxruntime's int8 run of the same file (less 0.01) — the two int8 engines
//! round in different places, so they are not compared with each other.
//!
//! ```text
//! cargo bench --bench versus_onnxruntime -- [--model M.onnx]... [--batch 1,8] [--threads 1,2]
//!     [--seconds 3] [--json out.json] [--cpuid avx2-only] [--baselines no]
//! ```
//!
//! `--baselines no` leaves out tract's own operators and onnxruntime on the file as given (their
//! columns print `-`): reidcam against onnxruntime only, as CI's AVX2-only turn runs it (tract's
//! own int8 operators take 0.3–1 s per crop, and each engine's turn costs the same 100 ms).
//!
//! int8 versions of the shared models, with their float models beside them, are what
//! `tools/int8_check.py --out DIR` leaves in DIR.
//!
//! onnxruntime is loaded at run time from `$ORT_DYLIB_PATH`, else from the onnxruntime wheel in
//! `tools/.venv` (`tools/setup-python.sh`); the default models are the shared references
//! (`$REIDCAM_SHARED`, default `../shared`) and ours in `models/`.

mod common;

use std::path::{Path, PathBuf};

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;
use serde::Serialize;

use common::median;
use reidcam::bench::synthetic_crop;
use reidcam::embed::{Kernels, cosine};
use reidcam::{EmbedConfig, Embedder, ManifestChoice, Preprocessor};

struct Options {
    models: Vec<PathBuf>,
    batches: Vec<usize>,
    /// tract's own operators and onnxruntime on the file as given, beside reidcam and
    /// onnxruntime (`--baselines yes|no`).
    baselines: bool,
    common: common::Common,
}

fn options() -> Options {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut o = Options {
        models: Vec::new(),
        batches: vec![1, 8],
        baselines: true,
        common: common::Common::default(),
    };
    for (flag, value) in common::flags() {
        match flag.as_str() {
            "--model" => o.models.push(PathBuf::from(value)),
            "--batch" => o.batches = common::list(&value, "--batch"),
            "--baselines" => {
                o.baselines = match value.as_str() {
                    "yes" => true,
                    "no" => false,
                    _ => panic!("--baselines: expected yes or no, got {value:?}"),
                }
            }
            other if o.common.take(other, &value) => {}
            other => panic!(
                "unknown argument {other:?}; expected --model, --batch, --baselines, --threads, --seconds, --json, --cpuid"
            ),
        }
    }
    if o.models.is_empty() {
        let shared = common::shared();
        o.models = vec![
            shared.join("models/osnet_x0_25_msmt17.onnx"),
            shared.join("models/person-reidentification-retail-0267.onnx"),
            repo.join("models/default.onnx"),
            repo.join("models/default_int8.onnx"),
        ];
    }
    o
}

#[derive(Serialize)]
struct Row {
    /// The CPU and reidcam's kernel sets (`bench::cpu_model`, `bench::kernel_sets`).
    cpu: String,
    kernels: String,
    model: String,
    batch: usize,
    threads: usize,
    /// Median latency per crop, ms (tract's own operators and onnxruntime on the file as given:
    /// none with `--baselines no`).
    reidcam_ms: f64,
    tract_ms: Option<f64>,
    onnxruntime_ms: f64,
    /// onnxruntime on the model file as given (subnormal weights kept).
    onnxruntime_as_is_ms: Option<f64>,
    /// Subnormal weights set to zero for onnxruntime.
    flushed_weights: usize,
    /// reidcam / onnxruntime (≤ 1: reidcam is at least as fast).
    ratio: f64,
    /// stock tract / onnxruntime.
    tract_ratio: Option<f64>,
    /// For an int8 model `X_int8.onnx` next to its float `X.onnx`: reidcam on the float model in
    /// the same rotation, and int8 / float (< 1: the int8 model is faster through reidcam).
    float_ms: Option<f64>,
    int8_vs_float: Option<f64>,
    /// For an int8 model: the smallest cosine of reidcam's int8 embedding, and of onnxruntime's
    /// int8 embedding, to reidcam's float one (which equals onnxruntime's float one).
    int8_to_float: Option<f64>,
    onnxruntime_int8_to_float: Option<f64>,
    /// Smallest cosine between reidcam's and onnxruntime's embedding of the same crop.
    min_cosine: f64,
    /// Turns per engine.
    rounds: usize,
    /// What our kernels replaced.
    fused_pointwise: usize,
    fused_depthwise: usize,
}

fn compare(
    env: &ort::environment::Environment,
    model: &Path,
    batch: usize,
    threads: usize,
    seconds: f64,
    baselines: bool,
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
    let mut stock =
        baselines.then(|| load(Kernels::Tract).expect("loads with our kernels, so with tract's"));
    let float_model = float_sibling(model);
    let mut float = float_model.as_ref().map(|path| {
        let config = EmbedConfig {
            batch,
            threads,
            kernels: Kernels::Reidcam,
        };
        Embedder::load(path, ManifestChoice::Sidecar, &config).expect("the float sibling loads")
    });
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
        if let Some(s) = stock.as_mut() {
            s.input_slot(slot).copy_from_slice(values);
        }
        if let Some(f) = float.as_mut() {
            f.input_slot(slot).copy_from_slice(values);
        }
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
    let mut as_is = baselines.then(|| open(&bytes));
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
    let min_cosine = smallest_cosine(&embeddings, &reference, dim);
    let float_embeddings = float
        .as_mut()
        .map(|f| f.run(batch).expect("float run").as_flat().to_vec());
    let int8_to_float = float_embeddings
        .as_ref()
        .map(|f| smallest_cosine(&embeddings, f, dim));
    let onnxruntime_int8_to_float = float_embeddings
        .as_ref()
        .map(|f| smallest_cosine(&reference, f, dim));
    // tract's own operators once (on int8 models 0.3–1 s per crop: see `common::in_turns`).
    if let Some(s) = stock.as_mut() {
        s.run(batch).expect("tract run");
    }
    for _ in 0..3 {
        run_ort(&mut session);
        if let Some(a) = as_is.as_mut() {
            run_ort(a);
        }
        ours.run(batch).expect("reidcam run");
    }

    // Turns of ~100 ms per engine (see `common::in_turns`) among those there are; times per
    // crop, by engine.
    const OURS: usize = 0;
    const STOCK: usize = 1;
    const ORT: usize = 2;
    const AS_IS: usize = 3;
    const FLOAT: usize = 4;
    let engines: Vec<usize> = [
        Some(OURS),
        stock.is_some().then_some(STOCK),
        Some(ORT),
        as_is.is_some().then_some(AS_IS),
        float.is_some().then_some(FLOAT),
    ]
    .into_iter()
    .flatten()
    .collect();
    let (turn_times, round) = common::in_turns(
        engines.len(),
        seconds,
        common::settle(threads),
        |turn| match engines[turn] {
            OURS => drop(ours.run(batch).expect("reidcam run")),
            STOCK => drop(
                stock
                    .as_mut()
                    .expect("tract's engine")
                    .run(batch)
                    .expect("tract run"),
            ),
            ORT => drop(run_ort(&mut session)),
            AS_IS => drop(run_ort(as_is.as_mut().expect("onnxruntime as is"))),
            _ => drop(
                float
                    .as_mut()
                    .expect("the float engine")
                    .run(batch)
                    .expect("float run"),
            ),
        },
    );
    let mut times = vec![Vec::new(); FLOAT + 1];
    for (&engine, t) in engines.iter().zip(turn_times) {
        times[engine] = t.into_iter().map(|t| t / batch as f64).collect();
    }
    let [t_ours, t_stock, t_ort, t_as_is, t_float] = &mut times[..] else {
        unreachable!("five engines")
    };
    let median_of = |t: &mut Vec<f64>| (!t.is_empty()).then(|| median(t));
    let (reidcam_ms, tract_ms, onnxruntime_ms) =
        (median(t_ours), median_of(t_stock), median(t_ort));
    let name = model
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Some(Row {
        cpu: reidcam::bench::cpu_model(),
        kernels: reidcam::bench::kernel_sets(),
        model: name,
        batch,
        threads,
        reidcam_ms,
        tract_ms,
        onnxruntime_ms,
        onnxruntime_as_is_ms: median_of(t_as_is),
        flushed_weights,
        ratio: reidcam_ms / onnxruntime_ms,
        tract_ratio: tract_ms.map(|t| t / onnxruntime_ms),
        float_ms: float.is_some().then(|| median(t_float)),
        int8_vs_float: float.is_some().then(|| reidcam_ms / median(t_float)),
        int8_to_float,
        onnxruntime_int8_to_float,
        min_cosine,
        rounds: round,
        fused_pointwise: ours.rewritten().pointwise,
        fused_depthwise: ours.rewritten().depthwise,
    })
}

/// The smallest cosine between the rows (of `dim`) of `a` and `b`.
fn smallest_cosine(a: &[f32], b: &[f32], dim: usize) -> f64 {
    a.chunks_exact(dim)
        .zip(b.chunks_exact(dim))
        .map(|(a, b)| f64::from(cosine(a, b)))
        .fold(f64::INFINITY, f64::min)
}

/// Why a row's embeddings are wrong, if they are: a float model's must agree with
/// onnxruntime's to 1e-3 (they do to 1e-5); an int8 model's must be as close to the float
/// model's as onnxruntime's int8 run is, less 0.01 (see the module docs).
fn wrong(row: &Row) -> Option<String> {
    match (row.int8_to_float, row.onnxruntime_int8_to_float) {
        (Some(ours), Some(theirs)) => (ours < theirs - 0.01).then(|| {
            format!(
                "int8 embeddings further from float than onnxruntime's int8 (min cosine {ours:.5} vs {theirs:.5})"
            )
        }),
        _ if is_int8(row) => Some("an int8 model without its float model beside it".into()),
        _ => (row.min_cosine < 0.999).then(|| {
            format!(
                "embeddings differ from onnxruntime's (min cosine {:.5})",
                row.min_cosine
            )
        }),
    }
}

/// `X.onnx` for a model `X_int8.onnx`, if it exists.
fn float_sibling(model: &Path) -> Option<PathBuf> {
    let name = model.file_name()?.to_str()?;
    let float = model.with_file_name(name.strip_suffix("_int8.onnx")?.to_owned() + ".onnx");
    float.exists().then_some(float)
}

/// `value` with `digits` decimals, or `-` for none.
fn fixed(value: Option<f64>, digits: usize) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

/// Whether a row is an int8 model's (by its name, `X_int8.onnx`).
fn is_int8(row: &Row) -> bool {
    row.model.ends_with("_int8.onnx")
}

fn main() {
    let o = options();
    let env = common::onnxruntime_environment();
    println!(
        "{:<46} {:>5} {:>7} {:>11} {:>11} {:>11} {:>11} {:>9} {:>9} {:>9} {:>11} {:>17}",
        "model",
        "batch",
        "threads",
        "reidcam ms",
        "tract ms",
        "ort ms",
        "ort as-is",
        "reid/ort",
        "tract/ort",
        "min cos",
        "int8/float",
        "to float reid/ort"
    );
    let mut rows = Vec::new();
    for model in &o.models {
        if !model.exists() {
            eprintln!("{}: missing, skipped", model.display());
            continue;
        }
        for &batch in &o.batches {
            for &threads in &o.common.threads {
                let Some(row) = compare(&env, model, batch, threads, o.common.seconds, o.baselines)
                else {
                    continue;
                };
                println!(
                    "{:<46} {:>5} {:>7} {:>11.3} {:>11} {:>11.3} {:>11} {:>9.3} {:>9} {:>9.5} {:>11} {:>17}",
                    row.model,
                    row.batch,
                    row.threads,
                    row.reidcam_ms,
                    fixed(row.tract_ms, 3),
                    row.onnxruntime_ms,
                    fixed(row.onnxruntime_as_is_ms, 3),
                    row.ratio,
                    fixed(row.tract_ratio, 3),
                    row.min_cosine,
                    fixed(row.int8_vs_float, 3),
                    row.int8_to_float
                        .zip(row.onnxruntime_int8_to_float)
                        .map(|(a, b)| format!("{a:.4}/{b:.4}"))
                        .unwrap_or_else(|| "-".into())
                );
                rows.push(row);
            }
        }
    }
    common::write_json(o.common.json.as_deref(), &rows);
    // Not a speed gate (these machines are noisy), but a wrong answer fails the run.
    let mut failed = 0;
    for row in &rows {
        if let Some(why) = wrong(row) {
            eprintln!(
                "{} batch {} threads {}: {why}",
                row.model, row.batch, row.threads
            );
            failed += 1;
        }
    }
    if failed > 0 || rows.is_empty() {
        std::process::exit(1);
    }
}
