//! Load generator for gallery sharing (issue 20; `docs/mqtt.md`, "Scale"): N simulated cameras
//! on one mosquitto broker, each with the daemon's own MQTT service (`reidcam::mqtt::Mqtt`: one
//! connection, its two threads) and the daemon's `Sharing` over its own gallery, turned every
//! 20 ms as the daemon turns it between frames. Only the camera and the frame loop are missing.
//!
//! Phases, each timed until every camera agrees:
//! 1. every camera enrols E people: until every gallery holds all N×E;
//! 2. every camera renames one copy of another camera's person: until every name agrees;
//! 3. every camera erases one copy: until those people are gone from every gallery.
//!
//! ```sh
//! cargo run --release --example share_load -- [--cameras 100] [--people 2] [--dim 256]
//! ```
//! Starts its own mosquitto (Debian's `mosquitto` package) on a free loopback port, or uses
//! `--broker mqtt://host:port`.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use reidcam::gallery::{
    Gallery, GalleryConfig, MatchPolicy, NewIdentity, PersonId, StorageFormat, Timestamp,
};
use reidcam::mqtt::share::{Peers, Sharing};
use reidcam::mqtt::{Mqtt, MqttSection};

const MODEL: &str = "load-test";

struct Args {
    cameras: usize,
    people: usize,
    dim: usize,
    broker: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        cameras: 100,
        people: 2,
        dim: 256,
        broker: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--cameras" => a.cameras = value.parse().expect("--cameras N"),
            "--people" => a.people = value.parse().expect("--people E"),
            "--dim" => a.dim = value.parse().expect("--dim D"),
            "--broker" => a.broker = Some(value),
            other => panic!("unknown option {other}"),
        }
    }
    a
}

/// What every camera's view is compared on: `origin/id` → label, over pinned identities.
type View = BTreeMap<String, Option<String>>;

/// What every view must satisfy at the end of a phase.
type Goal = Box<dyn Fn(&View) -> bool>;

struct Camera {
    name: String,
    gallery: Gallery,
    sharing: Sharing,
    mqtt: Mqtt,
}

impl Camera {
    fn view(&self) -> View {
        let copies: BTreeMap<u32, &String> = self
            .sharing
            .peers
            .copies
            .iter()
            .map(|(k, l)| (*l, k))
            .collect();
        self.gallery
            .identities()
            .filter(|i| i.pinned)
            .map(|i| {
                let key = copies
                    .get(&i.id.0)
                    .map_or_else(|| format!("{}/{}", self.name, i.id.0), |k| (*k).clone());
                (key, i.label.map(str::to_owned))
            })
            .collect()
    }

    /// The daemon's turn between frames (`Daemon::share`), minus thumbnails and saving.
    fn turn(&mut self, updates: &mut Vec<reidcam::mqtt::share::RemoteUpdate>) -> usize {
        self.mqtt.take_remote(updates);
        for u in updates.drain(..) {
            self.sharing.apply(&mut self.gallery, u);
        }
        if self.mqtt.take_republish() {
            self.sharing.republish();
        }
        if !self.mqtt.connected() {
            return 0;
        }
        let out = self.sharing.outgoing(&self.gallery, "reidcam");
        let bytes = out.iter().map(|(t, p)| t.len() + p.len()).sum();
        if !out.is_empty() {
            self.mqtt.publish_gallery(out);
        }
        bytes
    }
}

fn unit(seed: u64, dim: usize) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut v: Vec<f32> = (0..dim)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            ((x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect();
    let n = v.iter().map(|a| a * a).sum::<f32>().sqrt();
    v.iter_mut().for_each(|a| *a /= n);
    v
}

fn mosquitto() -> (Child, String, tempdir::Dir) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempdir::Dir::new();
    let conf = dir.0.join("mosquitto.conf");
    // Unlimited queued messages per client: at a connection every retained identity is sent.
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n\
             persistence false\n"
        ),
    )
    .unwrap();
    let child = Command::new("mosquitto")
        .args(["-c", conf.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto (apt-get install mosquitto)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "mosquitto did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, format!("mqtt://127.0.0.1:{port}"), dir)
}

/// A scratch directory removed at drop (no dependency for it).
mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new() -> Dir {
            let p = std::env::temp_dir().join(format!("reidcam-share-load-{}", std::process::id()));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            std::fs::remove_dir_all(&self.0).ok();
        }
    }
}

