//! Crop → model input: resize an RGB8 rectangle to the model's H×W, then normalise into a
//! preallocated NCHW f32 slot.
//!
//! The resize is Pillow's `Image.resize((W, H), Image.BILINEAR)` re-implemented step for step
//! (Pillow `libImaging/Resample.c`), so that a crop goes through reidcam exactly as it went through
//! the Python pipeline the models were trained and evaluated with:
//! - a triangle filter whose support grows with the downscale factor (a low-pass filter, not the
//!   2×2 bilinear interpolation of most image libraries — that difference alone costs several
//!   points of rank-1 on ReID crops);
//! - separable: a horizontal pass over the source rows the vertical pass needs, rounded to u8,
//!   then a vertical pass;
//! - weights normalised then quantised to 22-bit fixed point, accumulated in i32 from a rounding
//!   offset, clipped to 0..=255.
//!
//! Given the same RGB8 pixels, the output is byte-identical to Pillow's (checked against Pillow
//! output fixtures in `tests/fixtures/resize`).
//!
//! Buffers (filter coefficients, the intermediate image) grow to the largest crop seen and are
//! then reused: size them once with [`Preprocessor::with_max_source`] and the per-crop path never
//! allocates.

use crate::frame::{FrameError, Rect, RgbView};
use crate::manifest::{ChannelOrder, InputSpec};
use crate::simd::Isa;

/// Fixed-point precision of Pillow's 8-bit resampler: 32 bits − 8 bits of pixel − 2 of headroom.
const PRECISION_BITS: u32 = 32 - 8 - 2;
/// Rounding offset every accumulator starts from.
const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Filter taps for one axis: for each output pixel, the first source index, the number of taps,
/// and `ksize` fixed-point weights (zero-padded).
#[derive(Default)]
struct AxisCoeffs {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
    /// f64 weights of one output pixel before normalisation.
    scratch: Vec<f64>,
    /// The weights as the AVX2 horizontal pass reads them: per output pixel, groups of four
    /// taps, each group 32 i16 — the weights' high parts (`w >> 11`), then their low 11 bits —
    /// laid out for `vpmaddwd` against the group's pixels (see `avx2::horizontal`).
    #[cfg(target_arch = "x86_64")]
    pairs: Vec<i16>,
    /// The weights as the NEON horizontal pass reads them: per output pixel, groups of four
    /// taps' i32 weights, zero past the pixel's taps (see `neon::horizontal`).
    #[cfg(target_arch = "aarch64")]
    quads: Vec<i32>,
}

impl AxisCoeffs {
    fn reserve(&mut self, in_size: usize, out_size: usize) {
        let ksize = kernel_size(in_size, out_size);
        self.bounds
            .reserve(out_size.saturating_sub(self.bounds.len()));
        let w = out_size * ksize;
        self.weights.reserve(w.saturating_sub(self.weights.len()));
        self.scratch
            .reserve(ksize.saturating_sub(self.scratch.len()));
    }

    /// [`reserve`](Self::reserve) for the SIMD horizontal pass's weights too (the horizontal
    /// axis only: the vertical pass reads `weights`).
    fn reserve_horizontal(&mut self, in_size: usize, out_size: usize) {
        self.reserve(in_size, out_size);
        #[cfg(target_arch = "x86_64")]
        {
            let pairs = out_size * kernel_size(in_size, out_size).div_ceil(4) * 32;
            self.pairs.reserve(pairs.saturating_sub(self.pairs.len()));
        }
        #[cfg(target_arch = "aarch64")]
        {
            let quads = out_size * kernel_size(in_size, out_size).div_ceil(4) * 4;
            self.quads.reserve(quads.saturating_sub(self.quads.len()));
        }
    }

    /// [`compute`](Self::compute), then the SIMD horizontal pass's weights from `weights`.
    fn compute_horizontal(&mut self, in_size: usize, out_size: usize) {
        self.compute(in_size, out_size);
        #[cfg(target_arch = "x86_64")]
        self.fill_pairs();
        #[cfg(target_arch = "aarch64")]
        self.fill_quads();
    }

    /// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for the bilinear filter over the
    /// whole input range `[0, in_size)`.
    fn compute(&mut self, in_size: usize, out_size: usize) {
        let scale = in_size as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = filterscale; // bilinear support is 1.0, scaled
        let ksize = kernel_size(in_size, out_size);
        self.ksize = ksize;
        self.bounds.clear();
        self.weights.clear();
        self.weights.resize(out_size * ksize, 0);
        self.scratch.clear();
        self.scratch.resize(ksize, 0.0);
        let ss = 1.0 / filterscale;
        for xx in 0..out_size {
            let center = (xx as f64 + 0.5) * scale;
            // Pillow rounds with `(int)(v + 0.5)`, truncating toward zero, then clamps.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let taps = xmax.saturating_sub(xmin).min(ksize);
            let mut total = 0.0;
            for (x, w) in self.scratch[..taps].iter_mut().enumerate() {
                *w = bilinear((x as f64 + xmin as f64 - center + 0.5) * ss);
                total += *w;
            }
            let row = &mut self.weights[xx * ksize..(xx + 1) * ksize];
            for (k, w) in row.iter_mut().zip(&self.scratch[..taps]) {
                let w = if total != 0.0 { w / total } else { *w };
                *k = to_fixed(w);
            }
            self.bounds.push((xmin, taps));
        }
    }

