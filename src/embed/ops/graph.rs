//! Graph matching helpers shared by the rewrite rules: constants, sole readers, bias / residual /
//! activation steps, padding, and the `Floats` constant operand.

use std::sync::Arc;

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::cnn::PaddingSpec;
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::math::{Add, Max};
use tract_onnx::tract_core::ops::nn::Silu;

use crate::embed::kernels::Act;

/// Inputs an op of ours takes at most: tract hands an op its inputs in a `TVec`, inline up to 4
/// and allocated beyond, per run.
pub(super) const INLINE_INPUTS: usize = 4;

/// Constant f32 operands of an op, compared bit for bit (tract wants ops to be `Eq`).
#[derive(Clone, Debug)]
pub(super) struct Floats(pub(super) Arc<[f32]>);

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

/// The only node reading `node`'s single output, unless that output is also a model output.
pub(super) fn sole_reader(model: &TypedModel, node: usize) -> TractResult<Option<&TypedNode>> {
    let outlet = OutletId::new(node, 0);
    if model.output_outlets()?.contains(&outlet) {
        return Ok(None);
    }
    model.single_succ(node)
}

/// The constant behind `outlet`, as f32 values, if it is one.
pub(super) fn konst(model: &TypedModel, outlet: OutletId) -> TractResult<Option<Arc<Tensor>>> {
    let fact = model.outlet_fact(outlet)?;
    Ok(fact
        .konst
        .clone()
        .filter(|k| k.datum_type() == f32::datum_type()))
}

pub(crate) fn floats(tensor: &Tensor) -> TractResult<Vec<f32>> {
    Ok(tensor.try_as_plain_ram()?.as_slice::<f32>()?.to_vec())
}

/// Weights with subnormal values (|w| < 2⁻¹²⁶, e.g. from weight decay) replaced by zero: a
/// product with a subnormal takes a ~100-cycle microcode assist on x86, and torchreid's OSNet
/// x0.25 has 471 of them, enough to make a 1×1 layer 6× slower. Each dropped term is below
/// 1.2·10⁻³⁸·|x|.
pub(super) fn flushed_weights(tensor: &Tensor) -> TractResult<Vec<f32>> {
    let mut values = floats(tensor)?;
    flush_subnormals(&mut values);
    Ok(values)
}

/// Sets the subnormal values to zero; returns how many there were.
pub(crate) fn flush_subnormals(values: &mut [f32]) -> usize {
    let mut flushed = 0;
    for v in values.iter_mut().filter(|v| v.is_subnormal()) {
        *v = 0.0;
        flushed += 1;
    }
    flushed
}

/// If `node` is the binary op `B` with `from` as one operand: the other operand.
pub(super) fn other_operand<B: tract_onnx::tract_core::ops::binary::BinMiniOp>(
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
pub(super) fn const_operand<B: tract_onnx::tract_core::ops::binary::BinMiniOp>(
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
pub(super) fn values(k: &Tensor, len: usize) -> TractResult<Option<Vec<f32>>> {
    Ok(match k.len() {
        n if n == len => Some(floats(k)?),
        1 => Some(vec![floats(k)?[0]; len]),
        _ => None,
    })
}

/// Whether `node`'s output has the concrete `shape`.
pub(super) fn keeps(model: &TypedModel, node: &TypedNode, shape: &[usize]) -> TractResult<bool> {
    let out = model.outlet_fact(OutletId::new(node.id, 0))?;
    Ok(out.shape.as_concrete() == Some(shape))
}

/// If `node` is `Add(ours, const)` with `len` values (or one), whatever the shapes: the values.
pub(super) fn bias_add_any(
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
pub(super) fn bias_add(
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
pub(super) fn residual_add(
    model: &TypedModel,
    node: &TypedNode,
    from: OutletId,
    shape: &[usize],
) -> TractResult<Option<OutletId>> {
    // `Add(x, x)` is no residual (and would make the op read its own output).
    let Some(other) = other_operand::<Add>(node, from).filter(|&o| o != from) else {
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
pub(super) fn relu_max_any(
    model: &TypedModel,
    node: &TypedNode,
    from: OutletId,
) -> TractResult<bool> {
    Ok(match const_operand::<Max>(model, node, from)? {
        Some(k) => k.len() == 1 && floats(&k)?[0] == 0.0,
        None => false,
    })
}

/// If `node` is `Max(ours, 0)` keeping `shape`.
pub(super) fn relu_max(
    model: &TypedModel,
    node: &TypedNode,
    from: OutletId,
    shape: &[usize],
) -> TractResult<bool> {
    Ok(relu_max_any(model, node, from)? && keeps(model, node, shape)?)
}

/// A 2-D padding as (top, left, bottom, right), if explicit (or none); ONNX's ceil mode only
/// where `ceil_ok`.
pub(super) fn explicit_padding(
    padding: &PaddingSpec,
    ceil_ok: bool,
) -> Option<(usize, usize, usize, usize)> {
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
pub(super) fn batch_of(shape: &[usize]) -> Option<usize> {
    match shape.len() {
        3 => Some(1),
        4 => Some(shape[0]),
        _ => None,
    }
}

pub(super) type Patch = Option<(TypedModelPatch, usize)>;

/// A patch that computes `last` with `op` from `inputs` (named after `last`'s node).
pub(super) fn fuse(
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

/// `last`'s sole reader if it is a `Max(·, 0)` or tract's `Silu` (its fusion of
/// `x · Sigmoid(x)`) keeping `shape`: its output and the activation.
pub(super) fn trailing_act(
    model: &TypedModel,
    last: OutletId,
    shape: &[usize],
) -> TractResult<Option<(OutletId, Act)>> {
    let Some(next) = sole_reader(model, last.node)? else {
        return Ok(None);
    };
    let silu = next
        .op_as::<ElementWiseOp>()
        .is_some_and(|op| op.0.is::<Silu>() && op.1.is_none())
        && next.inputs.as_slice() == [last]
        && keeps(model, next, shape)?;
    Ok(if silu {
        Some((OutletId::new(next.id, 0), Act::Silu))
    } else if relu_max(model, next, last, shape)? {
        Some((OutletId::new(next.id, 0), Act::Relu))
    } else {
        None
    })
}

/// `last`'s sole reader if it is a `Max(·, 0)` keeping `shape`: its output.
pub(super) fn trailing_relu(
    model: &TypedModel,
    last: OutletId,
    shape: &[usize],
) -> TractResult<Option<OutletId>> {
    Ok(match sole_reader(model, last.node)? {
        Some(next) if relu_max(model, next, last, shape)? => Some(OutletId::new(next.id, 0)),
        _ => None,
    })
}
