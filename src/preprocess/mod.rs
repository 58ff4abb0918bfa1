//! Crop → model input: resize an RGB8 rectangle to the model's H×W, then normalise into a
//! preallocated NCHW f32 slot.
//!
//! The resize is Pillow's `Image.resize((W, H), Image.BILINEAR)` re-implemented step for step
//! (Pillow `libImaging/Resample.c`), so that a crop goes through reidcam exactly as it went through
//! the Python pipeline the models were trained and evaluated with:
//! - a triangle filter whose support grows with the downscale factor (a low-pass filter, not the
//!   2×2 bilinear interpolation of most image libraries — that difference alone costs several
//!   points of rank-1 on ReID crops);
//! - separable: a horizontal pass over the source rows the vertical pass needs, rounded to u8,
//!   then a vertical pass;
//! - weights normalised then quantised to 22-bit fixed point, accumulated in i32 from a rounding
//!   offset, clipped to 0..=255.
//!
//! Given the same RGB8 pixels, the output is byte-identical to Pillow's (checked against Pillow
//! output fixtures in `tests/fixtures/resize`).
//!
//! Buffers (filter coefficients, the intermediate image) grow to the largest crop seen and are
//! then reused: size them once with [`Preprocessor::with_max_source`] and the per-crop path never
//! allocates.

mod resample;

use crate::frame::{FrameError, Rect, RgbView};
use crate::manifest::{ChannelOrder, InputSpec};
use crate::simd::Isa;
use resample::{AxisCoeffs, horizontal_pass, vertical_pass};

/// Normalisation lookup: `lut[c][v]` is the model input value of pixel value `v` in model
/// channel `c`.
struct NormLut {
    /// For model channel `c`, which RGB byte feeds it.
    source_channel: [usize; 3],
    table: [[f32; 256]; 3],
}

impl NormLut {
    fn new(spec: &InputSpec) -> Self {
        let source_channel = match spec.channel_order {
            ChannelOrder::Rgb => [0, 1, 2],
            ChannelOrder::Bgr => [2, 1, 0],
        };
        let mut table = [[0.0f32; 256]; 3];
        for (c, t) in table.iter_mut().enumerate() {
            for (v, out) in t.iter_mut().enumerate() {
                *out = (v as f32 / spec.pixel_divisor - spec.mean[c]) / spec.std[c];
            }
        }
        Self {
            source_channel,
            table,
        }
    }
}

/// Resizes and normalises crops for one model input spec. Reuses its buffers across crops.
pub struct Preprocessor {
    height: usize,
    width: usize,
    lut: NormLut,
    horizontal: AxisCoeffs,
    vertical: AxisCoeffs,
    /// Output of the horizontal pass: `width` × (source rows used) RGB8.
    intermediate: Vec<u8>,
    /// Final resized RGB8 crop, `height` × `width`.
    resized: Vec<u8>,
    /// One output row of vertical-pass accumulators.
    accumulator: Vec<i32>,
    /// The passes' instruction set (`crate::simd`), chosen once.
    isa: Isa,
}

impl Preprocessor {
    /// A preprocessor for `spec`; buffers grow on the first crops.
    pub fn new(spec: &InputSpec) -> Self {
        let (height, width) = (spec.height as usize, spec.width as usize);
        Self {
            height,
            width,
            lut: NormLut::new(spec),
            horizontal: AxisCoeffs::default(),
            vertical: AxisCoeffs::default(),
            intermediate: Vec::new(),
            resized: vec![0; height * width * 3],
            accumulator: vec![0; width * 3],
            isa: Isa::detect(),
        }
    }

    /// A preprocessor whose buffers already fit any crop of up to `max_width` × `max_height`
    /// (e.g. the camera frame), so that later crops allocate nothing.
    pub fn with_max_source(spec: &InputSpec, max_width: u32, max_height: u32) -> Self {
        let mut p = Self::new(spec);
        let (mw, mh) = (max_width.max(1) as usize, max_height.max(1) as usize);
        // Kernel sizes grow with the source size, so reserve for the largest.
        p.horizontal.reserve_horizontal(mw, p.width);
        p.vertical.reserve(mh, p.height);
        p.intermediate
            .reserve((p.width * mh).max(mw * p.height) * 3);
        p.accumulator.reserve(mw * 3);
        p
    }

