//! The embedding engine: the only module that touches tract.
//!
//! [`Embedder::load`] reads an ONNX model and its manifest (sidecar `foo.toml`, an explicit one,
//! or torchreid defaults when there is none), checks that they agree, fixes the input fact to
//! `[1, 3, H, W]` f32 (or the batch a model fixes), declutters, translates a quantised model
//! (`int8`), replaces the layers our kernels cover with our own tract ops (`ops`, `kernels`;
//! [`Kernels::Tract`] keeps tract's), optimises once and spawns one reusable tract state per
//! crop of the batch (several crops run side by side when `threads > 1`). Per batch, callers
//! write crops into [`Embedder::input_slot`] (see `preprocess`) and call [`Embedder::run`],
//! which returns L2-normalised embeddings borrowed from a buffer owned by the embedder.
//!
//! Allocation: the input tensors, the output buffer, the tract states and our kernels' scratch
//! (thread-local, grown once) are made once; our ops recycle their output tensors from run to run
//! (`ops::with_output`). A model whose every node is one of our ops — OSNet, our default model,
//! their int8 versions — embeds without allocating once warm (`tests/integration/kernels.rs`
//! counts). tract's own ops still allocate their outputs (it has no arena on CPU); the thread
//! pool (`spin_pool`) allocates nothing per job.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

use crate::manifest::{self, ManifestError, ModelManifest};

/// How to build an embedder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmbedConfig {
    /// Crops per inference (the input's N). Default 1.
    pub batch: usize,
    /// Threads. Default 1. More run the crops of a batch side by side (see [`Embedder`]).
    pub threads: usize,
    /// Which kernels run the layers ours cover. Default [`Kernels::Reidcam`].
    pub kernels: Kernels,
}

impl Default for EmbedConfig {
    fn default() -> Self {
        Self {
            batch: 1,
            threads: 1,
            kernels: Kernels::Reidcam,
        }
    }
}

/// Who runs the convolutions (with their bias, residual add and ReLU), pools and channel gates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Kernels {
    /// Our fused kernels (`embed::kernels`) for the widest instruction set this CPU has; tract
    /// runs everything else.
    #[default]
    Reidcam,
    /// tract's own operators for the whole graph (the baseline, or a fallback).
    Tract,
}

impl std::fmt::Display for Kernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kernels::Reidcam => write!(f, "reidcam ({})", Isa::detect()),
            Kernels::Tract => f.write_str("tract"),
        }
    }
}

/// Which manifest describes the model.
#[derive(Clone, Debug, Default)]
pub enum ManifestChoice {
    /// `foo.toml` next to `foo.onnx` if it exists, else torchreid defaults (with a warning).
    #[default]
    Sidecar,
    /// This manifest file.
    File(PathBuf),
    /// This manifest, already parsed.
    Given(ModelManifest),
    /// Torchreid defaults and the model's own input/output names and shapes.
    Inspect,
}

/// Why a model cannot be used. Each message names the model (or manifest) file.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("{}: cannot read model: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{model}: not a loadable ONNX model: {reason}")]
    NotOnnx { model: String, reason: String },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{model}: {problem}; expected one NCHW f32 image input [N,3,H,W]")]
    NotImageInput { model: String, problem: String },
    #[error(
        "{model}: manifest {manifest} contradicts the model: {field} is {declared} in the manifest but {actual} in the model"
    )]
    ManifestMismatch {
        model: String,
        manifest: String,
        field: &'static str,
        declared: String,
        actual: String,
    },
    #[error("{model}: {problem}")]
    Unsupported { model: String, problem: String },
    #[error("{model}: tract cannot prepare the model: {reason}")]
    Optimise { model: String, reason: String },
    #[error("{model}: inference failed: {reason}")]
    Run { model: String, reason: String },
}

mod int8;
pub mod kernels;
mod network;
mod ops;
mod profile;
mod spin_pool;
mod vector;

