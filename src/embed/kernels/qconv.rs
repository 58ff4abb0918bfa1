//! int8 full (one-group) convolution with f32 edges: the `QLinearConv` of a quantised model's
//! stem (OSNet's 7×7/2 from the RGB image: 23% of its multiply-adds), which reads an f32 image
//! and quantises it itself.
//!
//! The image is quantised once into `conv`'s zero-padded, phase-split layout (as u8 codes; the
//! padding is the code of 0.0, the zero point), where every tap of an output row is a contiguous
//! run. The taps of each output pixel, in (ky, kx, channel) order (the colours of one position
//! side by side: `tools/quantize.py` bounds the weights in pairs of neighbours in that order),
//! are then gathered four at a time into words — the input layout of `qpointwise`, taps in the
//! place of channels — and `qpointwise`'s dot-product product (AVX-512 VNNI, AVX2 `vpmaddubsw`
//! or `vpmaddwd`, NEON `sdot` or `smull`/`smlal`) makes the exact int32 sums and the
//! dequantised f32 store.
//! The result is bit for bit [`reference`]'s.

use super::conv;
use super::pointwise;
use super::qpointwise::{Dot, Grid, Layer, WORDS_SLACK, quantise_bytes};

/// One prepared layer (made once at load).
#[derive(Debug)]
pub struct ConvLayer {
    geometry: conv::Shape,
    /// Where each tap starts in the phase-split codes, for output row 0, taps in (ky, kx,
    /// channel) order.
    offsets: Vec<usize>,
    /// The product, with the `C·kh·kw` taps as its input channels and `oh·ow` pixels.
    layer: Layer,
}

/// Per-thread working memory of [`ConvLayer::run`], grown once.
#[derive(Debug, Default)]
pub struct Scratch {
    pub image: ImageScratch,
    pub rows: RowScratch,
}

/// [`ConvLayer::codes`]' working memory: the image's codes, plain and phase-split.
#[derive(Debug, Default)]
pub struct ImageScratch {
    /// The image's codes.
    codes: Vec<u8>,
    /// The same, phase-split and padded.
    phases: Vec<u8>,
}

/// [`ConvLayer::rows`]' working memory.
#[derive(Debug, Default)]
pub struct RowScratch {
    words: Vec<u32>,
    /// A row of code 0, for the missing taps of a partial last group (their weights are 0).
    zeros: Vec<u8>,
}

impl ConvLayer {
    /// `weights` OIHW (zero point removed), `bias` int32 in units of `x.scale · w_scales[o]`,
    /// `w_scales` one per output. `None` if the kernel does not fit the padded input, the
    /// input grid is not a u8 one or the int32 sums could overflow.
    pub fn new(
        geometry: conv::Shape,
        weights: &[i8],
        bias: &[i32],
        x: Grid,
        w_scales: &[f32],
    ) -> Option<ConvLayer> {
        let (oh, ow) = geometry.output()?;
        let (kh, kw) = geometry.kernel;
        let taps = geometry.inputs * kh * kw;
        // A few output rows at a time: their words stay in cache for every output channel.
        let rows = Self::rows_per_product(oh, ow);
        let shape = pointwise::Shape {
            inputs: taps,
            outputs: geometry.outputs,
            pixels: rows * ow,
        };
        // The taps in (ky, kx, channel) order, the channels of one position side by side:
        // `tools/quantize.py` bounds the weights in pairs of neighbours in that order (as for
        // a 1×1 convolution's channels), which AVX2 multiplies with `vpmaddubsw`.
        let order: Vec<usize> = (0..kh * kw)
            .flat_map(|k| (0..geometry.inputs).map(move |c| c * kh * kw + k))
            .collect();
        let offsets = geometry.offsets();
        let mut ordered = Vec::with_capacity(weights.len());
        for row in weights.chunks_exact(taps) {
            ordered.extend(order.iter().map(|&t| row[t]));
        }
        Some(ConvLayer {
            geometry,
            offsets: order.iter().map(|&t| offsets[t]).collect(),
            layer: Layer::new(shape, &ordered, bias, x, w_scales)?.with_y_stride(oh * ow),
        })
    }

    pub fn geometry(&self) -> conv::Shape {
        self.geometry
    }

    /// Output rows per product: up to four (dividing `oh`) when a row is not a whole number of
    /// 32 pixels, so that the product's pixels fill its steps. A row of our default model's
    /// stem is 40 pixels: steps of 16, 16 and a half-empty one on AVX2, 32 and a quarter-full
    /// one on VNNI; four rows are 160, whole steps on both. The stem alone on AVX2 took 270 µs,
    /// now 227 (Intel Xeon model 207). The words of four rows (37 groups × 160) are 24 KiB.
    fn rows_per_product(oh: usize, ow: usize) -> usize {
        if ow.is_multiple_of(32) {
            1
        } else {
            [4, 2]
                .into_iter()
                .find(|&r| oh.is_multiple_of(r))
                .unwrap_or(1)
        }
    }

