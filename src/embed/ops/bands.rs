//! A large convolution and the depthwise layer reading it, computed together band by band of
//! rows ([`ConvDepthwise`]): YOLOX's stem (6×6/2 over the frame, 16 channels) and the stride-2
//! depthwise layer after it.
//!
//! Apart, the stem writes its output for the whole frame (4.9 MB at 736×416, from a 3.7 MB
//! phase-split copy of the frame) and the depthwise layer reads it back: both round trips go
//! through memory, as neither fits a core's L2 (2 MB on the x86 machines measured, 1 MB shared
//! on a Cortex-A72). Together, each band of depthwise output rows is made from the stem rows it
//! reads, made just before from the frame's padded rows they read, all in per-thread buffers
//! of about [`BAND_BYTES`] that stay in L2; the stem rows two bands read (one at stride 2) are
//! moved from the end of the buffer to its start, not made again. The values are the same, bit
//! for bit, as the two ops give apart (each output's sum is the same, whatever the band).

use std::cell::RefCell;
use std::sync::Arc;

use tract_onnx::tract_core::internal::*;

use crate::embed::kernels::{conv, depthwise};

use super::conv::{Depthwise, FullConv};
use super::graph::*;
use super::parallel::*;
use super::recycle::*;

/// From this many bytes of the convolution's output on, the pair is computed band by band
/// (below, both fit a cache anyway: OSNet's and our default model's stems are 0.1–0.5 MB and
/// are not followed by a depthwise layer).
const BANDS_FROM_BYTES: usize = 1 << 20;

/// The bytes of a band's buffers (phase-split rows and convolution rows) aimed at: a band's
/// rows are then read back from L2.
const BAND_BYTES: usize = 512 << 10;

/// A [`FullConv`] and the [`Depthwise`] layer that is its only reader, as one op.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvDepthwise {
    conv: FullConv,
    depthwise: Depthwise,
    /// Depthwise output rows per band.
    band: usize,
    /// The convolution of one band's padded rows ([`conv::Shape::band`]) and its taps' offsets.
    band_shape: conv::Shape,
    band_offsets: Arc<[usize]>,
    pub(super) output: Output,
}

impl ConvDepthwise {
    /// The pair with bands of about `band_bytes` of buffers (at least one row).
    fn new(conv: FullConv, depthwise: Depthwise, band_bytes: usize) -> Self {
        let (cs, ds) = (conv.shape, depthwise.shape);
        let (_, sw) = cs.output().expect("checked when the op was made");
        // A band of `b` depthwise rows reads `stride · (b − 1) + 3` convolution rows, which read
        // `conv stride · (those − 1) + kernel height` padded rows of each input channel.
        let conv_rows = |b: usize| ds.stride * (b - 1) + 3;
        let padded_rows = |b: usize| cs.stride * (conv_rows(b) - 1) + cs.kernel.0;
        let bytes = |b: usize| {
            4 * (cs.outputs * conv_rows(b) * sw + cs.inputs * padded_rows(b) * cs.phase_row_len())
        };
        let dw_rows = ds.output().0;
        let mut band = 1;
        while band < dw_rows && bytes(band + 1) <= band_bytes {
            band += 1;
        }
        let band_shape = cs.band(padded_rows(band));
        ConvDepthwise {
            band,
            band_shape,
            band_offsets: band_shape.offsets().into(),
            output: Output::new(depthwise.output.shape.clone()),
            conv,
            depthwise,
        }
    }

    fn describe(&self) -> String {
        format!(
            "{:?} {:?} then {:?} {:?} {}, {} rows per band",
            self.conv.shape,
            self.conv.act,
            self.depthwise.shape,
            self.depthwise.act,
            self.conv.isa,
            self.band
        )
    }

