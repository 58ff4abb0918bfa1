//! The aarch64 products, on the input codes shifted by −128 (i8): NEON `sdot` (Armv8.2, 16
//! multiply-adds per instruction) and, for cores without it (Cortex-A72, A53), widening
//! multiplies (`smull`/`smlal`: i8 × i8 → i16) summed pairwise into i32 (`sadalp`). Both give
//! the exact int32 sums, so the same outputs.

use std::arch::aarch64::*;

use super::Layer;

/// `acc += Σ x.bytes[4i..4i+4] · w.bytes[4L..4L+4]` per lane `i` (`sdot` by element).
#[inline(always)]
unsafe fn sdot<const L: i32>(mut acc: int32x4_t, x: int8x16_t, w: int8x16_t) -> int32x4_t {
    // SAFETY: register-only instruction; the caller's function enables `dotprod`.
    unsafe {
        std::arch::asm!(
            "sdot {acc:v}.4s, {x:v}.16b, {w:v}.4b[{lane}]",
            acc = inout(vreg) acc,
            x = in(vreg) x,
            w = in(vreg_low16) w,
            lane = const L,
            options(pure, nomem, nostack, preserves_flags),
        )
    };
    acc
}

/// `smull2` (high halves, i8 × i8 → i16), kept as written: LLVM would otherwise extract the
/// high halves with `ext` first (one more instruction per input register).
#[inline(always)]
unsafe fn smull2(x: int8x16_t, w: int8x16_t) -> int16x8_t {
    let out: int16x8_t;
    // SAFETY: register-only NEON instruction.
    unsafe {
        std::arch::asm!(
            "smull2 {out:v}.8h, {x:v}.16b, {w:v}.16b",
            out = lateout(vreg) out,
            x = in(vreg) x,
            w = in(vreg) w,
            options(pure, nomem, nostack, preserves_flags),
        )
    };
    out
}

/// `smlal2`: `acc += x.high × w.high` (i8 × i8 → i16), as [`smull2`].
#[inline(always)]
unsafe fn smlal2(mut acc: int16x8_t, x: int8x16_t, w: int8x16_t) -> int16x8_t {
    // SAFETY: register-only NEON instruction.
    unsafe {
        std::arch::asm!(
            "smlal2 {acc:v}.8h, {x:v}.16b, {w:v}.16b",
            acc = inout(vreg) acc,
            x = in(vreg) x,
            w = in(vreg) w,
            options(pure, nomem, nostack, preserves_flags),
        )
    };
    acc
}

/// Pixels per register tile (two vectors of four words).
const STEP: usize = 8;

/// # Safety
/// The CPU must have the dot-product extension; `words` is `[groups][pixels]` of i8 codes
/// (u8 code − 128), `out` (and `residual`) `[outputs][pixels]`.
#[target_feature(enable = "neon,dotprod")]
pub(super) unsafe fn product(
    layer: &Layer,
    words: &[u32],
    residual: Option<&[f32]>,
    relu: bool,
    out: &mut [f32],
) {
    // SAFETY: the caller's contract, passed on.
    unsafe { with_store_variants!(outputs_of, layer, words, residual, relu, out) }
}

/// # Safety
/// `words` is `[groups][pixels]` of i8 codes (u8 code − 128), `out` (and `residual`)
/// `[outputs][pixels]`. (NEON is on every aarch64 CPU.)
#[target_feature(enable = "neon")]
pub(super) unsafe fn product_widen(
    layer: &Layer,
    words: &[u32],
    residual: Option<&[f32]>,
    relu: bool,
    out: &mut [f32],
) {
    // SAFETY: the caller's contract, passed on.
    unsafe { with_store_variants!(outputs_widen, layer, words, residual, relu, out) }
}

#[inline(always)]
unsafe fn outputs_of<const RES: bool, const RELU: bool>(
    layer: &Layer,
    words: &[u32],
    residual: &[f32],
    out: &mut [f32],
) {
    let outputs = layer.shape.outputs;
    let mut o = 0;
    while o + 8 <= outputs {
        // SAFETY: as this function's safety contract and notes say: the CPU features were checked and every
        // index is inside its vector.
        unsafe { tile::<8, false, RES, RELU>(layer, o, words, residual, out) };
        o += 8;
    }
    while o < outputs {
        // SAFETY: as this function's safety contract and notes say: the CPU features were checked and every
        // index is inside its vector.
        unsafe { tile::<4, false, RES, RELU>(layer, o, words, residual, out) };
        o += 4;
    }
}

