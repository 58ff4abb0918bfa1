//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};

use reidcam::RgbImage;

/// A config's `[quality]` table for the synthetic scene's people (small flat-coloured figures
/// whose padded motion boxes reach the frame's bottom edge): the size, sharpness and edge tests
/// relaxed; each track decided on its first crop when `first_crop`.
pub fn synthetic_gate(first_crop: bool) -> String {
    let decide = if first_crop { "min_crops = 1\n" } else { "" };
    format!("[quality]\nmin_height = 32\nmin_sharpness = 0.0\nedge_margin = 0\n{decide}")
}

/// The repository root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The test model fixtures (`tests/fixtures/models`).
pub fn models() -> PathBuf {
    repo().join("tests/fixtures/models")
}

/// A fresh scratch directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("reidcam-it-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A path as a command-line argument.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `../shared` (or `$REIDCAM_SHARED`). Missing: the test fails under CI (`CI` set), and is
/// skipped with a message otherwise.
pub fn shared() -> Option<PathBuf> {
    let dir = std::env::var_os("REIDCAM_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("..").join("shared"));
    if dir.join("models").is_dir() && dir.join("data").is_dir() {
        return Some(dir);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "shared data not found at {} (set REIDCAM_SHARED); CI needs it",
            dir.display()
        );
    }
    eprintln!(
        "SKIPPED: shared data not found at {} (set REIDCAM_SHARED to run this test)",
        dir.display()
    );
    None
}

/// The synthetic test pattern of `tools/make_fixtures.py:pattern`: a gradient plus hashed
/// noise, wrapping at 256.
pub fn pattern(width: u32, height: u32) -> RgbImage {
    let mut data = Vec::with_capacity((width * height * 3) as usize);
    for y in 0..height {
        for x in 0..width {
            for c in 0..3u32 {
                let mut h = x.wrapping_mul(0x9E37_79B1)
                    ^ y.wrapping_mul(0x85EB_CA77)
                    ^ c.wrapping_mul(0xC2B2_AE3D);
                h ^= h >> 15;
                h = h.wrapping_mul(0x2C1B_3C6D);
                h ^= h >> 12;
                let g = (x * 7 + y * 3 + c * 85) & 255;
                data.push(((g + (h >> 25)) & 255) as u8);
            }
        }
    }
    RgbImage::from_raw(width, height, data).unwrap()
}

/// Whether the suite runs under qemu-user (`tools/qemu-runner` sets `REIDCAM_TEST_RUNNER`), where
/// the slowest checks take a sample and leave the whole to the host suite.
pub fn emulated() -> bool {
    std::env::var_os("REIDCAM_TEST_RUNNER").is_some()
}

/// A command for one of our own binaries. Under qemu-user (cross-target tests) the emulator
/// prefix comes from `REIDCAM_TEST_RUNNER` (set by `tools/qemu-runner`): without binfmt_misc an
/// ARM child cannot be executed directly.
pub fn command(program: &Path) -> std::process::Command {
    let runner = std::env::var("REIDCAM_TEST_RUNNER").unwrap_or_default();
    let mut words = runner.split_whitespace();
    match words.next() {
        Some(emulator) => {
            let mut cmd = std::process::Command::new(emulator);
            cmd.args(words).arg(program);
            cmd
        }
        None => std::process::Command::new(program),
    }
}

/// Runs the `reidcam` binary; returns (exit success, stdout, stderr).
pub fn reidcam(args: &[&str]) -> (bool, String, String) {
    let out = command(Path::new(env!("CARGO_BIN_EXE_reidcam")))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("reidcam runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Reads a fixture's `case.json`.
pub fn case(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("case.json")).expect("case.json");
    serde_json::from_str(&text).expect("case.json is JSON")
}

/// Encodes an image as PNG or JPEG bytes.
pub fn encode(img: &RgbImage, format: image::ImageFormat) -> Vec<u8> {
    if format == image::ImageFormat::Jpeg {
        // reidcam's own encoder (mozjpeg), at the `image` crate's default quality: the tests leave
        // `image`'s JPEG codec out, so `cargo test` links the very reidcam `cargo build` made
        // (a second feature set would compile the crate again).
        return reidcam::frame::encode_jpeg(img.as_bytes(), img.width(), img.height(), 75.0)
            .unwrap();
    }
    let mut bytes = Vec::new();
    image::RgbImage::from_raw(img.width(), img.height(), img.as_bytes().to_vec())
        .unwrap()
        .write_to(&mut std::io::Cursor::new(&mut bytes), format)
        .unwrap();
    bytes
}

/// An event of camera "door" naming known person 3 (`label`), for the sinks' allocation tests.
pub fn known_event(
    kind: reidcam::events::EventKind,
    track: u64,
    label: &'static str,
) -> reidcam::events::Event<'static> {
    use reidcam::gallery::{PersonId, Timestamp};
    reidcam::events::Event {
        event: kind,
        camera: "door",
        track,
        time: Timestamp(1_700_000_000_000),
        stream_ms: 100 * track,
        frame: track,
        frame_name: "",
        bbox: [1, 2, 30, 60],
        identity: reidcam::events::Identity::Known {
            id: PersonId(3),
            label: Some(label),
            similarity: 0.9,
            runner_up: None,
        },
        first_seen: Timestamp(1_700_000_000_000),
        frames_seen: 4,
        embeddings: 2,
        crop: None,
        pixels: None,
    }
}

/// A synthetic camera of `width × height` for the tests of a camera that goes away. At each
/// opening `open()` says whether it is there (else: not found). Once open it delivers at most
/// `frames` frames (None: any number), each after `pace`, while `present()` holds; then its
/// frames time out, as an unplugged camera's do.
pub fn test_camera(
    (width, height): (u32, u32),
    pace: std::time::Duration,
    frames: Option<usize>,
    mut open: impl FnMut() -> bool + 'static,
    present: impl Fn() -> bool + Clone + 'static,
) -> reidcam::capture::Opener {
    use reidcam::capture::{CaptureError, Frame, FrameSource, SyntheticConfig, SyntheticSource};
    const DEVICE: &str = "/dev/test-camera";
    struct Camera<P> {
        scene: SyntheticSource,
        left: Option<usize>,
        pace: std::time::Duration,
        present: P,
    }
    impl<P: Fn() -> bool> FrameSource for Camera<P> {
        fn next_frame(&mut self) -> Result<Frame<'_>, CaptureError> {
            if self.left == Some(0) || !(self.present)() {
                return Err(CaptureError::Timeout {
                    device: DEVICE.into(),
                    timeout: std::time::Duration::from_millis(10),
                });
            }
            if let Some(left) = &mut self.left {
                *left -= 1;
            }
            std::thread::sleep(self.pace);
            self.scene.next_frame()
        }
        fn describe(&self) -> String {
            "test camera".into()
        }
        fn size(&self) -> (u32, u32) {
            self.scene.size()
        }
    }
    Box::new(move || {
        if !open() {
            return Err(CaptureError::Open {
                device: DEVICE.into(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        let config = SyntheticConfig {
            width,
            height,
            ..SyntheticConfig::default()
        };
        Ok(Box::new(Camera {
            scene: SyntheticSource::new(config)?,
            left: frames,
            pace,
            present: present.clone(),
        }))
    })
}
