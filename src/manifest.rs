//! Model manifests: the TOML sidecar that says how to feed an embedding model and read its output.
//!
//! `foo.onnx` is described by `foo.toml` next to it:
//!
//! ```toml
//! [model]
//! name = "osnet_x0_25_msmt17"      # required: recorded with galleries, events, reports
//! version = "torchreid model zoo"  # optional, free text (default "")
//!
//! [input]
//! name = "input"              # required: the ONNX graph input to feed
//! height = 256                # required: H of the NCHW input, pixels
//! width = 128                 # required: W of the NCHW input, pixels
//! channel_order = "rgb"       # "rgb" | "bgr" (default "rgb")
//! pixel_divisor = 255.0       # pixels 0..=255 are divided by this first (default 255.0; 1.0 = raw)
//! mean = [0.485, 0.456, 0.406] # subtracted after the division, in channel_order (default ImageNet)
//! std = [0.229, 0.224, 0.225]  # then divided by (default ImageNet)
//!
//! [output]
//! name = "output"             # required: the ONNX graph output holding the embedding
//! dim = 512                   # required: embedding length
//!
//! [matching]                  # optional: from `reidcam calibrate` on labelled data
//! threshold = 0.7252          # cosine similarity at or above which two crops are the same person
//! calibration = "..."         # optional, free text: data, false/true-match rates
//! split_below = 0.5           # optional: a crop this far from its track's mean is someone else
//! ```
//!
//! Loading is in two phases: serde with `deny_unknown_fields` (a typo is an error, not a silently
//! ignored field), then [`ModelManifest::validate`] checks values. Whether the manifest agrees with
//! the model itself is checked by `embed` when it loads the model.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// ImageNet statistics used by torchreid and most ReID exports.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// torchreid's default input size, H × W.
pub const TORCHREID_HEIGHT: u32 = 256;
pub const TORCHREID_WIDTH: u32 = 128;
/// Largest input side accepted; anything above is a typo, not a ReID model.
const MAX_SIDE: u32 = 4096;

/// A model manifest, as read from TOML.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelManifest {
    pub model: ModelInfo,
    pub input: InputSpec,
    pub output: OutputSpec,
    /// Calibrated matching threshold, if the model has been calibrated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matching: Option<MatchingSpec>,
}

/// `[matching]`: the model's calibrated same-person threshold (thresholds do not transfer between
/// models: each embedding space has its own similarity distributions).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchingSpec {
    /// Cosine similarity at or above which two crops are taken to show the same person.
    pub threshold: f64,
    /// How the threshold was found (data, false-match rate, true-match rate).
    #[serde(default)]
    pub calibration: String,
    /// A new crop whose cosine to its track's mean is below this shows someone else (the
    /// daemon splits the track); the tracker's default when its own `split_below` is unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_below: Option<f64>,
    /// The short-term re-identification threshold (`gallery.recent_seconds`): an identity seen
    /// moments ago matches from here on; calibrated on a video of people crossing each other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recent_threshold: Option<f64>,
}

/// `[model]`: identity of the model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelInfo {
    /// Short name, recorded with galleries and reports.
    pub name: String,
    /// Free-text version or provenance.
    #[serde(default)]
    pub version: String,
}

/// `[input]`: how an RGB8 crop becomes the model's NCHW f32 input.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// Name of the ONNX graph input.
    pub name: String,
    /// Input height in pixels (H of NCHW).
    pub height: u32,
    /// Input width in pixels (W of NCHW).
    pub width: u32,
    /// Order of the three input channels.
    #[serde(default)]
    pub channel_order: ChannelOrder,
    /// Pixels (0–255) are divided by this before mean/std.
    #[serde(default = "default_pixel_divisor")]
    pub pixel_divisor: f32,
    /// Per-channel mean, in `channel_order`, subtracted after the division.
    #[serde(default = "default_mean")]
    pub mean: [f32; 3],
    /// Per-channel standard deviation, in `channel_order`, divided by last.
    #[serde(default = "default_std")]
    pub std: [f32; 3],
}

/// `[output]`: where the embedding comes out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// Name of the ONNX graph output.
    pub name: String,
    /// Embedding length.
    pub dim: usize,
}

/// Order of the colour channels in the model input.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelOrder {
    #[default]
    Rgb,
    Bgr,
}

impl fmt::Display for ChannelOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChannelOrder::Rgb => "rgb",
            ChannelOrder::Bgr => "bgr",
        })
    }
}

fn default_pixel_divisor() -> f32 {
    255.0
}
fn default_mean() -> [f32; 3] {
    IMAGENET_MEAN
}
fn default_std() -> [f32; 3] {
    IMAGENET_STD
}

/// A manifest that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{}: cannot read manifest: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a valid model manifest: {reason}", path.display())]
    Parse { path: PathBuf, reason: String },
    #[error("{}: field `{field}` {problem}", path.display())]
    Invalid {
        path: PathBuf,
        field: &'static str,
        problem: String,
    },
}