/// Four outputs per tile: their 16 half-sum accumulators, the inputs of two groups and the
/// weights fill the 32 registers.
#[inline(always)]
unsafe fn outputs_widen<const RES: bool, const RELU: bool>(
    layer: &Layer,
    words: &[u32],
    residual: &[f32],
    out: &mut [f32],
) {
    for o in (0..layer.shape.outputs).step_by(4) {
        // SAFETY: as this function's safety contract and notes say: the CPU features were checked and every
        // index is inside its vector.
        unsafe { tile::<4, true, RES, RELU>(layer, o, words, residual, out) };
    }
}

/// Words `[p, p + 4)` of `row` (fewer at the end of the row, the rest zero).
#[inline(always)]
unsafe fn load_words(row: &[u32], p: usize) -> int8x16_t {
    let mut lanes = [0u32; 4];
    for (lane, &w) in lanes.iter_mut().zip(row.iter().skip(p)) {
        *lane = w;
    }
    // SAFETY: as this function's safety contract and notes say: the CPU features were checked and every index is
    // inside its vector.
    unsafe { vreinterpretq_s8_u32(vld1q_u32(lanes.as_ptr())) }
}

/// The exact int32 sums of outputs `o0..o0 + N` (`N` = 4 or 8, `o0` a multiple of 4) at
/// pixels `p..p + 8`, each started from its correction (bias − (z_x − 128)·Σw; 0 past the
/// layer's outputs, whose weights are zero). `load(g, p)` reads words `p..p + 4` of row `g`.
#[inline(always)]
unsafe fn sums<const N: usize>(
    layer: &Layer,
    o0: usize,
    p: usize,
    load: impl Fn(usize, usize) -> int8x16_t,
) -> [[int32x4_t; 2]; N] {
    let groups = layer.groups;
    // SAFETY (whole function): `words_by4` holds 4 words per (block of 4 outputs, group),
    // its blocks padded to a multiple of 4 outputs; `N == 8` reads blocks o0/4 and o0/4 + 1.
    // SAFETY: as this function's safety contract and notes say: the CPU features were checked and every index is
    // inside its vector.
    let blocks = unsafe { layer.words_by4.as_ptr().add(o0 / 4 * groups * 4) };
    // SAFETY: as this function's safety contract and notes say: the CPU features were checked and every index is
    // inside its vector.
    let mut acc = [[unsafe { vdupq_n_s32(0) }; 2]; N];
    for (j, a) in acc.iter_mut().enumerate() {
        let corr = layer.corr_i8.get(o0 + j).copied().unwrap_or(0);
        // SAFETY: as this function's safety contract and notes say: the CPU features were checked and every
        // index is inside its vector.
        *a = [unsafe { vdupq_n_s32(corr) }; 2];
    }
    for g in 0..groups {
        let (xa, xb) = (load(g, p), load(g, p + 4));
        // SAFETY: as this function's safety contract and notes say: the CPU features were checked and every
        // index is inside its vector.
        let w0 = unsafe { vreinterpretq_s8_u32(vld1q_u32(blocks.add(g * 4))) };
        let w1 = if N == 8 {
            // SAFETY: as this function's safety contract and notes say: the CPU features were checked and every
            // index is inside its vector.
            unsafe { vreinterpretq_s8_u32(vld1q_u32(blocks.add((groups + g) * 4))) }
        } else {
            w0
        };
        macro_rules! lane {
            ($j:literal, $w:ident, $l:literal) => {
                if $j < N {
                    // SAFETY: as this function's safety contract and notes say: the CPU features were checked
                    // and every index is inside its vector.
                    acc[$j][0] = unsafe { sdot::<$l>(acc[$j][0], xa, $w) };
                    // SAFETY: as this function's safety contract and notes say: the CPU features were checked
                    // and every index is inside its vector.
                    acc[$j][1] = unsafe { sdot::<$l>(acc[$j][1], xb, $w) };
                }
            };
        }
        lane!(0, w0, 0);
        lane!(1, w0, 1);
        lane!(2, w0, 2);
        lane!(3, w0, 3);
        lane!(4, w1, 0);
        lane!(5, w1, 1);
        lane!(6, w1, 2);
        lane!(7, w1, 3);
    }
    acc
}

