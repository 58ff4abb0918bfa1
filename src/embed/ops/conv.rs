//! [`Depthwise`] 3×3 and [`FullConv`] convolutions (+ ReLU or SiLU), and the rules that fuse them.

use std::sync::Arc;

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat};
use tract_onnx::tract_core::ops::nn::DataFormat;

use crate::embed::kernels::transpose::transpose_block;
use crate::embed::kernels::{Act, Isa, conv, depthwise, pack_weights};

use super::graph::*;
use super::parallel::*;
use super::recycle::*;

/// A fused depthwise 3×3 convolution, padding 1, stride 1 or 2 (YOLOX's downsampling layers):
/// bias, activation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Depthwise {
    pub(super) isa: Isa,
    pub(super) shape: depthwise::Shape,
    pub(super) weights: Floats,
    pub(super) bias: Floats,
    pub(super) act: Act,
    pub(super) output: Output,
}

impl Depthwise {
    fn describe(&self) -> String {
        format!("{:?} {:?} {}", self.shape, self.act, self.isa)
    }
}

reidcam_op!(Depthwise, "ReidcamDepthwise3x3");

impl Depthwise {
    /// Its shape, taps `[9][channels]`, bias and activation, for `kernels::channels_last`.
    pub(super) fn by_tap(&self) -> (depthwise::Shape, Floats, Floats, Act) {
        let mut taps = vec![0.0; self.weights.0.len()];
        transpose_block(
            self.isa,
            &self.weights.0,
            9,
            9,
            self.shape.channels,
            &mut taps,
        );
        (self.shape, Floats(taps.into()), self.bias.clone(), self.act)
    }

    /// Multiply-adds per image.
    pub(super) fn work(&self) -> usize {
        let (oh, ow) = self.shape.output();
        9 * self.shape.channels * oh * ow
    }

    pub(super) fn compute(&self, inputs: &[&[f32]], y: &mut [f32]) {
        let x = inputs[0];
        let shape = self.shape;
        let plane = shape.height * shape.width;
        let batch = x.len() / (shape.channels * plane);
        let (oh, ow) = shape.output();
        let out_plane = oh * ow;
        let run =
            |shape: depthwise::Shape, batch, x: &[f32], w: &[f32], b: &[f32], y: &mut [f32]| {
                SCRATCH.with_borrow_mut(|scratch| {
                    depthwise::depthwise3x3(self.isa, shape, batch, x, w, b, self.act, y, scratch)
                })
            };
        let work = self.work() * batch;
        if batch > 1 {
            let (image, out_image) = (shape.channels * plane, shape.channels * out_plane);
            split_units(y, out_image, batch, work, |images, y| {
                let x = &x[images.start * image..images.end * image];
                run(shape, images.len(), x, &self.weights.0, &self.bias.0, y)
            });
        } else {
            // Output rows to threads: each reads the input rows around its own, which the
            // layer before (split by pixels) left in its cache.
            let y_len = y.len();
            split_shared(y, oh, 1, work, |rows, out| {
                let (out, len) = out.raw();
                debug_assert_eq!(len, y_len);
                SCRATCH.with_borrow_mut(|scratch| {
                    // SAFETY: `out` is `y` (`y_len` floats, one image), and the parts' row
                    // ranges are disjoint: each writes only its rows of every plane.
                    unsafe {
                        depthwise::depthwise3x3_rows(
                            self.isa,
                            shape,
                            1,
                            x,
                            &self.weights.0,
                            &self.bias.0,
                            self.act,
                            rows,
                            out,
                            scratch,
                        )
                    }
                })
            });
        }
    }
}

/// A fused full (one-group) convolution: bias, activation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FullConv {
    pub(super) isa: Isa,
    pub(super) shape: conv::Shape,
    pub(super) offsets: Arc<[usize]>,
    pub(super) weights: Floats,
    pub(super) bias: Floats,
    pub(super) act: Act,
    pub(super) output: Output,
}

