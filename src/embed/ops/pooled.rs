//! [`PooledChain`]: per-image vector chains after a global pool (channel gates, network heads),
//! and their rule.

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::math::Mul;
use tract_onnx::tract_core::ops::nn::{Reduce, Reducer, Sigmoid};

use super::conv::global_depthwise;
use super::graph::*;
use super::parallel::*;
use super::recycle::*;

/// One step of a chain over each image's vector of channel sums (see [`Pooled`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Step {
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

/// The per-channel sums of each image over H×W (weighted by `spatial`, `[channels][H·W]`, when
/// the pooling is a learnt one), then a chain of [`Step`]s on that vector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Pooled {
    channels: usize,
    batch: usize,
    spatial: Option<Floats>,
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

    pub(super) fn compute(&self, x: &[f32], y: &mut [f32]) {
        let per_image = y.len() / self.batch;
        let plane = x.len() / (self.batch * self.channels);
        let images = x.chunks_exact(self.channels * plane);
        for (image, out) in images.zip(y.chunks_exact_mut(per_image)) {
            self.chain(out, |v| match &self.spatial {
                None => {
                    for (a, p) in v.iter_mut().zip(image.chunks_exact(plane)) {
                        *a = plane_sum(p);
                    }
                }
                Some(w) => {
                    let planes = image.chunks_exact(plane).zip(w.0.chunks_exact(plane));
                    for (a, (p, w)) in v.iter_mut().zip(planes) {
                        *a = lane_dot(p, w);
                    }
                }
            });
        }
    }

    /// Whether its pooling is a plain sum (no learnt spatial weights): [`Pooled::of_sums`]
    /// then gives what [`Pooled::compute`] gives.
    pub(super) fn sums_only(&self) -> bool {
        self.spatial.is_none()
    }

    /// Its channels.
    pub(super) fn channels(&self) -> usize {
        self.channels
    }

    /// One image's output from its channel sums (as `plane_sum` makes them), for a pooling
    /// without spatial weights ([`Pooled::sums_only`]).
    pub(super) fn of_sums(&self, sums: &[f32], out: &mut [f32]) {
        debug_assert!(self.sums_only() && sums.len() == self.channels);
        self.chain(out, |v| v.copy_from_slice(sums));
    }

    /// One image's chain: `pool` writes the channel sums into the vector it is given, then
    /// the steps run on it and the result goes to `out`.
    fn chain(&self, out: &mut [f32], pool: impl FnOnce(&mut [f32])) {
        let width = self.width();
        SCRATCH.with_borrow_mut(|scratch| {
            if scratch.len() < 2 * width {
                scratch.resize(2 * width, 0.0);
            }
            let (mut v, mut next) = scratch[..2 * width].split_at_mut(width);
            let mut len = self.channels;
            pool(&mut v[..len]);
            for step in &self.steps {
                let live = &mut v[..len];
                match step {
                    Step::Scale(k) => live.iter_mut().zip(k.0.iter()).for_each(|(a, k)| *a *= k),
                    Step::Linear { outputs, weights } => {
                        for (out, row) in next.iter_mut().zip(weights.0.chunks_exact(len)) {
                            *out = lane_dot(row, live);
                        }
                        std::mem::swap(&mut v, &mut next);
                        len = *outputs;
                    }
                    Step::Bias(b) => live.iter_mut().zip(b.0.iter()).for_each(|(a, b)| *a += b),
                    Step::Relu => live.iter_mut().for_each(|a| *a = a.max(0.0)),
                    Step::Sigmoid => live.iter_mut().for_each(|a| *a = 1.0 / (1.0 + (-*a).exp())),
                }
            }
            out.copy_from_slice(&v[..len]);
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
    pub(super) pooled: Pooled,
    pub(super) gate: bool,
    pub(super) output: Output,
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

/// The sum of a plane in 16 independent lanes (a sequential `f32` sum cannot be vectorised).
pub(super) fn plane_sum(plane: &[f32]) -> f32 {
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
pub(super) fn lane_dot(a: &[f32], b: &[f32]) -> f32 {
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

/// If `node` is an `EinSum` of ours (`from`) with constant weights that is a per-image
/// matrix-vector product on a vector of `inputs` values: the weights as `[outputs][inputs]`.
pub(super) fn gate_linear(
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
pub(super) fn matrix_vector_axes(data: &str, w: &str, out: &str, batch: usize) -> bool {
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
pub(super) fn pooled_patch(model: &TypedModel, id: usize) -> TractResult<Patch> {
    let node = model.node(id);
    let Some(&input) = node.inputs.first() else {
        return Ok(None);
    };
    let data = model.outlet_fact(input)?;
    let Some(shape) = data.shape.as_concrete() else {
        return Ok(None);
    };
    let r = shape.len();
    if data.datum_type != f32::datum_type() || !(r == 3 || r == 4) {
        return Ok(None);
    }
    let batch = batch_of(shape).expect("rank 3 or 4");
    let channels = shape[r - 3];
    let mut steps = Vec::new();
    // The chain starts with a global pooling: a sum over H×W, or a learnt one (its bias the
    // first step).
    let spatial = if let Some(reduce) = node.op_as::<Reduce>() {
        if reduce.reducer != Reducer::Sum || reduce.axes.as_slice() != [r - 2, r - 1] {
            return Ok(None);
        }
        None
    } else if let Some((weights, bias)) = global_depthwise(model, id)? {
        steps.push(Step::Bias(Floats(bias.into())));
        Some(Floats(weights.into()))
    } else {
        return Ok(None);
    };
    let mut width = channels;
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
    // A chain is a head if it has a linear step, a gate if it ends in one sigmoid per channel
    // (an SE gate has both; a group-norm gate made constant, `scale · mean + shift`, only the
    // second); anything else (a lone mean) is left to tract.
    let gate = sigmoid && width == channels;
    if !gate && !steps.iter().any(|s| matches!(s, Step::Linear { .. })) {
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
        spatial,
        steps,
    };
    let op = PooledChain {
        pooled,
        gate,
        output: Output::new(output_shape.into()),
    };
    Ok(Some((fuse(model, &[node.inputs[0]], last, op)?, replaced)))
}
