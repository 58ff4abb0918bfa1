//! Identities shared between three running daemons on one real broker (`mqtt.share_gallery`),
//! driven through each camera's HTTP API: an enrolment at one is named at the others; during a
//! partition (the broker stopped) a copy is renamed at one camera and a person enrolled at
//! another; after the broker is back every camera holds the same people under the same names;
//! an erasure at one camera removes the person from every gallery and every file.

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

/// Enrols a picture of a synthetic person at `daemon` under `label`; returns its id.
fn enrol(daemon: &Daemon, label: &str, width: u32) -> u64 {
    let image = crate::common::pattern(width, 120);
    let png = crate::common::encode(&image, image::ImageFormat::Png);
    let path = format!("/api/v1/enrol?label={label}");
    let (code, _, body) = exchange(daemon.addr, "POST", &path, None, "image/png", &png);
    let body = String::from_utf8_lossy(&body);
    assert_eq!(code, 201, "{body}");
    json(&body)["id"].as_u64().unwrap()
}

fn listed(gallery: &Path) -> Vec<String> {
    crate::http::listed_ids(&models().join("tiny_reid.onnx"), gallery)
}

#[test]
fn three_cameras_agree_after_a_partition_and_an_erasure_reaches_every_file() {
    if std::env::var_os("REIDCAM_TEST_RUNNER").is_some() {
        eprintln!("SKIPPED under emulation: three daemons and a broker; runs in the host suite");
        return;
    }
    let dir = scratch("share-three");
    let Some(mut broker) = Broker::start(&dir, false) else {
        return;
    };
    let model = models().join("tiny_reid.onnx");
    let galleries: Vec<PathBuf> = NAMES.iter().map(|n| dir.join(format!("{n}.bin"))).collect();
    let cams: Vec<Daemon> = NAMES
        .iter()
        .zip(&galleries)
        .map(|(name, gallery)| {
            let own = dir.join(*name);
            std::fs::create_dir_all(&own).unwrap();
            let config = own.join("c.toml");
            std::fs::write(
                &config,
                format!(
                    "camera = \"{name}\"\n[detector]\nkind = \"motion\"\n\
                     [gallery]\nsave_every_secs = 1\n\
                     [http]\nenabled = true\nlisten = \"127.0.0.1:0\"\n{}",
                    broker.mqtt_section("share_gallery = true\n")
                ),
            )
            .unwrap();
            Daemon::start_on(&own, &config, gallery, &model, "synthetic:320x180")
        })
        .collect();
    let [door, yard, hall] = &cams[..] else {
        unreachable!()
    };

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
    let want = vec!["alicia".to_owned(), "bob".to_owned()];
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
        cams.iter().all(|c| names(c) == ["alicia"]).then_some(())
    });
    // Each daemon saves within a second; then stop them and read the files.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    drop(cams);
    for g in &galleries {
        let rows = listed(g);
        assert_eq!(rows.len(), 1, "{}: {rows:?}", g.display());
        assert!(rows[0].contains("alicia"), "{}: {rows:?}", s(g));
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
