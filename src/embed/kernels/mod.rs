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

/// The instruction set a kernel copy was compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// The target's baseline: SSE2 on x86-64, NEON (with FMA) on aarch64.
    Baseline,
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            #[cfg(target_arch = "aarch64")]
            Isa::Baseline => "neon",
            #[cfg(not(target_arch = "aarch64"))]
            Isa::Baseline => "baseline",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => "avx2+fma",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => "avx512f",
        })
    }
}

impl Isa {
    /// The widest instruction set this CPU runs, or a narrower one named by `REIDCAM_KERNELS`
    /// (`baseline`/`neon`, `avx2+fma`, `avx512f`): an AVX-512 machine runs the AVX2 path an
    /// AVX2-only machine runs (with `avx2+fma`, the int8 layers also lose VNNI, as there).
    pub fn detect() -> Isa {
        let available = Isa::available();
        let widest = *available.last().expect("baseline is always available");
        match std::env::var("REIDCAM_KERNELS") {
            Ok(name) if !name.is_empty() => available
                .iter()
                .copied()
                .find(|isa| isa.to_string() == name)
                .unwrap_or_else(|| {
                    log::warn!(
                        "REIDCAM_KERNELS={name}: not one this CPU runs ({}); using {widest}",
                        available
                            .iter()
                            .map(Isa::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                    widest
                }),
            _ => widest,
        }
    }

    /// Every instruction set this CPU runs, narrowest first.
    pub fn available() -> Vec<Isa> {
        Isa::ALL
            .iter()
            .copied()
            .filter(|isa| isa.is_available())
            .collect()
    }

    /// Whether this CPU runs `self` (an `Isa` may come from a test, not `detect`). Checked by
    /// every kernel call: no allocation, and the standard library caches the CPU's features.
    pub fn is_available(self) -> bool {
        match self {
            Isa::Baseline => true,
            // AVX-512 implies the AVX2 + FMA copy too (narrow depthwise planes use it).
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma | Isa::Avx512 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                    && (self == Isa::Avx2Fma || std::arch::is_x86_feature_detected!("avx512f"))
            }
        }
    }

    /// Every instruction set this build has a copy for, narrowest first.
    const ALL: &[Isa] = &[
        Isa::Baseline,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512,
    ];
}

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
