//! A light IoU tracker: detections of consecutive frames are associated greedily by overlap, so
//! that one person walking through the scene is one track. A track is *confirmed* after
//! `confirm_frames` hits and *ends* after `max_missed` frames without a detection.
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
    /// Frames without a detection before a track ends.
    pub max_missed: u32,
    /// Tracks followed at once; further people are ignored until a slot frees.
    pub max_tracks: usize,
    /// Every this many frames of a track, its best crop of the window is embedded.
    pub embed_every: u32,
    /// Crops shorter than this (pixels) are not embedded.
    pub min_crop_height: u32,
    /// A crop whose embedding has a cosine below this to its track's mean is someone else (a
    /// person taking another's place between two frames): the track is split. 0 disables.
    pub split_below: f32,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            iou_threshold: 0.3,
            confirm_frames: 3,
            max_missed: 8,
            max_tracks: 16,
            embed_every: 5,
            min_crop_height: 64,
            split_below: 0.75,
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
        if !(0.0..=1.0).contains(&self.split_below) {
            return Err(format!(
                "tracker.split_below is {}: expected 0..1",
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

/// One followed person.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Track {
    pub id: u64,
    pub rect: Rect,
    pub score: f32,
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

    /// Advances one frame: continues tracks with overlapping detections (best overlaps first),
    /// starts tracks for the rest, ends tracks missed for too long. Ended tracks stay readable
    /// (change `Ended`) until the next update.
    pub fn update(&mut self, frame: u64, detections: &Detections) {
        for (slot, change) in self.slots.iter_mut().zip(self.changes.iter_mut()) {
            if *change == SlotChange::Ended {
                *slot = None;
            }
            *change = SlotChange::Unchanged;
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
        self.pairs
            .sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        self.used[..detections.len()].fill(false);
        for track in self.slots.iter_mut().flatten() {
            track.seen_now = false;
        }
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
            track.rect = detections[d].rect;
            track.score = detections[d].score;
            track.hits += 1;
            track.missed = 0;
            track.confirmed |= track.hits >= self.config.confirm_frames;
        }
        for (s, (slot, change)) in self
            .slots
            .iter_mut()
            .zip(self.changes.iter_mut())
            .enumerate()
        {
            let _ = s;
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
            self.slots[free] = Some(Track {
                id: self.next_id,
                rect: det.rect,
                score: det.score,
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
            tracker.update(u64::from(f), &dets(&[a, b]));
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
            tracker.update(f, &Detections::new());
        }
        let ended = (0..tracker.capacity())
            .filter(|&s| tracker.change(s) == SlotChange::Ended)
            .count();
        assert_eq!(ended, 2);
        tracker.update(23, &Detections::new());
        assert_eq!(tracker.tracks().count(), 0);
    }

    #[test]
    fn a_full_table_ignores_extra_people() {
        let mut tracker = Tracker::new(TrackerConfig {
            max_tracks: 2,
            ..TrackerConfig::default()
        })
        .unwrap();
        let people: Vec<Rect> = (0..4).map(|i| Rect::new(i * 100, 0, 50, 100)).collect();
        tracker.update(0, &dets(&people));
        assert_eq!(tracker.tracks().count(), 2);
        assert_eq!(tracker.started(), 2);
    }
}
