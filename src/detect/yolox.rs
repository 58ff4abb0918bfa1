//! A YOLOX-family person detector (our `models/detector.onnx`: YOLOX-Nano cut to the person
//! class; also Megvii's COCO YOLOX-Nano and ByteTrack's people-only YOLOX) run through
//! `embed::Network`: letterbox (resize keeping the aspect ratio, top-left, pad 114), the model,
//! then decoding of its `[1, N, 5 + classes]` output — one row per grid cell of strides 8, 16
//! and 32, ordered level → y → x: `tx, ty, tw, th, objectness, class scores` — and greedy NMS.
//! How to feed the model comes from its sidecar manifest (`detect::manifest`), else a preset.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::manifest::{DetectorInput, DetectorManifest};
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
    /// The detector ONNX file; `auto`: the project's own person detector, `models/detector.onnx`.
    /// A sidecar manifest (`detector.toml`) says how to feed it; without one, `preset` does.
    pub path: PathBuf,
    /// Input conventions of a model without a manifest.
    pub preset: YoloxPreset,
    /// Network input size for models with free H×W (multiples of 32); 0: the manifest's (else
    /// 736×416, which suits 16:9 frames). A fixed-size model's own size wins.
    pub input_width: u32,
    pub input_height: u32,
    /// Keep boxes whose objectness × class score reaches this. Low-score boxes keep tracks alive
    /// through partial occlusion (as ByteTrack does); only boxes above `quality.min_score` are
    /// embedded.
    pub score_threshold: f32,
    /// NMS: drop a box overlapping a better one by more than this IoU.
    pub nms_iou: f32,
    /// Class index of "person" in a model without a manifest (0 in COCO and in ByteTrack's model).
    pub class: usize,
    /// Smallest box height in frame pixels (smaller people make useless ReID crops).
    pub min_height: u32,
    /// Threads: the network's largest layers are shared among them. 0 (the default): as many
    /// as the cores this process may run on, at most [`AUTO_THREADS`].
    pub threads: usize,
}

/// `threads = 0` takes at most this many: the boards this is for have 4 cores (Raspberry Pi 4
/// and 5); more was never measured (this project's machines have 2 cores).
pub const AUTO_THREADS: usize = 4;

impl YoloxConfig {
    /// The threads the network runs on: `threads`, or for 0 the cores this process may use
    /// (its CPU affinity, cgroup quota) up to [`AUTO_THREADS`].
    pub fn resolved_threads(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(AUTO_THREADS),
            n => n,
        }
    }
}

impl Default for YoloxConfig {
    fn default() -> Self {
        YoloxConfig {
            path: PathBuf::from("auto"),
            preset: YoloxPreset::Yolox,
            input_width: 0,
            input_height: 0,
            score_threshold: 0.3,
            nms_iou: 0.45,
            class: 0,
            min_height: 32,
            threads: 0,
        }
    }
}

/// How a frame becomes the network input: plane `p` takes source channel `order[p]`, value
/// `(v / divisor − mean[p]) / std[p]`; padding is grey `pad` before normalising.
#[derive(Clone, Copy, Debug, PartialEq)]
struct InputNorm {
    order: [usize; 3],
    divisor: f32,
    mean: [f32; 3],
    std: [f32; 3],
    pad: f32,
}

impl InputNorm {
    fn of_preset(preset: YoloxPreset) -> Self {
        match preset {
            YoloxPreset::Yolox => InputNorm {
                order: [2, 1, 0],
                divisor: 1.0,
                mean: [0.0; 3],
                std: [1.0; 3],
                pad: 114.0,
            },
            YoloxPreset::Bytetrack => InputNorm {
                order: [0, 1, 2],
                divisor: 255.0,
                mean: [0.485, 0.456, 0.406],
                std: [0.229, 0.224, 0.225],
                pad: 114.0,
            },
        }
    }

    fn of_manifest(input: &DetectorInput) -> Self {
        InputNorm {
            order: match input.channel_order {
                ChannelOrder::Rgb => [0, 1, 2],
                ChannelOrder::Bgr => [2, 1, 0],
            },
            divisor: input.pixel_divisor,
            mean: input.mean,
            std: input.std,
            pad: f32::from(input.pad),
        }
    }
}

