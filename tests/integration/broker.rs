//! A real MQTT broker for the tests: Debian's mosquitto on a free loopback port, with a password
//! file, an ACL and (optionally) TLS from a CA made here with openssl; and real subscribers
//! (`mosquitto_sub`). Missing mosquitto: the test fails under CI, is skipped visibly otherwise
//! (`tools/setup.sh` installs it).

use std::io::{BufRead as _, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Users the broker knows: the camera (writes `reidcam/#` and `homeassistant/#`), a watcher
/// (reads everything).
pub const CAMERA_USER: &str = "cam";
pub const CAMERA_PASSWORD: &str = "s3cret-camera-pw-7d1f";
pub const WATCHER: (&str, &str) = ("watcher", "watcher-pw");

pub struct Broker {
    pub dir: PathBuf,
    pub port: u16,
    pub tls: bool,
    conf: PathBuf,
    child: Option<Child>,
}

fn tools_present() -> bool {
    ["mosquitto", "mosquitto_sub", "mosquitto_passwd", "openssl"]
        .iter()
        .all(|t| {
            Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("runs");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Broker {
    /// Starts a broker in `dir` (None: mosquitto missing and not under CI: skipped).
    pub fn start(dir: &Path, tls: bool) -> Option<Broker> {
        if !tools_present() {
            assert!(
                std::env::var_os("CI").is_none(),
                "mosquitto, mosquitto-clients or openssl missing: tools/setup.sh installs them"
            );
            eprintln!("SKIPPED: mosquitto/openssl not installed (tools/setup.sh installs them)");
            return None;
        }
        let passwd = dir.join("passwd");
        std::fs::write(&passwd, "").unwrap();
        for (user, pw) in [(CAMERA_USER, CAMERA_PASSWORD), WATCHER] {
            run(Command::new("mosquitto_passwd").args(["-b", passwd.to_str().unwrap(), user, pw]));
        }
        let acl = dir.join("acl");
        std::fs::write(
            &acl,
            format!(
                "user {CAMERA_USER}\ntopic readwrite reidcam/#\ntopic readwrite homeassistant/#\n\n\
                 user {}\ntopic read #\ntopic write homeassistant/status\n",
                WATCHER.0
            ),
        )
        .unwrap();
        let port = free_port();
        let mut conf = format!(
            "user root\nper_listener_settings false\nallow_anonymous false\n\
             password_file {}\nacl_file {}\npersistence true\npersistence_location {}/\n\
             log_dest file {}/broker.log\nlog_type all\nlistener {port} 127.0.0.1\n",
            passwd.display(),
            acl.display(),
            dir.display(),
            dir.display()
        );
        if tls {
            make_certificates(dir);
            conf += &format!(
                "cafile {0}/ca.crt\ncertfile {0}/server.crt\nkeyfile {0}/server.key\n",
                dir.display()
            );
        }
        let path = dir.join("mosquitto.conf");
        std::fs::write(&path, conf).unwrap();
        let mut broker = Broker {
            dir: dir.to_owned(),
            port,
            tls,
            conf: path,
            child: None,
        };
        broker.launch();
        Some(broker)
    }

    /// (Re)starts mosquitto on the same port and waits until it accepts connections.
    pub fn launch(&mut self) {
        let child = Command::new("mosquitto")
            .args(["-c", self.conf.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto starts");
        self.child = Some(child);
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "mosquitto did not listen on {}: {}",
                self.port,
                std::fs::read_to_string(self.dir.join("broker.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops mosquitto as a service manager would (SIGTERM: it saves its sessions).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .ok();
            child.wait().ok();
        }
    }

    /// The daemon's `[mqtt]` section for this broker.
    pub fn mqtt_section(&self, extra: &str) -> String {
        let pw = self.dir.join("camera-password");
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&pw)
                .unwrap();
            std::io::Write::write_all(&mut f, format!("{CAMERA_PASSWORD}\n").as_bytes()).unwrap();
        }
        let (scheme, host, ca) = if self.tls {
            (
                "mqtts",
                "localhost",
                format!("ca_file = {:?}\n", self.dir.join("ca.crt")),
            )
        } else {
            ("mqtt", "127.0.0.1", String::new())
        };
        format!(
            "[mqtt]\nurl = \"{scheme}://{host}:{}\"\nusername = \"{CAMERA_USER}\"\n\
             password_file = {pw:?}\n{ca}keep_alive_secs = 5\n{extra}",
            self.port
        )
    }

    fn client_args(&self, (user, password): (&str, &str)) -> Vec<String> {
        let mut args = vec![
            "-h".into(),
            if self.tls { "localhost" } else { "127.0.0.1" }.into(),
            "-p".into(),
            self.port.to_string(),
            "-u".into(),
            user.into(),
            "-P".into(),
            password.into(),
        ];
        if self.tls {
            args.extend(["--cafile".into(), format!("{}/ca.crt", self.dir.display())]);
        }
        args
    }

    /// A subscriber to `topics` (QoS 1; `session`: a persistent session with that client id, so
    /// that what is published while it reconnects is kept for it).
    pub fn subscribe(&self, topics: &[&str], session: Option<&str>) -> Subscriber {
        let mut cmd = Command::new("mosquitto_sub");
        cmd.args(self.client_args(WATCHER))
            .args(["-q", "1", "-F", "%r %t %p"]);
        if let Some(id) = session {
            cmd.args(["-c", "-i", id]);
        }
        let probe = format!("reidcam/probe/{}", std::process::id());
        for t in topics.iter().chain([&probe.as_str()]) {
            cmd.args(["-t", t]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let sub = Subscriber { child, lines };
        // Ready once it receives a probe published after it subscribed.
        let started = Instant::now();
        while !sub.messages().iter().any(|m| m.topic == probe) {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "subscriber not ready"
            );
            // The watcher may not write there: the probe comes from the camera's account.
            Command::new("mosquitto_pub")
                .args(self.client_args((CAMERA_USER, CAMERA_PASSWORD)))
                .args(["-t", &probe, "-m", "probe"])
                .status()
                .ok();
            std::thread::sleep(Duration::from_millis(200));
        }
        sub
    }

    /// Publishes a retained message as the camera's user would.
    pub fn publish_retained(&self, topic: &str, payload: &str) {
        // From a file: a payload may be longer than one command-line argument can be.
        let file = self.dir.join("payload");
        std::fs::write(&file, payload).unwrap();
        run(Command::new("mosquitto_pub")
            .args(self.client_args((CAMERA_USER, CAMERA_PASSWORD)))
            .args(["-q", "1", "-r", "-t", topic, "-f", file.to_str().unwrap()]));
    }

    /// The retained messages now held for `topic` (a fresh subscriber, read for a moment).
    pub fn retained(&self, topic: &str) -> Vec<Message> {
        let out = Command::new("mosquitto_sub")
            .args(self.client_args(WATCHER))
            .args(["-t", topic, "-F", "%r %t %p", "--retained-only", "-W", "2"])
            .output()
            .expect("mosquitto_sub");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(Message::parse)
            .collect()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One received message.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub retained: bool,
    pub topic: String,
    pub payload: String,
}

impl Message {
    fn parse(line: &str) -> Option<Message> {
        let (r, rest) = line.split_once(' ')?;
        let (topic, payload) = rest.split_once(' ').unwrap_or((rest, ""));
        Some(Message {
            retained: r == "1",
            topic: topic.into(),
            payload: payload.into(),
        })
    }
}

pub struct Subscriber {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Subscriber {
    pub fn messages(&self) -> Vec<Message> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| Message::parse(l))
            .collect()
    }

    pub fn on(&self, topic: &str) -> Vec<String> {
        self.messages()
            .into_iter()
            .filter(|m| m.topic == topic)
            .map(|m| m.payload)
            .collect()
    }

    /// Waits until `done` holds for the messages (or panics after `secs`).
    pub fn wait_for(&self, secs: u64, what: &str, done: impl Fn(&[Message]) -> bool) {
        let started = Instant::now();
        while !done(&self.messages()) {
            assert!(
                started.elapsed() < Duration::from_secs(secs),
                "waited {secs} s for {what}; got {:#?}",
                self.messages()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// openssl is installed (tests that make certificates); under CI its absence is a failure.
pub fn openssl_present() -> bool {
    let found = Command::new("sh")
        .args(["-c", "command -v openssl"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found || std::env::var_os("CI").is_none(),
        "openssl missing: tools/setup.sh installs it"
    );
    found
}

/// A CA and a server certificate for localhost / 127.0.0.1, signed by it (`ca.crt`,
/// `server.crt`, `server.key`), and a second CA that signed nothing (`other-ca.crt`).
pub fn make_certificates(dir: &Path) {
    let d = |f: &str| dir.join(f).to_str().unwrap().to_owned();
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    new_ca(dir, "ca", "/CN=reidcam test CA");
    run(Command::new("openssl").args([
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        &d("server.key"),
        "-out",
        &d("server.csr"),
        "-subj",
        "/CN=localhost",
    ]));
    run(Command::new("openssl").args([
        "x509",
        "-req",
        "-in",
        &d("server.csr"),
        "-CA",
        &d("ca.crt"),
        "-CAkey",
        &d("ca.key"),
        "-CAcreateserial",
        "-out",
        &d("server.crt"),
        "-days",
        "2",
        "-extfile",
        &d("san.ext"),
    ]));
    // A second CA the broker's certificate is not signed by.
    new_ca(dir, "other-ca", "/CN=someone else");
}

/// A self-signed CA: `<name>.crt` and `<name>.key` in `dir`.
fn new_ca(dir: &Path, name: &str, subject: &str) {
    let d = |ext: &str| {
        dir.join(format!("{name}.{ext}"))
            .to_str()
            .unwrap()
            .to_owned()
    };
    run(Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        &d("key"),
        "-out",
        &d("crt"),
        "-days",
        "2",
        "-subj",
        subject,
    ]));
}
