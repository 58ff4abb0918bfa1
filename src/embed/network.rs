//! Any other image network, e.g. a person detector: one NCHW f32 input fixed to `[1, 3, H, W]`,
//! its first output read back as a flat f32 slice. Loaded, optimised and spawned once, like the
//! embedder; the input tensor and the output buffer are made once.

use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

use super::{
    EmbedError, KernelPool, Kernels, forget_declared_shapes, ops, outlet_names, prepare,
    reason_line,
};

pub struct Network {
    label: String,
    state: TypedSimpleState,
    pool: KernelPool,
    input: Arc<Tensor>,
    size: (u32, u32),
    output: Vec<f32>,
    output_shape: Vec<usize>,
    load_time: Duration,
    rewritten: super::Rewritten,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("model", &self.label)
            .field("size", &self.size)
            .field("output", &self.output_shape)
            .finish()
    }
}

impl Network {
    /// Loads the ONNX model at `path` for input frames of `width × height` (ignored where the
    /// model fixes its own size, which wins).
    pub fn load(path: &Path, width: u32, height: u32, threads: usize) -> Result<Self, EmbedError> {
        Self::load_with_kernels(path, width, height, threads, Kernels::Reidcam)
    }

    /// [`load`](Self::load) with a choice of kernels ([`Kernels::Tract`]: tract's own ops).
    pub fn load_with_kernels(
        path: &Path,
        width: u32,
        height: u32,
        threads: usize,
        kernels: Kernels,
    ) -> Result<Self, EmbedError> {
        let started = std::time::Instant::now();
        let label = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| EmbedError::Read {
            path: path.to_owned(),
            source,
        })?;
        let not_onnx = |e: TractError| EmbedError::NotOnnx {
            model: label.clone(),
            reason: reason_line(&e),
        };
        let mut model = tract_onnx::onnx()
            .model_for_read(&mut Cursor::new(&bytes))
            .map_err(not_onnx)?;
        let inputs = outlet_names(&model, model.input_outlets().unwrap_or(&[]));
        let not_image = |problem: String| EmbedError::NotImageInput {
            model: label.clone(),
            problem,
        };
        if inputs.len() != 1 {
            return Err(not_image(format!(
                "{} graph inputs {inputs:?}",
                inputs.len()
            )));
        }
        let fact = model.input_fact(0).map_err(not_onnx)?.clone();
        let dims: Vec<Option<i64>> = match fact.shape.rank().concretize() {
            Some(_) => fact
                .shape
                .dims()
                .map(|d| d.concretize().and_then(|d| d.to_i64().ok()))
                .collect(),
            None => vec![None; 4],
        };
        if dims.len() != 4 || dims[1].is_some_and(|c| c != 3) || dims[0].is_some_and(|n| n != 1) {
            return Err(not_image(format!(
                "input {:?} has shape {:?}; expected [1, 3, H, W]",
                inputs[0], fact.shape
            )));
        }
        let height = dims[2].map_or(height, |h| h as u32);
        let width = dims[3].map_or(width, |w| w as u32);
        let outputs = model.output_outlets().map_err(not_onnx)?.to_vec();
        let Some(&first) = outputs.first() else {
            return Err(EmbedError::Unsupported {
                model: label,
                problem: "the graph has no output".into(),
            });
        };
        model.select_output_outlets(&[first]).map_err(not_onnx)?;
        forget_declared_shapes(&mut model).map_err(not_onnx)?;
        let shape = [1, 3, height as usize, width as usize];
        let model = model
            .with_input_fact(0, f32::fact(shape).into())
            .map_err(|e| not_image(reason_line(&e)))?;
        let optimise = |e: TractError| EmbedError::Optimise {
            model: label.clone(),
            reason: reason_line(&e),
        };
        let typed = model.into_typed().map_err(optimise)?;
        let out_fact = typed.output_fact(0).map_err(optimise)?.clone();
        let Some(output_shape) = out_fact.shape.as_concrete().map(<[usize]>::to_vec) else {
            return Err(EmbedError::Unsupported {
                model: label,
                problem: format!(
                    "output shape {:?} is not fixed by the input",
                    out_fact.shape
                ),
            });
        };
        if out_fact.datum_type != f32::datum_type() {
            return Err(EmbedError::Unsupported {
                model: label,
                problem: format!("output is {:?}, expected f32", out_fact.datum_type),
            });
        }
        let (plan, rewritten) = prepare(typed, kernels).map_err(optimise)?;
        let pool = KernelPool::new(threads, &label)?;
        let state = plan.spawn().map_err(optimise)?;
        let input = Arc::new(Tensor::zero::<f32>(&shape).map_err(optimise)?);
        log::info!(
            "{label}: input {shape:?}, output {output_shape:?}, {threads} thread(s), kernels {kernels}: {rewritten:?}"
        );
        Ok(Network {
            label,
            state,
            pool,
            input,
            size: (width, height),
            output: vec![0.0; output_shape.iter().product()],
            output_shape,
            load_time: started.elapsed(),
            rewritten,
        })
    }

    /// As [`Embedder::profile`](super::Embedder::profile), for a network (the detector) on
    /// its current input, its layers shared with its threads as in [`run`](Self::run).
    pub fn profile(&mut self, runs: usize) -> Result<Vec<super::OpTime>, EmbedError> {
        let (state, pool) = (&mut self.state, self.pool.0.as_ref());
        ops::with_kernel_pool(pool, ops::FRAME_WORK, || {
            super::profile::profile_plan(state, &self.input, &self.label, runs)
        })
    }

    /// What the load-time rewrite put in place of tract's ops.
    pub fn rewritten(&self) -> super::Rewritten {
        self.rewritten
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// Input (width, height).
    pub fn input_size(&self) -> (u32, u32) {
        self.size
    }

    pub fn output_shape(&self) -> &[usize] {
        &self.output_shape
    }

    pub fn load_time(&self) -> Duration {
        self.load_time
    }

    /// The `3 × H × W` input values (planar), to fill before [`run`](Self::run).
    pub fn input_mut(&mut self) -> &mut [f32] {
        Arc::make_mut(&mut self.input)
            .to_plain_array_view_mut::<f32>()
            .ok()
            .and_then(|view| view.into_slice())
            .expect("input tensor is plain, contiguous f32")
    }

    /// Runs the network; the first output, flattened (its shape: [`output_shape`](Self::output_shape)).
    pub fn run(&mut self) -> Result<&[f32], EmbedError> {
        let input = TValue::from_const(Arc::clone(&self.input));
        let run_error = |e: TractError| EmbedError::Run {
            model: self.label.clone(),
            reason: reason_line(&e),
        };
        let (state, pool) = (&mut self.state, self.pool.0.as_ref());
        let outputs = ops::with_kernel_pool(pool, ops::FRAME_WORK, || state.run(tvec![input]))
            .map_err(run_error)?;
        let values = outputs[0]
            .try_as_plain_ram()
            .and_then(|plain| plain.as_slice::<f32>())
            .map_err(run_error)?;
        if values.len() != self.output.len() {
            return Err(EmbedError::Run {
                model: self.label.clone(),
                reason: format!(
                    "output has {} values, expected {:?}",
                    values.len(),
                    self.output_shape
                ),
            });
        }
        self.output.copy_from_slice(values);
        Ok(&self.output)
    }
}
