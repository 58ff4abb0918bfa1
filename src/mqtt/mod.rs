//! MQTT (`[mqtt]`, `docs/mqtt.md`): events, availability (with a last will), the people in
//! view, Home Assistant discovery and enrolled identities shared between cameras (`share`),
//! through rumqttc's blocking client.
//!
//! Three parties share [`Shared`] (the two threads are in `threads.rs`):
//! - the frame loop's [`MqttEvents`] sink serialises each event (the same bytes as the JSON-lines
//!   output) into a recycled buffer and puts it in the inbox: no allocation, no I/O, no waiting
//!   on the network;
//! - the *pump* thread moves inbox events into the [`outbox::Outbox`] (spooling them when
//!   `mqtt.spool` is set), publishes them QoS 1 in order within a window, and publishes the
//!   retained availability, state and discovery messages;
//! - the *network* thread drives rumqttc's connection: it reconnects with back-off, and turns
//!   the broker's acknowledgements into outbox progress.
//!
//! Clean sessions: after a reconnection, whatever was not acknowledged is published again from
//! the oldest (at least once, in order).

pub mod config;
pub mod discovery;
pub mod outbox;
pub mod share;
pub mod spool;
mod threads;
use threads::{network, pump};

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use rumqttc::{Client, LastWill, MqttOptions, QoS, TlsConfiguration, Transport};
use serde::Serialize;

pub use config::{MERGE_ABOVE_MATCH, MqttConfig, MqttSection};
use discovery::{Topics, View};
use outbox::Outbox;
use spool::Spool;

use crate::events::{Event, EventSink};

/// Events published at once before waiting for acknowledgements.
const WINDOW: usize = 32;
/// Event buffers made at start, at most. A buffer is in the inbox (≤ queue), the pump's batch
/// and the outbox (≤ queue + queue between them) or the free pool: 3 × queue + 1 buffers mean
/// the sink never allocates, whatever the pump's timing. Queues above 1,024 grow the pool on
/// demand beyond this (bounded by the same sum).
const POOL: usize = 3 * 1024 + 1;
const BUFFER_BYTES: usize = 1024;
/// Largest message taken from the broker (ours are ≤ 1 KiB; a discovery configuration a few).
const MAX_INCOMING: usize = 64 << 10;
/// Person entities checked per connection at most (a broker holding more is misused).
const MAX_DISCOVERED: usize = 100_000;
/// Reconnection back-off.
const FIRST_RETRY: Duration = Duration::from_millis(500);
const LAST_RETRY: Duration = Duration::from_secs(10);

/// A problem starting MQTT, naming the file or the broker.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("mqtt.password_file: {0}")]
    Password(String),
    #[error("mqtt.ca_file: {0}")]
    Ca(String),
    #[error("mqtt.spool: {0}")]
    Spool(io::Error),
    #[error("mqtt: cannot start a thread: {0}")]
    Thread(io::Error),
}

/// Counters, in the run summary.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct MqttStats {
    /// Events the broker acknowledged.
    pub delivered: u64,
    /// Events dropped because the queue (or the spool) was full.
    pub dropped: u64,
    /// Events still queued at the stop (kept in the spool if there is one).
    pub undelivered: u64,
    /// Events found in the spool at start.
    pub recovered: u64,
    /// Shared identities received (and valid), refused (invalid: logged), and published.
    pub gallery_received: u64,
    pub gallery_rejected: u64,
    pub gallery_published: u64,
    /// Connections made (the first one included).
    pub connections: u64,
}

/// Tags of publishes handed to the client, in order, to match them with packet ids.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Tag {
    Event,
    Other,
}

struct Inner {
    inbox: VecDeque<Vec<u8>>,
    inbox_dropped: u64,
    free: Vec<Vec<u8>>,
    cap: usize,
    /// The state payload without its closing brace (see [`View::write_open`]).
    state: Vec<u8>,
    state_dirty: bool,
    labelled: Vec<(u32, String)>,
    /// The gallery's labelled identities are known (set at start): stale entities may go.
    labelled_known: bool,
    /// Person entities of this camera the broker holds (retained), to check against `labelled`.
    discovered: Vec<u32>,
    /// The broker sent more than [`MAX_INCOMING`] on a subscribed topic: subscribe no more.
    subscriptions_off: bool,
    /// Gallery sharing: what this camera's gallery holds (set at start), the session its filter
    /// was subscribed in, updates received for the frame loop, messages to publish, and
    /// whether a new connection asks for everything again.
    share: Option<ShareSpec>,
    share_session: u64,
    remote: Vec<share::RemoteUpdate>,
    gallery_out: VecDeque<(String, Vec<u8>)>,
    republish: bool,
    announce: bool,
    connected: bool,
    /// Incremented at each connection acknowledgement.
    session: u64,
    /// Publishes handed to the client whose packet id is not known yet.
    tags: VecDeque<Tag>,
    /// Packet ids awaiting acknowledgement.
    pkids: Vec<(u16, Tag)>,
    /// Event acknowledgements not yet applied to the outbox.
    acked: usize,
    stop: bool,
    net_done: bool,
    stats: MqttStats,
}

