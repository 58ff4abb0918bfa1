//! [`Gather`]: a chain of data-movement steps (concatenations, reshapes, axis moves) and
//! sigmoids over our ops' outputs, in one copy through an index table made at load; its rule.
//!
//! YOLOX's head ends this way: per level `Concat(box, Sigmoid(objectness), Sigmoid(class))`,
//! each reshaped to `[1, 6, H·W]`, the three levels concatenated and the two last axes swapped
//! to `[1, cells, 6]`. tract would allocate a tensor per step, each frame; as our ops the outputs
//! are recycled and each chain is one pass over its values.

use std::sync::Arc;

use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::array::TypedConcat;
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::nn::Sigmoid;

use crate::embed::kernels::Isa;
use crate::embed::kernels::sigmoid::sigmoid;

use super::graph::*;
use super::recycle::*;

/// Bits of a table entry: the offset in its input, the input, and whether the sigmoid applies.
const OFFSET_BITS: u32 = 26;
const OFFSET_MASK: u32 = (1 << OFFSET_BITS) - 1;
const INPUT_MASK: u32 = 0x1f;
/// Inputs a gather reads at most ([`INLINE_INPUTS`]: YOLOX's head is then four gathers, one per
/// level, each of three inputs, and one of the levels). The entry has room for 32.
const MAX_INPUTS: usize = INLINE_INPUTS;
const _: () = assert!(MAX_INPUTS <= INPUT_MASK as usize + 1);
const SIGMOID: u32 = 1 << 31;

/// `y[i] = act(inputs[k][o])` for the `(k, o, act)` of table entry `i`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gather {
    isa: Isa,
    copies: Copies,
    /// The output ranges (start, length) whose entries have the sigmoid bit: after the copy, the
    /// sigmoid runs over each in one vectorised pass.
    sigmoid_runs: Arc<[(usize, usize)]>,
    inputs: usize,
    pub(super) output: Output,
}

/// How the values are copied: as runs of consecutive values (a concatenation, a reshape), when
/// there are few, else value by value (a transposition).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Copies {
    Runs(Arc<[Run]>),
    /// Per output value: offset (26 bits) and input (5 bits); no sigmoid bit.
    Table(Arc<[u32]>),
}

/// `len` values from `src` in input `input` to `dst` in the output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    dst: usize,
    input: usize,
    src: usize,
    len: usize,
}

/// A run per this many values at most, else the table (4 bytes per value against a run's 32).
const VALUES_PER_RUN: usize = 8;

impl Gather {
    fn describe(&self) -> String {
        let sigmoids: usize = self.sigmoid_runs.iter().map(|r| r.1).sum();
        let copies = match &self.copies {
            Copies::Runs(runs) => format!("{} runs", runs.len()),
            Copies::Table(_) => "a table".into(),
        };
        format!(
            "{} values from {} inputs in {copies}, {sigmoids} through a sigmoid",
            self.output.shape.iter().product::<usize>(),
            self.inputs
        )
    }

    /// The op for table `entries` (see [`Gather::entries`]).
    fn new(isa: Isa, entries: &[u32], inputs: usize, output: Output) -> Self {
        // Runs of consecutive values of one input (the offset never carries into the input),
        // and runs of values through the sigmoid.
        let mut copies: Vec<(usize, usize)> = Vec::new();
        let mut sigmoid_runs: Vec<(usize, usize)> = Vec::new();
        for (i, &e) in entries.iter().enumerate() {
            let before = i.checked_sub(1).map(|b| entries[b]);
            let value = e & !SIGMOID;
            match (copies.last_mut(), before) {
                (Some(run), Some(p))
                    if p & OFFSET_MASK != OFFSET_MASK && (p & !SIGMOID) + 1 == value =>
                {
                    run.1 += 1
                }
                _ => copies.push((i, 1)),
            }
            if e & SIGMOID != 0 {
                match (sigmoid_runs.last_mut(), before) {
                    (Some(run), Some(p)) if p & SIGMOID != 0 => run.1 += 1,
                    _ => sigmoid_runs.push((i, 1)),
                }
            }
        }
        let copies = if copies.len() * VALUES_PER_RUN <= entries.len() {
            let run = |&(dst, len): &(usize, usize)| Run {
                dst,
                input: ((entries[dst] >> OFFSET_BITS) & INPUT_MASK) as usize,
                src: (entries[dst] & OFFSET_MASK) as usize,
                len,
            };
            Copies::Runs(copies.iter().map(run).collect())
        } else {
            Copies::Table(entries.iter().map(|&e| e & !SIGMOID).collect())
        };
        Gather {
            isa,
            copies,
            sigmoid_runs: sigmoid_runs.into(),
            inputs,
            output,
        }
    }

