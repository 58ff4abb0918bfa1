//! Our own tract operators, calling `embed::kernels`, and the load-time graph rewrite that puts
//! them in place of tract's ops (tract stays the engine: it plans and runs the graph, and runs
//! every op we do not replace).
//!
//! [`use_reidcam_kernels`] runs on the decluttered model, before `into_optimized`, and fuses:
//! - `EinSum(x, W[O,I])` (tract's form of a 1×1 convolution) `→ Add(bias) → Add(residual) →
//!   Max(0)`, each step optional, into one [`Pointwise`];
//! - `Conv` depthwise 3×3, stride 1, padding 1 (bias = folded batch-norm) `→ Max(0)` into one
//!   [`Depthwise`];
//! - one-group `Conv` of any kernel, stride and padding `→ Max(0)` into one [`FullConv`];
//! - `MaxPool` and averaging `SumPool` into [`Pool`];
//! - a channel gate, `Reduce<Sum>` over H×W → scale → fc → bias → ReLU → fc → bias → sigmoid,
//!   into one [`PooledChain`] (`ReidcamGate`); any other such chain of per-image vector steps
//!   with an fc in it (a network's head: global average pool → fc → bias → ReLU, a BNNeck's
//!   multiply-add) into one [`PooledChain`] too (`ReidcamHead`);
//! - `Mul(x, gate(x))` and the `Add`s summing such terms (OSNet's `Σₜ gate(xₜ) ⊙ xₜ`), the gates
//!   included, into one [`GatedSum`].
//!
//! A step is fused only when the value it consumes has no other reader, the constants have the
//! shapes the kernels expect and everything is f32; anything else is left to tract untouched.
//! After tract's optimisation, [`recycle_outputs`] lets the ops whose readers are all ours reuse
//! their output tensors from run to run (see [`with_output`]): an OSNet, whose every node is then
//! ours, embeds a crop without allocating.

use std::cell::RefCell;
use std::sync::Arc;

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::cnn::{
    Conv, KernelFormat, MaxPool, PaddingSpec, PoolSpec, SumPool,
};
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::math::{Add, Max, Mul};
use tract_onnx::tract_core::ops::nn::DataFormat;
use tract_onnx::tract_core::ops::nn::{Reduce, Reducer, Sigmoid};

use super::kernels::qconv;
use super::kernels::qpointwise::{self, Dot};
use super::kernels::{Isa, conv, depthwise, gated_sum, pointwise, pool};

/// Below this many multiply-adds (or pooled values) an op runs on one thread: waking a pool
/// thread and waiting for it costs tens of microseconds (measured on the 2-core CI machine:
/// splitting every layer of OSNet x0.25 made a crop 30% slower), more than a small layer takes.
const PARALLEL_WORK: usize = 8 << 20;

thread_local! {
    /// The pool the current run may share its largest layers with (see [`with_kernel_pool`]).
    static KERNEL_POOL: RefCell<Option<Arc<rayon::ThreadPool>>> = const { RefCell::new(None) };
}

/// Runs `f` (a model run on this thread) with `pool` available to our ops' [`split_units`].
pub(super) fn with_kernel_pool<R>(
    pool: Option<&Arc<rayon::ThreadPool>>,
    f: impl FnOnce() -> R,
) -> R {
    let previous = KERNEL_POOL.replace(pool.cloned());
    let result = f();
    KERNEL_POOL.set(previous);
    result
}

/// Runs `work` over `units` units of `out` (`unit` floats each): in contiguous parts, this thread
/// taking the first and each pool worker one more, when a kernel pool is set for this run and the
/// op's `work_size` reaches [`PARALLEL_WORK`]; else all at once on this thread. `work` gets the
/// unit range and its part of `out`.
fn split_units(
    out: &mut [f32],
    unit: usize,
    units: usize,
    work_size: usize,
    work: impl Fn(std::ops::Range<usize>, &mut [f32]) + Sync,
) {
    debug_assert_eq!(out.len(), unit * units);
    let pool = match KERNEL_POOL.with_borrow(Clone::clone) {
        Some(pool) if work_size >= PARALLEL_WORK && units > 1 => pool,
        _ => return work(0..units, out),
    };
    let parts = (pool.current_num_threads() + 1).min(units);
    let work = &work;
    let first = units / parts;
    let (mine, mut rest) = out.split_at_mut(first * unit);
    pool.in_place_scope(|scope| {
        let mut start = first;
        for part in 1..parts {
            let end = (part + 1) * units / parts;
            let (theirs, tail) = rest.split_at_mut((end - start) * unit);
            rest = tail;
            let range = start..end;
            scope.spawn(move |_| work(range, theirs));
            start = end;
        }
        work(0..first, mine);
    });
}

/// Output tensors our ops kept on this thread, for later runs (see [`with_output`]).
struct Outputs {
    tensors: Vec<Recycled>,
    /// Counts takes, to find the least recently used tensor.
    clock: u64,
}

struct Recycled {
    tensor: Arc<Tensor>,
    used: u64,
}

/// Tensors kept per thread before the least recently used free one makes room. A model keeps far
/// fewer: OSNet x0.25 at 256×128 23 (2.7 MB), the daemon's thread with YOLOX-Nano and our
/// default model 34 (4.7 MB).
const KEPT_OUTPUTS: usize = 128;

thread_local! {
    static OUTPUTS: RefCell<Outputs> = const {
        RefCell::new(Outputs {
            tensors: Vec::new(),
            clock: 0,
        })
    };
}

impl Outputs {
    /// A tensor of `shape` no one else holds: a kept one of the same length that tract has
    /// dropped since (after its last reader, or at the end of the run), else a new one.
    fn take(&mut self, shape: &[usize]) -> TractResult<Recycled> {
        self.clock += 1;
        let len: usize = shape.iter().product();
        let free = |r: &Recycled| Arc::strong_count(&r.tensor) == 1;
        if let Some(ix) = self
            .tensors
            .iter()
            .position(|r| free(r) && r.tensor.len() == len)
        {
            let mut kept = self.tensors.swap_remove(ix);
            Arc::get_mut(&mut kept.tensor)
                .expect("no other holder")
                .set_shape(shape)?;
            kept.used = self.clock;
            return Ok(kept);
        }
        if self.tensors.len() >= KEPT_OUTPUTS
            && let Some(ix) = (0..self.tensors.len())
                .filter(|&i| free(&self.tensors[i]))
                .min_by_key(|&i| self.tensors[i].used)
        {
            self.tensors.swap_remove(ix);
        }
        // SAFETY: every kernel writes all of its output (each asserts the output length), and
        // the tensor is not read before `fill` returns.
        let tensor = unsafe { Tensor::uninitialized::<f32>(shape)? };
        Ok(Recycled {
            tensor: Arc::new(tensor),
            used: self.clock,
        })
    }
}

/// The output of one of our ops: its shape, and whether it is recycled (see [`with_output`]).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Output {
    shape: TVec<usize>,
    recycle: bool,
}

impl Output {
    fn new(shape: TVec<usize>) -> Self {
        Output {
            shape,
            recycle: false,
        }
    }
}

/// An f32 output tensor of `output`'s shape, filled by `fill`.
///
/// A recycled output allocates nothing once warm: the tensor stays on a per-thread list after
/// the op hands it to tract, and once tract has dropped it (a value goes after its last reader,
/// the rest at the end of the run) it serves the next output of the same length — so a model
/// run reuses the tensors of the run before, and the memory held is about the model's live set.
/// [`recycle_outputs`] turns it on where every reader is one of our ops: some of tract's ops
/// compute in place in an input no one else holds, and would copy a recycled one.
fn with_output(
    output: &Output,
    fill: impl FnOnce(&mut [f32]) -> TractResult<()>,
) -> TractResult<TVec<TValue>> {
    if !output.recycle {
        // SAFETY: every kernel writes all of its output (each asserts the output length), and
        // the tensor is not read before `fill` returns.
        let mut tensor = unsafe { Tensor::uninitialized::<f32>(&output.shape)? };
        fill(tensor.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?)?;
        return Ok(tvec!(tensor.into_tvalue()));
    }
    let mut out = OUTPUTS.with_borrow_mut(|o| o.take(&output.shape))?;
    let tensor = Arc::get_mut(&mut out.tensor).expect("taken tensors have no other holder");
    fill(tensor.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?)?;
    let value = TValue::from_const(Arc::clone(&out.tensor));
    OUTPUTS.with_borrow_mut(|o| o.tensors.push(out));
    Ok(tvec!(value))
}

