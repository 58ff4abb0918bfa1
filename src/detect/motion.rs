//! Motion detection for fixed cameras: a running-average background on a downscaled grey grid,
//! a foreground mask, one dilation, connected components (8-neighbour union-find), merging of the
//! parts one person splits into (head, torso, legs against similar colours), and person-shaped
//! filters (area, height/width, fill). All buffers are sized from the frame once.

use serde::{Deserialize, Serialize};

use super::{DetectError, Detection, Detections, Detector, clip_box};
use crate::frame::RgbView;

/// `[detector.motion]` settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MotionConfig {
    /// The grid is at most this many cells wide (the frame is averaged in square blocks).
    pub grid_width: u32,
    /// Grey-level difference from the background that counts as foreground (0–255).
    pub threshold: u8,
    /// Background learning rate as a power of two: 5 → each frame moves it 1/32 of the way.
    pub learn_shift: u8,
    /// Frames used to learn the first background; nothing is reported before.
    pub warmup_frames: u32,
    /// Smallest person box, as a fraction of the frame area.
    pub min_area: f32,
    /// Height / width range of a person box.
    pub min_aspect: f32,
    pub max_aspect: f32,
    /// Smallest fraction of a box that must be foreground.
    pub min_fill: f32,
    /// Boxes grow by this fraction of their size on each side (crops then hold the whole person).
    pub pad: f32,
    /// Above this fraction of foreground the scene changed (lights, camera moved): relearn.
    pub max_foreground: f32,
}

impl Default for MotionConfig {
    fn default() -> Self {
        MotionConfig {
            grid_width: 160,
            threshold: 22,
            learn_shift: 5,
            warmup_frames: 5,
            min_area: 0.004,
            min_aspect: 1.0,
            max_aspect: 6.0,
            min_fill: 0.25,
            pad: 0.05,
            max_foreground: 0.5,
        }
    }
}

impl MotionConfig {
    pub fn validate(&self) -> Result<(), String> {
        let unit = |name: &str, v: f32| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(format!("detector.motion.{name} is {v}: expected 0..1"))
            }
        };
        unit("min_area", self.min_area)?;
        unit("min_fill", self.min_fill)?;
        unit("pad", self.pad)?;
        unit("max_foreground", self.max_foreground)?;
        if !(self.min_aspect > 0.0 && self.max_aspect >= self.min_aspect) {
            return Err(format!(
                "detector.motion.min_aspect/max_aspect are {}/{}: expected 0 < min ≤ max",
                self.min_aspect, self.max_aspect
            ));
        }
        if !(8..=1024).contains(&self.grid_width) {
            return Err(format!(
                "detector.motion.grid_width is {}: expected 8..1024",
                self.grid_width
            ));
        }
        if self.learn_shift == 0 || self.learn_shift > 12 {
            return Err(format!(
                "detector.motion.learn_shift is {}: expected 1..12",
                self.learn_shift
            ));
        }
        Ok(())
    }
}

/// The background model and foreground mask, shared with zone gating.
pub(crate) struct Background {
    config: MotionConfig,
    frame: (u32, u32),
    block: u32,
    grid: (usize, usize),
    /// Background, grey × 16.
    model: Vec<u16>,
    grey: Vec<u8>,
    mask: Vec<bool>,
    seen: u32,
}

impl Background {
    pub(crate) fn new(config: MotionConfig) -> Self {
        Background {
            config,
            frame: (0, 0),
            block: 1,
            grid: (0, 0),
            model: Vec::new(),
            grey: Vec::new(),
            mask: Vec::new(),
            seen: 0,
        }
    }

    fn resize(&mut self, width: u32, height: u32) {
        self.frame = (width, height);
        self.block = width.div_ceil(self.config.grid_width).max(1);
        let grid = (
            (width / self.block).max(1) as usize,
            (height / self.block).max(1) as usize,
        );
        self.grid = grid;
        let cells = grid.0 * grid.1;
        self.model = vec![0; cells];
        self.grey = vec![0; cells];
        self.mask = vec![false; cells];
        self.seen = 0;
    }

