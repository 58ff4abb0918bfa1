//! Crop quality gating: which detections make crops worth embedding.
//!
//! A ReID embedding is only as good as its crop. A person cut by the frame edge, far away (few
//! pixels), overlapped by someone else, motion-blurred or found with a low score gives an
//! embedding that lies between people — and a track decided from such crops merges people or
//! becomes a phantom identity. So a crop is embedded only when it passes every test below, and
//! a track is decided only once it has `min_crops` good crops (the pipeline's rule). Trackers with
//! ReID do the same: DeepStream's NvDCF extracts ReID features only for detections above a
//! confidence and visibility and decides a tracklet after a minimum of frames; BoT-SORT/ByteTrack
//! keep low-score boxes for motion but not for appearance.
//!
//! Defaults (documented in docs/daemon.md, measured on the shared videos):
//! score ≥ 0.6 (model detectors), height ≥ 80 px, height/width 1.2–5, nothing within 2 px of the
//! frame's left, right or bottom edge (the top edge only for boxes at least 1.8 times as tall as
//! wide: a standing person whose head touches it), IoU ≤ 0.15 with any other detection, and a
//! sharpness ≥ 0.06 ([`sharpness`]; the sharp crops of four domains score 0.09 and up at their
//! 1st percentile, the same crops blurred by 2 pixels 0.03–0.11 at their median).

use serde::{Deserialize, Serialize};

use crate::detect::{Detection, iou};
use crate::frame::Rect;

/// `[quality]` settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QualityConfig {
    /// Least detector score of an embedded crop (model detectors; motion and zones report a
    /// foreground fill instead, which this does not apply to).
    pub min_score: f32,
    /// Least crop height, frame pixels.
    pub min_height: u32,
    /// Height / width range of a whole standing or walking person.
    pub min_aspect: f32,
    pub max_aspect: f32,
    /// A box within this many pixels of the left, right or bottom frame edge is cut by it.
    pub edge_margin: u32,
    /// A box touching the top edge counts as whole if it is at least this many times as tall as
    /// wide (a standing person whose head reaches the edge); shorter ones are cut (0: never).
    pub top_edge_min_aspect: f32,
    /// Most overlap (IoU) with any other detection of the frame: more is two people in one crop.
    pub max_overlap: f32,
    /// Least sharpness ([`sharpness`]: Laplacian variance over luma variance, on the crop
    /// averaged down to 32 px wide).
    pub min_sharpness: f32,
    /// Good crops embedded before a track's first decision (and before it may create an
    /// identity).
    pub min_crops: u32,
}

impl Default for QualityConfig {
    fn default() -> Self {
        QualityConfig {
            min_score: 0.6,
            min_height: 80,
            min_aspect: 1.2,
            max_aspect: 5.0,
            edge_margin: 2,
            top_edge_min_aspect: 1.8,
            max_overlap: 0.15,
            min_sharpness: 0.06,
            min_crops: 4,
        }
    }
}

/// Most good crops a track may be asked to wait for.
pub const MAX_MIN_CROPS: u32 = 64;

impl QualityConfig {
    pub fn validate(&self) -> Result<(), String> {
        let unit = |name: &str, v: f32| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(format!("quality.{name} is {v}: expected 0..1"))
            }
        };
        unit("min_score", self.min_score)?;
        unit("max_overlap", self.max_overlap)?;
        if !(self.min_aspect > 0.0
            && self.min_aspect < self.max_aspect
            && self.max_aspect.is_finite())
        {
            return Err(format!(
                "quality.min_aspect and max_aspect are {} and {}: expected 0 < min < max",
                self.min_aspect, self.max_aspect
            ));
        }
        if !(self.top_edge_min_aspect >= 0.0 && self.top_edge_min_aspect.is_finite()) {
            return Err("quality.top_edge_min_aspect must be a number ≥ 0".into());
        }
        if !(self.min_sharpness >= 0.0 && self.min_sharpness.is_finite()) {
            return Err("quality.min_sharpness must be a number ≥ 0".into());
        }
        if !(1..=MAX_MIN_CROPS).contains(&self.min_crops) {
            return Err(format!(
                "quality.min_crops is {}: expected 1..={MAX_MIN_CROPS}",
                self.min_crops
            ));
        }
        Ok(())
    }
}