/// The output of `node`'s op, if it is one of ours.
fn output_of(node: &mut TypedNode) -> Option<&mut Output> {
    macro_rules! ours {
        ($($op:ty),*) => {
            $(if node.op_is::<$op>() {
                return node.op_as_mut::<$op>().map(|op| &mut op.output);
            })*
        };
    }
    ours!(
        Pointwise,
        QuantPointwise,
        QuantFullConv,
        Depthwise,
        FullConv,
        Pool,
        PooledChain,
        GatedSum
    );
    None
}

/// Turns recycling on for each of our ops whose readers are all ours (a model output counts:
/// the embedder copies it out); run on the optimised model, whose nodes are the plan's.
/// Returns how many.
pub(super) fn recycle_outputs(model: &mut TypedModel) -> TractResult<usize> {
    let outputs = model.output_outlets()?.to_vec();
    let mut recycled = 0;
    for id in 0..model.nodes().len() {
        let outlet = OutletId::new(id, 0);
        let readers = model.outlet_successors(outlet);
        let readers_ours = model.node(id).outputs.len() == 1
            && readers
                .iter()
                .all(|s| model.node(s.node).op.name().starts_with("Reidcam"));
        if readers_ours
            && (!readers.is_empty() || outputs.contains(&outlet))
            && let Some(output) = output_of(model.node_mut(id))
        {
            output.recycle = true;
            recycled += 1;
        }
    }
    Ok(recycled)
}

/// `Op`, `EvalOp` and `TypedOp` for our ops: a name (or a function of the op giving it), a
/// one-line `describe()`, f32 inputs and one f32 output of the shape the rewrite computed, filled
/// by `compute(inputs, output)`.
macro_rules! reidcam_op {
    ($op:ty, $name:literal) => {
        reidcam_op!($op, |_: &$op| $name);
    };
    ($op:ty, $name:expr) => {
        impl Op for $op {
            fn name(&self) -> StaticName {
                let name: fn(&$op) -> &'static str = $name;
                name(self).into()
            }

            fn info(&self) -> TractResult<Vec<String>> {
                Ok(vec![self.describe()])
            }

            op_as_typed_op!();
        }

        impl EvalOp for $op {
            op_out_of_plan!();

            fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
                let views = inputs
                    .iter()
                    .map(|i| i.try_as_plain_ram())
                    .collect::<TractResult<TVec<_>>>()?;
                let x = views
                    .iter()
                    .map(|v| v.as_slice::<f32>())
                    .collect::<TractResult<TVec<_>>>()?;
                with_output(&self.output, |y| {
                    self.compute(&x, y);
                    Ok(())
                })
            }
        }

        impl TypedOp for $op {
            fn output_facts(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
                Ok(tvec!(f32::fact(&*self.output.shape)))
            }

            as_op!();
        }
    };
}

/// Constant f32 operands of an op, compared bit for bit (tract wants ops to be `Eq`).
#[derive(Clone, Debug)]
struct Floats(Arc<[f32]>);

impl PartialEq for Floats {
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(other.0.iter())
                .all(|(a, b)| a.to_bits() == b.to_bits())
    }
}

impl Eq for Floats {}

/// A fused 1×1 convolution: bias, optional residual (second input), optional ReLU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pointwise {
    isa: Isa,
    shape: pointwise::Shape,
    offsets: Arc<[usize]>,
    weights: Floats,
    bias: Floats,
    residual: bool,
    relu: bool,
    output: Output,
}

impl Pointwise {
    fn describe(&self) -> String {
        format!(
            "{:?} residual {} relu {} {}",
            self.shape, self.residual, self.relu, self.isa
        )
    }
}

reidcam_op!(Pointwise, "ReidcamPointwise");

impl Pointwise {
    fn compute(&self, inputs: &[&[f32]], y: &mut [f32]) {
        let x = inputs[0];
        let residual = inputs.get(1).copied();
        let shape = self.shape;
        let (x_len, y_len) = (shape.inputs * shape.pixels, shape.outputs * shape.pixels);
        let batch = x.len() / x_len;
        if batch > 1 {
            // Images to threads.
            split_units(
                y,
                y_len,
                batch,
                batch * shape.inputs * y_len,
                |images, y| {
                    pointwise::pointwise(
                        self.isa,
                        shape,
                        &self.offsets,
                        &x[images.start * x_len..images.end * x_len],
                        &self.weights.0,
                        &self.bias.0,
                        residual.map(|r| &r[images.start * y_len..images.end * y_len]),
                        self.relu,
                        y,
                    )
                },
            );
        } else {
            // Output channels to threads.
            split_units(
                y,
                shape.pixels,
                shape.outputs,
                shape.inputs * y_len,
                |outputs, y| {
                    let part = pointwise::Shape {
                        outputs: outputs.len(),
                        ..shape
                    };
                    let rows = outputs.start * shape.pixels..outputs.end * shape.pixels;
                    pointwise::pointwise(
                        self.isa,
                        part,
                        &self.offsets,
                        x,
                        &self.weights.0[outputs.start * shape.inputs..outputs.end * shape.inputs],
                        &self.bias.0[outputs.clone()],
                        residual.map(|r| &r[rows]),
                        self.relu,
                        y,
                    )
                },
            );
        }
    }
}

/// An int8 1×1 convolution between f32 edges (made by `embed::int8` from a quantised model):
/// quantises its input, multiplies in int8, stores dequantised values; then an optional residual
/// (second input) and ReLU, fused by [`use_reidcam_kernels`].
#[derive(Clone, Debug)]
pub struct QuantPointwise {
    dot: Dot,
    layer: Arc<qpointwise::Layer>,
    residual: bool,
    relu: bool,
    output: Output,
}

impl PartialEq for QuantPointwise {
    fn eq(&self, other: &Self) -> bool {
        // Layers are made once per model node: the same layer or not.
        Arc::ptr_eq(&self.layer, &other.layer)
            && (self.dot, self.residual, self.relu) == (other.dot, other.residual, other.relu)
            && self.output == other.output
    }
}

impl Eq for QuantPointwise {}

thread_local! {
    /// The int8 kernel's scratch (the quantised input words): grown to the largest layer once
    /// per thread, then reused.
    static QUANT_SCRATCH: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

impl QuantPointwise {
    pub(super) fn new(dot: Dot, layer: Arc<qpointwise::Layer>, output_shape: TVec<usize>) -> Self {
        QuantPointwise {
            dot,
            layer,
            residual: false,
            relu: false,
            output: Output::new(output_shape),
        }
    }

    fn describe(&self) -> String {
        format!(
            "{:?} residual {} relu {} {}",
            self.layer.shape, self.residual, self.relu, self.dot
        )
    }
}

reidcam_op!(QuantPointwise, "ReidcamQuantPointwise");

impl QuantPointwise {
    fn compute(&self, inputs: &[&[f32]], y: &mut [f32]) {
        let shape = self.layer.shape;
        let (x_len, y_len) = (shape.inputs * shape.pixels, shape.outputs * shape.pixels);
        let residual = inputs.get(1).copied();
        QUANT_SCRATCH.with_borrow_mut(|words| {
            for (n, (x, y)) in inputs[0]
                .chunks_exact(x_len)
                .zip(y.chunks_exact_mut(y_len))
                .enumerate()
            {
                let res = residual.map(|r| &r[n * y_len..][..y_len]);
                self.layer.run(self.dot, x, res, self.relu, y, words);
            }
        });
    }
}

/// An int8 full convolution between f32 edges (a quantised model's stem, made by `embed::int8`):
/// quantises its input image, multiplies in int8 (`kernels::qconv`), stores dequantised values;
/// then an optional ReLU, fused by [`use_reidcam_kernels`].
#[derive(Clone, Debug)]
pub struct QuantFullConv {
    dot: Dot,
    layer: Arc<qconv::ConvLayer>,
    relu: bool,
    output: Output,
}

impl PartialEq for QuantFullConv {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.layer, &other.layer)
            && (self.dot, self.relu) == (other.dot, other.relu)
            && self.output == other.output
    }
}