    /// Runs the layer on one image `[inputs][height][width]` into `out` `[outputs][oh][ow]`,
    /// through the ReLU if `relu`.
    pub fn run(&self, dot: Dot, image: &[f32], relu: bool, out: &mut [f32], scratch: &mut Scratch) {
        let codes = self.codes(dot, image, &mut scratch.image);
        self.rows(dot, &self.layer, codes, relu, out, &mut scratch.rows);
    }

    /// The product of outputs `outputs` only (`Layer::part`: their start a multiple of
    /// `PART_ALIGN`), for [`rows`](Self::rows): the same sums for those outputs.
    pub fn part(&self, outputs: std::ops::Range<usize>) -> Layer {
        self.layer.part(outputs)
    }

    /// The first half of [`run`](Self::run): the image quantised into the phase-split codes
    /// every output row reads (made once, read by each part's [`rows`](Self::rows)).
    pub fn codes<'s>(&self, dot: Dot, image: &[f32], scratch: &'s mut ImageScratch) -> &'s [u8] {
        let g = self.geometry;
        let layer = &self.layer;
        let flip = layer.flip(dot) as u8;
        assert_eq!(
            image.len(),
            g.inputs * g.height * g.width,
            "int8 conv image length"
        );
        if scratch.codes.len() < image.len() {
            scratch.codes.resize(image.len(), 0);
        }
        // The image's codes, then the phase-split layout of them with the padding's code.
        let plain = &mut scratch.codes[..image.len()];
        match dot {
            // SAFETY: the CPU has AVX2 (`Dot::Avx2` is checked by the product).
            #[cfg(target_arch = "x86_64")]
            Dot::Avx2 => unsafe { x86::quantise_avx2(layer, image, plain, flip) },
            // SAFETY: the CPU has AVX-512F and BW (`Dot::Vnni512` implies them).
            #[cfg(target_arch = "x86_64")]
            Dot::Vnni512 => unsafe { x86::quantise(layer, image, plain, flip) },
            #[cfg(target_arch = "aarch64")]
            Dot::NeonWiden | Dot::NeonDot => {
                super::qpointwise::quantise_bytes_neon(layer, image, plain, flip)
            }
            Dot::Portable => quantise_bytes(layer, image, plain, flip),
        }
        let pad = layer.quantise(0.0) as u8 ^ flip;
        // (Vectorised with AVX-512 where VNNI runs, which implies it, and with AVX2 where the
        // AVX2 product runs.)
        let isa = match dot {
            #[cfg(target_arch = "x86_64")]
            Dot::Vnni512 => super::Isa::Avx512,
            #[cfg(target_arch = "x86_64")]
            Dot::Avx2 if super::Isa::Avx2Fma.is_available() => super::Isa::Avx2Fma,
            _ => super::Isa::Baseline,
        };
        conv::phase_split_as(isa, g, plain, pad, |c| c, &mut scratch.phases)
    }

    /// The second half of [`run`](Self::run): from the image's `codes`, every output row of
    /// `layer` (this layer's product, or a [`part`](Self::part) of it) into `out` `[its
    /// outputs][oh][ow]`, through the ReLU if `relu`.
    pub fn rows(
        &self,
        dot: Dot,
        layer: &Layer,
        codes: &[u8],
        relu: bool,
        out: &mut [f32],
        scratch: &mut RowScratch,
    ) {
        let g = self.geometry;
        let (oh, ow) = g.output().expect("checked at construction");
        let groups = self.offsets.len().div_ceil(4);
        assert_eq!(
            out.len(),
            layer.shape.outputs * oh * ow,
            "int8 conv output length"
        );
        let per = layer.shape.pixels;
        let rows_per = per / ow;
        let words_len = groups * per + WORDS_SLACK;
        if scratch.words.len() < words_len {
            scratch.words.resize(words_len, 0);
        }
        if scratch.zeros.len() < ow {
            scratch.zeros.resize(ow, 0);
        }
        // Per `rows_per` output rows: their words (`[groups][rows_per · ow]`, then the
        // product's slack), then every output channel's rows.
        let words = &mut scratch.words[..words_len];
        let zeros = &scratch.zeros;
        let step = g.row_step();
        for oy in (0..oh).step_by(rows_per) {
            for (grp, dst) in words[..groups * per].chunks_exact_mut(per).enumerate() {
                for (r, dst) in dst.chunks_exact_mut(ow).enumerate() {
                    let run = |j: usize| match self.offsets.get(4 * grp + j) {
                        Some(&tap) => &codes[tap + (oy + r) * step..][..ow],
                        None => &zeros[..ow],
                    };
                    let (a, b, c, d) = (run(0), run(1), run(2), run(3));
                    match dot {
                        // SAFETY: as above.
                        #[cfg(target_arch = "x86_64")]
                        Dot::Avx2 => unsafe { x86::interleave_avx2(dst, a, b, c, d) },
                        #[cfg(target_arch = "x86_64")]
                        // SAFETY: as above: the dot-product kind was checked against the CPU,
                        // the rows are in bounds.
                        Dot::Vnni512 => unsafe { x86::interleave(dst, a, b, c, d) },
                        #[cfg(target_arch = "aarch64")]
                        Dot::NeonWiden | Dot::NeonDot => interleave_neon(dst, a, b, c, d),
                        Dot::Portable => interleave(dst, a, b, c, d),
                    }
                }
            }
            layer.product(dot, words, None, relu, &mut out[oy * ow..]);
        }
    }
}