pub use kernels::Isa;
pub use kernels::qpointwise::Dot;
pub use network::Network;
pub use ops::Rewritten;
pub use profile::{OpTime, flush_subnormal_weights, profile_table};
pub use spin_pool::SpinPool;
use vector::l2_normalise;
pub use vector::{Embedding, Embeddings, cosine, dot};

type Plan = Arc<TypedRunnableModel>;

/// Declutters `typed`, puts our kernels in (unless told not to), optimises and plans it. tract
/// runs the plan on the calling thread; threads come from [`KernelPool`] and [`Embedder`]'s parts.
fn prepare(typed: TypedModel, kernels: Kernels) -> TractResult<(Plan, Rewritten)> {
    let mut model = typed;
    let mut rewritten = match kernels {
        Kernels::Reidcam => {
            // Declutter (constant folding, 1×1 convolutions into EinSum, batch-norm folding)
            // but keep the layout: tract's axis-change pass moves channels last on aarch64 for
            // its own depthwise kernels, and our ops work on NCHW planes.
            let mut declutter = tract_onnx::tract_core::optim::Optimizer::declutter();
            declutter
                .passes
                .retain(|pass| format!("{pass:?}") != "ChangeAxes");
            declutter.optimize(&mut model)?;
            let isa = Isa::detect();
            let mut translated = int8::Translated::default();
            let dot = Dot::detect();
            if int8::is_quantised(&model) {
                if dot.is_none() {
                    log::info!(
                        "no int8 product instructions on this CPU (AVX2, AVX-512 VNNI, aarch64 \
                         NEON): the quantised model runs in float from its dequantised \
                         weights, about as fast as the float model"
                    );
                }
                match int8::float_edges(&model, dot)? {
                    Some((float, done)) => {
                        model = float;
                        translated = done;
                    }
                    None => log::warn!(
                        "the quantised model has parts reidcam's int8 path does not know: \
                         tract runs it as loaded (slowly)"
                    ),
                }
            }
            let mut rewritten = ops::use_reidcam_kernels(&mut model, isa)?;
            rewritten.int8_pointwise = translated.int8_pointwise;
            rewritten.int8_conv = translated.int8_conv;
            rewritten.dequantised = translated.dequantised;
            rewritten.quantised = translated != int8::Translated::default();
            rewritten.dot = dot.filter(|_| rewritten.quantised);
            rewritten
        }
        Kernels::Tract => Rewritten::default(),
    };
    let mut optimized = model.into_optimized()?;
    if kernels == Kernels::Reidcam {
        rewritten.recycled = ops::recycle_outputs(&mut optimized)?;
    }
    Ok((optimized.into_runnable()?, rewritten))
}

/// The extra threads of a model run with `threads > 1`: `threads - 1` pool workers, the calling
/// thread being the last one. The embedder runs whole parts of a batch on them (see
/// [`Embedder`]); a single crop and a [`Network`] share their largest layers
/// (`ops::split_units`). tract's own ops stay on the calling thread: with tract's multithreaded
/// executor every small op is split, and OSNet x0.25 ran 30% slower on 2 threads than on 1 on
/// the 2-core CI machine.
#[derive(Clone, Debug)]
struct KernelPool(Option<Arc<SpinPool>>);

impl KernelPool {
    fn new(threads: usize, label: &str) -> Result<Self, EmbedError> {
        if threads < 2 {
            return Ok(KernelPool(None));
        }
        // As the config's bound: a thousand spinning workers on two cores made `reidcam bench
        // --threads 1000` run no crop in 30 s.
        if threads > crate::config::MAX_THREADS {
            return Err(EmbedError::Unsupported {
                model: label.to_owned(),
                problem: format!(
                    "threads ({threads}) must be at most {}",
                    crate::config::MAX_THREADS
                ),
            });
        }
        let cores = std::thread::available_parallelism().map_or(threads, usize::from);
        if threads > cores {
            log::warn!(
                "{label}: {threads} threads on {cores} cores: the workers spin while they wait \
                 for work, so more of them than cores take time from each other (one crop of \
                 our default model, 2 cores: 8 threads took 2.6× the p50 of 2)"
            );
        }
        SpinPool::new(threads - 1, "reidcam-embed")
            .map(|pool| KernelPool(Some(Arc::new(pool))))
            .map_err(|e| EmbedError::Unsupported {
                model: label.to_owned(),
                problem: format!("cannot start {threads} threads: {e}"),
            })
    }
}

