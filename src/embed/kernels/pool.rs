//! Max and average pooling over NCHW planes (OSNet's 3×3/2 max pool after the stem and its 2×2/2
//! average pools between stages, YOLOX's SPP).
//!
//! Each output row first reduces its `kh` input rows column by column into one row (a vertical
//! pass over contiguous memory, which vectorises), then reduces `kw` neighbours of that row per
//! output pixel; stride-1 max pools (YOLOX's SPP) do the same in passes over whole planes.
//! Padding never contributes to a max; for an average it counts in the divisor only with
//! `count_include_pad` (ONNX's attribute).

use super::Isa;
#[cfg(not(target_arch = "aarch64"))]
use super::simd::Portable;
use super::simd::{Lanes, copy};

/// What to compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reduce {
    Max,
    Mean { count_include_pad: bool },
}

/// One layer's geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shape {
    pub height: usize,
    pub width: usize,
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    /// Padding (top, left, bottom, right).
    pub padding: (usize, usize, usize, usize),
}

impl Shape {
    /// Output (height, width), floor mode; `None` if the window does not fit.
    pub fn output(&self) -> Option<(usize, usize)> {
        let (t, l, b, r) = self.padding;
        let (hp, wp) = (self.height + t + b, self.width + l + r);
        let (kh, kw) = self.kernel;
        let (sy, sx) = self.stride;
        (sy > 0 && sx > 0 && kh > 0 && kw > 0 && hp >= kh && wp >= kw)
            .then(|| ((hp - kh) / sy + 1, (wp - kw) / sx + 1))
    }
}

/// Pools every `height × width` plane of `input` into `out` (`[planes][oh][ow]`). `row` is a
/// scratch row, grown once. The same code compiled for AVX2 where `isa` has it (LLVM vectorises
/// both passes there, the horizontal one of the usual stride-2 windows too), else for the
/// baseline; each output is reduced in the same order on every one, so the results are the
/// same.
pub fn pool(
    isa: Isa,
    shape: Shape,
    reduce: Reduce,
    input: &[f32],
    out: &mut [f32],
    row: &mut Vec<f32>,
) {
    let (oh, ow) = shape.output().expect("the window fits the padded input");
    let (h, w) = (shape.height, shape.width);
    assert!(h * w > 0, "empty pooling input");
    assert_eq!(input.len() % (h * w), 0, "pool input length");
    assert_eq!(
        out.len(),
        input.len() / (h * w) * oh * ow,
        "pool output length"
    );
    assert!(isa.is_available(), "{isa} not on this CPU");
    let need = scratch_len(shape, reduce);
    if row.len() < need {
        row.resize(need, 0.0);
    }
    match isa {
        // SAFETY: the CPU has AVX2 and FMA (checked above; AVX-512 implies them). AVX-512's
        // own copy ran the stem's max pool at half this one's speed (its rows are 40 floats).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma | Isa::Avx512 => unsafe { x86::avx2(shape, reduce, input, out, row) },
        // SAFETY: NEON is part of aarch64.
        #[cfg(target_arch = "aarch64")]
        Isa::Baseline => unsafe {
            body::<std::arch::aarch64::float32x4_t>(shape, reduce, input, out, row)
        },
        // SAFETY: the portable lanes need nothing.
        #[cfg(not(target_arch = "aarch64"))]
        Isa::Baseline => unsafe { body::<Portable>(shape, reduce, input, out, row) },
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Reduce, Shape, body};

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn avx2(
        shape: Shape,
        reduce: Reduce,
        input: &[f32],
        out: &mut [f32],
        row: &mut [f32],
    ) {
        // SAFETY: the caller checked AVX2.
        unsafe { body::<std::arch::x86_64::__m256>(shape, reduce, input, out, row) }
    }
}

