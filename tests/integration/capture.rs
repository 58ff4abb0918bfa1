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

// ---- Replay sources -------------------------------------------------------------------------

use reidcam::capture::{FrameSource, ImageDirSource, MjpegSource, SourceSpec, Y4mSource};

fn frame_bytes(source: &mut dyn FrameSource) -> Option<(Vec<u8>, String)> {
    match source.next_frame() {
        Ok(f) => {
            let (w, h) = (f.image.width(), f.image.height());
            let mut bytes = Vec::with_capacity((w * h * 3) as usize);
            for y in 0..h {
                bytes.extend_from_slice(f.image.row(y));
            }
            Some((bytes, f.name.to_owned()))
        }
        Err(reidcam::capture::CaptureError::Ended { .. }) => None,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn mjpeg_files_replay_every_jpeg_including_ones_with_end_markers_in_metadata() {
    let dir = crate::common::scratch("mjpeg");
    let images: Vec<RgbImage> = (0..3)
        .map(|i| crate::common::pattern(64 + 8 * i, 48))
        .collect();
    let mut file = Vec::new();
    let mut expected = Vec::new();
    for (i, img) in images.iter().enumerate() {
        let mut jpeg = crate::common::encode(img, image::ImageFormat::Jpeg);
        if i == 1 {
            // An APP1 segment whose payload holds FF D9 (as an EXIF thumbnail does).
            let app1 = [0xFF, 0xE1, 0x00, 0x08, 0xFF, 0xD9, 0xFF, 0xD8, 0xFF, 0xD9];
            jpeg.splice(2..2, app1);
        }
        expected.push(reidcam::frame::decode_image(&jpeg).unwrap());
        file.extend_from_slice(&jpeg);
    }
    let path = dir.join("clip.mjpeg");
    std::fs::write(&path, &file).unwrap();
    let mut source = MjpegSource::open(&path, 5.0).unwrap();
    for want in &expected {
        let (got, _) = frame_bytes(&mut source).expect("a frame");
        assert_eq!(got, want.as_bytes());
    }
    assert!(frame_bytes(&mut source).is_none());
    // A file cut inside its last JPEG: the two whole frames, then an error naming the file.
    std::fs::write(&path, &file[..file.len() - 100]).unwrap();
    let mut source = MjpegSource::open(&path, 5.0).unwrap();
    assert!(frame_bytes(&mut source).is_some() && frame_bytes(&mut source).is_some());
    let err = source.next_frame().map(|_| ()).unwrap_err().to_string();
    assert!(
        err.contains("clip.mjpeg") && err.contains("truncated"),
        "{err}"
    );
}

#[test]
fn y4m_frames_convert_with_bt601() {
    let dir = crate::common::scratch("y4m");
    let (w, h) = (6usize, 4usize);
    let mut file = format!("YUV4MPEG2 W{w} H{h} F25:1 Ip A1:1 C420jpeg\n").into_bytes();
    // Frame 0: limited-range red (Y 81, U 90, V 240); frame 1: mid grey (Y 126, U = V = 128).
    for (y, u, v) in [(81u8, 90u8, 240u8), (126, 128, 128)] {
        file.extend_from_slice(b"FRAME\n");
        file.extend(std::iter::repeat_n(y, w * h));
        file.extend(std::iter::repeat_n(u, w * h / 4));
        file.extend(std::iter::repeat_n(v, w * h / 4));
    }
    let path = dir.join("clip.y4m");
    std::fs::write(&path, &file).unwrap();
    let mut source = Y4mSource::open(&path).unwrap();
    assert_eq!(source.size(), (6, 4));
    let (red, _) = frame_bytes(&mut source).unwrap();
    let px = &red[..3];
    assert!(px[0] >= 252 && px[1] <= 3 && px[2] <= 3, "{px:?}");
    let (grey, _) = frame_bytes(&mut source).unwrap();
    assert!(
        grey.iter().all(|&c| (127..=129).contains(&c)),
        "{:?}",
        &grey[..3]
    );
    assert!(frame_bytes(&mut source).is_none());
    std::fs::write(&path, &file[..file.len() - 5]).unwrap();
    let mut source = Y4mSource::open(&path).unwrap();
    frame_bytes(&mut source).unwrap();
    let err = source.next_frame().map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("clip.y4m: frame 1: truncated"), "{err}");
    std::fs::write(&path, b"YUV4MPEG2 W6 H4 C422\n").unwrap();
    let err = Y4mSource::open(&path).map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("C422 is not supported"), "{err}");
    // Found by the `replay` fuzz target: a header field starting with a character of more than
    // one byte used to panic (the tag was cut at byte 1). Now it is an unknown tag, ignored.
    std::fs::write(&path, "YUV4MPEG2 W8 Ϲ: H8\n".as_bytes()).unwrap();
    let source = Y4mSource::open(&path).map(|s| s.size());
    assert_eq!(source.unwrap(), (8, 8));
}