    /// Updates the model with `frame` and the mask; false while still learning (or relearning).
    pub(crate) fn update(&mut self, frame: RgbView<'_>) -> bool {
        if (frame.width(), frame.height()) != self.frame {
            self.resize(frame.width(), frame.height());
        }
        let (gw, gh) = self.grid;
        let b = self.block as usize;
        let area = (b * b) as u32;
        for gy in 0..gh {
            let out = &mut self.grey[gy * gw..(gy + 1) * gw];
            let mut sums = [0u32; 1024];
            let sums = &mut sums[..gw];
            for dy in 0..b {
                let row = frame.row((gy * b + dy) as u32);
                for (gx, sum) in sums.iter_mut().enumerate() {
                    for px in row[gx * b * 3..(gx + 1) * b * 3].chunks_exact(3) {
                        *sum += (u32::from(px[0]) * 77
                            + u32::from(px[1]) * 150
                            + u32::from(px[2]) * 29)
                            >> 8;
                    }
                }
            }
            for (o, s) in out.iter_mut().zip(sums.iter()) {
                *o = (s / area) as u8;
            }
        }
        let warm = self.config.warmup_frames.max(1);
        if self.seen == 0 {
            for (m, &g) in self.model.iter_mut().zip(&self.grey) {
                *m = u16::from(g) << 4;
            }
        }
        self.seen = self.seen.saturating_add(1);
        let threshold = i32::from(self.config.threshold) << 4;
        let mut foreground = 0usize;
        for ((m, &g), fg) in self
            .model
            .iter_mut()
            .zip(&self.grey)
            .zip(self.mask.iter_mut())
        {
            let diff = (i32::from(g) << 4) - i32::from(*m);
            *fg = diff.abs() > threshold;
            foreground += usize::from(*fg);
            // Learn fast while warming up; slowly under foreground (so that a parked object
            // becomes background eventually, not at once).
            let shift = if self.seen <= warm {
                1
            } else if *fg {
                i32::from(self.config.learn_shift) + 3
            } else {
                i32::from(self.config.learn_shift)
            };
            *m = (i32::from(*m) + (diff >> shift)) as u16;
        }
        if self.seen <= warm {
            return false;
        }
        if foreground as f32 > self.config.max_foreground * (gw * gh) as f32 {
            log::info!(
                "motion: {foreground} of {} cells changed: relearning the background",
                gw * gh
            );
            self.seen = 0;
            return false;
        }
        true
    }

    /// Fraction of foreground cells inside a frame rectangle.
    pub(crate) fn fill(&self, rect: crate::frame::Rect) -> f32 {
        let b = self.block;
        let (gw, gh) = self.grid;
        let x0 = (rect.x / b) as usize;
        let y0 = (rect.y / b) as usize;
        let x1 = (((rect.x + rect.width) / b) as usize).min(gw);
        let y1 = (((rect.y + rect.height) / b) as usize).min(gh);
        if x1 <= x0 || y1 <= y0 {
            return 0.0;
        }
        let mut n = 0usize;
        for y in y0..y1 {
            n += self.mask[y * gw + x0..y * gw + x1]
                .iter()
                .filter(|&&f| f)
                .count();
        }
        n as f32 / ((x1 - x0) * (y1 - y0)) as f32
    }
}

/// A blob's box on the grid (inclusive-exclusive) and its foreground cell count.
#[derive(Clone, Copy, Debug, Default)]
struct Blob {
    x0: usize,
    y0: usize,
    x1: usize,
    y1: usize,
    cells: usize,
}

const MAX_BLOBS: usize = 256;

pub struct MotionDetector {
    background: Background,
    dilated: Vec<bool>,
    labels: Vec<u32>,
    parent: Vec<u32>,
    /// Root label → index in `blobs`.
    blob_of: Vec<u32>,
    blobs: Vec<Blob>,
}

impl MotionDetector {
    pub fn new(config: MotionConfig) -> Result<Self, DetectError> {
        config.validate().map_err(DetectError::Config)?;
        Ok(MotionDetector {
            background: Background::new(config),
            dilated: Vec::new(),
            labels: Vec::new(),
            parent: Vec::new(),
            blob_of: Vec::new(),
            blobs: Vec::with_capacity(MAX_BLOBS),
        })
    }

