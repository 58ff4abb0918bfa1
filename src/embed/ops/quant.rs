//! The int8 ops, [`QuantPointwise`] and [`QuantFullConv`], and the rule that puts the first in
//! place (the second is made by `embed::int8`).

use std::cell::RefCell;
use std::sync::{Arc, OnceLock};

use tract_onnx::tract_core::internal::*;

use crate::embed::kernels::qconv;
use crate::embed::kernels::qpointwise::{self, Dot, PART_ALIGN};

use super::graph::*;
use super::parallel::{aligned_parts, fork, part_range, split_aligned};
use super::recycle::*;

/// An int8 1×1 convolution between f32 edges (made by `embed::int8` from a quantised model):
/// quantises its input, multiplies in int8, stores dequantised values; then an optional residual
/// (second input) and ReLU, fused by [`use_reidcam_kernels`].
#[derive(Clone, Debug)]
pub struct QuantPointwise {
    dot: Dot,
    layer: Arc<qpointwise::Layer>,
    residual: bool,
    relu: bool,
    /// The first input is the layer's input words made by a [`QuantiseWords`] (shared with
    /// other readers), not the f32 tensor.
    words_input: bool,
    /// The layer cut by outputs for the threads of a single image (`Layer::part`), made at the
    /// first run that shares the layer.
    parts: Arc<OnceLock<Parts>>,
    pub(super) output: Output,
}

impl PartialEq for QuantPointwise {
    fn eq(&self, other: &Self) -> bool {
        // Layers are made once per model node: the same layer or not.
        Arc::ptr_eq(&self.layer, &other.layer)
            && (self.dot, self.residual, self.relu, self.words_input)
                == (other.dot, other.residual, other.relu, other.words_input)
            && self.output == other.output
    }
}

impl Eq for QuantPointwise {}

thread_local! {
    /// The int8 kernel's scratch (the quantised input words): grown to the largest layer once
    /// per thread, then reused.
    static QUANT_SCRATCH: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

impl QuantPointwise {
    pub(crate) fn new(dot: Dot, layer: Arc<qpointwise::Layer>, output_shape: TVec<usize>) -> Self {
        QuantPointwise {
            dot,
            layer,
            residual: false,
            relu: false,
            words_input: false,
            parts: Arc::default(),
            output: Output::new(output_shape),
        }
    }

    fn describe(&self) -> String {
        format!(
            "{:?} residual {} relu {}{} {}",
            self.layer.shape,
            self.residual,
            self.relu,
            if self.words_input {
                " shared words"
            } else {
                ""
            },
            self.dot
        )
    }
}

reidcam_op!(QuantPointwise, "ReidcamQuantPointwise");

/// Whether one image's int8 1×1 layers (of at least `crop_work` multiply-adds) are cut by
/// outputs between the threads of a kernel pool with `dot`: each thread then multiplies all of
/// the input words, made on the calling thread, by its outputs' weights. Where the product is
/// slow for its data, that pays: with AVX2 (`vpmaddubsw`) on 2 threads (`reidcam bench`, Intel
/// Xeon model 207 with `avx2+fma`, three runs each, p50 per crop) our default int8 model 2.35–2.39
/// → 2.19–2.23 ms, retail-0267's 6.34–6.57 → 5.62–6.07, osnet_x0_25's 2.04–2.07 → 2.01–2.07. With
/// VNNI the product is so fast that carrying the words to the other core costs more: 1.17–1.20 →
/// 1.23–1.30 ms (default), 1.06–1.09 → 1.15 (osnet_x0_25), 3.40–3.43 → 3.64–3.74
/// (retail-0267). Not measured on ARM (QEMU counts instructions, not time): NEON keeps one
/// thread there, as before. Cut by pixels instead (each thread quantising its own pixels into
/// its own words) they gained nothing on AVX2 or VNNI (docs/speed.md, 2026-12-07): the float
/// layers around them run on the calling thread, and f32 planes are four times the words.
fn splits_by_outputs(dot: Dot) -> bool {
    #[cfg(target_arch = "x86_64")]
    return dot == Dot::Avx2;
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = dot;
        false
    }
}

