//! [`Pointwise`]: a 1×1 convolution (tract's `EinSum`) with its bias, residual and activation
//! (ReLU, SiLU), and the rule that fuses it — also of a concatenation, which tract splits into one
//! product per part and a sum: one op reading every part.

use std::sync::Arc;

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::einsum::EinSum;

use crate::embed::kernels::pointwise::MAX_PARTS;
use crate::embed::kernels::transpose::transpose_block;
use crate::embed::kernels::{
    Act, Isa, block_floats, pack_weights, panel_width, pointwise, unpack_weights,
};

use super::graph::*;
use super::parallel::*;
use super::recycle::*;

/// A fused 1×1 convolution: bias, optional residual (the input after the data), activation. Its
/// input channels come from one input, or from the parts of a concatenation, one input each
/// (`parts`: their channel counts).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pointwise {
    isa: Isa,
    shape: pointwise::Shape,
    parts: Arc<[usize]>,
    offsets: Arc<[usize]>,
    weights: Floats,
    bias: Floats,
    residual: bool,
    /// The residual added after the activation (YOLOX's bottlenecks), not before it.
    residual_after_act: bool,
    act: Act,
    pub(super) output: Output,
}

impl Pointwise {
    /// How many inputs its channels come from (more than one: the parts of a concatenation).
    pub fn parts(&self) -> usize {
        self.parts.len()
    }

    fn describe(&self) -> String {
        let parts = if self.parts.len() > 1 {
            format!(" of {:?}", self.parts)
        } else {
            String::new()
        };
        let after = if self.residual_after_act {
            " after the activation"
        } else {
            ""
        };
        format!(
            "{:?}{parts} residual {}{after} {:?} {}",
            self.shape, self.residual, self.act, self.isa
        )
    }
}

reidcam_op!(Pointwise, "ReidcamPointwise");

/// From this many pixels on, a single image's 1×1 layer is split between threads by pixels;
/// below, by output channels (a few hundred pixels split in two leave each thread tails).
const PIXEL_SPLIT: usize = 256;

impl Pointwise {
    /// Whether it reads one tensor only (no residual, no concatenation's further parts).
    pub(super) fn reads_one(&self) -> bool {
        self.parts.len() == 1 && !self.residual
    }

    /// Multiply-adds per image.
    pub(super) fn work(&self) -> usize {
        self.shape.inputs * self.shape.outputs * self.shape.pixels
    }

    /// Its input and output channels, weights `[inputs][outputs]`, bias and activation, for
    /// `kernels::channels_last` (a layer that reads one tensor: see [`Pointwise::reads_one`]).
    pub(super) fn by_input(&self) -> (usize, usize, Floats, Floats, Act) {
        let (k, outputs) = (self.shape.inputs, self.shape.outputs);
        let rows = unpack_weights(self.isa, &self.weights.0, outputs);
        let mut by_k = vec![0.0; rows.len()];
        transpose_block(self.isa, &rows, k, k, outputs, &mut by_k);
        (k, outputs, Floats(by_k.into()), self.bias.clone(), self.act)
    }

    pub(super) fn isa(&self) -> Isa {
        self.isa
    }

