//! The HTTP API against a running daemon (a paced synthetic scene, a real gallery file): bearer
//! token on every route but `/healthz`, status, `/metrics` in the Prometheus text format,
//! identities listed, renamed (seen by `reidcam gallery list`), erased (gone from the file and
//! its backup), bounded bodies, and a non-loopback address without a token refused at start-up.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64ct::Encoding as _;

use crate::common::{command, models, s, scratch};

mod browser;
mod harness;
mod protocol;
mod tls;
mod view;

pub(crate) use harness::*;

#[test]
fn a_non_loopback_address_without_a_token_is_refused_at_start_up() {
    let dir = scratch("http-no-token");
    let config = dir.join("c.toml");
    std::fs::write(
        &config,
        "[http]\nenabled = true\nlisten = \"0.0.0.0:8080\"\n",
    )
    .unwrap();
    let err = refused_at_start(&config);
    assert!(
        err.contains("http.listen") && err.contains("http.token_file"),
        "{err}"
    );
}

#[test]
fn the_api_serves_status_metrics_and_edits_the_gallery() {
    let dir = scratch("http-api");
    let token = dir.join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let config = dir.join("c.toml");
    std::fs::write(
        &config,
        format!(
            "camera = \"door\"\n[detector]\nkind = \"motion\"\n{}\
             [gallery]\nsave_every_secs = 1\n\
             [http]\nenabled = true\nlisten = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n\
             max_body_bytes = 1024\n",
            crate::common::synthetic_gate(true),
            token.display()
        ),
    )
    .unwrap();
    let gallery = dir.join("g.bin");
    let model = models().join("tiny_reid.onnx");
    let daemon = Daemon::start(&dir, &config, &gallery);
    let addr = daemon.addr;

    // Authentication: every route but /healthz.
    for path in [
        "/api/v1/status",
        "/api/v1/identities",
        "/metrics",
        "/api/v1/identities/1",
    ] {
        assert_eq!(request(addr, "GET", path, None, b"").0, 401, "{path}");
        assert_eq!(
            request(addr, "GET", path, Some("wrong-token-0123456789"), b"").0,
            401,
            "{path}"
        );
    }
    assert_eq!(
        request(addr, "DELETE", "/api/v1/identities/1", None, b"").0,
        401
    );

    // Wait for people to be enrolled by the scene.
    let deadline = Instant::now() + Duration::from_secs(90);
    let identities = loop {
        let (code, body) = daemon.get("/api/v1/identities");
        assert_eq!(code, 200, "{body}");
        let list = json(&body)["identities"].as_array().unwrap().clone();
        if list.len() >= 2 {
            break list;
        }
        assert!(
            Instant::now() < deadline,
            "no identities after 90 s: {body}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let (code, health) = request(addr, "GET", "/healthz", None, b"");
    assert_eq!(code, 200, "{health}");
    assert_eq!(json(&health)["healthy"], true);

    let (code, status) = daemon.get("/api/v1/status");
    assert_eq!(code, 200);
    let status = json(&status);
    assert!(status["frames"].as_u64().unwrap() > 0, "{status}");
    assert_eq!(status["camera"], "door");
    assert!(
        status["gallery"]["identities"].as_u64().unwrap() >= 2,
        "{status}"
    );
    assert!(
        status["gallery"]["bytes"].as_u64() <= status["gallery"]["budget_bytes"].as_u64(),
        "{status}"
    );

    let (code, text) = daemon.get("/metrics");
    assert_eq!(code, 200);
    let samples = parse_prometheus(&text);
    assert!(value(&samples, "reidcam_frames_total") > 0.0, "{text}");
    assert!(
        value(
            &samples,
            "reidcam_frame_stage_seconds_count{stage=\"total\"}"
        ) > 0.0,
        "{text}"
    );
    assert!(
        value(&samples, "reidcam_decisions_total{kind=\"new\"}") >= 2.0,
        "{text}"
    );
    assert_eq!(value(&samples, "reidcam_camera_down"), 0.0);
    // No person id or label in any metric.
    assert!(
        !text.contains("person") && !text.contains("label="),
        "{text}"
    );

    // Recent events, numbered; `since` gives only the newer ones.
    let (code, body) = daemon.get("/api/v1/events");
    assert_eq!(code, 200, "{body}");
    let recent = json(&body);
    let events = recent["events"].as_array().unwrap();
    assert!(!events.is_empty(), "{recent}");
    assert!(
        events
            .iter()
            .all(|e| e["camera"] == "door" && e["seq"].is_u64())
    );
    let first = events[0]["seq"].as_u64().unwrap();
    let (_, newer) = daemon.get(&format!("/api/v1/events?since={first}"));
    let newer = json(&newer);
    assert!(
        newer["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["seq"].as_u64().unwrap() > first),
        "{newer}"
    );
    assert_eq!(daemon.get("/api/v1/events?since=x").0, 400);
    assert_eq!(daemon.get("/api/v1/events?limit=3").0, 400);

    // Rename, seen by the gallery file's reader.
    let id = identities[0]["id"].as_u64().unwrap();
    let other = identities[1]["id"].as_u64().unwrap();
    let path = format!("/api/v1/identities/{id}");
    let (code, body) = request(
        addr,
        "PATCH",
        &path,
        Some(TOKEN),
        br#"{"label":"Alice","pinned":true}"#,
    );
    assert_eq!(code, 200, "{body}");
    let (code, one) = daemon.get(&path);
    assert_eq!(code, 200);
    assert_eq!(json(&one)["label"], "Alice");
    assert_eq!(json(&one)["pinned"], true);
    let rows = listed_ids(&model, &gallery);
    assert!(
        rows.iter()
            .any(|r| r.split_whitespace().next() == Some(&id.to_string()) && r.contains("Alice")),
        "{rows:?}"
    );

    // Bad requests: refused, nothing changed.
    let big = vec![b' '; 4096];
    assert_eq!(request(addr, "PATCH", &path, Some(TOKEN), &big).0, 413);
    assert_eq!(
        request(addr, "PATCH", &path, Some(TOKEN), b"{\"label\":7}").0,
        400
    );
    assert_eq!(
        request(addr, "PATCH", &path, Some(TOKEN), b"nonsense").0,
        400
    );
    assert_eq!(
        request(
            addr,
            "DELETE",
            "/api/v1/identities/999999",
            Some(TOKEN),
            b""
        )
        .0,
        404
    );
    assert_eq!(
        request(
            addr,
            "GET",
            "/api/v1/identities/../../etc/passwd",
            Some(TOKEN),
            b""
        )
        .0,
        404
    );
    assert_eq!(
        request(addr, "GET", "/api/v1/../../g.bin", Some(TOKEN), b"").0,
        404
    );
    assert_eq!(
        request(addr, "POST", "/api/v1/status", Some(TOKEN), b"").0,
        405
    );
    assert_eq!(json(&daemon.get(&path).1)["label"], "Alice");

    // Erasure: gone from memory, the file and its backup before the answer.
    let (code, body) = request(
        addr,
        "DELETE",
        &format!("/api/v1/identities/{other}"),
        Some(TOKEN),
        b"",
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(daemon.get(&format!("/api/v1/identities/{other}")).0, 404);
    for file in [gallery.clone(), dir.join("g.bin.bak")] {
        if !file.exists() {
            continue;
        }
        let rows = listed_ids(&model, &file);
        assert!(
            !rows
                .iter()
                .any(|r| r.split_whitespace().next() == Some(&other.to_string())),
            "{}: {rows:?}",
            file.display()
        );
    }
    drop(daemon);
}

/// Password logins through the real daemon: a users file made by `reidcam http-password`, HTTP
/// Basic credentials checked (argon2id), a wrong password refused after a delay, a browser told
/// to ask (`WWW-Authenticate: Basic`).
#[test]
fn password_logins_are_checked_by_the_daemon() {
    let dir = scratch("http-users");
    let mut child = command(Path::new(env!("CARGO_BIN_EXE_reidcam")))
        .args(["http-password", "ana"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"correct horse battery\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let users = dir.join("users");
    std::fs::write(&users, &out.stdout).unwrap();
    let config = dir.join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[detector]\nkind = \"zones\"\n[http]\nenabled = true\nlisten = \"127.0.0.1:0\"\n\
             users_file = \"{}\"\n",
            users.display()
        ),
    )
    .unwrap();
    let daemon = Daemon::start(&dir, &config, &dir.join("g.bin"));
    let basic = |credentials: &str| {
        let mut stream = TcpStream::connect(daemon.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let encoded = base64ct::Base64::encode_string(credentials.as_bytes());
        write!(
            stream,
            "GET /api/v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
             Authorization: Basic {encoded}\r\n\r\n"
        )
        .unwrap();
        let mut raw = String::new();
        stream.read_to_string(&mut raw).ok();
        raw
    };
    let ok = basic("ana:correct horse battery");
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    let asked = Instant::now();
    let wrong = basic("ana:wrong horse battery");
    assert!(wrong.starts_with("HTTP/1.1 401"), "{wrong}");
    assert!(
        asked.elapsed() >= Duration::from_millis(450),
        "{:?}",
        asked.elapsed()
    );
    let (code, head, _) = exchange(daemon.addr, "GET", "/api/v1/identities", None, "", b"");
    assert_eq!(code, 401);
    assert!(
        head.contains("WWW-Authenticate: Basic realm=\"reidcam\""),
        "{head}"
    );
    // /healthz and the page need no login.
    assert_eq!(request(daemon.addr, "GET", "/healthz", None, b"").0, 200);
    drop(daemon);
}

/// A camera that can be unplugged and plugged back by the test.
fn pluggable_camera(unplugged: Arc<AtomicBool>) -> reidcam::capture::Opener {
    let plugged = move || !unplugged.load(Ordering::SeqCst);
    let open = plugged.clone();
    crate::common::test_camera((160, 96), Duration::from_millis(20), None, open, plugged)
}

/// Polls /healthz until it answers `code`; returns its body.
fn health_becomes(addr: SocketAddr, code: u16, within: Duration) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        if TcpStream::connect(addr).is_err() {
            // Not listening yet (the models load first).
            assert!(Instant::now() < deadline, "nothing listens on {addr}");
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        let (got, body) = request(addr, "GET", "/healthz", None, b"");
        if got == code {
            return json(&body);
        }
        assert!(Instant::now() < deadline, "/healthz stayed {got}: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn healthz_follows_the_camera_away_and_back() {
    let dir = scratch("http-health");
    // A free port: bound, read, released (the daemon binds it a moment later).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut file = reidcam::config::ConfigFile::default();
    file.source.path = "synthetic".into();
    file.model.path = s(&models().join("tiny_reid.onnx")).into();
    file.events.output = s(&dir.join("e.jsonl")).into();
    file.detector.kind = "zones".into();
    file.http.enabled = true;
    file.http.listen = format!("127.0.0.1:{port}");
    let unplugged = Arc::new(AtomicBool::new(false));
    let controls = reidcam::daemon::Controls::default();
    let stop = controls.stop.clone();
    let plug = unplugged.clone();
    let daemon = std::thread::spawn(move || {
        let camera = pluggable_camera(plug);
        reidcam::daemon::run_with_source(
            || file.validate("test"),
            &controls,
            |_| {},
            None,
            Some(camera),
        )
        .map(|s| s.camera_reopens)
    });
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let wait = Duration::from_secs(60);
    let healthy = health_becomes(addr, 200, wait);
    assert_eq!(healthy["healthy"], true, "{healthy}");
    unplugged.store(true, Ordering::SeqCst);
    let down = health_becomes(addr, 503, wait);
    assert_eq!(down["healthy"], false);
    assert!(
        down["reason"].as_str().unwrap().contains("camera lost"),
        "{down}"
    );
    let (_, metrics) = request(addr, "GET", "/metrics", None, b"");
    assert!(metrics.contains("reidcam_camera_down 1"), "{metrics}");
    // Changes are still taken while the camera is away: answered by the frame loop (404 for an
    // id it does not have), not left to time out (503).
    let asked = Instant::now();
    let (code, body) = request(addr, "DELETE", "/api/v1/identities/999999", None, b"");
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("no identity 999999"), "{body}");
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "{:?}",
        asked.elapsed()
    );
    unplugged.store(false, Ordering::SeqCst);
    health_becomes(addr, 200, wait);
    stop.store(true, Ordering::SeqCst);
    let reopens = daemon.join().unwrap().unwrap();
    assert!(reopens >= 1, "{reopens}");
}

/// The frame loop's side of serving (heartbeat, stage histograms, the snapshot with its
/// identities, the change queue, the recent-events sink) allocates nothing once warm, while
/// clients keep reading every route.
#[test]
fn the_frame_loop_side_of_serving_allocates_nothing_under_load() {
    let _alone = crate::alloc_count::alone();
    use reidcam::events::{EventKind, EventSink as _};
    use reidcam::gallery::{
        Gallery, GalleryConfig, MatchPolicy, NewIdentity, StorageFormat, Timestamp,
    };
    use reidcam::http::{Http, HttpSection, Recent};
    use reidcam::pipeline::{StageMs, Stats};

    let section = HttpSection {
        enabled: true,
        listen: "127.0.0.1:0".into(),
        ..HttpSection::default()
    };
    let config = section.validate().unwrap().unwrap();
    let mut gallery = Gallery::with_budget(
        GalleryConfig {
            dim: 8,
            exemplars: 2,
            format: StorageFormat::Int8,
            budget_bytes: 64 << 10,
        },
        MatchPolicy::default(),
    )
    .unwrap();
    for i in 0..20u8 {
        let mut v = [0.0f32; 8];
        v[usize::from(i % 8)] = 1.0;
        v[usize::from((i / 8) % 8)] += 0.5;
        let label = format!("person {i}");
        let new = NewIdentity {
            label: Some(&label),
            pinned: i % 2 == 0,
            now: Timestamp(1_700_000_000_000),
        };
        gallery.insert(&v, new).unwrap();
    }
    let recent = Recent::new();
    let mut sink = recent.sink();
    let mut http = Http::start(&config, gallery.capacity(), recent).unwrap();
    let addr = http.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Under emulation every thread of this process is slow: fewer, gentler clients, so that the
    // tests running beside this one (the MQTT sink's allocation count) are not starved.
    let emulated = crate::common::emulated();
    let (count, pause) = if emulated { (2, 20) } else { (4, 1) };
    let clients: Vec<_> = (0..count)
        .map(|i| {
            let (stop, served) = (stop.clone(), served.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                let paths = [
                    "/api/v1/status",
                    "/metrics",
                    "/api/v1/identities",
                    "/api/v1/events",
                    "/api/v1/frame.jpg",
                    "/api/v1/frame",
                ];
                while !stop.load(Ordering::SeqCst) {
                    let (code, _) = request(addr, "GET", paths[(n + i) % paths.len()], None, b"");
                    assert_eq!(code, 200);
                    served.fetch_add(1, Ordering::SeqCst);
                    n += 1;
                    std::thread::sleep(Duration::from_millis(pause));
                }
                n
            })
        })
        .collect();
    let stats = Stats::default();
    let times = StageMs {
        capture: 1.0,
        detect: 20.0,
        track: 0.1,
        embed: 3.0,
        gallery: 0.01,
        events: 0.02,
        total: 24.2,
    };
    let event = |frame: u64| crate::common::known_event(EventKind::Enter, frame, "person 3");
    // The live frame: a camera-sized picture and one named track.
    let picture = reidcam::frame::RgbImage::black(320, 180).unwrap();
    let shown = reidcam::pipeline::Shown {
        track: 1,
        rect: [10, 20, 40, 100],
        kind: reidcam::pipeline::ShownKind::Known,
        id: Some(3),
        label: heapless::String::try_from("person 3").unwrap(),
        similarity: Some(0.9),
        seen_now: true,
    };
    let mut turn = |frame: u64, http: &mut Http| {
        http.beat();
        while let Some(command) = http.next_command() {
            command.reply(Ok(None));
        }
        if http.live_due() {
            http.live_frame(frame, picture.view(), |out| {
                out.clear();
                out.push(shown.clone()).ok();
            });
        }
        http.frame(&times);
        sink.emit(&event(frame)).unwrap();
        // Every turn here (the daemon: once a second), to meet the readers often.
        http.publish(&gallery, |s| {
            s.frames = frame;
            s.counts.clone_from(&stats);
        });
    };
    // Warm-up: the status strings, the first publications, the live frame's buffer (until
    // every client has read every route once).
    let mut frame = 0;
    while frame < 50 || served.load(Ordering::SeqCst) < 6 * count {
        turn(frame, &mut http);
        std::thread::sleep(Duration::from_millis(1));
        frame += 1;
    }
    let warm = frame;
    let mut counted = 0;
    // 2,000 turns and 1.5 s at least (live frame copies every 0.2 s), and until the clients
    // have been served 20 times meanwhile.
    let before = served.load(Ordering::SeqCst);
    let since = Instant::now();
    while frame < warm + 2000
        || since.elapsed() < Duration::from_millis(1500)
        || (served.load(Ordering::SeqCst) < before + 20 && frame < 1_000_000)
    {
        let ((), n) = crate::alloc_count::allocations_during(|| turn(frame, &mut http));
        counted += n;
        if frame % 100 == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        frame += 1;
    }
    stop.store(true, Ordering::SeqCst);
    let total: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();
    http.stop();
    assert!(
        total >= before + 20,
        "the clients were served meanwhile: {total}"
    );
    assert_eq!(counted, 0, "allocations in {} warm turns", frame - warm);
}