fn main() {
    let a = args();
    let (mut broker, url, _dir) = match &a.broker {
        Some(url) => (None, url.clone(), tempdir::Dir::new()),
        None => {
            let (child, url, dir) = mosquitto();
            (Some(child), url, dir)
        }
    };
    println!(
        "{} cameras × {} people, {}-d int8 exemplars, broker {url}; CPU: {}",
        a.cameras,
        a.people,
        a.dim,
        cpu()
    );
    let n = a.cameras;
    let phase = Arc::new(Mutex::new(0usize));
    let stop = Arc::new(AtomicBool::new(false));
    let views: Arc<Mutex<Vec<View>>> = Arc::new(Mutex::new(vec![View::new(); n]));
    let bytes_out = Arc::new(AtomicU64::new(0));
    let ready = Arc::new(Barrier::new(n + 1));
    let mut threads = Vec::new();
    for c in 0..n {
        let (phase, stop, views, bytes_out, ready) = (
            phase.clone(),
            stop.clone(),
            views.clone(),
            bytes_out.clone(),
            ready.clone(),
        );
        let (url, dim, people) = (url.clone(), a.dim, a.people);
        threads.push(std::thread::spawn(move || {
            let name = format!("cam{c:03}");
            let section = MqttSection {
                url,
                share_gallery: true,
                drain_secs: 1,
                ..Default::default()
            };
            let config = section.validate(&name).unwrap().unwrap();
            let mqtt = Mqtt::start(&config, &name).unwrap();
            let gconfig = GalleryConfig {
                dim,
                exemplars: 4,
                format: StorageFormat::Int8,
                budget_bytes: 4 << 20,
            };
            let gallery = Gallery::with_budget(gconfig, MatchPolicy::default()).unwrap();
            mqtt.set_share(MODEL, dim, 4);
            let sharing = Sharing::new(&name, MODEL, Peers::default(), &gallery);
            let mut cam = Camera {
                name,
                gallery,
                sharing,
                mqtt,
            };
            let mut updates = Vec::new();
            while !cam.mqtt.connected() {
                std::thread::sleep(Duration::from_millis(20));
            }
            cam.turn(&mut updates);
            ready.wait();
            let mut done = 0;
            while !stop.load(Ordering::Relaxed) {
                let now = *phase.lock().unwrap();
                while done < now {
                    done += 1;
                    act(&mut cam, done, (c, n), people, dim);
                }
                bytes_out.fetch_add(cam.turn(&mut updates) as u64, Ordering::Relaxed);
                views.lock().unwrap()[c] = cam.view();
                std::thread::sleep(Duration::from_millis(20));
            }
            cam.mqtt.stop()
        }));
    }
    ready.wait();
    let converged = |want: &dyn Fn(&View) -> bool| -> Duration {
        let t = Instant::now();
        loop {
            {
                let v = views.lock().unwrap();
                if v.iter().all(want) && v.windows(2).all(|w| w[0] == w[1]) {
                    return t.elapsed();
                }
            }
            assert!(t.elapsed() < Duration::from_secs(600), "no convergence");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let total = n * a.people;
    let phases: [(&str, Goal); 3] = [
        (
            "enrol: every camera enrols its people",
            Box::new(move |v: &View| v.len() == total),
        ),
        (
            "rename: every camera renames a copy",
            Box::new(move |v: &View| v.values().filter(|l| l.is_some()).count() >= n.min(total)),
        ),
        (
            "erase: every camera erases a copy",
            Box::new(move |v: &View| v.len() + n.min(total) <= total),
        ),
    ];
    let mut last = (0u64, Instant::now());
    for (k, (what, want)) in phases.iter().enumerate() {
        *phase.lock().unwrap() = k + 1;
        let took = converged(want.as_ref());
        let sent = bytes_out.load(Ordering::Relaxed);
        println!(
            "{what}: all {n} cameras agree after {:.2} s; {:.1} KiB published in the phase",
            took.as_secs_f64(),
            (sent - last.0) as f64 / 1024.0
        );
        last = (sent, Instant::now());
    }
    stop.store(true, Ordering::Relaxed);
    let stats: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let published: u64 = stats.iter().map(|s| s.gallery_published).sum();
    let received: u64 = stats.iter().map(|s| s.gallery_received).sum();
    let rejected: u64 = stats.iter().map(|s| s.gallery_rejected).sum();
    println!(
        "in all: {published} gallery messages published, {received} received (broker fan-out), \
         {rejected} refused"
    );
    if let Some(b) = &mut broker {
        b.kill().ok();
        b.wait().ok();
    }
    assert_eq!(rejected, 0, "a camera refused a message");
}

/// Phase `k`'s action at camera `c` of `n`.
fn act(cam: &mut Camera, k: usize, (c, n): (usize, usize), people: usize, dim: usize) {
    match k {
        1 => {
            for p in 0..people {
                let v = unit((c * 1000 + p) as u64, dim);
                let new = NewIdentity {
                    label: None,
                    pinned: true,
                    now: Timestamp::now(),
                };
                cam.gallery.insert(&v, new).unwrap();
            }
        }
        2 | 3 => {
            // A copy of a person of the next camera (for the rename) or of the one after (for
            // the erasure): each camera touches another camera's people.
            let origin = format!("cam{:03}/", (c + k - 1) % n);
            let target = cam
                .sharing
                .peers
                .copies
                .iter()
                .find(|(key, _)| key.starts_with(&origin))
                .map(|(_, l)| PersonId(*l));
            if let Some(id) = target {
                if k == 2 {
                    let label = format!("p{c}");
                    cam.gallery.edit(id, Some(Some(&label)), None).unwrap();
                } else {
                    cam.gallery.remove(id).unwrap();
                }
            }
        }
        _ => {}
    }
}

fn cpu() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_owned())
        + &format!(
            ", {} cores",
            std::thread::available_parallelism().map_or(1, |n| n.get())
        )
}
