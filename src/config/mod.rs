//! The daemon's configuration (`reidcam run --config FILE`), in two phases: [`ConfigFile`] is
//! what the TOML says (serde, `deny_unknown_fields`, a default for every field), and
//! [`ConfigFile::validate`] turns it into a [`RunConfig`] of runtime objects, with errors that
//! name the field. Every field and its default is documented in `docs/daemon.md`
//! ("Configuration"); `board/systemd/reidcam.toml` is a board's configuration file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::capture::v4l2::V4l2Config;
use crate::capture::{PixelFormat, SourceSpec};
use crate::detect::{MotionConfig, YoloxConfig, ZoneConfig};
use crate::gallery::file::Recovery;
use crate::gallery::{Aggregation, StorageFormat};
use crate::quality::QualityConfig;
use crate::track::TrackerConfig;

mod validate;

/// The whole file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConfigFile {
    /// Camera name written into every event.
    pub camera: String,
    /// Board profile (`board/<name>.toml`): GPIO for the LED and button. Empty: no board I/O.
    pub board: String,
    pub source: SourceSection,
    pub detector: DetectorSection,
    pub model: ModelSection,
    pub gallery: GallerySection,
    pub tracker: TrackerConfig,
    /// Which crops are embedded, and how many before a track is decided.
    pub quality: QualityConfig,
    pub events: EventsSection,
    /// MQTT out (`docs/mqtt.md`). Off unless `mqtt.url` is set.
    pub mqtt: crate::mqtt::MqttSection,
    /// HTTP API, `/metrics`, `/healthz` (`docs/http.md`). Off unless `http.enabled`.
    pub http: crate::http::HttpSection,
}

/// `[source]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceSection {
    /// `/dev/videoN`, a directory of images, a `.mjpeg`/`.y4m`/`.mp4`/`.264` file, or
    /// `synthetic[:WxH]`. `auto`: `/dev/video0` if it exists, else the sample video in the shared
    /// data (`$REIDCAM_SHARED/data/video/one-by-one-person-detection.mp4`).
    pub path: String,
    /// Camera pixel format: YUYV, NV12, RGB3 or MJPG.
    pub format: String,
    /// Camera frame size.
    pub width: u32,
    pub height: u32,
    /// Camera frame rate to ask for (0: the driver's).
    pub fps: u32,
    /// Camera controls to set at start, by name (`v4l2-ctl --list-ctrls`).
    pub controls: std::collections::BTreeMap<String, i64>,
    /// Frame rate of replays that carry no timing (image directories, MJPEG, Annex B H.264).
    pub replay_fps: f64,
    /// Play replays at their frame rate instead of as fast as possible.
    pub realtime: bool,
    /// Stop after this many frames (0: at the end of a replay, never for a camera).
    pub max_frames: u64,
}

impl Default for SourceSection {
    fn default() -> Self {
        SourceSection {
            path: "auto".into(),
            format: "YUYV".into(),
            width: 640,
            height: 480,
            fps: 0,
            controls: Default::default(),
            replay_fps: 10.0,
            realtime: false,
            max_frames: 0,
        }
    }
}

/// `[detector]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectorSection {
    /// `model` (a person detector network), `motion` or `zones`.
    pub kind: String,
    /// Run the detector on every N-th frame; the tracker carries the boxes in between. 0: chosen
    /// at start-up from the detector's measured time and the camera's frame rate (1 for replays
    /// that are not paced).
    pub every: u32,
    pub motion: MotionConfig,
    pub zones: ZoneConfig,
    pub model: YoloxConfig,
}

impl Default for DetectorSection {
    fn default() -> Self {
        DetectorSection {
            kind: "model".into(),
            every: 0,
            motion: MotionConfig::default(),
            zones: ZoneConfig::default(),
            model: YoloxConfig::default(),
        }
    }
}

/// `source.replay_fps` bounds: below, a paced replay would sleep for minutes per frame; above,
/// pacing means nothing.
pub const MIN_REPLAY_FPS: f64 = 0.1;
pub const MAX_REPLAY_FPS: f64 = 1000.0;
/// `model.threads` and `detector.model.threads` at most: more than any board's cores.
pub const MAX_THREADS: usize = 64;
/// `gallery.budget` at most (4 GiB).
pub const MAX_GALLERY_BUDGET: u64 = 4 << 30;
/// `events.rotate_bytes` at least (unless 0): rotating on every event renames files in the frame
/// loop.
pub const MIN_ROTATE_BYTES: usize = 4096;
/// `events.keep` at most: rotation renames every kept file once.
pub const MAX_KEEP: u32 = 1000;
/// Most frames between two detections (`detector.every`).
pub const MAX_DETECT_EVERY: u32 = 30;