impl Eq for QuantFullConv {}

thread_local! {
    /// The int8 convolution's scratch (codes, words): grown to the largest layer once per
    /// thread, then reused.
    static QUANT_CONV_SCRATCH: RefCell<qconv::Scratch> = RefCell::new(qconv::Scratch::default());
}

impl QuantFullConv {
    pub(super) fn new(dot: Dot, layer: Arc<qconv::ConvLayer>, output_shape: TVec<usize>) -> Self {
        QuantFullConv {
            dot,
            layer,
            relu: false,
            output: Output::new(output_shape),
        }
    }

    fn describe(&self) -> String {
        format!(
            "{:?} relu {} {}",
            self.layer.geometry(),
            self.relu,
            self.dot
        )
    }
}

reidcam_op!(QuantFullConv, "ReidcamQuantConv");

impl QuantFullConv {
    fn compute(&self, inputs: &[&[f32]], y: &mut [f32]) {
        let g = self.layer.geometry();
        let (oh, ow) = g.output().expect("checked when the layer was made");
        let (x_len, y_len) = (g.inputs * g.height * g.width, g.outputs * oh * ow);
        QUANT_CONV_SCRATCH.with_borrow_mut(|scratch| {
            for (x, y) in inputs[0].chunks_exact(x_len).zip(y.chunks_exact_mut(y_len)) {
                self.layer.run(self.dot, x, self.relu, y, scratch);
            }
        });
    }
}

/// A fused depthwise 3×3 stride-1 convolution: bias, optional ReLU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Depthwise {
    isa: Isa,
    shape: depthwise::Shape,
    weights: Floats,
    bias: Floats,
    relu: bool,
    output: Output,
}

thread_local! {
    /// Our kernels' scratch (padded planes, phase-split images, pooled rows): grown to the
    /// largest layer once per thread, then reused.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

impl Depthwise {
    fn describe(&self) -> String {
        format!("{:?} relu {} {}", self.shape, self.relu, self.isa)
    }
}

reidcam_op!(Depthwise, "ReidcamDepthwise3x3");

impl Depthwise {
    fn compute(&self, inputs: &[&[f32]], y: &mut [f32]) {
        let x = inputs[0];
        let shape = self.shape;
        let plane = shape.height * shape.width;
        let batch = x.len() / (shape.channels * plane);
        let run =
            |shape: depthwise::Shape, batch, x: &[f32], w: &[f32], b: &[f32], y: &mut [f32]| {
                SCRATCH.with_borrow_mut(|scratch| {
                    depthwise::depthwise3x3(self.isa, shape, batch, x, w, b, self.relu, y, scratch)
                })
            };
        if batch > 1 {
            let image = shape.channels * plane;
            split_units(y, image, batch, 9 * y.len(), |images, y| {
                let x = &x[images.start * image..images.end * image];
                run(shape, images.len(), x, &self.weights.0, &self.bias.0, y)
            });
        } else {
            split_units(y, plane, shape.channels, 9 * y.len(), |channels, y| {
                let part = depthwise::Shape {
                    channels: channels.len(),
                    ..shape
                };
                let x = &x[channels.start * plane..channels.end * plane];
                let w = &self.weights.0[channels.start * 9..channels.end * 9];
                run(part, 1, x, w, &self.bias.0[channels], y)
            });
        }
    }
}

/// A fused full (one-group) convolution: bias, optional ReLU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FullConv {
    isa: Isa,
    shape: conv::Shape,
    offsets: Arc<[usize]>,
    weights: Floats,
    bias: Floats,
    relu: bool,
    output: Output,
}

impl FullConv {
    fn describe(&self) -> String {
        format!("{:?} relu {} {}", self.shape, self.relu, self.isa)
    }
}

reidcam_op!(FullConv, "ReidcamConv");

impl FullConv {
    fn compute(&self, inputs: &[&[f32]], y: &mut [f32]) {
        let x = inputs[0];
        let shape = self.shape;
        let (oh, ow) = shape.output().expect("checked when the op was made");
        let (x_len, plane) = (shape.inputs * shape.height * shape.width, oh * ow);
        let y_len = shape.outputs * plane;
        for (image, y) in x.chunks_exact(x_len).zip(y.chunks_exact_mut(y_len)) {
            SCRATCH.with_borrow_mut(|scratch| {
                let phases = conv::phase_split(shape, image, scratch);
                // Output channels to threads, all reading the same phase-split image.
                split_units(
                    y,
                    plane,
                    shape.outputs,
                    y.len() * self.offsets.len(),
                    |outputs, y| {
                        let taps = self.offsets.len();
                        conv::convolve(
                            self.isa,
                            shape,
                            &self.offsets,
                            phases,
                            &self.weights.0[outputs.start * taps..outputs.end * taps],
                            &self.bias.0[outputs],
                            self.relu,
                            y,
                        )
                    },
                );
            });
        }
    }
}

/// Max or average pooling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool {
    shape: pool::Shape,
    reduce: pool::Reduce,
    output: Output,
}

impl Pool {
    fn describe(&self) -> String {
        format!("{:?} {:?}", self.shape, self.reduce)
    }
}

reidcam_op!(Pool, "ReidcamPool");

impl Pool {
    fn compute(&self, inputs: &[&[f32]], y: &mut [f32]) {
        let x = inputs[0];
        let (h, w) = (self.shape.height, self.shape.width);
        let (oh, ow) = self.shape.output().expect("checked when the op was made");
        split_units(y, oh * ow, x.len() / (h * w), x.len(), |planes, y| {
            let x = &x[planes.start * h * w..planes.end * h * w];
            SCRATCH.with_borrow_mut(|row| pool::pool(self.shape, self.reduce, x, y, row))
        });
    }
}

/// One step of a chain over each image's vector of channel sums (see [`Pooled`]).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    /// Multiply element-wise (by the 1/(H·W) of a mean, a folded batch-norm's slope).
    Scale(Floats),
    /// `y = W·x`, `W` `[outputs][inputs]` row-major.
    Linear {
        outputs: usize,
        weights: Floats,
    },
    Bias(Floats),
    Relu,
    Sigmoid,
}

/// The per-channel sums of each image over H×W, then a chain of [`Step`]s on that vector.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Pooled {
    channels: usize,
    batch: usize,
    steps: Vec<Step>,
}

impl Pooled {
    fn describe(&self) -> String {
        format!("{} channels, {} steps", self.channels, self.steps.len())
    }

    /// The widest vector of the chain.
    fn width(&self) -> usize {
        self.steps.iter().fold(self.channels, |w, step| match step {
            Step::Linear { outputs, .. } => w.max(*outputs),
            _ => w,
        })
    }

    fn compute(&self, x: &[f32], y: &mut [f32]) {
        let batch = self.batch;
        let per_image = y.len() / batch;
        let plane = x.len() / (batch * self.channels);
        let width = self.width();
        SCRATCH.with_borrow_mut(|scratch| {
            if scratch.len() < 2 * width {
                scratch.resize(2 * width, 0.0);
            }
            let (mut v, mut next) = scratch[..2 * width].split_at_mut(width);
            for (image, out) in x
                .chunks_exact(self.channels * plane)
                .zip(y.chunks_exact_mut(per_image))
            {
                let mut len = self.channels;
                for (a, p) in v.iter_mut().zip(image.chunks_exact(plane)) {
                    *a = plane_sum(p);
                }
                for step in &self.steps {
                    let live = &mut v[..len];
                    match step {
                        Step::Scale(k) => {
                            live.iter_mut().zip(k.0.iter()).for_each(|(a, k)| *a *= k)
                        }
                        Step::Linear { outputs, weights } => {
                            for (out, row) in next.iter_mut().zip(weights.0.chunks_exact(len)) {
                                *out = lane_dot(row, live);
                            }
                            std::mem::swap(&mut v, &mut next);
                            len = *outputs;
                        }
                        Step::Bias(b) => live.iter_mut().zip(b.0.iter()).for_each(|(a, b)| *a += b),
                        Step::Relu => live.iter_mut().for_each(|a| *a = a.max(0.0)),
                        Step::Sigmoid => {
                            live.iter_mut().for_each(|a| *a = 1.0 / (1.0 + (-*a).exp()))
                        }
                    }
                }
                out.copy_from_slice(&v[..len]);
            }
        });
    }
}

