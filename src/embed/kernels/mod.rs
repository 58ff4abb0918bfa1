//! Convolution kernels for the operators that dominate ReID CNNs (OSNet's and SCL-net's 1×1 and
//! depthwise 3×3 convolutions), called by our tract ops (`embed::ops`).
//!
//! One source per kernel, compiled several times: each public entry point dispatches on an
//! [`Isa`] to a copy built with `#[target_feature]` (AVX-512F, AVX2 + FMA) or for the target's
//! baseline (SSE2 on x86-64, NEON + FMA on aarch64, the target's default on other CPUs), so that
//! LLVM vectorises the same loops to each instruction set. The loops are shaped for that: fixed-size
//! register tiles (`[[f32; PB]; OB]`), no bounds checks in the inner loops, and no data-dependent
//! branches. [`Isa::detect`] picks the widest one the CPU has, once.
//!
//! Each kernel has a naive scalar reference next to it, the oracle of its property tests; those
//! tests run every [`Isa::available`] here on x86-64 and under qemu-aarch64 for NEON.
//!
//! Float results differ from the reference only by summation order and fused multiply-adds: the
//! tests bound the difference by `k · ε · Σ|wᵢ·xᵢ|` for a `k`-term sum.

pub mod channels_last;
pub mod conv;
pub mod depthwise;
pub mod gated_sum;
pub mod pointwise;
pub mod pool;
pub mod qconv;
pub mod qpointwise;
pub mod sigmoid;
mod simd;
mod tile;
pub mod transpose;

pub use crate::simd::Isa;
pub use tile::{block_floats, pack as pack_weights, panel_width, unpack as unpack_weights};

/// The widest vector (AVX-512: 16 floats). A run of the matrix product at least this long gives
/// the same sums however it is cut into runs (a run shorter than a vector goes through a scalar
/// path, whose additions are not fused): the ops' pixel parts are longer.
pub const MAX_LANES: usize = 16;

/// The activation a kernel applies as it stores its outputs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Act {
    #[default]
    Identity,
    /// `max(x, 0)` (OSNet, SCL-net).
    Relu,
    /// `x · sigmoid(x)` (YOLOX): `x / (1 + e^(−x))` for `x ≥ −87` (below, the value at −87, 1e-36),
    /// in the steps of [`silu`], within a few ulp of the exact value.
    Silu,
}

impl Act {
    /// On one value, as the vector kernels compute it.
    #[inline(always)]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Act::Identity => x,
            Act::Relu => x.max(0.0),
            Act::Silu => silu(x),
        }
    }

    /// On one value, exactly (the references of the kernels' tests).
    pub fn reference(self, x: f64) -> f64 {
        match self {
            Act::Identity => x,
            Act::Relu => x.max(0.0),
            Act::Silu => x / (1.0 + (-x).exp()),
        }
    }
}

/// SiLU, `x / (1 + e^(−x))`, in the steps the vector copies in `simd` take (each in its own
/// instructions: the same value within an ulp or two, not the same bits): `x` clamped below at
/// −87 (SiLU is within 1.5e-36 of 0 there; unclamped, `x / (1 + e^87)` would grow with |x|), its
/// exponent's argument `c` at ±87 too; `e^(−c) = 2^n · e^s` with `n = round(−c · log2 e)` and
/// `s = −c − n · ln 2` (`|s| ≤ ln 2 / 2`), `e^s` by [`SILU_POLY`], `2^n` put in the exponent bits.
///
/// A degree-5 polynomial and no clamp or negation beyond these: each vector step is an
/// instruction, and SiLU follows every convolution of a YOLOX (14–16 instructions per vector
/// where Cephes' degree-7 `expf` and the steps around it took 22). The vector copies take
/// `n · ln 2` in one fused multiply-add with `ln 2` to the nearest float ([`LN2`], 1.9e-9 off:
/// `s` within 2.4e-7 at `|n| = 126`, 6e-8 for `|x| < 20`), one instruction fewer than Cephes'
/// two-part `ln 2` ([`LN2_HI`], [`LN2_LO`]), which this scalar copy keeps because its steps are
/// not fused (YOLOX-Nano's 416×416 frame ~2% faster on an Intel Xeon, AVX-512). A degree-4
/// polynomial would save one more, but at 24 ulp it moved the detectors' head outputs by 4e-4
/// of their scale (the 1e-4 of `detector_networks_compute_as_with_tracts_own_ops`).
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    let x = x.max(-EXP_LIMIT);
    x / one_plus_exp_neg(x.min(EXP_LIMIT))
}

/// The logistic sigmoid, `1 / (1 + e^(−x))`, in [`silu`]'s steps (the same clamps, so never
/// 0 / 0 and never above 1; below −87 the value at −87, 1.6e-38). YOLOX's objectness and class
/// scores.
#[inline(always)]
pub fn sigmoid_scalar(x: f32) -> f32 {
    1.0 / one_plus_exp_neg(x.clamp(-EXP_LIMIT, EXP_LIMIT))
}