/// `[model]`: the ReID embedding model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    /// ONNX file. `auto`: `models/default.onnx` if present, else
    /// `$REIDCAM_SHARED/models/osnet_x0_25_msmt17.onnx`.
    pub path: String,
    /// Manifest; empty: the sidecar `MODEL.toml`, else `models/reference/<stem>.toml`, else
    /// torchreid defaults.
    pub manifest: String,
    /// Embedding threads (`EmbedConfig::threads`): they share a batch's crops, and a crop's
    /// largest layers.
    pub threads: usize,
    /// Embed the crops a frame chose on a thread of their own while the detector runs on the
    /// next frame (`PipelineConfig::overlap`; on machines with more than one core).
    pub overlap: bool,
}

impl Default for ModelSection {
    fn default() -> Self {
        ModelSection {
            path: "auto".into(),
            manifest: String::new(),
            threads: 1,
            overlap: true,
        }
    }
}

/// `[gallery]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GallerySection {
    /// Gallery file (saved atomically; `.bak` kept). Empty: in memory only.
    pub path: String,
    /// Memory budget, e.g. `16MiB`: capacity follows from it.
    pub budget: String,
    /// Exemplars kept per identity.
    pub exemplars: usize,
    /// Storage: int8, f16 or f32.
    pub format: String,
    /// Match threshold (cosine); negative: the model manifest's `[matching]`, else 0.7.
    pub threshold: f32,
    /// A match must beat the runner-up by this.
    pub margin: f32,
    /// Short-term re-identification: an identity seen at most this many seconds ago (stream
    /// time) matches from `recent_threshold` on (a track broken as people cross); 0: off.
    pub recent_seconds: f32,
    /// Threshold of that rule; negative: the model manifest's `[matching] recent_threshold`
    /// (no such value: the rule is off).
    pub recent_threshold: f32,
    /// `mean` or `max` over an identity's exemplars.
    pub aggregation: Aggregation,
    /// Damaged file at start: `backup` (load `.bak`), `empty`, or `fail`. The damaged file is
    /// kept as `.corrupt-<ms>` either way.
    pub recovery: String,
    /// Save a changed gallery this often (and always at a clean stop).
    pub save_every_secs: u64,
    /// Forget unpinned identities not seen for this long (`30d`, `12h`, `90m`, `45s`); empty:
    /// never. The privacy setting: how long a passer-by's embeddings are kept.
    pub forget_after: String,
    /// Keep the best crop of each identity as a small JPEG in `<path>.thumbs/` (mode 0600,
    /// erased with the identity; the web page shows them). false: no pictures are kept.
    pub thumbnails: bool,
    /// Bytes the thumbnails may take on disk, e.g. `4MiB`; identities beyond it get none.
    pub thumbnail_budget: String,
}

impl Default for GallerySection {
    fn default() -> Self {
        GallerySection {
            path: "reidcam-gallery.bin".into(),
            budget: "16MiB".into(),
            exemplars: 8,
            format: "int8".into(),
            threshold: -1.0,
            margin: crate::gallery::MatchPolicy::default().margin,
            recent_seconds: 2.0,
            recent_threshold: -1.0,
            aggregation: Aggregation::Mean,
            recovery: "backup".into(),
            save_every_secs: 60,
            forget_after: String::new(),
            thumbnails: true,
            thumbnail_budget: "4MiB".into(),
        }
    }
}

/// `[events]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsSection {
    /// `-` for stdout, or a file (appended, rotated by size).
    pub output: String,
    /// Rotate the file when it would pass this size (`0`: never).
    pub rotate_bytes: String,
    /// Rotated files kept (`events.jsonl.1` … `.N`).
    pub keep: u32,
    /// Save each entering track's best crop as JPEG here. Empty: no crops.
    pub crops_dir: String,
}

impl Default for EventsSection {
    fn default() -> Self {
        EventsSection {
            output: "-".into(),
            rotate_bytes: "10MiB".into(),
            keep: 5,
            crops_dir: String::new(),
        }
    }
}

/// Which detector, validated.
#[derive(Clone, Debug, PartialEq)]
pub enum DetectorChoice {
    Motion(MotionConfig),
    Zones(ZoneConfig),
    Model(YoloxConfig),
}

