//! MQTT through a real broker (mosquitto, password file, ACL, TLS from a CA made by the test):
//! events byte-identical to the JSON lines, availability and last will, Home Assistant
//! discovery, credentials kept out of logs, nothing lost across a broker outage or (with the
//! spool) a daemon restart, and a full queue that drops the oldest and says how many.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::broker::{Broker, CAMERA_PASSWORD, Message};
use crate::common::{command, models, s, scratch};

/// A paced synthetic scene with motion detection: people walk through every few seconds.
fn scene() -> String {
    format!(
        "camera = \"door\"\n[detector]\nkind = \"motion\"\n{}",
        crate::common::synthetic_gate(true)
    )
}

struct Run {
    dir: PathBuf,
    config: PathBuf,
    events: PathBuf,
    summary: PathBuf,
}

impl Run {
    fn new(dir: &Path, name: &str, mqtt: &str) -> Run {
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, format!("{}{mqtt}", scene())).unwrap();
        Run {
            dir: dir.to_owned(),
            config,
            events: dir.join(format!("{name}.jsonl")),
            summary: dir.join(format!("{name}.json")),
        }
    }

    fn command(&self, frames: u64) -> Command {
        let mut cmd = command(Path::new(env!("CARGO_BIN_EXE_reidcam")));
        cmd.args([
            "run",
            "--config",
            s(&self.config),
            "--source",
            "synthetic:320x180",
            "--realtime",
            "--model",
            s(&models().join("tiny_reid.onnx")),
            "--gallery",
            "",
            "--events",
            s(&self.events),
            "--summary-json",
            s(&self.summary),
            "--max-frames",
            &frames.to_string(),
        ])
        .current_dir(&self.dir)
        .env("RUST_LOG", "info");
        cmd
    }

    /// Runs to the frame limit; returns stderr.
    fn run(&self, frames: u64) -> String {
        let out = self.command(frames).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{err}");
        err
    }

    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.events)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn mqtt(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(&self.summary).unwrap();
        serde_json::from_str::<serde_json::Value>(&text).unwrap()["mqtt"].clone()
    }
}

/// Each payload once, in the order first received (delivery is at least once).
fn first_occurrences(payloads: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    payloads
        .into_iter()
        .filter(|p| seen.insert(p.clone()))
        .collect()
}

fn json(payload: &str) -> serde_json::Value {
    serde_json::from_str(payload).unwrap_or_else(|e| panic!("{e}: {payload}"))
}

