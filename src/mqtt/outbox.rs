//! The events on their way to the broker: a bounded FIFO, mirrored in the spool when there is
//! one, that remembers how many of its oldest events are in flight (published, not yet
//! acknowledged). Acknowledgements of QoS 1 publishes come in publish order (MQTT 3.1.1 §4.6),
//! so an acknowledgement always belongs to the oldest event in flight.
//!
//! Full: the oldest event is dropped and counted. If it was in flight, the acknowledgement that
//! comes for it is skipped. After a reconnection everything unacknowledged is published again
//! (at least once: a subscriber may see an event twice, never out of order).

use std::collections::VecDeque;
use std::io;

use super::spool::{RECORD_OVERHEAD, Spool};

pub struct Outbox {
    queue: VecDeque<Vec<u8>>,
    cap: usize,
    /// Events published at most at once (the rest wait for acknowledgements).
    window: usize,
    spool: Option<Spool>,
    /// The oldest `inflight` events were handed to the client in this connection.
    inflight: usize,
    /// Acknowledgements still to come for in-flight events that were dropped.
    skip_acks: usize,
    dropped: u64,
    delivered: u64,
}

impl Outbox {
    /// `recovered`: the spool's undelivered events (the oldest beyond `cap` are dropped).
    pub fn new(cap: usize, window: usize, spool: Option<Spool>, recovered: Vec<Vec<u8>>) -> Self {
        let mut outbox = Outbox {
            queue: VecDeque::with_capacity(cap),
            cap,
            window: window.clamp(1, cap.div_ceil(2).max(1)),
            spool,
            inflight: 0,
            skip_acks: 0,
            dropped: 0,
            delivered: 0,
        };
        let surplus = recovered.len().saturating_sub(cap);
        for (n, event) in recovered.into_iter().enumerate() {
            if n < surplus {
                outbox.dropped += 1;
                if let Some(s) = &mut outbox.spool {
                    s.consume(event.len()).ok();
                }
            } else {
                outbox.queue.push_back(event);
            }
        }
        outbox
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Events dropped because the queue or the spool was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Events the broker acknowledged.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Drops the oldest event; its buffer goes to `recycle`.
    fn drop_oldest(&mut self, recycle: &mut Vec<Vec<u8>>) -> io::Result<()> {
        if let Some(old) = self.queue.pop_front() {
            if let Some(s) = &mut self.spool {
                s.consume(old.len())?;
            }
            if self.inflight > 0 {
                self.inflight -= 1;
                self.skip_acks += 1;
            }
            self.dropped += 1;
            recycle.push(old);
        }
        Ok(())
    }

    /// Queues new events (and spools them, one fsync for the lot), dropping the oldest when full.
    /// A spool that fails is given up (the error says why); the events stay queued in memory.
    pub fn push_all(
        &mut self,
        events: &mut VecDeque<Vec<u8>>,
        recycle: &mut Vec<Vec<u8>>,
    ) -> io::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        // Make room first: count what the new events need, in entries and in spool bytes.
        while events.len() > self.cap {
            recycle.extend(events.pop_front());
            self.dropped += 1;
        }
        while self.queue.len() + events.len() > self.cap {
            self.drop_oldest(recycle)?;
        }
        if self.spool.is_some() {
            let need = |events: &VecDeque<Vec<u8>>| -> u64 {
                events
                    .iter()
                    .map(|e| RECORD_OVERHEAD + e.len() as u64)
                    .sum()
            };
            let fits = |o: &Self, extra: u64| o.spool.as_ref().is_none_or(|s| s.fits(extra));
            while !fits(self, need(events)) && !self.queue.is_empty() {
                self.drop_oldest(recycle)?;
            }
            // Still too large: larger than the whole spool, it cannot be kept.
            while !fits(self, need(events)) {
                recycle.extend(events.pop_front());
                self.dropped += 1;
            }
            if let Some(spool) = &mut self.spool
                && let Err(e) = spool.append(events.iter().map(|e| &e[..]))
            {
                // The spool no longer mirrors the queue: stop using it, keep the events.
                self.spool = None;
                self.queue.extend(events.drain(..));
                return Err(e);
            }
        }
        self.queue.extend(events.drain(..));
        Ok(())
    }

