//! [`Pool`]: max and average pooling, and its rule.

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::{MaxPool, PaddingSpec, PoolSpec, SumPool};
use tract_onnx::tract_core::ops::nn::DataFormat;

use crate::embed::kernels::{Isa, pool};

use super::graph::*;
use super::parallel::*;
use super::recycle::*;

/// Max or average pooling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool {
    isa: Isa,
    shape: pool::Shape,
    reduce: pool::Reduce,
    pub(super) output: Output,
}

impl Pool {
    fn describe(&self) -> String {
        format!("{:?} {:?} {}", self.shape, self.reduce, self.isa)
    }
}

reidcam_op!(Pool, "ReidcamPool");

impl Pool {
    fn compute(&self, inputs: &[&[f32]], y: &mut [f32]) {
        let x = inputs[0];
        let (h, w) = (self.shape.height, self.shape.width);
        let (oh, ow) = self.shape.output().expect("checked when the op was made");
        // Work in multiply-adds of the same time, for the thresholds of `split_units`: a
        // window's value costs about 8 (AVX2, one thread, Intel Xeon model 207: our default
        // model's 3×3/2 max pool over 32×80×40, 230 K window values, 42 µs, what a 1×1 layer
        // of 1.9 M multiply-adds takes; its 2×2/2 average pool over 128×40×20, 102 K, 15 µs).
        // Counted as the values read, the max pool ran on one thread in a crop of an int8
        // model or on AVX-512 (1 M): one crop on 2 threads, medians of 8–10 alternating
        // turns, shared → our default int8 model on AVX2 1.387 → 1.351 ms, natively 1.241 →
        // 1.224, the float model natively 1.716 → 1.688.
        let (kh, kw) = self.shape.kernel;
        let work = y.len() * kh * kw * 8;
        split_units(y, oh * ow, x.len() / (h * w), work, |planes, y| {
            let x = &x[planes.start * h * w..planes.end * h * w];
            SCRATCH.with_borrow_mut(|row| pool::pool(self.isa, self.shape, self.reduce, x, y, row))
        });
    }
}

pub(crate) fn pool_patch(model: &TypedModel, id: usize, isa: Isa) -> TractResult<Patch> {
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
    let strides: TVec<usize> = spec.strides.clone().unwrap_or_else(|| tvec![1, 1]);
    let dilated = spec
        .dilations
        .as_ref()
        .is_some_and(|d| d.iter().any(|&d| d != 1));
    if dilated
        || spec.kernel_shape.len() != 2
        || strides.len() != 2
        || !matches!(spec.data_format, DataFormat::NCHW | DataFormat::CHW)
    {
        return Ok(None);
    }
    let r = data_shape.len();
    let padding = match &spec.padding {
        // "Same" padding (YOLOX's SPP pools) made explicit for this input size.
        PaddingSpec::SameUpper | PaddingSpec::SameLower => {
            let axis = |a: usize| {
                let d = spec.padding.compute_one(
                    a,
                    &data_shape[r - 2 + a],
                    spec.kernel_shape[a],
                    1,
                    strides[a],
                );
                (d.pad_before, d.pad_after)
            };
            let ((t, b), (l, rt)) = (axis(0), axis(1));
            Some((t, l, b, rt))
        }
        other => explicit_padding(other, false),
    };
    let Some(padding) = padding else {
        return Ok(None);
    };
    if padding.0 >= spec.kernel_shape[0]
        || padding.2 >= spec.kernel_shape[0]
        || padding.1 >= spec.kernel_shape[1]
        || padding.3 >= spec.kernel_shape[1]
    {
        return Ok(None);
    }
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
        isa,
        shape,
        reduce,
        output: Output::new(out_shape.into()),
    };
    Ok(Some((
        fuse(model, &[node.inputs[0]], OutletId::new(id, 0), op)?,
        1,
    )))
}
