//! Depthwise 3×3 convolution, stride 1, zero padding 1 (OSNet's `LightConv3x3`, SCL-net's dw
//! layers), with the folded batch-norm as a per-channel bias and an activation (ReLU, SiLU);
//! stride 2 (YOLOX) as its output subsampled ([`subsample2`]).
//!
//! Each channel plane is copied once into a zero-bordered `(H+2) × (W+2)` scratch plane, so that
//! every tap of an output row is a plain (unaligned) vector load. Output rows are computed four
//! at a time (four independent chains of nine FMAs, not one waiting on the FMA latency), a row's
//! last vector written with a lane mask when the width is not a multiple of the vector (OSNet's
//! late stages are 8 or 4 pixels wide, less than one AVX-512 register). Copies go through masked
//! vector moves too: `copy_from_slice` calls `memcpy` per row, which costs more than the row.

use super::simd::Lanes;
#[cfg(not(target_arch = "aarch64"))]
use super::simd::Portable;
use super::{Act, Isa};

/// The widest vector (AVX-512: 16 floats).
const MAX_LANES: usize = 16;

/// One depthwise layer: `channels` planes of `height × width`, weights `[channels][3][3]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shape {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl Shape {
    fn plane(&self) -> usize {
        self.height * self.width
    }

    /// Scratch floats one call needs: the padded plane, and one vector of slack that the last
    /// row's masked-off lanes may read.
    pub fn scratch_len(&self) -> usize {
        (self.height + 2) * (self.width + 2) + MAX_LANES
    }
}

/// `out[n][c] = act(bias[c] + Σ weights[c] ⋆ input[n][c])` for `batch` images laid out
/// `[batch][channels][height][width]`. `scratch` grows to [`Shape::scratch_len`] once.
#[allow(clippy::too_many_arguments)]
pub fn depthwise3x3(
    isa: Isa,
    shape: Shape,
    batch: usize,
    input: &[f32],
    weights: &[f32],
    bias: &[f32],
    act: Act,
    out: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    let len = batch * shape.channels * shape.plane();
    assert_eq!(input.len(), len, "depthwise input length");
    assert_eq!(out.len(), len, "depthwise output length");
    assert_eq!(
        weights.len(),
        shape.channels * 9,
        "depthwise weights length"
    );
    assert_eq!(bias.len(), shape.channels, "depthwise bias length");
    assert!(isa.is_available(), "{isa} is not available on this CPU");
    if scratch.len() < shape.scratch_len() {
        scratch.resize(shape.scratch_len(), 0.0);
    }
    let args = Args {
        shape,
        batch,
        input,
        weights,
        bias,
        act,
    };
    // SAFETY: `is_available` checked that the CPU has the features each copy uses.
    match isa {
        #[cfg(target_arch = "aarch64")]
        Isa::Baseline => unsafe { body::<std::arch::aarch64::float32x4_t>(&args, out, scratch) },
        #[cfg(not(target_arch = "aarch64"))]
        Isa::Baseline => unsafe { body::<Portable>(&args, out, scratch) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => unsafe { x86::avx2(&args, out, scratch) },
        // Planes of 8 or fewer columns fill half an AVX-512 vector: 8-lane AVX2 does them faster
        // (2.7 vs 3.6 µs for OSNet x0.25's 32×16×8 layer).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if shape.width <= 8 => unsafe { x86::avx2(&args, out, scratch) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::avx512(&args, out, scratch) },
    }
}

struct Args<'a> {
    shape: Shape,
    batch: usize,
    input: &'a [f32],
    weights: &'a [f32],
    bias: &'a [f32],
    act: Act,
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{__m256, __m512};

    use super::{Args, body};

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn avx2(args: &Args, out: &mut [f32], scratch: &mut [f32]) {
        // SAFETY: the caller checked AVX2 + FMA.
        unsafe { body::<__m256>(args, out, scratch) }
    }

    #[target_feature(enable = "avx512f,fma")]
    pub(super) unsafe fn avx512(args: &Args, out: &mut [f32], scratch: &mut [f32]) {
        // SAFETY: the caller checked AVX-512F.
        unsafe { body::<__m512>(args, out, scratch) }
    }
}

