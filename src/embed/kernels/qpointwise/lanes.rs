//! The int8 1×1 product with its outputs in lanes, for OSNet streams run on planes stored pixel
//! by pixel (`kernels::channels_last`): each input word (four channels' codes of one pixel) is
//! broadcast and multiplied by a vector of outputs' weight words, and a tile's sums are stored
//! as its pixels' output channels, side by side. The words are read at any steps between
//! pixels and groups: `[groups][pixels]` as the other products make them (a block's input), or
//! `[pixels][groups]` — a channels-last plane's codes in their own order ([`quantise_plane`]).
//!
//! Exact int32 sums from the same corrections, and the f32 store of `Layer::store` (the sum
//! converted, times the output's multiplier, then the ReLU): the same values, bit for bit, as
//! the products with pixels in lanes.

use super::super::channels_last::Plane;
use super::{Dot, Layer};

/// A layer's weights by input group, for the products here (made once per layer at load).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ByGroup {
    /// `[groups][outputs]`: the layer's weight words (four i8 each).
    words: Vec<u32>,
    /// `[groups][2][outputs]`: AVX2's 16-bit pairs (`Layer::pairs`) for weights not bounded in
    /// pairs; empty otherwise.
    pairs: Vec<u32>,
}

/// Where a product reads word `(p, g)`: `words[p · pixel + g · group]`.
#[derive(Clone, Copy, Debug)]
pub struct Steps {
    pub pixel: usize,
    pub group: usize,
}

impl Layer {
    /// Its weights for [`Layer::product_lanes`].
    pub fn by_group(&self) -> ByGroup {
        let (outputs, groups) = (self.shape.outputs, self.groups);
        let mut words = vec![0; outputs * groups];
        let mut pairs = vec![0; self.pairs.len()];
        for o in 0..outputs {
            for g in 0..groups {
                words[g * outputs + o] = self.words[o * groups + g];
                if !pairs.is_empty() {
                    for h in 0..2 {
                        pairs[(2 * g + h) * outputs + o] = self.pairs[2 * (o * groups + g) + h];
                    }
                }
            }
        }
        ByGroup { words, pairs }
    }

    /// Whether [`Layer::product_lanes`] runs it with `dot`: the products here are AVX2's and
    /// VNNI's (and the portable one, to check them); the outputs must fill whole vectors.
    pub fn runs_in_lanes(&self, dot: Dot) -> bool {
        let n = match dot {
            Dot::Portable => 1,
            #[cfg(target_arch = "x86_64")]
            Dot::Avx2 => 8,
            #[cfg(target_arch = "x86_64")]
            Dot::Vnni512 => 16,
            #[cfg(target_arch = "aarch64")]
            Dot::NeonWiden | Dot::NeonDot => return false,
        };
        self.y_stride == self.shape.pixels && self.shape.outputs.is_multiple_of(n)
    }

    /// The layer on the input words at `steps` (u8 codes, as [`Layer::quantise_into`] or
    /// [`quantise_plane`] make them), its outputs stored channels-last into `plane` (whose
    /// channels are the outputs; its border zeroed), through the ReLU.
    #[allow(clippy::too_many_arguments)]
    pub fn product_lanes(
        &self,
        dot: Dot,
        by: &ByGroup,
        words: &[u32],
        steps: Steps,
        relu: bool,
        plane: Plane,
        out: &mut [f32],
    ) {
        let (outputs, pixels, groups) = (self.shape.outputs, self.shape.pixels, self.groups);
        assert!(self.runs_in_lanes(dot), "{dot}: {:?} in lanes", self.shape);
        assert!(dot.is_available(), "{dot} not on this CPU");
        assert_eq!(plane.channels, outputs, "int8 lanes plane channels");
        assert_eq!(
            plane.height * plane.width,
            pixels,
            "int8 lanes plane pixels"
        );
        assert!(out.len() >= plane.len(), "int8 lanes output length");
        assert_eq!(by.words.len(), outputs * groups, "int8 lanes weights");
        assert!(
            pixels > 0
                && groups > 0
                && words.len() > (pixels - 1) * steps.pixel + (groups - 1) * steps.group,
            "int8 lanes words"
        );
        plane.zero_border(out);
        let args = Args {
            layer: self,
            by,
            words,
            steps,
            relu,
            plane,
        };
        match dot {
            Dot::Portable => portable(&args, out),
            // SAFETY: the CPU has AVX2 (checked above); every index is inside the lengths
            // checked above.
            #[cfg(target_arch = "x86_64")]
            Dot::Avx2 => unsafe { x86::avx2(&args, out.as_mut_ptr()) },
            // SAFETY: the CPU has AVX-512F and VNNI (checked above); as above.
            #[cfg(target_arch = "x86_64")]
            Dot::Vnni512 => unsafe { x86::vnni(&args, out.as_mut_ptr()) },
            #[cfg(target_arch = "aarch64")]
            Dot::NeonWiden | Dot::NeonDot => unreachable!("checked by runs_in_lanes"),
        }
    }
}

