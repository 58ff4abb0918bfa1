//! A YOLOX-family person detector (YOLOX-Nano on COCO, ByteTrack's people-only YOLOX) run through
//! `embed::Network`: letterbox (resize keeping the aspect ratio, top-left, pad 114), the model,
//! then decoding of its `[1, N, 5 + classes]` output — one row per grid cell of strides 8, 16
//! and 32, ordered level → y → x: `tx, ty, tw, th, objectness, class scores` — and greedy NMS.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{DetectError, Detection, Detections, Detector, clip_box, iou};
use crate::embed::Network;
use crate::frame::{Rect, RgbView};
use crate::manifest::{ChannelOrder, InputSpec};
use crate::preprocess::Preprocessor;

/// Input conventions of the two YOLOX exports we know.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum YoloxPreset {
    /// Megvii's YOLOX: BGR, raw 0–255.
    #[default]
    Yolox,
    /// ByteTrack's YOLOX: RGB, /255, ImageNet mean/std (padding 114 before normalising).
    Bytetrack,
}

/// `[detector.model]` settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct YoloxConfig {
    /// The detector ONNX file (never shipped in this repository).
    pub path: PathBuf,
    pub preset: YoloxPreset,
    /// Network input size for models with free H×W (multiples of 32); a fixed-size model's own
    /// size wins. 736×416 suits 16:9 frames.
    pub input_width: u32,
    pub input_height: u32,
    /// Keep boxes whose objectness × class score reaches this.
    pub score_threshold: f32,
    /// NMS: drop a box overlapping a better one by more than this IoU.
    pub nms_iou: f32,
    /// Class index of "person" (0 in COCO and in ByteTrack's model).
    pub class: usize,
    /// Smallest box height in frame pixels (smaller people make useless ReID crops).
    pub min_height: u32,
    /// Threads: the network's largest layers are shared among them.
    pub threads: usize,
}

impl Default for YoloxConfig {
    fn default() -> Self {
        YoloxConfig {
            path: PathBuf::new(),
            preset: YoloxPreset::Yolox,
            input_width: 736,
            input_height: 416,
            score_threshold: 0.5,
            nms_iou: 0.45,
            class: 0,
            min_height: 32,
            threads: 1,
        }
    }
}

const STRIDES: [usize; 3] = [8, 16, 32];
/// Candidates kept before NMS (the highest scores).
const MAX_CANDIDATES: usize = 512;

pub struct YoloxDetector {
    config: YoloxConfig,
    network: Network,
    /// Letterbox resize, made for the current frame size.
    letterbox: Option<(u32, u32, Preprocessor, f32)>,
    classes: usize,
    candidates: Vec<Detection>,
}

impl YoloxDetector {
    pub fn load(config: YoloxConfig) -> Result<Self, DetectError> {
        if !config.input_width.is_multiple_of(32)
            || !config.input_height.is_multiple_of(32)
            || config.input_width == 0
            || config.input_height == 0
        {
            return Err(DetectError::Config(format!(
                "detector.model.input_width/input_height are {}x{}: expected positive multiples of 32",
                config.input_width, config.input_height
            )));
        }
        if !(0.0..=1.0).contains(&config.score_threshold) || !(0.0..=1.0).contains(&config.nms_iou)
        {
            return Err(DetectError::Config(
                "detector.model.score_threshold and nms_iou must be in 0..1".into(),
            ));
        }
        let network = Network::load(
            &config.path,
            config.input_width,
            config.input_height,
            config.threads.max(1),
        )?;
        let (w, h) = network.input_size();
        let layout = |problem: String| DetectError::Layout {
            model: network.label().to_owned(),
            problem,
        };
        let rows: usize = STRIDES
            .iter()
            .map(|s| (w as usize / s) * (h as usize / s))
            .sum();
        let classes = match network.output_shape() {
            [1, n, c] if *n == rows && *c > 5 => c - 5,
            other => {
                return Err(layout(format!(
                    "output shape {other:?} is not a YOLOX head for a {w}x{h} input: expected [1, {rows}, 5 + classes]"
                )));
            }
        };
        if config.class >= classes {
            return Err(layout(format!(
                "detector.model.class is {}, but the model has {classes} classes",
                config.class
            )));
        }
        Ok(YoloxDetector {
            config,
            network,
            letterbox: None,
            classes,
            candidates: Vec::with_capacity(MAX_CANDIDATES),
        })
    }

    pub fn network(&self) -> &Network {
        &self.network
    }

