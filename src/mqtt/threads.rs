//! The MQTT service's two threads: the *network* thread drives rumqttc's connection
//! (reconnecting with back-off, turning acknowledgements into outbox progress, taking in what the
//! broker sends on our subscriptions); the *pump* thread publishes (events from the outbox in
//! order within a window; availability, state, discovery and shared identities retained).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rumqttc::{Client, Connection, ConnectionError, Event as MqttEvent, Outgoing, Packet, QoS};

use super::discovery::Topics;
use super::outbox::Outbox;
use super::{
    BUFFER_BYTES, FIRST_RETRY, LAST_RETRY, MAX_DISCOVERED, MAX_INCOMING, MAX_REMOTE, Shared, Tag,
    share,
};

/// The network thread: polls the connection, reconnecting with back-off.
pub(super) fn network(mut connection: Connection, shared: &Shared, broker: &str, topics: &Topics) {
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
                // Set with `connected`, so the frame loop never publishes before it knows.
                inner.republish = true;
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
                } else if let Some(spec) = inner.share.clone()
                    && let Some(from) = share::parse_topic(&spec.prefix, &spec.model, &p.topic)
                {
                    match share::decode(&p.payload, from, &spec.model, spec.dim, spec.exemplars) {
                        Ok(update) if inner.remote.len() < MAX_REMOTE => {
                            inner.stats.gallery_received += 1;
                            inner.remote.push(update);
                        }
                        Ok(_) => inner.stats.gallery_rejected += 1,
                        Err(why) => {
                            inner.stats.gallery_rejected += 1;
                            let n = inner.stats.gallery_rejected;
                            if n.is_power_of_two() {
                                log::warn!(
                                    "mqtt: {}: refused ({why}); {n} refused so far",
                                    p.topic
                                );
                            }
                        }
                    }
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
pub(super) fn pump(
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
                    || (inner.connected
                        && (!inner.gallery_out.is_empty()
                            || (inner.share.is_some() && inner.share_session != inner.session)))
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
            share_pump(&client, shared, &publish);
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

/// Gallery sharing in the pump: subscribe once per connection (the network thread has asked
/// the daemon for everything again), then publish what the daemon queued, in order.
fn share_pump(
    client: &Client,
    shared: &Shared,
    publish: &impl Fn(Tag, &str, bool, Vec<u8>) -> bool,
) {
    let subscribe = {
        let mut inner = shared.lock();
        match &inner.share {
            Some(spec) if inner.share_session != inner.session && !inner.subscriptions_off => {
                let filter = share::filter(&spec.prefix, &spec.model);
                inner.share_session = inner.session;
                Some(filter)
            }
            _ => None,
        }
    };
    if let Some(filter) = subscribe {
        client.try_subscribe(filter, QoS::AtLeastOnce).ok();
    }
    loop {
        let Some((topic, payload)) = shared.lock().gallery_out.pop_front() else {
            break;
        };
        if !publish(Tag::Other, &topic, true, payload.clone()) {
            shared.lock().gallery_out.push_front((topic, payload));
            break;
        }
        shared.lock().stats.gallery_published += 1;
    }
}