    /// Taps per group of the SIMD passes' weights.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    const GROUP: usize = 4;

    /// For the SIMD horizontal passes: output pixel `x`'s first tap in a row whose first pixel
    /// is source column `x_offset`, and its groups of [`GROUP`](Self::GROUP) taps — if 16 bytes
    /// from each group's first tap lie inside the row's `len` bytes (else the plain path).
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    #[inline(always)]
    fn groups_in(&self, x: usize, x_offset: usize, len: usize) -> Option<(usize, usize)> {
        let (start, taps) = self.bounds[x];
        let start = start - x_offset;
        let used = taps.div_ceil(Self::GROUP);
        let last_load = (start + Self::GROUP * used.saturating_sub(1)) * 3 + 16;
        (used > 0 && last_load <= len).then_some((start, used))
    }

    /// Fills `quads` from `weights`: output pixel `x`'s taps in groups of four, zero past its
    /// taps.
    #[cfg(target_arch = "aarch64")]
    fn fill_quads(&mut self) {
        let groups = self.ksize.div_ceil(Self::GROUP);
        self.quads.clear();
        self.quads
            .resize(self.bounds.len() * groups * Self::GROUP, 0);
        for (x, &(_, taps)) in self.bounds.iter().enumerate() {
            let at = x * groups * Self::GROUP;
            self.quads[at..at + taps].copy_from_slice(&self.weights[x * self.ksize..][..taps]);
        }
    }

    /// Fills `pairs` from `weights`: in the group of taps `4g..4g + 4` of output pixel `x`,
    /// 16-bit slot `8h + 2c + b` of each half holds the weight of tap `4g + 2h + b` for colour
    /// `c` (`h`: which 128-bit lane; slots 6 and 7 of a lane stay 0), the high part in the
    /// first 16 slots, the low 11 bits in the next 16. `w = high · 2¹¹ + low` exactly, both
    /// fit an i16 (|w| ≤ 2²²), so the two 16-bit products give Pillow's i32 sums bit for bit.
    #[cfg(target_arch = "x86_64")]
    fn fill_pairs(&mut self) {
        let groups = self.ksize.div_ceil(Self::GROUP);
        self.pairs.clear();
        self.pairs.resize(self.bounds.len() * groups * 32, 0);
        for (x, &(_, taps)) in self.bounds.iter().enumerate() {
            let weights = &self.weights[x * self.ksize..][..taps];
            for (t, &w) in weights.iter().enumerate() {
                let (group, j) = (t / Self::GROUP, t % Self::GROUP);
                let base = (x * groups + group) * 32;
                let (high, low) = ((w >> 11) as i16, (w & 0x7ff) as i16);
                for c in 0..3 {
                    let slot = (j / 2) * 8 + c * 2 + j % 2;
                    self.pairs[base + slot] = high;
                    self.pairs[base + 16 + slot] = low;
                }
            }
        }
    }

    /// First source index used and one past the last.
    fn span(&self) -> (usize, usize) {
        let (first, _) = self.bounds[0];
        let (last, n) = self.bounds[self.bounds.len() - 1];
        (first, last + n)
    }

    #[inline]
    fn taps(&self, out: usize) -> (usize, &[i32]) {
        let (start, n) = self.bounds[out];
        (start, &self.weights[out * self.ksize..out * self.ksize + n])
    }
}

fn kernel_size(in_size: usize, out_size: usize) -> usize {
    let filterscale = (in_size as f64 / out_size as f64).max(1.0);
    (filterscale.ceil() as usize) * 2 + 1
}

#[inline]
fn bilinear(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 { 1.0 - x } else { 0.0 }
}

/// `(int)(±0.5 + w * 2^22)` as in Pillow's `normalize_coeffs_8bpc`.
#[inline]
fn to_fixed(w: f64) -> i32 {
    let scaled = w * f64::from(1u32 << PRECISION_BITS);
    if w < 0.0 {
        (scaled - 0.5) as i32
    } else {
        (scaled + 0.5) as i32
    }
}

