//! Dot products for gallery matching: `f32·f32` and `i8·i8 → i32`.
//!
//! One implementation per CPU family, chosen once at run time ([`Kernels::detect`], from the
//! crate's [`Isa::detect`]: `REIDCAM_KERNELS` moves the embedder and the gallery together): AVX2
//! and FMA on x86_64 (AVX-512 machines too: a dot product of a few hundred values gains nothing
//! from wider registers), NEON on aarch64 (part of the base ISA there), and a portable scalar
//! fallback that is also the reference the SIMD versions are tested against. This module holds
//! all of the gallery's `unsafe` code.
//!
//! Equality with the scalar version: the integer kernels are exact, so they must agree bit for bit.
//! The float kernels sum in a different order (eight or sixteen partial sums, fused multiply-add),
//! so they agree within the rounding bound of a length-`n` dot product,
//! `n · ε · Σ|aᵢ·bᵢ|`; the tests check both.

use crate::simd::Isa;

/// The longest vector the integer kernel accepts: `i8·i8` products are at most 2¹⁴, so an `i32`
/// sum of 2¹⁶ of them cannot overflow.
pub const MAX_I8_LEN: usize = 1 << 16;

/// A set of dot-product kernels for this CPU. Cheap to copy (two function pointers).
#[derive(Clone, Copy)]
pub struct Kernels {
    /// `avx2+fma`, `neon` or `scalar`.
    name: &'static str,
    f32_dot: fn(&[f32], &[f32]) -> f32,
    i8_dot: fn(&[i8], &[i8]) -> i32,
}

impl std::fmt::Debug for Kernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernels").field("name", &self.name).finish()
    }
}

impl Kernels {
    /// The kernels for the crate's instruction set ([`Isa::detect`]).
    pub fn detect() -> Self {
        Kernels::for_isa(Isa::detect())
    }

    /// The kernels for `isa` (which this CPU must run: it comes from [`Isa::detect`] or
    /// [`Isa::available`]).
    pub fn for_isa(isa: Isa) -> Self {
        assert!(isa.is_available(), "{isa} is not available on this CPU");
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma | Isa::Avx512 => Kernels {
                name: "avx2+fma",
                f32_dot: x86::dot_f32,
                i8_dot: x86::dot_i8,
            },
            #[cfg(target_arch = "aarch64")]
            Isa::Baseline => Kernels {
                name: "neon",
                f32_dot: neon::dot_f32,
                i8_dot: neon::dot_i8,
            },
            #[cfg(not(target_arch = "aarch64"))]
            Isa::Baseline => Kernels::scalar(),
        }
    }

    /// The portable reference kernels.
    pub fn scalar() -> Self {
        Kernels {
            name: "scalar",
            f32_dot: scalar::dot_f32,
            i8_dot: scalar::dot_i8,
        }
    }

    /// `avx2+fma`, `neon` or `scalar`.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// `Σ aᵢ·bᵢ`. Panics if the lengths differ.
    #[inline]
    pub fn dot_f32(&self, a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len(), "dot_f32: lengths differ");
        (self.f32_dot)(a, b)
    }

    /// `Σ aᵢ·bᵢ` in exact integer arithmetic. Panics if the lengths differ or exceed
    /// [`MAX_I8_LEN`].
    #[inline]
    pub fn dot_i8(&self, a: &[i8], b: &[i8]) -> i32 {
        assert_eq!(a.len(), b.len(), "dot_i8: lengths differ");
        assert!(a.len() <= MAX_I8_LEN, "dot_i8: longer than {MAX_I8_LEN}");
        (self.i8_dot)(a, b)
    }
}