impl QuantPointwise {
    /// Whether it reads one tensor only (no residual).
    pub(super) fn reads_one(&self) -> bool {
        !self.residual
    }

    /// Multiply-adds per image.
    pub(super) fn work(&self) -> usize {
        let shape = self.layer.shape;
        shape.inputs * shape.outputs * shape.pixels
    }

    pub(super) fn compute(&self, inputs: &[&[f32]], y: &mut [f32]) {
        let shape = self.layer.shape;
        // The input is this layer's f32 tensor, or the words a `QuantiseWords` made from it.
        let x_len = if self.words_input {
            self.layer.scratch_words()
        } else {
            shape.inputs * shape.pixels
        };
        let y_len = shape.outputs * shape.pixels;
        let residual = inputs.get(1).copied();
        let batch = y.len() / y_len;
        let work = self.work();
        let parted = Parts::for_run(&self.parts, self.dot, batch, shape.outputs, work, |r| {
            self.layer.part(r)
        });
        QUANT_SCRATCH.with_borrow_mut(|scratch| {
            for (n, (x, y)) in inputs[0]
                .chunks_exact(x_len)
                .zip(y.chunks_exact_mut(y_len))
                .enumerate()
            {
                let res = residual.map(|r| &r[n * y_len..][..y_len]);
                let words = if self.words_input {
                    words_of(x)
                } else {
                    let words = self.layer.words_for(scratch);
                    match parted {
                        Some(parted) => {
                            quantise_on_threads(&self.layer, self.dot, x, words, parted.count, work)
                        }
                        None => self.layer.quantise_into(self.dot, x, words),
                    }
                    &*words
                };
                let Some(parted) = parted else {
                    self.layer.product(self.dot, words, res, self.relu, y);
                    continue;
                };
                // One image on several threads: its words made once (each thread its groups of
                // them, above), then each thread multiplies them all by its part of the
                // outputs' weights (`split_aligned` cuts the outputs as `part_range` did for
                // `parted`).
                split_aligned(
                    y,
                    shape.pixels,
                    shape.outputs,
                    PART_ALIGN,
                    work,
                    |outputs, y| {
                        let rows = outputs.start * shape.pixels..outputs.end * shape.pixels;
                        let layer = parted.layer(&outputs);
                        debug_assert_eq!(layer.shape.outputs, outputs.len());
                        layer.product(self.dot, words, res.map(|r| &r[rows]), self.relu, y)
                    },
                );
            }
        });
    }
}

/// `layer.quantise_into(dot, x, words)` with the groups of words cut between up to `parts`
/// threads of the run's pool (`fork`, for a layer of `work` multiply-adds): the same words.
/// Made on the calling thread alone, one image's words took as long as a third of the cut
/// product they feed (our default int8 model's 128 channels over 800 pixels: 28 µs on AVX2).
fn quantise_on_threads(
    layer: &qpointwise::Layer,
    dot: Dot,
    x: &[f32],
    words: &mut [u32],
    parts: usize,
    work: usize,
) {
    let (groups, pixels) = (layer.input_groups(), layer.shape.pixels);
    let rows = WordRows(words[..groups * pixels].as_mut_ptr());
    fork(parts, work, |part, parts| {
        let mine = part_range(groups, 1, parts, part);
        // SAFETY: `words` holds `groups` rows of `pixels` words and outlives the fork; the
        // parts' group ranges are disjoint, so each part alone writes its rows.
        let rows = unsafe { rows.of(mine.start * pixels..mine.end * pixels) };
        layer.quantise_groups(dot, x, rows, mine);
    });
}

/// Rows of input words the parts of one fork write, each its own groups.
#[derive(Clone, Copy)]
struct WordRows(*mut u32);

// SAFETY: handed to the parts of one fork, which write disjoint rows while the owner waits.
unsafe impl Sync for WordRows {}