/// Pillow's `clip8`: the sum's integer part, 0 below 0 and 255 from 256 on — as one clamp of
/// the arithmetic shift (the same values: a sum ≤ 0 shifts to ≤ 0, one ≥ 2³⁰ to ≥ 256), which
/// LLVM vectorises in the vertical pass's store loop; with Pillow's two tests it stayed a
/// scalar loop of nine instructions a byte: 10 M of a 768×432 detector frame's 484 M guest
/// instructions on cortex-a72.
#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Normalisation lookup: `lut[c][v]` is the model input value of pixel value `v` in model
/// channel `c`.
struct NormLut {
    /// For model channel `c`, which RGB byte feeds it.
    source_channel: [usize; 3],
    table: [[f32; 256]; 3],
}

impl NormLut {
    fn new(spec: &InputSpec) -> Self {
        let source_channel = match spec.channel_order {
            ChannelOrder::Rgb => [0, 1, 2],
            ChannelOrder::Bgr => [2, 1, 0],
        };
        let mut table = [[0.0f32; 256]; 3];
        for (c, t) in table.iter_mut().enumerate() {
            for (v, out) in t.iter_mut().enumerate() {
                *out = (v as f32 / spec.pixel_divisor - spec.mean[c]) / spec.std[c];
            }
        }
        Self {
            source_channel,
            table,
        }
    }
}

/// Resizes and normalises crops for one model input spec. Reuses its buffers across crops.
pub struct Preprocessor {
    height: usize,
    width: usize,
    lut: NormLut,
    horizontal: AxisCoeffs,
    vertical: AxisCoeffs,
    /// Output of the horizontal pass: `width` × (source rows used) RGB8.
    intermediate: Vec<u8>,
    /// Final resized RGB8 crop, `height` × `width`.
    resized: Vec<u8>,
    /// One output row of vertical-pass accumulators.
    accumulator: Vec<i32>,
    /// The passes' instruction set (`crate::simd`), chosen once.
    isa: Isa,
}

impl Preprocessor {
    /// A preprocessor for `spec`; buffers grow on the first crops.
    pub fn new(spec: &InputSpec) -> Self {
        let (height, width) = (spec.height as usize, spec.width as usize);
        Self {
            height,
            width,
            lut: NormLut::new(spec),
            horizontal: AxisCoeffs::default(),
            vertical: AxisCoeffs::default(),
            intermediate: Vec::new(),
            resized: vec![0; height * width * 3],
            accumulator: vec![0; width * 3],
            isa: Isa::detect(),
        }
    }

    /// A preprocessor whose buffers already fit any crop of up to `max_width` × `max_height`
    /// (e.g. the camera frame), so that later crops allocate nothing.
    pub fn with_max_source(spec: &InputSpec, max_width: u32, max_height: u32) -> Self {
        let mut p = Self::new(spec);
        let (mw, mh) = (max_width.max(1) as usize, max_height.max(1) as usize);
        // Kernel sizes grow with the source size, so reserve for the largest.
        p.horizontal.reserve_horizontal(mw, p.width);
        p.vertical.reserve(mh, p.height);
        p.intermediate
            .reserve((p.width * mh).max(mw * p.height) * 3);
        p.accumulator.reserve(mw * 3);
        p
    }

    /// Number of f32 values one crop occupies in the NCHW input (3 × H × W).
    pub fn slot_len(&self) -> usize {
        3 * self.height * self.width
    }

    /// Resizes `rect` of `frame` and writes the normalised planar result into `slot`
    /// (`3 × H × W` values: channel planes in the model's channel order).
    pub fn run(
        &mut self,
        frame: RgbView<'_>,
        rect: Rect,
        slot: &mut [f32],
    ) -> Result<(), FrameError> {
        assert_eq!(
            slot.len(),
            self.slot_len(),
            "input slot does not match the model input size"
        );
        self.resize(frame, rect)?;
        self.normalise_into(&self.resized, slot);
        Ok(())
    }

    /// Width of a resized crop (the model's W), pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// The latest resized crop (`H × W × 3`, packed RGB8).
    pub fn resized(&self) -> &[u8] {
        &self.resized
    }

    /// Bytes of one resized crop (`H × W × 3`), as [`resize`](Self::resize) returns.
    pub fn resized_len(&self) -> usize {
        self.resized.len()
    }

    /// Normalises a crop already resized to the model's H×W (packed RGB8, e.g. kept from an
    /// earlier frame) into `slot`.
    pub fn normalise_into(&self, resized: &[u8], slot: &mut [f32]) {
        assert_eq!(resized.len(), self.resized.len(), "crop is not H x W x 3");
        assert_eq!(
            slot.len(),
            self.slot_len(),
            "input slot does not match the model input size"
        );
        let plane = self.height * self.width;
        let (p0, rest) = slot.split_at_mut(plane);
        let (p1, p2) = rest.split_at_mut(plane);
        let [s0, s1, s2] = self.lut.source_channel;
        let [t0, t1, t2] = &self.lut.table;
        for (i, px) in resized.chunks_exact(3).enumerate() {
            p0[i] = t0[px[s0] as usize];
            p1[i] = t1[px[s1] as usize];
            p2[i] = t2[px[s2] as usize];
        }
    }