/// Drops the shapes an export declared for intermediate and output values (ONNX value_info):
/// a symbolic batch or size there cannot unify with the fixed input; tract derives them again.
fn forget_declared_shapes(model: &mut InferenceModel) -> TractResult<()> {
    let inputs: Vec<OutletId> = model
        .input_outlets()
        .map(<[OutletId]>::to_vec)
        .unwrap_or_default();
    for node in 0..model.nodes().len() {
        for slot in 0..model.node(node).outputs.len() {
            let outlet = OutletId::new(node, slot);
            if !inputs.contains(&outlet) {
                let fact = model.outlet_fact_mut(outlet)?;
                if fact.value.concretize().is_none() {
                    *fact = InferenceFact::default();
                }
            }
        }
    }
    Ok(())
}

/// One part of a batch: its own tract state and input, run on its own thread when there are
/// several.
struct Part {
    batch: usize,
    state: TypedSimpleState,
    input: Arc<Tensor>,
    /// Why the last run failed, if it did (set on the part's thread).
    error: Option<String>,
}

impl Part {
    /// Runs the part and copies its output (`batch × dim` values) into `out`.
    fn run(&mut self, out: &mut [f32]) {
        let input = TValue::from_const(Arc::clone(&self.input));
        let result = self.state.run(tvec![input]).and_then(|outputs| {
            let values = outputs[0].try_as_plain_ram()?;
            let values = values.as_slice::<f32>()?;
            out.copy_from_slice(&values[..out.len()]);
            Ok(())
        });
        self.error = result.err().map(|e| reason_line(&e));
    }
}

/// A loaded, optimised model with its reusable states and buffers.
///
/// Each crop of a batch is a part with its own tract state of batch 1 (a model that fixes its
/// batch: one part). With `threads > 1` the parts of a batch run side by side, each taken by
/// the next free thread: one fork and join per batch instead of one per layer. A single crop
/// runs on the calling thread and shares its largest layers with the pool (`ops::split_units`).
pub struct Embedder {
    label: String,
    manifest: ModelManifest,
    batch: usize,
    slot_len: usize,
    rewritten: Rewritten,
    parts: Vec<Part>,
    pool: KernelPool,
    /// The least work of a layer a single crop shares with the pool (`ops::crop_work`).
    crop_work: usize,
    output: Vec<f32>,
    load_time: Duration,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("model", &self.label)
            .field("batch", &self.batch)
            .field("dim", &self.manifest.output.dim)
            .finish()
    }
}

impl Embedder {
    /// Loads the ONNX model at `path` with the chosen manifest.
    pub fn load(
        path: &Path,
        manifest: ManifestChoice,
        config: &EmbedConfig,
    ) -> Result<Self, EmbedError> {
        let started = Instant::now();
        let bytes = std::fs::read(path).map_err(|source| EmbedError::Read {
            path: path.to_owned(),
            source,
        })?;
        let (manifest, manifest_label) = match manifest {
            ManifestChoice::Sidecar => {
                let sidecar = manifest::sidecar_path(path);
                if sidecar.exists() {
                    let m = ModelManifest::from_path(&sidecar)?;
                    (Some(m), sidecar.display().to_string())
                } else {
                    (None, String::new())
                }
            }
            ManifestChoice::File(file) => {
                let m = ModelManifest::from_path(&file)?;
                (Some(m), file.display().to_string())
            }
            ManifestChoice::Given(m) => (Some(m), "(given)".to_owned()),
            ManifestChoice::Inspect => (None, String::new()),
        };
        let label = path.display().to_string();
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        let mut embedder = Self::build(&bytes, label, &stem, manifest, &manifest_label, config)?;
        embedder.load_time = started.elapsed();
        Ok(embedder)
    }