#[test]
fn image_directories_replay_in_name_order_with_names() {
    let dir = crate::common::scratch("imagedir");
    let names = ["b.png", "a.jpg", "c.jpeg"];
    for (i, name) in names.iter().enumerate() {
        let img = crate::common::pattern(32 + 4 * i as u32, 24);
        let format = if name.ends_with("png") {
            image::ImageFormat::Png
        } else {
            image::ImageFormat::Jpeg
        };
        std::fs::write(dir.join(name), crate::common::encode(&img, format)).unwrap();
    }
    std::fs::write(dir.join("notes.txt"), b"not an image").unwrap();
    let mut source = ImageDirSource::open(&dir, 1.0).unwrap();
    let order: Vec<String> =
        std::iter::from_fn(|| frame_bytes(&mut source).map(|(_, n)| n)).collect();
    assert_eq!(order, ["a.jpg", "b.png", "c.jpeg"]);
    let empty = crate::common::scratch("imagedir-empty");
    let err = ImageDirSource::open(&empty, 1.0)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(err.contains("no .jpg, .jpeg or .png files"), "{err}");
}

#[test]
fn shared_h264_videos_play_to_the_end() {
    let Some(shared) = crate::common::shared() else {
        return;
    };
    if crate::common::emulated() {
        eprintln!("SKIPPED under emulation: decoding 2,000 frames takes minutes there");
        return;
    }
    let cam = reidcam::capture::v4l2::V4l2Config::new("/dev/video0", PixelFormat::Yuyv, 640, 480);
    for (file, frames) in [
        ("one-by-one-person-detection.mp4", 1394),
        ("people-detection.264", 596),
    ] {
        let path = shared.join("data/video").join(file);
        let mut source = SourceSpec::parse(path.to_str().unwrap(), &cam, 25.0)
            .unwrap()
            .open()
            .unwrap();
        assert_eq!(source.size(), (768, 432), "{file}");
        let mut n = 0;
        let mut last = std::time::Duration::ZERO;
        while let Ok(f) = source.next_frame() {
            assert!(
                f.timestamp >= last || n == 0,
                "{file}: time goes back at frame {n}"
            );
            last = f.timestamp;
            n += 1;
        }
        assert_eq!(n, frames, "{file}");
    }
}

/// A replay plays past a damaged frame (skipped and counted, as a camera drops one), and a
/// recording cut off in the middle ends as at its end: exit 0, the summary written, with what
/// was damaged. The same for an unreadable picture in a directory of stills.
#[test]
fn a_damaged_replay_frame_is_skipped_and_a_truncated_replay_ends_with_its_summary() {
    use crate::common::{models, reidcam, s, scratch};
    let dir = scratch("replay-damaged");
    let mut file = Vec::new();
    for i in 0..6u32 {
        let mut jpeg = crate::common::encode(
            &crate::common::pattern(64 + 8 * i, 48),
            image::ImageFormat::Jpeg,
        );
        if i == 2 {
            // The frame header's sample precision set to 0: the markers and lengths still
            // hold (the stream stays readable), the picture does not decode.
            let sof = jpeg
                .windows(2)
                .position(|w| w == [0xFF, 0xC0] || w == [0xFF, 0xC2])
                .expect("a frame header (SOF0 or SOF2)");
            jpeg[sof + 4] = 0;
            assert!(reidcam::frame::decode_image(&jpeg).is_err());
        }
        file.extend_from_slice(&jpeg);
    }
    let run = |source: &std::path::Path| -> serde_json::Value {
        let summary = dir.join("summary.json");
        let (ok, _, err) = reidcam(&[
            "run",
            "--source",
            s(source),
            "--detector",
            "motion",
            "--model",
            s(&models().join("tiny_reid.onnx")),
            "--events",
            s(&dir.join("events.jsonl")),
            "--summary-json",
            s(&summary),
            // No gallery file: not the working directory's default (another run may hold it).
            "--gallery",
            "",
        ]);
        assert!(ok, "{}: {err}", source.display());
        serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap()
    };
    let clip = dir.join("clip.mjpeg");
    std::fs::write(&clip, &file).unwrap();
    let s1 = run(&clip);
    assert_eq!(
        (s1["frames"].as_u64(), s1["bad_frames"].as_u64()),
        (Some(5), Some(1)),
        "{s1}"
    );
    assert_eq!(s1["ended_by"], "end of stream");
    assert!(s1.get("damaged").is_none(), "{s1}");

    // Cut inside the last frame: the four good ones before it, then the end.
    std::fs::write(&clip, &file[..file.len() - 100]).unwrap();
    let s2 = run(&clip);
    assert_eq!(
        (s2["frames"].as_u64(), s2["bad_frames"].as_u64()),
        (Some(4), Some(1)),
        "{s2}"
    );
    assert_eq!(s2["ended_by"], "damaged stream");
    let damaged = s2["damaged"].as_str().unwrap();
    assert!(
        damaged.contains("clip.mjpeg") && damaged.contains("truncated"),
        "{damaged}"
    );

    // Stills: an unreadable picture between two good ones.
    let stills = dir.join("stills");
    std::fs::create_dir_all(&stills).unwrap();
    for name in ["a.png", "c.png"] {
        let img = crate::common::pattern(40, 80);
        std::fs::write(
            stills.join(name),
            crate::common::encode(&img, image::ImageFormat::Png),
        )
        .unwrap();
    }
    std::fs::write(stills.join("b.png"), b"\x89PNG\r\n\x1a\n damaged").unwrap();
    let s3 = run(&stills);
    assert_eq!(
        (s3["frames"].as_u64(), s3["bad_frames"].as_u64()),
        (Some(2), Some(1)),
        "{s3}"
    );
}

