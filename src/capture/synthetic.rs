//! A generated scene for tests, soak runs and users without a camera: a textured static
//! background with people (simple figures of distinct clothing colours) walking through it one
//! at a time after a moment of empty scene, alternating direction, with sensor noise. Deterministic for a given seed.

use super::replay::frame_time;
use super::{CaptureError, Frame, FrameSource};
use crate::bench::XorShift;
use crate::frame::{Rect, RgbImage};

/// The scene's parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct SyntheticConfig {
    pub width: u32,
    pub height: u32,
    pub fps: f64,
    /// Distinct people, walking through in turn (then again, in the same order).
    pub people: u32,
    /// Seconds a person takes to cross the frame.
    pub crossing_secs: f64,
    /// Seconds of empty scene between two people.
    pub gap_secs: f64,
    /// Peak amplitude of the per-pixel noise, in grey levels.
    pub noise: u8,
    pub seed: u64,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        SyntheticConfig {
            width: 640,
            height: 360,
            fps: 10.0,
            people: 4,
            crossing_secs: 4.0,
            gap_secs: 1.5,
            noise: 3,
            seed: 1,
        }
    }
}

/// Clothing of one synthetic person: head, shirt, trousers; and a shirt stripe colour.
const OUTFITS: [[[u8; 3]; 4]; 8] = [
    [
        [224, 172, 140],
        [200, 30, 30],
        [40, 40, 60],
        [250, 250, 250],
    ],
    [
        [190, 140, 100],
        [30, 80, 200],
        [160, 150, 120],
        [30, 80, 200],
    ],
    [[120, 80, 60], [240, 220, 40], [20, 20, 20], [20, 20, 20]],
    [
        [230, 190, 160],
        [40, 160, 60],
        [90, 60, 40],
        [240, 240, 240],
    ],
    [
        [200, 150, 120],
        [250, 250, 250],
        [30, 30, 120],
        [200, 30, 30],
    ],
    [[150, 100, 70], [120, 40, 160], [70, 70, 70], [120, 40, 160]],
    [
        [210, 170, 130],
        [250, 140, 20],
        [200, 200, 210],
        [20, 20, 20],
    ],
    [[100, 70, 50], [20, 20, 20], [120, 30, 30], [200, 200, 40]],
];

pub struct SyntheticSource {
    config: SyntheticConfig,
    background: RgbImage,
    rgb: RgbImage,
    rng: XorShift,
    sequence: u64,
}

impl SyntheticSource {
    pub fn new(config: SyntheticConfig) -> Result<Self, CaptureError> {
        let bad = |problem: String| CaptureError::Replay {
            path: "synthetic".into(),
            problem,
        };
        if config.width < 64 || config.height < 64 || config.width > 4096 || config.height > 4096 {
            return Err(bad(format!(
                "size {}x{} is out of range: expected 64..4096 on each side",
                config.width, config.height
            )));
        }
        if !(config.fps > 0.0 && config.crossing_secs > 0.0 && config.gap_secs >= 0.0)
            || config.people == 0
        {
            return Err(bad(
                "fps, crossing time and people must be positive (gap ≥ 0)".into(),
            ));
        }
        let mut background =
            RgbImage::black(config.width, config.height).map_err(|e| bad(e.to_string()))?;
        let mut rng = XorShift::new(config.seed);
        let (w, h) = (config.width as usize, config.height as usize);
        // A wall (vertical gradient), a floor from 70% down, and a fixed texture.
        for (y, row) in background
            .as_bytes_mut()
            .chunks_exact_mut(w * 3)
            .enumerate()
        {
            for px in row.chunks_exact_mut(3) {
                let t = rng.below(24) as u8;
                let base: [u8; 3] = if y * 10 < h * 7 {
                    let g = 150 + (y * 60 / h) as u8;
                    [g, g - 10, g - 25]
                } else {
                    [110, 100, 90]
                };
                for (c, b) in px.iter_mut().zip(base) {
                    *c = b.saturating_add(t).saturating_sub(12);
                }
            }
        }
        let rgb = background.clone();
        Ok(SyntheticSource {
            config,
            background,
            rgb,
            rng,
            sequence: 0,
        })
    }

    /// Frames per person (crossing + gap).
    fn period(&self) -> u64 {
        ((self.config.crossing_secs + self.config.gap_secs) * self.config.fps).round() as u64
    }

