//! The widening product for aarch64 cores without `sdot` (Cortex-A72, A53): per output,
//! `i8 × i8 → i16` products of the codes by the weights (`smull`/`smlal`), added pairwise into
//! int32 lanes (`sadalp`), finished by one pairwise add (`addp`): the exact sums `sdot` gives.
//! Where the weights are narrow and the groups come in pairs, whole tiles run in one `asm!`
//! loop ([`whole_tiles`]).

use std::arch::aarch64::*;

use super::super::Layer;
use super::TileWords;

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

/// Four words from `p`, each repeated across a register (`ld4r`, kept as written: LLVM turns
/// `vld4q_dup_u32` back into a load and four `dup`s). `ld4r` writes four consecutive
/// registers, hence fixed ones (v16–v19).
///
/// # Safety
/// `p` valid for reading four words.
#[inline(always)]
unsafe fn ld4r(p: *const u32) -> [int8x16_t; 4] {
    let (a, b, c, d): (int8x16_t, int8x16_t, int8x16_t, int8x16_t);
    // SAFETY: reads 16 bytes from `p` (the caller's contract).
    unsafe {
        std::arch::asm!(
            "ld4r {{v16.4s, v17.4s, v18.4s, v19.4s}}, [{p}]",
            p = in(reg) p,
            out("v16") a,
            out("v17") b,
            out("v18") c,
            out("v19") d,
            options(pure, readonly, nostack, preserves_flags),
        )
    };
    [a, b, c, d]
}

/// `addp` (pairwise sums of `a` then of `b`), kept as written: LLVM splits `vpaddq_s32`
/// followed by an add into `uzp1`, `uzp2` and two adds.
#[inline(always)]
unsafe fn addp(a: int32x4_t, b: int32x4_t) -> int32x4_t {
    let out: int32x4_t;
    // SAFETY: register-only NEON instruction.
    unsafe {
        std::arch::asm!(
            "addp {out:v}.4s, {a:v}.4s, {b:v}.4s",
            out = lateout(vreg) out,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags),
        )
    };
    out
}

/// [`sums`](super::sums) without `sdot`, four outputs (`N` = 4). Per output, `i8 × i8 → i16` products of
/// two pixels' words by the output's word repeated (`smull`; `smlal` adds the next group's
/// when the weights are narrow, see `Layer::narrow`), added pairwise into i32 lanes
/// (`sadalp`): each lane holds half of a pixel's sum (channels 0–1 or 2–3 of every group), and
/// one pairwise add at the end (`addp`) completes them, with the correction. `tile`: the
/// tile's words, as in [`sums`](super::sums).
#[inline(always)]
pub(super) unsafe fn sums_widen<const N: usize>(
    layer: &Layer,
    o0: usize,
    corr: &[i32; N],
    tile: TileWords,
) -> [[int32x4_t; 2]; N] {
    assert_eq!(N, 4, "the widening product runs four outputs at a time");
    let groups = layer.groups;
    // SAFETY (whole function): `words_by4` (and `words_pairs` for narrow weights) hold 4 words
    // per (block of 4 outputs, group), their blocks padded to a multiple of 4 outputs; block
    // o0/4 is read.
    let layout = if layer.narrow {
        &layer.words_pairs
    } else {
        &layer.words_by4
    };
    // SAFETY: as this function's safety contract and notes say: the CPU features were checked and every index is
    // inside its vector.
    let block = unsafe { layout.as_ptr().add(o0 / 4 * groups * 4) };
    // `half[j]`: pixels p..p+2, p+2..p+4, p+4..p+6, p+6..p+8, two half sums each.
    // SAFETY: as this function's safety contract and notes say: the CPU features were checked and every index is
    // inside its vector.
    let mut half = [[unsafe { vdupq_n_s32(0) }; 4]; N];
    let mut g = 0;
    if layer.narrow && groups >= 2 {
        // SAFETY: `block` holds the weights of every pair of groups of these outputs; the
        // caller's contract: 8 words readable from `x` in every row.
        let pairs = unsafe { group_pairs(block, tile.x, tile.pixels, groups / 2) };
        for (h, pair) in half.iter_mut().zip(pairs) {
            *h = pair;
        }
        g = groups / 2 * 2;
    }
    while g < groups {
        // SAFETY: as above.
        unsafe {
            if g == 0 {
                one_group::<N, true>(&mut half, block, g, tile)
            } else {
                one_group::<N, false>(&mut half, block, g, tile)
            }
        };
        g += 1;
    }
    // SAFETY: as this function's safety contract and notes say: the CPU features were checked and every index is
    // inside its vector.
    let mut acc = [[unsafe { vdupq_n_s32(0) }; 2]; N];
    for ((a, h), &corr) in acc.iter_mut().zip(&half).zip(corr) {
        // SAFETY: register-only.
        let corr = unsafe { vdupq_n_s32(corr) };
        // SAFETY: register-only NEON instructions.
        *a = unsafe {
            [
                vaddq_s32(addp(h[0], h[1]), corr),
                vaddq_s32(addp(h[2], h[3]), corr),
            ]
        };
    }
    acc
}

