//! [`Streams`]: the parallel streams of an OSNet block — chains of our 1×1 and depthwise ops
//! from one input to the gated sum that joins them — as one op, whose chains one crop's threads
//! run side by side: one fork and join per block instead of one per layer.
//!
//! A crop's layers are small (our default model's 32→32 1×1 over 800 pixels: 0.8 M
//! multiply-adds), so cutting each between two threads costs a hand-off per layer, and the
//! planes move between the cores' caches at every one of them. An OSNet block's four streams
//! are independent until they are summed: streams 1 and 4 on one thread, 2 and 3 on the other
//! (5 LightConv layers each), every plane of a stream stays in its thread's cache.

use std::cell::RefCell;

use tract_onnx::tract_core::internal::*;

use super::conv::Depthwise;
use super::gated_sum::GatedSum;
use super::graph::*;
use super::parallel::fork;
use super::pointwise::Pointwise;
use super::quant::QuantPointwise;
use super::recycle::*;

/// The most streams one op holds (OSNet's blocks have 4).
pub(super) const MAX_STREAMS: usize = 4;

/// One layer of a stream: one of our ops reading a single tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    Pointwise(Pointwise),
    Depthwise(Depthwise),
    Quant(QuantPointwise),
}

impl Step {
    /// `node`'s op as a step, if it is one of ours that reads one tensor.
    fn of(node: &TypedNode) -> Option<Step> {
        if node.inputs.len() != 1 || node.outputs.len() != 1 {
            return None;
        }
        if let Some(op) = node.op_as::<Pointwise>() {
            op.reads_one().then(|| Step::Pointwise(op.clone()))
        } else if let Some(op) = node.op_as::<Depthwise>() {
            Some(Step::Depthwise(op.clone()))
        } else if let Some(op) = node.op_as::<QuantPointwise>() {
            op.reads_one().then(|| Step::Quant(op.clone()))
        } else {
            None
        }
    }

    /// Floats of its output.
    fn len(&self) -> usize {
        let output = match self {
            Step::Pointwise(op) => &op.output,
            Step::Depthwise(op) => &op.output,
            Step::Quant(op) => &op.output,
        };
        output.shape.iter().product()
    }

    fn work(&self) -> usize {
        match self {
            Step::Pointwise(op) => op.work(),
            Step::Depthwise(op) => op.work(),
            Step::Quant(op) => op.work(),
        }
    }

    fn compute(&self, x: &[f32], y: &mut [f32]) {
        match self {
            Step::Pointwise(op) => op.compute(&[x], y),
            Step::Depthwise(op) => op.compute(&[x], y),
            Step::Quant(op) => op.compute(&[x], y),
        }
    }
}

/// The streams of a block from their common input (a tensor, or the words an int8 model's
/// `QuantiseWords` made of it) to their [`GatedSum`]: each stream a chain of [`Step`]s, the sum
/// made of their last outputs. On one thread the streams run one after the other; on `k`
/// threads each thread runs its group of them (`groups[k - 1]`, made at load so that the
/// groups' multiply-adds are as even as they can be), each stream's gate right after it (its
/// term still in that thread's cache), and the sum waits for all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Streams {
    streams: Vec<Vec<Step>>,
    /// For `k` threads, `groups[k - 1][s]` is the thread that runs stream `s`.
    groups: [[u8; MAX_STREAMS]; MAX_STREAMS],
    /// Multiply-adds of all the streams, per image.
    work: usize,
    sum: GatedSum,
    /// The same layers with channels in lanes, where they run so (see [`InLanes`]).
    lanes: Option<InLanes>,
    pub(super) output: Output,
}

reidcam_op!(Streams, "ReidcamStreams");

mod lanes;
use lanes::InLanes;