/// [`pool`]'s work, once the lengths are checked and `row` holds the scratch.
///
/// # Safety
/// The CPU supports `V`.
#[inline(always)]
unsafe fn body<V: Lanes>(
    shape: Shape,
    reduce: Reduce,
    input: &[f32],
    out: &mut [f32],
    row: &mut [f32],
) {
    let (oh, ow) = shape.output().expect("the window fits the padded input");
    let (h, w) = (shape.height, shape.width);
    if matches!(reduce, Reduce::Mean { .. })
        && (shape.kernel, shape.stride, shape.padding) == ((2, 2), (2, 2), (0, 0, 0, 0))
    {
        // OSNet's 2×2/2 average pools: straight from the two input rows, the sums in the order
        // below (vertical, then horizontal; no padding, so the divisor is 4 either way).
        for (plane, dst) in input.chunks_exact(h * w).zip(out.chunks_exact_mut(oh * ow)) {
            for (oy, dst_row) in dst.chunks_exact_mut(ow).enumerate() {
                let r0 = &plane[2 * oy * w..][..2 * ow];
                let r1 = &plane[(2 * oy + 1) * w..][..2 * ow];
                for ((d, a), b) in dst_row
                    .iter_mut()
                    .zip(r0.chunks_exact(2))
                    .zip(r1.chunks_exact(2))
                {
                    *d = ((a[0] + b[0]) + (a[1] + b[1])) * 0.25;
                }
            }
        }
        return;
    }
    if reduce == Reduce::Max && shape.stride == (1, 1) {
        // SAFETY: `V` is supported (the caller's).
        return unsafe { max_stride1::<V>(shape, input, out, row) };
    }
    let (kh, kw) = shape.kernel;
    let (sy, sx) = shape.stride;
    let (t, l, _, r) = shape.padding;
    // The reduced row with its horizontal padding, so every window is a plain slice.
    let wp = w + l + r;
    let padded = &mut row[..wp];
    let pad_value = match reduce {
        Reduce::Max => f32::NEG_INFINITY,
        Reduce::Mean { .. } => 0.0,
    };
    padded[..l].fill(pad_value);
    padded[l + w..].fill(pad_value);
    for (plane, dst) in input.chunks_exact(h * w).zip(out.chunks_exact_mut(oh * ow)) {
        for (oy, dst_row) in dst.chunks_exact_mut(ow).enumerate() {
            // Input rows of this window, clipped to the image.
            let top = (oy * sy).saturating_sub(t);
            let bottom = (oy * sy + kh).saturating_sub(t).min(h);
            let inner = &mut padded[l..l + w];
            inner.copy_from_slice(&plane[top * w..][..w]);
            for src in plane[(top + 1) * w..bottom * w].chunks_exact(w) {
                match reduce {
                    Reduce::Max => max_into(inner, src),
                    Reduce::Mean { .. } => {
                        for (a, &b) in inner.iter_mut().zip(src) {
                            *a += b;
                        }
                    }
                }
            }
            let rows = bottom - top;
            match (kw, sx) {
                (2, 2) => horizontal::<2, 2>(padded, dst_row, reduce, shape, rows),
                (3, 2) => horizontal::<3, 2>(padded, dst_row, reduce, shape, rows),
                (2, _) => horizontal::<2, 0>(padded, dst_row, reduce, shape, rows),
                (3, _) => horizontal::<3, 0>(padded, dst_row, reduce, shape, rows),
                _ => horizontal::<0, 0>(padded, dst_row, reduce, shape, rows),
            }
        }
    }
}

/// The horizontal pass over one reduced, padded row; `KW` and `SX` are the window width and
/// stride when they are compile-time constants (unrolled, and vectorised as interleaved loads),
/// 0 when they are not.
/// `acc[i] = src[i] if src[i] > acc[i]` (NaN in `src` never taken, of equal values `acc`'s
/// kept). On x86 that is `maxps(src, acc)`, four at a time: written as a conditional update of
/// each element, LLVM made masked stores of it (`vmaskmovps`: most of the SPP pools' time).
#[inline(always)]
fn max_into(acc: &mut [f32], src: &[f32]) {
    let n = acc.len().min(src.len());
    #[allow(unused_mut)]
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_loadu_ps, _mm_max_ps, _mm_storeu_ps};
        while done + 4 <= n {
            // SAFETY: SSE is part of x86-64; `done + 4 ≤ n` values of both slices.
            unsafe {
                let a = _mm_loadu_ps(acc.as_ptr().add(done));
                let b = _mm_loadu_ps(src.as_ptr().add(done));
                _mm_storeu_ps(acc.as_mut_ptr().add(done), _mm_max_ps(b, a));
            }
            done += 4;
        }
    }
    for (a, &b) in acc[done..n].iter_mut().zip(&src[done..n]) {
        *a = if b > *a { b } else { *a };
    }
}

