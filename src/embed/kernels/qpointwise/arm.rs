//! The aarch64 products, on the input codes shifted by −128 (i8): NEON `sdot` (Armv8.2, 16
//! multiply-adds per instruction) and, for cores without it (Cortex-A72, A53), widening
//! multiplies (`smull`/`smlal`: i8 × i8 → i16) summed pairwise into i32 (`sadalp`). Both give
//! the exact int32 sums, so the same outputs.

use std::arch::aarch64::*;

use super::Layer;

mod widen;
use widen::{sums_widen, whole_tiles};

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

/// The exact int32 sums of outputs `o0..o0 + N` (`N` = 4 or 8, `o0` a multiple of 4) at a
/// tile's 8 pixels, each started from its correction (bias − (z_x − 128)·Σw; 0 past the
/// layer's outputs, whose weights are zero; `corr`). `tile`: the tile's words, row 0's at
/// `tile.x`, rows `tile.pixels` words apart (eight outputs: [`sdot_groups`] reads them).
#[inline(always)]
unsafe fn sums<const N: usize>(
    layer: &Layer,
    o0: usize,
    corr: &[i32; N],
    tile: TileWords,
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
    for (a, &corr) in acc.iter_mut().zip(corr) {
        // SAFETY: register-only.
        *a = [unsafe { vdupq_n_s32(corr) }; 2];
    }
    if N == 8 {
        let eight: &mut [[int32x4_t; 2]; 8] = (&mut acc[..]).try_into().expect("eight outputs");
        // SAFETY: blocks o0/4 and o0/4 + 1 hold four words per group (see above); the rows
        // of `tile` (the caller's contract).
        unsafe {
            sdot_groups(
                eight,
                blocks,
                blocks.add(groups * 4),
                tile.x,
                tile.pixels,
                groups,
            )
        };
        return acc;
    }
    // Four outputs (a layer's last block).
    for g in 0..groups {
        // SAFETY: inside the rows (the caller's contract).
        let (xa, xb) = unsafe { (tile.load(g, 0), tile.load(g, 4)) };
        // SAFETY: as this function's safety contract and notes say: the CPU features were checked and every
        // index is inside its vector.
        let w = unsafe { vreinterpretq_s8_u32(vld1q_u32(blocks.add(g * 4))) };
        macro_rules! lane {
            ($j:literal, $l:literal) => {
                // SAFETY: register-only (the caller's function enables `dotprod`).
                acc[$j] = unsafe { [sdot::<$l>(acc[$j][0], xa, w), sdot::<$l>(acc[$j][1], xb, w)] };
            };
        }
        lane!(0, 0);
        lane!(1, 1);
        lane!(2, 2);
        lane!(3, 3);
    }
    acc
}

/// Two `sdot`s of [`sdot_groups`]: one output's weights (lane `$l` of `$w`) times the tile's
/// two vectors of words, into its accumulators `$a0`, `$a1`.
#[rustfmt::skip]
macro_rules! sdot_output {
    ($a0:literal, $a1:literal, $w:literal, $l:literal) => {
        concat!(
            "sdot {", $a0, ":v}.4s, v30.16b, {", $w, ":v}.4b[", $l, "]\n",
            "sdot {", $a1, ":v}.4s, v31.16b, {", $w, ":v}.4b[", $l, "]\n",
        )
    };
}