impl FullConv {
    /// The op for `shape` with OIHW `weights` (subnormals already flushed; packed here for
    /// `isa`), producing `out_shape`.
    pub(super) fn new(
        isa: Isa,
        shape: conv::Shape,
        weights: Vec<f32>,
        bias: Vec<f32>,
        act: Act,
        out_shape: Vec<usize>,
    ) -> Self {
        FullConv {
            isa,
            shape,
            offsets: shape.offsets().into(),
            weights: Floats(pack_weights(isa, &weights, shape.outputs).into()),
            bias: Floats(bias.into()),
            act,
            output: Output::new(out_shape.into()),
        }
    }

    fn describe(&self) -> String {
        format!("{:?} {:?} {}", self.shape, self.act, self.isa)
    }
}

reidcam_op!(FullConv, "ReidcamConv");

impl FullConv {
    pub(super) fn compute(&self, inputs: &[&[f32]], y: &mut [f32]) {
        let x = inputs[0];
        let shape = self.shape;
        let (oh, ow) = shape.output().expect("checked when the op was made");
        let (x_len, plane) = (shape.inputs * shape.height * shape.width, oh * ow);
        let y_len = shape.outputs * plane;
        let taps = self.offsets.len();
        for (image, y) in x.chunks_exact(x_len).zip(y.chunks_exact_mut(y_len)) {
            SCRATCH.with_borrow_mut(|scratch| {
                // The phase-split copy, its padded rows shared between the threads (a stem's
                // copy of a 736×416 frame is 3.7 MB: a tenth of the layer's time on one thread).
                let phases = conv::phase_buffer(shape, 0.0, scratch);
                let row_len = shape.phase_row_len();
                let copy_work = if phases.len() >= COPY_SPLIT {
                    usize::MAX
                } else {
                    0
                };
                split_units(
                    phases,
                    row_len,
                    shape.phase_rows(),
                    copy_work,
                    |rows, part| {
                        conv::phase_split_rows(self.isa, shape, image, rows, 0.0, |v| v, part)
                    },
                );
                let phases = &*phases;
                // Output rows to threads, each computing every output channel of its rows
                // from the same phase-split image.
                split_shared(y, oh, 1, y_len * taps, |rows, out| {
                    let (out, len) = out.raw();
                    debug_assert_eq!(len, y_len);
                    // SAFETY: `out` is this image's `y` (`y_len` floats), and the parts' row
                    // ranges are disjoint: each writes only its rows of every plane.
                    unsafe {
                        conv::convolve_rows(
                            self.isa,
                            shape,
                            &self.offsets,
                            phases,
                            &self.weights.0,
                            &self.bias.0,
                            self.act,
                            rows,
                            out,
                        )
                    }
                });
            });
        }
    }
}

/// From this many values on, a phase-split copy is shared between threads.
const COPY_SPLIT: usize = 1 << 16;

/// A `Conv` our kernels may take: f32, NCHW (or CHW), OIHW constant kernel and bias, no
/// dilation, concrete shapes, and read by someone.
pub(super) struct ConvNode<'a> {
    pub(super) conv: &'a Conv,
    pub(super) kernel: Arc<Tensor>,
    pub(super) bias: Arc<Tensor>,
    pub(super) data_shape: Vec<usize>,
    pub(super) out_shape: Vec<usize>,
    /// (top, left, bottom, right).
    padding: (usize, usize, usize, usize),
    /// Equal along both axes.
    stride: usize,
}

/// The stride (equal along both axes) and padding (top, left, bottom, right) of a 2-D `conv` our
/// kernels can take: NCHW (or CHW), OIHW weights, no dilation, explicit padding.
pub(super) fn conv_layout(conv: &Conv) -> Option<(usize, (usize, usize, usize, usize))> {
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

pub(crate) fn conv_node(model: &TypedModel, id: usize) -> TractResult<Option<ConvNode<'_>>> {
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

/// The conv's output, or its trailing activation's when it has one: (last outlet, activation,
/// nodes).
pub(super) fn conv_output(
    model: &TypedModel,
    id: usize,
    shape: &[usize],
) -> TractResult<(OutletId, Act, usize)> {
    let conv_out = OutletId::new(id, 0);
    Ok(match trailing_act(model, conv_out, shape)? {
        Some((last, act)) => (last, act, 2),
        None => (conv_out, Act::Identity, 1),
    })
}

impl ConvNode<'_> {
    /// The input's (height, width).
    fn input_size(&self) -> (usize, usize) {
        let r = self.data_shape.len();
        (self.data_shape[r - 2], self.data_shape[r - 1])
    }
}