    /// Resizes `rect` of `frame` to the model's H×W and returns the RGB8 result (packed rows):
    /// the same bytes as Pillow's `crop(rect).resize((W, H), BILINEAR)`.
    pub fn resize(&mut self, frame: RgbView<'_>, rect: Rect) -> Result<&[u8], FrameError> {
        let src = frame.crop(rect)?;
        let (in_w, in_h) = (src.width() as usize, src.height() as usize);
        let (out_w, out_h) = (self.width, self.height);
        let need_horizontal = in_w != out_w;
        let need_vertical = in_h != out_h;
        self.horizontal.compute_horizontal(in_w, out_w);
        self.vertical.compute(in_h, out_h);
        let row = |r: usize| src.row(r as u32);
        let isa = self.isa;

        match (need_horizontal, need_vertical) {
            (false, false) => {
                for (y, dst) in self.resized.chunks_exact_mut(out_w * 3).enumerate() {
                    dst.copy_from_slice(row(y));
                }
            }
            (true, false) => horizontal_pass(isa, &self.horizontal, row, 0, &mut self.resized),
            (false, true) => vertical_pass(
                isa,
                &self.vertical,
                row,
                &mut self.resized,
                &mut self.accumulator[..out_w * 3],
            ),
            // Pillow 13 runs the vertical pass first when it shrinks the image and leaves the
            // smaller intermediate (in_h/out_h > in_w/out_w); the rounding to u8 in between makes
            // the order visible, so we follow it (checked by the resize fixtures).
            (true, true) if in_h > out_h && in_h * out_w > in_w * out_h => {
                // Vertical pass over the source columns the horizontal pass reads.
                let (x0, x1) = self.horizontal.span();
                let cols = (x1 - x0) * 3;
                self.intermediate.clear();
                self.intermediate.resize(out_h * cols, 0);
                self.accumulator.resize(self.accumulator.len().max(cols), 0);
                vertical_pass(
                    isa,
                    &self.vertical,
                    |r| &row(r)[x0 * 3..x1 * 3],
                    &mut self.intermediate,
                    &mut self.accumulator[..cols],
                );
                let intermediate = &self.intermediate;
                horizontal_pass(
                    isa,
                    &self.horizontal,
                    |r| &intermediate[r * cols..(r + 1) * cols],
                    x0,
                    &mut self.resized,
                );
            }
            (true, true) => {
                // Horizontal pass over the source rows the vertical pass reads.
                let (y0, y1) = self.vertical.span();
                let stride = out_w * 3;
                self.intermediate.clear();
                self.intermediate.resize((y1 - y0) * stride, 0);
                horizontal_pass(
                    isa,
                    &self.horizontal,
                    |r| row(y0 + r),
                    0,
                    &mut self.intermediate,
                );
                let intermediate = &self.intermediate;
                vertical_pass(
                    isa,
                    &self.vertical,
                    |r| &intermediate[(r - y0) * stride..(r - y0 + 1) * stride],
                    &mut self.resized,
                    &mut self.accumulator[..stride],
                );
            }
        }
        Ok(&self.resized)
    }
}

/// Writes a pixel's three bytes (the first three of `rgb`) at the start of `dst`, the rest of
/// its row: one 4-byte store where the row goes on (the fourth byte is the next pixel's red,
/// which that pixel writes next), three bytes for a row's last pixel. Three byte stores and
/// their shifts cost 8 of the ~56 instructions of a pixel of the NEON pass on cortex-a72.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[inline(always)]
fn store_rgb(dst: &mut [u8], rgb: [u8; 4]) {
    if dst.len() >= 4 {
        dst[..4].copy_from_slice(&rgb);
    } else {
        dst[..3].copy_from_slice(&rgb[..3]);
    }
}

/// Pillow's horizontal pass: output row `r` of `out` is source row `row(r)` (whose first pixel
/// is source column `x_offset`) filtered by `coeffs`.
fn horizontal_pass<'a>(
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))] isa: Isa,
    coeffs: &AxisCoeffs,
    row: impl Fn(usize) -> &'a [u8],
    x_offset: usize,
    out: &mut [u8],
) {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Baseline && isa.is_available() {
        // SAFETY: every set above the baseline has AVX2, and the CPU runs it.
        return unsafe { avx2::horizontal(coeffs, row, x_offset, out) };
    }
    #[cfg(target_arch = "aarch64")]
    return neon::horizontal(coeffs, row, x_offset, out);
    #[cfg_attr(target_arch = "aarch64", allow(unreachable_code))]
    horizontal_body(coeffs, row, x_offset, out)
}

