//! Where the people are in a frame: three strategies behind one [`Detector`] trait, chosen by
//! configuration — [`ZoneDetector`] (fixed rectangles, e.g. a doorway; the crop is the zone),
//! [`MotionDetector`] (background model → foreground blobs → person-shaped boxes; no weights) and
//! [`YoloxDetector`] (a YOLOX-family ONNX detector through `embed::Network`, with NMS).
//!
//! Detections go into a fixed-capacity list: the per-frame path allocates nothing.

pub mod manifest;
mod motion;
mod yolox;
mod zones;

pub use motion::{MotionConfig, MotionDetector};
pub use yolox::{AUTO_THREADS, Decode, YoloxConfig, YoloxDetector, YoloxPreset, decode_yolox};
pub use zones::{ZoneConfig, ZoneDetector};

use crate::frame::{Rect, RgbView};

/// Most people reported per frame; more are dropped (lowest scores first for the model).
pub const MAX_DETECTIONS: usize = 64;

/// The detections of one frame.
pub type Detections = heapless::Vec<Detection, MAX_DETECTIONS>;

/// One person (or zone with activity) in a frame.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Detection {
    /// Box in frame pixels, inside the frame.
    pub rect: Rect,
    /// Confidence in 0..1 (detector score; foreground fill for motion and zones).
    pub score: f32,
}

/// Finds people in frames. Implementations keep their state (background model, network) and
/// buffers from frame to frame.
pub trait Detector: Send {
    /// Replaces `out` with the people in `frame`.
    fn detect(&mut self, frame: RgbView<'_>, out: &mut Detections) -> Result<(), DetectError>;
    /// One line for logs.
    fn describe(&self) -> String;
}

#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error(transparent)]
    Model(#[from] crate::embed::EmbedError),
    #[error("{model}: {problem}")]
    Layout { model: String, problem: String },
    #[error("{0}")]
    Config(String),
}

/// Intersection over union of two boxes.
pub fn iou(a: Rect, b: Rect) -> f32 {
    let x0 = a.x.max(b.x);
    let y0 = a.y.max(b.y);
    let x1 = (a.x + a.width).min(b.x + b.width);
    let y1 = (a.y + a.height).min(b.y + b.height);
    if x1 <= x0 || y1 <= y0 {
        return 0.0;
    }
    let inter = f64::from(x1 - x0) * f64::from(y1 - y0);
    let union =
        f64::from(a.width) * f64::from(a.height) + f64::from(b.width) * f64::from(b.height) - inter;
    (inter / union) as f32
}

/// Clips a box given as floats to the frame, in whole pixels; None if nothing is left.
pub(crate) fn clip_box(
    x0: f32,
    y0: f32,
    x1: f32,
    y1: f32,
    width: u32,
    height: u32,
) -> Option<Rect> {
    Rect::from_corners_clipped(
        x0.floor() as i64,
        y0.floor() as i64,
        x1.ceil() as i64,
        y1.ceil() as i64,
        width,
        height,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iou_of_known_boxes() {
        let a = Rect::new(0, 0, 10, 10);
        assert_eq!(iou(a, a), 1.0);
        assert_eq!(iou(a, Rect::new(20, 20, 5, 5)), 0.0);
        let half = iou(a, Rect::new(5, 0, 10, 10));
        assert!((half - 50.0 / 150.0).abs() < 1e-6, "{half}");
    }

    #[test]
    fn boxes_are_clipped_to_the_frame() {
        assert_eq!(
            clip_box(-5.0, -2.0, 10.2, 8.0, 100, 50),
            Some(Rect::new(0, 0, 11, 8))
        );
        assert_eq!(
            clip_box(90.0, 40.0, 130.0, 70.0, 100, 50),
            Some(Rect::new(90, 40, 10, 10))
        );
        assert_eq!(clip_box(120.0, 10.0, 130.0, 20.0, 100, 50), None);
    }
}