/// The input words of a channels-last plane without a border (`[pixels][inputs]` floats) for
/// [`Layer::product_lanes`] at steps `(groups, 1)`: each pixel's codes in channel order, so
/// word `(p, g)` holds channels `4g..4g + 4`, channel `4g + j` in byte `j`, as every product
/// reads them. The layer's inputs must be a multiple of 4.
pub fn quantise_plane(layer: &Layer, dot: Dot, input: &[f32], words: &mut [u32]) {
    let inputs = layer.shape.inputs;
    assert!(inputs.is_multiple_of(4), "{inputs} inputs in whole words");
    assert_eq!(
        input.len(),
        inputs * layer.shape.pixels,
        "int8 lanes input length"
    );
    assert!(4 * words.len() >= input.len(), "int8 lanes words");
    // SAFETY: a u32 slice is as many bytes four times over, any u8 is valid, and the borrow is
    // the slice's.
    let bytes =
        unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), input.len()) };
    let flip = layer.flip(dot) as u8;
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just now).
        return unsafe { x86::quantise(layer, input, bytes, flip) };
    }
    super::quantise_bytes(layer, input, bytes, flip);
}

/// A product's operands (checked by [`Layer::product_lanes`]).
struct Args<'a> {
    layer: &'a Layer,
    by: &'a ByGroup,
    words: &'a [u32],
    steps: Steps,
    relu: bool,
    plane: Plane,
}

impl Args<'_> {
    /// Where pixel `p`'s channels start in the plane.
    fn at(&self, p: usize) -> usize {
        let w = self.plane.width;
        self.plane.at(p / w, p % w)
    }

    /// Where pixels `p..p + P` start in the plane: one division for the tile, not one per
    /// pixel (with one per pixel, VNNI's 32 × 800 product took twice the planar one's time).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn tile_at<const P: usize>(&self, p: usize) -> [usize; P] {
        let w = self.plane.width;
        let (mut y, mut x) = (p / w, p % w);
        std::array::from_fn(|_| {
            let at = self.plane.at(y, x);
            x += 1;
            if x == w {
                (y, x) = (y + 1, 0);
            }
            at
        })
    }
}

