//! What the pipeline shows of the current frame: the tracks in it and whom they hold (the
//! API's live frame draws them).

use super::{CropEmbedder, Held, Pipeline};
use crate::frame::Rect;
use crate::gallery::LABEL_CAPACITY;

/// Tracks shown at most (the tracker's table is smaller on any sane configuration).
pub const MAX_SHOWN: usize = 64;

/// Whom a shown track holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ShownKind {
    /// No decision yet (too few good crops).
    #[default]
    Undecided,
    Known,
    /// A new identity this track made.
    New,
    Ambiguous,
    /// Nobody stored (the gallery was full of pinned identities).
    Unstored,
}

/// One track in the current frame.
#[derive(Clone, Debug, Default)]
pub struct Shown {
    pub track: u64,
    /// `[x, y, width, height]`, frame pixels.
    pub rect: [u32; 4],
    pub kind: ShownKind,
    /// The identity held (Known, New).
    pub id: Option<u32>,
    pub label: heapless::String<LABEL_CAPACITY>,
    /// Cosine to the identity (Known).
    pub similarity: Option<f32>,
    /// Seen by the detector in this frame (else carried by prediction).
    pub seen_now: bool,
}

impl<E: CropEmbedder> Pipeline<E> {
    /// The confirmed tracks of the current frame into `out` (cleared first); no allocation.
    pub fn shown(&self, out: &mut heapless::Vec<Shown, MAX_SHOWN>) {
        out.clear();
        for (slot, t) in self.tracker.tracks() {
            // A track missed by the detector for longer than between two detections is
            // coasting on its prediction: not shown.
            if !t.confirmed || t.missed > self.config.detect_every {
                continue;
            }
            let held = self.states[slot].held;
            let (kind, id, similarity) = match held {
                None => (ShownKind::Undecided, None, None),
                Some(Held::Known { id, similarity, .. }) => {
                    (ShownKind::Known, Some(id), Some(similarity))
                }
                Some(Held::New { id, .. }) => (ShownKind::New, Some(id), None),
                Some(Held::Ambiguous { .. }) => (ShownKind::Ambiguous, None, None),
                Some(Held::Unstored { .. }) => (ShownKind::Unstored, None, None),
            };
            let label = id
                .and_then(|id| self.gallery.get(id))
                .and_then(|i| i.label)
                .and_then(|l| heapless::String::try_from(l).ok())
                .unwrap_or_default();
            let Rect {
                x,
                y,
                width,
                height,
            } = t.rect;
            let row = Shown {
                track: t.id,
                rect: [x, y, width, height],
                kind,
                id: id.map(|i| i.0),
                label,
                similarity,
                seen_now: t.seen_now,
            };
            if out.push(row).is_err() {
                break;
            }
        }
    }
}