    fn find(parent: &mut [u32], mut x: u32) -> u32 {
        while parent[x as usize] != x {
            parent[x as usize] = parent[parent[x as usize] as usize];
            x = parent[x as usize];
        }
        x
    }

    /// Labels 8-connected foreground cells and collects their boxes into `blobs`.
    fn components(&mut self) {
        let (gw, gh) = self.background.grid;
        let cells = gw * gh;
        if self.dilated.len() != cells {
            self.dilated = vec![false; cells];
            self.labels = vec![0; cells];
            self.parent = Vec::with_capacity(cells + 1);
            self.blob_of = Vec::with_capacity(cells + 1);
        }
        let mask = &self.background.mask;
        // One 3×3 dilation joins the parts of a body that are a cell apart.
        for y in 0..gh {
            for x in 0..gw {
                let mut on = false;
                for ny in y.saturating_sub(1)..(y + 2).min(gh) {
                    for nx in x.saturating_sub(1)..(x + 2).min(gw) {
                        on |= mask[ny * gw + nx];
                    }
                }
                self.dilated[y * gw + x] = on;
            }
        }
        self.parent.clear();
        self.parent.push(0);
        for y in 0..gh {
            for x in 0..gw {
                let i = y * gw + x;
                self.labels[i] = 0;
                if !self.dilated[i] {
                    continue;
                }
                // Already-labelled neighbours: left, up-left, up, up-right.
                let mut label = 0u32;
                let neighbours = [
                    (x > 0).then(|| i - 1),
                    (x > 0 && y > 0).then(|| i - gw - 1),
                    (y > 0).then(|| i - gw),
                    (y > 0 && x + 1 < gw).then(|| i - gw + 1),
                ];
                for n in neighbours.into_iter().flatten() {
                    let l = self.labels[n];
                    if l == 0 {
                        continue;
                    }
                    if label == 0 {
                        label = l;
                    } else {
                        let (a, b) = (
                            Self::find(&mut self.parent, label),
                            Self::find(&mut self.parent, l),
                        );
                        if a != b {
                            self.parent[a.max(b) as usize] = a.min(b);
                        }
                    }
                }
                if label == 0 {
                    label = self.parent.len() as u32;
                    self.parent.push(label);
                }
                self.labels[i] = label;
            }
        }
        // One box per root label.
        self.blobs.clear();
        let labels_used = self.parent.len();
        self.blob_of.clear();
        self.blob_of.resize(labels_used, u32::MAX);
        for y in 0..gh {
            for x in 0..gw {
                let l = self.labels[y * gw + x];
                if l == 0 {
                    continue;
                }
                let root = Self::find(&mut self.parent, l) as usize;
                if self.blob_of[root] == u32::MAX {
                    if self.blobs.len() == MAX_BLOBS {
                        continue;
                    }
                    self.blob_of[root] = self.blobs.len() as u32;
                    self.blobs.push(Blob {
                        x0: x,
                        y0: y,
                        x1: x + 1,
                        y1: y + 1,
                        cells: 0,
                    });
                }
                let b = &mut self.blobs[self.blob_of[root] as usize];
                b.x0 = b.x0.min(x);
                b.x1 = b.x1.max(x + 1);
                b.y1 = b.y1.max(y + 1);
                // Count the real foreground, not the dilation.
                b.cells += usize::from(mask[y * gw + x]);
            }
        }
    }

