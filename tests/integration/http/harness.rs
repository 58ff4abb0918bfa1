//! The harness of the HTTP tests: a daemon on a paced synthetic scene with its API on a free
//! port, and a minimal client (one request per connection, or several on one), the Prometheus
//! text parsed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::{command, models, reidcam, s};

pub(crate) const TOKEN: &str = "test-token-0123456789abcdef";

pub(crate) trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// One request; returns (status, body). `HTTP/1.0`-style: one request per connection.
pub(crate) fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> (u16, String) {
    let (status, _, body) = exchange(addr, method, path, token, "application/json", body);
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// One request with a body of `content_type`; returns (status, response head, body bytes).
pub(crate) fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    content_type: &str,
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    talk(&mut stream, addr, method, path, token, content_type, body)
}

/// [`exchange`] over an open connection (plain or TLS).
pub(crate) fn talk(
    stream: &mut impl ReadWrite,
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    content_type: &str,
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}\
         Content-Length: {}\r\nContent-Type: {content_type}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    // A refused body may be cut short by the server: that is its right.
    stream.write_all(body).ok();
    // To the end of the body: Content-Length when given (a peer may keep the connection
    // open), else until the server closes it.
    let mut raw = Vec::new();
    let mut chunk = [0u8; 16 << 10];
    let mut wanted: Option<usize> = None;
    loop {
        if let Some(n) = wanted
            && raw.len() >= n
        {
            break;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
        }
        if wanted.is_none()
            && let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n")
        {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            wanted = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .map(|len| end + 4 + len);
        }
    }
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| {
            panic!(
                "{method} {path}: no head in {:?}",
                String::from_utf8_lossy(&raw)
            )
        });
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: no status line in {head:?}"));
    (status, head, raw[split + 4..].to_vec())
}

/// Polls `f` every 200 ms until it gives a value (at most `secs`).
pub(crate) fn within<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub(crate) fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// The daemon, its bound address (read from its log) and the rest of its log.
pub(crate) struct Daemon {
    child: Child,
    pub addr: SocketAddr,
    log: mpsc::Receiver<String>,
}

impl Daemon {
    pub fn start(dir: &Path, config: &Path, gallery: &Path) -> Daemon {
        Daemon::start_with(dir, config, gallery, &models().join("tiny_reid.onnx"))
    }

    /// With `model` instead of the tiny test model.
    pub fn start_with(dir: &Path, config: &Path, gallery: &Path, model: &Path) -> Daemon {
        Daemon::start_on(dir, config, gallery, model, "synthetic:320x180")
    }

    /// On `source` (paced at its own rate) instead of the synthetic scene.
    pub fn start_on(
        dir: &Path,
        config: &Path,
        gallery: &Path,
        model: &Path,
        source: &str,
    ) -> Daemon {
        let mut child = command(Path::new(env!("CARGO_BIN_EXE_reidcam")))
            .args([
                "run",
                "--config",
                s(config),
                "--source",
                source,
                "--realtime",
                "--model",
                s(model),
                "--gallery",
                s(gallery),
                "--events",
                s(&dir.join("events.jsonl")),
            ])
            .current_dir(dir)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        let addr = loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("the daemon logs its HTTP address");
            if let Some(rest) = line.split("listening on ").nth(1)
                && let Some((_, addr)) = rest.split_once("://")
            {
                break addr.split_whitespace().next().unwrap().parse().unwrap();
            }
        };
        Daemon {
            child,
            addr,
            log: rx,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        request(self.addr, "GET", path, Some(TOKEN), b"")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: `kill` on our own child's pid; no memory is involved.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child.kill().ok();
        while let Ok(line) = self.log.try_recv() {
            eprintln!("{line}");
        }
    }
}

/// Checks the Prometheus text format (0.0.4) line by line: `# HELP`/`# TYPE` comments, then
/// samples `name{label="value",...} number`, every sample's family typed before it. Returns
/// (name with labels, value) of every sample.
pub(crate) fn parse_prometheus(text: &str) -> Vec<(String, f64)> {
    let mut typed = std::collections::HashMap::new();
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect(line);
            assert!(
                matches!(kind, "counter" | "gauge" | "histogram" | "info" | "untyped"),
                "{line}"
            );
            typed.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment {line:?}");
        let (series, value) = line.rsplit_once(' ').expect(line);
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("value of {line:?}")),
        };
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "{line}"
        );
        let labels = &series[name.len()..];
        if !labels.is_empty() {
            let inner = labels.strip_prefix('{').and_then(|l| l.strip_suffix('}'));
            let inner = inner.unwrap_or_else(|| panic!("labels of {line:?}"));
            for pair in inner.split(',') {
                let (k, v) = pair.split_once('=').expect(line);
                assert!(
                    !k.is_empty() && v.starts_with('"') && v.ends_with('"'),
                    "{line}"
                );
            }
        }
        let family = ["_bucket", "_sum", "_count", "_info"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix).filter(|f| typed.contains_key(*f)))
            .unwrap_or(name);
        assert!(typed.contains_key(family), "{name}: no # TYPE before it");
        samples.push((series.to_owned(), value));
    }
    samples
}

pub(crate) fn value(samples: &[(String, f64)], series: &str) -> f64 {
    samples
        .iter()
        .find(|(s, _)| s == series)
        .unwrap_or_else(|| panic!("no {series}"))
        .1
}

/// `dir/c.toml` for the synthetic scene: motion boxes, gates relaxed for its small flat people,
/// the gallery saved every second, the API on a free loopback port without a token.
pub(crate) fn scene_config(dir: &Path) -> std::path::PathBuf {
    let config = dir.join("c.toml");
    std::fs::write(
        &config,
        format!(
            "camera = \"door\"\n[detector]\nkind = \"motion\"\n{}\
             [gallery]\nsave_every_secs = 1\n\
             [http]\nenabled = true\nlisten = \"127.0.0.1:0\"\n",
            crate::common::synthetic_gate(true)
        ),
    )
    .unwrap();
    config
}

pub(crate) fn listed_ids(model: &Path, gallery: &Path) -> Vec<String> {
    let (ok, out, err) = reidcam(&[
        "gallery",
        "--model",
        s(model),
        "--gallery",
        s(gallery),
        "list",
    ]);
    assert!(ok, "{err}");
    out.lines().skip(2).map(str::to_owned).collect()
}

/// Runs the daemon with `config` for one synthetic frame; it must refuse to start. Its stderr.
pub(crate) fn refused_at_start(config: &Path) -> String {
    let (ok, _, err) = reidcam(&[
        "run",
        "--config",
        s(config),
        "--source",
        "synthetic:64x64",
        "--model",
        s(&models().join("tiny_reid.onnx")),
        "--max-frames",
        "1",
    ]);
    assert!(!ok, "{} started: {err}", config.display());
    err
}