    pub(super) fn compute(&self, inputs: &[&[f32]], y: &mut [f32]) {
        let (x, residual) = inputs.split_at(self.parts.len());
        let residual = residual.first().copied();
        let shape = self.shape;
        let y_len = shape.outputs * shape.pixels;
        let batch = y.len() / y_len;
        if batch > 1 {
            // Images to threads.
            split_units(y, y_len, batch, batch * self.work(), |images, y| {
                let part = pointwise::images_of(x, &self.parts, shape.pixels, images.clone());
                pointwise::pointwise(
                    self.isa,
                    shape,
                    &self.parts,
                    &self.offsets,
                    &part[..x.len()],
                    &self.weights.0,
                    &self.bias.0,
                    residual.map(|r| &r[images.start * y_len..images.end * y_len]),
                    self.residual_after_act,
                    self.act,
                    y,
                )
            });
        } else if shape.pixels >= PIXEL_SPLIT {
            // Pixels to threads: each computes every output channel for its run of pixels,
            // reading only its part of the input planes — the part it (or the thread in its
            // place) wrote in the layer before, still in its cache.
            split_shared(y, shape.pixels, PIXEL_ALIGN, self.work(), |pixels, out| {
                let (out, len) = out.raw();
                debug_assert_eq!(len, y_len);
                // SAFETY: `out` is `y` (`y_len` floats), and the parts' pixel ranges are
                // disjoint: each writes only its own pixels of every channel.
                unsafe {
                    pointwise::pointwise_pixels(
                        self.isa,
                        shape,
                        &self.parts,
                        &self.offsets,
                        x,
                        &self.weights.0,
                        &self.bias.0,
                        residual,
                        self.residual_after_act,
                        self.act,
                        pixels,
                        out,
                    )
                }
            });
        } else {
            // Output channels to threads, cut where the packed weights' panels start.
            split_aligned(
                y,
                shape.pixels,
                shape.outputs,
                panel_width(self.isa),
                self.work(),
                |outputs, y| {
                    let part = pointwise::Shape {
                        outputs: outputs.len(),
                        ..shape
                    };
                    let rows = outputs.start * shape.pixels..outputs.end * shape.pixels;
                    pointwise::pointwise(
                        self.isa,
                        part,
                        &self.parts,
                        &self.offsets,
                        x,
                        &self.weights.0[outputs.start * shape.inputs..outputs.end * shape.inputs],
                        &self.bias.0[outputs.clone()],
                        residual.map(|r| &r[rows]),
                        self.residual_after_act,
                        self.act,
                        y,
                    )
                },
            );
        }
    }
}

/// A 1×1 convolution as tract writes it: `EinSum(data, W[O, I])`, f32, shapes known.
struct OneByOne {
    data: OutletId,
    /// `[O, I]`.
    weights: Arc<Tensor>,
    outputs: usize,
    inputs: usize,
    pixels: usize,
    /// The output's shape.
    shape: Vec<usize>,
}

/// Node `id` if it is a 1×1 convolution our kernels take (see [`OneByOne`]).
fn one_by_one(model: &TypedModel, id: usize) -> TractResult<Option<OneByOne>> {
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
    Ok(Some(OneByOne {
        data: node.inputs[0],
        weights,
        outputs,
        inputs,
        pixels,
        shape: out_shape.to_vec(),
    }))
}

/// If `add` is `Add(ours, other)` where `other` is a 1×1 convolution of the same output shape
/// read by nothing else — the product of another part of a concatenation: it.
fn another_part(
    model: &TypedModel,
    add: &TypedNode,
    from: OutletId,
    shape: &[usize],
) -> TractResult<Option<OneByOne>> {
    let Some(other) = residual_add(model, add, from, shape)? else {
        return Ok(None);
    };
    let sole = sole_reader(model, other.node)?.is_some_and(|reader| reader.id == add.id);
    if other.slot != 0 || !sole {
        return Ok(None);
    }
    Ok(one_by_one(model, other.node)?.filter(|part| part.shape == shape))
}

/// Whether a block of the tile product over `k` rows (`k` × [`block_floats`] floats) stays in
/// a 32 KiB L1 data cache, so that its tiles of outputs read the rows from there. Parts of a
/// concatenation are taken into one op only while it does: YOLOX's SPP block as one product of
/// 4 × 128 rows took 0.71 ms where its four products took 0.65 (AVX-512, 32 floats a row:
/// 64 KiB a block), while its early layers, whose sums each went through memory, gained
/// (`dark2.1/conv3`, 2 × 16 rows of 19,136 pixels: 0.95 → 0.45 ms).
fn fits_l1(isa: Isa, k: usize) -> bool {
    k * block_floats(isa) * std::mem::size_of::<f32>() <= 32 * 1024
}

