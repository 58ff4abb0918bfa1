//! The few vector operations the SIMD kernels need, over each instruction set's register type, so
//! a kernel is written once and instantiated per instruction set inside a `#[target_feature]`
//! function (where these `#[inline(always)]` wrappers inline to single instructions).

use super::Act;

/// A vector of `N` f32 lanes.
///
/// # Safety
/// Every method requires the CPU to support the type's instructions; pointers must be valid for
/// `N` floats (no alignment needed).
pub trait Lanes: Copy {
    const N: usize;
    unsafe fn splat(v: f32) -> Self;
    unsafe fn load(p: *const f32) -> Self;
    unsafe fn store(self, p: *mut f32);
    /// `a · b + c`, fused.
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self;
    unsafe fn add(self, other: Self) -> Self;
    /// `max(self, 0)`.
    unsafe fn relu(self) -> Self;
    /// `Act::Silu` per lane, in the same steps.
    unsafe fn silu(self) -> Self;
    /// The kernels' activation: SiLU when `SILU` (a kernel compiled apart for it, so that its
    /// code and constants stay out of the other copy), else ReLU or nothing as `act` says.
    #[inline(always)]
    unsafe fn activate<const SILU: bool>(self, act: Act) -> Self {
        // SAFETY: the trait's contract: the CPU supports these instructions; pointers are valid
        // for the lanes read or written.
        unsafe {
            if SILU {
                self.silu()
            } else if act == Act::Relu {
                self.relu()
            } else {
                self
            }
        }
    }
    /// The first `n < N` lanes from `p` (the others zero); reads only those `n` floats.
    unsafe fn load_n(p: *const f32, n: usize) -> Self;
    /// Writes the first `n < N` lanes to `p`, and nothing else.
    unsafe fn store_n(self, p: *mut f32, n: usize);
}

/// Four lanes in plain arrays: the portable copy, which LLVM vectorises to the target's baseline
/// (SSE2 on x86-64). Multiplies and adds separately (no FMA there).
#[derive(Clone, Copy)]
#[cfg_attr(target_arch = "aarch64", allow(dead_code))]
pub struct Portable([f32; 4]);

