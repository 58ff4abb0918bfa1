//! Four output rows of a stride-1 depthwise plane in one NEON `asm!` loop (ReLU or none): the
//! step that holds most of OSNet's and our default model's depthwise work on ARM.
//!
//! LLVM's code for [`Rows::compute`](super::Rows) at four rows took some 90 instructions a step
//! of four pixels of four rows: beside the 18 loads and 36 FMAs, it rebuilt row addresses by
//! multiplication, reloaded operands from the stack and chose each step between a whole and a
//! partial vector. Here a step is 18 loads (three per padded row, the last post-incrementing
//! the row's pointer), 4 moves of the bias, 36 FMAs by element of the nine taps (held in three
//! registers), 4 `fmax` (against 0 for the ReLU, −∞ for none: the same values), 4 post-indexed
//! stores and the loop's `subs`/`b.ne`: 68. The FMAs of an output add its taps in the same
//! order (`dy`, then `dx`) as the generic code, so the sums are the same, bit for bit.

use std::arch::aarch64::{vdupq_n_f32, vld1q_f32};
use std::arch::asm;

/// The three column vectors of padded row `$r` (`{r0}`…`{r5}`) into `v$a`, `v$b`, `v$c`
/// (columns 0, 1, 2 from the step's first pixel); the row pointer moves on a vector.
macro_rules! load_row {
    ($r:literal, $a:literal, $b:literal, $c:literal) => {
        concat!(
            "ldur q",
            $b,
            ", [{",
            $r,
            "}, #4]\n",
            "ldur q",
            $c,
            ", [{",
            $r,
            "}, #8]\n",
            "ldr q",
            $a,
            ", [{",
            $r,
            "}], #16\n",
        )
    };
}

/// Tap row `dy` (0, 1, 2) of accumulator `v$acc` from the columns in `v$a`, `v$b`, `v$c`; the
/// taps `k[3·dy + dx]` are lanes of v16 (k0–k3), v17 (k4–k7) and v18 (k8).
macro_rules! taps {
    ($acc:literal, $a:literal, $b:literal, $c:literal, 0) => {
        taps!(@ $acc, $a, $b, $c, "v16.s[0]", "v16.s[1]", "v16.s[2]")
    };
    ($acc:literal, $a:literal, $b:literal, $c:literal, 1) => {
        taps!(@ $acc, $a, $b, $c, "v16.s[3]", "v17.s[0]", "v17.s[1]")
    };
    ($acc:literal, $a:literal, $b:literal, $c:literal, 2) => {
        taps!(@ $acc, $a, $b, $c, "v17.s[2]", "v17.s[3]", "v18.s[0]")
    };
    (@ $acc:literal, $a:literal, $b:literal, $c:literal, $k0:literal, $k1:literal, $k2:literal) => {
        concat!(
            "fmla v", $acc, ".4s, v", $a, ".4s, ", $k0, "\n",
            "fmla v", $acc, ".4s, v", $b, ".4s, ", $k1, "\n",
            "fmla v", $acc, ".4s, v", $c, ".4s, ", $k2, "\n",
        )
    };
}

/// Output rows `dst + u·width` (u < 4), `4 · vectors` pixels each, from padded rows
/// `top + i·pitch` (i < 6; output row u's tap rows are padded rows u, u + 1, u + 2, its pixel
/// x's taps columns x, x + 1, x + 2): `bias + Σ taps ⋆ rows`, through the ReLU if `relu`.
///
/// # Safety
/// `vectors ≥ 1`; each of the six padded rows valid for reading `4 · vectors + 2` floats from
/// `top + i·pitch`, each output row valid for writing `4 · vectors` floats; the output rows
/// overlap no padded row.
#[allow(clippy::too_many_arguments)]
#[inline]
pub(super) unsafe fn four_rows(
    top: *const f32,
    pitch: usize,
    dst: *mut f32,
    width: usize,
    vectors: usize,
    taps: &[f32; 9],
    bias: f32,
    relu: bool,
) {
    debug_assert!(vectors >= 1);
    // SAFETY: the caller's contract: every load is inside the six rows' `4 · vectors + 2`
    // floats (a step reads columns x to x + 5 of each from x = 4·step), every store inside the
    // output rows' `4 · vectors`; the registers the block writes are declared clobbered.
    unsafe {
        let k0 = vld1q_f32(taps.as_ptr());
        let k4 = vld1q_f32(taps.as_ptr().add(4));
        let k8 = vdupq_n_f32(taps[8]);
        let b = vdupq_n_f32(bias);
        // fmax(x, −∞) is x for every x, NaN included, as without the ReLU.
        let floor = vdupq_n_f32(if relu { 0.0 } else { f32::NEG_INFINITY });
        #[rustfmt::skip]
        asm!(
            "add {r1}, {r0}, {pitch}",
            "add {r2}, {r1}, {pitch}",
            "add {r3}, {r2}, {pitch}",
            "add {r4}, {r3}, {pitch}",
            "add {r5}, {r4}, {pitch}",
            "add {d1}, {d0}, {width}",
            "add {d2}, {d1}, {width}",
            "add {d3}, {d2}, {width}",
            "2:",
            "mov v0.16b, v19.16b",
            "mov v1.16b, v19.16b",
            "mov v2.16b, v19.16b",
            "mov v3.16b, v19.16b",
            // Padded row i feeds output rows i − 2 to i (tap row dy = i − u of output u).
            load_row!("r0", 4, 5, 6),
            taps!(0, 4, 5, 6, 0),
            load_row!("r1", 7, 8, 9),
            taps!(0, 7, 8, 9, 1),
            taps!(1, 7, 8, 9, 0),
            load_row!("r2", 4, 5, 6),
            taps!(0, 4, 5, 6, 2),
            taps!(1, 4, 5, 6, 1),
            taps!(2, 4, 5, 6, 0),
            load_row!("r3", 7, 8, 9),
            taps!(1, 7, 8, 9, 2),
            taps!(2, 7, 8, 9, 1),
            taps!(3, 7, 8, 9, 0),
            load_row!("r4", 4, 5, 6),
            taps!(2, 4, 5, 6, 2),
            taps!(3, 4, 5, 6, 1),
            load_row!("r5", 7, 8, 9),
            taps!(3, 7, 8, 9, 2),
            "fmax v0.4s, v0.4s, v20.4s",
            "fmax v1.4s, v1.4s, v20.4s",
            "fmax v2.4s, v2.4s, v20.4s",
            "fmax v3.4s, v3.4s, v20.4s",
            "str q0, [{d0}], #16",
            "str q1, [{d1}], #16",
            "str q2, [{d2}], #16",
            "str q3, [{d3}], #16",
            "subs {n}, {n}, #1",
            "b.ne 2b",
            r0 = inout(reg) top => _,
            r1 = out(reg) _,
            r2 = out(reg) _,
            r3 = out(reg) _,
            r4 = out(reg) _,
            r5 = out(reg) _,
            d0 = inout(reg) dst => _,
            d1 = out(reg) _,
            d2 = out(reg) _,
            d3 = out(reg) _,
            n = inout(reg) vectors => _,
            pitch = in(reg) pitch * 4,
            width = in(reg) width * 4,
            in("v16") k0,
            in("v17") k4,
            in("v18") k8,
            in("v19") b,
            in("v20") floor,
            out("v0") _, out("v1") _, out("v2") _, out("v3") _,
            out("v4") _, out("v5") _, out("v6") _,
            out("v7") _, out("v8") _, out("v9") _,
            options(nostack),
        );
    }
}