/// A [`Pooled`] chain as an op, named after what it is:
/// - `ReidcamGate`, a channel gate (OSNet's aggregation gate, squeeze-and-excitation): the chain
///   ends in a sigmoid, one value per channel; the multiplication by the input is a [`GatedSum`]
///   (or tract's). Replaces ~10 tract nodes of one-element work each;
/// - `ReidcamHead`, a network's head: global average pooling and what follows on the pooled
///   vector (the fc, its folded batch-norm, ReLU; a BNNeck's multiply-add) — any other chain with
///   a linear step, wherever it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PooledChain {
    pooled: Pooled,
    gate: bool,
    output: Output,
}

reidcam_op!(PooledChain, |op: &PooledChain| if op.gate {
    "ReidcamGate"
} else {
    "ReidcamHead"
});

impl PooledChain {
    fn describe(&self) -> String {
        self.pooled.describe()
    }

    fn compute(&self, inputs: &[&[f32]], y: &mut [f32]) {
        self.pooled.compute(inputs[0], y)
    }
}

/// A sum of same-shape tensors, each times its own channel gate or alone: OSNet's
/// `Σₜ gate(xₜ) ⊙ xₜ`. The inputs are the tensors; a gated term's [`Pooled`] chain (the gate,
/// taken over from a gate's [`PooledChain`]) runs on its tensor first, then `kernels::gated_sum` makes the
/// sum in one pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatedSum {
    isa: Isa,
    shape: gated_sum::Shape,
    gates: TVec<Option<Pooled>>,
    output: Output,
}

reidcam_op!(GatedSum, "ReidcamGatedSum");

thread_local! {
    /// The gated sums' gate values: grown to the largest once per thread, then reused.
    static GATE_VALUES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

impl GatedSum {
    fn describe(&self) -> String {
        let gated: Vec<bool> = self.gates.iter().map(Option::is_some).collect();
        format!("{:?} gated {gated:?} {}", self.shape, self.isa)
    }

    fn compute(&self, inputs: &[&[f32]], y: &mut [f32]) {
        let planes = y.len() / self.shape.pixels;
        GATE_VALUES.with_borrow_mut(|values| {
            if values.len() < self.gates.len() * planes {
                values.resize(self.gates.len() * planes, 0.0);
            }
            for (t, gate) in self.gates.iter().enumerate() {
                if let Some(pooled) = gate {
                    pooled.compute(inputs[t], &mut values[t * planes..][..planes]);
                }
            }
            let mut gates = [None; gated_sum::MAX_TERMS];
            for (t, gate) in self.gates.iter().enumerate() {
                gates[t] = gate.as_ref().map(|_| &values[t * planes..][..planes]);
            }
            let terms = self.gates.len();
            gated_sum::gated_sum(self.isa, self.shape, inputs, &gates[..terms], y);
        });
    }
}

/// The sum of a plane in 16 independent lanes (a sequential `f32` sum cannot be vectorised).
fn plane_sum(plane: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 16];
    let chunks = plane.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for (l, v) in lanes.iter_mut().zip(chunk) {
            *l += v;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `Σ a·b` in 16 independent lanes, as [`plane_sum`].
fn lane_dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut lanes = [0.0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for ((l, x), y) in lanes.iter_mut().zip(x).zip(y) {
            *l += x * y;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// How many nodes of each kind the rewrite put in place.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rewritten {
    pub pointwise: usize,
    pub depthwise: usize,
    pub conv: usize,
    pub pool: usize,
    /// Channel gates, standalone or inside gated sums.
    pub gate: usize,
    /// Heads (global pooling and the layers after it) and gated sums.
    pub head: usize,
    pub gated_sum: usize,
    /// Quantised 1×1 and one-group (the stem) convolutions run by our int8 kernels, and
    /// quantised convolutions run in float from dequantised weights (`embed::int8`; 0 for float
    /// models).
    pub int8_pointwise: usize,
    pub int8_conv: usize,
    pub dequantised: usize,
    /// Residual adds and ReLUs fused into the int8 convolutions.
    pub quant_fused: usize,
    /// Whether the model was quantised and translated by `embed::int8`, and the int8 products'
    /// instructions (none where the CPU has none: everything ran from dequantised weights).
    pub quantised: bool,
    pub dot: Option<Dot>,
    /// tract nodes the fused ones replaced (convolutions, bias and residual adds, ReLUs).
    pub replaced: usize,
    /// Our ops whose outputs are recycled from run to run (see `ops::with_output`).
    pub recycled: usize,
}

impl std::fmt::Display for Rewritten {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} fused 1x1, {} depthwise, {} conv, {} pooling, {} gated-sum ({} channel gates) and \
             {} head ops for {} tract nodes; {} outputs recycled",
            self.pointwise,
            self.depthwise,
            self.conv,
            self.pool,
            self.gated_sum,
            self.gate,
            self.head,
            self.replaced,
            self.recycled
        )?;
        if self.quantised {
            let dot = self
                .dot
                .map_or("no dot-product instructions".into(), |d| d.to_string());
            write!(
                f,
                "; int8: {} 1x1 and {} full convolutions ({dot}), {} from dequantised weights",
                self.int8_pointwise, self.int8_conv, self.dequantised
            )?;
        }
        Ok(())
    }
}

/// Replaces the convolutions our kernels cover (see the module docs) with our ops, for `isa`.
pub fn use_reidcam_kernels(model: &mut TypedModel, isa: Isa) -> TractResult<Rewritten> {
    let mut done = Rewritten::default();
    // One fusion at a time, then `compact` drops the replaced nodes, so that no dead reader
    // makes a value look shared to the next match.
    'scan: loop {
        model.compact()?;
        for id in 0..model.nodes().len() {
            let found = if let Some(found) = pointwise_patch(model, id, isa)? {
                found
            } else if let Some(found) = depthwise_patch(model, id, isa)? {
                found
            } else if let Some(found) = conv_patch(model, id, isa)? {
                found
            } else if let Some(found) = pool_patch(model, id)? {
                found
            } else if let Some(found) = pooled_patch(model, id)? {
                found
            } else if let Some(found) = gated_sum_patch(model, id, isa)? {
                found
            } else if let Some(found) = quant_pointwise_patch(model, id)? {
                done.quant_fused += 1;
                found
            } else {
                continue;
            };
            let (patch, replaced) = found;
            patch.apply(model)?;
            done.replaced += replaced;
            continue 'scan;
        }
        break;
    }
    for node in model.nodes() {
        if let Some(sum) = node.op_as::<GatedSum>() {
            done.gate += sum.gates.iter().flatten().count();
        }
        let count = match node.op.name().as_ref() {
            "ReidcamPointwise" => &mut done.pointwise,
            "ReidcamDepthwise3x3" => &mut done.depthwise,
            "ReidcamConv" => &mut done.conv,
            "ReidcamPool" => &mut done.pool,
            "ReidcamGate" => &mut done.gate,
            "ReidcamHead" => &mut done.head,
            "ReidcamGatedSum" => &mut done.gated_sum,
            _ => continue,
        };
        *count += 1;
    }
    Ok(done)
}

