//! The quantisers of the int8 products' inputs: f32 planes to u8 codes on the layer's input
//! grid ([`Layer::quantise`]), four channels' codes per word for the 1×1 products, or one code
//! per byte for the stem (`qconv`); plain, AVX2, AVX-512 and NEON, all giving the same codes.

use super::super::pointwise::Shape;
use super::Layer;

/// `codes[i]` = the code of `input[i]` XORed with `flip`, value by value: the plain version
/// (the stem's image where no vector quantiser runs, and the NEON one's rows under 16 values).
#[inline(always)]
pub(in super::super) fn quantise_bytes(layer: &Layer, input: &[f32], codes: &mut [u8], flip: u8) {
    for (c, &v) in codes.iter_mut().zip(input) {
        *c = layer.quantise(v) as u8 ^ flip;
    }
}

/// Fills `words` (the `[pixels]` rows of groups `first..`, as many as it holds) with the
/// input's codes, four channels per word, each word XORed with `flip` (0x80 per byte turns u8
/// codes into `code − 128` as i8): the plain version, for shapes the vector ones do not take.
/// Every quantiser takes such a run of groups, so that threads can make one image's words
/// side by side (`Layer::quantise_groups`).
#[inline(always)]
pub(super) fn quantise_words(
    layer: &Layer,
    input: &[f32],
    words: &mut [u32],
    first: usize,
    flip: u32,
) {
    let Shape { inputs, pixels, .. } = layer.shape;
    for (g, row) in (first..).zip(words.chunks_exact_mut(pixels)) {
        let plane = |j: usize| {
            let c = 4 * g + j;
            (c < inputs).then(|| &input[c * pixels..][..pixels])
        };
        let planes = [plane(0), plane(1), plane(2), plane(3)];
        if let [Some(a), Some(b), Some(c), Some(d)] = planes {
            for (p, w) in row.iter_mut().enumerate() {
                let q = |x: f32| layer.quantise(x) as u32;
                *w = (q(a[p]) | q(b[p]) << 8 | q(c[p]) << 16 | q(d[p]) << 24) ^ flip;
            }
        } else {
            // The last, partial group: padded channels get code 0 (their weights are 0).
            for (p, w) in row.iter_mut().enumerate() {
                let mut word = 0;
                for (j, plane) in planes.iter().enumerate() {
                    if let Some(x) = plane {
                        word |= (layer.quantise(x[p]) as u32) << (8 * j);
                    }
                }
                *w = word ^ flip;
            }
        }
    }
}

/// [`quantise_words`] compiled for AVX2 (LLVM vectorises it; rounding is one instruction).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(super) fn quantise_avx2(
    layer: &Layer,
    input: &[f32],
    words: &mut [u32],
    first: usize,
    flip: u32,
) {
    quantise_words(layer, input, words, first, flip)
}

/// [`quantise_words`] in AVX-512 registers, 16 pixels at a time with a masked tail (LLVM's own
/// vectorisation of it left planes under 64 pixels to a scalar loop).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vnni")]
pub(super) fn quantise_avx512(
    layer: &Layer,
    input: &[f32],
    words: &mut [u32],
    first: usize,
    flip: u32,
) {
    use std::arch::x86_64::*;
    let Shape { inputs, pixels, .. } = layer.shape;
    if inputs % 4 != 0 {
        return quantise_words(layer, input, words, first, flip);
    }
    let inv = _mm512_set1_ps(layer.x_inv);
    let zero = _mm512_set1_ps(layer.x_zero as f32);
    let (lo, hi) = (_mm512_setzero_ps(), _mm512_set1_ps(255.0));
    let flip = _mm512_set1_epi32(flip as i32);
    for (g, row) in (first..).zip(words.chunks_exact_mut(pixels)) {
        let planes = &input[4 * g * pixels..][..4 * pixels];
        let mut p = 0;
        while p < pixels {
            let left = pixels - p;
            let mask: __mmask16 = if left >= 16 { 0xffff } else { (1 << left) - 1 };
            let mut word = flip;
            for j in 0..4 {
                // SAFETY: masked to the plane's pixels.
                let x = unsafe { _mm512_maskz_loadu_ps(mask, planes.as_ptr().add(j * pixels + p)) };
                // Round half to even (the default rounding mode), NaN to 0 (the zero point's
                // code, as `Layer::quantise`), shift, clamp.
                let scaled = _mm512_mul_ps(x, inv);
                let q = _mm512_maskz_roundscale_ps::<
                    { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
                >(_mm512_cmp_ps_mask::<_CMP_ORD_Q>(scaled, scaled), scaled);
                let q = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(q, zero), lo), hi);
                let code =
                    _mm512_sll_epi32(_mm512_cvttps_epi32(q), _mm_cvtsi32_si128(8 * j as i32));
                word = _mm512_xor_si512(word, code);
            }
            // SAFETY: masked to the row's pixels.
            unsafe { _mm512_mask_storeu_epi32(row.as_mut_ptr().add(p).cast(), mask, word) };
            p += 16;
        }
    }
}

