//! Which source a path or name means, decided once from the configuration.

use std::path::{Path, PathBuf};

#[cfg(feature = "h264")]
use super::H264Source;
use super::v4l2::{V4l2Config, V4l2Source};
use super::{
    CaptureError, FrameSource, ImageDirSource, MjpegSource, SyntheticConfig, SyntheticSource,
    Y4mSource,
};

/// A frame source, chosen but not yet opened.
#[derive(Clone, Debug, PartialEq)]
pub enum SourceSpec {
    /// A V4L2 camera (`/dev/videoN`, or any path given with `v4l2:`).
    V4l2(V4l2Config),
    /// Every `.jpg`/`.jpeg`/`.png` of a directory, in name order, at `fps`.
    Images { dir: PathBuf, fps: f64 },
    /// Concatenated JPEGs (`.mjpeg`, `.mjpg`), at `fps`.
    Mjpeg { path: PathBuf, fps: f64 },
    /// YUV4MPEG2 (`.y4m`), timed by its header.
    Y4m { path: PathBuf },
    /// H.264 in MP4 (`.mp4`, `.m4v`, `.mov`) or Annex B (`.264`, `.h264`; timed at `fps`).
    H264 { path: PathBuf, fps: f64 },
    /// People walking through a generated scene (`synthetic` or `synthetic:WxH`).
    Synthetic(SyntheticConfig),
}

/// What `SourceSpec::parse` accepts, for error messages.
pub const SOURCE_KINDS: &str = "/dev/videoN (or v4l2:PATH), a directory of images, a .mjpeg/.mjpg, .y4m, .mp4 or .264/.h264 file, or synthetic[:WxH]";

impl SourceSpec {
    /// Interprets `text`: a camera device, a replay path (by kind of file), or `synthetic`.
    /// `camera` supplies the format, size and rate for a camera; `fps` times replays that do not
    /// carry their own timing.
    pub fn parse(text: &str, camera: &V4l2Config, fps: f64) -> Result<Self, String> {
        if let Some(rest) = text.strip_prefix("synthetic") {
            let mut config = SyntheticConfig {
                fps,
                ..SyntheticConfig::default()
            };
            if let Some(size) = rest.strip_prefix(':') {
                let (w, h) = parse_size(size)?;
                (config.width, config.height) = (w, h);
            } else if !rest.is_empty() {
                return Err(format!("{text:?}: expected synthetic or synthetic:WxH"));
            }
            return Ok(SourceSpec::Synthetic(config));
        }
        let (path, forced_camera) = match text.strip_prefix("v4l2:") {
            Some(p) => (Path::new(p), true),
            None => (Path::new(text), false),
        };
        if forced_camera || path.starts_with("/dev") {
            let mut config = camera.clone();
            config.device = path.to_owned();
            return Ok(SourceSpec::V4l2(config));
        }
        if !path.exists() {
            return Err(format!("{}: no such file or directory", path.display()));
        }
        if path.is_dir() {
            return Ok(SourceSpec::Images {
                dir: path.to_owned(),
                fps,
            });
        }
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        let path = path.to_owned();
        Ok(match ext.as_str() {
            "mjpeg" | "mjpg" => SourceSpec::Mjpeg { path, fps },
            "y4m" => SourceSpec::Y4m { path },
            "mp4" | "m4v" | "mov" | "264" | "h264" => SourceSpec::H264 { path, fps },
            _ => {
                return Err(format!(
                    "{}: cannot tell what kind of source this is; expected {SOURCE_KINDS}",
                    path.display()
                ));
            }
        })
    }

    pub fn open(&self) -> Result<Box<dyn FrameSource>, CaptureError> {
        Ok(match self {
            SourceSpec::V4l2(config) => Box::new(V4l2Source::open(config)?),
            SourceSpec::Images { dir, fps } => Box::new(ImageDirSource::open(dir, *fps)?),
            SourceSpec::Mjpeg { path, fps } => Box::new(MjpegSource::open(path, *fps)?),
            SourceSpec::Y4m { path } => Box::new(Y4mSource::open(path)?),
            #[cfg(feature = "h264")]
            SourceSpec::H264 { path, fps } => Box::new(H264Source::open(path, *fps)?),
            #[cfg(not(feature = "h264"))]
            SourceSpec::H264 { path, .. } => {
                return Err(CaptureError::Replay {
                    path: path.clone(),
                    problem: "an H.264 replay, and this build has none (built without the Cargo \
                              feature `h264`: a board build)"
                        .into(),
                });
            }
            SourceSpec::Synthetic(config) => Box::new(SyntheticSource::new(config.clone())?),
        })
    }
}

/// `WIDTHxHEIGHT` with positive numbers.
pub fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("{s:?}: expected WIDTHxHEIGHT, e.g. 640x480"))?;
    match (w.trim().parse(), h.trim().parse()) {
        (Ok(w), Ok(h)) if w > 0 && h > 0 => Ok((w, h)),
        _ => Err(format!(
            "{s:?}: expected WIDTHxHEIGHT with positive numbers"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::PixelFormat;

    #[test]
    fn paths_are_told_apart_by_kind() {
        let cam = V4l2Config::new("/dev/video0", PixelFormat::Yuyv, 640, 480);
        let dir = std::env::temp_dir();
        assert!(
            matches!(SourceSpec::parse("/dev/video3", &cam, 10.0), Ok(SourceSpec::V4l2(c)) if c.device == Path::new("/dev/video3"))
        );
        assert!(matches!(
            SourceSpec::parse(dir.to_str().unwrap(), &cam, 10.0),
            Ok(SourceSpec::Images { .. })
        ));
        assert!(
            matches!(SourceSpec::parse("synthetic:320x240", &cam, 10.0), Ok(SourceSpec::Synthetic(c)) if (c.width, c.height) == (320, 240))
        );
        assert!(
            SourceSpec::parse("synthetic:320", &cam, 10.0)
                .unwrap_err()
                .contains("WIDTHxHEIGHT")
        );
        assert!(
            SourceSpec::parse("/nonexistent/clip.mp4", &cam, 10.0)
                .unwrap_err()
                .contains("no such file")
        );
        let odd = dir.join("reidcam-spec-test.xyz");
        std::fs::write(&odd, b"x").unwrap();
        assert!(
            SourceSpec::parse(odd.to_str().unwrap(), &cam, 10.0)
                .unwrap_err()
                .contains("cannot tell")
        );
        std::fs::remove_file(odd).ok();
    }
}