#[inline(always)]
fn horizontal_body<'a>(
    coeffs: &AxisCoeffs,
    row: impl Fn(usize) -> &'a [u8],
    x_offset: usize,
    out: &mut [u8],
) {
    let out_w = coeffs.bounds.len();
    for (r, dst_row) in out.chunks_exact_mut(out_w * 3).enumerate() {
        let line = row(r);
        for (x, dst) in dst_row.chunks_exact_mut(3).enumerate() {
            dst.copy_from_slice(&horizontal_pixel(coeffs, line, x_offset, x));
        }
    }
}

/// Output pixel `x` of the horizontal pass over `line` (whose first pixel is source column
/// `x_offset`).
#[inline(always)]
fn horizontal_pixel(coeffs: &AxisCoeffs, line: &[u8], x_offset: usize, x: usize) -> [u8; 3] {
    let (start, k) = coeffs.taps(x);
    let start = start - x_offset;
    let taps = &line[start * 3..(start + k.len()) * 3];
    let (mut a0, mut a1, mut a2) = (HALF, HALF, HALF);
    for (px, &w) in taps.chunks_exact(3).zip(k) {
        a0 += i32::from(px[0]) * w;
        a1 += i32::from(px[1]) * w;
        a2 += i32::from(px[2]) * w;
    }
    [clip8(a0), clip8(a1), clip8(a2)]
}

/// Pillow's vertical pass: each output row is a weighted sum of source rows `row(r)`,
/// accumulated row by row in `acc` (one i32 per output byte) so the inner loop vectorises.
fn vertical_pass<'a>(
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))] isa: Isa,
    coeffs: &AxisCoeffs,
    row: impl Fn(usize) -> &'a [u8],
    out: &mut [u8],
    acc: &mut [i32],
) {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Baseline && isa.is_available() {
        // SAFETY: every set above the baseline has AVX2, and the CPU runs it.
        return unsafe { avx2::vertical(coeffs, row, out, acc) };
    }
    vertical_body(coeffs, row, out, acc)
}

#[inline(always)]
fn vertical_body<'a>(
    coeffs: &AxisCoeffs,
    row: impl Fn(usize) -> &'a [u8],
    out: &mut [u8],
    acc: &mut [i32],
) {
    for (y, dst_row) in out.chunks_exact_mut(acc.len()).enumerate() {
        let (start, k) = coeffs.taps(y);
        acc.fill(HALF);
        for (j, &w) in k.iter().enumerate() {
            for (a, &px) in acc.iter_mut().zip(row(start + j)) {
                *a += i32::from(px) * w;
            }
        }
        for (dst, &a) in dst_row.iter_mut().zip(acc.iter()) {
            *dst = clip8(a);
        }
    }
}