/// Plain integer arithmetic, pixel by pixel.
fn portable(args: &Args, out: &mut [f32]) {
    let layer = args.layer;
    let (outputs, groups) = (layer.shape.outputs, layer.groups);
    for p in 0..layer.shape.pixels {
        let at = args.at(p);
        for o in 0..outputs {
            let mut acc = layer.corr_u8[o];
            for g in 0..groups {
                let x = args.words[p * args.steps.pixel + g * args.steps.group].to_le_bytes();
                let w = args.by.words[g * outputs + o].to_le_bytes();
                for j in 0..4 {
                    acc += i32::from(x[j]) * i32::from(w[j] as i8);
                }
            }
            out[at + o] = layer.store(acc as f32, o, None, args.relu);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Args, Layer};

    /// `quantise_bytes` compiled for AVX2 (LLVM vectorises it).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn quantise(layer: &Layer, input: &[f32], bytes: &mut [u8], flip: u8) {
        super::super::quantise_bytes(layer, input, bytes, flip)
    }

    /// Pixels per AVX2 tile, per VNNI tile.
    const P2: usize = 4;
    const P512: usize = 6;

    /// AVX2: tiles of 2 × 8 outputs × 4 pixels (one vector of 8 outputs where the outputs
    /// are an odd number of vectors); `vpmaddubsw` on the codes as they are for pair-bounded
    /// weights, else `vpmaddwd` on the words' even and odd bytes (see `x86::tile_avx2`).
    ///
    /// # Safety
    /// The CPU has AVX2; `args` as `Layer::product_lanes` checked them; `out` holds the plane.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn avx2(args: &Args, out: *mut f32) {
        let outputs = args.layer.shape.outputs;
        // SAFETY: forwarded.
        unsafe {
            match (outputs.is_multiple_of(16), args.layer.paired) {
                (true, true) => tiles_avx2::<2, true>(args, out),
                (true, false) => tiles_avx2::<2, false>(args, out),
                (false, true) => tiles_avx2::<1, true>(args, out),
                (false, false) => tiles_avx2::<1, false>(args, out),
            }
        }
    }

    /// # Safety
    /// As `avx2`, with the outputs a multiple of `NV` vectors.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tiles_avx2<const NV: usize, const PAIRED: bool>(args: &Args, out: *mut f32) {
        let pixels = args.layer.shape.pixels;
        let mut p = 0;
        while p < pixels {
            let first = if pixels >= P2 { p.min(pixels - P2) } else { p };
            let dst = args.tile_at::<P2>(first);
            for o in (0..args.layer.shape.outputs).step_by(8 * NV) {
                // SAFETY: pixels `first..first + P2` (or `first`) and outputs `o..o + 8·NV`
                // are inside the words, weights and plane (the caller's contract).
                unsafe {
                    if pixels >= P2 {
                        tile_avx2::<NV, P2, PAIRED>(args, first, o, &dst, out);
                    } else {
                        tile_avx2::<NV, 1, PAIRED>(args, first, o, &[dst[0]], out);
                    }
                }
            }
            p += if pixels >= P2 { P2 } else { 1 };
        }
    }

    /// Outputs `o..o + 8·NV` of pixels `p..p + P`, pixel `p + i` stored from `dst[i]`.
    ///
    /// # Safety
    /// As `tiles_avx2`, for those pixels and outputs.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile_avx2<const NV: usize, const P: usize, const PAIRED: bool>(
        args: &Args,
        p: usize,
        o: usize,
        dst: &[usize; P],
        out: *mut f32,
    ) {
        let layer = args.layer;
        let (outputs, groups) = (layer.shape.outputs, layer.groups);
        let ones = _mm256_set1_epi16(1);
        let even = _mm256_set1_epi32(0x00ff_00ff);
        // SAFETY: the caller's contract: every pointer below stays inside the words, weights,
        // corrections, multipliers and plane it checked.
        unsafe {
            let corr: [__m256i; NV] = std::array::from_fn(|v| {
                _mm256_loadu_si256(layer.corr_u8.as_ptr().add(o + 8 * v).cast())
            });
            let mut acc = [corr; P];
            let x: [*const u32; P] =
                std::array::from_fn(|i| args.words.as_ptr().add((p + i) * args.steps.pixel));
            for g in 0..groups {
                let at = g * args.steps.group;
                if PAIRED {
                    let w: [__m256i; NV] = std::array::from_fn(|v| {
                        _mm256_loadu_si256(
                            args.by.words.as_ptr().add(g * outputs + o + 8 * v).cast(),
                        )
                    });
                    for (row, x) in acc.iter_mut().zip(&x) {
                        let xv = _mm256_set1_epi32(*x.add(at) as i32);
                        for (a, w) in row.iter_mut().zip(&w) {
                            *a = _mm256_add_epi32(
                                *a,
                                _mm256_madd_epi16(_mm256_maddubs_epi16(xv, *w), ones),
                            );
                        }
                    }
                } else {
                    let pair = |h: usize, v: usize| {
                        _mm256_loadu_si256(
                            args.by
                                .pairs
                                .as_ptr()
                                .add((2 * g + h) * outputs + o + 8 * v)
                                .cast(),
                        )
                    };
                    let we: [__m256i; NV] = std::array::from_fn(|v| pair(0, v));
                    let wo: [__m256i; NV] = std::array::from_fn(|v| pair(1, v));
                    for (row, x) in acc.iter_mut().zip(&x) {
                        let xv = _mm256_set1_epi32(*x.add(at) as i32);
                        let (e, od) = (
                            _mm256_and_si256(xv, even),
                            _mm256_and_si256(_mm256_srli_epi32::<8>(xv), even),
                        );
                        for v in 0..NV {
                            row[v] = _mm256_add_epi32(
                                row[v],
                                _mm256_add_epi32(
                                    _mm256_madd_epi16(e, we[v]),
                                    _mm256_madd_epi16(od, wo[v]),
                                ),
                            );
                        }
                    }
                }
            }
            for (row, &at) in acc.iter().zip(dst) {
                let to = out.add(at + o);
                for (v, a) in row.iter().enumerate() {
                    // `Layer::store`'s arithmetic.
                    let mult = _mm256_loadu_ps(layer.multiplier.as_ptr().add(o + 8 * v));
                    let mut y = _mm256_mul_ps(_mm256_cvtepi32_ps(*a), mult);
                    if args.relu {
                        y = _mm256_max_ps(y, _mm256_setzero_ps());
                    }
                    _mm256_storeu_ps(to.add(8 * v), y);
                }
            }
        }
    }

    /// VNNI: tiles of 16 outputs × 6 pixels, `vpdpbusd` on each broadcast word.
    ///
    /// # Safety
    /// The CPU has AVX-512F and VNNI; `args` as `Layer::product_lanes` checked them; `out`
    /// holds the plane.
    #[target_feature(enable = "avx512f,avx512vnni")]
    pub(super) unsafe fn vnni(args: &Args, out: *mut f32) {
        let pixels = args.layer.shape.pixels;
        let mut p = 0;
        while p < pixels {
            let first = if pixels >= P512 {
                p.min(pixels - P512)
            } else {
                p
            };
            let dst = args.tile_at::<P512>(first);
            for o in (0..args.layer.shape.outputs).step_by(16) {
                // SAFETY: as in `tiles_avx2`.
                unsafe {
                    if pixels >= P512 {
                        tile_vnni::<P512>(args, first, o, &dst, out);
                    } else {
                        tile_vnni::<1>(args, first, o, &[dst[0]], out);
                    }
                }
            }
            p += if pixels >= P512 { P512 } else { 1 };
        }
    }

    /// Outputs `o..o + 16` of pixels `p..p + P`, pixel `p + i` stored from `dst[i]`.
    ///
    /// # Safety
    /// As `vnni`, for those pixels and outputs.
    #[inline]
    #[target_feature(enable = "avx512f,avx512vnni")]
    unsafe fn tile_vnni<const P: usize>(
        args: &Args,
        p: usize,
        o: usize,
        dst: &[usize; P],
        out: *mut f32,
    ) {
        let layer = args.layer;
        let (outputs, groups) = (layer.shape.outputs, layer.groups);
        // SAFETY: the caller's contract: every pointer below stays inside the words, weights,
        // corrections, multipliers and plane it checked.
        unsafe {
            let corr = _mm512_loadu_si512(layer.corr_u8.as_ptr().add(o).cast());
            let mut acc = [corr; P];
            let x: [*const u32; P] =
                std::array::from_fn(|i| args.words.as_ptr().add((p + i) * args.steps.pixel));
            for g in 0..groups {
                let at = g * args.steps.group;
                let w = _mm512_loadu_si512(args.by.words.as_ptr().add(g * outputs + o).cast());
                for (a, x) in acc.iter_mut().zip(&x) {
                    *a = _mm512_dpbusd_epi32(*a, _mm512_set1_epi32(*x.add(at) as i32), w);
                }
            }
            let mult = _mm512_loadu_ps(layer.multiplier.as_ptr().add(o));
            for (a, &at) in acc.iter().zip(dst) {
                let mut y = _mm512_mul_ps(_mm512_cvtepi32_ps(*a), mult);
                if args.relu {
                    y = _mm512_max_ps(y, _mm512_setzero_ps());
                }
                _mm512_storeu_ps(out.add(at + o), y);
            }
        }
    }
}
