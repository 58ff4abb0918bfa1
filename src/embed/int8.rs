//! Quantised (QOperator) models through our kernels: the load-time translation that turns tract's
//! int8 graph — `QuantizeLinear → QLinearConv → DequantizeLinear` around every convolution — into
//! a graph with f32 edges, where each quantised convolution quantises its own input.
//!
//! - A quantised 1×1 convolution (tract's `EinSum` with quantisation parameters) becomes our
//!   [`QuantPointwise`](super::ops::QuantPointwise) when the CPU has int8 product
//!   instructions ([`Dot`]: AVX-512 VNNI, AVX2's 16-bit multiply-adds, Armv8.2 `sdot`, NEON's
//!   widening multiplies when asked for): input quantised on the fly, int8 products, exact
//!   int32 sums (the same on each), stored dequantised in f32 (`kernels::qpointwise`). Without
//!   them (x86 below AVX2, armv7, aarch64 cores without `sdot` by default) it becomes a float
//!   1×1 convolution from its dequantised weights, like the others below.
//! - A quantised one-group convolution of any kernel (OSNet's 7×7/2 stem) becomes our
//!   [`QuantFullConv`](super::ops::QuantFullConv) on CPUs with [`Dot`]: the image quantised once,
//!   its taps gathered four to a word, the same int8 product (`kernels::qconv`).
//! - Other quantised convolutions (OSNet's depthwise 3×3; the stem without dot products) become
//!   float `Conv`s with the int8 weights dequantised (`(w − z_w)·s_w`, bias `b·s_x·s_w`), which
//!   our float kernels then take. Their input is on the u8 grid already when it comes from a quantised 1×1
//!   convolution (OSNet's LightConv: 1×1 then depthwise); their output is requantised where a
//!   quantised convolution reads it (it quantises its input) and stays f32 where a float op
//!   (ReLU) reads it — a little more precise than the int8 graph there.
//! - Quantised 1×1 convolutions over a single pixel (the channel gates' fcs, a few hundred
//!   multiply-adds) become float `EinSum` + bias too, so that the whole gate fuses into one
//!   float op.
//! - `QuantizeLinear` nodes disappear (their readers quantise), and so do the
//!   `DequantizeLinear`s after our convolutions (which already write dequantised values).
//!
//! Anything else that reads or writes u8/i8 values (a `QuantizeLinear` read by a float op, a
//! quantised op we do not know) makes the translation give up: the model then runs as tract
//! loaded it, slowly but correctly.

use std::collections::HashMap;
use std::sync::Arc;

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat};
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::quant::{DequantizeLinearF32, QuantizeLinearU8};

use super::kernels::pointwise::Shape;
use super::kernels::qconv::ConvLayer;
use super::kernels::qpointwise::{Dot, Grid, Layer};
use super::ops::{QuantFullConv, QuantPointwise, full_conv_shape};

/// What the translation did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Translated {
    /// Quantised 1×1 convolutions now run by our int8 kernel.
    pub int8_pointwise: usize,
    /// Quantised one-group convolutions of any kernel (the stem) now run by our int8 kernel.
    pub int8_conv: usize,
    /// Quantised convolutions now run in float from dequantised weights.
    pub dequantised: usize,
}

/// Whether `model` has quantised convolutions (and so is worth translating).
pub fn is_quantised(model: &TypedModel) -> bool {
    model.nodes().iter().any(|n| q_params(n).is_some())
}

fn q_params(node: &TypedNode) -> Option<DatumType> {
    if let Some(e) = node.op_as::<EinSum>() {
        e.q_params
    } else if let Some(c) = node.op_as::<Conv>() {
        c.q_params
    } else {
        None
    }
}

fn is_quantise(node: &TypedNode) -> bool {
    node.op_as::<ElementWiseOp>()
        .is_some_and(|op| op.0.is::<QuantizeLinearU8>())
}