/// One group `g` of [`sums_widen`] (the last of an odd number with narrow weights, or every
/// group without): the four outputs' weights (`block`) times the pixels' words, added
/// pairwise into `half` — or, if `FIRST`, starting it (`saddlp`, where zeroed sums and
/// `sadalp` took 16 more instructions per tile).
///
/// # Safety
/// `block` holds four words per group up to group `g`; the 8 words of row `g` from `tile` are readable.
#[inline(always)]
unsafe fn one_group<const N: usize, const FIRST: bool>(
    half: &mut [[int32x4_t; 4]; N],
    block: *const u32,
    g: usize,
    tile: TileWords,
) {
    // SAFETY: inside the rows (the caller's contract).
    let (xa, xb) = unsafe { (tile.load(g, 0), tile.load(g, 4)) };
    // SAFETY: the caller's contract: four words of group `g`.
    let ws = unsafe { ld4r(block.add(g * 4)) };
    for (h, &w) in half.iter_mut().zip(&ws) {
        // SAFETY: register-only NEON instructions.
        unsafe {
            let l = vget_low_s8(w);
            let products = [
                vmull_s8(vget_low_s8(xa), l),
                smull2(xa, w),
                vmull_s8(vget_low_s8(xb), l),
                smull2(xb, w),
            ];
            for (h, p) in h.iter_mut().zip(products) {
                *h = if FIRST {
                    vpaddlq_s16(p)
                } else {
                    vpadalq_s16(*h, p)
                };
            }
        }
    }
}

/// Twelve instructions of [`group_pairs`]: output weights `$w0` (group g) and `$w1` (g + 1)
/// times the tile's words of both groups (v22, v23: pixels 0–3 and 4–7 of group g; v24, v25:
/// of group g + 1), added pairwise into half sums `$h0`–`$h3` (`$op`: `sadalp`), or starting
/// them (`saddlp`). The half sums are register text: an operand (`{h00:v}`) or a register
/// (`v0`).
#[rustfmt::skip]
macro_rules! widen_output {
    ($op:literal, $w0:literal, $w1:literal, $h0:literal, $h1:literal, $h2:literal, $h3:literal) => {
        concat!(
            "smull v20.8h, v22.8b, ", $w0, ".8b\n",
            "smlal v20.8h, v24.8b, ", $w1, ".8b\n",
            $op, " ", $h0, ".4s, v20.8h\n",
            "smull2 v21.8h, v22.16b, ", $w0, ".16b\n",
            "smlal2 v21.8h, v24.16b, ", $w1, ".16b\n",
            $op, " ", $h1, ".4s, v21.8h\n",
            "smull v20.8h, v23.8b, ", $w0, ".8b\n",
            "smlal v20.8h, v25.8b, ", $w1, ".8b\n",
            $op, " ", $h2, ".4s, v20.8h\n",
            "smull2 v21.8h, v23.16b, ", $w0, ".16b\n",
            "smlal2 v21.8h, v25.16b, ", $w1, ".16b\n",
            $op, " ", $h3, ".4s, v21.8h\n",
        )
    };
}

