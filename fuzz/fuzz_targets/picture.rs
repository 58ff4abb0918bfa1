//! Pictures (`frame::decode_image`): JPEG and PNG bytes as an enrolment upload or a still
//! replay brings them; a picture decodes to width × height × 3 bytes or is refused.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(image) = reidcam::frame::decode_image(data) {
        let (w, h) = (image.width(), image.height());
        assert_eq!(image.as_bytes().len(), w as usize * h as usize * 3);
    }
});