/// `dst[i]` = the bytes `a[i], b[i], c[i], d[i]`, low to high.
#[inline(always)]
fn interleave(dst: &mut [u32], a: &[u8], b: &[u8], c: &[u8], d: &[u8]) {
    let n = dst.len();
    let (a, b, c, d) = (&a[..n], &b[..n], &c[..n], &d[..n]);
    for i in 0..n {
        dst[i] =
            u32::from(a[i]) | u32::from(b[i]) << 8 | u32::from(c[i]) << 16 | u32::from(d[i]) << 24;
    }
}

/// [`interleave`] by NEON's interleaving store (`st4`): 16 words from four loads and one
/// store, where LLVM's vectorisation of the plain loop took 50 instructions (table lookups,
/// shifts and ors). The last 16 words end where the row ends (some written twice); rows under
/// 16 words go the plain way.
#[cfg(target_arch = "aarch64")]
fn interleave_neon(dst: &mut [u32], a: &[u8], b: &[u8], c: &[u8], d: &[u8]) {
    use std::arch::aarch64::*;
    const STEP: usize = 16;
    let n = dst.len();
    let (a, b, c, d) = (&a[..n], &b[..n], &c[..n], &d[..n]);
    if n < STEP {
        return interleave(dst, a, b, c, d);
    }
    let mut i = 0;
    while i < n {
        let at = i.min(n - STEP);
        // SAFETY: `at + 16 ≤ n`: inside the four rows and `dst` (NEON is on every aarch64 CPU).
        unsafe {
            let load = |r: &[u8]| vld1q_u8(r.as_ptr().add(at));
            let bytes = uint8x16x4_t(load(a), load(b), load(c), load(d));
            vst4q_u8(dst.as_mut_ptr().add(at).cast(), bytes);
        }
        i += STEP;
    }
}

