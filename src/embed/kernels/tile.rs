//! The register-tile matrix product under the 1×1 and the full convolutions:
//!
//! `y[o][yb + i] = act(bias[o] + Σₖ w[o][k] · x[xb + offsets[k] + i] (+ res[o][yb + i]))`
//! for `i` in one run of contiguous pixels.
//!
//! `offsets` says where row `k` of the right-hand side starts: `k · pixels` for a 1×1
//! convolution (the input planes as they are), or a tap of a phase-split padded image for a
//! strided `kh × kw` convolution (see `conv`), so neither needs packing nor im2col. The run is
//! cut into `OB` output channels × `NV` vectors tiles held in registers while `k` streams; bias,
//! residual and the activation (ReLU, SiLU) are applied as a tile is stored.
//!
//! Tiles per instruction set (sums in registers + input vectors): AVX-512 8×32 (16 + 2 zmm),
//! AVX2 6×16 (12 + 2 ymm), NEON 8×8 (16 + 2 q), portable 4×8 (eight 4-lane arrays); outputs
//! left over by those are done in tiles of 4, 2 and 1. (AVX2 4×24, which would leave nothing
//! over at OSNet's widths, measured 1.4× slower than 6×16: spills.)

use super::simd::Lanes;
#[cfg(not(target_arch = "aarch64"))]
use super::simd::Portable;
use super::{Act, Isa};

/// How a vector type takes the products of a tile: one `k` at a time, each weight broadcast
/// (AVX-512 folds the broadcast into the FMA's memory operand, AVX2 loads it with
/// `vbroadcastss`), or — NEON, whose FMA
/// can take its multiplier from a lane of another register — four `k` at a time, with one load
/// of `w[j][k..k+4]` per output row instead of four broadcasts: 20 instructions per `k` of an
/// 8×8 tile instead of 26.
trait Accumulate: Lanes {
    /// Adds `w[j][k] · x[offsets[k] + v·N + i]` to `acc[j][v]` for a prefix `0..done` of the `k`s
    /// (`w` rows `k_len` apart) and returns `done`; the caller does the rest one by one.
    ///
    /// # Safety
    /// As `tile`: every access in bounds, the type's instructions available.
    #[inline(always)]
    unsafe fn accumulate_by_four<const OB: usize, const NV: usize>(
        _acc: &mut [[Self; NV]; OB],
        _w: *const f32,
        _k_len: usize,
        _x: *const f32,
        _offsets: *const usize,
    ) -> usize {
        0
    }
}

#[cfg(not(target_arch = "aarch64"))]
impl Accumulate for Portable {}

#[cfg(target_arch = "x86_64")]
impl Accumulate for std::arch::x86_64::__m256 {}

#[cfg(target_arch = "x86_64")]
impl Accumulate for std::arch::x86_64::__m512 {}

#[cfg(target_arch = "aarch64")]
impl Accumulate for std::arch::aarch64::float32x4_t {
    #[inline(always)]
    unsafe fn accumulate_by_four<const OB: usize, const NV: usize>(
        acc: &mut [[Self; NV]; OB],
        w: *const f32,
        k_len: usize,
        x: *const f32,
        offsets: *const usize,
    ) -> usize {
        use std::arch::aarch64::{vfmaq_laneq_f32, vld1q_f32};
        let blocks = k_len / 4 * 4;
        let mut k = 0;
        // SAFETY: `k + 3 < k_len`: the rows and weights the tile reads one by one.
        unsafe {
            while k < blocks {
                let xs: [[Self; NV]; 4] = std::array::from_fn(|l| {
                    let row = x.add(*offsets.add(k + l));
                    std::array::from_fn(|v| vld1q_f32(row.add(v * 4)))
                });
                for (j, row) in acc.iter_mut().enumerate() {
                    let wj = vld1q_f32(w.add(j * k_len + k));
                    for (v, a) in row.iter_mut().enumerate() {
                        *a = vfmaq_laneq_f32::<0>(*a, xs[0][v], wj);
                        *a = vfmaq_laneq_f32::<1>(*a, xs[1][v], wj);
                        *a = vfmaq_laneq_f32::<2>(*a, xs[2][v], wj);
                        *a = vfmaq_laneq_f32::<3>(*a, xs[3][v], wj);
                    }
                }
                k += 4;
            }
        }
        blocks
    }
}

/// The operands of a product; see the module docs.
pub(super) struct Product<'a> {
    /// `outputs × k`, row-major.
    pub weights: &'a [f32],
    /// One per output.
    pub bias: &'a [f32],
    /// One per `k`: where that row of `x` starts, relative to a run's base.
    pub offsets: &'a [usize],
    pub x: &'a [f32],
    /// Distance between output channels in `y` (and `res`).
    pub y_stride: usize,
    pub res: Option<&'a [f32]>,
    pub act: Act,
}