/// The group loop of [`sums`] for eight outputs as one `asm!` block: per group the tile's
/// words (`ld1` of two registers, then a row on), the two blocks' weight words (post-
/// incremented loads) and 16 `sdot`s, 21 instructions with the loop's two, where LLVM's loop
/// took 22 (a pointer step per load).
///
/// # Safety
/// The CPU has the dot-product extension; `groups ≥ 1`; `w0` and `w1` valid for reading
/// `4 · groups` words; `x + g · pixels` valid for reading 8 words for every group g.
#[inline(always)]
unsafe fn sdot_groups(
    acc: &mut [[int32x4_t; 2]; 8],
    w0: *const u32,
    w1: *const u32,
    x: *const u32,
    pixels: usize,
    groups: usize,
) {
    assert!(groups >= 1, "at least one group");
    // SAFETY: reads what the caller vouches for; the rest is register-only.
    unsafe {
        std::arch::asm!(
            "2:",
            "ld1 {{v30.16b, v31.16b}}, [{x}], {step}",
            "ldr {wa:q}, [{w0}], #16",
            "ldr {wb:q}, [{w1}], #16",
            sdot_output!("a00", "a01", "wa", "0"),
            sdot_output!("a10", "a11", "wa", "1"),
            sdot_output!("a20", "a21", "wa", "2"),
            sdot_output!("a30", "a31", "wa", "3"),
            sdot_output!("a40", "a41", "wb", "0"),
            sdot_output!("a50", "a51", "wb", "1"),
            sdot_output!("a60", "a61", "wb", "2"),
            sdot_output!("a70", "a71", "wb", "3"),
            "subs {n}, {n}, #1",
            "b.ne 2b",
            x = inout(reg) x => _,
            step = in(reg) pixels * size_of::<u32>(),
            w0 = inout(reg) w0 => _,
            w1 = inout(reg) w1 => _,
            n = inout(reg) groups => _,
            wa = out(vreg_low16) _,
            wb = out(vreg_low16) _,
            a00 = inout(vreg) acc[0][0],
            a01 = inout(vreg) acc[0][1],
            a10 = inout(vreg) acc[1][0],
            a11 = inout(vreg) acc[1][1],
            a20 = inout(vreg) acc[2][0],
            a21 = inout(vreg) acc[2][1],
            a30 = inout(vreg) acc[3][0],
            a31 = inout(vreg) acc[3][1],
            a40 = inout(vreg) acc[4][0],
            a41 = inout(vreg) acc[4][1],
            a50 = inout(vreg) acc[5][0],
            a51 = inout(vreg) acc[5][1],
            a60 = inout(vreg) acc[6][0],
            a61 = inout(vreg) acc[6][1],
            a70 = inout(vreg) acc[7][0],
            a71 = inout(vreg) acc[7][1],
            out("v30") _,
            out("v31") _,
            options(pure, readonly, nostack),
        )
    };
}

/// The sums of outputs `o0..o0 + N` at the tile whose words in row 0 start at `x` (rows
/// `pixels` words apart): by [`sums_widen`] if `WIDE`, else by `sdot` ([`sums`]).
///
/// # Safety
/// 8 words readable from `x` in every row.
#[inline(always)]
unsafe fn sums_by<const N: usize, const WIDE: bool>(
    layer: &Layer,
    o0: usize,
    corr: &[i32; N],
    x: *const u32,
    pixels: usize,
) -> [[int32x4_t; 2]; N] {
    let tile = TileWords { x, pixels };
    // SAFETY: the caller's contract, passed on.
    unsafe {
        if WIDE {
            sums_widen::<N>(layer, o0, corr, tile)
        } else {
            sums::<N>(layer, o0, corr, tile)
        }
    }
}

/// A tile's input words: row 0's from `x`, rows `pixels` words apart.
#[derive(Clone, Copy)]
struct TileWords {
    x: *const u32,
    pixels: usize,
}

impl TileWords {
    /// Words `q..q + 4` of row `g`, as 16 i8 codes.
    ///
    /// # Safety
    /// The four words are readable.
    #[inline(always)]
    unsafe fn load(self, g: usize, q: usize) -> int8x16_t {
        // SAFETY: the caller's contract.
        unsafe { vreinterpretq_s8_u32(vld1q_u32(self.x.add(g * self.pixels + q))) }
    }
}

