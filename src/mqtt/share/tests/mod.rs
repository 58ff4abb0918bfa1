//! Sharing between cameras, one step at a time (no broker: the messages are handed over).

mod network;

use super::*;
use crate::gallery::{GalleryConfig, LABEL_CAPACITY, MatchPolicy, NewIdentity, StorageFormat};

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
    let erased = tombstone("m", 4, "door", 1, false, None);
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

/// A copy renamed at another camera is renamed at its origin, and so everywhere: the copy's
/// camera asks (a retained request on the label topic), the origin applies it if it is newer
/// than its own label, republishes and clears the request; an older request is refused and the
/// origin's label, republished, wins at the asker too.
#[test]
fn a_copy_renamed_elsewhere_is_renamed_at_its_origin() {
    let hand = |out: &[(String, Vec<u8>)], to: &mut Sharing, g: &mut Gallery| {
        let mut applied = Vec::new();
        for (topic, payload) in out {
            let subject = parse_topic("reidcam", "m", topic).unwrap();
            let update = decode(payload, subject, "m", 4, 4).unwrap();
            applied.push(to.apply(g, update));
        }
        applied
    };
    let mut door = gallery();
    let alice = enrol(&mut door, [0.6, 0.8, 0.0, 0.0], "alice");
    let mut at_door = Sharing::new("door", "m", Peers::default(), &door);
    let mut yard = gallery();
    let mut at_yard = Sharing::new("yard", "m", Peers::default(), &yard);
    let out = at_door.outgoing(&door, "reidcam");
    hand(&out, &mut at_yard, &mut yard);
    let copy = at_yard.peers.local("door", 1).unwrap();

    yard.edit(copy, Some(Some("alicia")), None).unwrap();
    let ask = at_yard.outgoing(&yard, "reidcam");
    assert_eq!(ask.len(), 1, "{ask:?}");
    assert_eq!(ask[0].0, "reidcam/gallery/m/door/1/label");
    assert!(at_yard.outgoing(&yard, "reidcam").is_empty(), "asked once");
    assert_eq!(hand(&ask, &mut at_door, &mut door), [Some(Applied::Stored)]);
    assert_eq!(door.get(alice).unwrap().label, Some("alicia"));
    let out = at_door.outgoing(&door, "reidcam");
    let topics: Vec<&str> = out.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        topics,
        ["reidcam/gallery/m/door/1", "reidcam/gallery/m/door/1/label"]
    );
    assert!(out[1].1.is_empty(), "the request is cleared");
    let content: IdentityMessage = serde_json::from_slice(&out[0].1).unwrap();
    assert!(content.label_at.is_some_and(|at| at > 0));
    hand(&out, &mut at_yard, &mut yard);
    assert_eq!(yard.get(copy).unwrap().label, Some("alicia"));
    assert!(at_yard.outgoing(&yard, "reidcam").is_empty(), "settled");

    // A request older than the origin's label: refused, and the origin's label published again.
    door.edit(alice, Some(Some("ali")), None).unwrap();
    let out = at_door.outgoing(&door, "reidcam");
    let stale = rename_request("door", 1, Some("old"), 1, "yard");
    let request = vec![("reidcam/gallery/m/door/1/label".to_owned(), stale)];
    assert_eq!(hand(&request, &mut at_door, &mut door), [None]);
    assert_eq!(door.get(alice).unwrap().label, Some("ali"));
    let again = at_door.outgoing(&door, "reidcam");
    assert!(
        again
            .iter()
            .any(|(t, p)| t == "reidcam/gallery/m/door/1" && !p.is_empty())
    );
    hand(&out, &mut at_yard, &mut yard);
    assert_eq!(yard.get(copy).unwrap().label, Some("ali"));
}