    /// Number of f32 values one crop occupies in the NCHW input (3 × H × W).
    pub fn slot_len(&self) -> usize {
        3 * self.height * self.width
    }

    /// Resizes `rect` of `frame` and writes the normalised planar result into `slot`
    /// (`3 × H × W` values: channel planes in the model's channel order).
    pub fn run(
        &mut self,
        frame: RgbView<'_>,
        rect: Rect,
        slot: &mut [f32],
    ) -> Result<(), FrameError> {
        assert_eq!(
            slot.len(),
            self.slot_len(),
            "input slot does not match the model input size"
        );
        self.resize(frame, rect)?;
        self.normalise_into(&self.resized, slot);
        Ok(())
    }

    /// Width of a resized crop (the model's W), pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// The latest resized crop (`H × W × 3`, packed RGB8).
    pub fn resized(&self) -> &[u8] {
        &self.resized
    }

    /// Bytes of one resized crop (`H × W × 3`), as [`resize`](Self::resize) returns.
    pub fn resized_len(&self) -> usize {
        self.resized.len()
    }

    /// Normalises a crop already resized to the model's H×W (packed RGB8, e.g. kept from an
    /// earlier frame) into `slot`.
    pub fn normalise_into(&self, resized: &[u8], slot: &mut [f32]) {
        assert_eq!(resized.len(), self.resized.len(), "crop is not H x W x 3");
        assert_eq!(
            slot.len(),
            self.slot_len(),
            "input slot does not match the model input size"
        );
        let plane = self.height * self.width;
        let (p0, rest) = slot.split_at_mut(plane);
        let (p1, p2) = rest.split_at_mut(plane);
        let [s0, s1, s2] = self.lut.source_channel;
        let [t0, t1, t2] = &self.lut.table;
        for (i, px) in resized.chunks_exact(3).enumerate() {
            p0[i] = t0[px[s0] as usize];
            p1[i] = t1[px[s1] as usize];
            p2[i] = t2[px[s2] as usize];
        }
    }

    /// Resizes `rect` of `frame` to the model's H×W and returns the RGB8 result (packed rows):
    /// the same bytes as Pillow's `crop(rect).resize((W, H), BILINEAR)`.
    pub fn resize(&mut self, frame: RgbView<'_>, rect: Rect) -> Result<&[u8], FrameError> {
        let src = frame.crop(rect)?;
        let (in_w, in_h) = (src.width() as usize, src.height() as usize);
        let (out_w, out_h) = (self.width, self.height);
        let need_horizontal = in_w != out_w;
        let need_vertical = in_h != out_h;
        self.horizontal.compute_horizontal(in_w, out_w);
        self.vertical.compute(in_h, out_h);
        let row = |r: usize| src.row(r as u32);
        let isa = self.isa;

        match (need_horizontal, need_vertical) {
            (false, false) => {
                for (y, dst) in self.resized.chunks_exact_mut(out_w * 3).enumerate() {
                    dst.copy_from_slice(row(y));
                }
            }
            (true, false) => horizontal_pass(isa, &self.horizontal, row, 0, &mut self.resized),
            (false, true) => vertical_pass(
                isa,
                &self.vertical,
                row,
                &mut self.resized,
                &mut self.accumulator[..out_w * 3],
            ),
            // Pillow 13 runs the vertical pass first when it shrinks the image and leaves the
            // smaller intermediate (in_h/out_h > in_w/out_w); the rounding to u8 in between makes
            // the order visible, so we follow it (checked by the resize fixtures).
            (true, true) if in_h > out_h && in_h * out_w > in_w * out_h => {
                // Vertical pass over the source columns the horizontal pass reads.
                let (x0, x1) = self.horizontal.span();
                let cols = (x1 - x0) * 3;
                self.intermediate.clear();
                self.intermediate.resize(out_h * cols, 0);
                self.accumulator.resize(self.accumulator.len().max(cols), 0);
                vertical_pass(
                    isa,
                    &self.vertical,
                    |r| &row(r)[x0 * 3..x1 * 3],
                    &mut self.intermediate,
                    &mut self.accumulator[..cols],
                );
                let intermediate = &self.intermediate;
                horizontal_pass(
                    isa,
                    &self.horizontal,
                    |r| &intermediate[r * cols..(r + 1) * cols],
                    x0,
                    &mut self.resized,
                );
            }
            (true, true) => {
                // Horizontal pass over the source rows the vertical pass reads.
                let (y0, y1) = self.vertical.span();
                let stride = out_w * 3;
                self.intermediate.clear();
                self.intermediate.resize((y1 - y0) * stride, 0);
                horizontal_pass(
                    isa,
                    &self.horizontal,
                    |r| row(y0 + r),
                    0,
                    &mut self.intermediate,
                );
                let intermediate = &self.intermediate;
                vertical_pass(
                    isa,
                    &self.vertical,
                    |r| &intermediate[(r - y0) * stride..(r - y0 + 1) * stride],
                    &mut self.resized,
                    &mut self.accumulator[..stride],
                );
            }
        }
        Ok(&self.resized)
    }
}