    /// Loads a model from memory. `label` names it in errors and logs; without a manifest it gets
    /// torchreid defaults, with the model named after `label`.
    pub fn from_bytes(
        bytes: &[u8],
        label: &str,
        manifest: Option<ModelManifest>,
        config: &EmbedConfig,
    ) -> Result<Self, EmbedError> {
        let started = Instant::now();
        let mut embedder =
            Self::build(bytes, label.to_owned(), label, manifest, "(given)", config)?;
        embedder.load_time = started.elapsed();
        Ok(embedder)
    }

    fn build(
        bytes: &[u8],
        label: String,
        default_name: &str,
        manifest: Option<ModelManifest>,
        manifest_label: &str,
        config: &EmbedConfig,
    ) -> Result<Self, EmbedError> {
        if config.batch == 0 || config.threads == 0 {
            return Err(EmbedError::Unsupported {
                model: label,
                problem: format!(
                    "batch ({}) and threads ({}) must be at least 1",
                    config.batch, config.threads
                ),
            });
        }
        let err = |reason: TractError| reason_line(&reason);
        let mut model = tract_onnx::onnx()
            .model_for_read(&mut Cursor::new(bytes))
            .map_err(|e| EmbedError::NotOnnx {
                model: label.clone(),
                reason: err(e),
            })?;

        let onnx_inputs = outlet_names(&model, model.input_outlets().unwrap_or(&[]));
        let onnx_outputs = outlet_names(&model, model.output_outlets().unwrap_or(&[]));
        let mismatch = |field, declared: String, actual: String| EmbedError::ManifestMismatch {
            model: label.clone(),
            manifest: manifest_label.to_owned(),
            field,
            declared,
            actual,
        };
        // The position of the manifest's `wanted` name among the graph's `names`.
        let named = |names: &[String], wanted: &str, field, kind: &str| {
            names.iter().position(|n| n == wanted).ok_or_else(|| {
                mismatch(
                    field,
                    format!("{wanted:?}"),
                    format!("absent ({kind}: {names:?})"),
                )
            })
        };

        // Which input carries the image.
        let input_ix = match &manifest {
            Some(m) => named(&onnx_inputs, &m.input.name, "input.name", "inputs")?,
            None => match onnx_inputs.len() {
                1 => 0,
                n => {
                    return Err(EmbedError::NotImageInput {
                        model: label,
                        problem: format!(
                            "{n} graph inputs {onnx_inputs:?} and no manifest to pick one"
                        ),
                    });
                }
            },
        };
        if onnx_inputs.len() != 1 {
            return Err(EmbedError::NotImageInput {
                model: label,
                problem: format!("{} graph inputs {onnx_inputs:?}", onnx_inputs.len()),
            });
        }

        // What the model says about its input: rank 4, 3 channels, f32, maybe fixed H, W, N.
        let fact = model
            .input_fact(input_ix)
            .map_err(|e| EmbedError::NotOnnx {
                model: label.clone(),
                reason: err(e),
            })?;
        if let Some(dt) = fact.datum_type.concretize()
            && dt != f32::datum_type()
        {
            return Err(EmbedError::NotImageInput {
                model: label,
                problem: format!("input {:?} is {dt:?}, not f32", onnx_inputs[input_ix]),
            });
        }
        let dims: Option<Vec<Option<i64>>> = fact.shape.rank().concretize().map(|_| {
            fact.shape
                .dims()
                .map(|d| d.concretize().and_then(|d| d.to_i64().ok()))
                .collect()
        });
        if let Some(dims) = &dims {
            let shape = dims
                .iter()
                .map(|d| d.map_or("?".to_string(), |v| v.to_string()))
                .collect::<Vec<_>>()
                .join(",");
            if dims.len() != 4 {
                return Err(EmbedError::NotImageInput {
                    model: label,
                    problem: format!(
                        "input {:?} has shape [{shape}] (rank {})",
                        onnx_inputs[input_ix],
                        dims.len()
                    ),
                });
            }
            if let Some(c) = dims[1]
                && c != 3
            {
                return Err(EmbedError::NotImageInput {
                    model: label,
                    problem: format!(
                        "input {:?} has shape [{shape}] with {c} channels",
                        onnx_inputs[input_ix]
                    ),
                });
            }
            if let Some(n) = dims[0]
                && n != config.batch as i64
            {
                return Err(EmbedError::Unsupported {
                    model: label,
                    problem: format!(
                        "the model's batch size is fixed at {n}; configured batch is {} (use batch {n})",
                        config.batch
                    ),
                });
            }
        }
        let model_side = |i: usize| dims.as_ref().and_then(|d| d[i]);
        let (height, width) = match &manifest {
            Some(m) => {
                for (field, declared, i) in [
                    ("input.height", m.input.height, 2),
                    ("input.width", m.input.width, 3),
                ] {
                    if let Some(actual) = model_side(i)
                        && actual != i64::from(declared)
                    {
                        return Err(mismatch(field, declared.to_string(), actual.to_string()));
                    }
                }
                (m.input.height, m.input.width)
            }
            None => (
                model_side(2).map_or(manifest::TORCHREID_HEIGHT, |h| h as u32),
                model_side(3).map_or(manifest::TORCHREID_WIDTH, |w| w as u32),
            ),
        };

        // Which output carries the embedding: the manifest's, or the only (else first) one.
        let output_outlets = model
            .output_outlets()
            .map(<[OutletId]>::to_vec)
            .unwrap_or_default();
        let output_ix = match &manifest {
            Some(m) => named(&onnx_outputs, &m.output.name, "output.name", "outputs")?,
            None => {
                if onnx_outputs.len() > 1 {
                    log::warn!(
                        "{label}: outputs {onnx_outputs:?} and no manifest: using the first"
                    );
                }
                0
            }
        };
        let Some(&output_outlet) = output_outlets.get(output_ix) else {
            return Err(EmbedError::Unsupported {
                model: label,
                problem: "the graph has no output".into(),
            });
        };
        model
            .select_output_outlets(&[output_outlet])
            .map_err(|e| EmbedError::NotOnnx {
                model: label.clone(),
                reason: err(e),
            })?;
        let output_name = onnx_outputs[output_ix].clone();

        // Exports may declare intermediate and output shapes (ONNX value_info) with a symbolic
        // batch that cannot unify with a fixed one; tract derives them again from the input.
        forget_declared_shapes(&mut model).map_err(|e| EmbedError::NotOnnx {
            model: label.clone(),
            reason: err(e),
        })?;

        // One part (a tract state) per crop, each of batch 1: with our kernels a crop costs
        // less alone than inside a batch of 8, whose intermediate tensors leave the cache (OSNet
        // x0.25, one thread: 1.7 vs 2.7 ms a crop at best); and parts of one crop share the
        // threads evenly whatever the batch. A model that fixes its batch runs as one part.
        let fixed = dims.as_ref().is_some_and(|d| d[0].is_some());
        let part_batch = if fixed { config.batch } else { 1 };
        let part_count = config.batch / part_batch;
        let optimise = |e: TractError| EmbedError::Optimise {
            model: label.clone(),
            reason: err(e),
        };
        let typed_for = |batch: usize| -> Result<TypedModel, EmbedError> {
            let shape = [batch, 3, height as usize, width as usize];
            model
                .clone()
                .with_input_fact(input_ix, f32::fact(shape).into())
                .map_err(|e| EmbedError::NotImageInput {
                    model: label.clone(),
                    problem: err(e),
                })?
                .into_typed()
                .map_err(optimise)
        };
        let typed = typed_for(part_batch)?;

        // The output must be [N, D] (or [N, D, 1, 1]) f32.
        let out_fact = typed.output_fact(0).map_err(optimise)?.clone();
        let out_dims: Option<Vec<usize>> = out_fact.shape.as_concrete().map(|s| s.to_vec());
        let dim = match out_dims.as_deref() {
            Some([n, rest @ ..]) if *n == part_batch && !rest.is_empty() => {
                rest.iter().product::<usize>()
            }
            _ => {
                return Err(EmbedError::Unsupported {
                    model: label,
                    problem: format!(
                        "output {output_name:?} has shape {:?}, expected [{part_batch}, D]",
                        out_fact.shape
                    ),
                });
            }
        };
        if out_fact.datum_type != f32::datum_type() {
            return Err(EmbedError::Unsupported {
                model: label,
                problem: format!(
                    "output {output_name:?} is {:?}, expected f32",
                    out_fact.datum_type
                ),
            });
        }
        let manifest = match manifest {
            Some(m) => {
                if m.output.dim != dim {
                    return Err(mismatch(
                        "output.dim",
                        m.output.dim.to_string(),
                        dim.to_string(),
                    ));
                }
                m
            }
            None => {
                log::warn!(
                    "{label}: no manifest; using torchreid defaults (RGB, /255, ImageNet mean/std) at {height}x{width}, output {output_name:?} of {dim}"
                );
                ModelManifest::torchreid_default(
                    default_name,
                    &onnx_inputs[input_ix],
                    height,
                    width,
                    &output_name,
                    dim,
                )
            }
        };

        // One plan, a state per part.
        let (plan, rewritten) = prepare(typed, config.kernels).map_err(optimise)?;
        let mut parts = Vec::with_capacity(part_count);
        for _ in 0..part_count {
            let shape = [part_batch, 3, height as usize, width as usize];
            parts.push(Part {
                batch: part_batch,
                state: plan.spawn().map_err(optimise)?,
                input: Arc::new(Tensor::zero::<f32>(&shape).map_err(optimise)?),
                error: None,
            });
        }
        let pool = KernelPool::new(config.threads, &label)?;
        let crop_work = ops::crop_work(Isa::detect(), rewritten.quantised);
        let slot_len = 3 * height as usize * width as usize;
        log::info!(
            "{label}: {} v{:?}, input [{}, 3, {height}, {width}] as {part_count} part(s) of {part_batch}, output {dim}, {} thread(s), kernels {}: {rewritten}",
            manifest.model.name,
            manifest.model.version,
            config.batch,
            config.threads,
            config.kernels,
        );
        Ok(Self {
            label,
            manifest,
            batch: config.batch,
            slot_len,
            rewritten,
            parts,
            pool,
            crop_work,
            output: vec![0.0; config.batch * dim],
            load_time: Duration::ZERO,
        })
    }