/// # Safety
/// The CPU must support `V`.
#[inline(always)]
unsafe fn body<V: Lanes>(args: &Args, out: &mut [f32], scratch: &mut [f32]) {
    let Shape {
        channels,
        height: h,
        width: w,
    } = args.shape;
    let pw = w + 2;
    let padded = &mut scratch[..args.shape.scratch_len()];
    padded.fill(0.0);
    let plane = h * w;
    for (image, (src, dst)) in args
        .input
        .chunks_exact(plane)
        .zip(out.chunks_exact_mut(plane))
        .enumerate()
    {
        let c = image % channels;
        // SAFETY (this block): `V` is supported; row copies stay inside `src` and the padded
        // interior; tap loads reach at most (h + 1)·pw + w + 1 + N - 1 < the scratch length;
        // stores stay inside `dst` rows.
        unsafe {
            for (y, row) in src.chunks_exact(w).enumerate() {
                copy::<V>(row.as_ptr(), padded.as_mut_ptr().add((y + 1) * pw + 1), w);
            }
            let k: &[f32; 9] = args.weights[c * 9..][..9].try_into().expect("9 taps");
            let taps: [usize; 9] = [0, 1, 2, pw, pw + 1, pw + 2, 2 * pw, 2 * pw + 1, 2 * pw + 2];
            let kv: [V; 9] = std::array::from_fn(|t| V::splat(k[t]));
            let rows = Rows {
                padded: padded.as_ptr(),
                dst: dst.as_mut_ptr(),
                pw,
                w,
                kv,
                taps,
                bias: V::splat(args.bias[c]),
                act: args.act,
            };
            // SiLU compiled apart (see `Lanes::activate`).
            if args.act == Act::Silu {
                rows.all::<true>(h);
            } else {
                rows.all::<false>(h);
            }
        }
    }
    debug_assert_eq!(args.input.len() / plane, args.batch * channels);
}

/// One plane's operands for [`Rows::compute`].
struct Rows<V> {
    padded: *const f32,
    dst: *mut f32,
    pw: usize,
    w: usize,
    kv: [V; 9],
    taps: [usize; 9],
    bias: V,
    act: Act,
}

impl<V: Lanes> Rows<V> {
    /// Every output row of the plane, four at a time.
    ///
    /// # Safety
    /// As in `body`.
    #[inline(always)]
    unsafe fn all<const SILU: bool>(&self, h: usize) {
        let mut y = 0;
        // SAFETY: as the caller's.
        unsafe {
            while y + 4 <= h {
                self.compute::<4, SILU>(y);
                y += 4;
            }
            while y < h {
                self.compute::<1, SILU>(y);
                y += 1;
            }
        }
    }

    /// Output rows `y..y+R`, all vectors of each.
    ///
    /// # Safety
    /// As in `body`.
    #[inline(always)]
    unsafe fn compute<const R: usize, const SILU: bool>(&self, y: usize) {
        let mut x = 0;
        while x < self.w {
            let n = (self.w - x).min(V::N);
            unsafe {
                let mut acc = [self.bias; R];
                for t in 0..9 {
                    for (u, a) in acc.iter_mut().enumerate() {
                        let at = self.padded.add((y + u) * self.pw + x + self.taps[t]);
                        *a = V::fma(self.kv[t], V::load(at), *a);
                    }
                }
                for (u, a) in acc.iter().enumerate() {
                    let a = a.activate::<SILU>(self.act);
                    let to = self.dst.add((y + u) * self.w + x);
                    if n == V::N {
                        a.store(to);
                    } else {
                        a.store_n(to, n);
                    }
                }
            }
            x += V::N;
        }
    }
}