#[test]
fn bad_messages_are_refused_with_the_reason() {
    let mut door = gallery();
    enrol(&mut door, [1.0, 0.0, 0.0, 0.0], "alice");
    let good = encode(&door, PersonId(1), "m", "door", 0).unwrap();
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
    // Rename requests: for the identity of their topic, from a camera name, a valid label.
    let label = |origin: &str, id: u32| Subject {
        origin: origin.into(),
        id,
        rename: true,
    };
    let ok = rename_request("door", 1, Some("al"), 5, "yard");
    assert!(decode(&ok, label("door", 1), "m", 4, 4).is_ok());
    let long = "x".repeat(LABEL_CAPACITY + 1);
    let cases: [(Vec<u8>, Subject, &str); 4] = [
        (ok.clone(), label("door", 2), "published for"),
        (
            rename_request("door", 1, Some(&long), 5, "yard"),
            label("door", 1),
            "label of",
        ),
        (
            rename_request("door", 1, None, 5, "../x"),
            label("door", 1),
            "from",
        ),
        (b"[1]".to_vec(), label("door", 1), "not a rename request"),
    ];
    for (payload, subject, why) in cases {
        let err = decode(&payload, subject, "m", 4, 4).unwrap_err();
        assert!(err.contains(why), "{err}");
    }
    assert!(parse_topic("reidcam", "m", "reidcam/gallery/m/../1").is_none());
    assert_eq!(
        parse_topic("reidcam", "m", "reidcam/gallery/m/door/7"),
        Some(Subject::from(("door".to_owned(), 7)))
    );
    let rename = parse_topic("reidcam", "m", "reidcam/gallery/m/door/7/label").unwrap();
    assert!(rename.rename && rename.id == 7);
    assert!(parse_topic("reidcam", "m", "reidcam/gallery/m/door/7/other").is_none());
}