/// The model with f32 edges (see the module docs), or `None` if it has a quantised part this
/// translation does not know.
pub fn float_edges(
    model: &TypedModel,
    dot: Option<Dot>,
) -> TractResult<Option<(TypedModel, Translated)>> {
    let mut out = TypedModel::default();
    let mut done = Translated::default();
    // Outlets of `model` → f32 outlets of `out` carrying the same values (dequantised).
    let mut map: HashMap<OutletId, OutletId> = HashMap::new();
    // Outputs of our quantised convolutions in `model`, with the grid they were requantised to.
    let mut ours: HashMap<OutletId, Grid> = HashMap::new();
    for id in model.eval_order()? {
        let node = model.node(id);
        let here = OutletId::new(id, 0);
        if model.input_outlets()?.contains(&here) {
            map.insert(
                here,
                out.add_source(&node.name, node.outputs[0].fact.clone())?,
            );
            continue;
        }
        if is_quantise(node) {
            // Its readers quantise: they get the float value.
            let Some(&x) = map.get(&node.inputs[0]) else {
                return give_up(node, "its input is not known");
            };
            map.insert(here, x);
            continue;
        }
        if let Some(dq) = node.op_as::<DequantizeLinearF32>() {
            let grid = ours.get(&node.inputs[0]);
            if grid.is_none_or(|g| g.zero != dq.zero_point || g.scale != dq.scale) {
                return give_up(
                    node,
                    "it does not follow one of our convolutions on its grid",
                );
            }
            map.insert(here, map[&node.inputs[0]]);
            continue;
        }
        if q_params(node).is_some() {
            let Some(conv) = QuantConv::read(model, node)? else {
                return give_up(
                    node,
                    "quantisation parameters not per output channel and u8/i8",
                );
            };
            let Some(&x) = map.get(&node.inputs[0]) else {
                return give_up(node, "its input is not known");
            };
            let Some(y) = conv.wire(model, node, &mut out, x, dot, &mut done)? else {
                return give_up(node, "a convolution of a form we do not translate");
            };
            map.insert(here, y);
            ours.insert(here, conv.y);
            continue;
        }
        // Any other op: float in, float out.
        let mut inputs = tvec![];
        for &i in &node.inputs {
            let dt = model.outlet_fact(i)?.datum_type;
            if dt.is_quantized() || dt == u8::datum_type() || dt == i8::datum_type() {
                return give_up(node, "a float op reading integers");
            }
            match map.get(&i) {
                Some(&o) => inputs.push(o),
                None => return give_up(node, "its input is not known"),
            }
        }
        let wired = out.wire_node(&node.name, node.op.clone(), &inputs)?;
        for (ix, o) in wired.into_iter().enumerate() {
            map.insert(OutletId::new(id, ix), o);
        }
    }
    let mut outputs = vec![];
    for o in model.output_outlets()? {
        if model.outlet_fact(*o)?.datum_type != f32::datum_type() {
            return Ok(None);
        }
        match map.get(o) {
            Some(&m) => outputs.push(m),
            None => return Ok(None),
        }
    }
    out.select_output_outlets(&outputs)?;
    Ok(Some((out, done)))
}

/// Logs why the translation stops at `node` (the model then runs as tract loaded it).
fn give_up<T>(node: &TypedNode, why: &str) -> TractResult<Option<T>> {
    log::debug!(
        "int8 translation stops at {} ({}): {why}",
        node.name,
        node.op.name()
    );
    Ok(None)
}

/// A quantised convolution's constants: `EinSum` or `Conv` inputs `[x, w, bias, z_x, s_x, z_w,
/// s_w, z_y, s_y]`.
struct QuantConv {
    /// Integer weights minus their zero point, in the op's own layout.
    weights: Vec<i8>,
    bias: Vec<i32>,
    x: Grid,
    w_scales: Vec<f32>,
    y: Grid,
    outputs: usize,
}