impl Lanes for Portable {
    const N: usize = 4;
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        Portable([v; 4])
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: the trait's contract: the CPU supports these instructions; pointers are valid
        // for the lanes read or written.
        Portable(unsafe { p.cast::<[f32; 4]>().read_unaligned() })
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: the trait's contract: the CPU supports these instructions; pointers are valid
        // for the lanes read or written.
        unsafe { p.cast::<[f32; 4]>().write_unaligned(self.0) }
    }
    #[inline(always)]
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
        Portable(std::array::from_fn(|i| a.0[i] * b.0[i] + c.0[i]))
    }
    #[inline(always)]
    unsafe fn add(self, other: Self) -> Self {
        Portable(std::array::from_fn(|i| self.0[i] + other.0[i]))
    }
    #[inline(always)]
    unsafe fn relu(self) -> Self {
        Portable(self.0.map(|v| if v < 0.0 { 0.0 } else { v }))
    }
    #[inline(always)]
    unsafe fn silu(self) -> Self {
        Portable(self.0.map(|v| Act::Silu.apply(v)))
    }
    #[inline(always)]
    unsafe fn load_n(p: *const f32, n: usize) -> Self {
        let mut v = [0.0; 4];
        for (i, lane) in v.iter_mut().enumerate().take(n) {
            // SAFETY: the trait's contract: the CPU supports these instructions; pointers are
            // valid for the lanes read or written.
            *lane = unsafe { *p.add(i) };
        }
        Portable(v)
    }
    #[inline(always)]
    unsafe fn store_n(self, p: *mut f32, n: usize) {
        for (i, lane) in self.0.iter().enumerate().take(n) {
            // SAFETY: the trait's contract: the CPU supports these instructions; pointers are
            // valid for the lanes read or written.
            unsafe { *p.add(i) = *lane };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::f32::consts::LOG2_E;

    use super::super::{EXP_LIMIT, EXP_POLY, LN2_HI, LN2_LO};
    use super::Lanes;

    impl Lanes for __m256 {
        const N: usize = 8;
        #[inline(always)]
        unsafe fn splat(v: f32) -> Self {
            // SAFETY: the trait's contract: the CPU supports these instructions; pointers are
            // valid for the lanes read or written.
            unsafe { _mm256_set1_ps(v) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            // SAFETY: the trait's contract: the CPU supports these instructions; pointers are
            // valid for the lanes read or written.
            unsafe { _mm256_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            // SAFETY: the trait's contract: the CPU supports these instructions; pointers are
            // valid for the lanes read or written.
            unsafe { _mm256_storeu_ps(p, self) }
        }
        #[inline(always)]
        unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
            // SAFETY: the trait's contract: the CPU supports these instructions; pointers are
            // valid for the lanes read or written.
            unsafe { _mm256_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        unsafe fn add(self, other: Self) -> Self {
            // SAFETY: the trait's contract: the CPU supports these instructions; pointers are
            // valid for the lanes read or written.
            unsafe { _mm256_add_ps(self, other) }
        }
        #[inline(always)]
        unsafe fn relu(self) -> Self {
            // SAFETY: the trait's contract: the CPU supports these instructions; pointers are
            // valid for the lanes read or written.
            unsafe { _mm256_max_ps(self, _mm256_setzero_ps()) }
        }
        #[inline(always)]
        unsafe fn silu(self) -> Self {
            // SAFETY: the trait's contract: the CPU supports these instructions; pointers are
            // valid for the lanes read or written.
            unsafe {
                let x = _mm256_max_ps(self, _mm256_set1_ps(-EXP_LIMIT));
                let t = _mm256_max_ps(
                    _mm256_sub_ps(_mm256_setzero_ps(), x),
                    _mm256_set1_ps(-EXP_LIMIT),
                );
                let n = _mm256_cvtps_epi32(_mm256_mul_ps(t, _mm256_set1_ps(LOG2_E)));
                let nf = _mm256_cvtepi32_ps(n);
                let r = _mm256_fnmadd_ps(nf, _mm256_set1_ps(LN2_HI), t);
                let r = _mm256_fnmadd_ps(nf, _mm256_set1_ps(LN2_LO), r);
                let mut p = _mm256_set1_ps(EXP_POLY[0]);
                for c in &EXP_POLY[1..] {
                    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(*c));
                }
                let p = _mm256_fmadd_ps(
                    _mm256_mul_ps(p, r),
                    r,
                    _mm256_add_ps(r, _mm256_set1_ps(1.0)),
                );
                let scale = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
                    n,
                    _mm256_set1_epi32(127),
                )));
                let e = _mm256_mul_ps(p, scale);
                _mm256_div_ps(x, _mm256_add_ps(e, _mm256_set1_ps(1.0)))
            }
        }
        #[inline(always)]
        unsafe fn load_n(p: *const f32, n: usize) -> Self {
            // SAFETY: the trait's contract: the CPU supports these instructions; pointers are
            // valid for the lanes read or written.
            unsafe { _mm256_maskload_ps(p, lanes_below(n)) }
        }
        #[inline(always)]
        unsafe fn store_n(self, p: *mut f32, n: usize) {
            // SAFETY: the trait's contract: the CPU supports these instructions; pointers are
            // valid for the lanes read or written.
            unsafe { _mm256_maskstore_ps(p, lanes_below(n), self) }
        }
    }

    /// A mask of the first `n` of 8 lanes.
    #[inline(always)]
    unsafe fn lanes_below(n: usize) -> __m256i {
        // SAFETY: the trait's contract: the CPU supports these instructions; pointers are valid
        // for the lanes read or written.
        unsafe {
            _mm256_cmpgt_epi32(
                _mm256_set1_epi32(n as i32),
                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
            )
        }
    }

    impl Lanes for __m512 {
        const N: usize = 16;
        #[inline(always)]
        unsafe fn splat(v: f32) -> Self {
            // SAFETY: the trait's contract: the CPU supports these instructions; pointers are
            // valid for the lanes read or written.
            unsafe { _mm512_set1_ps(v) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            // SAFETY: the trait's contract: the CPU supports these instructions; pointers are
            // valid for the lanes read or written.
            unsafe { _mm512_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            // SAFETY: the trait's contract: the CPU supports these instructions; pointers are
            // valid for the lanes read or written.
            unsafe { _mm512_storeu_ps(p, self) }
        }
        #[inline(always)]
        unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
            // SAFETY: the trait's contract: the CPU supports these instructions; pointers are
            // valid for the lanes read or written.
            unsafe { _mm512_fmadd_ps(a, b, c) }
        }
        #[inline(always)]
        unsafe fn add(self, other: Self) -> Self {
            // SAFETY: the trait's contract: the CPU supports these instructions; pointers are
            // valid for the lanes read or written.
            unsafe { _mm512_add_ps(self, other) }
        }
        #[inline(always)]
        unsafe fn relu(self) -> Self {
            // SAFETY: the trait's contract: the CPU supports these instructions; pointers are
            // valid for the lanes read or written.
            unsafe { _mm512_max_ps(self, _mm512_setzero_ps()) }
        }
        #[inline(always)]
        unsafe fn silu(self) -> Self {
            // SAFETY: the trait's contract: the CPU supports these instructions; pointers are
            // valid for the lanes read or written.
            unsafe {
                let x = _mm512_max_ps(self, _mm512_set1_ps(-EXP_LIMIT));
                let t = _mm512_max_ps(
                    _mm512_sub_ps(_mm512_setzero_ps(), x),
                    _mm512_set1_ps(-EXP_LIMIT),
                );
                let n = _mm512_cvtps_epi32(_mm512_mul_ps(t, _mm512_set1_ps(LOG2_E)));
                let nf = _mm512_cvtepi32_ps(n);
                let r = _mm512_fnmadd_ps(nf, _mm512_set1_ps(LN2_HI), t);
                let r = _mm512_fnmadd_ps(nf, _mm512_set1_ps(LN2_LO), r);
                let mut p = _mm512_set1_ps(EXP_POLY[0]);
                for c in &EXP_POLY[1..] {
                    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c));
                }
                let p = _mm512_fmadd_ps(
                    _mm512_mul_ps(p, r),
                    r,
                    _mm512_add_ps(r, _mm512_set1_ps(1.0)),
                );
                let scale = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(
                    n,
                    _mm512_set1_epi32(127),
                )));
                let e = _mm512_mul_ps(p, scale);
                _mm512_div_ps(x, _mm512_add_ps(e, _mm512_set1_ps(1.0)))
            }
        }
        #[inline(always)]
        unsafe fn load_n(p: *const f32, n: usize) -> Self {
            // SAFETY: the trait's contract: the CPU supports these instructions; pointers are
            // valid for the lanes read or written.
            unsafe { _mm512_maskz_loadu_ps(((1u32 << n) - 1) as __mmask16, p) }
        }
        #[inline(always)]
        unsafe fn store_n(self, p: *mut f32, n: usize) {
            // SAFETY: the trait's contract: the CPU supports these instructions; pointers are
            // valid for the lanes read or written.
            unsafe { _mm512_mask_storeu_ps(p, ((1u32 << n) - 1) as __mmask16, self) }
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod neon {
    use std::arch::aarch64::*;
    use std::f32::consts::LOG2_E;

    use super::super::{EXP_LIMIT, EXP_POLY, LN2_HI, LN2_LO};
    use super::Lanes;

    impl Lanes for float32x4_t {
        const N: usize = 4;
        #[inline(always)]
        unsafe fn splat(v: f32) -> Self {
            // SAFETY: the trait's contract: the CPU supports these instructions; pointers are
            // valid for the lanes read or written.
            unsafe { vdupq_n_f32(v) }
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            // SAFETY: the trait's contract: the CPU supports these instructions; pointers are
            // valid for the lanes read or written.
            unsafe { vld1q_f32(p) }
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            // SAFETY: the trait's contract: the CPU supports these instructions; pointers are
            // valid for the lanes read or written.
            unsafe { vst1q_f32(p, self) }
        }
        #[inline(always)]
        unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
            // SAFETY: the trait's contract: the CPU supports these instructions; pointers are
            // valid for the lanes read or written.
            unsafe { vfmaq_f32(c, a, b) }
        }
        #[inline(always)]
        unsafe fn add(self, other: Self) -> Self {
            // SAFETY: the trait's contract: the CPU supports these instructions; pointers are
            // valid for the lanes read or written.
            unsafe { vaddq_f32(self, other) }
        }
        #[inline(always)]
        unsafe fn relu(self) -> Self {
            // SAFETY: the trait's contract: the CPU supports these instructions; pointers are
            // valid for the lanes read or written.
            unsafe { vmaxq_f32(self, vdupq_n_f32(0.0)) }
        }
        #[inline(always)]
        unsafe fn silu(self) -> Self {
            // SAFETY: the trait's contract: the CPU supports these instructions; pointers are
            // valid for the lanes read or written.
            unsafe {
                let x = vmaxq_f32(self, vdupq_n_f32(-EXP_LIMIT));
                let t = vmaxq_f32(vnegq_f32(x), vdupq_n_f32(-EXP_LIMIT));
                let n = vcvtnq_s32_f32(vmulq_n_f32(t, LOG2_E));
                let nf = vcvtq_f32_s32(n);
                let r = vfmsq_f32(t, nf, vdupq_n_f32(LN2_HI));
                let r = vfmsq_f32(r, nf, vdupq_n_f32(LN2_LO));
                let mut p = vdupq_n_f32(EXP_POLY[0]);
                for c in &EXP_POLY[1..] {
                    p = vfmaq_f32(vdupq_n_f32(*c), p, r);
                }
                let p = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0)), vmulq_f32(p, r), r);
                let scale =
                    vreinterpretq_f32_s32(vshlq_n_s32::<23>(vaddq_s32(n, vdupq_n_s32(127))));
                let e = vmulq_f32(p, scale);
                vdivq_f32(x, vaddq_f32(e, vdupq_n_f32(1.0)))
            }
        }
        #[inline(always)]
        unsafe fn load_n(p: *const f32, n: usize) -> Self {
            let mut v = [0.0f32; 4];
            for (i, lane) in v.iter_mut().enumerate().take(n) {
                // SAFETY: the trait's contract: the CPU supports these instructions; pointers are
                // valid for the lanes read or written.
                *lane = unsafe { *p.add(i) };
            }
            // SAFETY: the trait's contract: the CPU supports these instructions; pointers are
            // valid for the lanes read or written.
            unsafe { vld1q_f32(v.as_ptr()) }
        }
        #[inline(always)]
        unsafe fn store_n(self, p: *mut f32, n: usize) {
            let mut v = [0.0f32; 4];
            // SAFETY: the trait's contract: the CPU supports these instructions; pointers are
            // valid for the lanes read or written.
            unsafe { vst1q_f32(v.as_mut_ptr(), self) };
            for (i, lane) in v.iter().enumerate().take(n) {
                // SAFETY: the trait's contract: the CPU supports these instructions; pointers are
                // valid for the lanes read or written.
                unsafe { *p.add(i) = *lane };
            }
        }
    }
}
