//! A light IoU tracker: detections are associated greedily by overlap with each track's box
//! predicted to the detection's frame (constant velocity), so that one person walking through the
//! scene is one track — also when the detector runs only every N-th frame and the tracker
//! carries the boxes in between ([`Tracker::predict`]). A track is *confirmed* after
//! `confirm_frames` hits and *ends* after `max_missed` detection rounds without a detection.
//!
//! Tracks live in a fixed table of `max_tracks` slots; the slot index lets the pipeline keep
//! per-track buffers (best crop, embedding sum) allocated once. Nothing allocates per frame.

use serde::{Deserialize, Serialize};

use crate::detect::{Detections, iou};
use crate::frame::Rect;

/// `[tracker]` settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrackerConfig {
    /// Least overlap (IoU) between a track's last box and a detection to continue the track.
    pub iou_threshold: f32,
    /// Hits before a track is confirmed (and matched against the gallery).
    pub confirm_frames: u32,
    /// Detection rounds without a detection before a track ends.
    pub max_missed: u32,
    /// Tracks followed at once; further people are ignored until a slot frees.
    pub max_tracks: usize,
    /// Every this many frames of a track, its best good crop of the window is embedded.
    pub embed_every: u32,
    /// A crop whose embedding has a cosine below this to its track's mean is someone else (a
    /// person taking another's place between two frames): the track is split. 0 disables;
    /// negative: the model manifest's `[matching] split_below`, else [`DEFAULT_SPLIT_BELOW`].
    pub split_below: f32,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            iou_threshold: 0.3,
            confirm_frames: 3,
            max_missed: 12,
            max_tracks: 16,
            embed_every: 3,
            split_below: -1.0,
        }
    }
}

impl TrackerConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..1.0).contains(&self.iou_threshold) {
            return Err(format!(
                "tracker.iou_threshold is {}: expected 0 ≤ x < 1",
                self.iou_threshold
            ));
        }
        for (name, v) in [
            ("confirm_frames", self.confirm_frames),
            ("embed_every", self.embed_every),
        ] {
            if v == 0 {
                return Err(format!("tracker.{name} must be at least 1"));
            }
        }
        if self.split_below.is_nan() || self.split_below > 1.0 {
            return Err(format!(
                "tracker.split_below is {}: expected 0..1 (negative: the model's)",
                self.split_below
            ));
        }
        if !(1..=256).contains(&self.max_tracks) {
            return Err(format!(
                "tracker.max_tracks is {}: expected 1..256",
                self.max_tracks
            ));
        }
        Ok(())
    }
}

/// `tracker.split_below` for a model whose manifest has none.
pub const DEFAULT_SPLIT_BELOW: f32 = 0.75;

/// One followed person.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Track {
    pub id: u64,
    /// The latest box: the detection's on a frame with one, else the prediction.
    pub rect: Rect,
    pub score: f32,
    /// Velocity of the box centre, pixels per frame (smoothed over detections).
    pub velocity: (f32, f32),
    /// Centre and frame of the latest detection.
    seen_at: (f32, f32, u64),
    /// Frames with a detection.
    pub hits: u32,
    /// Consecutive frames without one.
    pub missed: u32,
    pub confirmed: bool,
    /// Frame number of the first detection.
    pub first_frame: u64,
    /// Matched a detection in the latest frame.
    pub seen_now: bool,
}

/// Largest jump of a box centre, in box heights, that continues a track without overlap.
const MAX_SHIFT: f32 = 0.6;

fn centre(r: Rect) -> (f32, f32) {
    (
        r.x as f32 + r.width as f32 / 2.0,
        r.y as f32 + r.height as f32 / 2.0,
    )
}

/// What happened to a slot in the latest [`Tracker::update`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotChange {
    Unchanged,
    /// A new track took the slot this frame.
    Started,
    /// The slot's track ended this frame (it is still readable until the next update).
    Ended,
}

pub struct Tracker {
    config: TrackerConfig,
    slots: Vec<Option<Track>>,
    changes: Vec<SlotChange>,
    pairs: Vec<(f32, u16, u16)>,
    used: Vec<bool>,
    next_id: u64,
}