/// The two passes compiled for AVX2, taken when the crate's instruction set (`crate::simd::Isa`,
/// `REIDCAM_KERNELS`) is above the baseline: the same integer arithmetic (so the same bytes), but
/// the baseline x86-64 build (SSE2) has no 32-bit vector multiply, so its vertical pass ran
/// mostly scalar — a 1920×1080 frame letterboxed to 736×414 for the detector took ~10 ms.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{AxisCoeffs, HALF, PRECISION_BITS, horizontal_pixel, store_rgb};

    /// The horizontal pass with 16-bit multiply-adds: for each group of four taps of an output
    /// pixel, its 12 source bytes are loaded once into both lanes of a register and spread by
    /// one byte shuffle into 16-bit pairs of neighbouring taps per colour (`[r₀ r₁ g₀ g₁ b₀ b₁
    /// 0 0]`, taps 2 and 3 in the upper lane), and `vpmaddwd` against the weights' high and low
    /// parts (`AxisCoeffs::fill_pairs`) adds two taps per 32-bit lane: the same integer sums
    /// as Pillow's (and `horizontal_body`'s), so the same bytes. A pixel whose last group would
    /// load past the row's end takes the plain path. Downscaling a 1920×1080 frame to the
    /// detector's 736×414 (seven taps per pixel) spent 5 ms per frame in the plain loop.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn horizontal<'a>(
        coeffs: &AxisCoeffs,
        row: impl Fn(usize) -> &'a [u8],
        x_offset: usize,
        out: &mut [u8],
    ) {
        const Z: i8 = -128; // a shuffle index with the high bit set: a zero byte.
        #[rustfmt::skip]
        let spread = _mm256_setr_epi8(
            0, Z, 3, Z, 1, Z, 4, Z, 2, Z, 5, Z, Z, Z, Z, Z,
            6, Z, 9, Z, 7, Z, 10, Z, 8, Z, 11, Z, Z, Z, Z, Z,
        );
        let out_w = coeffs.bounds.len();
        let groups = coeffs.ksize.div_ceil(AxisCoeffs::GROUP);
        debug_assert_eq!(coeffs.pairs.len(), out_w * groups * 32);
        for (r, dst_row) in out.chunks_exact_mut(out_w * 3).enumerate() {
            let line = row(r);
            for x in 0..out_w {
                let dst = &mut dst_row[3 * x..];
                let Some((start, used)) = coeffs.groups_in(x, x_offset, line.len()) else {
                    dst[..3].copy_from_slice(&horizontal_pixel(coeffs, line, x_offset, x));
                    continue;
                };
                let (mut high, mut low) = (_mm256_setzero_si256(), _mm256_setzero_si256());
                for g in 0..used {
                    // SAFETY: the 16 bytes from the group's first tap are inside `line`
                    // (`groups_in`); the group's 32 weights are inside `pairs`
                    // (`fill_pairs`: `groups` groups per output pixel, `g < used ≤ groups`).
                    unsafe {
                        let bytes = _mm_loadu_si128(
                            line.as_ptr()
                                .add((start + AxisCoeffs::GROUP * g) * 3)
                                .cast(),
                        );
                        let pixels =
                            _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(bytes), spread);
                        let w = coeffs.pairs.as_ptr().add((x * groups + g) * 32);
                        high = _mm256_add_epi32(
                            high,
                            _mm256_madd_epi16(pixels, _mm256_loadu_si256(w.cast())),
                        );
                        low = _mm256_add_epi32(
                            low,
                            _mm256_madd_epi16(pixels, _mm256_loadu_si256(w.add(16).cast())),
                        );
                    }
                }
                let sum = _mm256_add_epi32(_mm256_slli_epi32::<11>(high), low);
                let sum = _mm_add_epi32(
                    _mm256_castsi256_si128(sum),
                    _mm256_extracti128_si256::<1>(sum),
                );
                // `clip8(HALF + sum)` in the register: the arithmetic shift leaves sums ≥ 2³⁰
                // at ≥ 256 and sums ≤ 0 at ≤ 0, which the saturating packs clip to 255 and 0.
                let shifted = _mm_srai_epi32::<{ PRECISION_BITS as i32 }>(_mm_add_epi32(
                    sum,
                    _mm_set1_epi32(HALF),
                ));
                let packed = _mm_packus_epi16(_mm_packs_epi32(shifted, shifted), shifted);
                store_rgb(dst, _mm_cvtsi128_si32(packed).to_le_bytes());
            }
        }
    }

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn vertical<'a>(
        coeffs: &AxisCoeffs,
        row: impl Fn(usize) -> &'a [u8],
        out: &mut [u8],
        acc: &mut [i32],
    ) {
        super::vertical_body(coeffs, row, out, acc)
    }
}

#[cfg(target_arch = "aarch64")]
mod neon {
    use std::arch::aarch64::*;

    use super::{AxisCoeffs, HALF, PRECISION_BITS, horizontal_pixel, store_rgb};