/// Why a crop was not embedded (counted in the run's summary).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    Score,
    Small,
    Shape,
    Edge,
    Overlap,
    Blur,
}

/// Rejections by reason.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Rejections {
    pub score: u64,
    pub small: u64,
    pub shape: u64,
    pub edge: u64,
    pub overlap: u64,
    pub blur: u64,
}

impl Rejections {
    pub fn count(&mut self, r: Rejection) {
        *match r {
            Rejection::Score => &mut self.score,
            Rejection::Small => &mut self.small,
            Rejection::Shape => &mut self.shape,
            Rejection::Edge => &mut self.edge,
            Rejection::Overlap => &mut self.overlap,
            Rejection::Blur => &mut self.blur,
        } += 1;
    }
}

/// Where the boxes come from, which decides the tests that apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BoxSource {
    /// A person detector with a confidence: every test.
    Model,
    /// Foreground blobs: no score test (the fill is not a confidence).
    Motion,
    /// Fixed rectangles an operator drew: neither the score nor the shape and edge tests.
    Zones,
}

/// The gate for one source of boxes.
#[derive(Clone, Debug)]
pub struct CropGate {
    config: QualityConfig,
    source: BoxSource,
}

impl CropGate {
    pub fn new(config: QualityConfig, source: BoxSource) -> Self {
        CropGate { config, source }
    }

    pub fn config(&self) -> &QualityConfig {
        &self.config
    }

    /// The geometric tests, on the box alone: score, size, shape, frame edges, overlap with the
    /// frame's other detections (`others` may include the box itself).
    pub fn check_box(
        &self,
        det: &Detection,
        frame: (u32, u32),
        others: &[Detection],
    ) -> Result<(), Rejection> {
        let c = &self.config;
        let r = det.rect;
        if self.source == BoxSource::Model && det.score < c.min_score {
            return Err(Rejection::Score);
        }
        if r.height < c.min_height {
            return Err(Rejection::Small);
        }
        let drawn = self.source == BoxSource::Zones;
        let aspect = r.height as f32 / r.width.max(1) as f32;
        if !drawn && !(c.min_aspect..=c.max_aspect).contains(&aspect) {
            return Err(Rejection::Shape);
        }
        if !drawn && cut_by_edge(r, frame, c.edge_margin, aspect, c.top_edge_min_aspect) {
            return Err(Rejection::Edge);
        }
        if others
            .iter()
            .any(|o| o.rect != r && iou(o.rect, r) > c.max_overlap)
        {
            return Err(Rejection::Overlap);
        }
        Ok(())
    }

    /// The tests a picture an operator uploads must pass to be enrolled as a person (it has no
    /// detector score, frame edge or neighbours): at least `min_height` pixels tall, and shaped
    /// like a whole person (`min_aspect`..`max_aspect`). The error says what was expected.
    pub fn check_picture(&self, width: u32, height: u32) -> Result<(), String> {
        let c = &self.config;
        if height < c.min_height {
            return Err(format!(
                "the picture is {width}×{height} pixels: a person's picture must be at least {} pixels tall (quality.min_height)",
                c.min_height
            ));
        }
        let aspect = height as f32 / width.max(1) as f32;
        if !(c.min_aspect..=c.max_aspect).contains(&aspect) {
            return Err(format!(
                "the picture is {width}×{height} pixels (height / width {aspect:.2}): a whole person's picture is {}–{} times as tall as wide (quality.min_aspect, max_aspect); crop it to the person",
                c.min_aspect, c.max_aspect
            ));
        }
        Ok(())
    }

    /// The sharpness test on the resized crop (RGB8, `width` pixels per row).
    pub fn check_sharpness(&self, rgb: &[u8], width: usize) -> Result<f32, Rejection> {
        let s = sharpness(rgb, width);
        if s < self.config.min_sharpness {
            Err(Rejection::Blur)
        } else {
            Ok(s)
        }
    }
}

