//! [`GatedSum`]: OSNet's `Σₜ gate(xₜ) ⊙ xₜ` with its gates, and its rule.

use std::cell::RefCell;

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::math::{Add, Mul};

use crate::embed::kernels::{Isa, gated_sum};

use super::graph::*;
use super::parallel::*;
use super::pooled::{Pooled, PooledChain};
use super::recycle::*;

/// A sum of same-shape tensors, each times its own channel gate or alone: OSNet's
/// `Σₜ gate(xₜ) ⊙ xₜ`. The inputs are the tensors; a gated term's [`Pooled`] chain (the gate,
/// taken over from a gate's [`PooledChain`]) runs on its tensor first, then `kernels::gated_sum` makes the
/// sum in one pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatedSum {
    isa: Isa,
    pub(super) shape: gated_sum::Shape,
    pub(super) gates: TVec<Option<Pooled>>,
    pub(super) output: Output,
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

    pub(super) fn compute(&self, inputs: &[&[f32]], y: &mut [f32]) {
        let planes = y.len() / self.shape.pixels;
        GATE_VALUES.with_borrow_mut(|values| {
            if values.len() < self.gates.len() * planes {
                values.resize(self.gates.len() * planes, 0.0);
            }
            for (t, term) in inputs.iter().enumerate() {
                self.gate(t, term, &mut values[t * planes..][..planes]);
            }
            self.sum_gated(inputs, values, y);
        });
    }

    /// Term `t`'s gate values (one per plane of `term`) into `values`, if it has a gate.
    pub(super) fn gate(&self, t: usize, term: &[f32], values: &mut [f32]) {
        if let Some(pooled) = &self.gates[t] {
            pooled.compute(term, values);
        }
    }

    /// The sum of `inputs`, each gated term times its gate values, made by [`Self::gate`]
    /// into `values` (term `t`'s at `t ×` the planes of a term).
    pub(super) fn sum_gated(&self, inputs: &[&[f32]], values: &[f32], y: &mut [f32]) {
        let planes = y.len() / self.shape.pixels;
        let mut gates = [None; gated_sum::MAX_TERMS];
        for (t, gate) in self.gates.iter().enumerate() {
            gates[t] = gate.as_ref().map(|_| &values[t * planes..][..planes]);
        }
        let terms = self.gates.len();
        // Pixels to threads (each reads its part of every term, where the layers before left
        // it), the gates made beforehand on whole planes.
        let gates = &gates[..terms];
        let work = y.len() * terms;
        split_shared(y, self.shape.pixels, PIXEL_ALIGN, work, |pixels, out| {
            let (out, _) = out.raw();
            // SAFETY: `out` is `y`, as long as every term; the parts' pixel ranges are
            // disjoint: each writes only its pixels of every plane.
            unsafe { gated_sum::gated_sum_pixels(self.isa, self.shape, inputs, gates, pixels, out) }
        });
    }
}

/// The gated value and its gate if `node` is `Mul(x, gate)` with `gate` the output of one of our
/// gates ([`PooledChain`]), computed from `x` and read only by this node.
pub(super) fn gated_term<'m>(
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

/// `Mul(x, gate(x))` (see [`gated_term`]) into a one-term [`GatedSum`]; `Add(a, b)` where `a`
/// or `b` is a [`GatedSum`] only the `Add` reads into one [`GatedSum`] of all their terms; and
/// `Add(a, b)` of two same-shape outputs of our ops into an ungated two-term one.
pub(super) fn gated_sum_patch(model: &TypedModel, id: usize, isa: Isa) -> TractResult<Patch> {
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
        // A plain sum of two values our ops compute (YOLOX's residual adds after a SiLU) is a
        // two-term sum without gates: ours, so that its operands' outputs are recycled too.
        let ours = |o: &OutletId| model.node(o.node).op.name().starts_with("Reidcam");
        if (merged == 0 && !inputs.iter().all(ours)) || gates.len() > gated_sum::MAX_TERMS {
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