    /// The next event to publish, if the window allows.
    pub fn next_to_send(&self) -> Option<&[u8]> {
        (self.inflight < self.window)
            .then(|| self.queue.get(self.inflight))
            .flatten()
            .map(|e| &e[..])
    }

    /// The event [`Outbox::next_to_send`] gave was handed to the client.
    pub fn mark_sent(&mut self) {
        self.inflight = (self.inflight + 1).min(self.queue.len());
    }

    /// Whether events wait to be published (and the window has room).
    pub fn has_unsent(&self) -> bool {
        self.next_to_send().is_some()
    }

    /// The broker acknowledged the oldest event in flight.
    pub fn ack(&mut self, recycle: &mut Vec<Vec<u8>>) -> io::Result<()> {
        if self.skip_acks > 0 {
            self.skip_acks -= 1;
            return Ok(());
        }
        if self.inflight == 0 {
            // Not ours (an acknowledgement from before a reconnection): nothing to do.
            return Ok(());
        }
        let event = self.queue.pop_front().expect("in flight implies queued");
        self.inflight -= 1;
        self.delivered += 1;
        if let Some(s) = &mut self.spool {
            s.consume(event.len())?;
        }
        recycle.push(event);
        Ok(())
    }

    /// A new connection: nothing is in flight; everything is published again from the oldest.
    pub fn rewind(&mut self) {
        self.inflight = 0;
        self.skip_acks = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(range: std::ops::Range<u32>) -> VecDeque<Vec<u8>> {
        range.map(|n| format!("event {n}").into_bytes()).collect()
    }

    fn text(e: &[u8]) -> &str {
        std::str::from_utf8(e).unwrap()
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_counts_them() {
        let mut out = Outbox::new(4, 2, None, Vec::new());
        let mut recycle = Vec::new();
        out.push_all(&mut events(0..6), &mut recycle).unwrap();
        assert_eq!((out.len(), out.dropped(), recycle.len()), (4, 2, 2));
        assert_eq!(text(out.next_to_send().unwrap()), "event 2");
    }

    #[test]
    fn acknowledgements_retire_in_order_and_a_reconnect_resends() {
        let mut out = Outbox::new(10, 2, None, Vec::new());
        let mut recycle = Vec::new();
        out.push_all(&mut events(0..4), &mut recycle).unwrap();
        let mut sent = Vec::new();
        while let Some(e) = out.next_to_send() {
            sent.push(text(e).to_owned());
            out.mark_sent();
        }
        assert_eq!(sent, ["event 0", "event 1"], "the window holds two");
        out.ack(&mut recycle).unwrap();
        assert_eq!(text(out.next_to_send().unwrap()), "event 2");
        out.mark_sent();
        // Connection lost: events 1 and 2 were not acknowledged; they go again, in order.
        out.rewind();
        assert_eq!(text(out.next_to_send().unwrap()), "event 1");
        assert_eq!(out.delivered(), 1);
    }

    #[test]
    fn dropping_an_event_in_flight_skips_its_acknowledgement() {
        let mut out = Outbox::new(2, 1, None, Vec::new());
        let mut recycle = Vec::new();
        out.push_all(&mut events(0..2), &mut recycle).unwrap();
        out.mark_sent(); // event 0 in flight
        out.push_all(&mut events(2..3), &mut recycle).unwrap(); // drops event 0
        out.ack(&mut recycle).unwrap(); // event 0's acknowledgement: skipped
        assert_eq!(out.len(), 2);
        assert_eq!(text(out.next_to_send().unwrap()), "event 1");
        out.mark_sent();
        out.ack(&mut recycle).unwrap();
        assert_eq!(text(out.next_to_send().unwrap()), "event 2");
        assert_eq!((out.dropped(), out.delivered()), (1, 1));
    }
}