/// `buf[i] = max(buf[i], buf[i + s])` ([`Lanes::max`]) for `i < n`, in place: a vector at a
/// time from the start, each read before it is stored, so every `buf[i + s]` read is still the
/// value from before the pass (the last vector masked).
///
/// # Safety
/// The CPU supports `V`; `n + s ≤ buf.len()`.
#[inline(always)]
unsafe fn max_shifted<V: Lanes>(buf: &mut [f32], n: usize, s: usize) {
    debug_assert!(n + s <= buf.len());
    let p = buf.as_mut_ptr();
    let mut i = 0;
    // SAFETY: as the caller's: every access below `n + s`.
    unsafe {
        while i + V::N <= n {
            V::load(p.add(i)).max(V::load(p.add(i + s))).store(p.add(i));
            i += V::N;
        }
        if i < n {
            let m = n - i;
            V::load_n(p.add(i), m)
                .max(V::load_n(p.add(i + s), m))
                .store_n(p.add(i), m);
        }
    }
}

/// `buf[i] = max over d < k of buf[i + d·unit]` (as `buf` was) for `i < len − (k − 1)·unit`,
/// in place: windows of 2, 4, 8… by [`max_shifted`] (each the max of two halves), then the
/// window of `k` as two overlapping ones of the last power of two. A 13-wide window takes 4
/// passes, not 12.
///
/// # Safety
/// The CPU supports `V`; `len ≤ buf.len()`, `(k − 1)·unit < len`.
#[inline(always)]
unsafe fn window_max<V: Lanes>(buf: &mut [f32], len: usize, k: usize, unit: usize) {
    let mut m = 1;
    // SAFETY: as the caller's: the window of `2m` (or `k`) ends inside `len`.
    unsafe {
        while 2 * m <= k {
            max_shifted::<V>(buf, len - (2 * m - 1) * unit, m * unit);
            m *= 2;
        }
        if m < k {
            max_shifted::<V>(buf, len - (k - 1) * unit, (k - m) * unit);
        }
    }
}

/// Stride-1 max pools (YOLOX's SPP: "same" 5×5, 9×9 and 13×13 windows over 13×23 planes at
/// 736×416) in passes over whole planes, not rows: each plane copied into a padded plane of
/// `(h + t + b) × (w + l + r)` whose borders stay −∞ (`scratch`'s first part, filled once per
/// call), then a copy of it reduced over windows of `kh` rows ([`window_max`], shifts of whole
/// rows), then a copy of that over windows of `kw` columns (shifts of one float: a window that
/// would cross into the next row is never an output's), and the output's `ow` columns of each
/// row copied out. The max is exact, so the order does not change a value. Per row, with a
/// pass per window row and column, the three SPP pools took 0.12 + 0.19 + 0.26 ms (Intel Xeon
/// model 207), most of it in the calls.
///
/// # Safety
/// The CPU supports `V`.
#[inline(always)]
unsafe fn max_stride1<V: Lanes>(shape: Shape, input: &[f32], out: &mut [f32], scratch: &mut [f32]) {
    let (oh, ow) = shape.output().expect("the window fits the padded input");
    let (h, w) = (shape.height, shape.width);
    let (kh, kw) = shape.kernel;
    let (t, l, b, r) = shape.padding;
    let wp = w + l + r;
    let (padded, rest) = scratch.split_at_mut((h + t + b) * wp);
    let (rows, columns) = rest.split_at_mut((h + t + b) * wp);
    let columns = &mut columns[..oh * wp];
    padded.fill(f32::NEG_INFINITY);
    // SAFETY: `V` is supported (the caller's); every copy and pass stays inside the slices
    // (`padded` and `rows` have `h + t + b = oh + kh − 1` rows of `wp`, `columns` `oh · wp`
    // floats).
    unsafe {
        for (plane, dst) in input.chunks_exact(h * w).zip(out.chunks_exact_mut(oh * ow)) {
            for (y, row) in plane.chunks_exact(w).enumerate() {
                copy::<V>(row.as_ptr(), padded.as_mut_ptr().add((t + y) * wp + l), w);
            }
            copy::<V>(padded.as_ptr(), rows.as_mut_ptr(), rows.len());
            window_max::<V>(rows, rows.len(), kh, wp);
            copy::<V>(rows.as_ptr(), columns.as_mut_ptr(), columns.len());
            window_max::<V>(columns, columns.len(), kw, 1);
            for (dst_row, src) in dst.chunks_exact_mut(ow).zip(columns.chunks(wp)) {
                copy::<V>(src.as_ptr(), dst_row.as_mut_ptr(), ow);
            }
        }
    }
}