    /// Per output value: offset (26 bits), input (5 bits), sigmoid (the top bit).
    fn entries(&self) -> Vec<u32> {
        let mut entries = match &self.copies {
            Copies::Table(table) => table.to_vec(),
            Copies::Runs(runs) => {
                let mut entries = vec![0; self.output.shape.iter().product()];
                for r in runs.iter() {
                    let k = (r.input as u32) << OFFSET_BITS;
                    for (i, e) in entries[r.dst..][..r.len].iter_mut().enumerate() {
                        *e = k | (r.src + i) as u32;
                    }
                }
                entries
            }
        };
        for &(start, len) in self.sigmoid_runs.iter() {
            entries[start..][..len]
                .iter_mut()
                .for_each(|e| *e |= SIGMOID);
        }
        entries
    }

    fn compute(&self, inputs: &[&[f32]], y: &mut [f32]) {
        assert_eq!(inputs.len(), self.inputs, "gather inputs");
        match &self.copies {
            Copies::Runs(runs) => {
                for r in runs.iter() {
                    y[r.dst..][..r.len].copy_from_slice(&inputs[r.input][r.src..][..r.len]);
                }
            }
            Copies::Table(table) => {
                assert_eq!(y.len(), table.len(), "gather output length");
                for (y, &e) in y.iter_mut().zip(table.iter()) {
                    *y = inputs[(e >> OFFSET_BITS) as usize][(e & OFFSET_MASK) as usize];
                }
            }
        }
        for &(start, len) in self.sigmoid_runs.iter() {
            sigmoid(self.isa, &mut y[start..][..len]);
        }
    }
}

reidcam_op!(Gather, "ReidcamGather");

/// One step of a chain: what `node` does to its inputs, if it is one a [`Gather`] can take.
enum Step<'a> {
    Concat(usize),
    Axis(&'a AxisOp),
    Sigmoid,
}

fn step_of(node: &TypedNode) -> Option<Step<'_>> {
    if let Some(concat) = node.op_as::<TypedConcat>() {
        Some(Step::Concat(concat.axis))
    } else if let Some(axis) = node.op_as::<AxisOp>() {
        Some(Step::Axis(axis))
    } else if node
        .op_as::<ElementWiseOp>()
        .is_some_and(|op| op.0.is::<Sigmoid>() && op.1.is_none())
    {
        Some(Step::Sigmoid)
    } else {
        None
    }
}