impl ModelManifest {
    /// Reads, parses and validates a manifest file.
    pub fn from_path(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Parses and validates manifest text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Self, ManifestError> {
        let manifest: ModelManifest = toml::from_str(text).map_err(|e| ManifestError::Parse {
            path: origin.to_owned(),
            // toml's messages span several lines (with a source excerpt); keep one.
            reason: e.message().to_string() + &span_suffix(text, e.span()),
        })?;
        manifest.validate(origin)?;
        Ok(manifest)
    }

    /// The manifest a model without a sidecar gets: torchreid's preprocessing at the given
    /// input size.
    pub fn torchreid_default(
        name: &str,
        input_name: &str,
        height: u32,
        width: u32,
        output_name: &str,
        dim: usize,
    ) -> Self {
        ModelManifest {
            model: ModelInfo {
                name: name.to_owned(),
                version: "unknown (no manifest; torchreid defaults)".to_owned(),
            },
            input: InputSpec {
                name: input_name.to_owned(),
                height,
                width,
                channel_order: ChannelOrder::Rgb,
                pixel_divisor: default_pixel_divisor(),
                mean: IMAGENET_MEAN,
                std: IMAGENET_STD,
            },
            output: OutputSpec {
                name: output_name.to_owned(),
                dim,
            },
            matching: None,
        }
    }

    /// Second phase: values that parse but cannot work.
    pub fn validate(&self, origin: &Path) -> Result<(), ManifestError> {
        let invalid = |field, problem: String| ManifestError::Invalid {
            path: origin.to_owned(),
            field,
            problem,
        };
        if self.model.name.trim().is_empty() {
            return Err(invalid("model.name", "must not be empty".into()));
        }
        if self.input.name.is_empty() {
            return Err(invalid("input.name", "must not be empty".into()));
        }
        for (field, side) in [
            ("input.height", self.input.height),
            ("input.width", self.input.width),
        ] {
            if side == 0 || side > MAX_SIDE {
                return Err(invalid(
                    field,
                    format!("is {side}, expected 1..={MAX_SIDE} pixels"),
                ));
            }
        }
        if !(self.input.pixel_divisor.is_finite() && self.input.pixel_divisor > 0.0) {
            return Err(invalid(
                "input.pixel_divisor",
                format!(
                    "is {}, expected a positive number (255 for [0,1] inputs, 1 for raw pixels)",
                    self.input.pixel_divisor
                ),
            ));
        }
        if self.input.mean.iter().any(|m| !m.is_finite()) {
            return Err(invalid(
                "input.mean",
                "must hold three finite numbers".into(),
            ));
        }
        if self.input.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(invalid(
                "input.std",
                format!("is {:?}, expected three positive numbers", self.input.std),
            ));
        }
        if self.output.name.is_empty() {
            return Err(invalid("output.name", "must not be empty".into()));
        }
        if self.output.dim == 0 {
            return Err(invalid("output.dim", "must be at least 1".into()));
        }
        if let Some(m) = &self.matching
            && let Some(split) = m.split_below
            && !(0.0..=1.0).contains(&split)
        {
            return Err(invalid(
                "matching.split_below",
                format!("is {split}, expected a cosine similarity in [0, 1]"),
            ));
        }
        if let Some(m) = &self.matching
            && !(-1.0..=1.0).contains(&m.threshold)
        {
            return Err(invalid(
                "matching.threshold",
                format!(
                    "is {}, expected a cosine similarity in [-1, 1]",
                    m.threshold
                ),
            ));
        }
        Ok(())
    }

    /// Serialises back to TOML (used to show the effective manifest of a model).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("manifest serialises")
    }
}

/// " (line L, column C)" for a byte span of `text`, or "".
fn span_suffix(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(span) = span else {
        return String::new();
    };
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    format!(" (line {line}, column {column})")
}

/// The sidecar manifest path of a model: `foo.onnx` → `foo.toml`.
pub fn sidecar_path(model: &Path) -> PathBuf {
    model.with_extension("toml")
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[model]
name = "osnet"

[input]
name = "input"
height = 256
width = 128

[output]
name = "output"
dim = 512
"#;

    fn parse(text: &str) -> Result<ModelManifest, ManifestError> {
        ModelManifest::from_toml(text, Path::new("m.toml"))
    }

    #[test]
    fn defaults_are_torchreid() {
        let m = parse(GOOD).unwrap();
        assert_eq!(
            m,
            ModelManifest::torchreid_default("osnet", "input", 256, 128, "output", 512)
                .with_version("")
        );
    }

    impl ModelManifest {
        fn with_version(mut self, v: &str) -> Self {
            self.model.version = v.into();
            self
        }
    }

    #[test]
    fn unknown_field_is_named() {
        let text = GOOD.replace("dim = 512", "dim = 512\ndims = 3");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.starts_with("m.toml: "), "{err}");
        assert!(err.contains("unknown field `dims`"), "{err}");
        assert!(err.contains("line 13"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn bad_values_name_their_field() {
        for (from, to, field) in [
            ("height = 256", "height = 0", "input.height"),
            ("width = 128", "width = 100000", "input.width"),
            ("dim = 512", "dim = 0", "output.dim"),
            (
                "width = 128",
                "width = 128\nstd = [0.2, 0.0, 0.2]",
                "input.std",
            ),
            (
                "width = 128",
                "width = 128\npixel_divisor = -1.0",
                "input.pixel_divisor",
            ),
            ("name = \"osnet\"", "name = \" \"", "model.name"),
            (
                "dim = 512",
                "dim = 512\n[matching]\nthreshold = 1.5",
                "matching.threshold",
            ),
        ] {
            let err = parse(&GOOD.replacen(from, to, 1)).unwrap_err().to_string();
            assert!(err.contains(&format!("field `{field}`")), "{field}: {err}");
        }
    }

    #[test]
    fn bad_channel_order_is_refused() {
        let text = GOOD.replace("width = 128", "width = 128\nchannel_order = \"rbg\"");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("rbg"), "{err}");
    }

    #[test]
    fn round_trips_through_toml() {
        let m = parse(GOOD).unwrap();
        assert_eq!(parse(&m.to_toml()).unwrap(), m);
        let text = format!("{GOOD}\n[matching]\nthreshold = 0.7\ncalibration = \"cuhk03-val\"\n");
        let m = parse(&text).unwrap();
        assert_eq!(m.matching.as_ref().unwrap().threshold, 0.7);
        assert_eq!(parse(&m.to_toml()).unwrap(), m);
    }
}