/// The reference implementations: plain loops, summed left to right.
pub mod scalar {
    pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
        a.iter()
            .zip(b)
            .map(|(&x, &y)| i32::from(x) * i32::from(y))
            .sum()
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    // Safe entry points: `Kernels::for_isa` only hands these out for an available AVX2 + FMA
    // (or AVX-512, which implies them) instruction set.
    pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: reached only through `Kernels::for_isa`, which verified avx2 and fma.
        unsafe { dot_f32_avx2(a, b) }
    }

    pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
        // SAFETY: as above.
        unsafe { dot_i8_avx2(a, b) }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_f32_avx2(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY: every load reads 8 floats at offsets < n, checked by the loop bounds.
        unsafe {
            while i + 32 <= n {
                for (k, acc) in acc.iter_mut().enumerate() {
                    let x = _mm256_loadu_ps(pa.add(i + 8 * k));
                    let y = _mm256_loadu_ps(pb.add(i + 8 * k));
                    *acc = _mm256_fmadd_ps(x, y, *acc);
                }
                i += 32;
            }
            while i + 8 <= n {
                let x = _mm256_loadu_ps(pa.add(i));
                let y = _mm256_loadu_ps(pb.add(i));
                acc[0] = _mm256_fmadd_ps(x, y, acc[0]);
                i += 8;
            }
            let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
            let half = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
            let pairs = _mm_add_ps(half, _mm_movehl_ps(half, half));
            let one = _mm_add_ss(pairs, _mm_shuffle_ps(pairs, pairs, 1));
            let mut total = _mm_cvtss_f32(one);
            while i < n {
                total += *pa.add(i) * *pb.add(i);
                i += 1;
            }
            total
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot_i8_avx2(a: &[i8], b: &[i8]) -> i32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc0 = _mm256_setzero_si256();
        let mut acc1 = _mm256_setzero_si256();
        let mut i = 0;
        // SAFETY: every load reads 16 bytes at offsets < n, checked by the loop bounds.
        unsafe {
            while i + 32 <= n {
                // Sign-extend 16 bytes to 16 × i16, multiply pairwise and add adjacent products
                // into 8 × i32 (`vpmaddwd`): exact, since |product| ≤ 2¹⁴.
                let x0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(pa.add(i).cast()));
                let y0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(pb.add(i).cast()));
                let x1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(pa.add(i + 16).cast()));
                let y1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(pb.add(i + 16).cast()));
                acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(x0, y0));
                acc1 = _mm256_add_epi32(acc1, _mm256_madd_epi16(x1, y1));
                i += 32;
            }
            if i + 16 <= n {
                let x = _mm256_cvtepi8_epi16(_mm_loadu_si128(pa.add(i).cast()));
                let y = _mm256_cvtepi8_epi16(_mm_loadu_si128(pb.add(i).cast()));
                acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(x, y));
                i += 16;
            }
            let sum = _mm256_add_epi32(acc0, acc1);
            let half = _mm_add_epi32(
                _mm256_castsi256_si128(sum),
                _mm256_extracti128_si256(sum, 1),
            );
            let pairs = _mm_add_epi32(half, _mm_shuffle_epi32(half, 0b01_00_11_10));
            let one = _mm_add_epi32(pairs, _mm_shuffle_epi32(pairs, 0b00_00_00_01));
            let mut total = _mm_cvtsi128_si32(one);
            while i < n {
                total += i32::from(*pa.add(i)) * i32::from(*pb.add(i));
                i += 1;
            }
            total
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod neon {
    use std::arch::aarch64::*;

    // NEON is part of the aarch64 base ISA, so these need no run-time check.
    pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut i = 0;
        // SAFETY: every load reads 4 floats at offsets < n, checked by the loop bounds.
        unsafe {
            let mut acc = [vdupq_n_f32(0.0); 4];
            while i + 16 <= n {
                for (k, acc) in acc.iter_mut().enumerate() {
                    let x = vld1q_f32(pa.add(i + 4 * k));
                    let y = vld1q_f32(pb.add(i + 4 * k));
                    *acc = vfmaq_f32(*acc, x, y);
                }
                i += 16;
            }
            while i + 4 <= n {
                acc[0] = vfmaq_f32(acc[0], vld1q_f32(pa.add(i)), vld1q_f32(pb.add(i)));
                i += 4;
            }
            let sum = vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3]));
            let mut total = vaddvq_f32(sum);
            while i < n {
                total += *pa.add(i) * *pb.add(i);
                i += 1;
            }
            total
        }
    }

    pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut i = 0;
        // SAFETY: every load reads 16 bytes at offsets < n, checked by the loop bounds.
        unsafe {
            let mut acc0 = vdupq_n_s32(0);
            let mut acc1 = vdupq_n_s32(0);
            while i + 16 <= n {
                let x = vld1q_s8(pa.add(i));
                let y = vld1q_s8(pb.add(i));
                // i8 × i8 → i16 is exact (|product| ≤ 2¹⁴); pairwise add-accumulate into i32.
                acc0 = vpadalq_s16(acc0, vmull_s8(vget_low_s8(x), vget_low_s8(y)));
                acc1 = vpadalq_s16(acc1, vmull_high_s8(x, y));
                i += 16;
            }
            let mut total = vaddvq_s32(vaddq_s32(acc0, acc1));
            while i < n {
                total += i32::from(*pa.add(i)) * i32::from(*pb.add(i));
                i += 1;
            }
            total
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::bench::XorShift as Rng;

    const LENGTHS: &[usize] = &[
        0, 1, 3, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 100, 256, 511, 512, 1029,
    ];

    #[test]
    fn detected_i8_kernel_equals_scalar_exactly() {
        let kernels = Kernels::detect();
        let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15);
        for &n in LENGTHS {
            for _ in 0..20 {
                let a: Vec<i8> = (0..n).map(|_| rng.i8()).collect();
                let b: Vec<i8> = (0..n).map(|_| rng.i8()).collect();
                assert_eq!(
                    kernels.dot_i8(&a, &b),
                    scalar::dot_i8(&a, &b),
                    "n = {n}, {kernels:?}"
                );
            }
        }
        // The extremes: every product is (-128)·(-128) = 2¹⁴.
        let a = vec![i8::MIN; 4096];
        assert_eq!(kernels.dot_i8(&a, &a), 4096 << 14);
    }

    #[test]
    fn detected_f32_kernel_equals_scalar_within_rounding_bound() {
        let kernels = Kernels::detect();
        let mut rng = Rng::new(0x0123_4567_89ab_cdef);
        for &n in LENGTHS {
            for _ in 0..20 {
                let a: Vec<f32> = (0..n).map(|_| rng.signed_unit()).collect();
                let b: Vec<f32> = (0..n).map(|_| rng.signed_unit()).collect();
                let exact: f64 = a
                    .iter()
                    .zip(&b)
                    .map(|(&x, &y)| f64::from(x) * f64::from(y))
                    .sum();
                let magnitude: f64 = a
                    .iter()
                    .zip(&b)
                    .map(|(&x, &y)| f64::from(x * y).abs())
                    .sum();
                let bound = (n as f64 + 1.0) * f64::from(f32::EPSILON) * magnitude + 1e-30;
                let simd = f64::from(kernels.dot_f32(&a, &b));
                let reference = f64::from(scalar::dot_f32(&a, &b));
                assert!(
                    (simd - exact).abs() <= bound,
                    "n = {n}: {simd} vs exact {exact}"
                );
                assert!(
                    (reference - exact).abs() <= bound,
                    "n = {n}: {reference} vs exact {exact}"
                );
                assert!(
                    (simd - reference).abs() <= 2.0 * bound,
                    "n = {n}: {simd} vs {reference}"
                );
            }
        }
    }

    #[test]
    fn f32_kernel_is_exact_on_small_integers() {
        // Products and partial sums of small integers are exact in f32 whatever the order.
        let kernels = Kernels::detect();
        let a: Vec<f32> = (0..515).map(|i| (i % 7) as f32 - 3.0).collect();
        let b: Vec<f32> = (0..515).map(|i| (i % 5) as f32 - 2.0).collect();
        assert_eq!(kernels.dot_f32(&a, &b), scalar::dot_f32(&a, &b));
    }

    #[test]
    fn detection_picks_simd_where_the_cpu_has_it() {
        // Every instruction set this CPU runs, whatever `REIDCAM_KERNELS` says.
        for isa in Isa::available() {
            let want = match isa.name() {
                "avx2+fma" | "avx512f" => "avx2+fma",
                "neon" => "neon",
                _ => "scalar",
            };
            assert_eq!(Kernels::for_isa(isa).name(), want, "{isa}");
        }
    }

    #[test]
    fn every_kernel_set_equals_scalar_on_integers() {
        let mut rng = Rng::new(0x5eed);
        let a: Vec<i8> = (0..1029).map(|_| rng.i8()).collect();
        let b: Vec<i8> = (0..1029).map(|_| rng.i8()).collect();
        for isa in Isa::available() {
            let kernels = Kernels::for_isa(isa);
            assert_eq!(kernels.dot_i8(&a, &b), scalar::dot_i8(&a, &b), "{isa}");
        }
    }
}
