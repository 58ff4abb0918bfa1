//! The few vector operations the SIMD kernels need, over each instruction set's register type, so
//! a kernel is written once and instantiated per instruction set inside a `#[target_feature]`
//! function (where these `#[inline(always)]` wrappers inline to single instructions).

use super::{Act, Isa};

/// Floats per vector of `isa`'s kernels.
pub fn lanes(isa: Isa) -> usize {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => <std::arch::x86_64::__m512 as Lanes>::N,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => <std::arch::x86_64::__m256 as Lanes>::N,
        #[cfg(target_arch = "aarch64")]
        Isa::Baseline => <std::arch::aarch64::float32x4_t as Lanes>::N,
        #[cfg(not(target_arch = "aarch64"))]
        Isa::Baseline => Portable::N,
    }
}

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
    /// Per lane, `other` where it is greater, else `self` (x86 `maxps(other, self)`: a NaN in
    /// `other` never taken; NEON `fmax`: NaN if either is).
    unsafe fn max(self, other: Self) -> Self;
    /// The `2N` values `self` then `next` split: (those at even positions, those at odd ones).
    unsafe fn deinterleave(self, next: Self) -> (Self, Self);
    /// `Act::Silu` per lane, in the same steps.
    unsafe fn silu(self) -> Self;
    /// The logistic sigmoid per lane, in [`super::sigmoid_scalar`]'s steps (SiLU's, with 1
    /// for the numerator).
    unsafe fn sigmoid(self) -> Self;
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

/// Copies `n` floats with vector moves (no `memcpy` call): the last ones as a whole vector that
/// ends where the range ends when `n` is at least a vector, else masked.
///
/// # Safety
/// The CPU must support `V`; both ranges valid for `n` floats.
#[inline(always)]
pub unsafe fn copy<V: Lanes>(src: *const f32, dst: *mut f32, n: usize) {
    #[cfg(target_arch = "aarch64")]
    if n >= 4 {
        // SAFETY: as the caller's (NEON is on every aarch64 CPU).
        return unsafe { copy_neon(src, dst, n) };
    }
    let mut i = 0;
    // SAFETY: as the caller's: `V` is supported, every load and store in bounds (see `body`).
    unsafe {
        while i + V::N <= n {
            V::load(src.add(i)).store(dst.add(i));
            i += V::N;
        }
        if i < n && n >= V::N {
            V::load(src.add(n - V::N)).store(dst.add(n - V::N));
        } else if i < n {
            V::load_n(src.add(i), n - i).store_n(dst.add(i), n - i);
        }
    }
}

