//! Capture: the V4L2 source's errors through the CLI, and pixel-format conversion of raw frames
//! recorded from a real V4L2 driver (vivid, in the arm64 QEMU guest of `tools/vivid_e2e.py`).

use reidcam::RgbImage;
use reidcam::capture::convert::{PixelFormat, RawLayout, YuvRange, to_rgb};

use crate::common::{reidcam, repo};

#[test]
fn capture_errors_name_the_device_and_the_problem() {
    let (ok, _, err) = reidcam(&["capture", "--device", "/dev/no-such-camera"]);
    assert!(!ok);
    assert!(
        err.contains("/dev/no-such-camera: cannot open: No such file or directory"),
        "{err}"
    );
    let (ok, _, err) = reidcam(&["capture", "--device", "/dev/null"]);
    assert!(!ok && err.contains("/dev/null: not a V4L2 device"), "{err}");
    let (ok, _, err) = reidcam(&["capture", "--format", "H264"]);
    assert!(
        !ok && err.contains("unknown pixel format \"H264\""),
        "{err}"
    );
    let (ok, _, err) = reidcam(&["capture", "--zone", "0,0,0,10"]);
    assert!(
        !ok && err.contains("expected X,Y,W,H with W and H > 0"),
        "{err}"
    );
    assert!(!err.contains("panicked"));
}

/// The centre of each of vivid's eight 75% colour bars, in RGB.
const BARS_75: [[u8; 3]; 8] = [
    [191, 191, 191],
    [191, 191, 0],
    [0, 191, 191],
    [0, 191, 0],
    [191, 0, 191],
    [191, 0, 0],
    [0, 0, 191],
    [0, 0, 0],
];

/// A raw frame recorded from vivid and the layout the driver reported for it.
fn fixture(name: &str) -> (Vec<u8>, RawLayout) {
    let dir = repo().join("tests/fixtures/v4l2");
    let meta_path = dir.join(format!("{name}.json"));
    if !meta_path.exists() {
        panic!(
            "{}: missing (record with tools/vivid_e2e.py --record-fixtures)",
            meta_path.display()
        );
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&meta_path).unwrap()).unwrap();
    let raw = std::fs::read(dir.join(format!("{name}.raw"))).unwrap();
    let layout = RawLayout {
        format: meta["pixel_format"]
            .as_str()
            .unwrap()
            .parse::<PixelFormat>()
            .unwrap(),
        width: meta["width"].as_u64().unwrap() as u32,
        height: meta["height"].as_u64().unwrap() as u32,
        bytes_per_line: meta["bytes_per_line"].as_u64().unwrap() as usize,
        range: YuvRange::Limited,
    };
    (raw, layout)
}

fn convert_fixture(name: &str) -> RgbImage {
    let (raw, layout) = fixture(name);
    let mut rgb = RgbImage::black(layout.width, layout.height).unwrap();
    to_rgb(&raw, &layout, &mut rgb).unwrap();
    rgb
}

fn bar_colours(img: &RgbImage, row: u32) -> Vec<[u8; 3]> {
    let w = img.width() as usize;
    (0..8)
        .map(|bar| {
            let x = w * (2 * bar + 1) / 16;
            let at = (row as usize * w + x) * 3;
            img.as_bytes()[at..at + 3].try_into().unwrap()
        })
        .collect()
}

#[test]
fn vivid_frames_convert_to_the_colour_bars() {
    for name in ["YUYV", "NV12"] {
        let img = convert_fixture(name);
        let row = img.height() / 4;
        let got = bar_colours(&img, row);
        for (bar, (g, want)) in got.iter().zip(BARS_75).enumerate() {
            let off = g
                .iter()
                .zip(want)
                .map(|(&a, b)| a.abs_diff(b))
                .max()
                .unwrap();
            assert!(off <= 3, "{name}: bar {bar} is {g:?}, expected {want:?}");
        }
    }
}

#[test]
fn yuyv_and_nv12_of_the_same_scene_agree() {
    let (a, b) = (convert_fixture("YUYV"), convert_fixture("NV12"));
    assert_eq!((a.width(), a.height()), (b.width(), b.height()));
    // 4:2:2 vs 4:2:0 chroma: equal except near horizontal colour edges.
    let differing = a
        .as_bytes()
        .iter()
        .zip(b.as_bytes())
        .filter(|(x, y)| x.abs_diff(**y) > 3)
        .count();
    let share = differing as f64 / a.as_bytes().len() as f64;
    assert!(
        share < 0.02,
        "{:.2}% of samples differ by more than 3",
        100.0 * share
    );
}

#[test]
fn conversion_allocates_nothing() {
    for name in ["YUYV", "NV12"] {
        let (raw, layout) = fixture(name);
        let mut rgb = RgbImage::black(layout.width, layout.height).unwrap();
        let (result, allocations) =
            crate::alloc_count::allocations_during(|| to_rgb(&raw, &layout, &mut rgb));
        result.unwrap();
        assert_eq!(allocations, 0, "{name}");
    }
}
