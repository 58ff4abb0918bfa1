//! Sharing between cameras, one step at a time (no broker: the messages are handed over).

use super::*;
use crate::gallery::{GalleryConfig, MatchPolicy, NewIdentity, StorageFormat};

fn gallery() -> Gallery {
    let config = GalleryConfig {
        dim: 4,
        exemplars: 4,
        format: StorageFormat::Int8,
        budget_bytes: 64 << 10,
    };
    Gallery::with_budget(config, MatchPolicy::default()).unwrap()
}

fn enrol(g: &mut Gallery, v: [f32; 4], label: &str) -> PersonId {
    let new = NewIdentity {
        label: Some(label),
        pinned: true,
        now: Timestamp(1),
    };
    g.insert(&v, new).unwrap().0
}

#[test]
fn an_identity_travels_and_its_erasure_too() {
    let mut door = gallery();
    let alice = enrol(&mut door, [0.6, 0.8, 0.0, 0.0], "alice");
    let mut at_door = Sharing::new("door", "m", Peers::default(), &door);
    let out = at_door.outgoing(&door, "reidcam");
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, "reidcam/gallery/m/door/1");
    assert!(
        at_door.outgoing(&door, "reidcam").is_empty(),
        "unchanged: nothing"
    );

    let mut yard = gallery();
    enrol(&mut yard, [0.0, 0.0, 1.0, 0.0], "bob");
    let mut at_yard = Sharing::new("yard", "m", Peers::default(), &yard);
    let got = parse_topic("reidcam", "m", &out[0].0).unwrap();
    let update = decode(&out[0].1, got, "m", 4, 4).unwrap();
    assert_eq!(at_yard.apply(&mut yard, update), Some(Applied::Stored));
    let copy = at_yard.peers.local("door", alice.0).unwrap();
    let info = yard.get(copy).unwrap();
    assert_eq!((info.label, info.pinned), (Some("alice"), true));
    let mut v = [0.0; 4];
    yard.exemplar(copy, 0, &mut v).unwrap();
    assert!(
        (v[0] - 0.6).abs() < 0.01 && (v[1] - 0.8).abs() < 0.01,
        "{v:?}"
    );
    // The copy is not published back as the yard's own.
    assert_eq!(at_yard.outgoing(&yard, "reidcam").len(), 1, "only bob");

    // Erased at the yard: the door removes its own.
    yard.remove(copy).unwrap();
    let mut at_yard = Sharing::new("yard", "m", at_yard.peers.clone(), &yard);
    let out = at_yard.outgoing(&yard, "reidcam");
    let erase = out
        .iter()
        .find(|(t, _)| t == "reidcam/gallery/m/door/1")
        .unwrap();
    let stone: IdentityMessage = serde_json::from_slice(&erase.1).unwrap();
    assert!(stone.erased_at.is_some() && stone.exemplars.is_empty());
    let update = decode(&erase.1, ("door".into(), 1), "m", 4, 4).unwrap();
    assert!(matches!(update, RemoteUpdate::Erase { clear: false, .. }));
    assert_eq!(
        at_door.apply(&mut door, update),
        Some(Applied::Erased(alice))
    );
    assert!(door.get(alice).is_none());
    let out = at_door.outgoing(&door, "reidcam");
    assert!(out.is_empty(), "already erased: {out:?}");
}