thread_local! {
    /// The streams' outputs (the sum's terms), on the thread that runs the op: grown to the
    /// largest block once per thread, then reused.
    static TERMS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// A stream's outputs between its layers, on the thread that runs the stream.
    static BETWEEN: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// The terms' gate values, on the thread that runs the op (as `TERMS`).
    static GATES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// A buffer the parts of one fork write disjoint runs of (the terms, their gate values).
#[derive(Clone, Copy)]
struct Terms(*mut f32);

// SAFETY: handed to the parts of one fork, each writing the terms of its own streams, while the
// buffer's owner waits for the fork.
unsafe impl Sync for Terms {}

impl Terms {
    /// The buffer's start.
    fn ptr(self) -> *mut f32 {
        self.0
    }

    /// The `len` floats of term `s`.
    ///
    /// # Safety
    /// The buffer holds term `s` whole, outlives the borrow, and no one else touches that term
    /// meanwhile.
    unsafe fn term<'a>(self, s: usize, len: usize) -> &'a mut [f32] {
        // SAFETY: forwarded to the caller.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(s * len), len) }
    }
}

impl Streams {
    fn describe(&self) -> String {
        let layers: Vec<usize> = self.streams.iter().map(Vec::len).collect();
        format!(
            "{} streams of {layers:?} layers, {} multiply-adds, threads {:?}{}",
            self.streams.len(),
            self.work,
            &self.groups[1][..self.streams.len()],
            if self.lanes.is_some() {
                ", channels in lanes"
            } else {
                ""
            }
        )
    }

    /// The layers of all its streams.
    pub(super) fn layers(&self) -> usize {
        self.streams.iter().map(Vec::len).sum()
    }

    fn compute(&self, inputs: &[&[f32]], y: &mut [f32]) {
        if let Some(lanes) = &self.lanes {
            return self.compute_in_lanes(lanes, inputs[0], y);
        }
        let x = inputs[0];
        let (count, len) = (self.streams.len(), y.len());
        let planes = len / self.sum.shape.pixels;
        TERMS.with_borrow_mut(|terms| {
            GATES.with_borrow_mut(|gates| {
                at_least(terms, count * len);
                at_least(gates, count * planes);
                let (base, gate_base) = (Terms(terms.as_mut_ptr()), Terms(gates.as_mut_ptr()));
                let batch = self.output.shape.first().copied().unwrap_or(1);
                fork(count, self.work * batch, |part, parts| {
                    for (s, stream) in self.streams.iter().enumerate() {
                        if usize::from(self.groups[parts - 1][s]) != part {
                            continue;
                        }
                        // SAFETY: `terms` holds `count × len` floats and `gates` `count ×
                        // planes`, both outliving the fork; each stream is run by exactly one
                        // part, which alone writes its term and its gate values.
                        let (out, gate) = unsafe { (base.term(s, len), gate_base.term(s, planes)) };
                        run_stream(stream, x, out);
                        // The gate while the term is in this thread's cache.
                        self.sum.gate(s, out, gate);
                    }
                });
                let mut views: [&[f32]; MAX_STREAMS] = [&[]; MAX_STREAMS];
                for (s, view) in terms.chunks_exact(len).take(count).enumerate() {
                    views[s] = view;
                }
                self.sum.sum_gated(&views[..count], gates, y);
            })
        });
    }
}

/// Runs `stream`'s layers from `x`, the last into `out`.
fn run_stream(stream: &[Step], x: &[f32], out: &mut [f32]) {
    let Some((last, first)) = stream.split_last() else {
        return;
    };
    if first.is_empty() {
        return last.compute(x, out);
    }
    BETWEEN.with_borrow_mut(|between| {
        let most = first.iter().map(Step::len).max().unwrap_or(0);
        at_least(between, 2 * most);
        let (mut done, mut next) = between.split_at_mut(most);
        let mut done_len = 0;
        for (i, step) in first.iter().enumerate() {
            let input = if i == 0 { x } else { &done[..done_len] };
            step.compute(input, &mut next[..step.len()]);
            done_len = step.len();
            std::mem::swap(&mut done, &mut next);
        }
        last.compute(&done[..done_len], out);
    });
}

/// Grows a per-thread buffer to `len` floats (once: then it is reused).
fn at_least(buffer: &mut Vec<f32>, len: usize) {
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
}

/// For each thread count `k` (index `k - 1`), the thread of each stream such that the largest
/// thread's multiply-adds are least (every assignment tried: at most 4⁴).
fn groups_of(works: &[usize]) -> [[u8; MAX_STREAMS]; MAX_STREAMS] {
    let n = works.len();
    let mut groups = [[0u8; MAX_STREAMS]; MAX_STREAMS];
    for k in 2..=n {
        let mut best = (usize::MAX, [0u8; MAX_STREAMS]);
        for code in 0..k.pow(n as u32) {
            let (mut load, mut assign, mut c) = ([0usize; MAX_STREAMS], [0u8; MAX_STREAMS], code);
            for (s, &work) in works.iter().enumerate() {
                let thread = c % k;
                c /= k;
                assign[s] = thread as u8;
                load[thread] += work;
            }
            let largest = load[..k].iter().copied().max().unwrap_or(0);
            if largest < best.0 {
                best = (largest, assign);
            }
        }
        groups[k - 1] = best.1;
    }
    groups
}

/// A [`GatedSum`] whose every term is gated and is the end of a chain of [`Step`]s, each read
/// only by the next, all the chains starting from one tensor: the chains and the sum into one
/// [`Streams`].
pub(super) fn streams_patch(model: &TypedModel, id: usize) -> TractResult<Patch> {
    let node = model.node(id);
    let Some(sum) = node.op_as::<GatedSum>() else {
        return Ok(None);
    };
    let count = node.inputs.len();
    if !(2..=MAX_STREAMS).contains(&count) || sum.gates.iter().any(Option::is_none) {
        return Ok(None);
    }
    let mut streams = Vec::with_capacity(count);
    let mut start = None;
    let mut replaced = 1;
    for &end in &node.inputs {
        let (mut steps, mut at, mut reader) = (Vec::new(), end, id);
        loop {
            let producer = model.node(at.node);
            if at.slot != 0 || sole_reader(model, producer.id)?.map(|r| r.id) != Some(reader) {
                break;
            }
            let Some(step) = Step::of(producer) else {
                break;
            };
            steps.push(step);
            reader = producer.id;
            at = producer.inputs[0];
        }
        if steps.is_empty() || start.is_some_and(|s| s != at) {
            return Ok(None);
        }
        start = Some(at);
        replaced += steps.len();
        steps.reverse();
        streams.push(steps);
    }
    let Some(start) = start else {
        return Ok(None);
    };
    let works: Vec<usize> = streams
        .iter()
        .map(|s| s.iter().map(Step::work).sum())
        .collect();
    let shape = model
        .outlet_fact(OutletId::new(id, 0))?
        .shape
        .as_concrete()
        .map(<[usize]>::to_vec);
    let Some(shape) = shape else {
        return Ok(None);
    };
    let op = Streams {
        groups: groups_of(&works),
        work: works.iter().sum(),
        lanes: InLanes::of(&streams, sum, &shape),
        streams,
        sum: sum.clone(),
        output: Output::new(shape.into()),
    };
    Ok(Some((
        fuse(model, &[start], OutletId::new(id, 0), op)?,
        replaced,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::kernels::Isa;
    use crate::embed::kernels::qpointwise::Dot;

    /// Every block of our default model with channels in lanes gives the NCHW layers' values,
    /// bit for bit, on each x86 kernel set this CPU has, one image and two; the int8 model's
    /// streams stay planar.
    #[test]
    fn streams_in_lanes_give_the_planar_values() {
        use tract_onnx::prelude::*;
        let models = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
        let isas: Vec<Isa> = Isa::available()
            .into_iter()
            .filter(|&isa| isa != Isa::Baseline)
            .collect();
        if isas.is_empty() {
            eprintln!(
                "skipped: no AVX2 on this CPU (channels in lanes run on x86's AVX2 and AVX-512)"
            );
            return;
        }
        let mut rng = crate::bench::XorShift::new(0x51ea);
        for isa in isas {
            #[cfg(target_arch = "x86_64")]
            let dot = Some(Dot::Avx2);
            #[cfg(not(target_arch = "x86_64"))]
            let dot: Option<Dot> = None;
            for (file, batch) in [
                ("default.onnx", 1usize),
                ("default.onnx", 2),
                ("default_int8.onnx", 1),
            ] {
                let mut loaded = tract_onnx::onnx()
                    .model_for_path(models.join(file))
                    .unwrap();
                // As `Embedder::load`: the export's declared shapes name a symbolic batch.
                crate::embed::forget_declared_shapes(&mut loaded).unwrap();
                let mut model = loaded
                    .with_input_fact(0, f32::fact([batch, 3, 160, 80]).into())
                    .unwrap()
                    .into_typed()
                    .unwrap();
                let mut declutter = tract_onnx::tract_core::optim::Optimizer::declutter();
                declutter
                    .passes
                    .retain(|pass| format!("{pass:?}") != "ChangeAxes");
                declutter.optimize(&mut model).unwrap();
                let int8 = crate::embed::int8::is_quantised(&model);
                if int8 {
                    model = crate::embed::int8::float_edges(&model, dot)
                        .unwrap()
                        .expect("our int8 model translates")
                        .0;
                }
                crate::embed::ops::use_reidcam_kernels(&mut model, isa).unwrap();
                let mut blocks = 0;
                for node in model.nodes() {
                    let Some(op) = node.op_as::<Streams>() else {
                        continue;
                    };
                    blocks += 1;
                    let what = format!("{isa} {file} batch {batch} {}", node.name);
                    if int8 {
                        assert!(op.lanes.is_none(), "{what}: int8 streams in lanes");
                        continue;
                    }
                    assert!(op.lanes.is_some(), "{what}: not in lanes");
                    let fact = model.outlet_fact(node.inputs[0]).unwrap();
                    let len: usize = fact.shape.as_concrete().unwrap().iter().product();
                    let x: Vec<f32> = (0..len).map(|_| rng.signed_unit()).collect();
                    let out: usize = op.output.shape.iter().product();
                    let (mut lanes, mut planar) = (vec![f32::NAN; out], vec![f32::NAN; out]);
                    op.compute(&[&x], &mut lanes);
                    let nchw = Streams {
                        lanes: None,
                        ..op.clone()
                    };
                    nchw.compute(&[&x], &mut planar);
                    crate::embed::kernels::test_support::assert_same_bits(&lanes, &planar, &what);
                }
                assert_eq!(
                    blocks, 6,
                    "{isa} {file}: our default model's six OSNet blocks"
                );
            }
        }
    }

    #[test]
    fn streams_go_to_threads_with_even_work() {
        // OSNet's streams of 1 to 4 equal layers: 1 + 4 and 2 + 3 on two threads.
        let groups = groups_of(&[1, 2, 3, 4]);
        assert_eq!(groups[0], [0; MAX_STREAMS]);
        let two = groups[1];
        assert_eq!(two[0], two[3]);
        assert_eq!(two[1], two[2]);
        assert_ne!(two[0], two[1]);
        // Three threads: the 4-layer stream alone, 1 + 3 and 2 (the largest load 4).
        let three = groups[2];
        let mut load = [0; 3];
        for (s, w) in [1, 2, 3, 4].iter().enumerate() {
            load[usize::from(three[s])] += w;
        }
        assert_eq!(load.iter().max(), Some(&4));
        // Two streams: one each.
        let pair = groups_of(&[5, 7]);
        assert_ne!(pair[1][0], pair[1][1]);
    }
}
