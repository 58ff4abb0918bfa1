//! YOLOX's "Focus" stem folded into its convolution.
//!
//! Focus is a space-to-depth: four `Slice`s by 2 of the image (rows and columns from 0 or 1),
//! concatenated along the channels, then a `kh × kw` stride-1 convolution. Part `g` holds
//! `x[c][2y + a_g][2x + b_g]`, so the convolution reads image row `2·oy + (2·ky + a_g) − 2·top`:
//! it is one `2kh × 2kw` stride-2 convolution of the image itself, padding doubled, with weight
//! `(c, 2·ky + a_g, 2·kx + b_g)` taken from the original's `(g·C + c, ky, kx)`. The same
//! multiply-adds, without the six `Downsample`s and the `Concat` (1.1 ms of 20 per 736×416
//! frame on the machine of `docs/speed.md`) and without their tensors.

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::Downsample;
use tract_onnx::tract_core::ops::array::TypedConcat;

use crate::embed::kernels::{Isa, conv};

use super::conv::{FullConv, conv_node, conv_output};
use super::graph::*;

/// Follows `outlet` up through `Downsample`s by 2: the value they slice and, per spatial axis
/// (`r − 2`, `r − 1` of a rank-`r` value), the phase taken (`None`: that axis not sliced).
fn phases_of(
    model: &TypedModel,
    mut outlet: OutletId,
    r: usize,
) -> Option<(OutletId, [Option<usize>; 2])> {
    let mut phase = [None, None];
    while let Some(down) = model.node(outlet.node).op_as::<Downsample>() {
        let axis = down.axis.checked_sub(r - 2).filter(|&a| a < 2)?;
        if down.stride != 2 || down.modulo > 1 || phase[axis].is_some() {
            return None;
        }
        phase[axis] = Some(down.modulo);
        outlet = model.node(outlet.node).inputs[0];
    }
    Some((outlet, phase))
}

pub(crate) fn focus_patch(model: &TypedModel, id: usize, isa: Isa) -> TractResult<Patch> {
    let Some(c) = conv_node(model, id)? else {
        return Ok(None);
    };
    let Some(small) = super::full_conv_shape(c.conv, &c.data_shape, &c.out_shape).filter(|s| {
        s.stride == 1 && c.kernel.len() == s.outputs * s.inputs * s.kernel.0 * s.kernel.1
    }) else {
        return Ok(None);
    };
    let node = model.node(id);
    let concat_node = model.node(node.inputs[0].node);
    let r = c.data_shape.len();
    let Some(concat) = concat_node.op_as::<TypedConcat>() else {
        return Ok(None);
    };
    if concat.axis != r - 3
        || concat_node.inputs.len() != 4
        || sole_reader(model, concat_node.id)?.is_none()
    {
        return Ok(None);
    }
    // The four parts: one value, each (row, column) phase once.
    let mut source = None;
    let mut part_of = [[usize::MAX; 2]; 2];
    for (g, &input) in concat_node.inputs.iter().enumerate() {
        let Some((from, [Some(a), Some(b)])) = phases_of(model, input, r) else {
            return Ok(None);
        };
        if source.is_some_and(|s| s != from) || part_of[a][b] != usize::MAX {
            return Ok(None);
        }
        source = Some(from);
        part_of[a][b] = g;
    }
    let Some(source) = source else {
        return Ok(None);
    };
    let fact = model.outlet_fact(source)?;
    let Some(image) = fact.shape.as_concrete() else {
        return Ok(None);
    };
    let channels = small.inputs / 4;
    let (h, w) = (image[image.len() - 2], image[image.len() - 1]);
    if fact.datum_type != f32::datum_type()
        || image.len() != r
        || image[..r - 3] != c.data_shape[..r - 3]
        || image[r - 3] != channels
        || small.inputs != 4 * channels
        || (h / 2, w / 2) != (small.height, small.width)
        || h % 2 != 0
        || w % 2 != 0
    {
        return Ok(None);
    }
    let (kh, kw) = small.kernel;
    let (t, l, b, rt) = small.padding;
    let shape = conv::Shape {
        inputs: channels,
        outputs: small.outputs,
        height: h,
        width: w,
        kernel: (2 * kh, 2 * kw),
        stride: 2,
        padding: (2 * t, 2 * l, 2 * b, 2 * rt),
    };
    if shape.output() != small.output() {
        return Ok(None);
    }
    let Some(bias) = values(&c.bias, shape.outputs)? else {
        return Ok(None);
    };
    let small_weights = flushed_weights(&c.kernel)?;
    let (big_h, big_w) = shape.kernel;
    let mut weights = vec![0.0; shape.outputs * channels * big_h * big_w];
    for o in 0..shape.outputs {
        for ch in 0..channels {
            for y in 0..big_h {
                for x in 0..big_w {
                    let g = part_of[y % 2][x % 2];
                    let from = ((o * small.inputs + g * channels + ch) * kh + y / 2) * kw + x / 2;
                    weights[((o * channels + ch) * big_h + y) * big_w + x] = small_weights[from];
                }
            }
        }
    }
    let (last, act, replaced) = conv_output(model, id, &c.out_shape)?;
    let op = FullConv::new(isa, shape, weights, bias, act, c.out_shape.clone());
    // The conv (and its activation), the concat and the six slices.
    Ok(Some((fuse(model, &[source], last, op)?, replaced + 7)))
}