/// One pair of groups of [`group_pairs`]: the tile's words of both groups (`ld1`, each row
/// pointer then moved two rows on), two `ld4r` of the pair's weights (`words_pairs`: outputs
/// 0–1, then 2–3), 32 widening multiplies (two products per i16 lane) and 16 pairwise adds
/// (`$op`), into the half sums named by `$h` (output j's four from the 4j-th).
#[rustfmt::skip]
macro_rules! pair_step {
    ($op:literal, [$h00:literal, $h01:literal, $h02:literal, $h03:literal,
                   $h10:literal, $h11:literal, $h12:literal, $h13:literal,
                   $h20:literal, $h21:literal, $h22:literal, $h23:literal,
                   $h30:literal, $h31:literal, $h32:literal, $h33:literal]) => {
        concat!(
            "ld1 {{v22.16b, v23.16b}}, [{x0}], {step}\n",
            "ld1 {{v24.16b, v25.16b}}, [{x1}], {step}\n",
            "ld4r {{v16.4s, v17.4s, v18.4s, v19.4s}}, [{w}], #16\n",
            widen_output!($op, "v16", "v17", $h00, $h01, $h02, $h03),
            widen_output!($op, "v18", "v19", $h10, $h11, $h12, $h13),
            "ld4r {{v16.4s, v17.4s, v18.4s, v19.4s}}, [{w}], #16\n",
            widen_output!($op, "v16", "v17", $h20, $h21, $h22, $h23),
            widen_output!($op, "v18", "v19", $h30, $h31, $h32, $h33),
        )
    };
    ($op:literal, operands) => {
        pair_step!($op, ["{h00:v}", "{h01:v}", "{h02:v}", "{h03:v}",
                         "{h10:v}", "{h11:v}", "{h12:v}", "{h13:v}",
                         "{h20:v}", "{h21:v}", "{h22:v}", "{h23:v}",
                         "{h30:v}", "{h31:v}", "{h32:v}", "{h33:v}"])
    };
    ($op:literal, fixed) => {
        pair_step!($op, ["v0", "v1", "v2", "v3", "v4", "v5", "v6", "v7",
                         "v8", "v9", "v10", "v11", "v12", "v13", "v14", "v15"])
    };
}

/// `{n}` ≥ 1 pairs of groups ([`pair_step`]): the first starts the half sums (`saddlp`), each
/// later one adds (`sadalp`); labels 7 and 8.
macro_rules! pairs_loop {
    ($halves:tt) => {
        concat!(
            pair_step!("saddlp", $halves),
            "subs {n}, {n}, #1\n",
            "b.eq 8f\n",
            "7:\n",
            pair_step!("sadalp", $halves),
            "subs {n}, {n}, #1\n",
            "b.ne 7b\n",
            "8:\n",
        )
    };
}

/// The half sums of [`sums_widen`] over groups `0..2 · pairs` (narrow weights), as one `asm!`
/// loop: the first pair starts the sums (`saddlp`), each later one adds (`sadalp`) — 54
/// instructions per pair (256 multiply-adds) with the loop's two. LLVM compiled the same
/// steps written as intrinsics to 68 (a load and eight `dup`s for the weights, a spilled
/// accumulator), and given the step alone as `asm!`, to 58 (separate loads and pointer adds
/// around it).
///
/// # Safety
/// `pairs ≥ 1`; `weights` valid for reading `8 · pairs` words; `x` and `x + pixels · g`, for
/// every group g < `2 · pairs`, valid for reading 8 words.
#[inline(always)]
unsafe fn group_pairs(
    weights: *const u32,
    x: *const u32,
    pixels: usize,
    pairs: usize,
) -> [[int32x4_t; 4]; 4] {
    assert!(pairs >= 1, "at least one pair of groups");
    // SAFETY: register-only (every lane written by the `asm!`).
    let mut h = [[unsafe { vdupq_n_s32(0) }; 4]; 4];
    // SAFETY: reads the weights and rows the caller vouches for; the rest is register-only.
    unsafe {
        std::arch::asm!(
            pairs_loop!(operands),
            w = inout(reg) weights => _,
            x0 = inout(reg) x => _,
            x1 = inout(reg) x.add(pixels) => _,
            step = in(reg) 2 * pixels * size_of::<u32>(),
            n = inout(reg) pairs => _,
            h00 = out(vreg) h[0][0],
            h01 = out(vreg) h[0][1],
            h02 = out(vreg) h[0][2],
            h03 = out(vreg) h[0][3],
            h10 = out(vreg) h[1][0],
            h11 = out(vreg) h[1][1],
            h12 = out(vreg) h[1][2],
            h13 = out(vreg) h[1][3],
            h20 = out(vreg) h[2][0],
            h21 = out(vreg) h[2][1],
            h22 = out(vreg) h[2][2],
            h23 = out(vreg) h[2][3],
            h30 = out(vreg) h[3][0],
            h31 = out(vreg) h[3][1],
            h32 = out(vreg) h[3][2],
            h33 = out(vreg) h[3][3],
            out("v16") _,
            out("v17") _,
            out("v18") _,
            out("v19") _,
            out("v20") _,
            out("v21") _,
            out("v22") _,
            out("v23") _,
            out("v24") _,
            out("v25") _,
            options(pure, readonly, nostack),
        )
    };
    h
}

