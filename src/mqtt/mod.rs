//! MQTT out (`[mqtt]`, `docs/mqtt.md`): events, availability (with a last will), the people in
//! view, and Home Assistant discovery, through rumqttc's blocking client.
//!
//! Three parties share [`Shared`]:
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
pub mod spool;

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rumqttc::{
    Client, Connection, ConnectionError, Event as MqttEvent, LastWill, MqttOptions, Outgoing,
    Packet, QoS, TlsConfiguration, Transport,
};
use serde::Serialize;

pub use config::{MqttConfig, MqttSection};
use discovery::{Topics, View};
use outbox::Outbox;
use spool::Spool;

use crate::events::{Event, EventSink};

/// Events published at once before waiting for acknowledgements.
const WINDOW: usize = 32;
/// Event buffers made at start (more are made, once, if the queue holds more at a time).
const POOL: usize = 64;
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
                free: (0..POOL.min(config.queue))
                    .map(|_| Vec::with_capacity(BUFFER_BYTES))
                    .collect(),
                cap: config.queue,
                state: b"{\"people\":0,\"present\":[],\"identities\":[]".to_vec(),
                state_dirty: true,
                labelled: Vec::new(),
                labelled_known: false,
                discovered: Vec::new(),
                subscriptions_off: false,
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

    /// Identities with labels, announced to Home Assistant as presence sensors.
    pub fn set_labelled<'a>(&self, labelled: impl Iterator<Item = (u32, &'a str)>) {
        let mut inner = self.shared.lock();
        inner.labelled = labelled.map(|(id, l)| (id, l.to_owned())).collect();
        inner.labelled_known = true;
        inner.announce = true;
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

/// The network thread: polls the connection, reconnecting with back-off.
fn network(mut connection: Connection, shared: &Shared, broker: &str, topics: &Topics) {
    let mut retry = FIRST_RETRY;
    let mut down_since: Option<Instant> = None;
    loop {
        let event = match connection.recv() {
            Ok(event) => event,
            // The client is gone: the pump has finished.
            Err(_) => break,
        };
        let mut inner = shared.lock();
        match event {
            Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                inner.connected = true;
                inner.session += 1;
                inner.stats.connections += 1;
                inner.tags.clear();
                inner.pkids.clear();
                retry = FIRST_RETRY;
                match down_since.take() {
                    Some(t) => log::info!(
                        "mqtt: connected to {broker} again after {:.1} s",
                        t.elapsed().as_secs_f64()
                    ),
                    None => log::info!("mqtt: connected to {broker}"),
                }
            }
            Ok(MqttEvent::Outgoing(Outgoing::Publish(pkid))) => {
                if let Some(tag) = inner.tags.pop_front()
                    && pkid != 0
                {
                    inner.pkids.push((pkid, tag));
                }
            }
            Ok(MqttEvent::Incoming(Packet::PubAck(ack))) => {
                if let Some(p) = inner.pkids.iter().position(|(id, _)| *id == ack.pkid) {
                    let (_, tag) = inner.pkids.swap_remove(p);
                    if tag == Tag::Event {
                        inner.acked += 1;
                    }
                }
            }
            Ok(MqttEvent::Incoming(Packet::Publish(p))) => {
                // Home Assistant restarted: it has forgotten the entities.
                if topics.ha_status.as_deref() == Some(p.topic.as_str()) {
                    if &p.payload[..] == b"online" {
                        inner.announce = true;
                    }
                } else if let Some(id) = topics.person_of(&p.topic)
                    && !p.payload.is_empty()
                    && inner.discovered.len() < MAX_DISCOVERED
                {
                    inner.discovered.push(id);
                }
            }
            Ok(MqttEvent::Outgoing(Outgoing::Disconnect)) if inner.stop => {
                inner.net_done = true;
                shared.wake.notify_all();
                break;
            }
            Ok(_) => {}
            Err(e) => {
                inner.connected = false;
                if oversized(&e) && !inner.subscriptions_off {
                    // Retained, it would come back at every connection and break each one.
                    log::error!(
                        "mqtt: {broker} sent a message larger than {} KiB on a topic reidcam \
                         subscribes to (Home Assistant's status or this camera's entities): \
                         not subscribing any more (no re-announcement, no clean-up of stale \
                         entities); events still flow",
                        MAX_INCOMING >> 10
                    );
                    inner.subscriptions_off = true;
                }
                if inner.stop {
                    inner.net_done = true;
                    shared.wake.notify_all();
                    break;
                }
                if down_since.is_none() {
                    down_since = Some(Instant::now());
                    log::warn!("mqtt: {broker}: {}; retrying", describe(&e));
                } else {
                    log::debug!("mqtt: {broker}: {}", describe(&e));
                }
                shared.wake.notify_all();
                drop(inner);
                let until = Instant::now() + retry;
                retry = (retry * 2).min(LAST_RETRY);
                while Instant::now() < until {
                    if shared.lock().stop {
                        shared.lock().net_done = true;
                        shared.wake.notify_all();
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                continue;
            }
        }
        shared.wake.notify_all();
    }
    shared.lock().net_done = true;
    shared.wake.notify_all();
}

fn oversized(e: &ConnectionError) -> bool {
    matches!(
        e,
        ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(_)
        ))
    )
}

/// Connection errors as a user reads them (never with credentials: rumqttc's errors carry none).
fn describe(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ConnectionRefused(code) => {
            format!("the broker refused the connection ({code:?})")
        }
        other => other.to_string(),
    }
}

