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

pub mod conv;
pub mod depthwise;
pub mod gated_sum;
pub mod pointwise;
pub mod pool;
pub mod qconv;
pub mod qpointwise;
mod simd;
mod tile;

pub use crate::simd::Isa;

#[cfg(test)]
mod test_support {
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