/// The configuration as runtime objects.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub camera: String,
    pub board: Option<PathBuf>,
    pub source: SourceSpec,
    pub realtime: bool,
    pub max_frames: Option<u64>,
    pub detector: DetectorChoice,
    /// Detect every N-th frame (None: automatic).
    pub detect_every: Option<u32>,
    pub model: PathBuf,
    pub manifest: Option<PathBuf>,
    pub threads: usize,
    /// `model.overlap`.
    pub overlap: bool,
    pub gallery_path: Option<PathBuf>,
    pub gallery: crate::gallery::GalleryConfig,
    /// None: the manifest's threshold.
    pub threshold: Option<f32>,
    pub margin: f32,
    /// `gallery.recent_seconds`, in ms (0: off).
    pub recent_ms: u64,
    /// None: the manifest's `recent_threshold`.
    pub recent_threshold: Option<f32>,
    pub aggregation: Aggregation,
    pub recovery: Recovery,
    pub save_every: std::time::Duration,
    /// `gallery.forget_after`.
    pub forget_after: Option<std::time::Duration>,
    pub tracker: TrackerConfig,
    pub quality: QualityConfig,
    pub events: Option<PathBuf>,
    pub rotate_bytes: u64,
    pub keep: u32,
    pub crops_dir: Option<PathBuf>,
    /// `gallery.thumbnails` (None: off, or no gallery file to keep them beside).
    pub thumbnails: Option<crate::thumbs::ThumbConfig>,
    pub mqtt: Option<crate::mqtt::MqttConfig>,
    pub http: Option<crate::http::HttpConfig>,
}

/// A configuration problem, naming the file (if any) and the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{origin}: {field}: {problem}")]
    Invalid {
        origin: String,
        field: &'static str,
        problem: String,
    },
}

/// The shared data directory: `$REIDCAM_SHARED`, else `../shared`.
pub fn shared_dir() -> PathBuf {
    std::env::var_os("REIDCAM_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("../shared"))
}

impl ConfigFile {
    /// Reads and parses `path` (phase one). Unknown fields are errors.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e
                .to_string()
                .trim_end()
                .replace('\n', " ")
                .replace("  ", " "),
        })
    }
}

/// One of the project's own models: `models/<file>` in the working directory, else beside the
/// executable (`<exe dir>/models/`, `<exe dir>/../share/reidcam/models/`), as an install lays
/// them out.
pub fn find_model(file: &str) -> Option<PathBuf> {
    let here = Path::new("models").join(file);
    if here.is_file() {
        return Some(here);
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [
        dir.join("models").join(file),
        dir.join("../share/reidcam/models").join(file),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

/// Longest camera name (it is part of every crop's file name).
pub const MAX_CAMERA_NAME: usize = 64;

/// A camera name is written into events and crop file names: 1–64 letters, digits, `-`, `_`
/// or `.`, not starting with `.` (so it can never name another directory).
pub fn check_camera_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_CAMERA_NAME
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "is {name:?}: expected 1 to {MAX_CAMERA_NAME} letters, digits, '-', '_' or '.', not \
             starting with '.'"
        ))
    }
}

/// Parses `45s`, `90m`, `12h`, `30d` (1 second to 10 years).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let unit_secs: u64 = match unit.trim() {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => 0,
    };
    let secs = digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit_secs))
        .filter(|s| (1..=10 * 365 * 86_400).contains(s))
        .ok_or_else(|| {
            format!("is {text:?}: expected a whole number of s, m, h or d (1s to 3650d), e.g. 30d")
        })?;
    Ok(std::time::Duration::from_secs(secs))
}