impl Tracker {
    pub fn new(config: TrackerConfig) -> Result<Self, String> {
        config.validate()?;
        let n = config.max_tracks;
        Ok(Tracker {
            slots: vec![None; n],
            changes: vec![SlotChange::Unchanged; n],
            pairs: Vec::with_capacity(n * crate::detect::MAX_DETECTIONS),
            used: vec![false; crate::detect::MAX_DETECTIONS],
            next_id: 1,
            config,
        })
    }

    pub fn config(&self) -> &TrackerConfig {
        &self.config
    }

    /// Number of slots (per-track buffers are sized by it).
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// The id the next track gets.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// Continues numbering from `next` (a pipeline rebuilt on reload keeps ids unique).
    pub fn set_next_id(&mut self, next: u64) {
        self.next_id = self.next_id.max(next);
    }

    /// Tracks started so far.
    pub fn started(&self) -> u64 {
        self.next_id - 1
    }

    pub fn track(&self, slot: usize) -> Option<&Track> {
        self.slots[slot].as_ref()
    }

    pub fn change(&self, slot: usize) -> SlotChange {
        self.changes[slot]
    }

    /// Live tracks with their slots.
    pub fn tracks(&self) -> impl Iterator<Item = (usize, &Track)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.as_ref().map(|t| (i, t)))
    }

    /// Advances one frame of `width × height`: continues tracks with overlapping detections
    /// (best overlaps first), starts tracks for the rest, ends tracks missed for too long. Ended
    /// tracks stay readable (change `Ended`) until the next update. A missed track's box is its
    /// prediction, kept inside the frame.
    pub fn update(&mut self, frame: u64, (width, height): (u32, u32), detections: &Detections) {
        self.clear_changes();
        self.move_to(frame, width, height);
        self.used[..detections.len()].fill(false);
        for track in self.slots.iter_mut().flatten() {
            track.seen_now = false;
        }
        self.pairs.clear();
        for (s, track) in self.slots.iter().enumerate() {
            let Some(track) = track else { continue };
            for (d, det) in detections.iter().enumerate() {
                let overlap = iou(track.rect, det.rect);
                if overlap >= self.config.iou_threshold && overlap > 0.0 {
                    self.pairs.push((overlap, s as u16, d as u16));
                }
            }
        }
        self.assign_pairs(frame, detections);
        // A second chance for what overlap did not pair: a detection near a track's predicted
        // centre (within `MAX_SHIFT` of its height) and of a similar height — a walker whose
        // velocity is not known yet, seen again after frames without detection.
        self.pairs.clear();
        for (s, track) in self.slots.iter().enumerate() {
            let Some(track) = track.as_ref().filter(|t| !t.seen_now) else {
                continue;
            };
            let (tx, ty) = centre(track.rect);
            let h = track.rect.height.max(1) as f32;
            for (d, det) in detections.iter().enumerate() {
                let (dx, dy) = centre(det.rect);
                let shift = (dx - tx).hypot(dy - ty) / h;
                let scale = det.rect.height as f32 / h;
                if !self.used[d] && shift < MAX_SHIFT && (0.7..=1.4).contains(&scale) {
                    self.pairs.push((1.0 - shift, s as u16, d as u16));
                }
            }
        }
        self.assign_pairs(frame, detections);
        for (slot, change) in self.slots.iter_mut().zip(self.changes.iter_mut()) {
            if let Some(track) = slot
                && !track.seen_now
            {
                track.missed += 1;
                if track.missed > self.config.max_missed {
                    *change = SlotChange::Ended;
                }
            }
        }
        for (d, det) in detections.iter().enumerate() {
            if self.used[d] {
                continue;
            }
            let Some(free) = self.slots.iter().position(Option::is_none) else {
                break;
            };
            let (cx, cy) = centre(det.rect);
            self.slots[free] = Some(Track {
                id: self.next_id,
                rect: det.rect,
                score: det.score,
                velocity: (0.0, 0.0),
                seen_at: (cx, cy, frame),
                hits: 1,
                missed: 0,
                confirmed: self.config.confirm_frames <= 1,
                first_frame: frame,
                seen_now: true,
            });
            self.changes[free] = SlotChange::Started;
            self.next_id += 1;
        }
    }

    /// Gives each pair's detection to its track, best pairs first, each at most once; a
    /// continued track takes the detection's box and score and updates its velocity.
    fn assign_pairs(&mut self, frame: u64, detections: &Detections) {
        self.pairs
            .sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        for &(_, s, d) in &self.pairs {
            let (s, d) = (usize::from(s), usize::from(d));
            let Some(track) = self.slots[s].as_mut() else {
                continue;
            };
            if track.seen_now || self.used[d] {
                continue;
            }
            self.used[d] = true;
            track.seen_now = true;
            let (cx, cy) = centre(detections[d].rect);
            let (px, py, pf) = track.seen_at;
            if frame > pf {
                let dt = (frame - pf) as f32;
                let (vx, vy) = ((cx - px) / dt, (cy - py) / dt);
                track.velocity = if track.hits == 1 {
                    (vx, vy)
                } else {
                    (0.5 * (track.velocity.0 + vx), 0.5 * (track.velocity.1 + vy))
                };
            }
            track.seen_at = (cx, cy, frame);
            track.rect = detections[d].rect;
            track.score = detections[d].score;
            track.hits += 1;
            track.missed = 0;
            track.confirmed |= track.hits >= self.config.confirm_frames;
        }
    }

    /// A frame without detections: every track's box moves with its velocity to `frame` (kept
    /// inside a `width × height` frame); nothing is hit, missed, started or ended.
    pub fn predict(&mut self, frame: u64, width: u32, height: u32) {
        self.clear_changes();
        self.move_to(frame, width, height);
        for track in self.slots.iter_mut().flatten() {
            track.seen_now = false;
        }
    }

    /// Ended tracks free their slots; every slot's change is reset.
    fn clear_changes(&mut self) {
        for (slot, change) in self.slots.iter_mut().zip(self.changes.iter_mut()) {
            if *change == SlotChange::Ended {
                *slot = None;
            }
            *change = SlotChange::Unchanged;
        }
    }

    /// Moves each track's box to where its velocity puts it at `frame`, kept inside a
    /// `width × height` frame (a person walking out stops at the edge: a box past it would be
    /// drawn, reported and cropped where there is no picture).
    fn move_to(&mut self, frame: u64, width: u32, height: u32) {
        for track in self.slots.iter_mut().flatten() {
            let (px, py, pf) = track.seen_at;
            let dt = frame.saturating_sub(pf) as f32;
            if dt == 0.0 {
                continue;
            }
            let (cx, cy) = (px + track.velocity.0 * dt, py + track.velocity.1 * dt);
            let r = &mut track.rect;
            r.width = r.width.min(width);
            r.height = r.height.min(height);
            r.x = ((cx - r.width as f32 / 2.0).round().max(0.0) as u32).min(width - r.width);
            r.y = ((cy - r.height as f32 / 2.0).round().max(0.0) as u32).min(height - r.height);
        }
    }

    /// Gives the track in `slot` a new id from `frame` on (same box, confirmed): the pipeline
    /// found a different person in it.
    pub fn split(&mut self, slot: usize, frame: u64) -> Track {
        let track = self.slots[slot].as_mut().expect("split of an empty slot");
        track.id = self.next_id;
        track.first_frame = frame;
        track.hits = self.config.confirm_frames;
        track.confirmed = true;
        self.next_id += 1;
        *track
    }

    /// Ends every live track (the stream ended); they stay readable until the next update.
    pub fn end_all(&mut self) {
        for (slot, change) in self.slots.iter().zip(self.changes.iter_mut()) {
            if slot.is_some() {
                *change = SlotChange::Ended;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::Detection;

    fn dets(rects: &[Rect]) -> Detections {
        rects
            .iter()
            .map(|&rect| Detection { rect, score: 0.9 })
            .collect()
    }

    #[test]
    fn two_walkers_keep_their_tracks_and_end_after_max_missed() {
        let mut tracker = Tracker::new(TrackerConfig {
            max_missed: 2,
            ..TrackerConfig::default()
        })
        .unwrap();
        // A walks right, B walks left; they cross at frames 10–12.
        let mut ids_a = Vec::new();
        let mut ids_b = Vec::new();
        for f in 0..20u32 {
            let a = Rect::new(10 + f * 8, 20, 40, 100);
            let b = Rect::new(300 - f * 8, 30, 40, 100);
            tracker.update(u64::from(f), (640, 480), &dets(&[a, b]));
            for (_, t) in tracker.tracks() {
                if t.rect == a {
                    ids_a.push(t.id);
                } else if t.rect == b {
                    ids_b.push(t.id);
                }
            }
        }
        // Each walker keeps one id except possibly across the crossing.
        ids_a.dedup();
        ids_b.dedup();
        assert_eq!(ids_a.first(), Some(&1));
        assert_eq!(ids_b.first(), Some(&2));
        assert!(ids_a.len() <= 2 && ids_b.len() <= 2, "{ids_a:?} {ids_b:?}");
        let confirmed = tracker.tracks().filter(|(_, t)| t.confirmed).count();
        assert_eq!(confirmed, 2);
        // Nobody for 3 frames: both end on the third.
        for f in 20..23 {
            tracker.update(f, (640, 480), &Detections::new());
        }
        let ended = (0..tracker.capacity())
            .filter(|&s| tracker.change(s) == SlotChange::Ended)
            .count();
        assert_eq!(ended, 2);
        tracker.update(23, (640, 480), &Detections::new());
        assert_eq!(tracker.tracks().count(), 0);
    }

    #[test]
    fn boxes_are_carried_between_detections_and_reassociated() {
        // A walker moving 12 px per frame, detected every 4th frame: 48 px between detections,
        // more than the box's width, so without prediction the IoU would be 0 and the track lost.
        let mut tracker = Tracker::new(TrackerConfig::default()).unwrap();
        let at = |f: u32| Rect::new(10 + f * 12, 50, 40, 100);
        let mut ids = Vec::new();
        for f in 0..24u32 {
            if f % 4 == 0 {
                tracker.update(u64::from(f), (640, 480), &dets(&[at(f)]));
            } else {
                tracker.predict(u64::from(f), 640, 480);
            }
            let (_, t) = tracker.tracks().next().expect("one track");
            ids.push(t.id);
            if f >= 5 {
                // the carried box stays on the walker
                assert!(
                    iou(t.rect, at(f)) > 0.8,
                    "frame {f}: {:?} vs {:?}",
                    t.rect,
                    at(f)
                );
            }
        }
        assert!(ids.iter().all(|&id| id == 1), "{ids:?}");
        // Predictions stay inside the frame.
        tracker.predict(200, 640, 480);
        let (_, t) = tracker.tracks().next().unwrap();
        assert!(t.rect.x + t.rect.width <= 640, "{:?}", t.rect);
    }

    /// A walker leaving through the right edge: the missed rounds' predicted boxes stay inside
    /// the frame (they are reported in the leave event and drawn on the live view).
    #[test]
    fn a_walker_leaving_the_frame_is_not_predicted_past_its_edge() {
        let mut tracker = Tracker::new(TrackerConfig::default()).unwrap();
        for f in 0..10u32 {
            let r = Rect::new(500 + f * 10, 100, 40, 100);
            tracker.update(u64::from(f), (640, 480), &dets(&[r]));
        }
        for f in 10..14 {
            tracker.update(f, (640, 480), &Detections::new());
            let (_, t) = tracker.tracks().next().expect("still tracked");
            assert!(t.rect.x + t.rect.width <= 640, "frame {f}: {:?}", t.rect);
            assert_eq!((t.rect.width, t.rect.height), (40, 100));
        }
    }

    #[test]
    fn a_full_table_ignores_extra_people() {
        let mut tracker = Tracker::new(TrackerConfig {
            max_tracks: 2,
            ..TrackerConfig::default()
        })
        .unwrap();
        let people: Vec<Rect> = (0..4).map(|i| Rect::new(i * 100, 0, 50, 100)).collect();
        tracker.update(0, (640, 480), &dets(&people));
        assert_eq!(tracker.tracks().count(), 2);
        assert_eq!(tracker.started(), 2);
    }
}
