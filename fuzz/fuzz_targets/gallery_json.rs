//! Gallery JSON imports (`gallery::json`): any bytes as the document, imported into a gallery of
//! the dimension it declares; an import either adds every identity or changes nothing.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use reidcam::gallery::file::ModelTag;
use reidcam::gallery::json::{GalleryJson, import};
use reidcam::gallery::{Gallery, GalleryConfig, MatchPolicy, StorageFormat};

fuzz_target!(|data: &[u8]| {
    let Ok(doc) = serde_json::from_slice::<GalleryJson>(data) else {
        return;
    };
    if doc.dim == 0 || doc.dim > 512 {
        return;
    }
    let config = GalleryConfig {
        dim: doc.dim,
        exemplars: 4,
        format: StorageFormat::Int8,
        budget_bytes: 1 << 20,
    };
    let Ok(mut gallery) = Gallery::with_budget(config, MatchPolicy::default()) else {
        return;
    };
    let model = ModelTag {
        name: doc.model.clone(),
        dim: doc.dim,
    };
    match import(&mut gallery, &model, &doc, Path::new("fuzz.json")) {
        Ok(n) => assert_eq!(gallery.len(), n),
        Err(_) => assert!(gallery.is_empty(), "a refused import changed the gallery"),
    }
});
