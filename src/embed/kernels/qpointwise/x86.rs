//! The x86-64 products over the quantised input words: AVX-512 VNNI (`vpdpbusd`, u8 × i8, 64
//! multiply-adds per instruction) and, for CPUs without it, AVX2: `vpmaddubsw` on the codes as
//! they are where the layer's weights are bounded in pairs (`Layer::paired`: 32 per
//! instruction, summed into int32 by `vpmaddwd`), else `vpmaddwd` on the codes and weights
//! widened to 16 bits in place (16 per instruction). All are exact.

use std::arch::x86_64::*;

use super::Layer;

/// Output channels per register tile (two 16-pixel registers each: 16 accumulators).
const OUTS: usize = 8;

/// # Safety
/// The CPU must have AVX-512F and AVX-512 VNNI; `words` is `[groups][pixels]`, `out` (and
/// `residual`) `[outputs][pixels]`.
#[target_feature(enable = "avx512f,avx512vnni")]
pub(super) unsafe fn product(
    layer: &Layer,
    words: &[u32],
    residual: Option<&[f32]>,
    relu: bool,
    out: &mut [f32],
) {
    let (outputs, pixels) = (layer.shape.outputs, layer.shape.pixels);
    assert!(
        words.len() >= layer.groups * pixels,
        "int8 pointwise scratch"
    );
    assert!(
        out.len() >= (outputs - 1) * layer.y_stride + pixels,
        "int8 pointwise output"
    );
    // SAFETY: the caller's contract, passed on.
    unsafe { with_store_variants!(outputs_of, layer, words, residual, relu, out) }
}

#[inline]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn outputs_of<const RES: bool, const RELU: bool>(
    layer: &Layer,
    words: &[u32],
    residual: &[f32],
    out: &mut [f32],
) {
    let outputs = layer.shape.outputs;
    assert!(
        !RES || residual.len() >= (outputs - 1) * layer.y_stride + layer.shape.pixels,
        "int8 pointwise residual"
    );
    let mut o = 0;
    while o + OUTS <= outputs {
        // SAFETY: as this function's safety contract and notes say: the CPU features were checked, o0 + N ≤
        // outputs keeps every index inside its vector, and the masks keep loads and stores inside
        // the rows.
        unsafe { tile::<OUTS, RES, RELU>(layer, o, words, residual, out) };
        o += OUTS;
    }
    while o < outputs {
        // SAFETY: as this function's safety contract and notes say: the CPU features were checked, o0 + N ≤
        // outputs keeps every index inside its vector, and the masks keep loads and stores inside
        // the rows.
        unsafe { tile::<1, RES, RELU>(layer, o, words, residual, out) };
        o += 1;
    }
}