impl WordRows {
    /// Words `range` of the buffer.
    ///
    /// # Safety
    /// The buffer holds `range`, outlives the borrow, and no one else touches it meanwhile.
    unsafe fn of<'a>(self, range: std::ops::Range<usize>) -> &'a mut [u32] {
        // SAFETY: forwarded to the caller.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(range.start), range.len()) }
    }
}

/// [`QuantPointwise`]'s layer cut by outputs for `count` threads: each part's first output and
/// its layer.
#[derive(Debug)]
struct Parts {
    count: usize,
    layers: Vec<(usize, qpointwise::Layer)>,
}

impl Parts {
    /// The parts an image's layer of `outputs` outputs and `work` multiply-adds is cut into
    /// for this run's threads (as `split_aligned` will cut the outputs), made by `part` at the
    /// first run that shares the layer (as many as the kernel pool has threads, fixed for an
    /// embedder); `None` where it runs whole: a batch, one thread, or a product that is not cut
    /// (`splits_by_outputs`).
    fn for_run(
        cell: &OnceLock<Parts>,
        dot: Dot,
        batch: usize,
        outputs: usize,
        work: usize,
        part: impl Fn(std::ops::Range<usize>) -> qpointwise::Layer,
    ) -> Option<&Parts> {
        let parts = if batch == 1 && splits_by_outputs(dot) {
            aligned_parts(outputs, PART_ALIGN, work)
        } else {
            1
        };
        (parts > 1)
            .then(|| {
                cell.get_or_init(|| Parts {
                    count: parts,
                    layers: (0..parts)
                        .map(|p| part_range(outputs, PART_ALIGN, parts, p))
                        .filter(|range| !range.is_empty())
                        .map(|range| (range.start, part(range)))
                        .collect(),
                })
            })
            .filter(|made| made.count == parts)
    }

    /// The part whose outputs start where `outputs` does.
    fn layer(&self, outputs: &std::ops::Range<usize>) -> &qpointwise::Layer {
        let (_, layer) = self
            .layers
            .iter()
            .find(|(start, _)| *start == outputs.start)
            .expect("a part made for each of the split's ranges");
        layer
    }
}

/// The input words of several [`QuantPointwise`] readers of one tensor on one grid, made once
/// (OSNet's four streams each begin with an int8 1×1 convolution of their block's first output;
/// a block's input feeds its first convolution and its downsampling one): `[N][groups][pixels]`
/// words, held in an f32 tensor as bit patterns (our recycled outputs are f32 tensors), read only
/// by those readers, as words.
#[derive(Clone, Debug)]
pub struct QuantiseWords {
    dot: Dot,
    /// One of the readers' layers: they all make the same words (`Layer::same_words`).
    layer: Arc<qpointwise::Layer>,
    pub(super) output: Output,
}

impl PartialEq for QuantiseWords {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.layer, &other.layer)
            && self.dot == other.dot
            && self.output == other.output
    }
}

impl Eq for QuantiseWords {}

impl QuantiseWords {
    fn describe(&self) -> String {
        format!(
            "{} channels, {} pixels {}",
            self.layer.shape.inputs, self.layer.shape.pixels, self.dot
        )
    }

    fn compute(&self, inputs: &[&[f32]], y: &mut [f32]) {
        let shape = self.layer.shape;
        let (x_len, w_len) = (shape.inputs * shape.pixels, self.layer.scratch_words());
        for (x, y) in inputs[0].chunks_exact(x_len).zip(y.chunks_exact_mut(w_len)) {
            self.layer.quantise_into(self.dot, x, words_of_mut(y));
        }
    }
}

reidcam_op!(QuantiseWords, "ReidcamQuantise");

/// Input words held in an f32 tensor (see [`QuantiseWords`]), as words.
fn words_of(x: &[f32]) -> &[u32] {
    // SAFETY: f32 and u32 have the same size and alignment, and every bit pattern is a valid u32.
    unsafe { std::slice::from_raw_parts(x.as_ptr().cast(), x.len()) }
}