/// `1 + e^(−c)` for `|c| ≤ 87`: `e^(−c) = 2^n · e^s` (see [`silu`]).
#[inline(always)]
fn one_plus_exp_neg(c: f32) -> f32 {
    let n = (-c * std::f32::consts::LOG2_E + MAGIC) - MAGIC;
    let s = -c - n * LN2_HI - n * LN2_LO;
    let p = SILU_POLY.iter().rev().fold(0.0, |p, &a| p * s + a);
    let e = p * s + 1.0;
    1.0 + e * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// `e^s ≈ 1 + s·(a₁ + s·(a₂ + s·(a₃ + s·(a₄ + s·a₅))))` on `|s| ≤ ln 2 / 2`, `a₁` first, fitted
/// for the least maximum relative error by `tools/fit_silu_poly.py` (1.5 · 2⁻²⁴; 2.9 · 2⁻²⁴ as
/// evaluated in f32).
pub(crate) const SILU_POLY: [f32; 5] = [
    0.999_999_7,
    0.499_991_5,
    0.166_676_36,
    0.041_897_93,
    0.008_290_315,
];

/// `1.5 · 2²³`: `v + MAGIC − MAGIC` rounds `v` (|v| < 2²²) to the nearest integer, ties to even,
/// and the low bits of `v + MAGIC` are that integer (the vector copies' `round`).
pub(crate) const MAGIC: f32 = 12_582_912.0;

/// Where [`silu`] and [`sigmoid_scalar`] clamp their argument: `e^±87` are normal floats.
pub(crate) const EXP_LIMIT: f32 = 87.0;
/// ln 2 to the nearest float: the vector copies' `s = −c − n · LN2` in one fused step.
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
pub(crate) const LN2: f32 = std::f32::consts::LN_2;
/// ln 2 split so that `n · LN2_HI` is exact for |n| < 2⁹ (Cephes): [`silu`]'s steps, which are
/// not fused.
pub(crate) const LN2_HI: f32 = 0.693_359_4;
pub(crate) const LN2_LO: f32 = -2.121_944_4e-4;

#[cfg(test)]
pub(crate) mod test_support {
    /// Deterministic test data (the crate's xorshift generator), so failures reproduce.
    pub struct Rng(crate::bench::XorShift);

    impl Rng {
        pub fn new(seed: u64) -> Self {
            Rng(crate::bench::XorShift::new(seed))
        }

        pub fn below(&mut self, n: usize) -> usize {
            self.0.below(n as u64) as usize
        }

        /// `n` values uniform in [-1, 1).
        pub fn vec(&mut self, n: usize) -> Vec<f32> {
            (0..n).map(|_| self.0.signed_unit()).collect()
        }
    }

    /// [`assert_close`] for outputs after `act`, which widens the bound for SiLU: its slope is at
    /// most 1.1, and its exponential adds a few ulp of the output (itself ≤ the scale).
    pub fn assert_close_after(
        act: super::Act,
        got: &[f32],
        want: &[f32],
        scale: &[f32],
        terms: usize,
        what: &str,
    ) {
        let (factor, extra) = match act {
            super::Act::Silu => (1.1, 8),
            _ => (1.0, 0),
        };
        let scale: Vec<f32> = scale.iter().map(|s| s * factor).collect();
        assert_close(got, want, &scale, terms + extra, &format!("{what} {act:?}"));
    }

    /// `0..n` cut into one to four contiguous parts at random places, each at least `min` long
    /// (one part if `n < 2 · min`), as the threads of one layer split its pixels or rows.
    pub fn parts(rng: &mut Rng, n: usize, min: usize) -> Vec<std::ops::Range<usize>> {
        let min = min.max(1);
        let mut cuts = vec![0];
        for _ in 0..rng.below(4) {
            let last = *cuts.last().unwrap();
            if n - last < 2 * min {
                break;
            }
            cuts.push(last + min + rng.below(n - last - 2 * min + 1));
        }
        cuts.push(n);
        cuts.windows(2).map(|w| w[0]..w[1]).collect()
    }

    /// `got` and `want` bit for bit (NaN included), or a panic naming the first difference.
    pub fn assert_same_bits(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
            panic!(
                "{what}: value {i} is {} where {} was expected",
                got[i], want[i]
            );
        }
    }

    /// One of the three activations, at random.
    pub fn act(rng: &mut Rng) -> super::Act {
        [super::Act::Identity, super::Act::Relu, super::Act::Silu][rng.below(3)]
    }

    /// Asserts `got ≈ want` within `terms · ε · scale` (+ a tiny absolute floor), element-wise.
    pub fn assert_close(got: &[f32], want: &[f32], scale: &[f32], terms: usize, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        for (i, ((g, w), s)) in got.iter().zip(want).zip(scale).enumerate() {
            let bound = (terms as f32 + 2.0) * f32::EPSILON * s + 1e-30;
            assert!(
                (g - w).abs() <= bound,
                "{what}: element {i}: got {g}, want {w} (|Δ| {} > bound {bound})",
                (g - w).abs()
            );
        }
    }
}