/// Outputs `o0..o0 + N` over every pixel, 32 pixels per step (two registers, the last
/// ones masked): sums started from each output's correction (bias − z_x·Σw), stored
/// straight from the registers.
#[inline]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn tile<const N: usize, const RES: bool, const RELU: bool>(
    layer: &Layer,
    o0: usize,
    words: &[u32],
    residual: &[f32],
    out: &mut [f32],
) {
    let pixels = layer.shape.pixels;
    let groups = layer.groups;
    let x = words.as_ptr();
    // SAFETY (whole function): o0 + N ≤ outputs (the caller's loops), so every weight word
    // `(o0 + j)·groups + g`, correction and multiplier read is inside its vector; the
    // masks keep loads and stores inside the rows, whose lengths `product` asserted.
    // SAFETY: as this function's safety contract and notes say: the CPU features were checked, o0 + N ≤ outputs
    // keeps every index inside its vector, and the masks keep loads and stores inside the rows.
    let w = unsafe { layer.words.as_ptr().add(o0 * groups) };
    let mut p = 0;
    while p < pixels {
        let left = pixels - p;
        let m0: __mmask16 = if left >= 16 { 0xffff } else { (1 << left) - 1 };
        let m1: __mmask16 = if left >= 32 {
            0xffff
        } else if left > 16 {
            (1 << (left - 16)) - 1
        } else {
            0
        };
        let mut acc = [[_mm512_setzero_si512(); 2]; N];
        for (j, a) in acc.iter_mut().enumerate() {
            // SAFETY: as this function's safety contract and notes say: the CPU features were checked, o0 + N ≤
            // outputs keeps every index inside its vector, and the masks keep loads and stores
            // inside the rows.
            let corr = _mm512_set1_epi32(unsafe { *layer.corr_u8.get_unchecked(o0 + j) });
            *a = [corr; 2];
        }
        for g in 0..groups {
            // SAFETY: as this function's safety contract and notes say: the CPU features were checked, o0 + N ≤
            // outputs keeps every index inside its vector, and the masks keep loads and stores
            // inside the rows.
            let (xa, xb) = unsafe {
                let row = x.add(g * pixels + p);
                (
                    _mm512_maskz_loadu_epi32(m0, row.cast()),
                    _mm512_maskz_loadu_epi32(m1, row.add(16).cast()),
                )
            };
            for (j, a) in acc.iter_mut().enumerate() {
                // SAFETY: as this function's safety contract and notes say: the CPU features were checked, o0 +
                // N ≤ outputs keeps every index inside its vector, and the masks keep loads and
                // stores inside the rows.
                let wj = _mm512_set1_epi32(unsafe { *w.add(j * groups + g) } as i32);
                a[0] = _mm512_dpbusd_epi32(a[0], xa, wj);
                a[1] = _mm512_dpbusd_epi32(a[1], xb, wj);
            }
        }
        for (j, a) in acc.iter().enumerate() {
            let o = o0 + j;
            // SAFETY: as this function's safety contract and notes say: the CPU features were checked, o0 + N ≤
            // outputs keeps every index inside its vector, and the masks keep loads and stores
            // inside the rows.
            let mult = _mm512_set1_ps(unsafe { *layer.multiplier.get_unchecked(o) });
            for (h, mask) in [m0, m1].into_iter().enumerate() {
                let at = o * layer.y_stride + p + 16 * h;
                // Same arithmetic as `Layer::store`. A zero mask loads and stores nothing.
                let mut v = _mm512_mul_ps(_mm512_cvtepi32_ps(a[h]), mult);
                if RES {
                    // SAFETY: as this function's safety contract and notes say: the CPU features were checked,
                    // o0 + N ≤ outputs keeps every index inside its vector, and the masks keep
                    // loads and stores inside the rows.
                    v = _mm512_add_ps(v, unsafe {
                        _mm512_maskz_loadu_ps(mask, residual.as_ptr().add(at))
                    });
                }
                if RELU {
                    v = _mm512_max_ps(v, _mm512_setzero_ps());
                }
                // SAFETY: as this function's safety contract and notes say: the CPU features were checked, o0 +
                // N ≤ outputs keeps every index inside its vector, and the masks keep loads and
                // stores inside the rows.
                unsafe { _mm512_mask_storeu_ps(out.as_mut_ptr().add(at), mask, v) };
            }
        }
        p += 32;
    }
}

/// Output channels per AVX2 register tile (two 8-pixel accumulators each).
const OUTS2: usize = 4;

/// # Safety
/// The CPU must have AVX2; `words` is `[groups][pixels]`, `out` (and `residual`)
/// `[outputs][pixels]`.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn product_avx2(
    layer: &Layer,
    words: &[u32],
    residual: Option<&[f32]>,
    relu: bool,
    out: &mut [f32],
) {
    let (outputs, pixels) = (layer.shape.outputs, layer.shape.pixels);
    assert!(
        words.len() >= layer.groups * pixels,
        "int8 pointwise scratch"
    );
    assert!(
        out.len() >= (outputs - 1) * layer.y_stride + pixels,
        "int8 pointwise output"
    );
    assert!(
        layer.paired || layer.pairs.len() == 2 * outputs * layer.groups,
        "int8 pointwise widened weights"
    );
    // SAFETY: the caller's contract, passed on.
    unsafe { with_store_variants!(outputs_avx2, layer, words, residual, relu, out) }
}

#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn outputs_avx2<const RES: bool, const RELU: bool>(
    layer: &Layer,
    words: &[u32],
    residual: &[f32],
    out: &mut [f32],
) {
    let outputs = layer.shape.outputs;
    assert!(
        !RES || residual.len() >= (outputs - 1) * layer.y_stride + layer.shape.pixels,
        "int8 pointwise residual"
    );
    // Pair-bounded weights (`Layer::paired`) take `vpmaddubsw`, the others the widened codes.
    let paired = layer.paired;
    let mut o = 0;
    while o + OUTS2 <= outputs {
        // SAFETY: as this function's safety contract and notes say: the CPU features were checked, o0 + N ≤
        // outputs keeps every index inside its vector, and the masks keep loads and stores inside
        // the rows.
        unsafe {
            if paired {
                tile_avx2::<true, OUTS2, RES, RELU>(layer, o, words, residual, out)
            } else {
                tile_avx2::<false, OUTS2, RES, RELU>(layer, o, words, residual, out)
            }
        };
        o += OUTS2;
    }
    while o < outputs {
        // SAFETY: as above, for one output.
        unsafe {
            if paired {
                tile_avx2::<true, 1, RES, RELU>(layer, o, words, residual, out)
            } else {
                tile_avx2::<false, 1, RES, RELU>(layer, o, words, residual, out)
            }
        };
        o += 1;
    }
}