#[test]
fn events_arrive_byte_identical_over_tls_with_availability_discovery_and_last_will() {
    let dir = scratch("mqtt-events");
    let Some(broker) = Broker::start(&dir, true) else {
        return;
    };
    let sub = broker.subscribe(&["reidcam/#", "homeassistant/#"], None);
    let run = Run::new(&dir, "a", &broker.mqtt_section(""));
    let mut cmd = run.command(40);
    // Everything the daemon and rumqttc log, to look for the password in.
    cmd.env("RUST_LOG", "trace");
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let lines = run.lines();
    assert!(!lines.is_empty(), "the scene gives events: {err}");
    sub.wait_for(20, "offline at the stop", |m| {
        m.iter()
            .any(|m| m.topic == "reidcam/door/availability" && m.payload == "offline")
    });
    assert_eq!(
        sub.on("reidcam/door/events"),
        lines,
        "byte-identical, in order"
    );
    assert_eq!(sub.on("reidcam/door/availability"), ["online", "offline"]);
    let stats = run.mqtt();
    assert_eq!(stats["delivered"], lines.len() as u64);
    assert_eq!(
        (stats["dropped"].clone(), stats["undelivered"].clone()),
        (0.into(), 0.into())
    );

    // Home Assistant discovery: the camera's sensors, retained, tied to the device and to the
    // availability topic.
    let retained = broker.retained("#");
    let find = |topic: &str| -> Message {
        retained
            .iter()
            .find(|m| m.topic == topic)
            .unwrap_or_else(|| panic!("{topic} not retained: {retained:#?}"))
            .clone()
    };
    let people = json(&find("homeassistant/sensor/reidcam_door/people/config").payload);
    for (field, want) in [
        ("unique_id", "reidcam_door_people"),
        ("state_topic", "reidcam/door/state"),
        ("availability_topic", "reidcam/door/availability"),
        ("value_template", "{{ value_json.people }}"),
    ] {
        assert_eq!(people[field], want, "{field}: {people}");
    }
    assert_eq!(people["device"]["identifiers"][0], "reidcam_door");
    assert!(find("homeassistant/sensor/reidcam_door/dropped_events/config").retained);
    assert_eq!(find("reidcam/door/availability").payload, "offline");
    let state = json(&find("reidcam/door/state").payload);
    assert_eq!(state["people"], 0, "everyone left at the stop: {state}");
    assert_eq!(state["dropped_events"], 0);

    // The password is in no log line, event or summary.
    let summary = std::fs::read_to_string(&run.summary).unwrap();
    for (what, text) in [
        ("log", err.as_ref()),
        ("events", &lines.join("\n")),
        ("summary", &summary),
    ] {
        assert!(
            !text.contains(CAMERA_PASSWORD),
            "the password is in the {what}"
        );
    }

    // A broker whose certificate the configured CA did not sign: refused, said why; the
    // daemon runs on (its events still go to the file).
    let other = dir.join("other-ca.crt");
    let section = broker
        .mqtt_section("")
        .replace(s(&dir.join("ca.crt")), s(&other));
    let wrong = Run::new(&dir, "wrong-ca", &section);
    let err = wrong.run(40);
    assert!(err.contains("certificate"), "{err}");
    let stats = wrong.mqtt();
    assert_eq!(stats["delivered"], 0);
    assert!(!wrong.lines().is_empty(), "the run made events: {err}");
    assert_eq!(stats["undelivered"], wrong.lines().len() as u64);

    // An entity of an identity no longer in the gallery (erased while the daemon was off) is
    // cleared when the daemon connects; then kill -9: the broker publishes the last will.
    let stale = "homeassistant/binary_sensor/reidcam_door/person_99/config";
    broker.publish_retained(stale, r#"{"name":"erased person"}"#);
    assert_eq!(broker.retained(stale).len(), 1);
    let watch = broker.subscribe(&["reidcam/door/availability", stale], None);
    let mut child = run
        .command(1_000_000)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    watch.wait_for(60, "online", |m| m.iter().any(|m| m.payload == "online"));
    watch.wait_for(20, "the stale entity cleared", |m| {
        m.iter().any(|m| m.topic == stale && m.payload.is_empty())
    });
    assert!(broker.retained(stale).is_empty());
    child.kill().unwrap();
    child.wait().unwrap();
    let killed = Instant::now();
    watch.wait_for(15, "the last will", |m| {
        m.iter()
            .skip_while(|m| m.payload != "online")
            .any(|m| m.topic == "reidcam/door/availability" && m.payload == "offline")
    });
    eprintln!(
        "last will published {:.2} s after kill -9",
        killed.elapsed().as_secs_f64()
    );
}

#[test]
fn a_broker_outage_loses_nothing_and_the_spool_keeps_events_across_a_restart() {
    if crate::common::emulated() {
        eprintln!("SKIPPED under emulation: timing-based; runs natively in the host suite");
        return;
    }
    let dir = scratch("mqtt-outage");
    let Some(mut broker) = Broker::start(&dir, false) else {
        return;
    };
    // A persistent session: what is published while the subscriber reconnects is kept for it.
    let sub = broker.subscribe(&["reidcam/door/events"], Some("outage-watcher"));
    let outage: u64 = std::env::var("REIDCAM_MQTT_OUTAGE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);

    // 1. The broker stops mid-run for `outage` seconds.
    let run = Run::new(&dir, "outage", &broker.mqtt_section(""));
    let child = run
        .command(10 * (outage + 20))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    sub.wait_for(60, "two events", |m| {
        m.iter()
            .filter(|m| m.topic == "reidcam/door/events")
            .count()
            >= 2
    });
    broker.stop();
    let at_stop = run.lines().len();
    std::thread::sleep(Duration::from_secs(outage));
    let at_start = run.lines().len();
    broker.launch();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        at_start > at_stop,
        "events were made during the outage ({at_stop} → {at_start})"
    );
    let lines = run.lines();
    sub.wait_for(30, "every event", |_| {
        first_occurrences(sub.on("reidcam/door/events")) == lines
    });
    assert!(err.contains("connected to 127.0.0.1"), "{err}");
    let received = sub.on("reidcam/door/events").len();
    eprintln!(
        "outage of {outage} s: {} events, {at_stop}..{at_start} made while the broker was \
         down; {received} received ({} repeated)",
        lines.len(),
        received - lines.len()
    );

    // 2. The broker is down for a whole run: its events wait in the spool, and the next run
    //    delivers them first.
    let spool = dir.join("spool");
    let extra = format!("spool = {spool:?}\ndrain_secs = 0\n");
    broker.stop();
    let first = Run::new(&dir, "spooled", &broker.mqtt_section(&extra));
    first.run(30);
    let queued = first.lines();
    assert!(!queued.is_empty());
    assert_eq!(first.mqtt()["undelivered"], queued.len() as u64);
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&spool).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the spool holds biometric events");
    }
    broker.launch();
    let second = Run::new(&dir, "after", &broker.mqtt_section(&extra));
    second.run(20);
    assert_eq!(second.mqtt()["recovered"], queued.len() as u64);
    let want: Vec<String> = lines
        .iter()
        .chain(&queued)
        .chain(&second.lines())
        .cloned()
        .collect();
    sub.wait_for(30, "the spooled events, then the new ones", |_| {
        first_occurrences(sub.on("reidcam/door/events")) == want
    });

    // 3. A queue of two while the broker is away: the oldest are dropped, counted, published.
    broker.stop();
    let small = Run::new(&dir, "small", &broker.mqtt_section("queue = 2\n"));
    let child = small.command(250).stderr(Stdio::piped()).spawn().unwrap();
    let started = Instant::now();
    while small.lines().len() < 4 {
        assert!(started.elapsed() < Duration::from_secs(60), "no events");
        std::thread::sleep(Duration::from_millis(100));
    }
    broker.launch();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let stats = small.mqtt();
    let dropped = stats["dropped"].as_u64().unwrap() as usize;
    assert!(dropped >= 2, "{stats}");
    assert!(err.contains("dropped the"), "{err}");
    let made = small.lines();
    let want: Vec<String> = want.iter().chain(&made[dropped..]).cloned().collect();
    sub.wait_for(30, "the newest events", |_| {
        first_occurrences(sub.on("reidcam/door/events")) == want
    });
    let state = broker.retained("reidcam/door/state");
    assert_eq!(
        json(&state[0].payload)["dropped_events"],
        dropped as u64,
        "{state:?}"
    );
}