impl QuantConv {
    fn read(model: &TypedModel, node: &TypedNode) -> TractResult<Option<QuantConv>> {
        if node.inputs.len() != 9 || q_params(node) != Some(u8::datum_type()) {
            return Ok(None);
        }
        let konst = |i: usize| model.outlet_fact(node.inputs[i]).map(|f| f.konst.clone());
        let mut k = vec![];
        for i in 1..9 {
            match konst(i)? {
                Some(t) => k.push(t),
                None => return Ok(None),
            }
        }
        let (w, bias, zx, sx, zw, sw, zy, sy) =
            (&k[0], &k[1], &k[2], &k[3], &k[4], &k[5], &k[6], &k[7]);
        if w.datum_type().unquantized() != i8::datum_type() {
            return Ok(None);
        }
        let outputs = w.shape()[0];
        let per_output = |t: &Tensor, what: &str| -> TractResult<Option<Vec<f32>>> {
            let t = t.cast_to::<f32>()?;
            let v = t.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
            Ok(match v.len() {
                1 => Some(vec![v[0]; outputs]),
                n if n == outputs => Some(v),
                _ => {
                    log::debug!(
                        "int8 translation: {what} has {n} values for {outputs} outputs",
                        n = v.len()
                    );
                    None
                }
            })
        };
        let (Some(bias), Some(zw), Some(sw)) = (
            per_output(bias, "bias")?,
            per_output(zw, "weight zero point")?,
            per_output(sw, "weight scale")?,
        ) else {
            return Ok(None);
        };
        let scalar = |t: &Tensor| -> TractResult<Option<f32>> {
            (t.len() == 1)
                .then(|| t.cast_to_scalar::<f32>())
                .transpose()
        };
        let (Some(zx), Some(sx), Some(zy), Some(sy)) =
            (scalar(zx)?, scalar(sx)?, scalar(zy)?, scalar(sy)?)
        else {
            return Ok(None);
        };
        let raw = w.cast_to::<i8>()?;
        let raw = raw.try_as_plain_ram()?.as_slice::<i8>()?;
        let per = raw.len() / outputs;
        let mut weights = Vec::with_capacity(raw.len());
        for (o, row) in raw.chunks_exact(per).enumerate() {
            for &v in row {
                match i8::try_from(i32::from(v) - zw[o] as i32) {
                    Ok(v) => weights.push(v),
                    Err(_) => return Ok(None),
                }
            }
        }
        Ok(Some(QuantConv {
            weights,
            bias: bias.iter().map(|&b| b as i32).collect(),
            x: Grid {
                scale: sx,
                zero: zx as i32,
            },
            w_scales: sw,
            y: Grid {
                scale: sy,
                zero: zy as i32,
            },
            outputs,
        }))
    }