/// The pump thread. Returns the outbox (what is left in it) when stopped.
fn pump(
    client: Client,
    mut outbox: Outbox,
    shared: &Shared,
    topics: &Topics,
    drain: Duration,
) -> Outbox {
    let mut session_seen = 0;
    let mut batch = VecDeque::new();
    let mut recycle = Vec::new();
    let mut state = Vec::with_capacity(BUFFER_BYTES);
    let mut stop_at: Option<Instant> = None;
    let publish = |tag: Tag, topic: &str, retain: bool, payload: Vec<u8>| -> bool {
        shared.lock().tags.push_back(tag);
        match client.try_publish(topic, QoS::AtLeastOnce, retain, payload) {
            Ok(()) => true,
            Err(e) => {
                let mut inner = shared.lock();
                inner.tags.pop_back();
                log::debug!("mqtt: not published now ({e}); later");
                false
            }
        }
    };
    loop {
        let (acked, session, connected, announce, labelled, state_dirty, stop) = {
            let mut inner = shared.lock();
            loop {
                let work = !inner.inbox.is_empty()
                    || inner.acked > 0
                    || inner.stop
                    || (inner.connected && inner.labelled_known && !inner.discovered.is_empty())
                    || (inner.connected
                        && (inner.session != session_seen
                            || inner.announce
                            || inner.state_dirty
                            || outbox.has_unsent()));
                if work {
                    break;
                }
                inner = shared
                    .wake
                    .wait_timeout(inner, Duration::from_millis(500))
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
            std::mem::swap(&mut batch, &mut inner.inbox);
            let acked = std::mem::take(&mut inner.acked);
            let new_session = inner.connected && inner.session != session_seen;
            let announce = inner.connected && (inner.announce || new_session);
            if announce {
                inner.announce = false;
            }
            let state_dirty = inner.connected && (inner.state_dirty || new_session);
            if state_dirty {
                inner.state_dirty = false;
                state.clear();
                state.extend_from_slice(&inner.state);
            }
            let labelled = if announce {
                inner.labelled.clone()
            } else {
                Vec::new()
            };
            (
                acked,
                inner.session,
                inner.connected,
                announce,
                labelled,
                state_dirty,
                inner.stop,
            )
        };
        let dropped_before = outbox.dropped();
        if let Err(e) = outbox.push_all(&mut batch, &mut recycle) {
            log::error!("mqtt: {e}: the spool is given up, events are kept in memory only");
        }
        for _ in 0..acked {
            if let Err(e) = outbox.ack(&mut recycle) {
                log::error!("mqtt: {e}");
            }
        }
        {
            let mut inner = shared.lock();
            inner.stats.delivered = outbox.delivered();
            inner.stats.dropped = outbox.dropped() + inner.inbox_dropped;
            if outbox.dropped() > dropped_before {
                log::warn!(
                    "mqtt: queue full: dropped the {} oldest event(s) ({} in all)",
                    outbox.dropped() - dropped_before,
                    inner.stats.dropped
                );
                inner.state_dirty = true;
            }
            inner.free.append(&mut recycle);
        }
        if connected {
            if session != session_seen {
                session_seen = session;
                outbox.rewind();
                publish(Tag::Other, &topics.availability, true, b"online".to_vec());
                if !shared.lock().subscriptions_off {
                    if let Some(status) = &topics.ha_status {
                        client.try_subscribe(status, QoS::AtLeastOnce).ok();
                    }
                    // Retained person entities come back at once: those of identities no
                    // longer labelled in the gallery (erased, forgotten) are cleared below.
                    if let Some(filter) = topics.people_filter() {
                        client.try_subscribe(filter, QoS::AtLeastOnce).ok();
                    }
                }
            }
            if announce {
                for (topic, payload) in topics.discovery(&labelled) {
                    publish(Tag::Other, &topic, true, payload);
                }
            }
            let stale = {
                let mut inner = shared.lock();
                if inner.labelled_known && !inner.discovered.is_empty() {
                    let found = std::mem::take(&mut inner.discovered);
                    found
                        .into_iter()
                        .filter(|id| !inner.labelled.iter().any(|(l, _)| l == id))
                        .collect()
                } else {
                    Vec::new()
                }
            };
            for id in stale {
                if let Some(topic) = topics.person_config(id) {
                    log::info!("mqtt: identity {id} is no longer in the gallery: clearing {topic}");
                    publish(Tag::Other, &topic, true, Vec::new());
                }
            }
            if state_dirty {
                let dropped = shared.lock().stats.dropped;
                let mut payload = state.clone();
                payload.extend_from_slice(format!(",\"dropped_events\":{dropped}}}").as_bytes());
                publish(Tag::Other, &topics.state, true, payload);
            }
            while let Some(event) = outbox.next_to_send() {
                if !publish(Tag::Event, &topics.events, false, event.to_vec()) {
                    break;
                }
                outbox.mark_sent();
            }
        }
        if stop {
            let deadline = *stop_at.get_or_insert_with(|| Instant::now() + drain);
            if outbox.is_empty() || !connected || Instant::now() >= deadline {
                if connected {
                    publish(Tag::Other, &topics.availability, true, b"offline".to_vec());
                    client.try_disconnect().ok();
                    // Give the network thread the moment it needs to send both.
                    let until = Instant::now() + Duration::from_secs(2);
                    while !shared.lock().net_done && Instant::now() < until {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
                drop(client);
                return outbox;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
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