/// Scratch floats [`pool`] needs for `shape`: a padded row, or for stride-1 max pools the
/// planes of [`max_stride1`].
fn scratch_len(shape: Shape, reduce: Reduce) -> usize {
    let (t, l, b, r) = shape.padding;
    let wp = shape.width + l + r;
    match (reduce, shape.output()) {
        (Reduce::Max, Some((oh, _))) if shape.stride == (1, 1) => {
            2 * (shape.height + t + b) * wp + oh * wp
        }
        _ => wp,
    }
}

#[inline(always)]
fn horizontal<const KW: usize, const SX: usize>(
    padded: &[f32],
    dst: &mut [f32],
    reduce: Reduce,
    shape: Shape,
    rows: usize,
) {
    let (kh, kw) = shape.kernel;
    let kw = if KW == 0 { kw } else { KW };
    let sx = if SX == 0 { shape.stride.1 } else { SX };
    let (l, w) = (shape.padding.1, shape.width);
    let max = |m: f32, v: f32| if v > m { v } else { m };
    match reduce {
        Reduce::Max if (KW, SX) == (3, 2) => {
            // The stem's 3×3/2 max pool: pairs of the row and the next pair's first, so that
            // the loads are whole vectors split even/odd (not gathers).
            let pairs = padded[..2 * dst.len() + 2].chunks_exact(2);
            for ((value, p), q) in dst.iter_mut().zip(pairs.clone()).zip(pairs.skip(1)) {
                *value = max(max(max(f32::NEG_INFINITY, p[0]), p[1]), q[0]);
            }
        }
        Reduce::Max => {
            for (ox, value) in dst.iter_mut().enumerate() {
                let window = &padded[ox * sx..][..kw];
                *value = window.iter().fold(f32::NEG_INFINITY, |m, &v| max(m, v));
            }
        }
        Reduce::Mean {
            count_include_pad: true,
        } => {
            let scale = 1.0 / (kh * kw) as f32;
            for (ox, value) in dst.iter_mut().enumerate() {
                *value = padded[ox * sx..][..kw].iter().sum::<f32>() * scale;
            }
        }
        Reduce::Mean {
            count_include_pad: false,
        } => {
            for (ox, value) in dst.iter_mut().enumerate() {
                let cols = (ox * sx + kw).min(l + w) - (ox * sx).max(l);
                *value = padded[ox * sx..][..kw].iter().sum::<f32>() / (rows * cols) as f32;
            }
        }
    }
}

