//! The camera's HTTP API (`[http]`, docs/http.md): status, the identities it knows (list,
//! rename, pin, erase, thumbnails), enrolment (the person in view, or a picture), the live
//! frame, recent events, Prometheus `/metrics`, `/healthz` and the web page.
//!
//! Served by tiny_http's blocking server on two threads of their own. The frame loop never waits
//! for them: it publishes a snapshot about once a second with `try_lock` (a request holding the
//! lock only makes it skip that second), stores a heartbeat in an atomic, and drains changes the
//! API asks for (rename, pin, erase) from a bounded channel between frames — the gallery stays
//! the frame loop's alone. A request waits for its change to be applied (or for a timeout).

mod config;
mod font;
mod live;
mod metrics;
mod recent;
mod routes;
mod tls;
mod users;

pub use config::{HttpConfig, HttpSection, read_token};
pub use recent::{Recent, RecentSink};
pub use users::{Users, hash_line, read_users};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::gallery::{Gallery, LABEL_CAPACITY, PersonId};
use crate::pipeline::{StageMs, Stats};

/// The HTTP server could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("http.listen {addr}: cannot listen: {reason}")]
    Listen { addr: String, reason: String },
    #[error("http.token_file: {0}")]
    Token(String),
    #[error("http.users_file: {0}")]
    Users(String),
    #[error("{0}: {1}")]
    Tls(&'static str, String),
}

/// What the API asks the frame loop to change.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// New label (None: remove it) and/or pinned state.
    Edit {
        id: PersonId,
        label: Option<Option<String>>,
        pinned: Option<bool>,
    },
    /// Erase the identity: memory, gallery file and its backup, thumbnail.
    Erase(PersonId),
    /// Enrol a track in view (None: the tallest) as a pinned identity.
    EnrolTrack {
        track: Option<u64>,
        label: Option<String>,
    },
    /// Enrol the person in a picture (cropped to them) as a pinned identity.
    EnrolImage {
        image: crate::frame::RgbImage,
        label: Option<String>,
    },
}

/// Why a change was refused: an HTTP status and a message.
pub type Refusal = (u16, String);

/// What a change did: the identity it made, for an enrolment.
pub type Outcome = Result<Option<PersonId>, Refusal>;

/// A change and where its outcome goes.
pub struct Command {
    pub op: Op,
    reply: SyncSender<Outcome>,
}

impl Command {
    pub fn reply(self, outcome: Outcome) {
        self.reply.send(outcome).ok();
    }
}

/// One identity as the API shows it: plain data (the label inline), copied without allocating.
#[derive(Clone, Debug, Default)]
pub struct IdentityRow {
    pub id: u64,
    pub label: heapless::String<LABEL_CAPACITY>,
    pub pinned: bool,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    pub times_seen: u32,
    pub exemplars: usize,
}

/// What the frame loop publishes (about once a second).
#[derive(Clone, Debug, Default)]
pub struct Status {
    pub camera: String,
    pub source: String,
    pub detector: String,
    pub model: String,
    pub frames: u64,
    pub fps: f64,
    /// Mean per-stage times over the last published interval.
    pub stage_ms: StageMs,
    pub counts: Stats,
    pub camera_reopens: u64,
    pub identities: usize,
    pub capacity: usize,
    /// Memory the gallery reserved (its arena, made at start for the whole capacity).
    pub gallery_bytes: usize,
    /// What its identities fill of it.
    pub used_bytes: usize,
    pub budget_bytes: usize,
    /// Thumbnails on disk: files, bytes, budget (None: kept nowhere).
    pub thumbnails: Option<(u64, u64, u64)>,
    /// MQTT events the broker acknowledged and events dropped (queue full), when `[mqtt]` is on.
    pub mqtt_delivered: Option<u64>,
    pub mqtt_dropped: Option<u64>,
}

/// State shared by the frame loop and the request threads.
pub(crate) struct Shared {
    config: HttpConfig,
    token: Option<String>,
    users: Option<Users>,
    started: Instant,
    /// When the server started, in ms since 1970: tells this run's `ETag`s from an earlier one's.
    boot_id: u64,
    /// Milliseconds since `started` at the frame loop's last turn.
    heartbeat_ms: AtomicU64,
    camera_down: AtomicBool,
    stopping: AtomicBool,
    status: Mutex<Status>,
    identities: Mutex<Vec<IdentityRow>>,
    commands: SyncSender<Command>,
    metrics: metrics::Metrics,
    recent: Arc<Recent>,
    live: live::Live,
    /// Where the identities' thumbnails are (`gallery.thumbnails`), set by the daemon.
    thumbs: Mutex<Option<std::path::PathBuf>>,
}