/// The plain quantiser (`qpointwise::quantise_bytes`) and `interleave` compiled for AVX-512 and for
/// AVX2 (LLVM vectorises them 16 or 8 lanes wide; at the
/// x86-64 baseline, rounding half to even is a library call).
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Layer, quantise_bytes};

    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn quantise(layer: &Layer, image: &[f32], codes: &mut [u8], flip: u8) {
        quantise_bytes(layer, image, codes, flip)
    }

    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn interleave(dst: &mut [u32], a: &[u8], b: &[u8], c: &[u8], d: &[u8]) {
        super::interleave(dst, a, b, c, d)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn quantise_avx2(layer: &Layer, image: &[f32], codes: &mut [u8], flip: u8) {
        quantise_bytes(layer, image, codes, flip)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn interleave_avx2(dst: &mut [u32], a: &[u8], b: &[u8], c: &[u8], d: &[u8]) {
        super::interleave(dst, a, b, c, d)
    }
}

/// The naive reference: quantise, exact integer products (i64) over the taps inside the image
/// (padding contributes code − zero = 0), the same f32 store as the kernel.
pub fn reference(
    layer: &ConvLayer,
    weights: &[i8],
    bias: &[i32],
    image: &[f32],
    relu: bool,
) -> Vec<f32> {
    let g = layer.geometry;
    let (oh, ow) = g.output().expect("checked at construction");
    let (kh, kw) = g.kernel;
    let (t, l, _, _) = g.padding;
    let zero = layer.layer.quantise(0.0);
    let mut out = vec![0.0; g.outputs * oh * ow];
    for o in 0..g.outputs {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut acc = i64::from(bias[o]);
                for c in 0..g.inputs {
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let iy = (oy * g.stride + ky) as isize - t as isize;
                            let ix = (ox * g.stride + kx) as isize - l as isize;
                            if iy < 0 || ix < 0 || iy >= g.height as isize || ix >= g.width as isize
                            {
                                continue;
                            }
                            let v = image[(c * g.height + iy as usize) * g.width + ix as usize];
                            let q = layer.layer.quantise(v) - zero;
                            let w = weights[((o * g.inputs + c) * kh + ky) * kw + kx];
                            acc += i64::from(w) * i64::from(q);
                        }
                    }
                }
                out[(o * oh + oy) * ow + ox] = layer.layer.store(acc as f32, o, None, relu);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::qpointwise::PART_ALIGN;
    use super::super::test_support::Rng;
    use super::*;

    fn check(dot: Dot, geometry: conv::Shape, relu: bool, rng: &mut Rng) {
        let x = Grid {
            scale: 0.01 + rng.below(100) as f32 * 1e-3,
            zero: rng.below(256) as i32,
        };
        // Values past the grid's range, so that both clamps are exercised.
        let image: Vec<f32> = rng
            .vec(geometry.inputs * geometry.height * geometry.width)
            .iter()
            .map(|v| v * 3.0)
            .collect();
        let (kh, kw) = geometry.kernel;
        let weights: Vec<i8> = (0..geometry.outputs * geometry.inputs * kh * kw)
            .map(|_| (rng.below(255) as i32 - 127) as i8)
            .collect();
        let bias: Vec<i32> = (0..geometry.outputs)
            .map(|_| (rng.below(20_001) as i32 - 10_000) << (2 * rng.below(9)))
            .collect();
        let w_scales: Vec<f32> = (0..geometry.outputs)
            .map(|_| 1e-4 + rng.below(100) as f32 * 1e-5)
            .collect();
        let layer = ConvLayer::new(geometry, &weights, &bias, x, &w_scales).expect("valid layer");
        let want = reference(&layer, &weights, &bias, &image, relu);
        let mut got = vec![f32::NAN; want.len()];
        layer.run(dot, &image, relu, &mut got, &mut Scratch::default());
        let same = |got: &[f32], how: &str| {
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    g.to_bits() == w.to_bits(),
                    "{dot} {geometry:?} relu {relu}{how}: element {i}: got {g}, want {w}"
                );
            }
        };
        same(&got, "");
        // Cut by outputs (as a crop's threads run it): the codes made once, each part's rows
        // from its `part` of the product.
        if geometry.outputs > PART_ALIGN {
            let plane = want.len() / geometry.outputs;
            let mut parted = vec![f32::NAN; want.len()];
            let mut scratch = Scratch::default();
            let codes = layer.codes(dot, &image, &mut scratch.image);
            let cut = PART_ALIGN * (1 + rng.below(geometry.outputs.div_ceil(PART_ALIGN) - 1));
            for range in [0..cut, cut..geometry.outputs] {
                let part = layer.part(range.clone());
                let out = &mut parted[range.start * plane..range.end * plane];
                layer.rows(dot, &part, codes, relu, out, &mut scratch.rows);
            }
            same(&parted, &format!(" cut at output {cut}"));
        }
    }

    #[test]
    fn every_dot_kind_equals_the_integer_reference() {
        let mut rng = Rng::new(0x57e4_c0de);
        if Dot::available().is_empty() {
            eprintln!("no int8 dot-product instructions on this CPU: nothing to check here");
        }
        for dot in Dot::available() {
            // OSNet's stem at our default model's 128×64, then random geometries (strides,
            // asymmetric paddings, partial groups of taps, odd widths).
            let stem = conv::Shape {
                inputs: 3,
                outputs: 16,
                height: 128,
                width: 64,
                kernel: (7, 7),
                stride: 2,
                padding: (3, 3, 3, 3),
            };
            check(dot, stem, true, &mut rng);
            // Our default model's stem at 160×80: 40-pixel output rows, four per product.
            let stem = conv::Shape {
                height: 160,
                width: 80,
                ..stem
            };
            check(dot, stem, true, &mut rng);
            for _ in 0..60 {
                let (kh, kw) = (1 + rng.below(5), 1 + rng.below(5));
                let geometry = conv::Shape {
                    inputs: 1 + rng.below(6),
                    outputs: 1 + rng.below(20),
                    height: kh + rng.below(20),
                    width: kw + rng.below(20),
                    kernel: (kh, kw),
                    stride: 1 + rng.below(3),
                    padding: (rng.below(kh), rng.below(kw), rng.below(kh), rng.below(kw)),
                };
                check(dot, geometry, rng.below(2) == 1, &mut rng);
            }
        }
    }
}