/// Unpinning an own identity withdraws it from sharing: the other cameras erase their
/// copies, the origin keeps it (its own tombstone coming back does not erase it). Unpinned
/// while offline, it is withdrawn when its retained message comes back.
#[test]
fn an_unpinned_identity_is_withdrawn_not_erased() {
    let mut door = gallery();
    let alice = enrol(&mut door, [0.6, 0.8, 0.0, 0.0], "alice");
    let mut at_door = Sharing::new("door", "m", Peers::default(), &door);
    let shared = at_door.outgoing(&door, "reidcam");
    let mut yard = gallery();
    let mut at_yard = Sharing::new("yard", "m", Peers::default(), &yard);
    let update = decode(&shared[0].1, ("door".into(), 1), "m", 4, 4).unwrap();
    assert_eq!(at_yard.apply(&mut yard, update), Some(Applied::Stored));
    let copy = at_yard.peers.local("door", 1).unwrap();

    door.edit(alice, None, Some(false)).unwrap();
    let out = at_door.outgoing(&door, "reidcam");
    assert_eq!(out.len(), 1, "{out:?}");
    let stone: IdentityMessage = serde_json::from_slice(&out[0].1).unwrap();
    assert!(stone.withdrawn && stone.erased_at.is_some(), "{stone:?}");
    // Back at the door: kept.
    let update = decode(&out[0].1, ("door".into(), 1), "m", 4, 4).unwrap();
    assert_eq!(at_door.apply(&mut door, update.clone()), None);
    assert!(door.get(alice).is_some_and(|i| !i.pinned));
    // At the yard: the copy is erased.
    assert_eq!(
        at_yard.apply(&mut yard, update),
        Some(Applied::Erased(copy))
    );
    assert!(yard.get(copy).is_none());

    // Re-pinned: shared again. Unpinned while the door was off: a new run's Sharing has
    // published nothing, and withdraws it when the old retained message arrives.
    door.edit(alice, None, Some(true)).unwrap();
    let again = at_door.outgoing(&door, "reidcam");
    assert_eq!(again.len(), 1);
    door.edit(alice, None, Some(false)).unwrap();
    let mut next_run = Sharing::new("door", "m", Peers::default(), &door);
    assert!(next_run.outgoing(&door, "reidcam").is_empty());
    let update = decode(&again[0].1, ("door".into(), 1), "m", 4, 4).unwrap();
    assert_eq!(next_run.apply(&mut door, update), None);
    let out = next_run.outgoing(&door, "reidcam");
    let stone: IdentityMessage = serde_json::from_slice(&out[0].1).unwrap();
    assert!(stone.withdrawn, "{stone:?}");
    assert!(door.get(alice).is_some());

    // A plain erasure of the door's identity (from a peer) still erases it at the door.
    let erased = tombstone("m", 4, "door", 1, false);
    let update = decode(&erased, ("door".into(), 1), "m", 4, 4).unwrap();
    assert_eq!(
        next_run.apply(&mut door, update),
        Some(Applied::Erased(alice))
    );
}

/// A shared copy removed through the API while the daemon runs is erased everywhere at the
/// next publication (not only at the next start).
#[test]
fn a_copy_removed_while_running_is_erased_everywhere() {
    let mut door = gallery();
    enrol(&mut door, [0.6, 0.8, 0.0, 0.0], "alice");
    let shared = Sharing::new("door", "m", Peers::default(), &door).outgoing(&door, "reidcam");
    let mut yard = gallery();
    let mut at_yard = Sharing::new("yard", "m", Peers::default(), &yard);
    let update = decode(&shared[0].1, ("door".into(), 1), "m", 4, 4).unwrap();
    at_yard.apply(&mut yard, update).unwrap();
    assert!(at_yard.outgoing(&yard, "reidcam").is_empty());
    let copy = at_yard.peers.local("door", 1).unwrap();
    yard.remove(copy).unwrap();
    let out = at_yard.outgoing(&yard, "reidcam");
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].0, "reidcam/gallery/m/door/1");
    let stone: IdentityMessage = serde_json::from_slice(&out[0].1).unwrap();
    assert!(stone.erased_at.is_some() && !stone.withdrawn);
    assert!(at_yard.peers.local("door", 1).is_none());
}

#[test]
fn bad_messages_are_refused_with_the_reason() {
    let mut door = gallery();
    enrol(&mut door, [1.0, 0.0, 0.0, 0.0], "alice");
    let good = encode(&door, PersonId(1), "m", "door").unwrap();
    let from = || ("door".to_owned(), 1);
    assert!(decode(&good, from(), "m", 4, 4).is_ok());
    type Case<'a> = (&'a [u8], &'a str, usize, (String, u32), &'a str);
    let cases: [Case; 5] = [
        (b"{not json", "m", 4, from(), "not an identity"),
        (&good, "other", 4, from(), "model"),
        (&good, "m", 8, from(), "dimension"),
        (&good, "m", 4, ("yard".into(), 1), "published as"),
        (&good, "m", 4, ("door".into(), 2), "published as"),
    ];
    for (payload, model, dim, origin, why) in cases {
        let err = decode(payload, origin, model, dim, 4).unwrap_err();
        assert!(err.contains(why), "{err}");
    }
    let text = String::from_utf8(good).unwrap();
    for (from_, to, why) in [
        ("\"scale\":", "\"scale\":-", "scale"),
        ("\"codes\":\"", "\"codes\":\"zz", "hex digits"),
    ] {
        let bad = text.replacen(from_, to, 1);
        let err = decode(bad.as_bytes(), from(), "m", 4, 4).unwrap_err();
        assert!(err.contains(why), "{err}");
    }
    assert!(parse_topic("reidcam", "m", "reidcam/gallery/m/../1").is_none());
    assert_eq!(
        parse_topic("reidcam", "m", "reidcam/gallery/m/door/7"),
        Some(("door".into(), 7))
    );
}