/// `N` outputs from `o0` over every pixel, 8 pixels a tile: whole tiles stored straight from
/// the registers, a row's last partial tile (and a block of outputs past the layer's) value
/// by value. The partial tile's loads run on past the row: into the next row, or the last
/// row's into the slack after it ([`WORDS_SLACK`](super::WORDS_SLACK)); those lanes' sums are
/// not stored. `WIDE`: sums by [`sums_widen`], else by `sdot` ([`sums`]).
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
        words.len() >= layer.scratch_words(),
        "int8 pointwise scratch"
    );
    let needed = (outputs - 1) * layer.y_stride + pixels;
    assert!(out.len() >= needed && (!RES || residual.len() >= needed));
    // Per output: its correction (0 past the layer's outputs), its multiplier and where its
    // row starts, read once for every tile.
    let corr: [i32; N] = std::array::from_fn(|j| layer.corr_i8.get(o0 + j).copied().unwrap_or(0));
    let mult: [f32; N] =
        std::array::from_fn(|j| layer.multiplier.get(o0 + j).copied().unwrap_or(0.0));
    let rows: [usize; N] = std::array::from_fn(|j| (o0 + j) * layer.y_stride);
    let mut p = 0;
    if WIDE && N == 4 && whole > 0 && layer.narrow && layer.groups.is_multiple_of(2) {
        let block = layer.words_pairs[o0 / 4 * layer.groups * 4..].as_ptr();
        // SAFETY: `words_pairs` holds 4 words per group of this block; the tiles' words are
        // inside the rows (`whole ≤ pixels`) and `whole` floats of the four outputs' rows (and
        // residual rows) inside `out` (`residual`) (lengths asserted; `o0 + 4 ≤ outputs`).
        unsafe {
            whole_tiles::<RES, RELU>(
                block,
                words.as_ptr(),
                pixels,
                layer.groups / 2,
                whole / STEP,
                corr[..4].try_into().expect("four outputs"),
                mult[..4].try_into().expect("four outputs"),
                std::array::from_fn(|j| out.as_mut_ptr().add(rows[j])),
                std::array::from_fn(|j| {
                    if RES {
                        residual.as_ptr().add(rows[j])
                    } else {
                        std::ptr::null()
                    }
                }),
            )
        };
        p = whole;
    }
    while p < whole {
        // SAFETY: inside the rows (`p + 8 ≤ pixels`; lengths asserted).
        let acc = unsafe { sums_by::<N, WIDE>(layer, o0, &corr, words.as_ptr().add(p), pixels) };
        for ((a, &m), &row) in acc.iter().zip(&mult).zip(&rows) {
            let at = row + p;
            // Same arithmetic as `Layer::store`, eight lanes at once: the residual's two
            // vectors loaded, then the output's two stored, by one instruction each (stores
            // between the loads kept LLVM from pairing either).
            // SAFETY: eight values from `at` are inside the output's row (`p + 8 ≤ pixels`,
            // `o0 + N ≤ outputs` for whole tiles), and the rows inside `out` and `residual`
            // (lengths asserted); the rest is register-only.
            unsafe {
                let m = vdupq_n_f32(m);
                let mut v = float32x4x2_t(
                    vmulq_f32(vcvtq_f32_s32(a[0]), m),
                    vmulq_f32(vcvtq_f32_s32(a[1]), m),
                );
                if RES {
                    let r = vld1q_f32_x2(residual.as_ptr().add(at));
                    v = float32x4x2_t(vaddq_f32(v.0, r.0), vaddq_f32(v.1, r.1));
                }
                if RELU {
                    let zero = vdupq_n_f32(0.0);
                    v = float32x4x2_t(vmaxq_f32(v.0, zero), vmaxq_f32(v.1, zero));
                }
                vst1q_f32_x2(out.as_mut_ptr().add(at), v);
            }
        }
        p += STEP;
    }
    // The row's last partial tile, or every tile of a block past the layer's outputs.
    while p < pixels {
        // SAFETY: 8 words from `p` end at most 7 words past the row (`p < pixels`), inside
        // the next row or, for the last, the slack (length asserted).
        let acc = unsafe { sums_by::<N, WIDE>(layer, o0, &corr, words.as_ptr().add(p), pixels) };
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
