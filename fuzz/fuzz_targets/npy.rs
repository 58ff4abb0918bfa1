//! `.npy` inputs (`npy::read_f32_2d`, `reidcam embed --npy`): any bytes; a 2-D f32 array comes
//! back with exactly rows × cols values, or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((rows, cols, values)) = reidcam::npy::read_f32_2d(data) {
        assert_eq!(values.len(), rows * cols);
    }
});