#[cfg(test)]
mod tests {
    use super::resample::{PRECISION_BITS, clip8};
    #[cfg(target_arch = "aarch64")]
    use super::resample::{horizontal_body, neon};
    use super::*;
    use crate::frame::RgbImage;
    use crate::manifest::ModelManifest;

    fn spec(h: u32, w: u32) -> InputSpec {
        ModelManifest::torchreid_default("t", "in", h, w, "out", 8).input
    }

    fn noise(width: u32, height: u32, seed: u32) -> RgbImage {
        let mut state = seed;
        let data = (0..width * height * 3)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 24) as u8
            })
            .collect();
        RgbImage::from_raw(width, height, data).unwrap()
    }

    #[test]
    fn clip8_is_pillows() {
        // Pillow's clip8 as it writes it: two tests, then the shift.
        let pillow = |acc: i32| -> u8 {
            if acc >= (1 << PRECISION_BITS << 8) {
                255
            } else if acc <= 0 {
                0
            } else {
                (acc >> PRECISION_BITS) as u8
            }
        };
        let edges = (0..=256).flat_map(|v: i64| {
            let at = v << PRECISION_BITS;
            [at - 1, at, at + 1]
        });
        let sweep = (i64::from(i32::MIN)..=i64::from(i32::MAX)).step_by(65_521);
        for acc in edges
            .chain(sweep)
            .chain([i64::from(i32::MIN), i64::from(i32::MAX)])
        {
            let acc = i32::try_from(acc).expect("every value is an i32");
            assert_eq!(clip8(acc), pillow(acc), "clip8({acc})");
        }
    }

    #[test]
    fn identity_size_copies() {
        let img = noise(6, 4, 1);
        let mut p = Preprocessor::new(&spec(4, 6));
        assert_eq!(p.resize(img.view(), img.bounds()).unwrap(), img.as_bytes());
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = RgbImage::from_raw(37, 91, [10u8, 128, 250].repeat(37 * 91)).unwrap();
        for (h, w) in [(256, 128), (20, 9), (91, 5), (7, 37)] {
            let mut p = Preprocessor::new(&spec(h, w));
            let out = p.resize(img.view(), img.bounds()).unwrap();
            assert!(
                out.chunks_exact(3).all(|px| px == [10, 128, 250]),
                "{h}x{w}"
            );
        }
    }

    #[test]
    fn crop_equals_resize_of_copied_crop() {
        let img = noise(50, 40, 7);
        let rect = Rect::new(5, 3, 21, 30);
        let view = img.view().crop(rect).unwrap();
        let copied: Vec<u8> = (0..rect.height)
            .flat_map(|y| view.row(y).to_vec())
            .collect();
        let copied = RgbImage::from_raw(rect.width, rect.height, copied).unwrap();
        let mut a = Preprocessor::new(&spec(16, 8));
        let mut b = Preprocessor::new(&spec(16, 8));
        assert_eq!(
            a.resize(img.view(), rect).unwrap(),
            b.resize(copied.view(), copied.bounds()).unwrap()
        );
    }

    #[test]
    fn normalisation_and_channel_order() {
        let img = RgbImage::from_raw(2, 1, vec![255, 0, 51, 255, 0, 51]).unwrap();
        let mut s = spec(1, 2);
        s.mean = [0.0; 3];
        s.std = [1.0; 3];
        let mut p = Preprocessor::new(&s);
        let mut slot = vec![0.0; 6];
        p.run(img.view(), img.bounds(), &mut slot).unwrap();
        assert_eq!(slot, [1.0, 1.0, 0.0, 0.0, 0.2, 0.2]);
        s.channel_order = ChannelOrder::Bgr;
        s.pixel_divisor = 1.0;
        let mut p = Preprocessor::new(&s);
        p.run(img.view(), img.bounds(), &mut slot).unwrap();
        assert_eq!(slot, [51.0, 51.0, 0.0, 0.0, 255.0, 255.0]);
    }

    /// The AVX2 passes give the plain passes' bytes, on the detector's letterbox of a full-HD
    /// frame and on random sizes up and down (groups of taps that end at a row's end, one tap).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx2_passes_give_the_same_bytes_as_the_plain_ones() {
        if !Isa::Avx2Fma.is_available() {
            eprintln!("skipped: this CPU has no AVX2");
            return;
        }
        let mut state = 0x5eed_u32;
        let mut below = |n: u32| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 8) % n
        };
        let mut cases = vec![
            (1920, 1080, 736, 414),
            (1280, 720, 736, 414),
            (768, 432, 736, 414),
        ];
        for _ in 0..60 {
            let (w, h) = (1 + below(400), 1 + below(60));
            cases.push((w, h, 1 + below(200), 1 + below(60)));
        }
        for (i, (w, h, ow, oh)) in cases.into_iter().enumerate() {
            let img = noise(w, h, i as u32);
            let (mut fast, mut plain) = (
                Preprocessor::new(&spec(oh, ow)),
                Preprocessor::new(&spec(oh, ow)),
            );
            fast.isa = Isa::Avx2Fma;
            plain.isa = Isa::Baseline;
            let want = plain.resize(img.view(), img.bounds()).unwrap();
            let got = fast.resize(img.view(), img.bounds()).unwrap();
            if let Some(i) = (0..want.len()).find(|&i| got[i] != want[i]) {
                panic!(
                    "{w}x{h} -> {ow}x{oh}: byte {i} is {} where {} was expected",
                    got[i], want[i]
                );
            }
        }
    }

    /// The NEON horizontal pass gives the plain pass's bytes, on the detector's letterbox of a
    /// full-HD frame and on random sizes up and down.
    #[cfg(target_arch = "aarch64")]
    #[test]
    fn the_neon_horizontal_pass_gives_the_same_bytes_as_the_plain_one() {
        let mut state = 0x5eed_u32;
        let mut below = |n: usize| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 8) as usize % n
        };
        let mut cases = vec![(1920, 736, 3), (1280, 736, 3), (768, 736, 3)];
        for _ in 0..60 {
            cases.push((1 + below(400), 1 + below(200), 1 + below(4)));
        }
        for (w, ow, rows) in cases {
            let mut coeffs = AxisCoeffs::default();
            coeffs.compute_horizontal(w, ow);
            let src: Vec<u8> = (0..w * 3 * rows).map(|_| below(256) as u8).collect();
            let line = |r: usize| &src[r * w * 3..(r + 1) * w * 3];
            let (mut fast, mut plain) = (vec![0u8; ow * 3 * rows], vec![0u8; ow * 3 * rows]);
            neon::horizontal(&coeffs, line, 0, &mut fast);
            horizontal_body(&coeffs, line, 0, &mut plain);
            if let Some(i) = (0..plain.len()).find(|&i| fast[i] != plain[i]) {
                panic!(
                    "{w} -> {ow}: byte {i} is {} where {} was expected",
                    fast[i], plain[i]
                );
            }
        }
    }

    #[test]
    fn upscale_and_downscale_in_each_axis() {
        // Every combination of need_horizontal / need_vertical, up and down.
        let img = noise(30, 60, 3);
        for (h, w) in [(60, 10), (60, 64), (20, 30), (90, 30), (20, 64), (256, 128)] {
            let mut p = Preprocessor::new(&spec(h, w));
            let out = p.resize(img.view(), img.bounds()).unwrap();
            assert_eq!(out.len(), (h * w * 3) as usize);
        }
    }
}
