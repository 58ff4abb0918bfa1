//! The embedding engine: the only module that touches tract.
//!
//! [`Embedder::load`] reads an ONNX model and its manifest (sidecar `foo.toml`, an explicit one,
//! or torchreid defaults when there is none), checks that they agree, fixes the input fact to
//! `[batch, 3, H, W]` f32, optimises once and spawns one reusable tract state. Per batch, callers
//! write crops into [`Embedder::input_slot`] (see `preprocess`) and call [`Embedder::run`], which
//! returns L2-normalised embeddings borrowed from a buffer owned by the embedder.
//!
//! Allocation: the input tensor, the output buffer and the tract state are made once. tract itself
//! still allocates the intermediate tensors of each op during a run (it has no arena on CPU).

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
    /// Threads for tract's matrix products. Default 1 (tract's single-thread executor).
    pub threads: usize,
}

impl Default for EmbedConfig {
    fn default() -> Self {
        Self {
            batch: 1,
            threads: 1,
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

mod network;

pub use network::Network;

type Plan = Arc<TypedRunnableModel>;

/// A runnable plan: tract's single-thread executor for one thread (its `multithread(1)` would
/// use every core in 0.23.9), else a pool of `threads`.
fn runnable(optimised: TypedModel, threads: usize) -> TractResult<Plan> {
    if threads > 1 {
        let options = RunOptions {
            executor: Some(tract_linalg::multithread::Executor::multithread(threads)),
            ..RunOptions::default()
        };
        optimised.into_runnable_with_options(&options)
    } else {
        optimised.into_runnable()
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

/// A loaded, optimised model with its reusable state and buffers.
pub struct Embedder {
    label: String,
    manifest: ModelManifest,
    batch: usize,
    slot_len: usize,
    state: TypedSimpleState,
    input: Arc<Tensor>,
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

        let shape = [config.batch, 3, height as usize, width as usize];
        let model = model
            .with_input_fact(input_ix, f32::fact(shape).into())
            .map_err(|e| EmbedError::NotImageInput {
                model: label.clone(),
                problem: err(e),
            })?;
        let optimise = |e: TractError| EmbedError::Optimise {
            model: label.clone(),
            reason: err(e),
        };
        let typed = model.into_typed().map_err(optimise)?;

        // The output must be [N, D] (or [N, D, 1, 1]) f32.
        let out_fact = typed.output_fact(0).map_err(optimise)?.clone();
        let out_dims: Option<Vec<usize>> = out_fact.shape.as_concrete().map(|s| s.to_vec());
        let dim = match out_dims.as_deref() {
            Some([n, rest @ ..]) if *n == config.batch && !rest.is_empty() => {
                rest.iter().product::<usize>()
            }
            _ => {
                return Err(EmbedError::Unsupported {
                    model: label,
                    problem: format!(
                        "output {output_name:?} has shape {:?}, expected [{}, D]",
                        out_fact.shape, config.batch
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

        let optimised = typed.into_optimized().map_err(optimise)?;
        let plan = runnable(optimised, config.threads).map_err(optimise)?;
        let state = plan.spawn().map_err(optimise)?;
        let input = Arc::new(Tensor::zero::<f32>(&shape).map_err(optimise)?);
        let slot_len = 3 * height as usize * width as usize;
        log::info!(
            "{label}: {} v{:?}, input {shape:?}, output {dim}, {} thread(s)",
            manifest.model.name,
            manifest.model.version,
            config.threads
        );
        Ok(Self {
            label,
            manifest,
            batch: config.batch,
            slot_len,
            state,
            input,
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

    /// Time spent reading, checking, optimising and planning the model.
    pub fn load_time(&self) -> Duration {
        self.load_time
    }

    /// The `3 × H × W` input values of crop `slot` (`< batch_size()`), to be filled by
    /// `preprocess` before [`run`](Self::run).
    pub fn input_slot(&mut self, slot: usize) -> &mut [f32] {
        assert!(slot < self.batch, "slot {slot} >= batch {}", self.batch);
        // tract has released its reference after the previous run, so this does not copy.
        let tensor = Arc::make_mut(&mut self.input);
        let all = tensor
            .to_plain_array_view_mut::<f32>()
            .ok()
            .and_then(|view| view.into_slice())
            .expect("input tensor is plain, contiguous f32");
        &mut all[slot * self.slot_len..(slot + 1) * self.slot_len]
    }

    /// Runs the model on the whole batch and returns the L2-normalised embeddings of the first
    /// `n` slots. Slots past `n` still run (the input shape is fixed) with whatever they hold.
    pub fn run(&mut self, n: usize) -> Result<Embeddings<'_>, EmbedError> {
        assert!(n <= self.batch, "{n} crops > batch {}", self.batch);
        let input = TValue::from_const(Arc::clone(&self.input));
        let outputs = self.state.run(tvec![input]).map_err(|e| EmbedError::Run {
            model: self.label.clone(),
            reason: reason_line(&e),
        })?;
        let values = outputs[0]
            .try_as_plain_ram()
            .and_then(|plain| plain.as_slice::<f32>())
            .map_err(|e| EmbedError::Run {
                model: self.label.clone(),
                reason: reason_line(&e),
            })?;
        let dim = self.manifest.output.dim;
        self.output[..n * dim].copy_from_slice(&values[..n * dim]);
        drop(outputs);
        for row in self.output[..n * dim].chunks_exact_mut(dim) {
            l2_normalise(row);
        }
        Ok(Embeddings {
            data: &self.output[..n * dim],
            dim,
        })
    }
}

/// Embeddings of one run, borrowed from the embedder: `len()` rows of `dim()` values.
#[derive(Clone, Copy, Debug)]
pub struct Embeddings<'a> {
    data: &'a [f32],
    dim: usize,
}

impl<'a> Embeddings<'a> {
    pub fn len(&self) -> usize {
        self.data.len() / self.dim
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Embedding `i` as a slice.
    pub fn row(&self, i: usize) -> &'a [f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    pub fn rows(&self) -> impl Iterator<Item = &'a [f32]> + 'a {
        self.data.chunks_exact(self.dim)
    }

    /// The rows as an `len() × dim()` matrix view.
    pub fn as_array(&self) -> ndarray::ArrayView2<'a, f32> {
        ndarray::ArrayView2::from_shape((self.len(), self.dim), self.data)
            .expect("rows are dim long")
    }

    /// All rows, flat (`len() × dim()`).
    pub fn as_flat(&self) -> &'a [f32] {
        self.data
    }

    /// An owned copy of embedding `i`.
    pub fn to_embedding(&self, i: usize) -> Embedding {
        Embedding(self.row(i).to_vec())
    }
}

/// An owned, L2-normalised embedding (all zeros if the model produced a zero vector).
#[derive(Clone, Debug, PartialEq)]
pub struct Embedding(Vec<f32>);

impl Embedding {
    /// Normalises `values` and wraps them.
    pub fn from_raw(mut values: Vec<f32>) -> Self {
        l2_normalise(&mut values);
        Self(values)
    }

    pub fn as_slice(&self) -> &[f32] {
        &self.0
    }

    pub fn dim(&self) -> usize {
        self.0.len()
    }

    /// Cosine similarity; both sides are unit vectors, so this is their dot product.
    pub fn cosine(&self, other: &Embedding) -> f32 {
        dot(&self.0, &other.0)
    }
}

/// Dot product of two equally long slices.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot of different lengths");
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Cosine similarity of two vectors of any norm (0 if either is zero).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (na, nb) = (dot(a, a).sqrt(), dot(b, b).sqrt());
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot(a, b) / (na * nb)
    }
}

fn l2_normalise(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 && norm.is_finite() {
        v.iter_mut().for_each(|x| *x /= norm);
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
    fn normalise_and_cosine() {
        let a = Embedding::from_raw(vec![3.0, 4.0]);
        assert_eq!(a.as_slice(), [0.6, 0.8]);
        let zero = Embedding::from_raw(vec![0.0, 0.0]);
        assert_eq!(zero.as_slice(), [0.0, 0.0]);
        assert!((a.cosine(&a) - 1.0).abs() < 1e-6);
        assert_eq!(cosine(&[1.0, 0.0], &[0.0, 2.0]), 0.0);
        assert!((cosine(&[1.0, 1.0], &[2.0, 2.0]) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn embeddings_view_as_matrix() {
        let data = [1.0, 0.0, 0.0, 0.6, 0.8, 0.0];
        let e = Embeddings {
            data: &data,
            dim: 3,
        };
        assert_eq!((e.len(), e.dim()), (2, 3));
        let m = e.as_array();
        assert_eq!(m.shape(), [2, 3]);
        assert_eq!(m[[1, 1]], 0.8);
        assert_eq!(m.row(1).to_vec(), e.row(1));
        // Gram matrix = pairwise cosines of unit rows.
        let gram = m.dot(&m.t());
        assert!((gram[[0, 1]] - 0.6).abs() < 1e-6 && (gram[[1, 1]] - 1.0).abs() < 1e-6);
    }

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