    /// Wires this convolution into `out` reading `x`: our int8 op, or a float op on dequantised
    /// weights (see the module docs). Its f32 output.
    #[allow(clippy::too_many_arguments)]
    fn wire(
        &self,
        model: &TypedModel,
        node: &TypedNode,
        out: &mut TypedModel,
        x: OutletId,
        dot: Option<Dot>,
        done: &mut Translated,
    ) -> TractResult<Option<OutletId>> {
        let Some(out_shape) = concrete_shape(model, OutletId::new(node.id, 0))? else {
            return Ok(None);
        };
        let deq_weights: Vec<f32> = self
            .weights
            .chunks_exact(self.weights.len() / self.outputs)
            .zip(&self.w_scales)
            .flat_map(|(row, &s)| row.iter().map(move |&w| f32::from(w) * s))
            .collect();
        let deq_bias: Vec<f32> = self
            .bias
            .iter()
            .zip(&self.w_scales)
            .map(|(&b, &s)| b as f32 * self.x.scale * s)
            .collect();
        if let Some(einsum) = node.op_as::<EinSum>() {
            let axes = einsum.axes.to_string();
            let Some((ins, o)) = axes.split_once("->") else {
                return Ok(None);
            };
            let parts: Vec<&str> = ins.split(',').collect();
            let (data, w) = (parts[0], parts[1]);
            if !matches!(data, "IHW" | "NIHW") || w != "OI" || !matches!(o, "OHW" | "NOHW") {
                return Ok(None);
            }
            let Some(data_shape) = concrete_shape(model, node.inputs[0])? else {
                return Ok(None);
            };
            let r = data_shape.len();
            let shape = Shape {
                inputs: data_shape[r - 3],
                outputs: self.outputs,
                pixels: data_shape[r - 2] * data_shape[r - 1],
            };
            if shape.pixels > 1
                && let Some(dot) = dot
                && let Some(layer) =
                    Layer::new(shape, &self.weights, &self.bias, self.x, &self.w_scales)
            {
                done.int8_pointwise += 1;
                let op = QuantPointwise::new(dot, Arc::new(layer), out_shape.into());
                return Ok(Some(out.wire_node(&node.name, op, &[x])?[0]));
            }
            // One pixel (a gate's fc), no dot-product instructions, or a layer the int8 kernel
            // refuses (its int32 sums could overflow: a dead channel's bias saturated at 2³¹ by
            // the quantiser): float.
            if shape.pixels > 1 && dot.is_some() {
                log::debug!(
                    "{}: {shape:?} runs in float (int32 sums could overflow)",
                    node.name
                );
            }
            done.dequantised += 1;
            let float = EinSum::new(format!("{data},{w}->{o}").parse()?, f32::datum_type());
            let w = out.add_const(
                format!("{}.weights", node.name),
                tensor1(&deq_weights).into_shape(&[self.outputs, shape.inputs])?,
            )?;
            let y = out.wire_node(&node.name, float, &[x, w])?[0];
            let mut bias_shape = vec![1; out_shape.len()];
            bias_shape[out_shape.len() - 3] = self.outputs;
            let b = out.add_const(
                format!("{}.bias", node.name),
                tensor1(&deq_bias).into_shape(&bias_shape)?,
            )?;
            let add = tract_onnx::tract_core::ops::math::add();
            return Ok(Some(
                out.wire_node(format!("{}.add_bias", node.name), add, &[y, b])?[0],
            ));
        }
        let Some(conv) = node.op_as::<Conv>() else {
            return Ok(None);
        };
        if conv.kernel_fmt != KernelFormat::OIHW {
            return Ok(None);
        }
        // A one-group convolution (the stem) in int8 where the CPU has dot products.
        if let Some(dot) = dot
            && let Some(data_shape) = concrete_shape(model, node.inputs[0])?
            && let Some(geometry) = full_conv_shape(conv, &data_shape, &out_shape)
            && let Some(layer) =
                ConvLayer::new(geometry, &self.weights, &self.bias, self.x, &self.w_scales)
        {
            done.int8_conv += 1;
            let op = QuantFullConv::new(dot, Arc::new(layer), out_shape.into());
            return Ok(Some(out.wire_node(&node.name, op, &[x])?[0]));
        }
        done.dequantised += 1;
        let mut float = conv.clone();
        float.q_params = None;
        let Some(kernel_shape) = concrete_shape(model, node.inputs[1])? else {
            return Ok(None);
        };
        let k = out.add_const(
            format!("{}.weights", node.name),
            tensor1(&deq_weights).into_shape(&kernel_shape)?,
        )?;
        let b = out.add_const(format!("{}.bias", node.name), tensor1(&deq_bias))?;
        Ok(Some(out.wire_node(&node.name, float, &[x, k, b])?[0]))
    }
}

/// The shape of `outlet`'s value, if it is known.
fn concrete_shape(model: &TypedModel, outlet: OutletId) -> TractResult<Option<Vec<usize>>> {
    Ok(model
        .outlet_fact(outlet)?
        .shape
        .as_concrete()
        .map(|s| s.to_vec()))
}