/// The only node reading `node`'s single output, unless that output is also a model output.
fn sole_reader(model: &TypedModel, node: usize) -> TractResult<Option<&TypedNode>> {
    let outlet = OutletId::new(node, 0);
    if model.output_outlets()?.contains(&outlet) {
        return Ok(None);
    }
    model.single_succ(node)
}

/// The constant behind `outlet`, as f32 values, if it is one.
fn konst(model: &TypedModel, outlet: OutletId) -> TractResult<Option<Arc<Tensor>>> {
    let fact = model.outlet_fact(outlet)?;
    Ok(fact
        .konst
        .clone()
        .filter(|k| k.datum_type() == f32::datum_type()))
}

fn floats(tensor: &Tensor) -> TractResult<Vec<f32>> {
    Ok(tensor.try_as_plain_ram()?.as_slice::<f32>()?.to_vec())
}

/// Weights with subnormal values (|w| < 2⁻¹²⁶, e.g. from weight decay) replaced by zero: a
/// product with a subnormal takes a ~100-cycle microcode assist on x86, and torchreid's OSNet
/// x0.25 has 471 of them, enough to make a 1×1 layer 6× slower. Each dropped term is below
/// 1.2·10⁻³⁸·|x|.
fn flushed_weights(tensor: &Tensor) -> TractResult<Vec<f32>> {
    let mut values = floats(tensor)?;
    flush_subnormals(&mut values);
    Ok(values)
}

/// Sets the subnormal values to zero; returns how many there were.
pub(super) fn flush_subnormals(values: &mut [f32]) -> usize {
    let mut flushed = 0;
    for v in values.iter_mut().filter(|v| v.is_subnormal()) {
        *v = 0.0;
        flushed += 1;
    }
    flushed
}

/// If `node` is the binary op `B` with `from` as one operand: the other operand.
fn other_operand<B: tract_onnx::tract_core::ops::binary::BinMiniOp>(
    node: &TypedNode,
    from: OutletId,
) -> Option<OutletId> {
    let binary = node
        .op_as::<TypedBinOp>()
        .is_some_and(|op| op.0.is::<B>() && op.1.is_none());
    match node.inputs.as_slice() {
        [a, b] if binary && *a == from => Some(*b),
        [a, b] if binary && *b == from => Some(*a),
        _ => None,
    }
}

/// If `node` is the binary op `B` with `from` as one operand and a constant as the other: it.
fn const_operand<B: tract_onnx::tract_core::ops::binary::BinMiniOp>(
    model: &TypedModel,
    node: &TypedNode,
    from: OutletId,
) -> TractResult<Option<Arc<Tensor>>> {
    match other_operand::<B>(node, from) {
        Some(other) => konst(model, other),
        None => Ok(None),
    }
}

/// The constant `k` as `len` values: its own if it has `len`, its one value repeated if it has
/// one.
fn values(k: &Tensor, len: usize) -> TractResult<Option<Vec<f32>>> {
    Ok(match k.len() {
        n if n == len => Some(floats(k)?),
        1 => Some(vec![floats(k)?[0]; len]),
        _ => None,
    })
}

/// Whether `node`'s output has the concrete `shape`.
fn keeps(model: &TypedModel, node: &TypedNode, shape: &[usize]) -> TractResult<bool> {
    let out = model.outlet_fact(OutletId::new(node.id, 0))?;
    Ok(out.shape.as_concrete() == Some(shape))
}

/// If `node` is `Add(ours, const)` with `len` values (or one), whatever the shapes: the values.
fn bias_add_any(
    model: &TypedModel,
    node: &TypedNode,
    from: OutletId,
    len: usize,
) -> TractResult<Option<Vec<f32>>> {
    match const_operand::<Add>(model, node, from)? {
        Some(k) => values(&k, len),
        None => Ok(None),
    }
}

/// If `node` is `Add(ours, const)` with a per-channel (or single) value of `channels` and the
/// output keeps `shape`: the bias values.
fn bias_add(
    model: &TypedModel,
    node: &TypedNode,
    from: OutletId,
    channels: usize,
    shape: &[usize],
) -> TractResult<Option<Vec<f32>>> {
    let Some(k) = const_operand::<Add>(model, node, from)? else {
        return Ok(None);
    };
    // Per channel: the channel axis is the third from the end, everything else 1.
    let dims = k.shape();
    let per_channel = dims.len() >= 3 && dims[dims.len() - 3] == channels;
    if !keeps(model, node, shape)? || !(per_channel || k.len() == 1) {
        return Ok(None);
    }
    values(&k, channels)
}

/// If `node` is `Add(ours, other)` with `other` a computed value of the same shape: `other`.
fn residual_add(
    model: &TypedModel,
    node: &TypedNode,
    from: OutletId,
    shape: &[usize],
) -> TractResult<Option<OutletId>> {
    let Some(other) = other_operand::<Add>(node, from) else {
        return Ok(None);
    };
    let fact = model.outlet_fact(other)?;
    let same = fact.konst.is_none()
        && fact.datum_type == f32::datum_type()
        && fact.shape.as_concrete() == Some(shape)
        && keeps(model, node, shape)?;
    Ok(same.then_some(other))
}

/// If `node` is `Max(ours, 0)`, whatever the shapes.
fn relu_max_any(model: &TypedModel, node: &TypedNode, from: OutletId) -> TractResult<bool> {
    Ok(match const_operand::<Max>(model, node, from)? {
        Some(k) => k.len() == 1 && floats(&k)?[0] == 0.0,
        None => false,
    })
}

/// If `node` is `Max(ours, 0)` keeping `shape`.
fn relu_max(
    model: &TypedModel,
    node: &TypedNode,
    from: OutletId,
    shape: &[usize],
) -> TractResult<bool> {
    Ok(relu_max_any(model, node, from)? && keeps(model, node, shape)?)
}

/// A 2-D padding as (top, left, bottom, right), if explicit (or none); ONNX's ceil mode only
/// where `ceil_ok`.
fn explicit_padding(padding: &PaddingSpec, ceil_ok: bool) -> Option<(usize, usize, usize, usize)> {
    match padding {
        PaddingSpec::Explicit(b, a) | PaddingSpec::ExplicitOnnxPool(b, a, false)
            if b.len() == 2 && a.len() == 2 =>
        {
            Some((b[0], b[1], a[0], a[1]))
        }
        PaddingSpec::ExplicitOnnxPool(b, a, true) if ceil_ok && b.len() == 2 && a.len() == 2 => {
            Some((b[0], b[1], a[0], a[1]))
        }
        PaddingSpec::Valid => Some((0, 0, 0, 0)),
        _ => None,
    }
}

/// The batch size of a data value `[N,] C, H, W` (rank 3 when tract removed a unit batch axis).
fn batch_of(shape: &[usize]) -> Option<usize> {
    match shape.len() {
        3 => Some(1),
        4 => Some(shape[0]),
        _ => None,
    }
}

type Patch = Option<(TypedModelPatch, usize)>;

/// A patch that computes `last` with `op` from `inputs` (named after `last`'s node).
fn fuse(
    model: &TypedModel,
    inputs: &[OutletId],
    last: OutletId,
    op: impl Into<Box<dyn TypedOp>>,
) -> TractResult<TypedModelPatch> {
    let mut patch = TypedModelPatch::default();
    let taps = inputs
        .iter()
        .map(|&i| patch.tap_model(model, i))
        .collect::<TractResult<TVec<_>>>()?;
    let name = format!("{}.reidcam", model.node(last.node).name);
    let fused = patch.wire_node(name, op, &taps)?;
    patch.shunt_outside(model, last, fused[0])?;
    Ok(patch)
}

/// `last`'s sole reader if it is a `Max(·, 0)` keeping `shape`: its output.
fn trailing_relu(
    model: &TypedModel,
    last: OutletId,
    shape: &[usize],
) -> TractResult<Option<OutletId>> {
    Ok(match sole_reader(model, last.node)? {
        Some(next) if relu_max(model, next, last, shape)? => Some(OutletId::new(next.id, 0)),
        _ => None,
    })
}