/// Parses `1234`, `64KiB`, `16MiB`, `1GiB` (also `KB`/`MB`/`GB` as powers of 1000).
pub fn parse_bytes(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let unit_bytes: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?}: expected B, KiB, MiB, GiB, KB, MB or GB"
            ));
        }
    };
    let n: usize = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size: expected e.g. 16MiB or 1048576"))?;
    n.checked_mul(unit_bytes)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camera_names_cannot_escape_the_crops_directory() {
        for good in ["door", "yard-2", "cam_1.left"] {
            assert!(check_camera_name(good).is_ok(), "{good}");
        }
        let long = "x".repeat(MAX_CAMERA_NAME + 1);
        for bad in [
            "../escaped",
            "a/b",
            "..",
            ".hidden",
            "tab\t",
            "",
            long.as_str(),
        ] {
            assert!(check_camera_name(bad).is_err(), "{bad:?}");
        }
        let mut file = ConfigFile::default();
        file.source.path = "synthetic".into();
        file.camera = "../escaped".into();
        let err = file.validate("c.toml").unwrap_err().to_string();
        assert!(
            err.starts_with("c.toml: camera: is \"../escaped\""),
            "{err}"
        );
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_bytes("16MiB"), Ok(16 << 20));
        assert_eq!(parse_bytes("1500"), Ok(1500));
        assert_eq!(parse_bytes("2 KB"), Ok(2000));
        assert!(
            parse_bytes("12 parsecs")
                .unwrap_err()
                .contains("unknown unit")
        );
    }

    #[test]
    fn durations_parse_with_units_and_bounds() {
        use std::time::Duration;
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_duration("90m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("45s"), Ok(Duration::from_secs(45)));
        for bad in [
            "",
            "0s",
            "12",
            "3 weeks",
            "-1d",
            "99999d",
            "18446744073709551615d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_fields_and_bad_values_name_the_field() {
        let err = toml::from_str::<ConfigFile>("[gallery]\nbudgett = \"1MiB\"\n").unwrap_err();
        assert!(err.to_string().contains("unknown field `budgett`"), "{err}");
        let mut file = ConfigFile::default();
        file.source.path = "synthetic".into();
        file.model.path = "/nonexistent/m.onnx".into();
        let err = file.validate("test.toml").unwrap_err().to_string();
        assert!(
            err.starts_with("test.toml: model.path: /nonexistent/m.onnx"),
            "{err}"
        );
        file.detector.kind = "magic".into();
        let err = file.validate("test.toml").unwrap_err().to_string();
        assert!(err.contains("detector.kind: is \"magic\""), "{err}");
    }

    /// Issue 22: settings that made the daemon panic, hang beyond one SIGTERM, or rename files
    /// billions of times are refused at start-up, naming the field.
    /// A file that validates: the defaults on synthetic frames with motion detection.
    fn valid_file() -> ConfigFile {
        let mut file = ConfigFile::default();
        file.source.path = "synthetic".into();
        file.detector.kind = "motion".into();
        file
    }

    #[test]
    fn settings_that_hung_or_panicked_are_bounded() {
        let good = valid_file;
        good().validate("t.toml").expect("the base config is valid");
        type Spoil = fn(&mut ConfigFile);
        let cases: [(&str, Spoil); 9] = [
            ("source.replay_fps", |f| f.source.replay_fps = 1e-300),
            ("source.replay_fps", |f| f.source.replay_fps = 1e-9),
            ("source.replay_fps", |f| f.source.replay_fps = f64::NAN),
            ("model.threads", |f| f.model.threads = 100_000),
            ("detector.model.threads", |f| {
                f.detector.model.threads = 100_000
            }),
            ("gallery.budget", |f| f.gallery.budget = "64GiB".into()),
            ("gallery.budget", |f| {
                f.gallery.budget = u64::MAX.to_string()
            }),
            ("events.rotate_bytes", |f| {
                f.events.rotate_bytes = "1".into()
            }),
            ("events.keep", |f| f.events.keep = u32::MAX),
        ];
        for (field, spoil) in cases {
            let mut file = good();
            spoil(&mut file);
            let err = file.validate("t.toml").unwrap_err().to_string();
            assert!(err.starts_with(&format!("t.toml: {field}:")), "{err}");
        }
    }

    #[test]
    fn short_term_reidentification_settings_are_checked() {
        let good = valid_file;
        let config = good().validate("t.toml").expect("the defaults are valid");
        assert_eq!((config.recent_ms, config.recent_threshold), (2_000, None));
        let mut file = good();
        file.gallery.recent_seconds = 0.5;
        file.gallery.recent_threshold = 0.55;
        let config = file.validate("t.toml").unwrap();
        assert_eq!(
            (config.recent_ms, config.recent_threshold),
            (500, Some(0.55))
        );
        for (field, seconds, threshold) in [
            ("gallery.recent_seconds", -1.0, -1.0),
            ("gallery.recent_seconds", 61.0, -1.0),
            ("gallery.recent_seconds", f32::NAN, -1.0),
            ("gallery.recent_threshold", 2.0, 1.5),
            ("gallery.recent_threshold", 2.0, f32::NAN),
        ] {
            let mut file = good();
            file.gallery.recent_seconds = seconds;
            file.gallery.recent_threshold = threshold;
            let err = file.validate("t.toml").unwrap_err().to_string();
            assert!(err.starts_with(&format!("t.toml: {field}:")), "{err}");
        }
    }
}
