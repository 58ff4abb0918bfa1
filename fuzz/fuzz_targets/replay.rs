//! Replay files (`capture`): the first byte picks MJPEG, Y4M or H.264 (Annex B, or MP4 when
//! the file starts with an `ftyp` box: the `mp4` crate's parser; seed `two.mp4`), the rest is
//! the file. It is opened and played to its end (at most 64 frames): every damaged part must be an
//! error or a skipped frame, never a panic, a hang or an endless run of frames.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reidcam::capture::{CaptureError, FrameSource, H264Source, MjpegSource, Y4mSource};

fuzz_target!(|data: &[u8]| {
    let Some((&kind, file)) = data.split_first() else {
        return;
    };
    let ext = ["mjpeg", "y4m", "264"][usize::from(kind % 3)];
    let path = std::env::temp_dir().join(format!("reidcam-fuzz-{}.{ext}", std::process::id()));
    std::fs::write(&path, file).unwrap();
    let source: Result<Box<dyn FrameSource>, CaptureError> = match ext {
        "mjpeg" => MjpegSource::open(&path, 10.0).map(|s| Box::new(s) as _),
        "y4m" => Y4mSource::open(&path).map(|s| Box::new(s) as _),
        _ => H264Source::open(&path, 10.0).map(|s| Box::new(s) as _),
    };
    if let Ok(mut source) = source {
        for _ in 0..64 {
            match source.next_frame() {
                Ok(frame) => {
                    let (w, h) = source_size(&frame);
                    assert!(w > 0 && h > 0);
                }
                Err(CaptureError::BadFrame { .. }) => {}
                Err(_) => break,
            }
        }
    }
    std::fs::remove_file(&path).ok();
});

fn source_size(frame: &reidcam::capture::Frame<'_>) -> (u32, u32) {
    (frame.image.width(), frame.image.height())
}