    /// The manifest in force (read, or defaulted from the model).
    pub fn manifest(&self) -> &ModelManifest {
        &self.manifest
    }

    /// The label (usually the path) the model was loaded from.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Crops per run.
    pub fn batch_size(&self) -> usize {
        self.batch
    }

    /// Embedding length.
    pub fn dim(&self) -> usize {
        self.manifest.output.dim
    }

    /// What our kernels took over from tract at load time.
    pub fn rewritten(&self) -> Rewritten {
        self.rewritten
    }

    /// Time spent reading, checking, optimising and planning the model.
    pub fn load_time(&self) -> Duration {
        self.load_time
    }

    /// The `3 × H × W` input values of crop `slot` (`< batch_size()`), to be filled by
    /// `preprocess` before [`run`](Self::run).
    pub fn input_slot(&mut self, slot: usize) -> &mut [f32] {
        assert!(slot < self.batch, "slot {slot} >= batch {}", self.batch);
        // Parts are all of one size (a crop each, or the model's whole fixed batch).
        let per_part = self.parts[0].batch;
        let (part, local) = (&mut self.parts[slot / per_part], slot % per_part);
        // tract has released its reference after the previous run, so this does not copy.
        let tensor = Arc::make_mut(&mut part.input);
        let all = tensor
            .to_plain_array_view_mut::<f32>()
            .ok()
            .and_then(|view| view.into_slice())
            .expect("input tensor is plain, contiguous f32");
        &mut all[local * self.slot_len..(local + 1) * self.slot_len]
    }