    /// Depthwise output rows `rows` of one `image` into `out` (the op's output for that image),
    /// from the convolution rows they read, made in `rows_buf` from the padded input rows those
    /// read, made in `phases`. `held`: the convolution rows `rows_buf` holds from the band
    /// before (in its first rows), of which those this band reads again are moved, not made
    /// again. Returns the convolution rows `rows_buf` now holds.
    ///
    /// # Safety
    /// `out` is valid for the op's output of one image, and no other thread writes rows `rows`
    /// of its planes meanwhile.
    #[allow(clippy::too_many_arguments)]
    unsafe fn band_rows(
        &self,
        image: &[f32],
        rows: std::ops::Range<usize>,
        held: std::ops::Range<usize>,
        phases: &mut Vec<f32>,
        rows_buf: &mut Vec<f32>,
        scratch: &mut Vec<f32>,
        out: *mut f32,
    ) -> std::ops::Range<usize> {
        let (cs, ds) = (self.conv.shape, self.depthwise.shape);
        let (ch, _) = cs.output().expect("checked when the op was made");
        // The convolution rows `a..b` these rows read, the first `kept` of them held already,
        // and the padded rows `r0..r1` the others read (from `r0 + stride · kept` on).
        let a = (rows.start * ds.stride).saturating_sub(1);
        let b = ((rows.end - 1) * ds.stride + 2).min(ch);
        let kept = if held.contains(&a) { held.end - a } else { 0 };
        let (r0, r1) = (cs.stride * a, cs.stride * (b - 1) + cs.kernel.0);
        let band = self.band_shape;
        let (band_rows, ow) = band.output().expect("a band holds a kernel's rows");
        let plane = band_rows * ow;
        let len = cs.outputs * plane;
        if rows_buf.len() < len {
            rows_buf.resize(len, 0.0);
        }
        let rows_buf = &mut rows_buf[..len];
        if kept > 0 {
            for p in (0..len).step_by(plane) {
                let from = p + (a - held.start) * ow;
                rows_buf.copy_within(from..from + kept * ow, p);
            }
        }
        let (hp, row_len) = (cs.padded_height(), cs.phase_row_len());
        let skip = cs.stride * kept;
        let phases = conv::phase_buffer(band, 0.0, phases);
        for c in (0..cs.inputs).filter(|_| kept < b - a) {
            let part =
                &mut phases[(c * band.height + skip) * row_len..][..(r1 - r0 - skip) * row_len];
            let units = c * hp + r0 + skip..c * hp + r1;
            conv::phase_split_rows(self.conv.isa, cs, image, units, 0.0, |v| v, part);
        }
        // SAFETY: `rows_buf` holds the band's `outputs · band_rows · ow` floats, this thread's.
        unsafe {
            conv::convolve_rows(
                self.conv.isa,
                band,
                &self.band_offsets,
                phases,
                &self.conv.weights.0,
                &self.conv.bias.0,
                self.conv.act,
                kept..b - a,
                rows_buf.as_mut_ptr(),
            )
        };
        // SAFETY: as this function's contract; `rows_buf` holds convolution rows
        // `a..a + band_rows`, of which `a..b` are made.
        unsafe {
            depthwise::depthwise3x3_band(
                self.depthwise.isa,
                ds,
                1,
                rows_buf,
                a,
                band_rows,
                &self.depthwise.weights.0,
                &self.depthwise.bias.0,
                self.depthwise.act,
                rows,
                out,
                scratch,
            )
        };
        a..b
    }
}

reidcam_op!(ConvDepthwise, "ReidcamConvDepthwise");