/// The running server, owned by the daemon.
pub struct Http {
    shared: Arc<Shared>,
    commands: Receiver<Command>,
    server: Arc<tiny_http::Server>,
    threads: Vec<JoinHandle<()>>,
    /// HTTPS (`http.tls_cert_file`): the TLS front end, and the private directory of the
    /// plain-HTTP socket it relays to.
    tls: Option<(tls::TlsFront, std::path::PathBuf)>,
    /// Frame-loop side: the last publication and what was summed since.
    last_publish: Instant,
    since: StageMs,
    since_frames: u64,
}

/// Requests waiting for the frame loop at most (more get 503).
const QUEUE: usize = 16;
/// Request threads: a board has 4 cores, the frame loop wants them.
const THREADS: usize = 2;
/// How often the snapshot is refreshed.
const PUBLISH_EVERY: Duration = Duration::from_secs(1);

impl Http {
    /// Listens on `config.listen` and starts the request threads. `capacity`: the gallery's,
    /// so that the identity snapshot never grows after start-up; `recent`: the ring the
    /// pipeline's [`RecentSink`] feeds.
    pub fn start(
        config: &HttpConfig,
        capacity: usize,
        recent: Arc<Recent>,
    ) -> Result<Http, HttpError> {
        let token = config
            .token_file
            .as_deref()
            .map(read_token)
            .transpose()
            .map_err(HttpError::Token)?;
        let users = config
            .users_file
            .as_deref()
            .map(read_users)
            .transpose()
            .map_err(HttpError::Users)?;
        let listen_error = |reason: String| HttpError::Listen {
            addr: config.listen.to_string(),
            reason,
        };
        let (server, tls) = match &config.tls {
            None => (
                tiny_http::Server::http(config.listen).map_err(|e| listen_error(e.to_string()))?,
                None,
            ),
            Some((cert, key)) => {
                let tls_config =
                    tls::server_config(cert, key).map_err(|(f, e)| HttpError::Tls(f, e))?;
                let dir = tls::socket_dir().map_err(|e| listen_error(e.to_string()))?;
                let socket = dir.join("http.sock");
                let started = tiny_http::Server::http_unix(&socket)
                    .map_err(|e| e.to_string())
                    .and_then(|server| {
                        let front = tls::TlsFront::start(config.listen, tls_config, socket)
                            .map_err(|e| e.to_string())?;
                        Ok((server, front))
                    });
                match started {
                    Ok((server, front)) => (server, Some((front, dir))),
                    Err(e) => {
                        std::fs::remove_dir_all(&dir).ok();
                        return Err(listen_error(e));
                    }
                }
            }
        };
        let server = Arc::new(server);
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let shared = Arc::new(Shared {
            config: config.clone(),
            token,
            users,
            started: Instant::now(),
            boot_id: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            heartbeat_ms: AtomicU64::new(0),
            camera_down: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            status: Mutex::new(Status::default()),
            identities: Mutex::new(Vec::with_capacity(capacity)),
            commands: tx,
            metrics: metrics::Metrics::new(),
            recent,
            live: live::Live::new(),
            thumbs: Mutex::new(None),
        });
        let threads = (0..THREADS)
            .map(|i| {
                let (server, shared) = (server.clone(), shared.clone());
                std::thread::Builder::new()
                    .name(format!("http-{i}"))
                    .spawn(move || serve(&server, &shared))
                    .expect("spawn an HTTP thread")
            })
            .collect();
        let bound = match &tls {
            Some((front, _)) => format!("https://{}", front.local_addr()),
            None => format!(
                "http://{}",
                server
                    .server_addr()
                    .to_ip()
                    .map_or_else(|| config.listen.to_string(), |a| a.to_string())
            ),
        };
        log::info!(
            "http: listening on {bound} ({})",
            match (&shared.token, &shared.users) {
                (Some(_), Some(_)) => "bearer token or password required",
                (Some(_), None) => "bearer token required",
                (None, Some(_)) => "password required",
                (None, None) => "loopback, no authentication",
            }
        );
        Ok(Http {
            shared,
            commands: rx,
            server,
            threads,
            tls,
            last_publish: Instant::now(),
            since: StageMs::default(),
            since_frames: 0,
        })
    }

    pub fn config(&self) -> &HttpConfig {
        &self.shared.config
    }