    /// Runs the model on the first `n` crops and returns their L2-normalised embeddings. Each
    /// crop is a part of its own (see [`Embedder`]), so the slots past `n` do not run; a model
    /// that fixes its batch runs whole, whatever the slots past `n` hold.
    pub fn run(&mut self, n: usize) -> Result<Embeddings<'_>, EmbedError> {
        assert!(n <= self.batch, "{n} crops > batch {}", self.batch);
        let dim = self.manifest.output.dim;
        let part_len = self.parts[0].batch * dim;
        let used = n.div_ceil(self.parts[0].batch).max(1);
        let parts = &mut self.parts[..used];
        let outputs = self.output[..used * part_len].chunks_exact_mut(part_len);
        match &self.pool.0 {
            // Parts go to whichever thread is free next (a core taken by something else just
            // does fewer): one fork/join per batch, one lock per crop.
            Some(pool) if used > 1 => {
                let work = std::sync::Mutex::new(parts.iter_mut().zip(outputs));
                let take = || work.lock().unwrap_or_else(|e| e.into_inner()).next();
                let drain = || {
                    while let Some((part, out)) = take() {
                        part.run(out);
                    }
                };
                pool.run(pool.workers() + 1, &|_| drain());
            }
            // A single crop runs on this thread and shares its largest layers with the pool's
            // spinning workers (with rayon's sleeping ones that was slower than one thread:
            // OSNet x0.25 2.9 → 3.1 ms; with ours, 2 cores of an AMD EPYC: 1.05 → 0.89 ms,
            // retail-0267 4.9 → 4.1 ms, our default model 1.30 → 1.06 ms).
            pool => {
                for (part, out) in parts.iter_mut().zip(outputs) {
                    ops::with_kernel_pool(pool.as_ref(), self.crop_work, || part.run(out));
                }
            }
        }
        if let Some(reason) = self.parts[..used].iter_mut().find_map(|p| p.error.take()) {
            return Err(EmbedError::Run {
                model: self.label.clone(),
                reason,
            });
        }
        for row in self.output[..n * dim].chunks_exact_mut(dim) {
            l2_normalise(row);
        }
        Ok(Embeddings {
            data: &self.output[..n * dim],
            dim,
        })
    }
}

/// Names of the given outlets: the ONNX tensor name (outlet label) or the node name.
fn outlet_names(model: &InferenceModel, outlets: &[OutletId]) -> Vec<String> {
    outlets
        .iter()
        .map(|o| {
            model
                .outlet_label(*o)
                .map(str::to_owned)
                .unwrap_or_else(|| model.node(o.node).name.clone())
        })
        .collect()
}

/// tract errors are chains; keep them on one line.
fn reason_line(e: &TractError) -> String {
    format!("{e:#}").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_bytes_are_not_onnx() {
        let err = Embedder::from_bytes(
            b"definitely not protobuf",
            "junk.onnx",
            None,
            &EmbedConfig::default(),
        )
        .unwrap_err();
        assert!(matches!(err, EmbedError::NotOnnx { .. }), "{err}");
        assert!(
            err.to_string()
                .starts_with("junk.onnx: not a loadable ONNX model"),
            "{err}"
        );
    }
}