fn words_of_mut(y: &mut [f32]) -> &mut [u32] {
    // SAFETY: as `words_of`; every u32 bit pattern is a valid f32 too (the tensor is only read
    // back as words), and the borrow is the slice's.
    unsafe { std::slice::from_raw_parts_mut(y.as_mut_ptr().cast(), y.len()) }
}

/// Makes the input words once where several int8 1×1 convolutions (already fused with their
/// residuals and ReLUs) read one tensor on one grid: a [`QuantiseWords`] after the tensor, the
/// readers on its words. Returns the patch and the number of readers moved to shared words.
pub(super) fn shared_words_patch(
    model: &TypedModel,
    id: usize,
) -> TractResult<Option<(TypedModelPatch, usize)>> {
    let outlet = OutletId::new(id, 0);
    let node = model.node(id);
    if node.outputs.len() != 1 {
        return Ok(None);
    }
    // The readers whose first input is this tensor, grouped with the first one's grid.
    let mut readers: Vec<(usize, &QuantPointwise)> = Vec::new();
    for succ in model.outlet_successors(outlet) {
        let reader = model.node(succ.node);
        if succ.slot == 0
            && let Some(op) = reader.op_as::<QuantPointwise>()
            && !op.words_input
            && readers
                .first()
                .is_none_or(|(_, first)| first.dot == op.dot && first.layer.same_words(&op.layer))
        {
            readers.push((succ.node, op));
        }
    }
    if readers.len() < 2 {
        return Ok(None);
    }
    let (_, first) = readers[0];
    let x_shape = &model.outlet_fact(outlet)?.shape;
    let Some(x_shape) = x_shape.as_concrete() else {
        return Ok(None);
    };
    // Images in the tensor (it may have no batch axis).
    let shape = first.layer.shape;
    let batch = x_shape.iter().product::<usize>() / (shape.inputs * shape.pixels);
    let mut patch = TypedModelPatch::default();
    let x = patch.tap_model(model, outlet)?;
    let quantise = QuantiseWords {
        dot: first.dot,
        layer: Arc::clone(&first.layer),
        output: Output::new(tvec![batch, first.layer.scratch_words()]),
    };
    let words = patch.wire_node(format!("{}.quantise", node.name), quantise, &[x])?[0];
    for &(reader, op) in &readers {
        let mut inputs = tvec![words];
        for &input in &model.node(reader).inputs[1..] {
            inputs.push(patch.tap_model(model, input)?);
        }
        let shared = QuantPointwise {
            words_input: true,
            ..op.clone()
        };
        let name = format!("{}.shared", model.node(reader).name);
        let y = patch.wire_node(name, shared, &inputs)?[0];
        patch.shunt_outside(model, OutletId::new(reader, 0), y)?;
    }
    Ok(Some((patch, readers.len())))
}

/// An int8 full convolution between f32 edges (a quantised model's stem, made by `embed::int8`):
/// quantises its input image, multiplies in int8 (`kernels::qconv`), stores dequantised values;
/// then an optional ReLU, fused by [`use_reidcam_kernels`].
#[derive(Clone, Debug)]
pub struct QuantFullConv {
    dot: Dot,
    layer: Arc<qconv::ConvLayer>,
    relu: bool,
    /// The layer cut by outputs for the threads of a single image (`ConvLayer::part`), made at
    /// the first run that shares the layer.
    parts: Arc<OnceLock<Parts>>,
    pub(super) output: Output,
}

impl PartialEq for QuantFullConv {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.layer, &other.layer)
            && (self.dot, self.relu) == (other.dot, other.relu)
            && self.output == other.output
    }
}

impl Eq for QuantFullConv {}

thread_local! {
    /// The int8 convolution's scratch (codes, words): grown to the largest layer once per
    /// thread, then reused.
    static QUANT_CONV_SCRATCH: RefCell<qconv::Scratch> = RefCell::new(qconv::Scratch::default());
    /// The rows' scratch of a part of it run on another thread (or beside the codes on this one).
    static QUANT_ROW_SCRATCH: RefCell<qconv::RowScratch> =
        RefCell::new(qconv::RowScratch::default());
}

