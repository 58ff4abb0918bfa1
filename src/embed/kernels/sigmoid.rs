//! The logistic sigmoid over a slice, in place (YOLOX's objectness and class scores), a vector
//! at a time in SiLU's steps (`Lanes::sigmoid`), the last lanes masked.
//!
//! It ran `1 / (1 + exp(−x))` with Cephes' `expf` in a loop left to LLVM, which made the
//! float-to-integer conversion of `2^n` lane by lane: YOLOX-Nano's 80 class scores at 416×416
//! (230 K values per frame) took 0.55 ms on an Intel Xeon (model 207, AVX-512).

use super::Isa;
use super::simd::Lanes;
#[cfg(not(target_arch = "aarch64"))]
use super::simd::Portable;

/// [`super::sigmoid_scalar`] on every value (the vector copies: the same value within an ulp or two).
pub fn sigmoid(isa: Isa, values: &mut [f32]) {
    assert!(isa.is_available(), "{isa} is not available on this CPU");
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `is_available` checked AVX2 + FMA.
        Isa::Avx2Fma => unsafe { x86::avx2(values) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `is_available` checked AVX-512F.
        Isa::Avx512 => unsafe { x86::avx512(values) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: NEON is part of aarch64.
        Isa::Baseline => unsafe { body::<std::arch::aarch64::float32x4_t>(values) },
        #[cfg(not(target_arch = "aarch64"))]
        // SAFETY: the portable copy needs nothing.
        Isa::Baseline => unsafe { body::<Portable>(values) },
    }
}

/// # Safety
/// The CPU supports `V`'s instructions.
#[inline(always)]
unsafe fn body<V: Lanes>(values: &mut [f32]) {
    let mut chunks = values.chunks_exact_mut(V::N);
    // SAFETY: `V` is supported (the caller's); every chunk has `N` floats, the rest fewer.
    unsafe {
        for c in &mut chunks {
            V::load(c.as_ptr()).sigmoid().store(c.as_mut_ptr());
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let n = rest.len();
            V::load_n(rest.as_ptr(), n)
                .sigmoid()
                .store_n(rest.as_mut_ptr(), n);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{__m256, __m512};

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn avx2(values: &mut [f32]) {
        // SAFETY: the caller checked AVX2 + FMA.
        unsafe { super::body::<__m256>(values) }
    }

    #[target_feature(enable = "avx512f,fma")]
    pub(super) unsafe fn avx512(values: &mut [f32]) {
        // SAFETY: the caller checked AVX-512F.
        unsafe { super::body::<__m512>(values) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_isa_is_within_a_few_ulp_and_bounded() {
        let mut xs: Vec<f32> = (-2000..=2000).map(|i| i as f32 * 0.05).collect();
        xs.extend([f32::MIN, -1e30, -100.0, -88.0, 88.0, 100.0, 1e30, f32::MAX]);
        let check = |isa: Isa, x: f32, s: f32| {
            assert!((0.0..=1.0).contains(&s), "{isa}: sigmoid({x}) = {s}");
            let want = 1.0 / (1.0 + (-f64::from(x)).exp());
            let tolerance = 4.0 * f64::from(f32::EPSILON) * want.max(1e-37);
            assert!(
                (f64::from(s) - want).abs() <= tolerance.max(2e-38),
                "{isa}: sigmoid({x}) = {s}, want {want}"
            );
        };
        for isa in Isa::available() {
            let mut got = xs.clone();
            sigmoid(isa, &mut got);
            for (&x, &s) in xs.iter().zip(&got) {
                check(isa, x, s);
            }
            // Short slices (the masked last lanes): the values after them untouched.
            for len in 0..=40 {
                let mut got = xs[1990..2040].to_vec();
                sigmoid(isa, &mut got[..len]);
                for (i, (&x, &s)) in xs[1990..2040].iter().zip(&got).enumerate() {
                    if i < len {
                        check(isa, x, s);
                    } else {
                        assert_eq!(s, x, "{isa}: value {i} after a slice of {len} changed");
                    }
                }
            }
        }
    }
}