const STRIDES: [usize; 3] = [8, 16, 32];
/// Candidates kept before NMS (the highest scores).
const MAX_CANDIDATES: usize = 512;
/// Network input of a free-size model without a manifest or a configured size.
const DEFAULT_INPUT: (u32, u32) = (736, 416);

pub struct YoloxDetector {
    config: YoloxConfig,
    network: Network,
    /// The manifest's model name, else the file.
    name: String,
    norm: InputNorm,
    decode: Decode,
    /// Letterbox resize, made for the current frame size.
    letterbox: Option<(u32, u32, Preprocessor, f32)>,
    candidates: Vec<Detection>,
}

/// What decoding needs to know of the head and the thresholds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decode {
    /// Network input (width, height).
    pub input: (u32, u32),
    /// Values per row: 5 + classes.
    pub row: usize,
    /// Index of the person class.
    pub class: usize,
    pub score_threshold: f32,
    pub nms_iou: f32,
    /// Smallest box height, frame pixels.
    pub min_height: f32,
}

impl YoloxDetector {
    pub fn load(config: YoloxConfig) -> Result<Self, DetectError> {
        let size_ok = |v: u32| v == 0 || (v.is_multiple_of(32) && v <= super::manifest::MAX_SIDE);
        if !size_ok(config.input_width)
            || !size_ok(config.input_height)
            || (config.input_width == 0) != (config.input_height == 0)
        {
            return Err(DetectError::Config(format!(
                "detector.model.input_width/input_height are {}x{}: expected both 0 (the \
                 manifest's) or both multiples of 32 up to {}",
                config.input_width,
                config.input_height,
                super::manifest::MAX_SIDE
            )));
        }
        if !(0.0..=1.0).contains(&config.score_threshold) || !(0.0..=1.0).contains(&config.nms_iou)
        {
            return Err(DetectError::Config(
                "detector.model.score_threshold and nms_iou must be in 0..1".into(),
            ));
        }
        let sidecar = DetectorManifest::sidecar(&config.path);
        let manifest = if sidecar.is_file() {
            Some(DetectorManifest::load(&sidecar).map_err(|e| DetectError::Config(e.to_string()))?)
        } else {
            None
        };
        let (width, height) = match (&manifest, config.input_width) {
            (_, w) if w > 0 => (w, config.input_height),
            (Some(m), _) => (m.input.width, m.input.height),
            (None, _) => DEFAULT_INPUT,
        };
        let network = Network::load(&config.path, width, height, config.resolved_threads())?;
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
        let (class, norm, name) = match &manifest {
            Some(m) => {
                if m.output.classes != classes {
                    return Err(layout(format!(
                        "{}: output.classes is {}, the model has {classes}",
                        sidecar.display(),
                        m.output.classes
                    )));
                }
                (
                    m.output.person_class,
                    InputNorm::of_manifest(&m.input),
                    m.model.name.clone(),
                )
            }
            None => (
                config.class,
                InputNorm::of_preset(config.preset),
                network.label().to_owned(),
            ),
        };
        if class >= classes {
            return Err(layout(format!(
                "detector.model.class is {class}, but the model has {classes} classes"
            )));
        }
        let decode = Decode {
            input: (w, h),
            row: 5 + classes,
            class,
            score_threshold: config.score_threshold,
            nms_iou: config.nms_iou,
            min_height: config.min_height as f32,
        };
        Ok(YoloxDetector {
            config,
            network,
            name,
            norm,
            decode,
            letterbox: None,
            candidates: Vec::with_capacity(MAX_CANDIDATES),
        })
    }

    pub fn network(&self) -> &Network {
        &self.network
    }

    /// The network, e.g. to run it again on the input [`letterbox`](Self::letterbox) made.
    pub fn network_mut(&mut self) -> &mut Network {
        &mut self.network
    }