/// Outputs `o0..o0 + N` over every pixel, 16 pixels per step (two registers, the tail
/// masked). Each input word holds four u8 codes. With `PAIRED` (the layer's weights bounded in
/// pairs, `Layer::paired`) `vpmaddubsw` multiplies the codes as they are by the output's weight
/// word (four i8) into two exact i16 pair sums per pixel and `vpmaddwd` by ones adds those into
/// the pixel's int32 — VNNI's `vpdpbusd` in three instructions, 32 multiply-adds. Otherwise
/// masking the word's even and odd bytes gives two words of 16-bit pairs (channels 0 and 2, 1
/// and 3), which `vpmaddwd` multiplies by the weights' pairs (`Layer::pairs`) into exact int32
/// sums: at most 255 · 128 · 2 per instruction, far from overflow.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2<const PAIRED: bool, const N: usize, const RES: bool, const RELU: bool>(
    layer: &Layer,
    o0: usize,
    words: &[u32],
    residual: &[f32],
    out: &mut [f32],
) {
    let pixels = layer.shape.pixels;
    let groups = layer.groups;
    let x = words.as_ptr();
    // SAFETY (whole function): o0 + N ≤ outputs (the caller's loops), so every weight pair
    // `((o0 + j)·groups + g)·2 + h`, correction and multiplier read is inside its vector;
    // the lane masks keep loads and stores inside the rows, whose lengths `product_avx2`
    // asserted (a masked-off lane is neither read nor written).
    // `pairs` is empty for pair-bounded weights, which read `words`.
    let w = if PAIRED {
        std::ptr::null()
    } else {
        // SAFETY: as this function's safety contract and notes say: o0 + N ≤ outputs keeps
        // every index inside `pairs` (made for every layer that is not `paired`).
        unsafe { layer.pairs.as_ptr().add(2 * o0 * groups) }
    };
    // SAFETY: as above: the weight words `(o0 + j)·groups + g`.
    let w4 = unsafe { layer.words.as_ptr().add(o0 * groups) };
    let even = _mm256_set1_epi32(0x00ff_00ff);
    let ones = _mm256_set1_epi16(1);
    let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let mut p = 0;
    while p < pixels {
        let left = (pixels - p).min(16) as i32;
        let m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(left), lane);
        let m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(left - 8), lane);
        let mut acc = [[_mm256_setzero_si256(); 2]; N];
        for (j, a) in acc.iter_mut().enumerate() {
            // SAFETY: as this function's safety contract and notes say: the CPU features were checked, o0 + N ≤
            // outputs keeps every index inside its vector, and the masks keep loads and stores
            // inside the rows.
            let corr = _mm256_set1_epi32(unsafe { *layer.corr_u8.get_unchecked(o0 + j) });
            *a = [corr; 2];
        }
        for g in 0..groups {
            // SAFETY: as this function's safety contract and notes say: the CPU features were checked, o0 + N ≤
            // outputs keeps every index inside its vector, and the masks keep loads and stores
            // inside the rows.
            let (xa, xb) = unsafe { load_step(x.add(g * pixels + p), left, [m0, m1]) };
            if PAIRED {
                for (j, a) in acc.iter_mut().enumerate() {
                    // SAFETY: (o0 + j)·groups + g < outputs·groups.
                    let wj = _mm256_set1_epi32(unsafe { *w4.add(j * groups + g) } as i32);
                    a[0] = _mm256_add_epi32(
                        a[0],
                        _mm256_madd_epi16(_mm256_maddubs_epi16(xa, wj), ones),
                    );
                    a[1] = _mm256_add_epi32(
                        a[1],
                        _mm256_madd_epi16(_mm256_maddubs_epi16(xb, wj), ones),
                    );
                }
                continue;
            }
            let (ea, oa) = (
                _mm256_and_si256(xa, even),
                _mm256_and_si256(_mm256_srli_epi32::<8>(xa), even),
            );
            let (eb, ob) = (
                _mm256_and_si256(xb, even),
                _mm256_and_si256(_mm256_srli_epi32::<8>(xb), even),
            );
            for (j, a) in acc.iter_mut().enumerate() {
                let at = 2 * (j * groups + g);
                // SAFETY: as this function's safety contract and notes say: the CPU features were checked, o0 +
                // N ≤ outputs keeps every index inside its vector, and the masks keep loads and
                // stores inside the rows.
                let (we, wo) = unsafe {
                    (
                        _mm256_set1_epi32(*w.add(at) as i32),
                        _mm256_set1_epi32(*w.add(at + 1) as i32),
                    )
                };
                a[0] = _mm256_add_epi32(
                    a[0],
                    _mm256_add_epi32(_mm256_madd_epi16(ea, we), _mm256_madd_epi16(oa, wo)),
                );
                a[1] = _mm256_add_epi32(
                    a[1],
                    _mm256_add_epi32(_mm256_madd_epi16(eb, we), _mm256_madd_epi16(ob, wo)),
                );
            }
        }
        for (j, a) in acc.iter().enumerate() {
            // SAFETY: o0 + j < outputs, the masks keep the row inside (as above).
            unsafe { store_avx2::<RES, RELU>(layer, o0 + j, p, a, [m0, m1], residual, out) };
        }
        p += 16;
    }
}