    /// Merges blobs that are parts of one upright body: overlapping boxes, or boxes stacked
    /// vertically (sharing most of the narrower one's width) with a small gap.
    fn merge_parts(&mut self) {
        let gap = 2;
        loop {
            let mut merged = false;
            'outer: for i in 0..self.blobs.len() {
                for j in i + 1..self.blobs.len() {
                    let (a, b) = (self.blobs[i], self.blobs[j]);
                    let overlap_x = a.x1.min(b.x1) as isize - a.x0.max(b.x0) as isize;
                    let narrower = (a.x1 - a.x0).min(b.x1 - b.x0) as isize;
                    let gap_y = a.y0.max(b.y0) as isize - a.y1.min(b.y1) as isize;
                    let gap_x = -overlap_x;
                    let overlapping = overlap_x > 0 && gap_y < 0;
                    let stacked = overlap_x * 2 >= narrower && gap_y <= gap;
                    let touching = gap_x <= 0 && gap_y <= 0;
                    if overlapping || stacked || touching {
                        self.blobs[i] = Blob {
                            x0: a.x0.min(b.x0),
                            y0: a.y0.min(b.y0),
                            x1: a.x1.max(b.x1),
                            y1: a.y1.max(b.y1),
                            cells: a.cells + b.cells,
                        };
                        self.blobs.swap_remove(j);
                        merged = true;
                        break 'outer;
                    }
                }
            }
            if !merged {
                return;
            }
        }
    }
}

impl Detector for MotionDetector {
    fn detect(&mut self, frame: RgbView<'_>, out: &mut Detections) -> Result<(), DetectError> {
        out.clear();
        if !self.background.update(frame) {
            return Ok(());
        }
        self.components();
        self.merge_parts();
        let c = &self.background.config;
        let b = self.background.block as f32;
        let (fw, fh) = (frame.width(), frame.height());
        let min_cells = c.min_area * (fw as f32 * fh as f32) / (b * b);
        // Largest first, so that the capacity keeps the biggest people.
        self.blobs
            .sort_unstable_by_key(|b| std::cmp::Reverse(b.cells));
        for blob in &self.blobs {
            let (w, h) = ((blob.x1 - blob.x0) as f32, (blob.y1 - blob.y0) as f32);
            let fill = blob.cells as f32 / (w * h);
            let aspect = h / w;
            if (blob.cells as f32) < min_cells
                || fill < c.min_fill
                || aspect < c.min_aspect
                || aspect > c.max_aspect
            {
                continue;
            }
            let (px, py) = (w * b * c.pad, h * b * c.pad);
            let rect = clip_box(
                blob.x0 as f32 * b - px,
                blob.y0 as f32 * b - py,
                blob.x1 as f32 * b + px,
                blob.y1 as f32 * b + py,
                fw,
                fh,
            );
            if let Some(rect) = rect
                && out
                    .push(Detection {
                        rect,
                        score: fill.min(1.0),
                    })
                    .is_err()
            {
                break;
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        let c = &self.background.config;
        format!(
            "motion (grid ≤ {} cells wide, threshold {}, min area {:.3} of the frame)",
            c.grid_width, c.threshold, c.min_area
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::{FrameSource, SyntheticConfig, SyntheticSource};
    use crate::detect::iou;

    #[test]
    fn finds_the_walker_of_the_synthetic_scene() {
        let config = SyntheticConfig {
            width: 320,
            height: 180,
            ..SyntheticConfig::default()
        };
        let mut truth = SyntheticSource::new(config.clone()).unwrap();
        let mut source = SyntheticSource::new(config).unwrap();
        let mut detector = MotionDetector::new(MotionConfig::default()).unwrap();
        let mut out = Detections::new();
        let (mut frames_with_person, mut found, mut false_alarms) = (0, 0, 0);
        for n in 0..120 {
            let frame = source.next_frame().unwrap();
            detector.detect(frame.image, &mut out).unwrap();
            let expected = truth.person_at(n).map(|(_, r)| r);
            let _ = truth.next_frame();
            match expected {
                // Only people fully inside count (half a body at the edge may be filtered).
                Some(r) if n > 10 && r.width > 25 => {
                    frames_with_person += 1;
                    if out.iter().any(|d| iou(d.rect, r) > 0.5) {
                        found += 1;
                    }
                }
                None if n > 10 => false_alarms += out.len(),
                _ => {}
            }
        }
        assert!(frames_with_person > 40, "{frames_with_person}");
        assert!(
            found * 10 >= frames_with_person * 9,
            "found {found} of {frames_with_person}"
        );
        assert_eq!(false_alarms, 0);
    }
}