fn cut_by_edge(r: Rect, (fw, fh): (u32, u32), margin: u32, aspect: f32, top_aspect: f32) -> bool {
    let left = r.x <= margin;
    let right = r.x + r.width + margin >= fw;
    let bottom = r.y + r.height + margin >= fh;
    let top = r.y <= margin && !(top_aspect > 0.0 && aspect >= top_aspect);
    left || right || bottom || top
}

/// Width of the grid sharpness is measured on: the crop is averaged down to it (whatever the
/// model's input size), so the measure and its threshold do not depend on the model.
const SHARPNESS_GRID: usize = 32;
/// Largest grid height (a crop at most 8 times as tall as wide).
const SHARPNESS_ROWS: usize = 256;

/// How sharp a resized crop (RGB8, `width` pixels per row) is: its luma (BT.601) averaged in
/// square blocks down to [`SHARPNESS_GRID`] columns, then the variance of the 4-neighbour
/// Laplacian over the variance of the luma. Scale-free and contrast-free: on the shared data
/// sharp crops score 0.09–2 (1st percentile to median, four domains) and the same crops blurred
/// by a 2-pixel Gaussian (at 64 px wide) 0.03–0.11. No allocation (a fixed grid on the stack).
pub fn sharpness(rgb: &[u8], width: usize) -> f32 {
    let height = if width == 0 {
        0
    } else {
        rgb.len() / (3 * width)
    };
    let f = (width / SHARPNESS_GRID).max(1);
    let (gw, gh) = (
        (width / f).min(SHARPNESS_GRID),
        (height / f).min(SHARPNESS_ROWS),
    );
    if gw < 3 || gh < 3 {
        return 0.0;
    }
    let mut grid = [[0f32; SHARPNESS_GRID]; SHARPNESS_ROWS];
    let scale = 1.0 / (f * f) as f32;
    for (gy, row) in grid.iter_mut().take(gh).enumerate() {
        for (gx, cell) in row.iter_mut().take(gw).enumerate() {
            let mut sum = 0.0;
            for y in gy * f..(gy + 1) * f {
                for x in gx * f..(gx + 1) * f {
                    let p = &rgb[(y * width + x) * 3..];
                    sum +=
                        0.299 * f32::from(p[0]) + 0.587 * f32::from(p[1]) + 0.114 * f32::from(p[2]);
                }
            }
            *cell = sum * scale;
        }
    }
    let (mut l1, mut l2, mut v1, mut v2) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    for y in 1..gh - 1 {
        for x in 1..gw - 1 {
            let c = grid[y][x];
            let lap = 4.0 * c - grid[y][x - 1] - grid[y][x + 1] - grid[y - 1][x] - grid[y + 1][x];
            l1 += f64::from(lap);
            l2 += f64::from(lap) * f64::from(lap);
            v1 += f64::from(c);
            v2 += f64::from(c) * f64::from(c);
        }
    }
    let n = ((gw - 2) * (gh - 2)) as f64;
    let lap_var = l2 / n - (l1 / n).powi(2);
    let luma_var = v2 / n - (v1 / n).powi(2);
    if luma_var < 1e-6 {
        return 0.0;
    }
    (lap_var / luma_var) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(x: u32, y: u32, w: u32, h: u32, score: f32) -> Detection {
        Detection {
            rect: Rect::new(x, y, w, h),
            score,
        }
    }

    #[test]
    fn each_test_rejects_what_it_should() {
        let gate = CropGate::new(QualityConfig::default(), BoxSource::Model);
        let frame = (768, 432);
        let good = det(300, 40, 100, 300, 0.9);
        assert_eq!(gate.check_box(&good, frame, &[good]), Ok(()));
        let cases = [
            (det(300, 40, 100, 300, 0.5), Rejection::Score),
            (det(300, 40, 30, 70, 0.9), Rejection::Small),
            (det(300, 40, 200, 160, 0.9), Rejection::Shape), // wider than a person
            (det(300, 40, 30, 200, 0.9), Rejection::Shape),  // a pole: 6.7 times as tall
            (det(0, 40, 100, 300, 0.9), Rejection::Edge),    // left
            (det(668, 40, 100, 300, 0.9), Rejection::Edge),  // right
            (det(300, 132, 100, 300, 0.9), Rejection::Edge), // bottom: legs cut
            (det(300, 0, 100, 150, 0.9), Rejection::Edge),   // top, head and shoulders
        ];
        for (d, why) in cases {
            assert_eq!(gate.check_box(&d, frame, &[d]), Err(why), "{d:?}");
        }
        // A standing person whose head touches the top edge is whole.
        let tall = det(300, 0, 150, 380, 0.9);
        assert_eq!(gate.check_box(&tall, frame, &[tall]), Ok(()));
        // Two people overlapping: neither crop is good.
        let other = det(340, 60, 100, 300, 0.9);
        assert_eq!(
            gate.check_box(&good, frame, &[good, other]),
            Err(Rejection::Overlap)
        );
        // Without a score (motion, zones) the score test is off; a drawn zone may touch the
        // edges and have any shape.
        let unscored = CropGate::new(QualityConfig::default(), BoxSource::Motion);
        let faint = det(300, 40, 100, 300, 0.3);
        assert_eq!(unscored.check_box(&faint, frame, &[faint]), Ok(()));
        let cut = det(0, 0, 100, 432, 0.3);
        assert_eq!(
            unscored.check_box(&cut, frame, &[cut]),
            Err(Rejection::Edge)
        );
        let zone = CropGate::new(QualityConfig::default(), BoxSource::Zones);
        assert_eq!(zone.check_box(&cut, frame, &[cut]), Ok(()));
    }

    #[test]
    fn sharpness_is_low_for_flat_and_blurred_crops_at_any_input_size() {
        // A figure on a graded background (a bright body with a striped top, at 64 px wide),
        // and the same after a 9-pixel box blur.
        let pattern = |w: usize, h: usize, blur: usize| -> Vec<u8> {
            let s = w / 64;
            let v = |x: usize, y: usize| {
                let body = (16 * s..48 * s).contains(&x) && (16 * s..112 * s).contains(&y);
                let stripe =
                    body && (40 * s..70 * s).contains(&y) && (y / (6 * s)).is_multiple_of(2);
                60.0 + 40.0 * y as f32 / h as f32
                    + if body { 140.0 } else { 0.0 }
                    + if stripe { 30.0 } else { 0.0 }
            };
            (0..w * h)
                .flat_map(|i| {
                    let (x, y) = (i % w, i / w);
                    let r = blur * s;
                    let (x0, x1) = (x.saturating_sub(r), (x + r).min(w - 1));
                    let (y0, y1) = (y.saturating_sub(r), (y + r).min(h - 1));
                    let mut sum = 0.0;
                    for yy in y0..=y1 {
                        for xx in x0..=x1 {
                            sum += v(xx, yy);
                        }
                    }
                    let g = (sum / ((x1 - x0 + 1) * (y1 - y0 + 1)) as f32) as u8;
                    [g, g, g]
                })
                .collect()
        };
        let gate = CropGate::new(QualityConfig::default(), BoxSource::Model);
        for (w, h) in [(64, 128), (128, 256)] {
            let sharp = pattern(w, h, 0);
            let blurred = pattern(w, h, 4);
            let (s, b) = (sharpness(&sharp, w), sharpness(&blurred, w));
            assert!(s > 0.5 && b < 0.06, "{w}x{h}: sharp {s}, blurred {b}");
            assert!(gate.check_sharpness(&sharp, w).is_ok());
            assert_eq!(gate.check_sharpness(&blurred, w), Err(Rejection::Blur));
        }
        let flat = vec![128u8; 64 * 128 * 3];
        assert_eq!(sharpness(&flat, 64), 0.0);
        assert_eq!(gate.check_sharpness(&flat, 64), Err(Rejection::Blur));
    }

    #[test]
    fn bounds_are_enforced() {
        let mut c = QualityConfig::default();
        assert!(c.validate().is_ok());
        c.min_crops = 0;
        assert!(c.validate().unwrap_err().contains("quality.min_crops"));
        c.min_crops = 4;
        c.max_aspect = 1.0;
        assert!(c.validate().unwrap_err().contains("min_aspect"));
        c.max_aspect = f32::NAN;
        assert!(c.validate().is_err());
    }
}
