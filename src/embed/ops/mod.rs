//! Our own tract operators, calling `embed::kernels`, and the load-time graph rewrite that puts
//! them in place of tract's ops (tract stays the engine: it plans and runs the graph, and runs
//! every op we do not replace).
//!
//! [`use_reidcam_kernels`] runs on the decluttered model, before `into_optimized`, and fuses:
//! - `EinSum(x, W[O,I])` (tract's form of a 1×1 convolution) `→ Add(bias) → Add(residual) →
//!   Max(0)`, each step optional, into one [`Pointwise`];
//! - `Conv` depthwise 3×3, stride 1, padding 1 (bias = folded batch-norm) `→ Max(0)` into one
//!   [`Depthwise`];
//! - one-group `Conv` of any kernel, stride and padding `→ Max(0)` into one [`FullConv`], and
//!   YOLOX's Focus stem (`Downsample`s by 2 → `Concat` → `Conv`) into one of stride 2 (`focus`);
//! - the activation after a convolution — `Max(0)` or tract's `Silu` — into the convolution;
//! - then, a [`FullConv`] whose output (at least 1 MiB) only a [`Depthwise`] layer reads, and
//!   that layer, into one [`ConvDepthwise`] computing them band by band of rows (YOLOX's stem);
//! - `MaxPool` and averaging `SumPool` (explicit or "same" padding) into [`Pool`];
//! - a channel gate, `Reduce<Sum>` over H×W → scale → fc → bias → ReLU → fc → bias → sigmoid,
//!   into one [`PooledChain`] (`ReidcamGate`); any other such chain of per-image vector steps
//!   with an fc in it (a network's head: global average pool → fc → bias → ReLU, a BNNeck's
//!   multiply-add) into one [`PooledChain`] too (`ReidcamHead`);
//! - `Mul(x, gate(x))` and the `Add`s summing such terms (OSNet's `Σₜ gate(xₜ) ⊙ xₜ`), the gates
//!   included, into one [`GatedSum`]; and an `Add` of two of our ops' outputs (YOLOX's residual
//!   after a SiLU) into an ungated one;
//! - nearest upsampling by integer factors (YOLOX's feature pyramid) into [`Upsample`];
//! - chains of `Concat`, reshapes and axis moves, and `Sigmoid`s, over our ops' outputs (YOLOX's
//!   head) into one [`Gather`], a copy through an index table made at load.
//!
//! - last, an OSNet block's streams — chains of 1×1 and depthwise ops (float or int8) from one
//!   tensor to the gated sum joining them — and that sum into one [`Streams`], whose streams one
//!   crop's threads run side by side (one fork per block, not one per layer).
//!
//! A step is fused only when the value it consumes has no other reader, the constants have the
//! shapes the kernels expect and everything is f32; anything else is left to tract untouched.
//! After tract's optimisation, [`recycle_outputs`] lets the ops whose readers are all ours reuse
//! their output tensors from run to run (see [`with_output`]): an OSNet or a YOLOX, whose every
//! node is then ours, embeds a crop or finds the people in a frame without allocating.

use tract_onnx::tract_core::internal::*;

use super::kernels::Isa;
use super::kernels::qpointwise::Dot;

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

mod bands;
mod conv;
mod focus;
mod gated_sum;
mod gather;
mod graph;
mod parallel;
mod pointwise;
mod pool;
mod pooled;
mod quant;
mod recycle;
mod streams;
mod upsample;

pub use bands::ConvDepthwise;
use bands::bands_patch;
pub(crate) use conv::full_conv_shape;
pub use conv::{Depthwise, FullConv};
use conv::{conv_patch, depthwise_patch};
use focus::focus_patch;
pub use gated_sum::GatedSum;
use gated_sum::gated_sum_patch;
pub use gather::Gather;
use gather::gather_patch;
use graph::Patch;
pub(crate) use graph::flush_subnormals;
pub(crate) use parallel::{FRAME_WORK, crop_work, with_kernel_pool};
pub use pointwise::Pointwise;
use pointwise::pointwise_patch;
pub use pool::Pool;
use pool::pool_patch;
pub use pooled::PooledChain;
use pooled::pooled_patch;
pub use quant::{QuantFullConv, QuantPointwise, QuantiseWords};
use quant::{quant_pointwise_patch, shared_words_patch};
use recycle::Output;
pub use streams::Streams;
use streams::streams_patch;
pub use upsample::Upsample;
use upsample::upsample_patch;

/// How many nodes of each kind the rewrite put in place.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rewritten {
    pub pointwise: usize,
    /// Products of further parts of a concatenation read by a 1×1 convolution's op itself
    /// (tract splits such a convolution into one product per part and sums them).
    pub concat_parts: usize,
    pub depthwise: usize,
    pub conv: usize,
    /// Large convolutions computed band by band with the depthwise layer reading them (each
    /// pair one op, counted here, not in `conv` and `depthwise`).
    pub conv_depthwise: usize,
    pub pool: usize,
    /// Channel gates, standalone or inside gated sums.
    pub gate: usize,
    /// Heads (global pooling and the layers after it) and gated sums.
    pub head: usize,
    pub gated_sum: usize,
    /// Nearest upsamplings, and chains of concatenations, reshapes, axis moves and sigmoids
    /// (YOLOX's head) each as one copy through an index table.
    pub upsample: usize,
    pub gather: usize,
    /// Quantised 1×1 and one-group (the stem) convolutions run by our int8 kernels, and
    /// quantised convolutions run in float from dequantised weights (`embed::int8`; 0 for float
    /// models).
    pub int8_pointwise: usize,
    pub int8_conv: usize,
    pub dequantised: usize,
    /// Residual adds and ReLUs fused into the int8 convolutions.
    pub quant_fused: usize,
    /// Tensors quantised once for several int8 1×1 convolutions, and those readers.
    pub quantised_once: usize,
    pub shared_readers: usize,
    /// Whether the model was quantised and translated by `embed::int8`, and the int8 products'
    /// instructions (none where the CPU has none: everything ran from dequantised weights).
    pub quantised: bool,
    pub dot: Option<Dot>,
    /// tract nodes the fused ones replaced (convolutions, bias and residual adds, ReLUs).
    pub replaced: usize,
    /// Our ops whose outputs are recycled from run to run (see `ops::with_output`).
    pub recycled: usize,
    /// OSNet blocks whose streams (and their gated sum) run as one op, and the layers of those
    /// streams (counted above as well): a crop's threads run its streams side by side.
    pub streams: usize,
    pub stream_layers: usize,
}

