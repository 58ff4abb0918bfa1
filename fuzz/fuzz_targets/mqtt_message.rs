//! MQTT gallery messages (`mqtt::share`): what any client of the broker may publish on a gallery
//! topic, decoded and applied to a camera's gallery (sharing passers-by, merges on), which must
//! stay within its capacity.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reidcam::gallery::{Gallery, GalleryConfig, MatchPolicy, NewIdentity, StorageFormat, Timestamp};
use reidcam::mqtt::share::{Peers, Sharing, Subject, decode};

fuzz_target!(|data: &[u8]| {
    let config = GalleryConfig {
        dim: 8,
        exemplars: 4,
        format: StorageFormat::Int8,
        budget_bytes: 4 << 10,
    };
    let mut gallery = Gallery::with_budget(config, MatchPolicy::default()).unwrap();
    // An own enrolled person and an own passer-by, for a message to merge with or evict.
    for (pinned, v) in [(true, [1.0, 0.5, 0.0, 0.0]), (false, [0.0, 0.0, 1.0, 0.5])] {
        let mut e = [0.1f32; 8];
        e[..4].copy_from_slice(&v);
        let new = NewIdentity {
            label: None,
            pinned,
            now: Timestamp(1),
        };
        gallery.insert(&e, new).unwrap();
    }
    let mut sharing = Sharing::new("yard", "m", Peers::default(), &gallery);
    sharing.merge_at = Some(0.5);
    sharing.passers_by = true;
    sharing.outgoing(&gallery, "reidcam");
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
        sharing.merges(&mut gallery);
        sharing.outgoing(&gallery, "reidcam");
        sharing.merges(&mut gallery);
    }
});
