//! Frames in: the [`FrameSource`] trait and its sources — a V4L2 camera, replays of recordings
//! (a directory of images, MJPEG, Y4M, H.264 in MP4 or Annex B), a synthetic scene — chosen by a
//! [`SourceSpec`], plus [`Reopening`], which reopens a lost camera with back-off.
//!
//! A source owns its buffers (made when it opens) and lends each frame as an [`RgbView`] until the
//! next call, so the per-frame path allocates nothing on our side (decoders' own working memory
//! is theirs).

pub mod convert;
#[cfg(feature = "h264")]
mod h264;
#[cfg(feature = "h264")]
mod mp4_boxes;
mod reopen;
mod replay;
mod spec;
mod synthetic;
pub mod v4l2;

#[cfg(feature = "h264")]
pub use h264::H264Source;
pub use reopen::{Backoff, Opener, Reopening};
pub use replay::{ImageDirSource, MjpegSource, Y4mSource};
pub use spec::{SOURCE_KINDS, SourceSpec, parse_size};
pub use synthetic::{SyntheticConfig, SyntheticSource};

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use convert::{PixelFormat, RawLayout, YuvRange};

use crate::frame::RgbView;

/// One frame, borrowed from its source until the next call.
#[derive(Clone, Copy, Debug)]
pub struct Frame<'a> {
    pub image: RgbView<'a>,
    /// The driver's frame counter (gaps mean dropped frames).
    pub sequence: u64,
    /// Capture time from the driver (monotonic clock for V4L2).
    pub timestamp: Duration,
    /// The frame as delivered, before conversion (for recording fixtures and debugging).
    pub raw: &'a [u8],
    /// The file the frame came from, for sources that read one file per frame ("" otherwise).
    pub name: &'a str,
}

/// Where frames come from: a camera, a recording, a synthetic pattern.
pub trait FrameSource {
    /// The next frame; blocks until one is available or the source's timeout passes.
    fn next_frame(&mut self) -> Result<Frame<'_>, CaptureError>;
    /// One line for logs: device, format, size.
    fn describe(&self) -> String;
    /// Frame size; sources know it once open.
    fn size(&self) -> (u32, u32);
    /// Times the source was reopened after losing its device.
    fn reopens(&self) -> u64 {
        0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("{device}: cannot open: {source}")]
    Open {
        device: PathBuf,
        source: std::io::Error,
    },
    #[error("{device}: not a V4L2 device (VIDIOC_QUERYCAP: {source})")]
    NotV4l2 {
        device: PathBuf,
        source: std::io::Error,
    },
    #[error("{device}: not a streaming video capture device ({card})")]
    NotCapture { device: PathBuf, card: String },
    #[error("{device}: does not offer {format}; it offers {offered}")]
    FormatNotOffered {
        device: PathBuf,
        format: PixelFormat,
        offered: String,
    },
    #[error("{device}: asked for {asked}, the driver chose {chosen}")]
    Negotiation {
        device: PathBuf,
        asked: String,
        chosen: String,
    },
    #[error("{device}: no control named {name:?} (it has: {available})")]
    NoSuchControl {
        device: PathBuf,
        name: String,
        available: String,
    },
    #[error("{device}: {action}: {source}")]
    Io {
        device: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
    #[error("{device}: no frame within {timeout:?}")]
    Timeout { device: PathBuf, timeout: Duration },
    #[error("{}: {problem}", path.display())]
    Replay { path: PathBuf, problem: String },
    /// One frame of a replay could not be read or decoded; the source has moved past it (the
    /// next call reads the next frame). The daemon skips and counts these, as a camera drops a
    /// bad frame.
    #[error("{}: damaged frame skipped: {problem}", path.display())]
    BadFrame { path: PathBuf, problem: String },
    #[error("{source_name}: end of stream")]
    Ended { source_name: String },
    #[error("{device}: frame {sequence}: {source}")]
    Convert {
        device: PathBuf,
        sequence: u64,
        source: convert::ConvertError,
    },
}

impl CaptureError {
    /// Worth retrying after reopening the device (unplugged, timed out, a bad frame), as opposed
    /// to a configuration the device will never accept.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            CaptureError::Io { .. } | CaptureError::Timeout { .. } | CaptureError::Convert { .. }
        ) || matches!(self, CaptureError::Open { source, .. } if source.kind() != std::io::ErrorKind::PermissionDenied)
    }
}

impl CaptureError {
    pub(crate) fn bad_frame(path: &Path, problem: impl Into<String>) -> Self {
        CaptureError::BadFrame {
            path: path.to_owned(),
            problem: problem.into(),
        }
    }

    pub(crate) fn replay(path: &Path, problem: impl Into<String>) -> Self {
        CaptureError::Replay {
            path: path.to_owned(),
            problem: problem.into(),
        }
    }
}
