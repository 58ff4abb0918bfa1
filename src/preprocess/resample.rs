//! Pillow's `BILINEAR` resampling of RGB8, step for step (`libImaging/Resample.c`): the
//! filter taps of each axis in 22-bit fixed point, the horizontal pass over the source rows the
//! vertical pass needs, then the vertical pass; plain Rust, and AVX2 and NEON passes that give
//! the same bytes.

use crate::simd::Isa;

/// Fixed-point precision of Pillow's 8-bit resampler: 32 bits − 8 bits of pixel − 2 of headroom.
pub(super) const PRECISION_BITS: u32 = 32 - 8 - 2;
/// Rounding offset every accumulator starts from.
const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Filter taps for one axis: for each output pixel, the first source index, the number of taps,
/// and `ksize` fixed-point weights (zero-padded).
#[derive(Default)]
pub(super) struct AxisCoeffs {
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
    pub(super) fn reserve(&mut self, in_size: usize, out_size: usize) {
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
    pub(super) fn reserve_horizontal(&mut self, in_size: usize, out_size: usize) {
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
    pub(super) fn compute_horizontal(&mut self, in_size: usize, out_size: usize) {
        self.compute(in_size, out_size);
        #[cfg(target_arch = "x86_64")]
        self.fill_pairs();
        #[cfg(target_arch = "aarch64")]
        self.fill_quads();
    }

    /// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for the bilinear filter over the
    /// whole input range `[0, in_size)`.
    pub(super) fn compute(&mut self, in_size: usize, out_size: usize) {
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
    pub(super) fn span(&self) -> (usize, usize) {
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
pub(super) fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
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
pub(super) fn horizontal_pass<'a>(
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
pub(super) fn horizontal_body<'a>(
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
pub(super) fn vertical_pass<'a>(
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
pub(super) mod neon {
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
    pub(in crate::preprocess) fn horizontal<'a>(
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
