//! Sharing between several cameras over a model of the broker: convergence and merges under
//! random histories.

use super::*;

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
        c.sharing.merges(&mut c.gallery);
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

/// The same person enrolled at two cameras: the one ranked second merges into the first (the
/// named one here), publishes a tombstone naming it, and a third camera follows: its copy goes,
/// tracks move to the survivor. The survivor's origin takes the merged views.
#[test]
fn one_person_enrolled_at_two_cameras_becomes_one_identity() {
    let mut net = Net::new(&["door", "yard", "hall"]);
    for c in &mut net.cams {
        c.sharing.merge_at = Some(0.9);
    }
    let mut rng = Rng(7);
    for i in 0..3 {
        net.connect(i, &mut rng);
    }
    let person = [0.6, 0.8, 0.0, 0.0];
    let nearby = [0.62, 0.78, 0.05, 0.0];
    enrol(&mut net.cams[0].gallery, person, "alice");
    let yard = net.cams[1]
        .gallery
        .insert(&nearby, unnamed_enrolment())
        .unwrap()
        .0;
    // Someone else, unnamed, at the hall: not merged.
    net.cams[2]
        .gallery
        .insert(&[0.0, 0.0, 1.0, 0.0], unnamed_enrolment())
        .unwrap();
    net.heal(&mut rng);
    for (i, c) in net.cams.iter().enumerate() {
        let shared = net.shared(i);
        assert_eq!(shared.len(), 2, "{}: {shared:?}", c.sharing.origin);
        assert_eq!(shared.get("door/1"), Some(&Some("alice".to_owned())));
        assert!(!shared.contains_key(&format!("yard/{}", yard.0)));
    }
    assert_eq!(net.cams[1].sharing.merged, 1);
    assert_eq!(net.cams[0].sharing.merged + net.cams[2].sharing.merged, 0);
    // The door's alice took the yard's view.
    assert_eq!(net.cams[0].gallery.get(PersonId(1)).unwrap().exemplars, 2);

    // The tombstone, as the hall reads it.
    let stone = tombstone("m", 4, "yard", yard.0, false, Some(("door", 1)));
    let m: IdentityMessage = serde_json::from_slice(&stone).unwrap();
    assert_eq!(
        m.merged_into,
        Some(MergedInto {
            origin: "door".into(),
            id: 1
        })
    );
    let bad = String::from_utf8(stone)
        .unwrap()
        .replace("\"door\"", "\"../x\"");
    let err = decode(bad.as_bytes(), ("yard".into(), yard.0), "m", 4, 4).unwrap_err();
    assert!(err.contains("merged_into.origin"), "{err}");
    let own = tombstone("m", 4, "yard", 5, false, Some(("yard", 5)));
    let err = decode(&own, ("yard".into(), 5), "m", 4, 4).unwrap_err();
    assert!(err.contains("itself"), "{err}");
}

/// Two names for one face: an operator's call; nothing is merged.
#[test]
fn differently_named_identities_are_not_merged() {
    let mut net = Net::new(&["door", "yard"]);
    for c in &mut net.cams {
        c.sharing.merge_at = Some(0.9);
    }
    let mut rng = Rng(3);
    net.connect(0, &mut rng);
    net.connect(1, &mut rng);
    enrol(&mut net.cams[0].gallery, [0.6, 0.8, 0.0, 0.0], "alice");
    enrol(&mut net.cams[1].gallery, [0.6, 0.8, 0.0, 0.0], "ann");
    net.heal(&mut rng);
    assert_eq!(net.shared(0).len(), 2);
    assert_eq!(net.shared(0), net.shared(1));
    // Renamed alike: now they merge (the yard's into the door's, by origin).
    let copy = net.cams[1].sharing.peers.local("door", 1).unwrap();
    net.cams[1]
        .gallery
        .edit(copy, Some(Some("ann")), None)
        .unwrap();
    net.heal(&mut rng);
    let shared = net.shared(1);
    assert_eq!(shared.len(), 1, "{shared:?}");
    assert_eq!(shared.get("door/1"), Some(&Some("ann".to_owned())));
    assert_eq!(net.shared(0), shared);
}

fn unnamed_enrolment() -> NewIdentity<'static> {
    NewIdentity {
        label: None,
        pinned: true,
        now: Timestamp(1),
    }
}

/// Random operations on three cameras (enrol, rename an own identity or a copy, erase either,
/// unpin), with cameras leaving and joining the broker and messages delivered in random
/// interleavings; after everyone is back and the messages settle, every camera shares the same
/// identities under the same names, and nothing erased anywhere came back.
#[test]
fn galleries_converge_after_partitions_whatever_the_order() {
    converge(2000, false, false);
}