impl std::fmt::Display for Rewritten {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} fused 1x1 ({} more parts of concatenations read), {} depthwise, {} conv, {} conv + \
             depthwise by bands, {} pooling, {} gated-sum ({} channel gates), {} head, {} upsample \
             and {} gather ops for {} tract nodes; {} outputs recycled; {} blocks' streams ({} \
             layers) as one op each",
            self.pointwise,
            self.concat_parts,
            self.depthwise,
            self.conv,
            self.conv_depthwise,
            self.pool,
            self.gated_sum,
            self.gate,
            self.head,
            self.upsample,
            self.gather,
            self.replaced,
            self.recycled,
            self.streams,
            self.stream_layers
        )?;
        if self.quantised {
            let dot = self
                .dot
                .map_or("no dot-product instructions".into(), |d| d.to_string());
            write!(
                f,
                "; int8: {} 1x1 and {} full convolutions ({dot}), {} from dequantised weights, \
                 {} inputs quantised once for {} of them",
                self.int8_pointwise,
                self.int8_conv,
                self.dequantised,
                self.quantised_once,
                self.shared_readers
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
            } else if let Some(found) = focus_patch(model, id, isa)? {
                found
            } else if let Some(found) = conv_patch(model, id, isa)? {
                found
            } else if let Some(found) = pool_patch(model, id, isa)? {
                found
            } else if let Some(found) = pooled_patch(model, id)? {
                found
            } else if let Some(found) = gated_sum_patch(model, id, isa)? {
                found
            } else if let Some(found) = quant_pointwise_patch(model, id)? {
                done.quant_fused += 1;
                found
            } else if let Some(found) = upsample_patch(model, id)? {
                found
            } else if let Some(found) = gather_patch(model, id, isa)? {
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
    // Then a large convolution and the depthwise layer reading it as one op, band by band.
    apply_each(model, bands_patch, |_| {})?;
    // Then, the fusions done: each int8 input shared by several int8 1×1 convolutions is
    // quantised once.
    apply_each(model, shared_words_patch, |readers| {
        done.quantised_once += 1;
        done.shared_readers += readers;
    })?;
    for node in model.nodes() {
        if let Some(sum) = node.op_as::<GatedSum>() {
            done.gate += sum.gates.iter().flatten().count();
        }
        if let Some(op) = node.op_as::<Pointwise>() {
            done.concat_parts += op.parts() - 1;
        }
        let count = match node.op.name().as_ref() {
            "ReidcamPointwise" => &mut done.pointwise,
            "ReidcamDepthwise3x3" => &mut done.depthwise,
            "ReidcamConv" => &mut done.conv,
            "ReidcamConvDepthwise" => &mut done.conv_depthwise,
            "ReidcamPool" => &mut done.pool,
            "ReidcamGate" => &mut done.gate,
            "ReidcamHead" => &mut done.head,
            "ReidcamGatedSum" => &mut done.gated_sum,
            "ReidcamUpsample" => &mut done.upsample,
            "ReidcamGather" => &mut done.gather,
            _ => continue,
        };
        *count += 1;
    }
    // Last, counted above as they were: each block's streams and their gated sum as one op.
    apply_each(model, streams_patch, |_| {})?;
    for node in model.nodes() {
        if let Some(op) = node.op_as::<Streams>() {
            done.streams += 1;
            done.stream_layers += op.layers();
        }
    }
    Ok(done)
}

/// Applies `rule`'s patches one at a time, each after `compact` has dropped the nodes the one
/// before replaced (so that no dead reader makes a value look shared), until it finds none;
/// `applied` gets the count each patch comes with.
fn apply_each(
    model: &mut TypedModel,
    rule: impl Fn(&TypedModel, usize) -> TractResult<Patch>,
    mut applied: impl FnMut(usize),
) -> TractResult<()> {
    'scan: loop {
        model.compact()?;
        for id in 0..model.nodes().len() {
            if let Some((patch, count)) = rule(model, id)? {
                patch.apply(model)?;
                applied(count);
                continue 'scan;
            }
        }
        return Ok(());
    }
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
        QuantiseWords,
        QuantFullConv,
        Depthwise,
        FullConv,
        ConvDepthwise,
        Pool,
        PooledChain,
        GatedSum,
        Upsample,
        Gather,
        Streams
    );
    None
}

/// Turns recycling on for each of our ops whose readers are all ours (a model output counts:
/// the embedder copies it out); run on the optimised model, whose nodes are the plan's.
/// Returns how many.
pub(crate) fn recycle_outputs(model: &mut TypedModel) -> TractResult<usize> {
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