fn pointwise_patch(model: &TypedModel, id: usize, isa: Isa) -> TractResult<Patch> {
    let node = model.node(id);
    let Some(einsum) = node.op_as::<EinSum>() else {
        return Ok(None);
    };
    if einsum.q_params.is_some()
        || node.inputs.len() != 2
        || model.outlet_successors(OutletId::new(id, 0)).is_empty()
    {
        return Ok(None);
    }
    // Data first, weights [O, I]; a unit batch axis may be on either side only.
    let axes = einsum.axes.to_string();
    let Some((ins, out)) = axes.split_once("->") else {
        return Ok(None);
    };
    let Some((data_axes, weight_axes)) = ins.split_once(',') else {
        return Ok(None);
    };
    if !matches!(data_axes, "IHW" | "NIHW") || weight_axes != "OI" || !matches!(out, "OHW" | "NOHW")
    {
        return Ok(None);
    }
    let Some(weights) = konst(model, node.inputs[1])? else {
        return Ok(None);
    };
    let data = model.outlet_fact(node.inputs[0])?;
    let out_fact = model.outlet_fact(OutletId::new(id, 0))?;
    let (Some(data_shape), Some(out_shape)) =
        (data.shape.as_concrete(), out_fact.shape.as_concrete())
    else {
        return Ok(None);
    };
    if data.datum_type != f32::datum_type()
        || out_fact.datum_type != f32::datum_type()
        || weights.rank() != 2
    {
        return Ok(None);
    }
    let (Some(batch), Some(out_batch)) = (batch_of(data_shape), batch_of(out_shape)) else {
        return Ok(None);
    };
    let (outputs, inputs) = (weights.shape()[0], weights.shape()[1]);
    let r = data_shape.len();
    let pixels = data_shape[r - 2] * data_shape[r - 1];
    let ro = out_shape.len();
    if batch != out_batch
        || data_shape[r - 3] != inputs
        || out_shape[ro - 3] != outputs
        || out_shape[ro - 2] * out_shape[ro - 1] != pixels
    {
        return Ok(None);
    }
    let shape = out_shape.to_vec();

    // Follow the chain: bias, residual, ReLU.
    let mut last = OutletId::new(id, 0);
    let mut replaced = 1;
    let mut bias = vec![0.0; outputs];
    let mut residual = None;
    let mut relu = false;
    if let Some(next) = sole_reader(model, last.node)?
        && let Some(b) = bias_add(model, next, last, outputs, &shape)?
    {
        bias = b;
        last = OutletId::new(next.id, 0);
        replaced += 1;
    }
    if let Some(next) = sole_reader(model, last.node)?
        && let Some(r) = residual_add(model, next, last, &shape)?
    {
        residual = Some(r);
        last = OutletId::new(next.id, 0);
        replaced += 1;
    }
    if let Some(r) = trailing_relu(model, last, &shape)? {
        relu = true;
        last = r;
        replaced += 1;
    }
    let layer = pointwise::Shape {
        inputs,
        outputs,
        pixels,
    };
    let op = Pointwise {
        isa,
        shape: layer,
        offsets: layer.offsets().into(),
        weights: Floats(flushed_weights(&weights)?.into()),
        bias: Floats(bias.into()),
        residual: residual.is_some(),
        relu,
        output: Output::new(shape.into()),
    };
    let mut inputs = vec![node.inputs[0]];
    inputs.extend(residual);
    Ok(Some((fuse(model, &inputs, last, op)?, replaced)))
}

/// Our int8 1×1 convolution (not yet fused) followed by a residual `Add` and/or a ReLU, or our
/// int8 full convolution followed by a ReLU: the same op with them fused.
// Where `Dot` has no variant (armv7) there is no such op, and the code after the match is dead.
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(unreachable_code, unused_variables, unused_mut)
)]
fn quant_pointwise_patch(model: &TypedModel, id: usize) -> TractResult<Patch> {
    let node = model.node(id);
    if let Some(op) = node.op_as::<QuantFullConv>() {
        let shape = op.output.shape.to_vec();
        return Ok(match trailing_relu(model, OutletId::new(id, 0), &shape)? {
            Some(last) if !op.relu => {
                let fused = QuantFullConv {
                    relu: true,
                    ..op.clone()
                };
                Some((fuse(model, &[node.inputs[0]], last, fused)?, 1))
            }
            _ => None,
        });
    }
    let Some(op) = node.op_as::<QuantPointwise>() else {
        return Ok(None);
    };
    if op.residual || op.relu {
        return Ok(None);
    }
    let shape = op.output.shape.to_vec();
    let mut fused = op.clone();
    let mut last = OutletId::new(id, 0);
    let mut replaced = 0;
    let mut residual = None;
    if let Some(next) = sole_reader(model, last.node)?
        && let Some(r) = residual_add(model, next, last, &shape)?
    {
        residual = Some(r);
        fused.residual = true;
        last = OutletId::new(next.id, 0);
        replaced += 1;
    }
    if let Some(r) = trailing_relu(model, last, &shape)? {
        fused.relu = true;
        last = r;
        replaced += 1;
    }
    if replaced == 0 {
        return Ok(None);
    }
    let mut inputs = vec![node.inputs[0]];
    inputs.extend(residual);
    Ok(Some((fuse(model, &inputs, last, fused)?, replaced)))
}

/// A `Conv` our kernels may take: f32, NCHW (or CHW), OIHW constant kernel and bias, no
/// dilation, concrete shapes, and read by someone.
struct ConvNode<'a> {
    conv: &'a Conv,
    kernel: Arc<Tensor>,
    bias: Arc<Tensor>,
    data_shape: Vec<usize>,
    out_shape: Vec<usize>,
    /// (top, left, bottom, right).
    padding: (usize, usize, usize, usize),
    /// Equal along both axes.
    stride: usize,
}

/// The stride (equal along both axes) and padding (top, left, bottom, right) of a 2-D `conv` our
/// kernels can take: NCHW (or CHW), OIHW weights, no dilation, explicit padding.
fn conv_layout(conv: &Conv) -> Option<(usize, (usize, usize, usize, usize))> {
    let spec = &conv.pool_spec;
    let strides: TVec<usize> = spec.strides.clone().unwrap_or_else(|| tvec![1, 1]);
    let undilated = spec
        .dilations
        .as_ref()
        .is_none_or(|d| d.iter().all(|&d| d == 1));
    let fits = spec.kernel_shape.len() == 2
        && strides.len() == 2
        && strides[0] == strides[1]
        && undilated
        && matches!(spec.data_format, DataFormat::NCHW | DataFormat::CHW)
        && conv.kernel_fmt == KernelFormat::OIHW;
    explicit_padding(&spec.padding, true)
        .filter(|_| fits)
        .map(|padding| (strides[0], padding))
}

fn conv_node(model: &TypedModel, id: usize) -> TractResult<Option<ConvNode<'_>>> {
    let node = model.node(id);
    let Some(conv) = node.op_as::<Conv>() else {
        return Ok(None);
    };
    let ours = conv.q_params.is_none()
        && node.inputs.len() == 3
        && !model.outlet_successors(OutletId::new(id, 0)).is_empty();
    let Some((stride, padding)) = conv_layout(conv).filter(|_| ours) else {
        return Ok(None);
    };
    let (Some(kernel), Some(bias)) = (konst(model, node.inputs[1])?, konst(model, node.inputs[2])?)
    else {
        return Ok(None);
    };
    let data = model.outlet_fact(node.inputs[0])?;
    let out_fact = model.outlet_fact(OutletId::new(id, 0))?;
    let (Some(data_shape), Some(out_shape)) =
        (data.shape.as_concrete(), out_fact.shape.as_concrete())
    else {
        return Ok(None);
    };
    if data.datum_type != f32::datum_type()
        || batch_of(data_shape).is_none()
        || batch_of(out_shape) != batch_of(data_shape)
    {
        return Ok(None);
    }
    Ok(Some(ConvNode {
        conv,
        kernel,
        bias,
        data_shape: data_shape.to_vec(),
        out_shape: out_shape.to_vec(),
        padding,
        stride,
    }))
}

