//! The web page in a real browser: headless Chromium driven through chromedriver (WebDriver)
//! against a daemon replaying the shared video, and against the synthetic scene. The live frame
//! appears, identities appear with thumbnails, rename (through the page's prompt) shows in the
//! next event and in `reidcam gallery list`, delete (after its confirmation) removes the
//! identity from the gallery file and its thumbnail from disk, enrol pins the person in view.
//! On the synthetic scene a phone-sized screenshot is kept beside the test's files.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use base64ct::Encoding as _;
use serde_json::{Value, json};

use super::{Daemon, exchange, listed_ids, scene_config};
use crate::common::{repo, scratch};

/// Debian's Chromium and chromedriver, if installed: under CI their absence is a failure
/// (`.ci/run` installs them), elsewhere the test says it is skipped.
fn browser() -> Option<(PathBuf, PathBuf)> {
    if crate::common::emulated() {
        eprintln!("SKIPPED under emulation: the browser test runs in the host suite");
        return None;
    }
    let find = |names: &[&str]| names.iter().map(PathBuf::from).find(|p| p.is_file());
    let chromium = find(&["/usr/bin/chromium", "/usr/bin/chromium-browser"]);
    let driver = find(&["/usr/bin/chromedriver"]);
    match (chromium, driver) {
        (Some(c), Some(d)) => Some((c, d)),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "chromium and chromedriver not installed (tools/ensure-packages.sh chromium chromium-driver)"
            );
            eprintln!(
                "SKIPPED: chromium or chromedriver not installed (apt-get install chromium chromium-driver)"
            );
            None
        }
    }
}

/// A WebDriver session on a chromedriver of our own.
struct Session {
    driver: Child,
    addr: SocketAddr,
    id: String,
}