/// Copies `n` floats with vector moves and a masked tail (no `memcpy` call).
///
/// # Safety
/// The CPU must support `V`; both ranges valid for `n` floats.
#[inline(always)]
unsafe fn copy<V: Lanes>(src: *const f32, dst: *mut f32, n: usize) {
    let mut i = 0;
    unsafe {
        while i + V::N <= n {
            V::load(src.add(i)).store(dst.add(i));
            i += V::N;
        }
        if i < n {
            V::load_n(src.add(i), n - i).store_n(dst.add(i), n - i);
        }
    }
}

/// Output height and width of a 3×3, padding-1 convolution with `stride` over `h × w`.
pub fn output_size(h: usize, w: usize, stride: usize) -> (usize, usize) {
    let out = |n: usize| n.saturating_sub(1) / stride.max(1) + 1;
    (out(h), out(w))
}

/// Every other row and column of `full` (planes of `h × w`) from the first: a stride-1 3×3
/// padding-1 output made into the stride-2 one (whose `(y, x)` is centred where the stride-1
/// output's `(2y, 2x)` is). `out` holds as many planes of `output_size(h, w, 2)`.
pub fn subsample2(full: &[f32], h: usize, w: usize, out: &mut [f32]) {
    let (oh, ow) = output_size(h, w, 2);
    assert_eq!(full.len() % (h * w), 0, "subsample2: whole planes");
    assert_eq!(
        full.len() / (h * w) * oh * ow,
        out.len(),
        "subsample2: output length"
    );
    for (plane, out) in full.chunks_exact(h * w).zip(out.chunks_exact_mut(oh * ow)) {
        for (oy, row) in out.chunks_exact_mut(ow).enumerate() {
            let src = &plane[2 * oy * w..][..w];
            for (ox, v) in row.iter_mut().enumerate() {
                *v = src[2 * ox];
            }
        }
    }
}