/// A depthwise convolution: one group per channel, as many outputs as inputs.
fn depthwise_node(model: &TypedModel, id: usize) -> TractResult<Option<ConvNode<'_>>> {
    let Some(c) = conv_node(model, id)? else {
        return Ok(None);
    };
    let spec = &c.conv.pool_spec;
    let channels = spec.input_channels;
    let r = c.data_shape.len();
    let depthwise = c.conv.group == channels
        && spec.output_channels == channels
        && c.data_shape[r - 3] == channels
        && c.out_shape.len() == r;
    Ok(depthwise.then_some(c))
}

pub(crate) fn depthwise_patch(model: &TypedModel, id: usize, isa: Isa) -> TractResult<Patch> {
    let Some(c) = depthwise_node(model, id)? else {
        return Ok(None);
    };
    let (channels, (h, w)) = (c.conv.pool_spec.input_channels, c.input_size());
    let r = c.data_shape.len();
    let (oh, ow) = depthwise::output_size(h, w, c.stride);
    let fits = c.conv.pool_spec.kernel_shape.as_slice() == [3, 3]
        && (c.stride == 1 || c.stride == 2)
        && c.padding == (1, 1, 1, 1)
        && c.out_shape[..r - 2] == c.data_shape[..r - 2]
        && c.out_shape[r - 2..] == [oh, ow]
        && c.kernel.len() == channels * 9;
    let Some(bias) = values(&c.bias, channels)?.filter(|_| fits) else {
        return Ok(None);
    };
    let shape = depthwise::Shape {
        channels,
        height: h,
        width: w,
        stride: c.stride,
    };
    let (last, act, replaced) = conv_output(model, id, &c.out_shape)?;
    let op = Depthwise {
        isa,
        shape,
        weights: Floats(flushed_weights(&c.kernel)?.into()),
        bias: Floats(bias.into()),
        act,
        output: Output::new(c.out_shape.into()),
    };
    Ok(Some((
        fuse(model, &[model.node(id).inputs[0]], last, op)?,
        replaced,
    )))
}

/// A depthwise convolution whose kernel covers its whole input with no padding — a learnt global
/// pooling (retail-0267's `global_avgpool`): its per-channel H·W weights and its bias.
pub(super) fn global_depthwise(
    model: &TypedModel,
    id: usize,
) -> TractResult<Option<(Vec<f32>, Vec<f32>)>> {
    let Some(c) = depthwise_node(model, id)? else {
        return Ok(None);
    };
    let (channels, (h, w)) = (c.conv.pool_spec.input_channels, c.input_size());
    let r = c.data_shape.len();
    let fits = c.conv.pool_spec.kernel_shape.as_slice() == [h, w]
        && c.padding == (0, 0, 0, 0)
        && c.out_shape[r - 2..] == [1, 1]
        && c.kernel.len() == channels * h * w;
    let Some(bias) = values(&c.bias, channels)?.filter(|_| fits) else {
        return Ok(None);
    };
    Ok(Some((flushed_weights(&c.kernel)?, bias)))
}

/// The geometry of `conv` as a one-group convolution our kernels take (`kernels::conv`, and
/// `kernels::qconv` for a quantised one) from `data_shape` to `out_shape` (`[N,] C, H, W`):
/// one group, the layout of [`conv_layout`].
pub(crate) fn full_conv_shape(
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

pub(crate) fn conv_patch(model: &TypedModel, id: usize, isa: Isa) -> TractResult<Patch> {
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
    let (last, act, replaced) = conv_output(model, id, &c.out_shape)?;
    let op = FullConv::new(
        isa,
        shape,
        flushed_weights(&c.kernel)?,
        bias,
        act,
        c.out_shape.clone(),
    );
    Ok(Some((
        fuse(model, &[model.node(id).inputs[0]], last, op)?,
        replaced,
    )))
}
