//! Sharing between cameras, one step at a time (no broker: the messages are handed over).

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

/// A broker as far as sharing needs one: retained messages by topic (an empty payload clears
/// one), and each publication delivered in order to every connected camera, the publisher too.
/// Disconnecting loses what was in flight (a clean session); connecting delivers the retained
/// messages. The real broker is exercised by the MQTT integration tests; this one lets a test
/// try thousands of interleavings.
struct Net {
    retained: BTreeMap<String, Vec<u8>>,
    cams: Vec<Cam>,
}

struct Cam {
    gallery: Gallery,
    sharing: Sharing,
    online: bool,
    inbox: std::collections::VecDeque<(String, Vec<u8>)>,
}

/// xorshift64*: a fixed sequence per seed, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

impl Net {
    fn new(names: &[&str]) -> Net {
        let cams = names
            .iter()
            .map(|n| {
                let gallery = gallery();
                let sharing = Sharing::new(n, "m", Peers::default(), &gallery);
                Cam {
                    gallery,
                    sharing,
                    online: false,
                    inbox: Default::default(),
                }
            })
            .collect();
        Net {
            retained: BTreeMap::new(),
            cams,
        }
    }

    fn publish(&mut self, messages: Vec<(String, Vec<u8>)>) {
        for (topic, payload) in messages {
            if payload.is_empty() {
                self.retained.remove(&topic);
            } else {
                self.retained.insert(topic.clone(), payload.clone());
            }
            for c in self.cams.iter_mut().filter(|c| c.online) {
                c.inbox.push_back((topic.clone(), payload.clone()));
            }
        }
    }

    /// The daemon's publication turn (it runs only while connected).
    fn tick(&mut self, i: usize) {
        let c = &mut self.cams[i];
        if c.online {
            let out = c.sharing.outgoing(&c.gallery, "reidcam");
            self.publish(out);
        }
    }

    fn deliver(&mut self, i: usize) -> bool {
        let c = &mut self.cams[i];
        let Some((topic, payload)) = c.inbox.pop_front() else {
            return false;
        };
        let subject = parse_topic("reidcam", "m", &topic).unwrap();
        let update = decode(&payload, subject, "m", 4, 4).unwrap();
        c.sharing.apply(&mut c.gallery, update);
        true
    }

    fn connect(&mut self, i: usize, rng: &mut Rng) {
        let c = &mut self.cams[i];
        if c.online {
            return;
        }
        c.online = true;
        c.sharing.republish();
        // Retained messages come in the broker's order, whatever that is.
        let mut retained: Vec<_> = self.retained.clone().into_iter().collect();
        for k in (1..retained.len()).rev() {
            retained.swap(k, rng.below(k + 1));
        }
        c.inbox.extend(retained);
    }

    fn disconnect(&mut self, i: usize) {
        let c = &mut self.cams[i];
        c.online = false;
        c.inbox.clear();
    }

    /// Everyone connected, every message delivered, every change published, until quiet.
    fn heal(&mut self, rng: &mut Rng) {
        for i in 0..self.cams.len() {
            self.connect(i, rng);
        }
        for _ in 0..1000 {
            let mut busy = false;
            for i in 0..self.cams.len() {
                self.tick(i);
                while self.deliver(i) {
                    busy = true;
                }
            }
            if !busy {
                return;
            }
        }
        panic!("sharing does not settle");
    }

    /// What camera `i` shares, as `origin/id → label`: its own enrolled identities and its
    /// copies of the others'.
    fn shared(&self, i: usize) -> BTreeMap<String, Option<String>> {
        let c = &self.cams[i];
        let mut all = BTreeMap::new();
        for info in c.gallery.identities().filter(|i| i.pinned) {
            let key = match c
                .sharing
                .peers
                .copies
                .iter()
                .find(|(_, l)| **l == info.id.0)
            {
                Some((key, _)) => key.clone(),
                None => format!("{}/{}", c.sharing.origin, info.id.0),
            };
            all.insert(key, info.label.map(str::to_owned));
        }
        all
    }
}

/// Random operations on three cameras (enrol, rename an own identity or a copy, erase either,
/// unpin), with cameras leaving and joining the broker and messages delivered in random
/// interleavings; after everyone is back and the messages settle, every camera shares the same
/// identities under the same names, and nothing erased anywhere came back.
#[test]
fn galleries_converge_after_partitions_whatever_the_order() {
    const NAMES: [&str; 3] = ["door", "yard", "hall"];
    const LABELS: [Option<&str>; 4] = [None, Some("ann"), Some("bo"), Some("cy")];
    for seed in 1..=2000u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut net = Net::new(&NAMES);
        for i in 0..NAMES.len() {
            net.connect(i, &mut rng);
        }
        let mut erased: Vec<String> = Vec::new();
        let mut log = Vec::new();
        for _ in 0..60 {
            let i = rng.below(NAMES.len());
            let pinned: Vec<PersonId> = net.cams[i]
                .gallery
                .identities()
                .filter(|x| x.pinned)
                .map(|x| x.id)
                .collect();
            let pick = (!pinned.is_empty()).then(|| pinned[rng.below(pinned.len())]);
            match rng.below(10) {
                0 => {
                    let v = [1.0, (rng.below(9) as f32) - 4.0, rng.below(5) as f32, 0.5];
                    let label = LABELS[rng.below(LABELS.len())];
                    let new = NewIdentity {
                        label,
                        pinned: true,
                        now: Timestamp(1),
                    };
                    let id = net.cams[i].gallery.insert(&v, new).unwrap().0;
                    log.push(format!("{} enrols {id} {label:?}", NAMES[i]));
                }
                1 | 2 => {
                    if let Some(id) = pick {
                        let label = LABELS[rng.below(LABELS.len())];
                        net.cams[i].gallery.edit(id, Some(label), None).unwrap();
                        log.push(format!("{} renames {id} {label:?}", NAMES[i]));
                    }
                }
                3 => {
                    if let Some(id) = pick {
                        let key = net.shared(i).into_iter().find(|(k, _)| {
                            net.cams[i].sharing.peers.copies.get(k) == Some(&id.0)
                                || *k == format!("{}/{}", NAMES[i], id.0)
                        });
                        net.cams[i].gallery.remove(id).unwrap();
                        erased.extend(key.map(|(k, _)| k));
                        log.push(format!("{} erases {id}", NAMES[i]));
                    }
                }
                4 => {
                    if let Some(id) = pick
                        && !net.cams[i].sharing.peers.is_copy(id)
                    {
                        net.cams[i].gallery.edit(id, None, Some(false)).unwrap();
                        log.push(format!("{} unpins {id}", NAMES[i]));
                    }
                }
                5 => {
                    net.disconnect(i);
                    log.push(format!("{} leaves", NAMES[i]));
                }
                6 => {
                    net.connect(i, &mut rng);
                    log.push(format!("{} joins", NAMES[i]));
                }
                7 => net.tick(i),
                _ => {
                    for _ in 0..rng.below(4) {
                        net.deliver(i);
                    }
                }
            }
        }
        net.heal(&mut rng);
        let first = net.shared(0);
        for (i, name) in NAMES.iter().enumerate().skip(1) {
            assert_eq!(
                net.shared(i),
                first,
                "seed {seed}: {} and {name} differ after: {log:#?}",
                NAMES[0],
            );
        }
        for key in &erased {
            assert!(
                !first.contains_key(key),
                "seed {seed}: {key} was erased but is back: {log:#?}"
            );
        }
    }
}