/// [`sums`] without `sdot`, four outputs (`N` = 4). Per output, `i8 × i8 → i16` products of
/// two pixels' words by the output's word repeated (`smull`; `smlal` adds the next group's
/// when the weights are narrow, see `Layer::narrow`), added pairwise into i32 lanes
/// (`sadalp`): each lane holds half of a pixel's sum (channels 0–1 or 2–3 of every group), and
/// one pairwise add at the end (`addp`) completes them.
#[inline(always)]
unsafe fn sums_widen<const N: usize>(
    layer: &Layer,
    o0: usize,
    p: usize,
    load: impl Fn(usize, usize) -> int8x16_t,
) -> [[int32x4_t; 2]; N] {
    assert_eq!(N, 4, "the widening product runs four outputs at a time");
    let groups = layer.groups;
    // SAFETY (whole function): `words_by4` holds 4 words per (block of 4 outputs, group),
    // its blocks padded to a multiple of 4 outputs; block o0/4 is read.
    // SAFETY: as this function's safety contract and notes say: the CPU features were checked and every index is
    // inside its vector.
    let block = unsafe { layer.words_by4.as_ptr().add(o0 / 4 * groups * 4) };
    // Group `g`'s four weight words (one load), each repeated across a register (`dup`).
    // SAFETY: as this function's safety contract and notes say: the CPU features were checked and every index is
    // inside its vector.
    let weights = |g: usize| unsafe {
        let w = vld1q_u32(block.add(g * 4));
        [
            vreinterpretq_s8_u32(vdupq_laneq_u32::<0>(w)),
            vreinterpretq_s8_u32(vdupq_laneq_u32::<1>(w)),
            vreinterpretq_s8_u32(vdupq_laneq_u32::<2>(w)),
            vreinterpretq_s8_u32(vdupq_laneq_u32::<3>(w)),
        ]
    };
    // `half[j]`: pixels p..p+2, p+2..p+4, p+4..p+6, p+6..p+8, two half sums each.
    // SAFETY: as this function's safety contract and notes say: the CPU features were checked and every index is
    // inside its vector.
    let mut half = [[unsafe { vdupq_n_s32(0) }; 4]; N];
    let mut g = 0;
    if layer.narrow {
        while g + 2 <= groups {
            let (xa0, xb0) = (load(g, p), load(g, p + 4));
            let (xa1, xb1) = (load(g + 1, p), load(g + 1, p + 4));
            let (ws0, ws1) = (weights(g), weights(g + 1));
            for (j, h) in half.iter_mut().enumerate() {
                let (w0, w1) = (ws0[j], ws1[j]);
                // SAFETY: register-only NEON instructions.
                unsafe {
                    let (l0, l1) = (vget_low_s8(w0), vget_low_s8(w1));
                    let lo = |x0: int8x16_t, x1: int8x16_t| {
                        vmlal_s8(vmull_s8(vget_low_s8(x0), l0), vget_low_s8(x1), l1)
                    };
                    let hi = |x0, x1| smlal2(smull2(x0, w0), x1, w1);
                    h[0] = vpadalq_s16(h[0], lo(xa0, xa1));
                    h[1] = vpadalq_s16(h[1], hi(xa0, xa1));
                    h[2] = vpadalq_s16(h[2], lo(xb0, xb1));
                    h[3] = vpadalq_s16(h[3], hi(xb0, xb1));
                }
            }
            g += 2;
        }
    }
    while g < groups {
        let (xa, xb) = (load(g, p), load(g, p + 4));
        let ws = weights(g);
        for (j, h) in half.iter_mut().enumerate() {
            let w = ws[j];
            // SAFETY: register-only NEON instructions.
            unsafe {
                let l = vget_low_s8(w);
                h[0] = vpadalq_s16(h[0], vmull_s8(vget_low_s8(xa), l));
                h[1] = vpadalq_s16(h[1], smull2(xa, w));
                h[2] = vpadalq_s16(h[2], vmull_s8(vget_low_s8(xb), l));
                h[3] = vpadalq_s16(h[3], smull2(xb, w));
            }
        }
        g += 1;
    }
    // SAFETY: as this function's safety contract and notes say: the CPU features were checked and every index is
    // inside its vector.
    let mut acc = [[unsafe { vdupq_n_s32(0) }; 2]; N];
    for (j, (a, h)) in acc.iter_mut().zip(&half).enumerate() {
        // SAFETY: as this function's safety contract and notes say: the CPU features were checked and every
        // index is inside its vector.
        let corr = unsafe { vdupq_n_s32(layer.corr_i8.get(o0 + j).copied().unwrap_or(0)) };
        // SAFETY: register-only NEON instructions.
        *a = unsafe {
            [
                vaddq_s32(vpaddq_s32(h[0], h[1]), corr),
                vaddq_s32(vpaddq_s32(h[2], h[3]), corr),
            ]
        };
    }
    acc
}