/// [`quantise_words`] in NEON registers, 16 pixels of four channels per step ([`Codes16`]);
/// `st4` interleaves the four channels' bytes into the pixels' words. A row's last pixels are
/// a whole step ending where the row ends (the same words again); rows under 16 pixels go
/// value by value.
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
pub(super) fn quantise_neon(
    layer: &Layer,
    input: &[f32],
    words: &mut [u32],
    first: usize,
    flip: u32,
) {
    use std::arch::aarch64::*;
    const STEP: usize = 16;
    let Shape { inputs, pixels, .. } = layer.shape;
    if inputs % 4 != 0 || pixels < STEP {
        return quantise_words(layer, input, words, first, flip);
    }
    let codes = Codes16::new(layer, flip as u8);
    for (g, row) in (first..).zip(words.chunks_exact_mut(pixels)) {
        let planes = &input[4 * g * pixels..][..4 * pixels];
        let mut p = 0;
        while p < pixels {
            let at = p.min(pixels - STEP);
            // SAFETY: `at + 16 ≤ pixels`: inside each of the four planes and the row.
            unsafe {
                let x = planes.as_ptr().add(at);
                let bytes = uint8x16x4_t(
                    codes.of(x),
                    codes.of(x.add(pixels)),
                    codes.of(x.add(2 * pixels)),
                    codes.of(x.add(3 * pixels)),
                );
                vst4q_u8(row.as_mut_ptr().add(at).cast(), bytes);
            }
            p += STEP;
        }
    }
}

/// `codes[i]` = the code of `input[i]` XORed with `flip` ([`Layer::quantise`]), 16 at a time
/// ([`Codes16`]), the last 16 ending where the slices end; under 16 values one by one. (The
/// stem's image, `qconv`.)
#[cfg(target_arch = "aarch64")]
pub(in super::super) fn quantise_bytes_neon(
    layer: &Layer,
    input: &[f32],
    codes: &mut [u8],
    flip: u8,
) {
    use std::arch::aarch64::*;
    const STEP: usize = 16;
    let n = codes.len();
    let input = &input[..n];
    if n < STEP {
        return quantise_bytes(layer, input, codes, flip);
    }
    let quantiser = Codes16::new(layer, flip);
    let mut i = 0;
    while i < n {
        let at = i.min(n - STEP);
        // SAFETY: `at + 16 ≤ n`: inside both slices.
        unsafe {
            vst1q_u8(
                codes.as_mut_ptr().add(at),
                quantiser.of(input.as_ptr().add(at)),
            )
        };
        i += STEP;
    }
}

/// The NEON quantiser of 16 values, as the NEON products take them (u8 code − 128 as i8, i.e.
/// the code XORed with 0x80): each value scaled (`x · 1/s`), rounded half to even and converted
/// in one instruction (`fcvtns`: NaN → 0, ±∞ → the i32 limits), narrowed to i16 with
/// saturation (`sqxtn`), shifted by the zero point − 128 with saturation (`sqadd`, eight lanes
/// at a time) and narrowed to [−128, 127] with saturation (`sqxtn`): the codes of
/// [`Layer::quantise`] − 128 (a value past i16 stays past the range after the shift), in 1.25
/// instructions a value, where rounding, clamping in float and packing by shift-and-insert took
/// 2.1. (Until NaN counted as 0.0 in every quantiser, an `fmaxnm` per four values raised it to
/// −10⁹ first, for code 0.)
#[cfg(target_arch = "aarch64")]
struct Codes16 {
    inv: std::arch::aarch64::float32x4_t,
    shift: std::arch::aarch64::int16x8_t,
}

#[cfg(target_arch = "aarch64")]
impl Codes16 {
    /// `flip` must be 0x80 (what [`Layer::flip`] gives for the NEON products).
    fn new(layer: &Layer, flip: u8) -> Codes16 {
        use std::arch::aarch64::*;
        assert_eq!(flip, 0x80, "the NEON quantiser makes i8 codes");
        // SAFETY: register-only (NEON is on every aarch64 CPU).
        unsafe {
            Codes16 {
                inv: vdupq_n_f32(layer.x_inv),
                // The zero point is in [0, 255] (checked in `Layer::new`).
                shift: vdupq_n_s16(layer.x_zero as i16 - 128),
            }
        }
    }

    /// # Safety
    /// `x` valid for reading 16 floats.
    #[inline(always)]
    unsafe fn of(&self, x: *const f32) -> std::arch::aarch64::uint8x16_t {
        use std::arch::aarch64::*;
        // SAFETY: the caller's contract; the rest is register-only.
        unsafe {
            let code = |i: usize| vcvtnq_s32_f32(vmulq_f32(vld1q_f32(x.add(4 * i)), self.inv));
            let low = vqaddq_s16(vqmovn_high_s32(vqmovn_s32(code(0)), code(1)), self.shift);
            let high = vqaddq_s16(vqmovn_high_s32(vqmovn_s32(code(2)), code(3)), self.shift);
            vreinterpretq_u8_s8(vqmovn_high_s16(vqmovn_s16(low), high))
        }
    }
}
