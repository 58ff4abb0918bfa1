//! The crate's one choice of SIMD instruction set, made once at run time: the embedder's
//! kernels (`embed::kernels`, a copy per set), the gallery's dot products (`gallery::kernels`)
//! and the resize passes (`preprocess`, an AVX2 copy) all follow [`Isa::detect`], so
//! `REIDCAM_KERNELS` moves them together.

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
        f.write_str(self.name())
    }
}

impl Isa {
    /// The set's name, as `REIDCAM_KERNELS` takes it.
    pub fn name(self) -> &'static str {
        match self {
            #[cfg(target_arch = "aarch64")]
            Isa::Baseline => "neon",
            #[cfg(not(target_arch = "aarch64"))]
            Isa::Baseline => "baseline",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => "avx2+fma",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => "avx512f",
        }
    }

    /// The widest instruction set this CPU runs, or a narrower one named by `REIDCAM_KERNELS`
    /// (`baseline`/`neon`, `avx2+fma`, `avx512f`): an AVX-512 machine runs the AVX2 path an
    /// AVX2-only machine runs (with `avx2+fma`, the int8 layers also lose VNNI, as there).
    /// Allocates nothing (unless the variable names a set this CPU lacks): the gallery's
    /// constructor calls it, and its allocations are counted to the byte.
    pub fn detect() -> Isa {
        let available = || Isa::ALL.iter().copied().filter(|isa| isa.is_available());
        let widest = available()
            .next_back()
            .expect("baseline is always available");
        match std::env::var("REIDCAM_KERNELS") {
            Ok(name) if !name.is_empty() => available()
                .find(|isa| isa.name() == name)
                .unwrap_or_else(|| {
                    let available = Isa::available();
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