impl QuantFullConv {
    pub(crate) fn new(dot: Dot, layer: Arc<qconv::ConvLayer>, output_shape: TVec<usize>) -> Self {
        QuantFullConv {
            dot,
            layer,
            relu: false,
            parts: Arc::default(),
            output: Output::new(output_shape),
        }
    }

    fn describe(&self) -> String {
        format!(
            "{:?} relu {} {}",
            self.layer.geometry(),
            self.relu,
            self.dot
        )
    }
}

reidcam_op!(QuantFullConv, "ReidcamQuantConv");

impl QuantFullConv {
    fn compute(&self, inputs: &[&[f32]], y: &mut [f32]) {
        let g = self.layer.geometry();
        let (oh, ow) = g.output().expect("checked when the layer was made");
        let (x_len, y_len) = (g.inputs * g.height * g.width, g.outputs * oh * ow);
        let batch = y.len() / y_len;
        let (kh, kw) = g.kernel;
        let work = g.inputs * kh * kw * y_len;
        let parted = Parts::for_run(&self.parts, self.dot, batch, g.outputs, work, |r| {
            self.layer.part(r)
        });
        QUANT_CONV_SCRATCH.with_borrow_mut(|scratch| {
            for (x, y) in inputs[0].chunks_exact(x_len).zip(y.chunks_exact_mut(y_len)) {
                let Some(parted) = parted else {
                    self.layer.run(self.dot, x, self.relu, y, scratch);
                    continue;
                };
                // One image on several threads: its codes made here once, then each thread
                // makes the rows of its part of the outputs.
                let codes = self.layer.codes(self.dot, x, &mut scratch.image);
                split_aligned(y, oh * ow, g.outputs, PART_ALIGN, work, |outputs, y| {
                    let layer = parted.layer(&outputs);
                    QUANT_ROW_SCRATCH.with_borrow_mut(|rows| {
                        self.layer.rows(self.dot, layer, codes, self.relu, y, rows)
                    })
                });
            }
        });
    }
}

/// Our int8 1×1 convolution (not yet fused) followed by a residual `Add` and/or a ReLU, or our
/// int8 full convolution followed by a ReLU: the same op with them fused.
// Where `Dot` has no variant (armv7) there is no such op, and the code after the match is dead.
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(unreachable_code, unused_variables, unused_mut)
)]
pub(super) fn quant_pointwise_patch(model: &TypedModel, id: usize) -> TractResult<Patch> {
    let node = model.node(id);
    if let Some(op) = node.op_as::<QuantFullConv>() {
        let shape = op.output.shape.to_vec();
        return Ok(match trailing_relu(model, OutletId::new(id, 0), &shape)? {
            Some(last) if !op.relu => {
                let fused = QuantFullConv {
                    relu: true,
                    ..op.clone()
                };
                Some((fuse(model, &[node.inputs[0]], last, fused)?, 1))
            }
            _ => None,
        });
    }
    let Some(op) = node.op_as::<QuantPointwise>() else {
        return Ok(None);
    };
    if op.residual || op.relu {
        return Ok(None);
    }
    let shape = op.output.shape.to_vec();
    let mut fused = op.clone();
    let mut last = OutletId::new(id, 0);
    let mut replaced = 0;
    let mut residual = None;
    if let Some(next) = sole_reader(model, last.node)?
        && let Some(r) = residual_add(model, next, last, &shape)?
    {
        residual = Some(r);
        fused.residual = true;
        last = OutletId::new(next.id, 0);
        replaced += 1;
    }
    if let Some(r) = trailing_relu(model, last, &shape)? {
        fused.relu = true;
        last = r;
        replaced += 1;
    }
    if replaced == 0 {
        return Ok(None);
    }
    let mut inputs = vec![node.inputs[0]];
    inputs.extend(residual);
    Ok(Some((fuse(model, &inputs, last, fused)?, replaced)))
}