    /// Letterboxes `frame` into the network input.
    fn fill_input(&mut self, frame: RgbView<'_>) -> Result<f32, DetectError> {
        let (fw, fh) = (frame.width(), frame.height());
        let (nw, nh) = self.network.input_size();
        if !matches!(&self.letterbox, Some((w, h, ..)) if (*w, *h) == (fw, fh)) {
            let ratio = (nw as f32 / fw as f32).min(nh as f32 / fh as f32);
            let sw = ((fw as f32 * ratio).round() as u32).clamp(1, nw);
            let sh = ((fh as f32 * ratio).round() as u32).clamp(1, nh);
            let spec = InputSpec {
                name: String::new(),
                height: sh,
                width: sw,
                channel_order: ChannelOrder::Rgb,
                pixel_divisor: 1.0,
                mean: [0.0; 3],
                std: [1.0; 3],
            };
            self.letterbox = Some((fw, fh, Preprocessor::with_max_source(&spec, fw, fh), ratio));
        }
        let Some((_, _, pre, ratio)) = &mut self.letterbox else {
            unreachable!("made above")
        };
        let ratio = *ratio;
        let resized = pre
            .resize(frame, frame_rect(fw, fh))
            .map_err(|e| DetectError::Config(e.to_string()))?;
        let (sw, sh) = (
            ((fw as f32 * ratio).round() as usize).clamp(1, nw as usize),
            ((fh as f32 * ratio).round() as usize).clamp(1, nh as usize),
        );
        let (nw, nh) = (nw as usize, nh as usize);
        // Plane p takes source channel `order[p]`; value = (v / div − mean) / std.
        let (order, div, mean, std) = match self.config.preset {
            YoloxPreset::Yolox => ([2, 1, 0], 1.0, [0.0; 3], [1.0; 3]),
            YoloxPreset::Bytetrack => (
                [0, 1, 2],
                255.0,
                [0.485, 0.456, 0.406],
                [0.229, 0.224, 0.225],
            ),
        };
        let input = self.network.input_mut();
        for (p, plane) in input.chunks_exact_mut(nw * nh).enumerate() {
            let norm = |v: f32| (v / div - mean[p]) / std[p];
            let pad = norm(114.0);
            for (y, row) in plane.chunks_exact_mut(nw).enumerate() {
                if y >= sh {
                    row.fill(pad);
                    continue;
                }
                let src = &resized[y * sw * 3..(y + 1) * sw * 3];
                for (dst, px) in row[..sw].iter_mut().zip(src.chunks_exact(3)) {
                    *dst = norm(f32::from(px[order[p]]));
                }
                row[sw..].fill(pad);
            }
        }
        Ok(ratio)
    }
}

fn frame_rect(w: u32, h: u32) -> Rect {
    Rect::new(0, 0, w, h)
}

impl Detector for YoloxDetector {
    fn detect(&mut self, frame: RgbView<'_>, out: &mut Detections) -> Result<(), DetectError> {
        out.clear();
        let ratio = self.fill_input(frame)?;
        let (nw, nh) = self.network.input_size();
        let (fw, fh) = (frame.width(), frame.height());
        let stride = 5 + self.classes;
        let class = self.config.class;
        let threshold = self.config.score_threshold;
        let min_height = self.config.min_height as f32;
        let output = self.network.run()?;
        self.candidates.clear();
        let mut row = 0;
        for s in STRIDES {
            let (gw, gh) = (nw as usize / s, nh as usize / s);
            for gy in 0..gh {
                for gx in 0..gw {
                    let v = &output[row * stride..(row + 1) * stride];
                    row += 1;
                    let score = v[4] * v[5 + class];
                    if score < threshold {
                        continue;
                    }
                    let s = s as f32;
                    let (cx, cy) = ((v[0] + gx as f32) * s, (v[1] + gy as f32) * s);
                    let (w, h) = (v[2].exp() * s, v[3].exp() * s);
                    let Some(rect) = clip_box(
                        (cx - w / 2.0) / ratio,
                        (cy - h / 2.0) / ratio,
                        (cx + w / 2.0) / ratio,
                        (cy + h / 2.0) / ratio,
                        fw,
                        fh,
                    ) else {
                        continue;
                    };
                    if (rect.height as f32) < min_height {
                        continue;
                    }
                    let d = Detection { rect, score };
                    if self.candidates.len() < MAX_CANDIDATES {
                        self.candidates.push(d);
                    } else if let Some(worst) = self
                        .candidates
                        .iter_mut()
                        .min_by(|a, b| a.score.total_cmp(&b.score))
                        .filter(|w| w.score < score)
                    {
                        *worst = d;
                    }
                }
            }
        }
        // Greedy NMS, best first.
        self.candidates
            .sort_unstable_by(|a, b| b.score.total_cmp(&a.score));
        for d in &self.candidates {
            if out
                .iter()
                .all(|kept| iou(kept.rect, d.rect) <= self.config.nms_iou)
                && out.push(*d).is_err()
            {
                break;
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        let (w, h) = self.network.input_size();
        format!(
            "{} ({:?} preset, {w}x{h}, score ≥ {}, NMS IoU {})",
            self.network.label(),
            self.config.preset,
            self.config.score_threshold,
            self.config.nms_iou
        )
    }
}