/// The naive reference in `f64`.
pub fn reference(shape: Shape, reduce: Reduce, input: &[f32]) -> Vec<f32> {
    let (oh, ow) = shape.output().expect("fits");
    let (h, w) = (shape.height, shape.width);
    let (t, l, _, _) = shape.padding;
    let mut out = Vec::new();
    for plane in input.chunks_exact(h * w) {
        for oy in 0..oh {
            for ox in 0..ow {
                let (mut max, mut sum, mut n) = (f64::NEG_INFINITY, 0.0, 0);
                for ky in 0..shape.kernel.0 {
                    for kx in 0..shape.kernel.1 {
                        let y = (oy * shape.stride.0 + ky) as isize - t as isize;
                        let x = (ox * shape.stride.1 + kx) as isize - l as isize;
                        if y < 0 || x < 0 || y >= h as isize || x >= w as isize {
                            continue;
                        }
                        let v = f64::from(plane[y as usize * w + x as usize]);
                        max = max.max(v);
                        sum += v;
                        n += 1;
                    }
                }
                out.push(match reduce {
                    Reduce::Max => max as f32,
                    Reduce::Mean {
                        count_include_pad: true,
                    } => (sum / (shape.kernel.0 * shape.kernel.1) as f64) as f32,
                    Reduce::Mean {
                        count_include_pad: false,
                    } => (sum / n.max(1) as f64) as f32,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::test_support::Rng;
    use super::*;

    #[test]
    fn matches_the_reference_on_random_shapes() {
        let mut rng = Rng::new(0x9001);
        let osnet = [
            (
                Shape {
                    height: 128,
                    width: 64,
                    kernel: (3, 3),
                    stride: (2, 2),
                    padding: (1, 1, 1, 1),
                },
                Reduce::Max,
            ),
            (
                Shape {
                    height: 64,
                    width: 32,
                    kernel: (2, 2),
                    stride: (2, 2),
                    padding: (0, 0, 0, 0),
                },
                Reduce::Mean {
                    count_include_pad: true,
                },
            ),
        ];
        let mut cases = osnet.to_vec();
        // YOLOX's SPP at 736×416 and 416×416: "same" max pools of 5, 9 and 13 over 13×23 and
        // 13×13; and wide stride-1 windows with uneven padding.
        for k in [5, 9, 13] {
            for (height, width) in [(13, 23), (13, 13)] {
                let shape = Shape {
                    height,
                    width,
                    kernel: (k, k),
                    stride: (1, 1),
                    padding: (k / 2, k / 2, k / 2, k / 2),
                };
                cases.push((shape, Reduce::Max));
            }
            let shape = Shape {
                height: 9,
                width: 30,
                kernel: (k, k),
                stride: (1, 1),
                padding: (k / 2 + 1, 0, k / 2 - 1, k - 1),
            };
            cases.push((shape, Reduce::Max));
        }
        for _ in 0..200 {
            let kernel = (1 + rng.below(4), 1 + rng.below(4));
            // Padding below the kernel size, as ONNX requires (else a window can be all padding).
            let padding = (
                rng.below(kernel.0),
                rng.below(kernel.1),
                rng.below(kernel.0),
                rng.below(kernel.1),
            );
            let shape = Shape {
                height: kernel.0 + rng.below(12),
                width: kernel.1 + rng.below(12),
                kernel,
                stride: (1 + rng.below(3), 1 + rng.below(3)),
                padding,
            };
            let reduce = match rng.below(3) {
                0 => Reduce::Max,
                1 => Reduce::Mean {
                    count_include_pad: true,
                },
                _ => Reduce::Mean {
                    count_include_pad: false,
                },
            };
            cases.push((shape, reduce));
        }
        let mut row = Vec::new();
        for (shape, reduce) in cases {
            let planes = 1 + rng.below(3);
            let input = rng.vec(planes * shape.height * shape.width);
            let want = reference(shape, reduce, &input);
            let mut first: Option<Vec<f32>> = None;
            for isa in Isa::available() {
                let mut got = vec![f32::NAN; want.len()];
                pool(isa, shape, reduce, &input, &mut got, &mut row);
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    let bound = 1e-6 * (1.0 + w.abs());
                    assert!(
                        (g - w).abs() <= bound,
                        "{isa} {shape:?} {reduce:?}: element {i}: got {g}, want {w}"
                    );
                }
                // Every instruction set gives the same bits.
                match &first {
                    None => first = Some(got),
                    Some(f) => super::super::test_support::assert_same_bits(&got, f, "pool"),
                }
            }
        }
    }
}