/// Stores output `o`'s two 8-pixel sums at pixel `p` (the lanes `masks` keep): `Layer::store`'s
/// arithmetic. Masked-off lanes touch no memory (the pointer may point past the row:
/// `wrapping_add`, never dereferenced there). `masks` are all lanes when 16 pixels are left.
///
/// # Safety
/// The CPU must have AVX2; `o` < outputs and the masks keep every lane inside the row.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn store_avx2<const RES: bool, const RELU: bool>(
    layer: &Layer,
    o: usize,
    p: usize,
    acc: &[__m256i; 2],
    masks: [__m256i; 2],
    residual: &[f32],
    out: &mut [f32],
) {
    // SAFETY: o < outputs (the caller's contract).
    let mult = _mm256_set1_ps(unsafe { *layer.multiplier.get_unchecked(o) });
    // A whole step (16 pixels) loads and stores plainly: masked stores are slow on some CPUs
    // (microcoded on AMD's Zen 2 and 3).
    let whole = p + 16 <= layer.shape.pixels;
    for (h, mask) in masks.into_iter().enumerate() {
        let at = o * layer.y_stride + p + 8 * h;
        let (res, dst) = (
            residual.as_ptr().wrapping_add(at),
            out.as_mut_ptr().wrapping_add(at),
        );
        let mut v = _mm256_mul_ps(_mm256_cvtepi32_ps(acc[h]), mult);
        if RES {
            // SAFETY: a whole step's 8 lanes are inside the residual's row, and the mask keeps
            // a short step's inside (the caller's contract).
            v = _mm256_add_ps(v, unsafe {
                if whole {
                    _mm256_loadu_ps(res)
                } else {
                    _mm256_maskload_ps(res, mask)
                }
            });
        }
        if RELU {
            v = _mm256_max_ps(v, _mm256_setzero_ps());
        }
        // SAFETY: as for the residual, in the output's row.
        unsafe {
            if whole {
                _mm256_storeu_ps(dst, v)
            } else {
                _mm256_maskstore_ps(dst, mask, v)
            }
        };
    }
}

/// A step's two registers of input words from `row`: plain loads when all 16 pixels are
/// `left`, masked ones (`masks`) otherwise.
///
/// # Safety
/// The CPU must have AVX2; `row` has `left` readable words (16 or fewer), the masks keep
/// `left` lanes.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn load_step(row: *const u32, left: i32, masks: [__m256i; 2]) -> (__m256i, __m256i) {
    // SAFETY: the caller's contract.
    unsafe {
        if left == 16 {
            (
                _mm256_loadu_si256(row.cast()),
                _mm256_loadu_si256(row.add(8).cast()),
            )
        } else {
            let row = row.cast::<i32>();
            (
                _mm256_maskload_epi32(row, masks[0]),
                _mm256_maskload_epi32(row.wrapping_add(8), masks[1]),
            )
        }
    }
}