/// Passers-by shared (`mqtt.share_passers_by`): a provisional identity travels unpinned and is
/// stored as a remote copy; evicted or forgotten at another camera it concerns no one else; the
/// origin forgetting it (`gallery.forget_after`) erases it everywhere, and so does an operator's
/// erasure at any camera. Unpinning an enrolled person no longer withdraws them.
#[test]
fn passers_by_travel_and_are_forgotten_everywhere_by_their_origin() {
    let hand = |out: &[(String, Vec<u8>)], to: &mut Sharing, g: &mut Gallery| {
        out.iter()
            .map(|(topic, payload)| {
                let subject = parse_topic("reidcam", "m", topic).unwrap();
                to.apply(g, decode(payload, subject, "m", 4, 4).unwrap())
            })
            .collect::<Vec<_>>()
    };
    let passer = |g: &mut Gallery, v: [f32; 4], at: u64| {
        let new = NewIdentity {
            label: None,
            pinned: false,
            now: Timestamp(at),
        };
        g.insert(&v, new).unwrap().0
    };
    let mut door = gallery();
    let mut at_door = Sharing::new("door", "m", Peers::default(), &door);
    at_door.passers_by = true;
    let mut yard = gallery();
    let mut at_yard = Sharing::new("yard", "m", Peers::default(), &yard);
    at_yard.passers_by = true;
    let now = Timestamp::now().0;
    let p1 = passer(&mut door, [1.0, 0.0, 0.0, 0.0], now);
    let p2 = passer(&mut door, [0.0, 1.0, 0.0, 0.0], now);
    let out = at_door.outgoing(&door, "reidcam");
    assert_eq!(out.len(), 2, "{out:?}");
    let m: IdentityMessage = serde_json::from_slice(&out[0].1).unwrap();
    assert!(!m.pinned, "{m:?}");
    assert!(String::from_utf8_lossy(&out[0].1).contains(r#""pinned":false"#));
    hand(&out, &mut at_yard, &mut yard);
    let c1 = at_yard.peers.local("door", p1.0).unwrap();
    let c2 = at_yard.peers.local("door", p2.0).unwrap();
    assert!(!yard.get(c1).unwrap().pinned);
    assert_eq!(at_yard.peers.provisional.len(), 2);
    // Not shared without the option: the yard's own passer-by stays home.
    at_yard.passers_by = false;
    passer(&mut yard, [0.0, 0.0, 1.0, 0.0], now);
    assert!(at_yard.outgoing(&yard, "reidcam").is_empty());
    at_yard.passers_by = true;
    let own = at_yard.outgoing(&yard, "reidcam");
    assert_eq!(own.len(), 1, "{own:?}");

    // Forgotten at the yard (not seen there for forget_after): nothing is published.
    yard.forget_unseen(Timestamp(u64::MAX));
    assert!(yard.get(c1).is_none() && yard.get(c2).is_none());
    let out = at_yard.outgoing(&yard, "reidcam");
    assert!(
        out.iter().all(|(t, _)| !t.contains("/door/")),
        "a local forgetting erased a passer-by elsewhere: {out:?}"
    );
    assert!(at_yard.peers.provisional.is_empty());
    // The door republishes (a new connection): copied again.
    at_door.republish();
    let again = at_door.outgoing(&door, "reidcam");
    hand(&again, &mut at_yard, &mut yard);
    let c1 = at_yard.peers.local("door", p1.0).unwrap();
    let c2 = at_yard.peers.local("door", p2.0).unwrap();

    // The door forgets p1: erased everywhere.
    door.remove(p1).unwrap();
    let out = at_door.outgoing(&door, "reidcam");
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(
        hand(&out, &mut at_yard, &mut yard),
        [Some(Applied::Erased(c1))]
    );
    // An operator erases the yard's copy of p2: erased at the door too.
    yard.remove(c2).unwrap();
    at_yard.erased_by_operator(c2);
    let out = at_yard.outgoing(&yard, "reidcam");
    let stones: Vec<_> = out.iter().filter(|(t, _)| t.ends_with("/door/2")).collect();
    assert_eq!(stones.len(), 1, "{out:?}");
    assert_eq!(
        hand(&out, &mut at_door, &mut door)
            .into_iter()
            .flatten()
            .collect::<Vec<_>>(),
        [Applied::Erased(p2)]
    );

    // An enrolled person unpinned: still shared, now as a passer-by (no withdrawal).
    let alice = enrol(&mut door, [0.6, 0.8, 0.0, 0.0], "alice");
    hand(&at_door.outgoing(&door, "reidcam"), &mut at_yard, &mut yard);
    let copy = at_yard.peers.local("door", alice.0).unwrap();
    assert!(yard.get(copy).unwrap().pinned);
    door.edit(alice, None, Some(false)).unwrap();
    let out = at_door.outgoing(&door, "reidcam");
    let m: IdentityMessage = serde_json::from_slice(&out[0].1).unwrap();
    assert!(m.erased_at.is_none() && !m.pinned, "{m:?}");
    hand(&out, &mut at_yard, &mut yard);
    assert!(!yard.get(copy).unwrap().pinned);

    // An enrolled person's copy unpinned here by the operator is a passer-by here: forgotten
    // here, it is not erased at its origin.
    let bob = enrol(&mut door, [0.0, 0.0, 0.6, 0.8], "bob");
    hand(&at_door.outgoing(&door, "reidcam"), &mut at_yard, &mut yard);
    let copy = at_yard.peers.local("door", bob.0).unwrap();
    yard.edit(copy, None, Some(false)).unwrap();
    assert!(at_yard.outgoing(&yard, "reidcam").is_empty());
    yard.forget_unseen(Timestamp(u64::MAX));
    let out = at_yard.outgoing(&yard, "reidcam");
    assert!(out.is_empty(), "{out:?}");
    assert!(door.get(bob).is_some());
}

/// Full: a remote passer-by makes room by evicting another remote one, never this camera's
/// own; an enrolled person's copy evicts a remote passer-by first.
#[test]
fn copies_are_evicted_before_own_identities() {
    let config = GalleryConfig {
        dim: 4,
        exemplars: 1,
        format: StorageFormat::Int8,
        budget_bytes: 0,
    };
    let bytes = config.heap_bytes(3);
    let config = GalleryConfig {
        budget_bytes: bytes,
        ..config
    };
    let mut g = Gallery::with_budget(config, MatchPolicy::default()).unwrap();
    assert_eq!(g.capacity(), 3);
    let new = |at: u64| NewIdentity {
        label: None,
        pinned: false,
        now: Timestamp(at),
    };
    let own = g.insert(&[1.0, 0.0, 0.0, 0.0], new(1)).unwrap().0;
    let remote_old = g.insert(&[0.0, 1.0, 0.0, 0.0], new(5)).unwrap().0;
    let remote_new = g.insert(&[0.0, 0.0, 1.0, 0.0], new(9)).unwrap().0;
    g.set_remote(remote_old, true);
    g.set_remote(remote_new, true);
    // Own is the least recently seen, but the remote ones go first.
    assert_eq!(g.make_room(true), Some(remote_old));
    assert_eq!(g.make_room(true), None, "room now");
    g.insert(&[0.0, 0.0, 0.0, 1.0], new(10)).unwrap();
    assert_eq!(g.make_room(false), Some(remote_new));
    g.insert(&[0.5, 0.5, 0.0, 0.0], new(11)).unwrap();
    // No remote passer-by left: a remote one may not evict the camera's own...
    assert_eq!(g.make_room(true), None);
    assert!(g.get(own).is_some());
    // ...an enrolled person's copy may (the least recently seen).
    assert_eq!(g.make_room(false), Some(own));
    // And the gallery's own eviction takes a remote passer-by first too.
    let r = g.insert(&[0.1, 0.9, 0.0, 0.0], new(12)).unwrap().0;
    g.set_remote(r, true);
    let (_, evicted) = g.insert(&[0.9, 0.1, 0.0, 0.0], new(13)).unwrap();
    assert_eq!(evicted, Some(r));
}