    /// The horizontal pass in NEON registers, the same integer sums as Pillow's (and
    /// `horizontal_body`'s), so the same bytes: for each group of four taps of an output pixel,
    /// its 12 source bytes are loaded once and a table lookup (`tbl`) per tap puts that tap's
    /// colours in the low bytes of three 32-bit lanes (`[r 0 0 0 g 0 0 0 b 0 0 0 0…]`), which one
    /// multiply-accumulate by a lane of the group's four i32 weights adds to the sums (22-bit
    /// weights times 8-bit values fit 32 bits, as in Pillow). A pixel whose last group would
    /// load past the row's end takes the plain path. On cortex-a72 the plain loop cost 107 M
    /// guest instructions per 1920×1080 frame letterboxed for the detector (the network: ~456 M).
    #[inline(never)]
    pub(super) fn horizontal<'a>(
        coeffs: &AxisCoeffs,
        row: impl Fn(usize) -> &'a [u8],
        x_offset: usize,
        out: &mut [u8],
    ) {
        const Z: u8 = 0xff; // out of the table: a zero byte.
        /// Per tap of a group: where its three colours go (the low bytes of lanes 0–2).
        #[rustfmt::skip]
        const TAPS: [[u8; 16]; 4] = [
            [0, Z, Z, Z, 1, Z, Z, Z, 2, Z, Z, Z, Z, Z, Z, Z],
            [3, Z, Z, Z, 4, Z, Z, Z, 5, Z, Z, Z, Z, Z, Z, Z],
            [6, Z, Z, Z, 7, Z, Z, Z, 8, Z, Z, Z, Z, Z, Z, Z],
            [9, Z, Z, Z, 10, Z, Z, Z, 11, Z, Z, Z, Z, Z, Z, Z],
        ];
        // SAFETY: NEON is part of every aarch64 CPU; each array is 16 bytes.
        let taps: [uint8x16_t; 4] = std::array::from_fn(|t| unsafe { vld1q_u8(TAPS[t].as_ptr()) });
        let out_w = coeffs.bounds.len();
        let groups = coeffs.ksize.div_ceil(AxisCoeffs::GROUP);
        debug_assert_eq!(coeffs.quads.len(), out_w * groups * AxisCoeffs::GROUP);
        for (r, dst_row) in out.chunks_exact_mut(out_w * 3).enumerate() {
            let line = row(r);
            for x in 0..out_w {
                let dst = &mut dst_row[3 * x..];
                let Some((start, used)) = coeffs.groups_in(x, x_offset, line.len()) else {
                    dst[..3].copy_from_slice(&horizontal_pixel(coeffs, line, x_offset, x));
                    continue;
                };
                // SAFETY: the 16 bytes from each group's first tap are inside `line`
                // (`groups_in`); each group's four weights are inside `quads`
                // (`fill_quads`: `groups` groups per output pixel, `g < used ≤ groups`).
                let sum = unsafe {
                    let mut sum = vdupq_n_s32(HALF);
                    for g in 0..used {
                        let at = start + AxisCoeffs::GROUP * g;
                        let bytes = vld1q_u8(line.as_ptr().add(at * 3));
                        let w = vld1q_s32(
                            coeffs
                                .quads
                                .as_ptr()
                                .add((x * groups + g) * AxisCoeffs::GROUP),
                        );
                        let tap = |t: usize| vreinterpretq_s32_u8(vqtbl1q_u8(bytes, taps[t]));
                        sum = vmlaq_laneq_s32::<0>(sum, tap(0), w);
                        sum = vmlaq_laneq_s32::<1>(sum, tap(1), w);
                        sum = vmlaq_laneq_s32::<2>(sum, tap(2), w);
                        sum = vmlaq_laneq_s32::<3>(sum, tap(3), w);
                    }
                    sum
                };
                // `clip8` in the register: the arithmetic shift leaves sums ≥ 2³⁰ at ≥ 256 and
                // sums ≤ 0 at ≤ 0, which the saturating narrowings clip to 255 and 0.
                // SAFETY: NEON is part of every aarch64 CPU.
                let rgb = unsafe {
                    let shifted = vshrq_n_s32::<{ PRECISION_BITS as i32 }>(sum);
                    let bytes = vqmovn_u16(vcombine_u16(vqmovun_s32(shifted), vdup_n_u16(0)));
                    vget_lane_u32::<0>(vreinterpret_u32_u8(bytes)).to_le_bytes()
                };
                store_rgb(dst, rgb);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::RgbImage;
    use crate::manifest::ModelManifest;

    fn spec(h: u32, w: u32) -> InputSpec {
        ModelManifest::torchreid_default("t", "in", h, w, "out", 8).input
    }

    fn noise(width: u32, height: u32, seed: u32) -> RgbImage {
        let mut state = seed;
        let data = (0..width * height * 3)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 24) as u8
            })
            .collect();
        RgbImage::from_raw(width, height, data).unwrap()
    }

    #[test]
    fn clip8_is_pillows() {
        // Pillow's clip8 as it writes it: two tests, then the shift.
        let pillow = |acc: i32| -> u8 {
            if acc >= (1 << PRECISION_BITS << 8) {
                255
            } else if acc <= 0 {
                0
            } else {
                (acc >> PRECISION_BITS) as u8
            }
        };
        let edges = (0..=256).flat_map(|v: i64| {
            let at = v << PRECISION_BITS;
            [at - 1, at, at + 1]
        });
        let sweep = (i64::from(i32::MIN)..=i64::from(i32::MAX)).step_by(65_521);
        for acc in edges
            .chain(sweep)
            .chain([i64::from(i32::MIN), i64::from(i32::MAX)])
        {
            let acc = i32::try_from(acc).expect("every value is an i32");
            assert_eq!(clip8(acc), pillow(acc), "clip8({acc})");
        }
    }

    #[test]
    fn identity_size_copies() {
        let img = noise(6, 4, 1);
        let mut p = Preprocessor::new(&spec(4, 6));
        assert_eq!(p.resize(img.view(), img.bounds()).unwrap(), img.as_bytes());
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = RgbImage::from_raw(37, 91, [10u8, 128, 250].repeat(37 * 91)).unwrap();
        for (h, w) in [(256, 128), (20, 9), (91, 5), (7, 37)] {
            let mut p = Preprocessor::new(&spec(h, w));
            let out = p.resize(img.view(), img.bounds()).unwrap();
            assert!(
                out.chunks_exact(3).all(|px| px == [10, 128, 250]),
                "{h}x{w}"
            );
        }
    }

    #[test]
    fn crop_equals_resize_of_copied_crop() {
        let img = noise(50, 40, 7);
        let rect = Rect::new(5, 3, 21, 30);
        let view = img.view().crop(rect).unwrap();
        let copied: Vec<u8> = (0..rect.height)
            .flat_map(|y| view.row(y).to_vec())
            .collect();
        let copied = RgbImage::from_raw(rect.width, rect.height, copied).unwrap();
        let mut a = Preprocessor::new(&spec(16, 8));
        let mut b = Preprocessor::new(&spec(16, 8));
        assert_eq!(
            a.resize(img.view(), rect).unwrap(),
            b.resize(copied.view(), copied.bounds()).unwrap()
        );
    }

    #[test]
    fn normalisation_and_channel_order() {
        let img = RgbImage::from_raw(2, 1, vec![255, 0, 51, 255, 0, 51]).unwrap();
        let mut s = spec(1, 2);
        s.mean = [0.0; 3];
        s.std = [1.0; 3];
        let mut p = Preprocessor::new(&s);
        let mut slot = vec![0.0; 6];
        p.run(img.view(), img.bounds(), &mut slot).unwrap();
        assert_eq!(slot, [1.0, 1.0, 0.0, 0.0, 0.2, 0.2]);
        s.channel_order = ChannelOrder::Bgr;
        s.pixel_divisor = 1.0;
        let mut p = Preprocessor::new(&s);
        p.run(img.view(), img.bounds(), &mut slot).unwrap();
        assert_eq!(slot, [51.0, 51.0, 0.0, 0.0, 255.0, 255.0]);
    }

    /// The AVX2 passes give the plain passes' bytes, on the detector's letterbox of a full-HD
    /// frame and on random sizes up and down (groups of taps that end at a row's end, one tap).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx2_passes_give_the_same_bytes_as_the_plain_ones() {
        if !Isa::Avx2Fma.is_available() {
            eprintln!("skipped: this CPU has no AVX2");
            return;
        }
        let mut state = 0x5eed_u32;
        let mut below = |n: u32| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 8) % n
        };
        let mut cases = vec![
            (1920, 1080, 736, 414),
            (1280, 720, 736, 414),
            (768, 432, 736, 414),
        ];
        for _ in 0..60 {
            let (w, h) = (1 + below(400), 1 + below(60));
            cases.push((w, h, 1 + below(200), 1 + below(60)));
        }
        for (i, (w, h, ow, oh)) in cases.into_iter().enumerate() {
            let img = noise(w, h, i as u32);
            let (mut fast, mut plain) = (
                Preprocessor::new(&spec(oh, ow)),
                Preprocessor::new(&spec(oh, ow)),
            );
            fast.isa = Isa::Avx2Fma;
            plain.isa = Isa::Baseline;
            let want = plain.resize(img.view(), img.bounds()).unwrap();
            let got = fast.resize(img.view(), img.bounds()).unwrap();
            if let Some(i) = (0..want.len()).find(|&i| got[i] != want[i]) {
                panic!(
                    "{w}x{h} -> {ow}x{oh}: byte {i} is {} where {} was expected",
                    got[i], want[i]
                );
            }
        }
    }

    /// The NEON horizontal pass gives the plain pass's bytes, on the detector's letterbox of a
    /// full-HD frame and on random sizes up and down.
    #[cfg(target_arch = "aarch64")]
    #[test]
    fn the_neon_horizontal_pass_gives_the_same_bytes_as_the_plain_one() {
        let mut state = 0x5eed_u32;
        let mut below = |n: usize| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 8) as usize % n
        };
        let mut cases = vec![(1920, 736, 3), (1280, 736, 3), (768, 736, 3)];
        for _ in 0..60 {
            cases.push((1 + below(400), 1 + below(200), 1 + below(4)));
        }
        for (w, ow, rows) in cases {
            let mut coeffs = AxisCoeffs::default();
            coeffs.compute_horizontal(w, ow);
            let src: Vec<u8> = (0..w * 3 * rows).map(|_| below(256) as u8).collect();
            let line = |r: usize| &src[r * w * 3..(r + 1) * w * 3];
            let (mut fast, mut plain) = (vec![0u8; ow * 3 * rows], vec![0u8; ow * 3 * rows]);
            neon::horizontal(&coeffs, line, 0, &mut fast);
            horizontal_body(&coeffs, line, 0, &mut plain);
            if let Some(i) = (0..plain.len()).find(|&i| fast[i] != plain[i]) {
                panic!(
                    "{w} -> {ow}: byte {i} is {} where {} was expected",
                    fast[i], plain[i]
                );
            }
        }
    }

    #[test]
    fn upscale_and_downscale_in_each_axis() {
        // Every combination of need_horizontal / need_vertical, up and down.
        let img = noise(30, 60, 3);
        for (h, w) in [(60, 10), (60, 64), (20, 30), (90, 30), (20, 64), (256, 128)] {
            let mut p = Preprocessor::new(&spec(h, w));
            let out = p.resize(img.view(), img.bounds()).unwrap();
            assert_eq!(out.len(), (h * w * 3) as usize);
        }
    }
}