    /// How the head's rows are decoded ([`decode_yolox`]).
    pub fn decoding(&self) -> Decode {
        self.decode
    }

    /// Time per operator kind of the network on the last frame's input
    /// ([`Network::profile`]).
    pub fn profile(
        &mut self,
        runs: usize,
    ) -> Result<Vec<crate::embed::OpTime>, crate::embed::EmbedError> {
        self.network.profile(runs)
    }

    /// Letterboxes `frame` into the network input (the first step of `detect`); returns the
    /// scale from frame to network pixels.
    pub fn letterbox(&mut self, frame: RgbView<'_>) -> Result<f32, DetectError> {
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
        let n = self.norm;
        let input = self.network.input_mut();
        for (p, plane) in input.chunks_exact_mut(nw * nh).enumerate() {
            let norm = |v: f32| (v / n.divisor - n.mean[p]) / n.std[p];
            let pad = norm(n.pad);
            for (y, row) in plane.chunks_exact_mut(nw).enumerate() {
                if y >= sh {
                    row.fill(pad);
                    continue;
                }
                let src = &resized[y * sw * 3..(y + 1) * sw * 3];
                for (dst, px) in row[..sw].iter_mut().zip(src.chunks_exact(3)) {
                    *dst = norm(f32::from(px[n.order[p]]));
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

/// Decodes a YOLOX head's rows into person boxes in frame pixels (letterbox `ratio` undone,
/// clipped to the `frame` size), keeps the best [`MAX_CANDIDATES`] of those above the score
/// threshold and tall enough in `candidates`, and puts the survivors of greedy NMS in `out`, best
/// first. Allocates nothing (`candidates` has its capacity).
pub fn decode_yolox(
    output: &[f32],
    d: &Decode,
    ratio: f32,
    frame: (u32, u32),
    candidates: &mut Vec<Detection>,
    out: &mut Detections,
) {
    out.clear();
    candidates.clear();
    let (nw, nh) = (d.input.0 as usize, d.input.1 as usize);
    let mut row = 0;
    for s in STRIDES {
        let (gw, gh) = (nw / s, nh / s);
        for gy in 0..gh {
            for gx in 0..gw {
                let Some(v) = output.get(row * d.row..(row + 1) * d.row) else {
                    return;
                };
                row += 1;
                let score = v[4] * v[5 + d.class];
                if score.is_nan() || score < d.score_threshold {
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
                    frame.0,
                    frame.1,
                ) else {
                    continue;
                };
                if (rect.height as f32) < d.min_height {
                    continue;
                }
                let det = Detection { rect, score };
                if candidates.len() < candidates.capacity().max(1) {
                    candidates.push(det);
                } else if let Some(worst) = candidates
                    .iter_mut()
                    .min_by(|a, b| a.score.total_cmp(&b.score))
                    .filter(|w| w.score < score)
                {
                    *worst = det;
                }
            }
        }
    }
    // Greedy NMS, best first.
    candidates.sort_unstable_by(|a, b| b.score.total_cmp(&a.score));
    for det in candidates.iter() {
        if out.iter().all(|kept| iou(kept.rect, det.rect) <= d.nms_iou) && out.push(*det).is_err() {
            break;
        }
    }
}

impl Detector for YoloxDetector {
    fn detect(&mut self, frame: RgbView<'_>, out: &mut Detections) -> Result<(), DetectError> {
        let ratio = self.letterbox(frame)?;
        let output = self.network.run()?;
        decode_yolox(
            output,
            &self.decode,
            ratio,
            (frame.width(), frame.height()),
            &mut self.candidates,
            out,
        );
        Ok(())
    }

    fn describe(&self) -> String {
        let (w, h) = self.network.input_size();
        format!(
            "{} ({}, {w}x{h}, score ≥ {}, NMS IoU {})",
            self.name,
            self.network.label(),
            self.config.score_threshold,
            self.config.nms_iou
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A head of `input` size with every row empty (score 0) but the given ones:
    /// (row index, tx, ty, tw, th, objectness, person).
    fn head(input: (u32, u32), rows: &[(usize, [f32; 6])]) -> Vec<f32> {
        let n: usize = STRIDES
            .iter()
            .map(|s| (input.0 as usize / s) * (input.1 as usize / s))
            .sum();
        let mut out = vec![0.0; n * 6];
        for (r, v) in rows {
            out[r * 6..r * 6 + 6].copy_from_slice(v);
        }
        out
    }

    fn decode(input: (u32, u32), threshold: f32, min_height: f32) -> Decode {
        Decode {
            input,
            row: 6,
            class: 0,
            score_threshold: threshold,
            nms_iou: 0.45,
            min_height,
        }
    }

    #[test]
    fn boxes_are_decoded_from_grid_cells_and_the_letterbox_is_undone() {
        // 64×64 input: stride 8 is 8×8 cells (rows 0..64), stride 16 4×4 (64..80), 32 2×2.
        let input = (64, 64);
        // Stride-16 cell (gx 1, gy 2) = row 64 + 2·4 + 1; centre (1.5·16, 2.5·16) = (24, 40);
        // size exp(ln 2)·16 × exp(ln 4)·16 = 32 × 64.
        let rows = [(73, [0.5, 0.5, 2f32.ln(), 4f32.ln(), 0.9, 0.8])];
        let mut cands = Vec::with_capacity(8);
        let mut out = Detections::new();
        // Frame 128×128 letterboxed at ratio 0.5: boxes double.
        decode_yolox(
            &head(input, &rows),
            &decode(input, 0.5, 0.0),
            0.5,
            (128, 128),
            &mut cands,
            &mut out,
        );
        assert_eq!(out.len(), 1);
        let d = out[0];
        assert!((d.score - 0.72).abs() < 1e-6, "{}", d.score);
        // corners (24 − 16, 40 − 32) .. (24 + 16, 40 + 32), doubled, clipped to the frame
        assert_eq!(d.rect, Rect::new(16, 16, 64, 112));
    }

    #[test]
    fn low_scores_short_boxes_and_overlaps_are_dropped() {
        let input = (64, 64);
        let big = [0.5, 0.5, 1f32.ln(), 3f32.ln(), 0.9, 0.9]; // 16 × 48 at stride 16
        let rows = [
            (73, big),
            // one cell to the right (centre 8 px away): IoU 1/3 ≤ 0.45, so both are kept
            (74, [0.0, 0.5, 1f32.ln(), 3f32.ln(), 0.9, 0.8]),
            // a low score (0.2)
            (0, [0.5, 0.5, 0.0, 0.0, 0.4, 0.5]),
            // a box 8 px tall, above the score threshold
            (10, [0.5, 0.5, 0.0, 0.0, 0.95, 0.95]),
        ];
        let mut cands = Vec::with_capacity(8);
        let mut out = Detections::new();
        let d = decode(input, 0.5, 16.0);
        decode_yolox(&head(input, &rows), &d, 1.0, (64, 64), &mut cands, &mut out);
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(out[0].score > out[1].score);
        // The same box from the stride-8 level (cell 1,1: centre (2 + 1)·8, (4 + 1)·8) at a lower
        // score is suppressed by NMS.
        let rows = [(73, big), (9, [2.0, 4.0, 2f32.ln(), 6f32.ln(), 0.9, 0.5])];
        decode_yolox(
            &head(input, &rows),
            &decode(input, 0.3, 0.0),
            1.0,
            (64, 64),
            &mut cands,
            &mut out,
        );
        assert_eq!(out.len(), 1, "{out:?}");
        assert!((out[0].score - 0.81).abs() < 1e-6);
    }

    #[test]
    fn a_nan_score_never_passes() {
        let input = (64, 64);
        let rows = [(73, [0.5, 0.5, 0.0, 0.0, f32::NAN, 0.9])];
        let mut cands = Vec::with_capacity(8);
        let mut out = Detections::new();
        decode_yolox(
            &head(input, &rows),
            &decode(input, 0.5, 0.0),
            1.0,
            (64, 64),
            &mut cands,
            &mut out,
        );
        assert!(out.is_empty());
    }
}