/// The conv's output, or its trailing ReLU's when it has one: (last outlet, relu, nodes).
fn conv_output(
    model: &TypedModel,
    id: usize,
    shape: &[usize],
) -> TractResult<(OutletId, bool, usize)> {
    let conv_out = OutletId::new(id, 0);
    Ok(match trailing_relu(model, conv_out, shape)? {
        Some(r) => (r, true, 2),
        None => (conv_out, false, 1),
    })
}

fn depthwise_patch(model: &TypedModel, id: usize, isa: Isa) -> TractResult<Patch> {
    let Some(c) = conv_node(model, id)? else {
        return Ok(None);
    };
    let spec = &c.conv.pool_spec;
    let channels = spec.input_channels;
    let r = c.data_shape.len();
    let fits = c.conv.group == channels
        && spec.output_channels == channels
        && spec.kernel_shape.as_slice() == [3, 3]
        && c.stride == 1
        && c.padding == (1, 1, 1, 1)
        && c.out_shape == c.data_shape
        && c.data_shape[r - 3] == channels
        && c.kernel.len() == channels * 9;
    let Some(bias) = values(&c.bias, channels)?.filter(|_| fits) else {
        return Ok(None);
    };
    let shape = depthwise::Shape {
        channels,
        height: c.data_shape[r - 2],
        width: c.data_shape[r - 1],
    };
    let (last, relu, replaced) = conv_output(model, id, &c.out_shape)?;
    let op = Depthwise {
        isa,
        shape,
        weights: Floats(flushed_weights(&c.kernel)?.into()),
        bias: Floats(bias.into()),
        relu,
        output: Output::new(c.out_shape.into()),
    };
    Ok(Some((
        fuse(model, &[model.node(id).inputs[0]], last, op)?,
        replaced,
    )))
}

/// The geometry of `conv` as a one-group convolution our kernels take (`kernels::conv`, and
/// `kernels::qconv` for a quantised one) from `data_shape` to `out_shape` (`[N,] C, H, W`):
/// one group, the layout of [`conv_layout`].
pub(super) fn full_conv_shape(
    conv: &Conv,
    data_shape: &[usize],
    out_shape: &[usize],
) -> Option<conv::Shape> {
    let spec = &conv.pool_spec;
    let (stride, padding) = conv_layout(conv)?;
    let batch = batch_of(data_shape)?;
    if conv.group != 1 || batch_of(out_shape) != Some(batch) {
        return None;
    }
    let (r, ro) = (data_shape.len(), out_shape.len());
    let shape = conv::Shape {
        inputs: spec.input_channels,
        outputs: spec.output_channels,
        height: data_shape[r - 2],
        width: data_shape[r - 1],
        kernel: (spec.kernel_shape[0], spec.kernel_shape[1]),
        stride,
        padding,
    };
    let fits = data_shape[r - 3] == shape.inputs
        && out_shape[ro - 3] == shape.outputs
        && shape.output() == Some((out_shape[ro - 2], out_shape[ro - 1]));
    fits.then_some(shape)
}

fn conv_patch(model: &TypedModel, id: usize, isa: Isa) -> TractResult<Patch> {
    let Some(c) = conv_node(model, id)? else {
        return Ok(None);
    };
    let Some(shape) = full_conv_shape(c.conv, &c.data_shape, &c.out_shape).filter(|shape| {
        c.kernel.len() == shape.outputs * shape.inputs * shape.kernel.0 * shape.kernel.1
    }) else {
        return Ok(None);
    };
    let Some(bias) = values(&c.bias, shape.outputs)? else {
        return Ok(None);
    };
    let (last, relu, replaced) = conv_output(model, id, &c.out_shape)?;
    let op = FullConv {
        isa,
        shape,
        offsets: shape.offsets().into(),
        weights: Floats(flushed_weights(&c.kernel)?.into()),
        bias: Floats(bias.into()),
        relu,
        output: Output::new(c.out_shape.into()),
    };
    Ok(Some((
        fuse(model, &[model.node(id).inputs[0]], last, op)?,
        replaced,
    )))
}

fn pool_patch(model: &TypedModel, id: usize) -> TractResult<Patch> {
    let node = model.node(id);
    let (spec, reduce): (&PoolSpec, pool::Reduce) = if let Some(op) = node.op_as::<MaxPool>() {
        if op.with_index_outputs.is_some() {
            return Ok(None);
        }
        (&op.pool_spec, pool::Reduce::Max)
    } else if let Some(op) = node.op_as::<SumPool>() {
        if !op.normalize {
            return Ok(None);
        }
        let reduce = pool::Reduce::Mean {
            count_include_pad: op.count_include_pad,
        };
        (&op.pool_spec, reduce)
    } else {
        return Ok(None);
    };
    let Some(padding) = explicit_padding(&spec.padding, false) else {
        return Ok(None);
    };
    let strides: TVec<usize> = spec.strides.clone().unwrap_or_else(|| tvec![1, 1]);
    let dilated = spec
        .dilations
        .as_ref()
        .is_some_and(|d| d.iter().any(|&d| d != 1));
    if dilated
        || spec.kernel_shape.len() != 2
        || strides.len() != 2
        || !matches!(spec.data_format, DataFormat::NCHW | DataFormat::CHW)
        || padding.0 >= spec.kernel_shape[0]
        || padding.2 >= spec.kernel_shape[0]
        || padding.1 >= spec.kernel_shape[1]
        || padding.3 >= spec.kernel_shape[1]
    {
        return Ok(None);
    }
    let data = model.outlet_fact(node.inputs[0])?;
    let out_fact = model.outlet_fact(OutletId::new(id, 0))?;
    let (Some(data_shape), Some(out_shape)) =
        (data.shape.as_concrete(), out_fact.shape.as_concrete())
    else {
        return Ok(None);
    };
    if data.datum_type != f32::datum_type()
        || batch_of(data_shape).is_none()
        || out_shape.len() != data_shape.len()
    {
        return Ok(None);
    }
    let r = data_shape.len();
    let shape = pool::Shape {
        height: data_shape[r - 2],
        width: data_shape[r - 1],
        kernel: (spec.kernel_shape[0], spec.kernel_shape[1]),
        stride: (strides[0], strides[1]),
        padding,
    };
    if shape.output() != Some((out_shape[r - 2], out_shape[r - 1]))
        || out_shape[..r - 2] != data_shape[..r - 2]
    {
        return Ok(None);
    }
    let op = Pool {
        shape,
        reduce,
        output: Output::new(out_shape.into()),
    };
    Ok(Some((
        fuse(model, &[node.inputs[0]], OutletId::new(id, 0), op)?,
        1,
    )))
}

/// If `node` is an `EinSum` of ours (`from`) with constant weights that is a per-image
/// matrix-vector product on a vector of `inputs` values: the weights as `[outputs][inputs]`.
fn gate_linear(
    model: &TypedModel,
    node: &TypedNode,
    from: OutletId,
    inputs: usize,
    batch: usize,
) -> TractResult<Option<(usize, Vec<f32>)>> {
    let Some(einsum) = node.op_as::<EinSum>() else {
        return Ok(None);
    };
    if einsum.q_params.is_some() || node.inputs.len() != 2 || node.inputs[0] != from {
        return Ok(None);
    }
    let Some(weights) = konst(model, node.inputs[1])? else {
        return Ok(None);
    };
    let axes = einsum.axes.to_string();
    let Some((ins, out)) = axes.split_once("->") else {
        return Ok(None);
    };
    let Some((data, w)) = ins.split_once(',') else {
        return Ok(None);
    };
    let strip = |a: &str| a.replace(['H', 'W'], "");
    let (stripped_data, stripped_out) = (strip(data), strip(out));
    let per_image = matches!(
        (stripped_data.as_str(), w, stripped_out.as_str()),
        ("I" | "NI", "OI", "O" | "NO") | ("I" | "NI", "I", "" | "N") | ("" | "N", "O", "O" | "NO")
    ) && stripped_data.contains('N') == stripped_out.contains('N')
        || matrix_vector_axes(data, w, out, batch);
    let out_len = model
        .outlet_fact(OutletId::new(node.id, 0))?
        .shape
        .as_concrete()
        .map(|s| s.iter().product::<usize>());
    let Some(out_len) = out_len.filter(|_| per_image) else {
        return Ok(None);
    };
    let outputs = out_len / batch;
    if outputs * batch != out_len || weights.len() != outputs * inputs {
        return Ok(None);
    }
    Ok(Some((outputs, floats(&weights)?)))
}