/// The naive reference: direct loops with bounds tests, in `f64`.
pub fn reference(
    shape: Shape,
    batch: usize,
    input: &[f32],
    weights: &[f32],
    bias: &[f32],
    act: Act,
) -> (Vec<f32>, Vec<f32>) {
    let Shape {
        channels,
        height: h,
        width: w,
    } = shape;
    let mut out = vec![0.0; input.len()];
    let mut magnitude = vec![0.0; input.len()];
    for n in 0..batch {
        for c in 0..channels {
            let base = (n * channels + c) * h * w;
            for y in 0..h {
                for x in 0..w {
                    let mut acc = f64::from(bias[c]);
                    let mut mag = f64::from(bias[c]).abs();
                    for dy in 0..3 {
                        for dx in 0..3 {
                            let (sy, sx) =
                                (y as isize + dy as isize - 1, x as isize + dx as isize - 1);
                            if sy < 0 || sx < 0 || sy >= h as isize || sx >= w as isize {
                                continue;
                            }
                            let p = f64::from(weights[c * 9 + dy * 3 + dx])
                                * f64::from(input[base + sy as usize * w + sx as usize]);
                            acc += p;
                            mag += p.abs();
                        }
                    }
                    let v = act.reference(acc);
                    out[base + y * w + x] = v as f32;
                    magnitude[base + y * w + x] = mag as f32;
                }
            }
        }
    }
    (out, magnitude)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{Rng, assert_close, assert_close_after};
    use super::*;

    fn check(isa: Isa, shape: Shape, batch: usize, act: Act, rng: &mut Rng) {
        let len = batch * shape.channels * shape.height * shape.width;
        let input = rng.vec(len);
        let weights = rng.vec(shape.channels * 9);
        let bias = rng.vec(shape.channels);
        let (want, magnitude) = reference(shape, batch, &input, &weights, &bias, act);
        let mut got = vec![f32::NAN; len];
        let mut scratch = Vec::new();
        depthwise3x3(
            isa,
            shape,
            batch,
            &input,
            &weights,
            &bias,
            act,
            &mut got,
            &mut scratch,
        );
        assert_close_after(
            act,
            &got,
            &want,
            &magnitude,
            10,
            &format!("{isa} {shape:?} batch {batch}"),
        );
    }

    #[test]
    fn every_isa_matches_the_reference_on_random_shapes() {
        let mut rng = Rng::new(0x5eed_d3d3);
        for isa in Isa::available() {
            // The shapes of the models we ship and the references, then random ones.
            for (c, h, w) in [
                (16, 64, 32),
                (24, 32, 16),
                (32, 16, 8),
                (8, 8, 4),
                (3, 1, 1),
            ] {
                check(
                    isa,
                    Shape {
                        channels: c,
                        height: h,
                        width: w,
                    },
                    1,
                    Act::Relu,
                    &mut rng,
                );
            }
            for _ in 0..60 {
                let shape = Shape {
                    channels: 1 + rng.below(40),
                    height: 1 + rng.below(40),
                    width: 1 + rng.below(40),
                };
                let batch = 1 + rng.below(3);
                let act = super::super::test_support::act(&mut rng);
                check(isa, shape, batch, act, &mut rng);
            }
        }
    }

    /// Stride 2 as the op makes it (the stride-1 kernel, then `subsample2`) against a direct
    /// stride-2 convolution, on odd and even sizes down to 1×1.
    #[test]
    fn stride_two_is_the_subsampled_stride_one() {
        let mut rng = Rng::new(0x52);
        for (h, w) in [(1, 1), (2, 3), (5, 4), (7, 9), (8, 8), (13, 6)] {
            let shape = Shape {
                channels: 3,
                height: h,
                width: w,
            };
            let input = rng.vec(3 * h * w);
            let weights = rng.vec(27);
            let bias = rng.vec(3);
            let (oh, ow) = output_size(h, w, 2);
            assert_eq!((oh, ow), (h.div_ceil(2), w.div_ceil(2)));
            assert_eq!(output_size(h, w, 1), (h, w));
            let mut full = vec![0.0; input.len()];
            let mut scratch = Vec::new();
            let isa = Isa::detect();
            depthwise3x3(
                isa,
                shape,
                1,
                &input,
                &weights,
                &bias,
                Act::Relu,
                &mut full,
                &mut scratch,
            );
            let mut got = vec![f32::NAN; 3 * oh * ow];
            subsample2(&full, h, w, &mut got);
            for c in 0..3 {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut want = f64::from(bias[c]);
                        for dy in 0..3 {
                            for dx in 0..3 {
                                let (y, x) = (2 * oy + dy, 2 * ox + dx);
                                if (1..=h).contains(&y) && (1..=w).contains(&x) {
                                    want += f64::from(weights[c * 9 + dy * 3 + dx])
                                        * f64::from(input[c * h * w + (y - 1) * w + x - 1]);
                                }
                            }
                        }
                        let got = f64::from(got[(c * oh + oy) * ow + ox]);
                        assert!(
                            (got - want.max(0.0)).abs() < 1e-5,
                            "{h}×{w} c{c} ({oy}, {ox}): {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn scratch_from_a_larger_layer_is_reused_with_clean_borders() {
        let mut rng = Rng::new(7);
        let isa = Isa::detect();
        let mut scratch = vec![f32::NAN; 10_000];
        let shape = Shape {
            channels: 2,
            height: 5,
            width: 3,
        };
        let input = rng.vec(30);
        let (weights, bias) = (rng.vec(18), rng.vec(2));
        let mut got = vec![0.0; 30];
        depthwise3x3(
            isa,
            shape,
            1,
            &input,
            &weights,
            &bias,
            Act::Identity,
            &mut got,
            &mut scratch,
        );
        let (want, magnitude) = reference(shape, 1, &input, &weights, &bias, Act::Identity);
        assert_close(&got, &want, &magnitude, 10, "dirty scratch");
    }
}
