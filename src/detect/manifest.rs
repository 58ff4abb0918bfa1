//! The detector manifest: the TOML sidecar (`detector.onnx` → `detector.toml`) that says how to
//! feed a person detector and read its output, as the embedding model's manifest does for ReID.
//!
//! ```toml
//! [model]
//! name = "yolox-nano-person"
//! version = "..."
//!
//! [input]
//! name = "images"           # the ONNX graph input
//! width = 736               # default network input (a free-size model takes any multiple of 32)
//! height = 416
//! channel_order = "bgr"     # "rgb" | "bgr"
//! pixel_divisor = 1.0       # pixels 0..=255 are divided by this first (1 = raw)
//! mean = [0.0, 0.0, 0.0]    # then the mean is subtracted and
//! std = [1.0, 1.0, 1.0]     # the result divided by std, per channel (in channel_order)
//! letterbox = "top-left"    # resize keeping the aspect ratio, image at the top left
//! pad = 114                 # grey level of the padding, before normalising
//!
//! [output]
//! name = "output"
//! layout = "yolox"          # [1, rows, 5 + classes]: tx, ty, tw, th, objectness, class scores
//! strides = [8, 16, 32]     # rows are the grid cells of each stride, level → y → x
//! classes = 1
//! person_class = 0
//! ```
//!
//! Two phases as everywhere: serde with `deny_unknown_fields`, then [`DetectorManifest::validate`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::manifest::{ChannelOrder, ModelInfo};

/// Largest network input side accepted (a 4K frame's long side).
pub const MAX_SIDE: u32 = 4096;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorManifest {
    pub model: ModelInfo,
    pub input: DetectorInput,
    pub output: DetectorOutput,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorInput {
    pub name: String,
    pub width: u32,
    pub height: u32,
    #[serde(default)]
    pub channel_order: ChannelOrder,
    pub pixel_divisor: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    #[serde(default)]
    pub letterbox: Letterbox,
    #[serde(default = "default_pad")]
    pub pad: u8,
}

/// Where the resized frame sits in the network input.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Letterbox {
    #[default]
    TopLeft,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorOutput {
    pub name: String,
    pub layout: OutputLayout,
    pub strides: Vec<u32>,
    pub classes: usize,
    pub person_class: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputLayout {
    /// YOLOX's decoded-free head: per grid cell `tx, ty, tw, th, objectness, classes…`
    /// (sigmoids applied), boxes decoded by the caller.
    Yolox,
}

fn default_pad() -> u8 {
    114
}

/// A manifest problem, naming the file and the field.
#[derive(Debug, thiserror::Error)]
pub enum DetectorManifestError {
    #[error("{}: cannot read the detector manifest: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a detector manifest: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{}: {field}: {problem}", path.display())]
    Invalid {
        path: PathBuf,
        field: &'static str,
        problem: String,
    },
}

impl DetectorManifest {
    /// The sidecar of a detector model: `foo.onnx` → `foo.toml`.
    pub fn sidecar(model: &Path) -> PathBuf {
        model.with_extension("toml")
    }

    pub fn load(path: &Path) -> Result<Self, DetectorManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| DetectorManifestError::Read {
            path: path.to_owned(),
            source,
        })?;
        let manifest: Self = toml::from_str(&text).map_err(|e| DetectorManifestError::Parse {
            path: path.to_owned(),
            message: e.message().to_owned(),
        })?;
        manifest.validate(path)?;
        Ok(manifest)
    }

    pub fn validate(&self, path: &Path) -> Result<(), DetectorManifestError> {
        let invalid = |field: &'static str, problem: String| DetectorManifestError::Invalid {
            path: path.to_owned(),
            field,
            problem,
        };
        let i = &self.input;
        for (field, v) in [("input.width", i.width), ("input.height", i.height)] {
            if v == 0 || !v.is_multiple_of(32) || v > MAX_SIDE {
                return Err(invalid(
                    field,
                    format!("is {v}: expected a multiple of 32 in 32..={MAX_SIDE}"),
                ));
            }
        }
        if !(i.pixel_divisor > 0.0 && i.pixel_divisor.is_finite()) {
            return Err(invalid(
                "input.pixel_divisor",
                format!("is {}: expected a positive number", i.pixel_divisor),
            ));
        }
        if i.std.iter().any(|s| !(*s > 0.0 && s.is_finite()))
            || i.mean.iter().any(|m| !m.is_finite())
        {
            return Err(invalid(
                "input.std",
                "mean must be finite and std positive".into(),
            ));
        }
        let o = &self.output;
        if o.strides != [8, 16, 32] {
            return Err(invalid(
                "output.strides",
                format!("is {:?}: only YOLOX's [8, 16, 32] is supported", o.strides),
            ));
        }
        if o.classes == 0 || o.person_class >= o.classes {
            return Err(invalid(
                "output.person_class",
                format!(
                    "is {} with {} classes: expected a class index below classes",
                    o.person_class, o.classes
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &str = include_str!("../../models/detector.toml");

    #[test]
    fn the_shipped_manifest_is_valid() {
        let m: DetectorManifest = toml::from_str(SHIPPED).unwrap();
        m.validate(Path::new("models/detector.toml")).unwrap();
        assert_eq!((m.input.width, m.input.height), (736, 416));
        assert_eq!(m.input.channel_order, ChannelOrder::Bgr);
        assert_eq!((m.output.classes, m.output.person_class), (1, 0));
    }

    #[test]
    fn bad_values_name_the_field() {
        let mut m: DetectorManifest = toml::from_str(SHIPPED).unwrap();
        m.input.width = 100;
        let err = m.validate(Path::new("d.toml")).unwrap_err().to_string();
        assert!(err.starts_with("d.toml: input.width: is 100"), "{err}");
        m.input.width = 736;
        m.output.person_class = 1;
        let err = m.validate(Path::new("d.toml")).unwrap_err().to_string();
        assert!(err.contains("output.person_class"), "{err}");
        let typo = SHIPPED.replace("pad = 114", "padding = 114");
        let err = toml::from_str::<DetectorManifest>(&typo).unwrap_err();
        assert!(err.to_string().contains("unknown field `padding`"), "{err}");
    }
}