/// [`copy`] on NEON for `n ≥ 4`: eight floats a step by two-register loads and stores, then
/// four, then the last four ending where the range ends. LLVM's loop of one vector a step took
/// 1.75 instructions a float (an index, a compare and three adds around each load and store),
/// more than the depthwise layers' products on 32-wide rows.
///
/// # Safety
/// Both ranges valid for `n ≥ 4` floats.
#[cfg(target_arch = "aarch64")]
#[inline(always)]
unsafe fn copy_neon(mut src: *const f32, mut dst: *mut f32, n: usize) {
    use std::arch::aarch64::*;
    // SAFETY: every load and store inside the caller's ranges: `left` floats remain from `src`
    // and `dst`, and the last vector starts at `n − 4 ≥ 0`.
    unsafe {
        let end = (src.add(n - 4), dst.add(n - 4));
        let mut left = n;
        while left >= 8 {
            vst1q_f32_x2(dst, vld1q_f32_x2(src));
            (src, dst, left) = (src.add(8), dst.add(8), left - 8);
        }
        if left >= 4 {
            vst1q_f32(dst, vld1q_f32(src));
            left -= 4;
        }
        if left > 0 {
            vst1q_f32(end.1, vld1q_f32(end.0));
        }
    }
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
    unsafe fn deinterleave(self, next: Self) -> (Self, Self) {
        // Value `k` of the eight is lane `k % 4` of `self` (k < 4) or `next`: no `Vec` (this
        // runs per depthwise row).
        let all = [self.0, next.0];
        let at = |k: usize| all[k / 4][k % 4];
        (
            Portable(std::array::from_fn(|i| at(2 * i))),
            Portable(std::array::from_fn(|i| at(2 * i + 1))),
        )
    }
    #[inline(always)]
    unsafe fn max(self, other: Self) -> Self {
        Portable(std::array::from_fn(|i| {
            if other.0[i] > self.0[i] {
                other.0[i]
            } else {
                self.0[i]
            }
        }))
    }
    #[inline(always)]
    unsafe fn silu(self) -> Self {
        Portable(self.0.map(|v| Act::Silu.apply(v)))
    }
    #[inline(always)]
    unsafe fn sigmoid(self) -> Self {
        Portable(self.0.map(super::sigmoid_scalar))
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

    use super::super::{EXP_LIMIT, LN2, MAGIC, SILU_POLY};
    use super::Lanes;

    /// SiLU (`SILU`: `x / (1 + e^(−x))`, `x` clamped below at −87) or the sigmoid
    /// (`1 / (1 + e^(−x))`) of every lane, in `super::super::silu`'s steps.
    ///
    /// # Safety
    /// The CPU supports the type's instructions.
    #[inline(always)]
    unsafe fn logistic_avx2<const SILU: bool>(v: __m256) -> __m256 {
        // SAFETY: the caller's: the CPU supports these instructions.
        unsafe {
            // `super::super::silu`'s steps; `round` by MAGIC, whose sum's low bits are
            // `n`: shifted to the exponent field and added to `e^s`'s bits, `2^n · e^s`.
            let x = _mm256_max_ps(v, _mm256_set1_ps(-EXP_LIMIT));
            let c = _mm256_min_ps(x, _mm256_set1_ps(EXP_LIMIT));
            let biased = _mm256_fmadd_ps(c, _mm256_set1_ps(-LOG2_E), _mm256_set1_ps(MAGIC));
            let n = _mm256_sub_ps(biased, _mm256_set1_ps(MAGIC));
            let s = _mm256_fnmsub_ps(n, _mm256_set1_ps(LN2), c);
            let mut p = _mm256_set1_ps(SILU_POLY[4]);
            for a in SILU_POLY[..4].iter().rev() {
                p = _mm256_fmadd_ps(p, s, _mm256_set1_ps(*a));
            }
            let p = _mm256_fmadd_ps(p, s, _mm256_set1_ps(1.0));
            let e = _mm256_castsi256_ps(_mm256_add_epi32(
                _mm256_castps_si256(p),
                _mm256_slli_epi32::<23>(_mm256_castps_si256(biased)),
            ));
            let numerator = if SILU { x } else { _mm256_set1_ps(1.0) };
            _mm256_div_ps(numerator, _mm256_add_ps(e, _mm256_set1_ps(1.0)))
        }
    }

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
        unsafe fn max(self, other: Self) -> Self {
            // SAFETY: the trait's contract: the CPU supports these instructions.
            unsafe { _mm256_max_ps(other, self) }
        }
        #[inline(always)]
        unsafe fn deinterleave(self, next: Self) -> (Self, Self) {
            // SAFETY: the trait's contract: the CPU supports these instructions.
            unsafe {
                // Within each 128-bit half, then the halves' 64-bit pairs in order.
                let even = _mm256_shuffle_ps::<0x88>(self, next);
                let odd = _mm256_shuffle_ps::<0xdd>(self, next);
                (
                    _mm256_castpd_ps(_mm256_permute4x64_pd::<0xd8>(_mm256_castps_pd(even))),
                    _mm256_castpd_ps(_mm256_permute4x64_pd::<0xd8>(_mm256_castps_pd(odd))),
                )
            }
        }
        #[inline(always)]
        unsafe fn silu(self) -> Self {
            // SAFETY: the trait's contract.
            unsafe { logistic_avx2::<true>(self) }
        }
        #[inline(always)]
        unsafe fn sigmoid(self) -> Self {
            // SAFETY: the trait's contract.
            unsafe { logistic_avx2::<false>(self) }
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

    /// SiLU (`SILU`: `x / (1 + e^(−x))`, `x` clamped below at −87) or the sigmoid
    /// (`1 / (1 + e^(−x))`) of every lane, in `super::super::silu`'s steps.
    ///
    /// # Safety
    /// The CPU supports the type's instructions.
    #[inline(always)]
    unsafe fn logistic_avx512<const SILU: bool>(v: __m512) -> __m512 {
        // SAFETY: the caller's: the CPU supports these instructions.
        unsafe {
            // `super::super::silu`'s steps; `2^n · e^s` by `vscalefps`, and the quotient
            // from the 14-bit reciprocal and one correction (`q + (x − d·q)/d`, a few 2⁻²⁸
            // off before rounding) instead of a division.
            let x = _mm512_max_ps(v, _mm512_set1_ps(-EXP_LIMIT));
            let c = _mm512_min_ps(x, _mm512_set1_ps(EXP_LIMIT));
            let magic = _mm512_set1_ps(MAGIC);
            let n = _mm512_sub_ps(_mm512_fmadd_ps(c, _mm512_set1_ps(-LOG2_E), magic), magic);
            let s = _mm512_fnmsub_ps(n, _mm512_set1_ps(LN2), c);
            let mut p = _mm512_set1_ps(SILU_POLY[4]);
            for a in SILU_POLY[..4].iter().rev() {
                p = _mm512_fmadd_ps(p, s, _mm512_set1_ps(*a));
            }
            let p = _mm512_fmadd_ps(p, s, _mm512_set1_ps(1.0));
            let d = _mm512_add_ps(_mm512_scalef_ps(p, n), _mm512_set1_ps(1.0));
            let rc = _mm512_rcp14_ps(d);
            let numerator = if SILU { x } else { _mm512_set1_ps(1.0) };
            let q = _mm512_mul_ps(numerator, rc);
            _mm512_fmadd_ps(_mm512_fnmadd_ps(d, q, numerator), rc, q)
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
        unsafe fn max(self, other: Self) -> Self {
            // SAFETY: the trait's contract: the CPU supports these instructions.
            unsafe { _mm512_max_ps(other, self) }
        }
        #[inline(always)]
        unsafe fn deinterleave(self, next: Self) -> (Self, Self) {
            // SAFETY: the trait's contract: the CPU supports these instructions.
            unsafe {
                let even =
                    _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
                let odd =
                    _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
                (
                    _mm512_permutex2var_ps(self, even, next),
                    _mm512_permutex2var_ps(self, odd, next),
                )
            }
        }
        #[inline(always)]
        unsafe fn silu(self) -> Self {
            // SAFETY: the trait's contract.
            unsafe { logistic_avx512::<true>(self) }
        }
        #[inline(always)]
        unsafe fn sigmoid(self) -> Self {
            // SAFETY: the trait's contract.
            unsafe { logistic_avx512::<false>(self) }
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

    use super::super::{EXP_LIMIT, LN2, SILU_POLY};
    use super::Lanes;

    /// SiLU (`SILU`: `x / (1 + e^(−x))`, `x` clamped below at −87) or the sigmoid
    /// (`1 / (1 + e^(−x))`) of every lane, in `super::super::silu`'s steps.
    ///
    /// # Safety
    /// The CPU supports the type's instructions.
    #[inline(always)]
    unsafe fn logistic_neon<const SILU: bool>(v: float32x4_t) -> float32x4_t {
        // SAFETY: the caller's: the CPU supports these instructions.
        unsafe {
            // `super::super::silu`'s steps with `m = −n = round(c · log2 e)` (`fcvtns`)
            // and `r = −s`: the polynomial in `r` with every odd coefficient negated, and
            // `m` taken from the exponent bits.
            let x = vmaxq_f32(v, vdupq_n_f32(-EXP_LIMIT));
            let c = vminq_f32(x, vdupq_n_f32(EXP_LIMIT));
            let m = vcvtnq_s32_f32(vmulq_n_f32(c, LOG2_E));
            let mf = vcvtq_f32_s32(m);
            let r = vfmsq_f32(c, mf, vdupq_n_f32(LN2));
            let odd = |k: usize| {
                if k.is_multiple_of(2) {
                    -SILU_POLY[k]
                } else {
                    SILU_POLY[k]
                }
            };
            let mut p = vdupq_n_f32(odd(4));
            for k in (0..4).rev() {
                p = vfmaq_f32(vdupq_n_f32(odd(k)), p, r);
            }
            let p = vfmaq_f32(vdupq_n_f32(1.0), p, r);
            let e =
                vreinterpretq_f32_s32(vsubq_s32(vreinterpretq_s32_f32(p), vshlq_n_s32::<23>(m)));
            let numerator = if SILU { x } else { vdupq_n_f32(1.0) };
            vdivq_f32(numerator, vaddq_f32(e, vdupq_n_f32(1.0)))
        }
    }

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
        unsafe fn max(self, other: Self) -> Self {
            // SAFETY: the trait's contract: the CPU supports these instructions.
            unsafe { vmaxq_f32(self, other) }
        }
        #[inline(always)]
        unsafe fn deinterleave(self, next: Self) -> (Self, Self) {
            // SAFETY: the trait's contract: the CPU supports these instructions.
            unsafe { (vuzp1q_f32(self, next), vuzp2q_f32(self, next)) }
        }
        #[inline(always)]
        unsafe fn silu(self) -> Self {
            // SAFETY: the trait's contract.
            unsafe { logistic_neon::<true>(self) }
        }
        #[inline(always)]
        unsafe fn sigmoid(self) -> Self {
            // SAFETY: the trait's contract.
            unsafe { logistic_neon::<false>(self) }
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