/// A concatenation, axis change or sigmoid of values our ops compute (or of a [`Gather`] only it
/// reads) into one [`Gather`]: the table of each input (its own values in order, or the gather's
/// table) put through the same step.
pub(crate) fn gather_patch(model: &TypedModel, id: usize, isa: Isa) -> TractResult<Patch> {
    let node = model.node(id);
    let Some(step) = step_of(node) else {
        return Ok(None);
    };
    let out = model.outlet_fact(OutletId::new(id, 0))?;
    let Some(out_shape) = out.shape.as_concrete() else {
        return Ok(None);
    };
    if out.datum_type != f32::datum_type() || node.outputs.len() != 1 {
        return Ok(None);
    }
    // The gathers only this node reads are merged into it when all their inputs fit in one;
    // else they are read as they are.
    let mergeable = |input: &OutletId| -> TractResult<Option<&Gather>> {
        let producer = model.node(input.node);
        Ok(producer
            .op_as::<Gather>()
            .filter(|_| matches!(sole_reader(model, producer.id), Ok(Some(r)) if r.id == id)))
    };
    let mut reads = 0;
    for input in &node.inputs {
        reads += mergeable(input)?.map_or(1, |g| g.inputs);
    }
    let merge = reads <= MAX_INPUTS;
    let mut inputs: Vec<OutletId> = Vec::new();
    let mut tables: TVec<Tensor> = TVec::new();
    let mut replaced = 1;
    for &input in &node.inputs {
        let fact = model.outlet_fact(input)?;
        let Some(shape) = fact.shape.as_concrete() else {
            return Ok(None);
        };
        if fact.konst.is_some() || fact.datum_type != f32::datum_type() {
            return Ok(None);
        }
        let producer = model.node(input.node);
        let table: Vec<u32> = match mergeable(&input)? {
            Some(gather) if merge => {
                let base = inputs.len() as u32;
                inputs.extend(producer.inputs.iter().copied());
                replaced += 1;
                gather
                    .entries()
                    .into_iter()
                    .map(|e| e + (base << OFFSET_BITS))
                    .collect()
            }
            _ if producer.op.name().starts_with("Reidcam") => {
                let k = inputs.len() as u32;
                inputs.push(input);
                let len = shape.iter().product::<usize>();
                if len > OFFSET_MASK as usize + 1 {
                    return Ok(None);
                }
                (0..len as u32).map(|o| o | (k << OFFSET_BITS)).collect()
            }
            _ => return Ok(None),
        };
        if inputs.len() > MAX_INPUTS {
            return Ok(None);
        }
        tables.push(Tensor::from_shape(shape, &table)?);
    }
    let table = match step {
        Step::Concat(axis) => Tensor::stack_tensors(axis, &tables)?,
        _ if tables.len() != 1 => return Ok(None),
        Step::Axis(op) => {
            let mut table = tables.remove(0);
            op.change_tensor(&mut table, false)?;
            table
        }
        Step::Sigmoid => {
            let mut table = tables.remove(0);
            {
                let mut plain = table.try_as_plain_ram_mut()?;
                let entries = plain.as_slice_mut::<u32>()?;
                // A sigmoid of a sigmoid is not one bit: leave it to tract.
                if entries.iter().any(|&e| e & SIGMOID != 0) {
                    return Ok(None);
                }
                entries.iter_mut().for_each(|e| *e |= SIGMOID);
            }
            table
        }
    };
    if table.shape() != out_shape {
        return Ok(None);
    }
    let op = Gather::new(
        isa,
        table.try_as_plain_ram()?.as_slice::<u32>()?,
        inputs.len(),
        Output::new(out_shape.into()),
    );
    Ok(Some((
        fuse(model, &inputs, OutletId::new(id, 0), op)?,
        replaced,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_pick_their_input_offset_and_sigmoid() {
        let a = [1.0, -2.0, 3.0];
        let b = [0.0, 10.0];
        let entry = |k: u32, o: u32| o | (k << OFFSET_BITS);
        let table = [
            entry(1, 1),
            entry(0, 2),
            entry(1, 0) | SIGMOID,
            entry(0, 1) | SIGMOID,
            entry(0, 0),
            entry(0, 0) | SIGMOID,
        ];
        let op = Gather::new(Isa::detect(), &table, 2, Output::new(tvec![6]));
        assert_eq!(*op.sigmoid_runs, [(2, 2), (5, 1)]);
        assert_eq!(op.entries(), table);
        let mut y = [f32::NAN; 6];
        op.compute(&[&a, &b], &mut y);
        assert_eq!(y[..2], [10.0, 3.0]);
        assert!((y[2] - 0.5).abs() < 1e-7, "{}", y[2]);
        let want = 1.0 / (1.0 + 2f64.exp());
        assert!((f64::from(y[3]) - want).abs() < 1e-7, "{} vs {want}", y[3]);
        assert_eq!(y[4], 1.0);
        assert!((f64::from(y[5]) - 1.0 / (1.0 + (-1f64).exp())).abs() < 1e-7);
    }
}