/// `$text` if `$on` is `true`, else nothing (text for `concat!`).
macro_rules! when {
    (true, $($text:expr),*) => { concat!($($text),*) };
    (false, $($text:expr),*) => { "" };
}

/// Output `$j`'s finishing in [`whole_tiles`]: its four half sums (`$a`–`$d`, consecutive
/// registers) added pairwise into the tile's two vectors of sums (`$a`, `$b`), plus its
/// correction (`$corr`), converted, times its multiplier (lane `$j` of v30), plus the residual
/// (`{r$j}`, if `$res`), through the ReLU (v31 = 0, if `$relu`), stored at `{o$j}`: `Layer::store`
/// eight lanes at a time, as `tile` does it.
#[rustfmt::skip]
macro_rules! finish_output {
    ($j:literal, $a:literal, $b:literal, $c:literal, $d:literal, $corr:literal, $res:tt, $relu:tt) => {
        concat!(
            "addp ", $a, ".4s, ", $a, ".4s, ", $b, ".4s\n",
            "addp ", $b, ".4s, ", $c, ".4s, ", $d, ".4s\n",
            "add ", $a, ".4s, ", $a, ".4s, ", $corr, ".4s\n",
            "add ", $b, ".4s, ", $b, ".4s, ", $corr, ".4s\n",
            "scvtf ", $a, ".4s, ", $a, ".4s\n",
            "scvtf ", $b, ".4s, ", $b, ".4s\n",
            "fmul ", $a, ".4s, ", $a, ".4s, v30.s[", $j, "]\n",
            "fmul ", $b, ".4s, ", $b, ".4s, v30.s[", $j, "]\n",
            when!($res,
                "ld1 {{v16.4s, v17.4s}}, [{r", $j, "}], #32\n",
                "fadd ", $a, ".4s, ", $a, ".4s, v16.4s\n",
                "fadd ", $b, ".4s, ", $b, ".4s, v17.4s\n"),
            when!($relu,
                "fmax ", $a, ".4s, ", $a, ".4s, v31.4s\n",
                "fmax ", $b, ".4s, ", $b, ".4s, v31.4s\n"),
            "st1 {{", $a, ".4s, ", $b, ".4s}}, [{o", $j, "}], #32\n",
        )
    };
}