/// The same with merges on, and every enrolment one of three people (a small variation of
/// their face): besides converging, at every camera the identities of one person whose names
/// do not differ have come to one camera's (merged across cameras), and every merge left a
/// tombstone that keeps the merged identity away.
#[test]
fn galleries_with_merges_converge_after_partitions_whatever_the_order() {
    converge(2000, true, false);
}

/// The same with passers-by shared too: some enrolments are provisional, and a camera may
/// forget its passers-by (`gallery.forget_after`: its own and its copies of others'). Besides
/// convergence: every copy anywhere is of an identity its origin still has, pinned alike —
/// what an origin forgot is gone everywhere.
#[test]
fn galleries_with_passers_by_converge_and_forget_everywhere() {
    converge(2000, true, true);
}

/// Three people, far apart (cosine 0 between any two).
const PEOPLE: [[f32; 4]; 3] = [
    [1.0, 0.0, 0.0, 0.2],
    [0.0, 1.0, 0.0, 0.2],
    [0.0, 0.0, 1.0, 0.2],
];

fn person_of(g: &Gallery, id: PersonId) -> usize {
    let mut v = [0.0; 4];
    g.exemplar(id, 0, &mut v).unwrap();
    (0..PEOPLE.len())
        .max_by(|&a, &b| {
            let dot = |p: usize| PEOPLE[p].iter().zip(&v).map(|(x, y)| x * y).sum::<f32>();
            dot(a).total_cmp(&dot(b))
        })
        .unwrap()
}

fn converge(seeds: u64, merges: bool, passers_by: bool) {
    const NAMES: [&str; 3] = ["door", "yard", "hall"];
    const LABELS: [Option<&str>; 4] = [None, Some("ann"), Some("bo"), Some("cy")];
    for seed in 1..=seeds {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut net = Net::new(&NAMES);
        for c in &mut net.cams {
            c.sharing.merge_at = merges.then_some(0.9);
            c.sharing.passers_by = passers_by;
        }
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
            match rng.below(11) {
                10 if passers_by => {
                    let n = net.cams[i].gallery.forget_unseen(Timestamp(u64::MAX));
                    log.push(format!("{} forgets {n} passers-by", NAMES[i]));
                }
                0 => {
                    let v = if merges {
                        let mut v = PEOPLE[rng.below(PEOPLE.len())];
                        v[3] += rng.below(5) as f32 * 0.05;
                        v
                    } else {
                        [1.0, (rng.below(9) as f32) - 4.0, rng.below(5) as f32, 0.5]
                    };
                    let pinned = !passers_by || rng.below(2) == 0;
                    let label = LABELS[rng.below(LABELS.len())].filter(|_| pinned);
                    let new = NewIdentity {
                        label,
                        pinned,
                        now: Timestamp(1),
                    };
                    let id = net.cams[i].gallery.insert(&v, new).unwrap().0;
                    log.push(format!(
                        "{} enrols {id} {label:?} pinned {pinned}",
                        NAMES[i]
                    ));
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
        for c in &net.cams {
            for (key, local) in &c.sharing.peers.copies {
                let (origin, id) = key.split_once('/').unwrap();
                let at = NAMES.iter().position(|n| *n == origin).unwrap();
                let theirs = net.cams[at].gallery.get(PersonId(id.parse().unwrap()));
                let mine = c.gallery.get(PersonId(*local)).unwrap();
                assert_eq!(
                    theirs.map(|t| t.pinned),
                    Some(mine.pinned),
                    "seed {seed}: {}'s copy of {key} after: {log:#?}",
                    c.sharing.origin
                );
            }
        }
        // With passers-by a camera may have forgotten the copy a merge would go into (until
        // its origin publishes it again): merges are complete only without them.
        if merges && !passers_by {
            // Per person: the origins and names of their shared identities.
            let c = &net.cams[0];
            let mut people: BTreeMap<usize, Vec<(String, Option<String>)>> = BTreeMap::new();
            for (key, label) in &first {
                let local = c.sharing.peers.copies.get(key).copied();
                let id = local.unwrap_or_else(|| key.split_once('/').unwrap().1.parse().unwrap());
                let origin = key.split_once('/').unwrap().0.to_owned();
                let person = person_of(&c.gallery, PersonId(id));
                people
                    .entry(person)
                    .or_default()
                    .push((origin, label.clone()));
            }
            for (person, ids) in people {
                let mut names: Vec<&String> = ids.iter().filter_map(|(_, l)| l.as_ref()).collect();
                names.dedup();
                let origins: std::collections::BTreeSet<&String> =
                    ids.iter().map(|(o, _)| o).collect();
                assert!(
                    names.len() > 1 || origins.len() == 1,
                    "seed {seed}: person {person} is still {ids:?} after: {log:#?}"
                );
            }
        }
    }
}