#[derive(Clone, Debug)]
struct ShareSpec {
    prefix: String,
    model: String,
    dim: usize,
    exemplars: usize,
}

/// Updates waiting for the frame loop at most (a flood beyond is dropped and counted).
const MAX_REMOTE: usize = 10_000;

struct Shared {
    inner: Mutex<Inner>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicked thread leaves the data as it was: carry on with it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The running MQTT service. [`Mqtt::stop`] drains, says `offline` and disconnects.
pub struct Mqtt {
    shared: Arc<Shared>,
    camera: String,
    pump: Option<JoinHandle<Outbox>>,
    net: Option<JoinHandle<()>>,
    config: MqttConfig,
}

/// rustls with the ring provider, checking the broker against `ca_file` or the system store.
fn tls_config(ca_file: Option<&std::path::Path>) -> Result<TlsConfiguration, MqttError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| MqttError::Ca(format!("{}: {e}", path.display())))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(MqttError::Ca(format!(
                    "{}: no certificate in it: expected PEM certificates",
                    path.display()
                )));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(MqttError::Ca(
                    "empty, and the system has no CA certificates (install ca-certificates, or \
                     name a PEM file)"
                        .into(),
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| MqttError::Ca(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConfiguration::Rustls(Arc::new(config)))
}

impl Mqtt {
    /// Reads the password and the spool, and starts the threads. The broker need not be up.
    pub fn start(config: &MqttConfig, camera: &str) -> Result<Mqtt, MqttError> {
        let topics = Topics::new(&config.prefix, camera, config.discovery.as_deref());
        let mut options = MqttOptions::new(&config.client_id, &config.host, config.port);
        options
            .set_keep_alive(config.keep_alive)
            .set_clean_session(true)
            .set_inflight(u16::try_from(WINDOW * 4).unwrap_or(u16::MAX))
            .set_max_packet_size(MAX_INCOMING, 256 << 10)
            .set_last_will(LastWill::new(
                &topics.availability,
                "offline",
                QoS::AtLeastOnce,
                true,
            ));
        if let Some(user) = &config.username {
            let password = match &config.password_file {
                Some(path) => config::read_password(path).map_err(MqttError::Password)?,
                None => String::new(),
            };
            options.set_credentials(user, password);
        }
        if config.tls {
            options.set_transport(Transport::Tls(tls_config(config.ca_file.as_deref())?));
        }

        let (spool, recovered) = match &config.spool {
            Some(path) => {
                let (spool, found) =
                    Spool::open(path, config.spool_bytes).map_err(MqttError::Spool)?;
                (Some(spool), found.events)
            }
            None => (None, Vec::new()),
        };
        let recovered_count = recovered.len() as u64;
        if recovered_count > 0 {
            log::info!("mqtt: {recovered_count} undelivered event(s) from the spool");
        }
        let outbox = Outbox::new(config.queue, WINDOW, spool, recovered);

        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                inbox: VecDeque::with_capacity(config.queue.min(4096)),
                inbox_dropped: 0,
                free: (0..POOL.min(3 * config.queue + 1))
                    .map(|_| Vec::with_capacity(BUFFER_BYTES))
                    .collect(),
                cap: config.queue,
                state: b"{\"people\":0,\"present\":[],\"identities\":[]".to_vec(),
                state_dirty: true,
                labelled: Vec::new(),
                labelled_known: false,
                discovered: Vec::new(),
                subscriptions_off: false,
                share: None,
                share_session: 0,
                remote: Vec::new(),
                gallery_out: VecDeque::new(),
                republish: false,
                announce: true,
                connected: false,
                session: 0,
                tags: VecDeque::new(),
                pkids: Vec::new(),
                acked: 0,
                stop: false,
                net_done: false,
                stats: MqttStats {
                    recovered: recovered_count,
                    ..Default::default()
                },
            }),
            wake: Condvar::new(),
        });
        // Room for a window of events and every retained message of a (re)connection.
        let (client, connection) = Client::new(options, 1024);
        let where_ = format!("{}:{}", config.host, config.port);
        let watch = topics.clone();
        let net = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("mqtt-net".into())
                .spawn(move || network(connection, &shared, &where_, &watch))
                .map_err(MqttError::Thread)?
        };
        let pump = {
            let shared = shared.clone();
            let drain = config.drain;
            std::thread::Builder::new()
                .name("mqtt-pump".into())
                .spawn(move || pump(client, outbox, &shared, &topics, drain))
                .map_err(MqttError::Thread)?
        };
        log::info!(
            "mqtt: {config:?}, events to {}/{camera}/events",
            config.prefix
        );
        Ok(Mqtt {
            shared,
            camera: camera.to_owned(),
            pump: Some(pump),
            net: Some(net),
            config: config.clone(),
        })
    }

    /// The configuration it runs with (a reload restarts it only when this changes).
    pub fn config(&self) -> &MqttConfig {
        &self.config
    }

    pub fn camera(&self) -> &str {
        &self.camera
    }

    /// A sink for the frame loop.
    pub fn events(&self) -> MqttEvents {
        MqttEvents {
            shared: self.shared.clone(),
            line: Vec::with_capacity(BUFFER_BYTES),
            view: View::default(),
            state: Vec::with_capacity(BUFFER_BYTES),
        }
    }

    /// The gallery's identities with labels, announced to Home Assistant as presence sensors.
    pub fn set_labelled(&self, gallery: &crate::gallery::Gallery) {
        let labelled = gallery
            .identities()
            .filter_map(|i| i.label.map(|l| (i.id.0, l.to_owned())))
            .collect();
        let mut inner = self.shared.lock();
        inner.labelled = labelled;
        inner.labelled_known = true;
        inner.announce = true;
        self.shared.wake.notify_all();
    }

    /// Whether the broker is connected now.
    pub fn connected(&self) -> bool {
        self.shared.lock().connected
    }

    /// Whether `mqtt.share_gallery` is on.
    pub fn shares(&self) -> bool {
        self.config.share_gallery
    }

    /// Starts sharing for a gallery of `model` (`dim`, `exemplars` per identity).
    pub fn set_share(&self, model: &str, dim: usize, exemplars: usize) {
        let mut inner = self.shared.lock();
        inner.share = Some(ShareSpec {
            prefix: self.config.prefix.clone(),
            model: model.to_owned(),
            dim,
            exemplars,
        });
        inner.share_session = 0;
        inner.remote.clear();
        self.shared.wake.notify_all();
    }

    /// Moves the shared-identity updates received so far into `out`.
    pub fn take_remote(&self, out: &mut Vec<share::RemoteUpdate>) {
        let mut inner = self.shared.lock();
        if !inner.remote.is_empty() {
            out.append(&mut inner.remote);
        }
    }

    /// Whether a new connection asks for every own identity again (once).
    pub fn take_republish(&self) -> bool {
        std::mem::take(&mut self.shared.lock().republish)
    }

    /// Queues shared-identity messages (retained; an empty payload erases).
    pub fn publish_gallery(&self, messages: Vec<(String, Vec<u8>)>) {
        let mut inner = self.shared.lock();
        inner.gallery_out.extend(messages);
        self.shared.wake.notify_all();
    }

    pub fn stats(&self) -> MqttStats {
        self.shared.lock().stats.clone()
    }

    /// Delivers what it can within `mqtt.drain_secs`, publishes `offline`, disconnects.
    pub fn stop(mut self) -> MqttStats {
        self.shutdown();
        self.stats()
    }

    fn shutdown(&mut self) {
        {
            let mut inner = self.shared.lock();
            inner.stop = true;
            self.shared.wake.notify_all();
        }
        if let Some(pump) = self.pump.take() {
            match pump.join() {
                Ok(outbox) => {
                    let mut inner = self.shared.lock();
                    inner.stats.undelivered = outbox.len() as u64 + inner.inbox.len() as u64;
                    if inner.stats.undelivered > 0 {
                        log::warn!(
                            "mqtt: {} event(s) not delivered{}",
                            inner.stats.undelivered,
                            if self.config.spool.is_some() {
                                ": kept in the spool for the next start"
                            } else {
                                " and lost (set mqtt.spool to keep them across restarts)"
                            }
                        );
                    }
                }
                Err(_) => log::error!("mqtt: the publisher thread panicked"),
            }
        }
        if let Some(net) = self.net.take() {
            net.join().ok();
        }
    }
}

impl Drop for Mqtt {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The frame loop's end: events into the inbox, the view into the state.
pub struct MqttEvents {
    shared: Arc<Shared>,
    line: Vec<u8>,
    view: View,
    state: Vec<u8>,
}

impl EventSink for MqttEvents {
    fn emit(&mut self, event: &Event<'_>) -> io::Result<()> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, event)?;
        let named = self.view.apply(event);
        self.view.write_open(&mut self.state);
        let mut inner = self.shared.lock();
        let mut buf = inner
            .free
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(BUFFER_BYTES));
        buf.clear();
        buf.extend_from_slice(&self.line);
        if inner.inbox.len() >= inner.cap
            && let Some(old) = inner.inbox.pop_front()
        {
            inner.inbox_dropped += 1;
            inner.free.push(old);
        }
        inner.inbox.push_back(buf);
        inner.state.clear();
        inner.state.extend_from_slice(&self.state);
        inner.state_dirty = true;
        if let Some((id, label)) = named
            && !inner.labelled.iter().any(|(i, l)| *i == id && l == label)
        {
            inner.labelled.retain(|(i, _)| *i != id);
            inner.labelled.push((id, label.to_owned()));
            inner.announce = true;
        }
        self.shared.wake.notify_all();
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
