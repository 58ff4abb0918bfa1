//! Gallery files (`gallery::file`): the bytes after the magic are the fuzzer's; the length field
//! and the CRC are made right, so that the header and the entries are what gets explored. Then
//! the file is loaded into a gallery of the model it names (every field is checked on the way).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use reidcam::gallery::file::{GalleryFile, MAGIC, ModelTag};
use reidcam::gallery::{GalleryConfig, MatchPolicy, StorageFormat};

fuzz_target!(|data: &[u8]| {
    let mut bytes = MAGIC.to_vec();
    bytes.extend_from_slice(data);
    if bytes.len() >= 36 {
        let len = (bytes.len() + 4) as u64;
        bytes[28..36].copy_from_slice(&len.to_le_bytes());
    }
    let crc = crc32(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    let path = Path::new("fuzz.bin");
    let Ok(file) = GalleryFile::from_bytes(path, bytes) else {
        return;
    };
    let header = file.header().clone();
    if header.dim == 0 || header.dim > 512 || header.exemplars == 0 || header.exemplars > 16 {
        return;
    }
    let model = ModelTag {
        name: header.model.clone(),
        dim: header.dim,
    };
    let config = GalleryConfig {
        dim: header.dim,
        exemplars: header.exemplars,
        format: StorageFormat::Int8,
        budget_bytes: 1 << 20,
    };
    if let Ok(gallery) = file.into_gallery(&model, config, MatchPolicy::default()) {
        assert!(gallery.len() <= gallery.capacity());
        for info in gallery.identities() {
            assert!(info.exemplars >= 1 && info.exemplars <= header.exemplars);
        }
    }
});

/// CRC-32 (IEEE), as the file format stores it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}
