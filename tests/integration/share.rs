//! Identities shared between three running daemons on one real broker (`mqtt.share_gallery`),
//! driven through each camera's HTTP API: an enrolment at one is named at the others; during a
//! partition (the broker stopped) a copy is renamed at one camera and a person enrolled at
//! another; after the broker is back every camera holds the same people under the same names;
//! an erasure at one camera removes the person from every gallery and every file. First, one
//! person enrolled at two cameras becomes one identity everywhere, and the events say so.

use std::path::{Path, PathBuf};

use crate::broker::Broker;
use crate::common::{models, s, scratch};
use crate::http::{Daemon, exchange, json, request, within};

const NAMES: [&str; 3] = ["door", "yard", "hall"];

/// `(id, label)` of every identity a camera's API lists.
fn identities(daemon: &Daemon) -> Vec<(u64, Option<String>)> {
    let (code, body) = request(daemon.addr, "GET", "/api/v1/identities", None, b"");
    assert_eq!(code, 200, "{body}");
    json(&body)["identities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["id"].as_u64().unwrap(),
                i["label"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

/// The sorted names a camera knows (its "digest" for the comparison).
fn names(daemon: &Daemon) -> Vec<String> {
    let mut n: Vec<String> = identities(daemon)
        .into_iter()
        .map(|(_, l)| l.unwrap_or_else(|| "(no name)".into()))
        .collect();
    n.sort();
    n
}

fn id_of(daemon: &Daemon, label: &str) -> Option<u64> {
    identities(daemon)
        .into_iter()
        .find(|(_, l)| l.as_deref() == Some(label))
        .map(|(id, _)| id)
}

/// Enrols a picture of a synthetic person at `daemon` under `label` (empty: unnamed); returns
/// its id.
fn enrol(daemon: &Daemon, label: &str, width: u32) -> u64 {
    let image = crate::common::pattern(width, 120);
    let png = crate::common::encode(&image, image::ImageFormat::Png);
    let path = match label {
        "" => "/api/v1/enrol".to_owned(),
        _ => format!("/api/v1/enrol?label={label}"),
    };
    let (code, _, body) = exchange(daemon.addr, "POST", &path, None, "image/png", &png);
    let body = String::from_utf8_lossy(&body);
    assert_eq!(code, 201, "{body}");
    json(&body)["id"].as_u64().unwrap()
}

/// Starts camera `name` in `dir/<name>` on the synthetic scene with motion detection, its API
/// on and the broker configured (`mqtt`: lines for `[mqtt]`; `more`: sections before it);
/// its gallery is `dir/<name>.bin`.
fn camera(dir: &Path, broker: &Broker, name: &str, more: &str, mqtt: &str) -> (Daemon, PathBuf) {
    let own = dir.join(name);
    std::fs::create_dir_all(&own).unwrap();
    let config = own.join("c.toml");
    std::fs::write(
        &config,
        format!(
            "camera = \"{name}\"\n[detector]\nkind = \"motion\"\n{more}\
             [gallery]\nsave_every_secs = 1\n\
             [http]\nenabled = true\nlisten = \"127.0.0.1:0\"\n{}",
            broker.mqtt_section(mqtt)
        ),
    )
    .unwrap();
    let gallery = dir.join(format!("{name}.bin"));
    let model = models().join("tiny_reid.onnx");
    let daemon = Daemon::start_on(&own, &config, &gallery, &model, "synthetic:320x180");
    (daemon, gallery)
}

fn listed(gallery: &Path) -> Vec<String> {
    crate::http::listed_ids(&models().join("tiny_reid.onnx"), gallery)
}

#[test]
fn three_cameras_agree_after_a_partition_and_an_erasure_reaches_every_file() {
    if crate::common::emulated() {
        eprintln!("SKIPPED under emulation: three daemons and a broker; runs in the host suite");
        return;
    }
    let dir = scratch("share-three");
    let Some(mut broker) = Broker::start(&dir, false) else {
        return;
    };
    // The synthetic people are too small for the default crop gate: only enrolments make
    // identities here.
    let (cams, galleries): (Vec<Daemon>, Vec<PathBuf>) = NAMES
        .iter()
        .map(|name| camera(&dir, &broker, name, "", "share_gallery = true\n"))
        .unzip();
    let [door, yard, hall] = &cams[..] else {
        unreachable!()
    };

    // Carol enrolled at the door, and (unnamed) by another operator at the hall: one person,
    // one identity. The hall's merges into the door's (the rule ranks a named identity
    // first); every camera says so in its events, and the door's takes the hall's view. (The
    // tiny test model finds every synthetic person alike, so this comes first: later, every
    // new enrolment is like a differently named one, and not merged.)
    enrol(door, "carol", 64);
    within(30, "carol copied to the hall", || id_of(hall, "carol"));
    enrol(hall, "", 64);
    within(30, "the two carols merged everywhere", || {
        cams.iter().all(|c| names(c) == ["carol"]).then_some(())
    });
    for name in NAMES {
        let events = dir.join(name).join("events.jsonl");
        within(10, "a merge event", || {
            let text = std::fs::read_to_string(&events).unwrap_or_default();
            text.lines()
                .find(|l| l.contains(r#""event":"merge""#))
                .map(str::to_owned)
        });
    }
    let text = std::fs::read_to_string(dir.join("hall/events.jsonl")).unwrap();
    let merge = json(text.lines().find(|l| l.contains(r#""merge""#)).unwrap());
    assert_eq!(merge["identity"]["decision"], "merged", "{merge}");
    assert_eq!(merge["identity"]["label"], "carol", "{merge}");
    assert!(
        merge["identity"]["similarity"].as_f64().unwrap() > 0.9,
        "{merge}"
    );
    let (code, body) = request(door.addr, "GET", "/api/v1/identities", None, b"");
    assert_eq!(code, 200);
    let listing = json(&body);
    let carol = &listing["identities"][0];
    assert_eq!(carol["exemplars"], 2, "{carol}");

    // Alice enrolled at the door is named at the yard and the hall.
    enrol(door, "alice", 48);
    for cam in [yard, hall] {
        within(30, "alice copied to every camera", || id_of(cam, "alice"));
    }

    // A partition: the broker stops. The hall renames its copy of alice, the yard enrols bob.
    broker.stop();
    let copy = id_of(hall, "alice").unwrap();
    let (code, body) = request(
        hall.addr,
        "PATCH",
        &format!("/api/v1/identities/{copy}"),
        None,
        br#"{"label": "alicia"}"#,
    );
    assert_eq!(code, 200, "{body}");
    enrol(yard, "bob", 56);
    assert_ne!(names(door), names(hall));

    // Healed: every camera converges on the same people and names (back-off ≤ 10 s).
    broker.launch();
    let want = vec!["alicia".to_owned(), "bob".to_owned(), "carol".to_owned()];
    within(60, "the three galleries converge", || {
        cams.iter().all(|c| names(c) == want).then_some(())
    });

    // Bob erased at the hall (a copy there): gone from every camera, then from every file.
    let bob = id_of(hall, "bob").unwrap();
    let (code, body) = request(
        hall.addr,
        "DELETE",
        &format!("/api/v1/identities/{bob}"),
        None,
        b"",
    );
    assert_eq!(code, 200, "{body}");
    within(30, "bob erased everywhere", || {
        cams.iter()
            .all(|c| names(c) == ["alicia", "carol"])
            .then_some(())
    });
    // Each daemon saves within a second; then stop them and read the files.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    drop(cams);
    for g in &galleries {
        let rows = listed(g);
        assert_eq!(rows.len(), 2, "{}: {rows:?}", g.display());
        assert!(
            rows.iter().any(|r| r.contains("alicia")),
            "{}: {rows:?}",
            s(g)
        );
        let backup = PathBuf::from(format!("{}.bak", g.display()));
        if backup.exists() {
            assert!(
                listed(&backup).iter().all(|r| !r.contains("bob")),
                "bob left in {}",
                backup.display()
            );
        }
    }
}

/// The ids (`origin/id → local id`) in a camera's `<gallery>.peers.json`, and which of them are
/// passers-by's.
fn peers(gallery: &Path) -> (Vec<(String, u64)>, Vec<String>) {
    let path = PathBuf::from(format!("{}.peers.json", gallery.display()));
    let text = std::fs::read_to_string(path).unwrap_or_else(|_| "{}".into());
    let v = json(&text);
    let copies = v["copies"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, l)| (k.clone(), l.as_u64().unwrap()))
                .collect()
        })
        .unwrap_or_default();
    let provisional = v["provisional"]
        .as_array()
        .map(|a| a.iter().map(|k| k.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default();
    (copies, provisional)
}

/// Passers-by (`mqtt.share_passers_by`): the door's provisional identities reach the yard as
/// unpinned copies; the yard's, without the option, stay at the yard. An operator's erasure of
/// a copy at the yard erases the person at the door (and, as the door never reuses an id, for
/// good).
#[test]
fn passers_by_are_shared_only_when_asked_and_an_erasure_reaches_their_origin() {
    if crate::common::emulated() {
        eprintln!("SKIPPED under emulation: two daemons and a broker; runs in the host suite");
        return;
    }
    let dir = scratch("share-passers-by");
    let Some(broker) = Broker::start(&dir, false) else {
        return;
    };
    // The crop gate relaxed for the synthetic people: every camera makes passers-by.
    let gate = &crate::common::synthetic_gate(false);
    let (door, door_gallery) = camera(
        &dir,
        &broker,
        "door",
        gate,
        "share_gallery = true\nshare_passers_by = true\n",
    );
    let (yard, yard_gallery) = camera(&dir, &broker, "yard", gate, "share_gallery = true\n");
    let (key, local) = within(60, "a passer-by of the door copied to the yard", || {
        let (copies, provisional) = peers(&yard_gallery);
        copies.into_iter().find(|(k, _)| provisional.contains(k))
    });
    assert!(key.starts_with("door/"), "{key}");
    within(10, "the copy listed at the yard", || {
        identities(&yard)
            .iter()
            .any(|(id, _)| *id == local)
            .then_some(())
    });
    let (code, body) = request(yard.addr, "GET", "/api/v1/identities", None, b"");
    assert_eq!(code, 200);
    let copy = json(&body)["identities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == local)
        .cloned()
        .unwrap();
    assert_eq!(copy["pinned"], false, "{copy}");
    // The yard has passers-by of its own, and shares none of them.
    within(30, "the yard's own passers-by", || {
        let own = identities(&yard).len() > peers(&yard_gallery).0.len();
        own.then_some(())
    });
    std::thread::sleep(std::time::Duration::from_secs(2));
    let (door_copies, _) = peers(&door_gallery);
    assert!(door_copies.is_empty(), "{door_copies:?}");

    // Erased at the yard by an operator: gone at the door, its origin.
    let door_id: u64 = key.split_once('/').unwrap().1.parse().unwrap();
    assert!(identities(&door).iter().any(|(id, _)| *id == door_id));
    let (code, body) = request(
        yard.addr,
        "DELETE",
        &format!("/api/v1/identities/{local}"),
        None,
        b"",
    );
    assert_eq!(code, 200, "{body}");
    within(30, "the passer-by erased at the door", || {
        (!identities(&door).iter().any(|(id, _)| *id == door_id)).then_some(())
    });
}