impl Product<'_> {
    fn outputs(&self) -> usize {
        self.bias.len()
    }

    /// All outputs for the `len` pixels of one run: `x` from `xb`, `y` from `yb`.
    ///
    /// Panics if any access would fall outside `x`, `y` or `res` (checked once, up front).
    pub fn run(&self, isa: Isa, xb: usize, yb: usize, len: usize, y: &mut [f32]) {
        let k_len = self.offsets.len();
        assert_eq!(
            self.weights.len(),
            self.outputs() * k_len,
            "weights are outputs × k"
        );
        if len == 0 || self.outputs() == 0 {
            return;
        }
        let last_x = xb + self.offsets.iter().max().copied().unwrap_or(0) + len;
        assert!(k_len == 0 || last_x <= self.x.len(), "x run out of bounds");
        let last_y = (self.outputs() - 1) * self.y_stride + yb + len;
        assert!(last_y <= y.len(), "y run out of bounds");
        if let Some(r) = self.res {
            assert!(last_y <= r.len(), "residual run out of bounds");
        }
        assert!(isa.is_available(), "{isa} is not available on this CPU");
        let y = y.as_mut_ptr();
        // SAFETY: bounds checked above; the instruction set is available.
        unsafe {
            match isa {
                #[cfg(target_arch = "aarch64")]
                Isa::Baseline => {
                    drive::<std::arch::aarch64::float32x4_t, 8, 2>(self, xb, yb, len, y)
                }
                #[cfg(not(target_arch = "aarch64"))]
                Isa::Baseline => drive::<Portable, 4, 2>(self, xb, yb, len, y),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2Fma => x86::avx2(self, xb, yb, len, y),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => x86::avx512(self, xb, yb, len, y),
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{__m256, __m512};

    use super::{Product, drive};

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn avx2(p: &Product, xb: usize, yb: usize, len: usize, y: *mut f32) {
        // SAFETY: forwarded from `Product::run`.
        unsafe { drive::<__m256, 6, 2>(p, xb, yb, len, y) }
    }

    #[target_feature(enable = "avx512f,fma")]
    pub(super) unsafe fn avx512(p: &Product, xb: usize, yb: usize, len: usize, y: *mut f32) {
        // SAFETY: forwarded from `Product::run`.
        unsafe { drive::<__m512, 8, 2>(p, xb, yb, len, y) }
    }
}

/// The run's tiles with SiLU (`p.act`) or without, compiled apart so that its code and constants
/// stay out of the other tiles (a run-time choice among three activations per stored vector cost
/// OSNet x0.25 11% more instructions on cortex-a72).
///
/// # Safety
/// As `Product::run` checked: every access in bounds, `V` supported.
#[inline(always)]
unsafe fn drive<V: Accumulate, const OB: usize, const NV: usize>(
    p: &Product,
    xb: usize,
    yb: usize,
    len: usize,
    y: *mut f32,
) {
    // SAFETY: forwarded.
    unsafe {
        match p.act {
            Act::Silu => tiles::<V, OB, NV, true>(p, xb, yb, len, y),
            _ => tiles::<V, OB, NV, false>(p, xb, yb, len, y),
        }
    }
}

/// Full `OB × NV` tiles, then single-vector tiles, then the last pixels as one vector that
/// overlaps the stored ones; one pixel at a time only in runs shorter than a vector.
///
/// # Safety
/// As `drive`.
#[inline(always)]
unsafe fn tiles<V: Accumulate, const OB: usize, const NV: usize, const SILU: bool>(
    p: &Product,
    xb: usize,
    yb: usize,
    len: usize,
    y: *mut f32,
) {
    let outputs = p.outputs();
    let full_o = outputs / OB * OB;
    let mut i = 0;
    // SAFETY: as the caller's: `Product::run` checked the bounds and the instruction set.
    unsafe {
        while i + NV * V::N <= len {
            for o0 in (0..full_o).step_by(OB) {
                tile::<V, OB, NV, SILU>(p, o0, xb + i, yb + i, y);
            }
            rest::<V, NV, SILU>(p, full_o, xb + i, yb + i, y);
            i += NV * V::N;
        }
        while i + V::N <= len {
            for o0 in (0..full_o).step_by(OB) {
                tile::<V, OB, 1, SILU>(p, o0, xb + i, yb + i, y);
            }
            rest::<V, 1, SILU>(p, full_o, xb + i, yb + i, y);
            i += V::N;
        }
        if i < len && len >= V::N {
            // The last pixels as one vector that ends where the run ends: it overlaps pixels
            // stored above and stores them again with the same sums (each output's `k`s in the
            // same order), instead of a scalar tail for every output. A stem whose rows are not
            // a whole number of vectors (40 pixels at a 160×80 input) spent 14× its time there.
            let last = len - V::N;
            for o0 in (0..full_o).step_by(OB) {
                tile::<V, OB, 1, SILU>(p, o0, xb + last, yb + last, y);
            }
            rest::<V, 1, SILU>(p, full_o, xb + last, yb + last, y);
            i = len;
        }
        while i < len {
            for o in 0..outputs {
                single(p, o, xb + i, yb + i, y);
            }
            i += 1;
        }
    }
}

/// The outputs from `o0` on that do not fill an `OB` tile, in tiles of 4, 2 and 1: one output
/// at a time reloads the pixels for every output, and AVX2's 6-output tiles leave 4 of 16 and
/// 64 and 2 of 32 and 128 outputs (OSNet's widths) over. Measured on AVX2 (AMD EPYC, our
/// default model, per crop): 2.06–2.25 ms with single-output tails, 1.77–1.84 ms so. The sums
/// are the same either way: each output's `k`s are added in the same order whatever the tile.
#[inline(always)]
unsafe fn rest<V: Accumulate, const NV: usize, const SILU: bool>(
    p: &Product,
    mut o0: usize,
    xb: usize,
    yb: usize,
    y: *mut f32,
) {
    let outputs = p.outputs();
    // SAFETY: as the caller's: `Product::run` checked the bounds and the instruction set.
    unsafe {
        while outputs - o0 >= 4 {
            tile::<V, 4, NV, SILU>(p, o0, xb, yb, y);
            o0 += 4;
        }
        if outputs - o0 >= 2 {
            tile::<V, 2, NV, SILU>(p, o0, xb, yb, y);
            o0 += 2;
        }
        if o0 < outputs {
            tile::<V, 1, NV, SILU>(p, o0, xb, yb, y);
        }
    }
}

/// Outputs `o0..o0+OB` × pixels `xb..xb + NV·V::N`.
#[inline(always)]
unsafe fn tile<V: Accumulate, const OB: usize, const NV: usize, const SILU: bool>(
    p: &Product,
    o0: usize,
    xb: usize,
    yb: usize,
    y: *mut f32,
) {
    let k_len = p.offsets.len();
    let (w, x, offsets) = (p.weights.as_ptr(), p.x.as_ptr(), p.offsets.as_ptr());
    // SAFETY: as the caller's: `Product::run` checked the bounds and the instruction set.
    unsafe {
        let mut acc = [[V::splat(0.0); NV]; OB];
        for (j, row) in acc.iter_mut().enumerate() {
            *row = [V::splat(*p.bias.get_unchecked(o0 + j)); NV];
        }
        let w = w.add(o0 * k_len);
        let done = V::accumulate_by_four(&mut acc, w, k_len, x.add(xb), offsets);
        for k in done..k_len {
            let xk = x.add(xb + *offsets.add(k));
            let xv: [V; NV] = std::array::from_fn(|v| V::load(xk.add(v * V::N)));
            for (j, row) in acc.iter_mut().enumerate() {
                let wjk = V::splat(*w.add(j * k_len + k));
                for (a, xv) in row.iter_mut().zip(&xv) {
                    *a = V::fma(wjk, *xv, *a);
                }
            }
        }
        for (j, row) in acc.iter().enumerate() {
            let at = (o0 + j) * p.y_stride + yb;
            for (v, a) in row.iter().enumerate() {
                let mut a = *a;
                if let Some(r) = p.res {
                    a = a.add(V::load(r.as_ptr().add(at + v * V::N)));
                }
                a.activate::<SILU>(p.act).store(y.add(at + v * V::N));
            }
        }
    }
}

/// One output, one pixel.
#[inline(always)]
unsafe fn single(p: &Product, o: usize, xb: usize, yb: usize, y: *mut f32) {
    let k_len = p.offsets.len();
    // SAFETY: as the caller's: `Product::run` checked the bounds and the instruction set.
    unsafe {
        let mut acc = *p.bias.get_unchecked(o);
        for k in 0..k_len {
            acc += p.weights.get_unchecked(o * k_len + k)
                * p.x.get_unchecked(xb + *p.offsets.get_unchecked(k));
        }
        let at = o * p.y_stride + yb;
        if let Some(r) = p.res {
            acc += r.get_unchecked(at);
        }
        *y.add(at) = p.act.apply(acc);
    }
}