pub(crate) fn pointwise_patch(model: &TypedModel, id: usize, isa: Isa) -> TractResult<Patch> {
    let Some(first) = one_by_one(model, id)? else {
        return Ok(None);
    };
    let (outputs, pixels) = (first.outputs, first.pixels);
    let shape = first.shape.clone();

    // Follow the chain: a bias and a residual add, in either order — tract splits a 1×1
    // convolution of a `Concat` into one product per part, sums them, then adds the bias
    // (YOLOX's CSP blocks); the sum is the same — then an activation. Each product of another
    // part becomes one more input of this op (as many as `MAX_PARTS`, and the residual too at
    // most `INLINE_INPUTS`): each such sum went once through memory and back, a whole pass at
    // YOLOX's large early planes.
    let mut last = OutletId::new(id, 0);
    let mut replaced = 1;
    let (mut bias, mut residual) = (None, None);
    let mut parts = vec![first];
    let mut act = Act::Identity;
    while let Some(next) = sole_reader(model, last.node)? {
        if bias.is_none()
            && let Some(b) = bias_add(model, next, last, outputs, &shape)?
        {
            bias = Some(b);
        } else if parts.len() < MAX_PARTS
            && parts.len() + usize::from(residual.is_some()) < INLINE_INPUTS
            && let Some(part) = another_part(model, next, last, &shape)?
            && fits_l1(
                isa,
                parts.iter().map(|p| p.inputs).sum::<usize>() + part.inputs,
            )
        {
            parts.push(part);
            replaced += 1;
        } else if residual.is_none()
            && parts.len() < INLINE_INPUTS
            && let Some(r) = residual_add(model, next, last, &shape)?
        {
            residual = Some(r);
        } else {
            break;
        }
        last = OutletId::new(next.id, 0);
        replaced += 1;
    }
    let mut residual_after_act = false;
    if let Some((r, a)) = trailing_act(model, last, &shape)? {
        act = a;
        last = r;
        replaced += 1;
        // YOLOX's bottlenecks add their shortcut after the activation.
        if residual.is_none()
            && parts.len() < INLINE_INPUTS
            && let Some(next) = sole_reader(model, last.node)?
            && let Some(r) = residual_add(model, next, last, &shape)?
        {
            residual = Some(r);
            residual_after_act = true;
            last = OutletId::new(next.id, 0);
            replaced += 1;
        }
    }
    let channels: Vec<usize> = parts.iter().map(|p| p.inputs).collect();
    let inputs = channels.iter().sum();
    // The weights `[O, ΣI]`: each output's row of every part, in the parts' order.
    let mut rows = Vec::with_capacity(outputs * inputs);
    let part_rows = parts
        .iter()
        .map(|p| flushed_weights(&p.weights))
        .collect::<TractResult<Vec<_>>>()?;
    for o in 0..outputs {
        for (part, w) in parts.iter().zip(&part_rows) {
            rows.extend_from_slice(&w[o * part.inputs..][..part.inputs]);
        }
    }
    let layer = pointwise::Shape {
        inputs,
        outputs,
        pixels,
    };
    let op = Pointwise {
        isa,
        shape: layer,
        offsets: layer.offsets(&channels).into(),
        parts: channels.into(),
        weights: Floats(pack_weights(isa, &rows, outputs).into()),
        bias: Floats(bias.unwrap_or_else(|| vec![0.0; outputs]).into()),
        residual: residual.is_some(),
        residual_after_act,
        act,
        output: Output::new(shape.into()),
    };
    let mut inputs: Vec<OutletId> = parts.iter().map(|p| p.data).collect();
    inputs.extend(residual);
    Ok(Some((fuse(model, &inputs, last, op)?, replaced)))
}