/// The whole tiles of a block of four outputs with narrow weights and an even number of
/// groups, in one `asm!` loop: each tile's pairs of groups as [`group_pairs`] (its half sums in
/// v0–v15), then its finishing ([`finish_output`]), the output (and residual) pointers moving on
/// a tile. The same values as `tile`'s Rust finishing, bit for bit (the same instructions); a
/// tile of four outputs of OSNet x0.25's 16-input layers took 46 instructions to finish there
/// (79 with a residual and the ReLU: addresses rebuilt, multipliers reloaded from the stack)
/// and takes 36 (56) here, plus 7 to set up its loop of pairs.
///
/// # Safety
/// `pairs ≥ 1`, `tiles ≥ 1`; `weights` valid for reading `8 · pairs` words; `x + 8·t` (t <
/// `tiles`) and its rows `pixels` words apart, `2 · pairs` of them, valid for reading 8 words;
/// `out[j]` (and `residual[j]` if `RES`) valid for `8 · tiles` floats, the outputs overlapping
/// nothing else read.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) unsafe fn whole_tiles<const RES: bool, const RELU: bool>(
    weights: *const u32,
    x: *const u32,
    pixels: usize,
    pairs: usize,
    tiles: usize,
    corr: &[i32; 4],
    mult: &[f32; 4],
    out: [*mut f32; 4],
    residual: [*const f32; 4],
) {
    assert!(pairs >= 1 && tiles >= 1, "at least one pair and one tile");
    // SAFETY: the caller's contract for the memory; the rest is register-only.
    unsafe {
        let c = corr.map(|c| vdupq_n_s32(c));
        let m = vld1q_f32(mult.as_ptr());
        let zero = vdupq_n_f32(0.0);
        // Defined here so that its operands name this function's values.
        macro_rules! whole_tiles_asm {
            ($res:tt, $relu:tt $(, $extra:ident = $spec:ident(reg) $value:expr => _)*) => {
                std::arch::asm!(
                    "2:",
                    "mov {w}, {weights}",
                    "mov {n}, {pairs}",
                    "mov {x0}, {x}",
                    "add {x1}, {x}, {row}",
                    pairs_loop!(fixed),
                    finish_output!("0", "v0", "v1", "v2", "v3", "v26", $res, $relu),
                    finish_output!("1", "v4", "v5", "v6", "v7", "v27", $res, $relu),
                    finish_output!("2", "v8", "v9", "v10", "v11", "v28", $res, $relu),
                    finish_output!("3", "v12", "v13", "v14", "v15", "v29", $res, $relu),
                    "add {x}, {x}, #32",
                    "subs {tiles}, {tiles}, #1",
                    "b.ne 2b",
                    x = inout(reg) x => _,
                    weights = in(reg) weights,
                    pairs = in(reg) pairs,
                    tiles = inout(reg) tiles => _,
                    row = in(reg) pixels * size_of::<u32>(),
                    step = in(reg) 2 * pixels * size_of::<u32>(),
                    w = out(reg) _,
                    n = out(reg) _,
                    x0 = out(reg) _,
                    x1 = out(reg) _,
                    o0 = inout(reg) out[0] => _,
                    o1 = inout(reg) out[1] => _,
                    o2 = inout(reg) out[2] => _,
                    o3 = inout(reg) out[3] => _,
                    $($extra = $spec(reg) $value => _,)*
                    in("v26") c[0],
                    in("v27") c[1],
                    in("v28") c[2],
                    in("v29") c[3],
                    in("v30") m,
                    in("v31") zero,
                    out("v0") _, out("v1") _, out("v2") _, out("v3") _,
                    out("v4") _, out("v5") _, out("v6") _, out("v7") _,
                    out("v8") _, out("v9") _, out("v10") _, out("v11") _,
                    out("v12") _, out("v13") _, out("v14") _, out("v15") _,
                    out("v16") _, out("v17") _, out("v18") _, out("v19") _,
                    out("v20") _, out("v21") _, out("v22") _, out("v23") _,
                    out("v24") _, out("v25") _,
                    options(nostack),
                )
            };
        }
        match (RES, RELU) {
            (true, true) => whole_tiles_asm!(true, true,
                r0 = inout(reg) residual[0] => _, r1 = inout(reg) residual[1] => _,
                r2 = inout(reg) residual[2] => _, r3 = inout(reg) residual[3] => _),
            (true, false) => whole_tiles_asm!(true, false,
                r0 = inout(reg) residual[0] => _, r1 = inout(reg) residual[1] => _,
                r2 = inout(reg) residual[2] => _, r3 = inout(reg) residual[3] => _),
            (false, true) => whole_tiles_asm!(false, true),
            (false, false) => whole_tiles_asm!(false, false),
        }
    }
}