/// Whether EinSum axes `data,w->out` with a 2-D `w` are a matrix-vector product per image
/// (`mk,nk->mn`, a Gemm's): `w`'s second axis is contracted with `data`'s, its first is the
/// output's, the other axes are the same on both sides and, with several images, the image axis
/// is the first. (The vectors' lengths are checked by the caller.)
fn matrix_vector_axes(data: &str, w: &str, out: &str, batch: usize) -> bool {
    let &[wo, wi] = w.chars().collect::<Vec<_>>().as_slice() else {
        return false;
    };
    let others = |axes: &str, drop: char| axes.chars().filter(|&c| c != drop).collect::<String>();
    let (d, o) = (others(data, wi), others(out, wo));
    let image_first = batch == 1 || (!data.starts_with(wi) && !out.starts_with(wo));
    data.contains(wi)
        && !out.contains(wi)
        && out.contains(wo)
        && !data.contains(wo)
        && d == o
        && image_first
}

/// A `Reduce<Sum>` over H×W and the vector steps after it, as a [`PooledChain`] with a linear
/// step: a gate when the chain ends in a sigmoid of one value per channel, else a head.
fn pooled_patch(model: &TypedModel, id: usize) -> TractResult<Patch> {
    let node = model.node(id);
    let Some(reduce) = node.op_as::<Reduce>() else {
        return Ok(None);
    };
    let data = model.outlet_fact(node.inputs[0])?;
    let Some(shape) = data.shape.as_concrete() else {
        return Ok(None);
    };
    let r = shape.len();
    if reduce.reducer != Reducer::Sum
        || data.datum_type != f32::datum_type()
        || !(r == 3 || r == 4)
        || reduce.axes.as_slice() != [r - 2, r - 1]
    {
        return Ok(None);
    }
    let batch = batch_of(shape).expect("rank 3 or 4");
    let channels = shape[r - 3];
    let mut width = channels;
    let mut steps = Vec::new();
    let mut last = OutletId::new(id, 0);
    let mut replaced = 1;
    let mut sigmoid = false;
    while let Some(next) = sole_reader(model, last.node)? {
        let len = model
            .outlet_fact(OutletId::new(next.id, 0))?
            .shape
            .as_concrete()
            .map(|s| s.iter().product::<usize>());
        let same_len = len == Some(batch * width);
        let step = if let Some(k) = const_operand::<Mul>(model, next, last)? {
            match values(&k, width)?.filter(|_| same_len) {
                Some(k) => Some(Step::Scale(Floats(k.into()))),
                None => break,
            }
        } else if let Some(bias) = match same_len {
            true => bias_add_any(model, next, last, width)?,
            false => None,
        } {
            Some(Step::Bias(Floats(bias.into())))
        } else if let Some((outputs, weights)) = gate_linear(model, next, last, width, batch)? {
            width = outputs;
            Some(Step::Linear {
                outputs,
                weights: Floats(weights.into()),
            })
        } else if same_len && relu_max_any(model, next, last)? {
            Some(Step::Relu)
        } else if same_len
            && next
                .op_as::<ElementWiseOp>()
                .is_some_and(|op| op.0.is::<Sigmoid>() && op.1.is_none())
        {
            sigmoid = true;
            Some(Step::Sigmoid)
        } else if same_len && next.op_is::<AxisOp>() {
            // A reshape of the vector (the head's flatten): nothing to compute.
            None
        } else {
            break;
        };
        steps.extend(step);
        last = OutletId::new(next.id, 0);
        replaced += 1;
        if sigmoid {
            break;
        }
    }
    if !steps.iter().any(|s| matches!(s, Step::Linear { .. })) {
        return Ok(None);
    }
    let Some(output_shape) = model
        .outlet_fact(last)?
        .shape
        .as_concrete()
        .map(|s| s.to_vec())
    else {
        return Ok(None);
    };
    let pooled = Pooled {
        channels,
        batch,
        steps,
    };
    let op = PooledChain {
        pooled,
        gate: sigmoid && width == channels,
        output: Output::new(output_shape.into()),
    };
    Ok(Some((fuse(model, &[node.inputs[0]], last, op)?, replaced)))
}

/// The gated value and its gate if `node` is `Mul(x, gate)` with `gate` the output of one of our
/// gates ([`PooledChain`]), computed from `x` and read only by this node.
fn gated_term<'m>(
    model: &'m TypedModel,
    node: &TypedNode,
) -> TractResult<Option<(OutletId, &'m PooledChain)>> {
    for &gate in &node.inputs {
        let Some(x) = other_operand::<Mul>(node, gate) else {
            continue;
        };
        let producer = model.node(gate.node);
        let Some(op) = producer.op_as::<PooledChain>().filter(|op| op.gate) else {
            continue;
        };
        let shape = model
            .outlet_fact(OutletId::new(node.id, 0))?
            .shape
            .as_concrete();
        let x_shape = model.outlet_fact(x)?.shape.as_concrete();
        if producer.inputs.as_slice() == [x]
            && sole_reader(model, producer.id)?.is_some_and(|r| r.id == node.id)
            && x_shape.is_some()
            && x_shape == shape
        {
            return Ok(Some((x, op)));
        }
    }
    Ok(None)
}

/// `Mul(x, gate(x))` (see [`gated_term`]) into a one-term [`GatedSum`], and `Add(a, b)` where `a`
/// or `b` is a [`GatedSum`] only the `Add` reads into one [`GatedSum`] of all their terms.
fn gated_sum_patch(model: &TypedModel, id: usize, isa: Isa) -> TractResult<Patch> {
    let node = model.node(id);
    let out = model.outlet_fact(OutletId::new(id, 0))?;
    let Some(shape) = out.shape.as_concrete().map(<[usize]>::to_vec) else {
        return Ok(None);
    };
    if out.datum_type != f32::datum_type() || batch_of(&shape).is_none() {
        return Ok(None);
    }
    let r = shape.len();
    let layout = gated_sum::Shape {
        channels: shape[r - 3],
        pixels: shape[r - 2] * shape[r - 1],
    };
    let (inputs, gates) = if let Some((x, gate)) = gated_term(model, node)? {
        (vec![x], tvec![Some(gate.pooled.clone())])
    } else {
        let [a, b] = node.inputs.as_slice() else {
            return Ok(None);
        };
        if other_operand::<Add>(node, *a) != Some(*b) {
            return Ok(None);
        }
        // Each operand's terms: a sum's own (if only this node reads it), or the operand alone.
        let mut inputs = Vec::new();
        let mut gates = TVec::new();
        let mut merged = 0;
        for &operand in [a, b] {
            let producer = model.node(operand.node);
            match producer.op_as::<GatedSum>() {
                Some(sum) if sole_reader(model, producer.id)?.is_some_and(|r| r.id == id) => {
                    inputs.extend(producer.inputs.iter().copied());
                    gates.extend(sum.gates.iter().cloned());
                    merged += 1;
                }
                _ => {
                    let fact = model.outlet_fact(operand)?;
                    if fact.konst.is_some()
                        || fact.datum_type != f32::datum_type()
                        || fact.shape.as_concrete() != Some(&shape)
                    {
                        return Ok(None);
                    }
                    inputs.push(operand);
                    gates.push(None);
                }
            }
        }
        if merged == 0 || gates.len() > gated_sum::MAX_TERMS {
            return Ok(None);
        }
        (inputs, gates)
    };
    let op = GatedSum {
        isa,
        shape: layout,
        gates,
        output: Output::new(shape.into()),
    };
    Ok(Some((fuse(model, &inputs, OutletId::new(id, 0), op)?, 1)))
}