    /// Who is in frame `n` and where: (outfit, box x, y, w, h, step phase).
    fn walker(&self, n: u64) -> Option<(usize, i64, i64, i64, i64, u64)> {
        let period = self.period().max(1);
        let crossing = (self.config.crossing_secs * self.config.fps)
            .round()
            .max(1.0) as u64;
        // Each period starts with the empty scene (so a background can be learnt), then a
        // person crosses.
        let gap = period.saturating_sub(crossing);
        let (turn, t) = (n / period, n % period);
        if t < gap {
            return None;
        }
        let t = t - gap;
        let (w, h) = (i64::from(self.config.width), i64::from(self.config.height));
        let ph = h * 7 / 10;
        let pw = ph * 3 / 10;
        let travel = w + pw;
        let mut x = (t as i64 * travel) / crossing as i64 - pw;
        if turn % 2 == 1 {
            x = w - pw - x;
        }
        let bob = if (t / 2).is_multiple_of(2) {
            0
        } else {
            h / 120
        };
        let outfit = (turn % u64::from(self.config.people)) as usize % OUTFITS.len();
        Some((outfit, x, h * 95 / 100 - ph - bob, pw, ph, t))
    }
}

impl SyntheticSource {
    /// Ground truth for tests: who is in frame `sequence` (outfit index) and their box, clipped
    /// to the frame.
    pub fn person_at(&self, sequence: u64) -> Option<(usize, Rect)> {
        let (outfit, x, y, w, h, _) = self.walker(sequence)?;
        let (iw, ih) = (self.config.width, self.config.height);
        Rect::from_corners_clipped(x, y, x + w, y + h, iw, ih).map(|r| (outfit, r))
    }
}

/// Fills the part of `(x, y, w, h)` inside the image.
fn fill(img: &mut RgbImage, x: i64, y: i64, w: i64, h: i64, colour: [u8; 3]) {
    let Some(r) = Rect::from_corners_clipped(x, y, x + w, y + h, img.width(), img.height()) else {
        return;
    };
    let stride = img.width() as usize * 3;
    let data = img.as_bytes_mut();
    for row in r.y..r.y + r.height {
        let start = row as usize * stride + r.x as usize * 3;
        for px in data[start..start + r.width as usize * 3].chunks_exact_mut(3) {
            px.copy_from_slice(&colour);
        }
    }
}

impl FrameSource for SyntheticSource {
    fn next_frame(&mut self) -> Result<Frame<'_>, CaptureError> {
        let n = self.sequence;
        self.sequence += 1;
        self.rgb
            .as_bytes_mut()
            .copy_from_slice(self.background.as_bytes());
        if let Some((outfit, x, y, w, h, t)) = self.walker(n) {
            let [skin, shirt, trousers, stripe] = OUTFITS[outfit];
            let head = h / 7;
            fill(&mut self.rgb, x + w / 4, y, w / 2, head, skin);
            let torso = h * 3 / 7;
            fill(&mut self.rgb, x, y + head, w, torso, shirt);
            fill(&mut self.rgb, x, y + head + torso / 3, w, torso / 8, stripe);
            // Legs: a scissor gait.
            let legs_y = y + head + torso;
            let leg_h = h - head - torso;
            let stride = if (t / 3) % 2 == 0 { w / 8 } else { -w / 8 };
            fill(
                &mut self.rgb,
                x + w / 8 + stride,
                legs_y,
                w / 3,
                leg_h,
                trousers,
            );
            fill(
                &mut self.rgb,
                x + w * 13 / 24 - stride,
                legs_y,
                w / 3,
                leg_h,
                trousers,
            );
        }
        if self.config.noise > 0 {
            let amp = u64::from(self.config.noise) * 2 + 1;
            let mut bits = 0u64;
            for (i, c) in self.rgb.as_bytes_mut().iter_mut().enumerate() {
                if i % 8 == 0 {
                    bits = self.rng.next_u64();
                }
                let r = ((bits >> ((i % 8) * 8)) & 0xFF) % amp;
                *c = (i16::from(*c) + r as i16 - i16::from(self.config.noise)).clamp(0, 255) as u8;
            }
        }
        Ok(Frame {
            image: self.rgb.view(),
            sequence: n,
            timestamp: frame_time(n, self.config.fps),
            raw: &[],
            name: "",
        })
    }

    fn describe(&self) -> String {
        let c = &self.config;
        format!(
            "synthetic {}x{} at {} fps, {} people crossing in {} s",
            c.width, c.height, c.fps, c.people, c.crossing_secs
        )
    }

    fn size(&self) -> (u32, u32) {
        (self.config.width, self.config.height)
    }
}
