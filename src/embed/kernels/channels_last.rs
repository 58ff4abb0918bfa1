//! OSNet's stream layers with channels in lanes: planes stored pixel by pixel, `[y][x][c]`
//! (NHWC), where the other kernels keep a channel's pixels together (`[c][y][x]`, NCHW).
//!
//! In NCHW a vector holds pixels of one channel, and OSNet's late planes are narrow (our default
//! model's 10×5 and 20×10; a depthwise row of 5 pixels fills 5 of 8 AVX2 lanes, and every row
//! is a chain of its own). Its stream layers have 32, 48 or 64 channels: whole vectors. Here a
//! vector holds channels of one pixel, so every load and FMA is full whatever the plane's
//! width:
//! - [`pointwise`]: a 1×1 layer, outputs in lanes: each input value (one pixel, one channel) is
//!   broadcast and multiplied into the output vectors of its pixel, from an NCHW tensor (a
//!   block's input) or a [`Plane`];
//! - [`depthwise`]: a 3×3 stride-1 layer over a plane with a zero border, its nine taps of a
//!   vector of channels held in registers, four pixels a step, each loaded vector used by three
//!   taps;
//! - [`channel_sums`] and [`gated_sum`]: OSNet's gate pooling and its sum of the streams, which
//!   writes NCHW again through [`transpose`](super::transpose).
//!
//! Every output adds its terms in the same order as the NCHW kernels (`pointwise`'s bias then
//! `k` in order, `depthwise`'s taps `dy` then `dx` over the same zero border, `plane_sum`'s 16
//! lanes, the gated sum's terms in order): the same values, bit for bit, in either layout.

use super::simd::Lanes;
#[cfg(not(target_arch = "aarch64"))]
use super::simd::Portable;
use super::{Act, Isa};

/// Floats per vector of an instruction set's kernels: a layer runs with channels in lanes only
/// when its channel counts are multiples of it.
pub use super::simd::lanes;

/// A plane of `height × width` pixels with `channels` values each, pixel by pixel, inside a
/// zero border `pad` pixels wide (1 for a depthwise layer's input, else 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Plane {
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    pub pad: usize,
}

impl Plane {
    /// Floats it takes, border included.
    pub fn len(&self) -> usize {
        (self.height + 2 * self.pad) * self.row()
    }

    /// Whether it holds no pixel.
    pub fn is_empty(&self) -> bool {
        self.height * self.width * self.channels == 0
    }

    /// Floats per stored row, border included.
    fn row(&self) -> usize {
        (self.width + 2 * self.pad) * self.channels
    }

    /// Where pixel `(y, x)`'s channels start.
    fn at(&self, y: usize, x: usize) -> usize {
        (y + self.pad) * self.row() + (x + self.pad) * self.channels
    }

    /// Zeroes the border of `data` (its first [`Plane::len`] floats); the pixels are left.
    fn zero_border(&self, data: &mut [f32]) {
        if self.pad == 0 {
            return;
        }
        let (row, pad) = (self.row(), self.pad * self.channels);
        let body = self.height * row;
        let (top, rest) = data[..self.len()].split_at_mut(self.pad * row);
        top.fill(0.0);
        let (middle, bottom) = rest.split_at_mut(body);
        bottom.fill(0.0);
        for r in middle.chunks_exact_mut(row) {
            r[..pad].fill(0.0);
            r[row - pad..].fill(0.0);
        }
    }
}

