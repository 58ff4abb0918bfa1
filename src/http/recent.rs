//! The most recent events, for `GET /api/v1/events?since=<seq>`: a ring of [`RECENT`] slots
//! allocated once, fed by an [`EventSink`] beside the events file (the same JSON line), read by
//! the request threads under a short lock (a copy, no I/O).

use std::io;
use std::sync::{Arc, Mutex};

use crate::events::{Event, EventSink};

/// Events kept.
pub const RECENT: usize = 256;
/// The longest event kept (they are about 0.5 KiB; a longer one is counted and left out).
pub const SLOT_BYTES: usize = 2048;

struct Ring {
    /// (sequence number, JSON line); sequence 0: empty.
    slots: Vec<(u64, Vec<u8>)>,
    next: usize,
    seq: u64,
    too_long: u64,
}

pub struct Recent {
    ring: Mutex<Ring>,
}

impl Recent {
    /// An empty ring: its memory (`RECENT × SLOT_BYTES`) is taken by the first [`sink`](Self::sink).
    pub fn new() -> Arc<Recent> {
        Arc::new(Recent {
            ring: Mutex::new(Ring {
                slots: Vec::new(),
                next: 0,
                seq: 0,
                too_long: 0,
            }),
        })
    }

    /// A sink that feeds this ring (at start-up: the ring's slots are allocated here).
    pub fn sink(self: &Arc<Self>) -> RecentSink {
        if let Ok(mut ring) = self.ring.lock()
            && ring.slots.is_empty()
        {
            ring.slots = (0..RECENT)
                .map(|_| (0, Vec::with_capacity(SLOT_BYTES)))
                .collect();
        }
        RecentSink {
            recent: self.clone(),
            line: Vec::with_capacity(SLOT_BYTES),
        }
    }

    /// The kept events after sequence number `since`, oldest first, and the last number given.
    pub fn since(&self, since: u64) -> (Vec<(u64, Vec<u8>)>, u64) {
        let Ok(ring) = self.ring.lock() else {
            return (Vec::new(), since);
        };
        let n = ring.slots.len();
        let out = (0..n)
            .map(|i| &ring.slots[(ring.next + i) % n])
            .filter(|(seq, _)| *seq != 0 && *seq > since)
            .cloned()
            .collect();
        (out, ring.seq)
    }

    fn push(&self, line: &[u8]) {
        let Ok(mut ring) = self.ring.lock() else {
            return;
        };
        if ring.slots.is_empty() {
            return;
        }
        if line.len() > SLOT_BYTES {
            ring.too_long += 1;
            return;
        }
        ring.seq += 1;
        let (seq, at) = (ring.seq, ring.next);
        let slot = &mut ring.slots[at];
        slot.0 = seq;
        slot.1.clear();
        slot.1.extend_from_slice(line);
        ring.next = (at + 1) % RECENT;
    }
}

pub struct RecentSink {
    recent: Arc<Recent>,
    line: Vec<u8>,
}

impl EventSink for RecentSink {
    fn emit(&mut self, event: &Event<'_>) -> io::Result<()> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, event)?;
        self.recent.push(&self.line);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_last_events_in_order_and_skips_what_was_read() {
        let recent = Recent::new();
        let _sink = recent.sink();
        for i in 0..(RECENT as u64 + 10) {
            recent.push(format!("{{\"n\":{i}}}").as_bytes());
        }
        let (all, last) = recent.since(0);
        assert_eq!(last, RECENT as u64 + 10);
        assert_eq!(all.len(), RECENT);
        assert_eq!(all[0].0, 11);
        assert_eq!(all[0].1, b"{\"n\":10}");
        assert!(all.windows(2).all(|w| w[0].0 + 1 == w[1].0));
        let (newer, _) = recent.since(last - 2);
        assert_eq!(
            newer.iter().map(|e| e.0).collect::<Vec<_>>(),
            [last - 1, last]
        );
        assert!(recent.since(last).0.is_empty());
        recent.push(&vec![b'x'; SLOT_BYTES + 1]);
        assert_eq!(recent.since(0).1, last, "too long: left out");
    }
}