// MP4 replay (the `h264` feature, on by default; board builds leave it out).

#[cfg(feature = "h264")]
/// An MP4 whose `udta` box holds a box of size 0 (`tests/fixtures/replay/box-loop.mp4`, found
/// by fuzzing: the `replay` target from a 2-frame seed) made the `mp4` crate seek back to the
/// same box header forever while opening it: a hostile file hung the daemon at start-up, where
/// no stop request is looked at. Now it is refused at once, with the file named.
#[test]
fn an_mp4_whose_boxes_loop_is_refused_not_read_forever() {
    let path = repo().join("tests/fixtures/replay/box-loop.mp4");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let opened = reidcam::capture::H264Source::open(&path, 25.0).map(|_| ());
        let _ = tx.send(opened.map_err(|e| e.to_string()));
    });
    let err = rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("still opening after 30 s")
        .unwrap_err();
    assert!(
        err.contains("box-loop.mp4") && err.contains("loop"),
        "{err}"
    );
}

#[cfg(feature = "h264")]
/// `H264Source::open` refuses the fixture `tests/fixtures/replay/<name>` with an error naming
/// the file and saying `why`.
fn mp4_refused(name: &str, why: &str) {
    let path = repo().join("tests/fixtures/replay").join(name);
    let err = reidcam::capture::H264Source::open(&path, 25.0)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(err.contains(name) && err.contains(why), "{err}");
}

#[cfg(feature = "h264")]
/// An MP4 whose `stsc` says a chunk holds 0 samples (`tests/fixtures/replay/empty-chunk.mp4`,
/// found by fuzzing after the fix above) made the `mp4` crate divide by zero when the first
/// sample was read: the daemon panicked at start-up. Now it is refused with the box named
/// (as are a track timescale of 0, which the crate divides by too, and fewer samples than
/// track fragments).
#[test]
fn an_mp4_track_the_mp4_crate_would_divide_by_zero_on_is_refused() {
    mp4_refused("empty-chunk.mp4", "stsc: chunk");
}

#[cfg(feature = "h264")]
/// Found by fuzzing (the `replay` target): a box inside `trak/meta` declaring more bytes than
/// the file has made the `mp4` crate allocate that size while reading the header (a panic, or
/// an abort where it cannot be allocated) — at start-up.
#[test]
fn an_mp4_box_larger_than_the_file_is_refused_before_it_is_allocated() {
    mp4_refused("oversized-box.mp4", "declares");
}

#[cfg(feature = "h264")]
/// Found by fuzzing (the `replay` target): an MP4 whose `stts` times fewer samples than the
/// track has made the `mp4` crate panic on an unwrap when the first untimed sample was read.
#[test]
fn an_mp4_with_samples_stts_does_not_time_is_refused() {
    mp4_refused("untimed-sample.mp4", "stts: times");
}

#[cfg(feature = "h264")]
/// Found by fuzzing (the `replay` target): a top-level `emsg` box too small for its own fields
/// made the `mp4` crate compute its message length below zero and allocate ~2⁶⁴ bytes (a
/// capacity-overflow panic at start-up).
#[test]
fn an_mp4_event_box_too_small_for_its_fields_is_refused() {
    mp4_refused("short-event.mp4", "emsg");
}