impl Session {
    fn start(chromium: &Path, chromedriver: &Path) -> Session {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // In a process group of its own, which the browser it starts joins: dropping the
        // session kills the group, so that no browser outlives the test (a session deleted
        // while Chromium was still shutting down left it running, 200 MB each).
        let driver = std::process::Command::new(chromedriver)
            .process_group(0)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut session = Session {
            driver,
            addr,
            id: String::new(),
        };
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=420,1100"],
            },
            "unhandledPromptBehavior": "ignore",
        }}});
        let v = session.call("POST", "/session", &caps);
        session.id = v["sessionId"].as_str().unwrap().to_owned();
        session
    }

    /// A WebDriver command; returns its `value` (panics on a WebDriver error).
    fn call(&self, method: &str, path: &str, body: &Value) -> Value {
        self.try_call(method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    fn try_call(&self, method: &str, path: &str, body: &Value) -> Result<Value, Value> {
        let path = if path == "/session" {
            path.to_owned()
        } else {
            format!("/session/{}{path}", self.id)
        };
        let body = if method == "GET" {
            Vec::new()
        } else {
            serde_json::to_vec(body).unwrap()
        };
        let (code, _, out) = exchange(self.addr, method, &path, None, "application/json", &body);
        let v: Value = serde_json::from_slice(&out).unwrap_or(Value::Null);
        if code == 200 {
            Ok(v["value"].clone())
        } else {
            Err(v["value"].clone())
        }
    }

    fn script(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            &json!({ "script": script, "args": [] }),
        )
    }

    /// Clicks the element `css` selects (again if the page redrew it meanwhile).
    fn click(&self, css: &str) {
        let mut last = Value::Null;
        for _ in 0..10 {
            let found = self.try_call(
                "POST",
                "/element",
                &json!({ "using": "css selector", "value": css }),
            );
            let element = found.ok().and_then(|f| {
                f.as_object()
                    .and_then(|o| o.values().next())
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            });
            if let Some(element) = element {
                match self.try_call("POST", &format!("/element/{element}/click"), &json!({})) {
                    Ok(_) => return,
                    Err(e) => last = e,
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("cannot click {css}: {last}");
    }

    /// Answers the open prompt/confirm with `text` (None: just accept).
    fn accept_alert(&self, text: Option<&str>) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.try_call("GET", "/alert/text", &Value::Null).is_err() {
            assert!(Instant::now() < deadline, "no dialog opened");
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Some(text) = text {
            self.call("POST", "/alert/text", &json!({ "text": text }));
        }
        self.call("POST", "/alert/accept", &json!({}));
    }

    /// Polls `script` (a JS expression) until it is truthy; returns its value.
    fn until(&self, secs: u64, what: &str, expression: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let v = self.script(&format!("return {expression};"));
            if !(v.is_null() || v == false || v == 0 || v == "") {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {secs} s; page: {}",
                self.script("return document.body.innerText;")
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if !self.id.is_empty() {
            self.try_call("DELETE", "", &Value::Null).ok();
        }
        // SAFETY: a signal to the process group of our own child (its pid is the group's id);
        // no memory is involved.
        unsafe { libc::kill(-(self.driver.id() as i32), libc::SIGKILL) };
        self.driver.wait().ok();
    }
}

/// The model the page is shown with: ours, so that the screenshot's names are right.
fn model() -> PathBuf {
    repo().join("models/default.onnx")
}

fn row_of(gallery: &Path, id: u64) -> Option<String> {
    listed_ids(&model(), gallery)
        .into_iter()
        .find(|r| r.split_whitespace().next() == Some(&id.to_string()))
}

/// Where the daemon's frames come from, and what the page should show of them.
struct Scene<'a> {
    name: &'a str,
    source: String,
    config: PathBuf,
    width: u32,
    /// Keep a phone-sized screenshot (`docs/img/web-page.png` is one of the synthetic scene's).
    screenshot: bool,
}

/// The page on the shared video: real people, the default detector and model, paced at the
/// video's 10 frames per second. Six people walk through one at a time (frames 61–194,
/// 228–448, …): the first is renamed while in view (its leave event carries the name), the
/// second deleted, then the person in view enrolled.
#[test]
fn the_web_page_is_driven_in_a_real_browser_on_the_shared_video() {
    let Some((chromium, chromedriver)) = browser() else {
        return;
    };
    let Some(shared) = crate::common::shared() else {
        return;
    };
    let dir = scratch("http-browser-video");
    let config = dir.join("c.toml");
    std::fs::write(
        &config,
        format!(
            "camera = \"lobby\"\n[detector.model]\npath = {:?}\n\
             [gallery]\nsave_every_secs = 1\n\
             [http]\nenabled = true\nlisten = \"127.0.0.1:0\"\n",
            repo().join("models/detector.onnx")
        ),
    )
    .unwrap();
    let video = shared.join("data/video/one-by-one-person-detection.mp4");
    let scene = Scene {
        name: "the shared video",
        source: video.to_str().unwrap().to_owned(),
        config,
        width: 768,
        screenshot: false,
    };
    drive(&chromium, &chromedriver, &dir, &scene);
}

/// The page on the synthetic scene (its figures come back again and again), with the
/// screenshot kept for the docs: no picture of a real person enters the repository.
#[test]
fn the_web_page_is_driven_in_a_real_browser_on_the_synthetic_scene() {
    let Some((chromium, chromedriver)) = browser() else {
        return;
    };
    let dir = scratch("http-browser");
    let scene = Scene {
        name: "the synthetic scene",
        source: "synthetic:320x180".into(),
        config: scene_config(&dir),
        width: 320,
        screenshot: true,
    };
    drive(&chromium, &chromedriver, &dir, &scene);
}

/// The identity ids shown with a loaded thumbnail, in page order, that `not` does not hold.
fn pictured_cards(not: &[u64]) -> String {
    format!(
        "(() => {{ const t = [...document.querySelectorAll('.card img.thumb')]\
         .filter((i) => i.naturalWidth > 0).map((i) => i.closest('.card').dataset.id)\
         .filter((id) => !{not:?}.includes(Number(id))); return t.length > 0 && t[0]; }})()"
    )
}

fn drive(chromium: &Path, chromedriver: &Path, dir: &Path, scene: &Scene) {
    eprintln!("the web page on {}", scene.name);
    let gallery = dir.join("g.bin");
    let thumbs = dir.join("g.bin.thumbs");
    let daemon = Daemon::start_on(dir, &scene.config, &gallery, &model(), &scene.source);
    let web = Session::start(chromium, chromedriver);
    web.call(
        "POST",
        "/url",
        &json!({ "url": format!("http://{}/", daemon.addr) }),
    );

    // The live frame and an identity with its thumbnail appear.
    let width = web.until(
        30,
        "the live frame",
        "document.getElementById('live').naturalWidth",
    );
    assert_eq!(width, scene.width);
    let id_of = |v: Value| -> u64 { v.as_str().and_then(|n| n.parse().ok()).unwrap() };
    let id = id_of(web.until(90, "an identity with a thumbnail", &pictured_cards(&[])));
    web.until(
        10,
        "the status",
        "document.getElementById('status').innerText.includes('frames')",
    );

    // Rename through the page's prompt.
    web.click(&format!(".card[data-id='{id}'] button.rename"));
    web.accept_alert(Some("Alice"));
    web.until(
        10,
        "the new name on the page",
        &format!("document.querySelector(\".card[data-id='{id}'] b\")?.innerText === 'Alice'"),
    );
    let row = row_of(&gallery, id).unwrap();
    assert!(row.contains("Alice"), "{row}");
    // The next event about that identity carries the name (the page's event list).
    web.until(
        60,
        "an event naming Alice",
        "document.getElementById('events').innerText.includes('Alice')",
    );
    // Events of people with a picture show it.
    web.until(
        30,
        "an event with its person's thumbnail",
        "[...document.querySelectorAll('#events img.mini')].some((i) => i.naturalWidth > 0)",
    );

    // Delete another one, after the confirmation: gone from the file and from disk.
    let other = id_of(web.until(
        90,
        "another identity with a thumbnail",
        &pictured_cards(&[id]),
    ));
    assert!(thumbs.join(format!("{other}.jpg")).is_file());
    web.click(&format!(".card[data-id='{other}'] button.delete"));
    web.accept_alert(None);
    web.until(
        10,
        "the card gone",
        &format!("!document.querySelector(\".card[data-id='{other}']\")"),
    );
    assert!(!thumbs.join(format!("{other}.jpg")).exists());
    assert_eq!(row_of(&gallery, other), None);

    // Enrol the person in view, named.
    let enrolled = web.until(
        60,
        "an enrolment of the person in view",
        "(() => { const m = document.getElementById('enrolled').innerText; \
         if (m.startsWith('enrolled')) return m; \
         document.getElementById('enrol-name').value = 'Dana'; \
         document.getElementById('enrol').click(); return ''; })()",
    );
    let enrolled: u64 = enrolled
        .as_str()
        .unwrap()
        .split_whitespace()
        .nth(3)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{enrolled}"));
    let row = row_of(&gallery, enrolled).unwrap();
    assert!(row.contains("Dana") && row.contains("yes"), "{row}");

    if scene.screenshot {
        screenshot(&web, &daemon, dir);
    }
    drop(web);
    drop(daemon);
}

/// A phone-sized screenshot: the cards refreshed, and someone known in the live frame when the
/// page next fetches it (within 20 s).
fn screenshot(web: &Session, daemon: &Daemon, dir: &Path) {
    std::thread::sleep(Duration::from_millis(2100));
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let (_, _, body) = exchange(daemon.addr, "GET", "/api/v1/frame", None, "", b"");
        let frame: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let known = frame["tracks"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["kind"] == "known"));
        if known {
            std::thread::sleep(Duration::from_millis(1100));
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let encoded = web.call("GET", "/screenshot", &Value::Null);
    let png = base64ct::Base64::decode_vec(encoded.as_str().unwrap()).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    let shot = dir.join("web-page.png");
    std::fs::write(&shot, &png).unwrap();
    eprintln!("screenshot: {}", shot.display());
}
