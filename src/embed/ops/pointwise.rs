//! [`Pointwise`]: a 1×1 convolution (tract's `EinSum`) with its bias, residual and activation
//! (ReLU, SiLU), and the rule that fuses it.

use std::sync::Arc;

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::einsum::EinSum;

use crate::embed::kernels::{Act, Isa, pack_weights, panel_width, pointwise};

use super::graph::*;
use super::parallel::*;
use super::recycle::*;

/// A fused 1×1 convolution: bias, optional residual (second input), activation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pointwise {
    isa: Isa,
    shape: pointwise::Shape,
    offsets: Arc<[usize]>,
    weights: Floats,
    bias: Floats,
    residual: bool,
    act: Act,
    pub(super) output: Output,
}

impl Pointwise {
    fn describe(&self) -> String {
        format!(
            "{:?} residual {} {:?} {}",
            self.shape, self.residual, self.act, self.isa
        )
    }
}

reidcam_op!(Pointwise, "ReidcamPointwise");

/// From this many pixels on, a single image's 1×1 layer is split between threads by pixels;
/// below, by output channels (a few hundred pixels split in two leave each thread tails).
const PIXEL_SPLIT: usize = 256;

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
                        self.act,
                        y,
                    )
                },
            );
        } else if shape.pixels >= PIXEL_SPLIT {
            // Pixels to threads: each computes every output channel for its run of pixels,
            // reading only its part of the input planes — the part it (or the thread in its
            // place) wrote in the layer before, still in its cache.
            split_shared(
                y,
                shape.pixels,
                PIXEL_ALIGN,
                shape.inputs * y_len,
                |pixels, out| {
                    let (out, len) = out.raw();
                    debug_assert_eq!(len, y_len);
                    // SAFETY: `out` is `y` (`y_len` floats), and the parts' pixel ranges are
                    // disjoint: each writes only its own pixels of every channel.
                    unsafe {
                        pointwise::pointwise_pixels(
                            self.isa,
                            shape,
                            &self.offsets,
                            x,
                            &self.weights.0,
                            &self.bias.0,
                            residual,
                            self.act,
                            pixels,
                            out,
                        )
                    }
                },
            );
        } else {
            // Output channels to threads, cut where the packed weights' panels start.
            split_aligned(
                y,
                shape.pixels,
                shape.outputs,
                panel_width(self.isa),
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
                        self.act,
                        y,
                    )
                },
            );
        }
    }
}

pub(crate) fn pointwise_patch(model: &TypedModel, id: usize, isa: Isa) -> TractResult<Patch> {
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

    // Follow the chain: a bias and a residual add, in either order — tract splits a 1×1
    // convolution of a `Concat` into one product per part, sums them, then adds the bias
    // (YOLOX's CSP blocks); the sum is the same — then an activation.
    let mut last = OutletId::new(id, 0);
    let mut replaced = 1;
    let (mut bias, mut residual) = (None, None);
    let mut act = Act::Identity;
    while let Some(next) = sole_reader(model, last.node)? {
        if bias.is_none()
            && let Some(b) = bias_add(model, next, last, outputs, &shape)?
        {
            bias = Some(b);
        } else if residual.is_none()
            && let Some(r) = residual_add(model, next, last, &shape)?
        {
            residual = Some(r);
        } else {
            break;
        }
        last = OutletId::new(next.id, 0);
        replaced += 1;
    }
    if let Some((r, a)) = trailing_act(model, last, &shape)? {
        act = a;
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
        weights: Floats(pack_weights(isa, &flushed_weights(&weights)?, outputs).into()),
        bias: Floats(bias.unwrap_or_else(|| vec![0.0; outputs]).into()),
        residual: residual.is_some(),
        act,
        output: Output::new(shape.into()),
    };
    let mut inputs = vec![node.inputs[0]];
    inputs.extend(residual);
    Ok(Some((fuse(model, &inputs, last, op)?, replaced)))
}