/// What others publish where the daemon listens: an oversized retained message under its own
/// entities, garbage on Home Assistant's status topic. The daemon says so once, stops
/// subscribing, and every event still arrives.
#[test]
fn hostile_messages_on_subscribed_topics_do_not_stop_events() {
    let dir = scratch("mqtt-hostile");
    let Some(broker) = Broker::start(&dir, false) else {
        return;
    };
    let big = "x".repeat(300 << 10);
    broker.publish_retained(
        "homeassistant/binary_sensor/reidcam_door/person_5/config",
        &big,
    );
    broker.publish_retained("homeassistant/status", "\u{1b}[2J not json \u{0}");
    let sub = broker.subscribe(&["reidcam/door/events"], None);
    let run = Run::new(&dir, "hostile", &broker.mqtt_section(""));
    let err = run.run(40);
    let lines = run.lines();
    assert!(!lines.is_empty(), "{err}");
    sub.wait_for(30, "every event", |_| {
        first_occurrences(sub.on("reidcam/door/events")) == lines
    });
    assert_eq!(
        err.matches("not subscribing any more").count(),
        1,
        "said once: {err}"
    );
    assert_eq!(run.mqtt()["delivered"], lines.len() as u64);
}

/// Gallery sharing (`mqtt.share_gallery`) between two cameras on one broker: a person enrolled
/// at the door is named at the yard (a pinned copy, with its label); renamed at the yard, she is
/// renamed at the door (which was off when it happened); erased at the yard, the
/// person disappears from the door's gallery, its file and its backup, even though the door was
/// off when it happened (a retained tombstone). Bad gallery messages are refused and counted.
#[test]
fn an_enrolled_person_is_shared_and_an_erasure_reaches_every_camera() {
    if crate::common::emulated() {
        eprintln!(
            "SKIPPED under emulation: timing-based (2.5 s runs); runs natively in the host suite"
        );
        return;
    }
    let dir = scratch("mqtt-share");
    let Some(broker) = Broker::start(&dir, false) else {
        return;
    };
    let model = models().join("tiny_reid.onnx");
    let gallery_cli = |gallery: &Path, args: &[&str]| {
        let base = ["gallery", "--model", s(&model), "--gallery", s(gallery)];
        let (ok, out, err) = crate::common::reidcam(&[&base[..], args].concat());
        assert!(ok, "{args:?}: {err}");
        out
    };
    let listed = |gallery: &Path| -> Vec<(String, String)> {
        gallery_cli(gallery, &["list"])
            .lines()
            .skip(2)
            .map(|l| {
                let mut w = l.split_whitespace();
                (w.next().unwrap().to_owned(), w.next().unwrap().to_owned())
            })
            .collect()
    };
    // Alice enrolled at the door from two crops.
    let crops: Vec<PathBuf> = (0..2)
        .map(|i| {
            let p = dir.join(format!("alice{i}.png"));
            let image = crate::common::pattern(48 + i * 8, 110);
            std::fs::write(&p, crate::common::encode(&image, image::ImageFormat::Png)).unwrap();
            p
        })
        .collect();
    let (door_g, yard_g) = (dir.join("door.bin"), dir.join("yard.bin"));
    let mut enrol = vec!["enroll", "--label", "alice"];
    enrol.extend(crops.iter().map(|p| s(p)));
    gallery_cli(&door_g, &enrol);

    let camera = |name: &str, gallery: &Path| {
        let section = broker.mqtt_section("share_gallery = true\n");
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "camera = \"{name}\"\n[detector]\nkind = \"motion\"\n[gallery]\npath = {gallery:?}\n{section}"
            ),
        )
        .unwrap();
        let summary = dir.join(format!("{name}.json"));
        let out = command(Path::new(env!("CARGO_BIN_EXE_reidcam")))
            .args([
                "run",
                "--config",
                s(&config),
                "--source",
                "synthetic:320x180",
                "--realtime",
                "--model",
                s(&model),
                "--max-frames",
                "25",
                "--events",
                s(&dir.join(format!("{name}.jsonl"))),
                "--summary-json",
                s(&summary),
            ])
            .env("RUST_LOG", "info")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{err}");
        let sm: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
        (sm["mqtt"].clone(), err)
    };
    let (door, _) = camera("door", &door_g);
    assert_eq!(door["gallery_published"], 1, "{door}");

    // The yard, started later, copies alice from the retained message.
    let (yard, err) = camera("yard", &yard_g);
    assert_eq!(yard["gallery_received"], 1, "{yard}: {err}");
    let at_yard = listed(&yard_g);
    assert_eq!(at_yard.len(), 1, "{at_yard:?}");
    assert_eq!(at_yard[0].1, "alice");
    assert!(
        err.contains("shared identity door/1 (alice) copied here"),
        "{err}"
    );
    {
        use std::os::unix::fs::PermissionsExt as _;
        let peers = dir.join("yard.bin.peers.json");
        let mode = std::fs::metadata(&peers).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    // Renamed at the yard through its web API while it runs: the yard asks the door (a retained
    // request), and the door, off meanwhile, renames alice at its next start, republishes her
    // and clears the request.
    {
        let config = dir.join("yard-http.toml");
        std::fs::write(
            &config,
            format!(
                "camera = \"yard\"\n[detector]\nkind = \"motion\"\n\
                 [http]\nenabled = true\nlisten = \"127.0.0.1:0\"\n{}",
                broker.mqtt_section("share_gallery = true\n")
            ),
        )
        .unwrap();
        let yard =
            crate::http::Daemon::start_on(&dir, &config, &yard_g, &model, "synthetic:320x180");
        let path = format!("/api/v1/identities/{}", at_yard[0].0);
        let (code, body) =
            crate::http::request(yard.addr, "PATCH", &path, None, br#"{"label": "alicia"}"#);
        assert_eq!(code, 200, "{body}");
        let request = "reidcam/gallery/tiny_reid/door/1/label";
        crate::http::within(20, "the yard's rename request", || {
            let held = broker.retained(request);
            held.first()
                .filter(|m| json(&m.payload)["label"] == "alicia")
                .map(|_| ())
        });
    }
    let (door, err) = camera("door", &door_g);
    assert!(
        err.contains("renamed alicia as yard asked"),
        "{door}: {err}"
    );
    assert_eq!(listed(&door_g)[0].1, "alicia");
    assert!(
        broker
            .retained("reidcam/gallery/tiny_reid/door/1/label")
            .is_empty(),
        "the request is cleared"
    );
    let shared = broker.retained("reidcam/gallery/tiny_reid/door/1");
    assert_eq!(json(&shared[0].payload)["label"], "alicia", "{shared:?}");

    // Erased at the yard (the operator, while the yard was off); the yard's next run tells
    // everyone; the door, off meanwhile, learns it from the tombstone at its next start.
    gallery_cli(&yard_g, &["remove", &at_yard[0].0]);
    let (_, err) = camera("yard", &yard_g);
    assert!(err.contains("erasing it everywhere"), "{err}");
    // Alice's picture at the door goes with her, as soon as the erasure arrives.
    let thumb = dir.join("door.bin.thumbs/1.jpg");
    std::fs::write(
        &thumb,
        crate::common::encode(&crate::common::pattern(32, 64), image::ImageFormat::Jpeg),
    )
    .unwrap();
    let (door, err) = camera("door", &door_g);
    assert!(
        err.contains("shared identity door/1 erased"),
        "{door}: {err}"
    );
    assert!(
        err.contains("1 erased: tracks released, thumbnail deleted"),
        "{err}"
    );
    assert!(!thumb.exists());
    assert!(listed(&door_g).is_empty(), "gone from the door's gallery");
    assert!(
        listed(&dir.join("door.bin.bak")).is_empty(),
        "and from its backup"
    );

    // Hostile or mistaken gallery messages: refused, counted, never applied.
    let topic = |who: &str| format!("reidcam/gallery/tiny_reid/{who}/5");
    broker.publish_retained(&topic("mallory"), "{not json");
    broker.publish_retained(
        &topic("eve"),
        r#"{"reidcam_identity":1,"model":"tiny_reid","dim":512,"origin":"eve","id":5,"exemplars":[]}"#,
    );
    broker.publish_retained(
        &topic("trent"),
        r#"{"reidcam_identity":1,"model":"tiny_reid","dim":6,"origin":"door","id":5,"exemplars":[{"scale":1.0,"codes":"7f0000000000"}]}"#,
    );
    let (yard, err) = camera("yard", &yard_g);
    assert_eq!(yard["gallery_rejected"], 3, "{yard}: {err}");
    assert!(listed(&yard_g).is_empty(), "nothing applied");
}

/// The frame loop's MQTT sink allocates nothing per event once warm (recycled buffers, a
/// preallocated view), broker or not: counted on the emitting thread.
#[test]
fn the_mqtt_sink_allocates_nothing_per_event_once_warm() {
    let _alone = crate::alloc_count::alone();
    use reidcam::events::{EventKind, EventSink as _};
    // No broker at this port: events queue (4 at most, the oldest dropped and recycled).
    let section = reidcam::mqtt::MqttSection {
        url: "mqtt://127.0.0.1:9".into(),
        queue: 4,
        ..Default::default()
    };
    let config = section.validate("door").unwrap().unwrap();
    let mqtt = reidcam::mqtt::Mqtt::start(&config, "door").unwrap();
    let mut sink = mqtt.events();
    let event = |kind: EventKind, track: u64| crate::common::known_event(kind, track, "alice");
    let mut counted = 0;
    for track in 0..200u64 {
        for kind in [EventKind::Enter, EventKind::Leave] {
            let (result, n) =
                crate::alloc_count::allocations_during(|| sink.emit(&event(kind, track)));
            result.unwrap();
            if track >= 20 {
                counted += n;
            }
        }
        // Let the publisher thread take them (and recycle the dropped ones' buffers).
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(counted, 0, "allocations in 360 warm events");
    let stats = mqtt.stop();
    assert_eq!(stats.delivered, 0);
    assert!(stats.dropped >= 390, "{stats:?}");
}
