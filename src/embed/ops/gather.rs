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
use crate::embed::kernels::transpose::transpose_block;

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

/// How the values are copied: as runs of values at a constant distance in one input (a
/// concatenation or a reshape: consecutive values; a transposition: a column), when there are
/// few, else value by value.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Copies {
    Runs(Arc<[Run]>),
    /// Per output value: offset (26 bits) and input (5 bits); no sigmoid bit.
    Table(Arc<[u32]>),
}

/// `len` values to `dst..dst + len` in the output from `src`, `src + step`, … in input `input`;
/// then, for each of the next `columns − 1` columns of the input, `len` more from one value on
/// (`y[dst + c·len + i] = x[src + c + i·step]`): a block of a transposition, copied a row of the
/// input at a time, so that each of its rows (pages apart: 10.6 KB in YOLOX-Nano's head) is
/// visited once per block and not once per column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    dst: usize,
    input: usize,
    src: usize,
    step: usize,
    len: usize,
    columns: usize,
}

/// Columns per block of a transposition at most (the block's output, `columns · len` floats,
/// stays in the L1 cache: 5.4 KB in YOLOX-Nano's head).
const BLOCK_COLUMNS: usize = 16;

/// A run per this many values at most, else the table (4 bytes per value against a run's 40).
/// YOLOX-Nano's head at 416×416 moves its 85 × 3549 scores to 3549 × 85 in 3549 runs of 85.
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
        // Runs of values at a constant step in one input (the offset never carries into the
        // input: a run's step is set by its second value), and runs of values through the
        // sigmoid.
        let mut copies: Vec<Run> = Vec::new();
        let mut sigmoid_runs: Vec<(usize, usize)> = Vec::new();
        for (i, &e) in entries.iter().enumerate() {
            let (input, src) = (
                ((e >> OFFSET_BITS) & INPUT_MASK) as usize,
                (e & OFFSET_MASK) as usize,
            );
            match copies.last_mut() {
                Some(run) if run.input == input && run.len == 1 && src > run.src => {
                    run.step = src - run.src;
                    run.len = 2;
                }
                Some(run)
                    if run.input == input && run.len > 1 && run.src + run.len * run.step == src =>
                {
                    run.len += 1
                }
                _ => copies.push(Run {
                    dst: i,
                    input,
                    src,
                    step: 1,
                    len: 1,
                    columns: 1,
                }),
            }
            if e & SIGMOID != 0 {
                let before = i.checked_sub(1).map(|b| entries[b]);
                match (sigmoid_runs.last_mut(), before) {
                    (Some(run), Some(p)) if p & SIGMOID != 0 => run.1 += 1,
                    _ => sigmoid_runs.push((i, 1)),
                }
            }
        }
        let copies = if copies.len() * VALUES_PER_RUN <= entries.len() {
            // Strided runs that read the next column of the same rows, one after the other in
            // the output, as blocks (of at most `step` columns: rows that do not overlap).
            let mut blocks: Vec<Run> = Vec::with_capacity(copies.len());
            for r in copies {
                match blocks.last_mut() {
                    Some(b)
                        if b.step > 1
                            && (b.input, b.step, b.len) == (r.input, r.step, r.len)
                            && b.src + b.columns == r.src
                            && b.dst + b.columns * b.len == r.dst
                            && b.columns < BLOCK_COLUMNS.min(b.step) =>
                    {
                        b.columns += 1
                    }
                    _ => blocks.push(r),
                }
            }
            Copies::Runs(blocks.into())
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
                    let block = entries[r.dst..][..r.columns * r.len].chunks_exact_mut(r.len);
                    for (c, column) in block.enumerate() {
                        for (i, e) in column.iter_mut().enumerate() {
                            *e = k | (r.src + c + i * r.step) as u32;
                        }
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
                    let y = &mut y[r.dst..][..r.columns * r.len];
                    if r.step == 1 {
                        y.copy_from_slice(&inputs[r.input][r.src..][..r.len]);
                        continue;
                    }
                    let x = &inputs[r.input][r.src..][..(r.len - 1) * r.step + r.columns];
                    transpose_block(self.isa, x, r.step, r.columns, r.len, y);
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

    #[test]
    fn a_transposition_is_copied_in_strided_runs() {
        // Two inputs of 9 rows (10 and 12 columns) concatenated along the columns, then
        // transposed to 22 rows of 9, row 4 through a sigmoid: a run per output row,
        // each reading a column of its input.
        let a: Vec<f32> = (0..90).map(|i| i as f32).collect();
        let b: Vec<f32> = (0..108).map(|i| -(i as f32) / 8.0).collect();
        let entry = |k: u32, o: usize| o as u32 | (k << OFFSET_BITS);
        let mut table = Vec::new();
        for column in 0..22 {
            for row in 0..9 {
                let e = if column < 10 {
                    entry(0, row * 10 + column)
                } else {
                    entry(1, row * 12 + column - 10)
                };
                table.push(if row == 4 { e | SIGMOID } else { e });
            }
        }
        let op = Gather::new(Isa::detect(), &table, 2, Output::new(tvec![22, 9]));
        let Copies::Runs(runs) = &op.copies else {
            panic!("a table for 22 runs of 9")
        };
        // One block of each input's columns.
        assert_eq!(runs.iter().map(|r| r.columns).collect::<Vec<_>>(), [10, 12]);
        assert!(
            runs.iter()
                .all(|r| r.len == 9 && r.step == [10, 12][r.input])
        );
        assert_eq!(op.entries(), table);
        let mut y = vec![f32::NAN; 198];
        op.compute(&[&a, &b], &mut y);
        for (i, (&got, &e)) in y.iter().zip(&table).enumerate() {
            let x = [&a, &b][(e >> OFFSET_BITS & INPUT_MASK) as usize][(e & OFFSET_MASK) as usize];
            let want = if e & SIGMOID != 0 {
                crate::embed::kernels::sigmoid_scalar(x)
            } else {
                x
            };
            assert!((got - want).abs() <= 1e-6, "value {i}: {got}, want {want}");
        }
    }

    #[test]
    fn overlapping_columns_are_not_one_block() {
        // Three runs of 8 at step 2 from 0, 1 and 2: the third reads the first's values but
        // one, which a block's rows of `step` values cannot hold.
        let x: Vec<f32> = (0..20).map(|i| i as f32).collect();
        let table: Vec<u32> = (0..3)
            .flat_map(|c| (0..8).map(move |i| (c + 2 * i) as u32))
            .collect();
        let op = Gather::new(Isa::detect(), &table, 1, Output::new(tvec![24]));
        let Copies::Runs(runs) = &op.copies else {
            panic!("a table for 3 runs of 8")
        };
        assert_eq!(runs.iter().map(|r| r.columns).collect::<Vec<_>>(), [2, 1]);
        assert_eq!(op.entries(), table);
        let mut y = vec![f32::NAN; 24];
        op.compute(&[&x], &mut y);
        let want: Vec<f32> = table.iter().map(|&e| e as f32).collect();
        assert_eq!(y, want);
    }
}
