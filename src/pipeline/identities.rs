//! Identities taken away from the tracks holding them, between frames: erased (the API, a
//! peer camera) or merged into another (shared identities).

use super::{CropEmbedder, Held, Pipeline};
use crate::events::{Event, EventKind, Identity};
use crate::gallery::{PersonId, Timestamp};

impl<E: CropEmbedder> Pipeline<E> {
    /// `id` was erased: tracks holding it keep no identity until they leave (their
    /// embeddings came from before the erasure; they neither bring it back nor make a new one).
    pub fn release(&mut self, id: PersonId) {
        for s in &mut self.states {
            if s.created == Some(id) {
                s.created = None;
            }
            if s.held.and_then(|h| h.id()) == Some(id) {
                s.held = Some(Held::Unstored { closest: None });
            }
        }
    }

    /// `from` was merged into `into` (shared identities, [`crate::mqtt::share`]) and is gone
    /// from the gallery: the tracks naming it name `into` now (an `update` event each, for
    /// tracks that entered), and a `merge` event says so. Between frames.
    pub fn merged(&mut self, from: PersonId, into: PersonId, similarity: Option<f32>) {
        let (frame, stream_time) = self.last_frame;
        for slot in 0..self.states.len() {
            let s = &mut self.states[slot];
            if s.created == Some(from) {
                s.created = None;
            }
            let was = match s.held {
                Some(h) if h.id() != Some(from) => continue,
                Some(Held::Known { similarity, .. }) => similarity,
                Some(_) => similarity.unwrap_or(0.0),
                None => continue,
            };
            s.held = Some(Held::Known {
                id: into,
                similarity: was,
                runner_up: None,
            });
            if s.entered && self.tracker.track(slot).is_some() {
                let _ = self.emit(EventKind::Update, slot, frame, stream_time, "");
            }
        }
        let event = Event {
            event: EventKind::Merge,
            camera: &self.config.camera,
            track: 0,
            time: Timestamp::now(),
            stream_ms: stream_time.as_millis() as u64,
            frame,
            frame_name: "",
            bbox: [0; 4],
            identity: Identity::Merged {
                id: into,
                label: self.gallery.get(into).and_then(|i| i.label),
                merged: from,
                similarity,
            },
            first_seen: Timestamp::now(),
            frames_seen: 0,
            embeddings: 0,
            crop: None,
            pixels: None,
        };
        if let Err(e) = self.sink.emit(&event) {
            self.stats.events_failed += 1;
            log::error!("events: cannot write the merge of {from} into {into}: {e}");
        }
        self.stats.events += 1;
        self.dirty = true;
    }
}