    /// The address actually bound (port 0 in the configuration picks a free one).
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        match &self.tls {
            Some((front, _)) => Some(front.local_addr()),
            None => self.server.server_addr().to_ip(),
        }
    }

    /// The frame loop is alive (each turn, frame or not).
    pub fn beat(&self) {
        let ms = self.shared.started.elapsed().as_millis() as u64;
        self.shared.heartbeat_ms.store(ms, Ordering::Relaxed);
    }

    pub fn set_camera_down(&self, down: bool) {
        self.shared.camera_down.store(down, Ordering::Relaxed);
    }

    /// Records one frame's stage times (histograms, and the means of the next snapshot).
    pub fn frame(&mut self, t: &StageMs) {
        self.shared.metrics.observe(t);
        let s = &mut self.since;
        s.capture += t.capture;
        s.detect += t.detect;
        s.track += t.track;
        s.embed += t.embed;
        s.gallery += t.gallery;
        s.events += t.events;
        s.total += t.total;
        self.since_frames += 1;
    }

    /// Whether a snapshot is due; then call [`publish`](Self::publish).
    pub fn publish_due(&self) -> bool {
        self.last_publish.elapsed() >= PUBLISH_EVERY
    }

    /// Refreshes the snapshot: `fill` updates the status in place (no allocation once its
    /// strings are set). Skipped, not waited for, while a request reads it.
    pub fn publish(&mut self, gallery: &Gallery, fill: impl FnOnce(&mut Status)) {
        let n = self.since_frames.max(1) as f64;
        let means = StageMs {
            capture: self.since.capture / n,
            detect: self.since.detect / n,
            track: self.since.track / n,
            embed: self.since.embed / n,
            gallery: self.since.gallery / n,
            events: self.since.events / n,
            total: self.since.total / n,
        };
        let Ok(mut status) = self.shared.status.try_lock() else {
            return;
        };
        if self.since_frames > 0 {
            status.stage_ms = means;
        }
        status.identities = gallery.len();
        status.capacity = gallery.capacity();
        status.gallery_bytes = gallery.heap_bytes();
        status.used_bytes =
            gallery.config().heap_bytes(gallery.len()) - gallery.config().heap_bytes(0);
        status.budget_bytes = gallery.config().budget_bytes;
        fill(&mut status);
        drop(status);
        self.publish_identities(gallery);
        self.last_publish = Instant::now();
        self.since = StageMs::default();
        self.since_frames = 0;
    }

    /// Copies the gallery's identities into the snapshot (now, e.g. after a change).
    pub fn publish_identities(&self, gallery: &Gallery) {
        let Ok(mut rows) = self.shared.identities.try_lock() else {
            return;
        };
        rows.clear();
        // Sized at start-up; only a reload to a larger gallery grows it.
        rows.reserve(gallery.capacity());
        let room = gallery.capacity();
        rows.extend(gallery.identities().take(room).map(|i| {
            IdentityRow {
                id: u64::from(i.id.0),
                label: i
                    .label
                    .and_then(|l| heapless::String::try_from(l).ok())
                    .unwrap_or_default(),
                pinned: i.pinned,
                first_seen_ms: i.first_seen.0,
                last_seen_ms: i.last_seen.0,
                times_seen: i.times_seen,
                exemplars: i.exemplars,
            }
        }));
    }

    /// Where thumbnails are read from (None: kept nowhere).
    pub fn set_thumbnails(&self, dir: Option<&std::path::Path>) {
        if let Ok(mut d) = self.shared.thumbs.lock() {
            *d = dir.map(std::path::Path::to_path_buf);
        }
    }

    /// Whether a client watches the live frame and a copy is due (then call
    /// [`live_frame`](Self::live_frame)).
    pub fn live_due(&self) -> bool {
        self.shared
            .live
            .due(self.shared.started.elapsed().as_millis() as u64)
    }

    /// Copies the frame and the tracks `fill` writes for the live view (no allocation once
    /// the buffer has the frame's size).
    pub fn live_frame(
        &self,
        frame: u64,
        image: crate::frame::RgbView<'_>,
        fill: impl FnOnce(&mut heapless::Vec<crate::pipeline::Shown, { crate::pipeline::MAX_SHOWN }>),
    ) {
        let now = self.shared.started.elapsed().as_millis() as u64;
        self.shared.live.copy(now, frame, image, fill);
    }

    /// The next change the API asks for, if any (between frames).
    pub fn next_command(&self) -> Option<Command> {
        self.commands.try_recv().ok()
    }

    /// Stops listening and joins the request threads.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.stopping.store(true, Ordering::Relaxed);
        if let Some((front, _)) = &mut self.tls {
            front.stop();
        }
        self.server.unblock();
        for t in self.threads.drain(..) {
            t.join().ok();
        }
        if let Some((_, dir)) = self.tls.take() {
            std::fs::remove_dir_all(&dir).ok();
        }
    }
}

impl Drop for Http {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A request thread: takes requests until the server is unblocked.
fn serve(server: &tiny_http::Server, shared: &Shared) {
    while !shared.stopping.load(Ordering::Relaxed) {
        match server.recv() {
            Ok(request) => routes::handle(request, shared),
            Err(e) => {
                if !shared.stopping.load(Ordering::Relaxed) {
                    log::warn!("http: {e}");
                }
                break;
            }
        }
    }
    // Wake the sibling threads still blocked in recv().
    server.unblock();
}