/// `N` outputs from `o0` over every pixel: whole 8-pixel tiles stored straight from the
/// registers, then the row's tail (and a block of outputs past the layer's) value by value.
/// The sums of [`sums_widen`] if `WIDE`, else of `sdot` ([`sums`]).
#[inline(always)]
unsafe fn sums_by<const N: usize, const WIDE: bool>(
    layer: &Layer,
    o0: usize,
    p: usize,
    load: impl Fn(usize, usize) -> int8x16_t,
) -> [[int32x4_t; 2]; N] {
    // SAFETY: the caller's contract, passed on.
    unsafe {
        if WIDE {
            sums_widen::<N>(layer, o0, p, load)
        } else {
            sums::<N>(layer, o0, p, load)
        }
    }
}

/// `WIDE`: sums by [`sums_widen`], else by `sdot` ([`sums`]).
#[inline(always)]
unsafe fn tile<const N: usize, const WIDE: bool, const RES: bool, const RELU: bool>(
    layer: &Layer,
    o0: usize,
    words: &[u32],
    residual: &[f32],
    out: &mut [f32],
) {
    let pixels = layer.shape.pixels;
    let outputs = layer.shape.outputs;
    let whole = if o0 + N <= outputs {
        pixels / STEP * STEP
    } else {
        0
    };
    assert!(
        words.len() >= layer.groups * pixels,
        "int8 pointwise scratch"
    );
    let needed = (outputs - 1) * layer.y_stride + pixels;
    assert!(out.len() >= needed && (!RES || residual.len() >= needed));
    // SAFETY: a whole tile's loads stay inside its rows (`p + 8 ≤ pixels`; length asserted).
    let direct = |g: usize, p: usize| unsafe {
        vreinterpretq_s8_u32(vld1q_u32(words.as_ptr().add(g * pixels + p)))
    };
    let mut p = 0;
    while p < whole {
        // SAFETY: as this function's safety contract and notes say: the CPU features were checked and every
        // index is inside its vector.
        let acc = unsafe { sums_by::<N, WIDE>(layer, o0, p, direct) };
        for (j, a) in acc.iter().enumerate() {
            let o = o0 + j;
            // SAFETY: `o < outputs` for a whole tile.
            let mult = unsafe { vdupq_n_f32(*layer.multiplier.get_unchecked(o)) };
            for (h, &sum) in a.iter().enumerate() {
                let at = o * layer.y_stride + p + 4 * h;
                // Same arithmetic as `Layer::store`, four lanes at once.
                // SAFETY: four values from `at` are inside row `o` (`p + 8 ≤ pixels`), and
                // the rows inside `out` and `residual` (lengths asserted).
                unsafe {
                    let mut v = vmulq_f32(vcvtq_f32_s32(sum), mult);
                    if RES {
                        v = vaddq_f32(v, vld1q_f32(residual.as_ptr().add(at)));
                    }
                    if RELU {
                        v = vmaxq_f32(v, vdupq_n_f32(0.0));
                    }
                    vst1q_f32(out.as_mut_ptr().add(at), v);
                }
            }
        }
        p += STEP;
    }
    while p < pixels {
        let row = |g: usize| &words[g * pixels..][..pixels];
        // SAFETY: as this function's safety contract and notes say: the CPU features were checked and every
        // index is inside its vector.
        let tail = |g: usize, p: usize| unsafe { load_words(row(g), p) };
        // SAFETY: as this function's safety contract and notes say: the CPU features were checked and every
        // index is inside its vector.
        let acc = unsafe { sums_by::<N, WIDE>(layer, o0, p, tail) };
        for (j, a) in acc.iter().enumerate().take(outputs.saturating_sub(o0)) {
            let o = o0 + j;
            let mut lanes = [0i32; STEP];
            // SAFETY: two vectors of four into eight lanes.
            unsafe {
                vst1q_s32(lanes.as_mut_ptr(), a[0]);
                vst1q_s32(lanes.as_mut_ptr().add(4), a[1]);
            }
            for (i, &sum) in lanes.iter().enumerate().take(pixels - p) {
                let at = o * layer.y_stride + p + i;
                let r = RES.then(|| residual[at]);
                out[at] = layer.store(sum as f32, o, r, RELU);
            }
        }
        p += STEP;
    }
}