/// A 1×1 layer's input: `k` channels of `pixels`.
#[derive(Clone, Copy, Debug)]
pub enum Source<'a> {
    /// NCHW: channel `k`'s pixels together (`[k][pixels]`).
    Planar(&'a [f32]),
    /// A [`Plane`] without a border (`[pixels][k]`).
    Packed(&'a [f32]),
}

/// Runs `$body::<V>($args)` with `V` `isa`'s vector (inside a `#[target_feature]` function on
/// x86).
macro_rules! dispatch {
    ($isa:expr, $body:ident($($arg:expr),*)) => {{
        assert!($isa.is_available(), "{} is not available on this CPU", $isa);
        match $isa {
            #[cfg(target_arch = "aarch64")]
            // SAFETY: every CPU has the baseline; the caller checked the operands.
            Isa::Baseline => unsafe { $body::<std::arch::aarch64::float32x4_t>($($arg),*) },
            #[cfg(not(target_arch = "aarch64"))]
            // SAFETY: every CPU has the baseline; the caller checked the operands.
            Isa::Baseline => unsafe { $body::<Portable>($($arg),*) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `is_available` checked AVX2 and FMA; the caller checked the operands.
            Isa::Avx2Fma => unsafe { x86::$body::avx2($($arg),*) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `is_available` checked AVX-512F; the caller checked the operands.
            Isa::Avx512 => unsafe { x86::$body::avx512($($arg),*) },
        }
    }};
}

/// `out[p][o] = act(bias[o] + Σₖ weights[k][o] · x[k][p])` for every pixel `p` of `plane`
/// (whose `channels` are the outputs), `x` being `source` with `k` channels; `weights` are
/// `[k][outputs]`. The border of `plane` is zeroed.
#[allow(clippy::too_many_arguments)]
pub fn pointwise(
    isa: Isa,
    source: Source,
    k: usize,
    weights: &[f32],
    bias: &[f32],
    act: Act,
    plane: Plane,
    out: &mut [f32],
) {
    let (outputs, pixels) = (plane.channels, plane.height * plane.width);
    let x = match source {
        Source::Planar(x) | Source::Packed(x) => x,
    };
    assert_eq!(x.len(), k * pixels, "1×1 input length");
    assert_eq!(weights.len(), k * outputs, "1×1 weights length");
    assert_eq!(bias.len(), outputs, "1×1 bias length");
    assert!(out.len() >= plane.len(), "1×1 output length");
    assert_eq!(
        outputs % lanes(isa),
        0,
        "outputs {outputs} in whole vectors"
    );
    plane.zero_border(out);
    let (step_k, step_p) = match source {
        Source::Planar(_) => (pixels, 1),
        Source::Packed(_) => (1, k),
    };
    let args = PointwiseArgs {
        x: x.as_ptr(),
        step_k,
        step_p,
        k,
        weights: weights.as_ptr(),
        bias: bias.as_ptr(),
        act,
        plane,
        out: out.as_mut_ptr(),
    };
    dispatch!(isa, pointwise_body(&args));
}

struct PointwiseArgs {
    x: *const f32,
    /// Input value `(k, p)` is `x[k · step_k + p · step_p]`.
    step_k: usize,
    step_p: usize,
    k: usize,
    weights: *const f32,
    bias: *const f32,
    act: Act,
    plane: Plane,
    out: *mut f32,
}

/// # Safety
/// The CPU supports `V`; `args` as [`pointwise`] checked them.
#[inline(always)]
unsafe fn pointwise_body<V: Lanes>(args: &PointwiseArgs) {
    let vectors = args.plane.channels / V::N;
    let silu = args.act == Act::Silu;
    // Tiles of about 12 sums in 16 registers (AVX2, the portable copy) or 24 in 32 (AVX-512).
    // SAFETY: forwarded.
    unsafe {
        macro_rules! tiles {
            ($nv:literal, $p:literal) => {
                if silu {
                    pointwise_tiles::<V, $nv, $p, true>(args)
                } else {
                    pointwise_tiles::<V, $nv, $p, false>(args)
                }
            };
        }
        match (
            V::N >= 16,
            vectors.is_multiple_of(4),
            vectors.is_multiple_of(3),
            vectors.is_multiple_of(2),
        ) {
            (true, true, _, _) => tiles!(4, 6),
            (true, _, true, _) => tiles!(3, 8),
            (true, _, _, true) => tiles!(2, 12),
            (true, _, _, _) => tiles!(1, 12),
            (false, _, _, true) => tiles!(2, 6),
            (false, _, true, _) => tiles!(3, 4),
            (false, _, _, _) => tiles!(1, 8),
        }
    }
}

/// The layer in tiles of `NV` output vectors × `P` pixels (`NV · P` sums in registers), the
/// pixels taken in order across the plane's rows; the last tile ends at the last pixel (it
/// computes some pixels again, with the same sums), or, in planes of fewer than `P` pixels,
/// one pixel at a time.
///
/// # Safety
/// As `pointwise_body`, with the outputs a multiple of `NV` vectors.
#[inline(always)]
unsafe fn pointwise_tiles<V: Lanes, const NV: usize, const P: usize, const SILU: bool>(
    args: &PointwiseArgs,
) {
    let plane = args.plane;
    let pixels = plane.height * plane.width;
    let mut p = 0;
    while p < pixels {
        let first = if pixels >= P { p.min(pixels - P) } else { p };
        // Where the tile's pixels go (one division per tile, not per pixel and output).
        let (mut y, mut x) = (first / plane.width, first % plane.width);
        let dst: [usize; P] = std::array::from_fn(|_| {
            let at = plane.at(y, x);
            x += 1;
            if x == plane.width {
                (y, x) = (y + 1, 0);
            }
            at
        });
        for o in (0..plane.channels).step_by(NV * V::N) {
            // SAFETY: pixels `first..first + P` (or `first`) and outputs `o..o + NV·N` are
            // inside the input, the weights and the plane (as checked by `pointwise`).
            unsafe {
                if pixels >= P {
                    pointwise_tile::<V, NV, P, SILU>(args, first, o, &dst);
                } else {
                    pointwise_tile::<V, NV, 1, SILU>(args, first, o, &[dst[0]]);
                }
            }
        }
        p += if pixels >= P { P } else { 1 };
    }
}

/// Outputs `o..o + NV·N` of pixels `p..p + P`, pixel `p + i` stored from `dst[i]`.
///
/// # Safety
/// As `pointwise_tiles`, for those pixels and outputs.
#[inline(always)]
unsafe fn pointwise_tile<V: Lanes, const NV: usize, const P: usize, const SILU: bool>(
    args: &PointwiseArgs,
    p: usize,
    o: usize,
    dst: &[usize; P],
) {
    let plane = args.plane;
    // SAFETY: as the caller's.
    unsafe {
        let bias: [V; NV] = std::array::from_fn(|v| V::load(args.bias.add(o + v * V::N)));
        let mut acc = [bias; P];
        let mut w = args.weights.add(o);
        // Each pixel's own pointer and one index for `k` (a pointer stepped from pixel to
        // pixel made LLVM chain `P` dependent adds per `k`).
        let x: [*const f32; P] = std::array::from_fn(|i| args.x.add((p + i) * args.step_p));
        for kk in 0..args.k {
            let wv: [V; NV] = std::array::from_fn(|v| V::load(w.add(v * V::N)));
            let at = kk * args.step_k;
            for (row, x) in acc.iter_mut().zip(&x) {
                let xv = V::splat(*x.add(at));
                for (a, wv) in row.iter_mut().zip(&wv) {
                    *a = V::fma(*wv, xv, *a);
                }
            }
            w = w.add(plane.channels);
        }
        for (row, &at) in acc.iter().zip(dst) {
            let to = args.out.add(at + o);
            for (v, a) in row.iter().enumerate() {
                a.activate::<SILU>(args.act).store(to.add(v * V::N));
            }
        }
    }
}

/// A 3×3 depthwise layer, stride 1, padding 1: `out[y][x][c] = act(bias[c] + Σ taps[dy·3 +
/// dx][c] · x[y + dy − 1][x + dx − 1][c])` over `input`, whose border of zeros is the padding
/// (`input` a [`Plane`] like `plane` with `pad` 1); `taps` are `[9][channels]`. The border of
/// `plane` (the output) is zeroed.
pub fn depthwise(
    isa: Isa,
    input: &[f32],
    taps: &[f32],
    bias: &[f32],
    act: Act,
    plane: Plane,
    out: &mut [f32],
) {
    let padded = Plane { pad: 1, ..plane };
    let channels = plane.channels;
    assert!(input.len() >= padded.len(), "depthwise input length");
    assert_eq!(taps.len(), 9 * channels, "depthwise taps length");
    assert_eq!(bias.len(), channels, "depthwise bias length");
    assert!(out.len() >= plane.len(), "depthwise output length");
    assert_eq!(
        channels % lanes(isa),
        0,
        "channels {channels} in whole vectors"
    );
    plane.zero_border(out);
    let args = DepthwiseArgs {
        x: input.as_ptr(),
        input: padded,
        taps: taps.as_ptr(),
        bias: bias.as_ptr(),
        act,
        plane,
        out: out.as_mut_ptr(),
    };
    dispatch!(isa, depthwise_body(&args));
}

struct DepthwiseArgs {
    x: *const f32,
    input: Plane,
    taps: *const f32,
    bias: *const f32,
    act: Act,
    plane: Plane,
    out: *mut f32,
}

/// # Safety
/// The CPU supports `V`; `args` as [`depthwise`] checked them.
#[inline(always)]
unsafe fn depthwise_body<V: Lanes>(args: &DepthwiseArgs) {
    // SAFETY: forwarded.
    unsafe {
        match args.act {
            Act::Silu => depthwise_rows::<V, true>(args),
            _ => depthwise_rows::<V, false>(args),
        }
    }
}

/// Row by row (its three input rows in L1), a vector of channels at a time, four pixels a step.
///
/// # Safety
/// As `depthwise_body`.
#[inline(always)]
unsafe fn depthwise_rows<V: Lanes, const SILU: bool>(args: &DepthwiseArgs) {
    let (plane, input) = (args.plane, args.input);
    for y in 0..plane.height {
        for c in (0..plane.channels).step_by(V::N) {
            // SAFETY: channels `c..c + N` of the taps, the bias, and of every pixel of input
            // rows `y..y + 3` (padded: output row y's taps) and output row `y`.
            unsafe {
                let taps: [V; 9] =
                    std::array::from_fn(|t| V::load(args.taps.add(t * plane.channels + c)));
                let bias = V::load(args.bias.add(c));
                // Padded row `y + dy`, column `x`: output (y, x)'s tap (dy, 0).
                let top = args
                    .x
                    .add(input.at(y, 0) - input.row() - input.channels + c);
                let mut x = 0;
                while x + 4 <= plane.width {
                    depthwise_step::<V, 4, 6, SILU>(args, &taps, bias, top, (y, x), c);
                    x += 4;
                }
                while x < plane.width {
                    depthwise_step::<V, 1, 3, SILU>(args, &taps, bias, top, (y, x), c);
                    x += 1;
                }
            }
        }
    }
}

/// Output pixels `(y, x..x + P)`, channels `c..c + N`; `L = P + 2` input columns per tap row.
///
/// # Safety
/// As `depthwise_rows`.
#[inline(always)]
unsafe fn depthwise_step<V: Lanes, const P: usize, const L: usize, const SILU: bool>(
    args: &DepthwiseArgs,
    taps: &[V; 9],
    bias: V,
    top: *const f32,
    (y, x): (usize, usize),
    c: usize,
) {
    let (channels, row) = (args.plane.channels, args.input.row());
    // SAFETY: as the caller's.
    unsafe {
        let mut acc = [bias; P];
        for dy in 0..3 {
            let from = top.add(dy * row + x * channels);
            let v: [V; L] = std::array::from_fn(|j| V::load(from.add(j * channels)));
            for (i, a) in acc.iter_mut().enumerate() {
                for dx in 0..3 {
                    *a = V::fma(taps[dy * 3 + dx], v[i + dx], *a);
                }
            }
        }
        let to = args.out.add(args.plane.at(y, x) + c);
        for (i, a) in acc.iter().enumerate() {
            a.activate::<SILU>(args.act).store(to.add(i * channels));
        }
    }
}

/// Each channel's sum over the `pixels` of `x` (`[pixels][channels]`) into `out`, added as
/// `ops::pooled::plane_sum` adds a plane: 16 lanes (pixels 16 apart), then the lanes in order,
/// then the last `pixels % 16` in order.
pub fn channel_sums(isa: Isa, x: &[f32], channels: usize, out: &mut [f32]) {
    assert_eq!(out.len(), channels, "channel sums length");
    assert!(
        channels > 0 && x.len().is_multiple_of(channels),
        "channel sums input"
    );
    assert_eq!(channels % lanes(isa), 0, "channels in whole vectors");
    dispatch!(isa, sums_body(x, channels, out));
}

/// # Safety
/// The CPU supports `V`; the operands as [`channel_sums`] checked them.
#[inline(always)]
unsafe fn sums_body<V: Lanes>(x: &[f32], channels: usize, out: &mut [f32]) {
    let pixels = x.len() / channels;
    let full = pixels / 16 * 16;
    let mut lanes = [[0.0f32; 16]; 16];
    for c in (0..channels).step_by(V::N) {
        // SAFETY: channels `c..c + N` of pixels below `full`; the lanes' stores are 16 × N ≤
        // 16 × 16 floats.
        unsafe {
            let mut acc = [V::splat(0.0); 16];
            let mut at = x.as_ptr().add(c);
            for _ in (0..full).step_by(16) {
                for a in acc.iter_mut() {
                    *a = a.add(V::load(at));
                    at = at.add(channels);
                }
            }
            for (l, a) in acc.iter().enumerate() {
                a.store(lanes[l].as_mut_ptr());
            }
        }
        for j in 0..V::N {
            let lane_sum: f32 = lanes.iter().map(|l| l[j]).sum();
            let tail: f32 = (full..pixels).map(|p| x[p * channels + c + j]).sum();
            out[c + j] = lane_sum + tail;
        }
    }
}

/// `out[p][c] = Σₜ gates[t][c] · terms[t][p][c]` (the terms' products added in order from 0)
/// for `[pixels][channels]` terms and `out`.
pub fn gated_sum(isa: Isa, terms: &[&[f32]], gates: &[&[f32]], channels: usize, out: &mut [f32]) {
    assert!(
        (1..=super::gated_sum::MAX_TERMS).contains(&terms.len()) && terms.len() == gates.len(),
        "terms and gates"
    );
    assert_eq!(channels % lanes(isa), 0, "channels in whole vectors");
    assert!(out.len().is_multiple_of(channels), "gated sum length");
    for (t, g) in terms.iter().zip(gates) {
        assert_eq!(t.len(), out.len(), "term length");
        assert_eq!(g.len(), channels, "gate length");
    }
    dispatch!(isa, gated_body(terms, gates, channels, out));
}

/// # Safety
/// The CPU supports `V`; the operands as [`gated_sum`] checked them.
#[inline(always)]
unsafe fn gated_body<V: Lanes>(
    terms: &[&[f32]],
    gates: &[&[f32]],
    channels: usize,
    out: &mut [f32],
) {
    for c in (0..channels).step_by(V::N) {
        // SAFETY: channels `c..c + N` of the gates and of every pixel.
        unsafe {
            let mut g = [V::splat(0.0); super::gated_sum::MAX_TERMS];
            for (g, gate) in g.iter_mut().zip(gates) {
                *g = V::load(gate.as_ptr().add(c));
            }
            for at in (c..out.len()).step_by(channels) {
                let mut acc = V::fma(g[0], V::load(terms[0].as_ptr().add(at)), V::splat(0.0));
                for (t, term) in terms.iter().enumerate().skip(1) {
                    acc = V::fma(g[t], V::load(term.as_ptr().add(at)), acc);
                }
                acc.store(out.as_mut_ptr().add(at));
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! Each body compiled for AVX2 + FMA and for AVX-512.

    macro_rules! compiled {
        ($name:ident, ($($arg:ident: $ty:ty),*)) => {
            pub(super) mod $name {
                use std::arch::x86_64::{__m256, __m512};

                #[allow(unused_imports)]
                use super::super::*;

                #[target_feature(enable = "avx2,fma")]
                pub(in super::super) unsafe fn avx2($($arg: $ty),*) {
                    // SAFETY: the caller checked AVX2 and FMA.
                    unsafe { super::super::$name::<__m256>($($arg),*) }
                }

                #[target_feature(enable = "avx512f,fma")]
                pub(in super::super) unsafe fn avx512($($arg: $ty),*) {
                    // SAFETY: the caller checked AVX-512F.
                    unsafe { super::super::$name::<__m512>($($arg),*) }
                }
            }
        };
    }

    compiled!(pointwise_body, (args: &PointwiseArgs));
    compiled!(depthwise_body, (args: &DepthwiseArgs));
    compiled!(sums_body, (x: &[f32], channels: usize, out: &mut [f32]));
    compiled!(
        gated_body,
        (terms: &[&[f32]], gates: &[&[f32]], channels: usize, out: &mut [f32])
    );
}

#[cfg(test)]
mod tests;
