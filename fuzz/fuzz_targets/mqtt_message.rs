//! MQTT gallery messages (`mqtt::share`): what any client of the broker may publish on a gallery
//! topic, decoded and applied to a camera's gallery, which must stay within its capacity.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reidcam::gallery::{Gallery, GalleryConfig, MatchPolicy, StorageFormat};
use reidcam::mqtt::share::{Peers, Sharing, Subject, decode};

fuzz_target!(|data: &[u8]| {
    let config = GalleryConfig {
        dim: 8,
        exemplars: 4,
        format: StorageFormat::Int8,
        budget_bytes: 4 << 10,
    };
    let mut gallery = Gallery::with_budget(config, MatchPolicy::default()).unwrap();
    let mut sharing = Sharing::new("yard", "m", Peers::default(), &gallery);
    // The first byte picks the topic's origin and id (the message must agree with them), and
    // whether it is the identity's topic or its rename requests' (`…/label`).
    let (origin, id) = match data.first() {
        Some(b) if b % 2 == 0 => ("door".to_owned(), u32::from(*b)),
        _ => ("yard".to_owned(), 1),
    };
    let rename = data.first().is_some_and(|b| b & 0x80 != 0);
    let payload = data.get(1..).unwrap_or_default();
    if let Ok(update) = decode(payload, Subject { origin, id, rename }, "m", 8, 4) {
        sharing.apply(&mut gallery, update);
        assert!(gallery.len() <= gallery.capacity());
        sharing.outgoing(&gallery, "reidcam");
    }
});