thread_local! {
    /// A band's phase-split input rows and convolution rows, per thread (grown once).
    static BANDS: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

impl ConvDepthwise {
    fn compute(&self, inputs: &[&[f32]], y: &mut [f32]) {
        let x = inputs[0];
        let (cs, ds) = (self.conv.shape, self.depthwise.shape);
        let x_len = cs.inputs * cs.height * cs.width;
        let (oh, ow) = ds.output();
        let y_len = ds.channels * oh * ow;
        let work = y_len * ds.stride * ds.stride * self.conv.offsets.len() + 9 * y_len;
        for (image, y) in x.chunks_exact(x_len).zip(y.chunks_exact_mut(y_len)) {
            // Depthwise output rows to threads, each going through its rows band by band.
            split_shared(y, oh, 1, work, |rows, out| {
                let (out, len) = out.raw();
                debug_assert_eq!(len, y_len);
                BANDS.with_borrow_mut(|(phases, rows_buf)| {
                    SCRATCH.with_borrow_mut(|scratch| {
                        let (mut start, mut held) = (rows.start, 0..0);
                        while start < rows.end {
                            let end = (start + self.band).min(rows.end);
                            // SAFETY: `out` is this image's output (`y_len` floats), and the
                            // parts' row ranges are disjoint.
                            held = unsafe {
                                self.band_rows(
                                    image,
                                    start..end,
                                    held,
                                    phases,
                                    rows_buf,
                                    scratch,
                                    out,
                                )
                            };
                            start = end;
                        }
                    })
                });
            });
        }
    }
}

/// A [`FullConv`] whose output, of at least [`BANDS_FROM_BYTES`], only a [`Depthwise`] layer
/// reads: the two as one [`ConvDepthwise`].
pub(super) fn bands_patch(model: &TypedModel, id: usize) -> TractResult<Patch> {
    let node = model.node(id);
    let Some(conv) = node.op_as::<FullConv>() else {
        return Ok(None);
    };
    let Some(next) = sole_reader(model, id)? else {
        return Ok(None);
    };
    let Some(dw) = next.op_as::<Depthwise>() else {
        return Ok(None);
    };
    let (cs, ds) = (conv.shape, dw.shape);
    let Some((ch, cw)) = cs.output() else {
        return Ok(None);
    };
    let fits = next.inputs.as_slice() == [OutletId::new(id, 0)]
        && (ds.channels, ds.height, ds.width) == (cs.outputs, ch, cw)
        && 4 * cs.outputs * ch * cw >= BANDS_FROM_BYTES;
    if !fits {
        return Ok(None);
    }
    let op = ConvDepthwise::new(conv.clone(), dw.clone(), BAND_BYTES);
    Ok(Some((
        fuse(model, &[node.inputs[0]], OutletId::new(next.id, 0), op)?,
        0,
    )))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::bench::XorShift;
    use crate::embed::kernels::{Act, Isa};
    use crate::embed::spin_pool::SpinPool;

    /// The pair as one op gives the two ops' values bit for bit, whatever the band height and
    /// however the rows are split between threads: random convolutions (kernel, stride,
    /// padding, channels, sizes), depthwise stride 1 and 2, every activation, every kernel
    /// set, bands from one row to all of them, one and three threads.
    #[test]
    fn bands_give_the_two_ops_values_bit_for_bit() {
        let mut rng = XorShift::new(0xba4d_5eed);
        let mut below = |n: usize| rng.below(n as u64) as usize;
        let mut values = Vec::new();
        let pool = Arc::new(SpinPool::new(2, "test-bands").unwrap());
        for isa in Isa::available() {
            for case in 0..40 {
                let kernel = (1 + below(6), 1 + below(6));
                let cs = conv::Shape {
                    inputs: 1 + below(4),
                    outputs: 1 + below(12),
                    height: kernel.0 + below(40),
                    width: kernel.1 + below(50),
                    kernel,
                    stride: 1 + below(2),
                    padding: (below(3), below(3), below(3), below(3)),
                };
                let (ch, cw) = cs.output().unwrap();
                let ds = depthwise::Shape {
                    channels: cs.outputs,
                    height: ch,
                    width: cw,
                    stride: 1 + below(2),
                };
                let acts = [Act::Identity, Act::Relu, Act::Silu];
                let (act_c, act_d) = (acts[below(3)], acts[below(3)]);
                let mut random = |n: usize| {
                    values.clear();
                    values.extend((0..n).map(|_| rng_value(&mut below)));
                    values.clone()
                };
                let taps = cs.inputs * kernel.0 * kernel.1;
                let conv_op = FullConv::new(
                    isa,
                    cs,
                    random(cs.outputs * taps),
                    random(cs.outputs),
                    act_c,
                    vec![1, cs.outputs, ch, cw],
                );
                let (oh, ow) = ds.output();
                let dw_op = Depthwise {
                    isa,
                    shape: ds,
                    weights: Floats(random(ds.channels * 9).into()),
                    bias: Floats(random(ds.channels).into()),
                    act: act_d,
                    output: Output::new(tvec![1, ds.channels, oh, ow]),
                };
                let image = random(cs.inputs * cs.height * cs.width);
                let mut between = vec![f32::NAN; cs.outputs * ch * cw];
                conv_op.compute(&[&image], &mut between);
                let mut want = vec![f32::NAN; ds.channels * oh * ow];
                dw_op.compute(&[&between], &mut want);
                // From one row per band to all rows in one.
                let band_bytes = [0, 4 << 10, 64 << 10, usize::MAX][case % 4];
                let op = ConvDepthwise::new(conv_op.clone(), dw_op.clone(), band_bytes);
                for threads in [false, true] {
                    let mut got = vec![f32::NAN; want.len()];
                    let mut run = || op.compute(&[&image], &mut got);
                    if threads {
                        with_kernel_pool(Some(&pool), 0, run);
                    } else {
                        run();
                    }
                    let differs = got
                        .iter()
                        .zip(&want)
                        .position(|(g, w)| g.to_bits() != w.to_bits());
                    assert!(
                        differs.is_none(),
                        "{isa} {cs:?} then {ds:?}, {} rows per band, threads {threads}: value \
                         {differs:?} differs",
                        op.band
                    );
                }
            }
        }
    }

    /// A value in [−1, 1) from `below`.
    fn rng_value(below: &mut impl FnMut(usize) -> usize) -> f32 {
        below(1 << 20) as f32 / (1 << 19) as f32 - 1.0
    }
}
