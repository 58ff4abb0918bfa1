//! The per-frame path, wired in one place: detect (every N-th frame; the tracker carries the
//! boxes in between) → track → (best good crop per track and window: `quality`) → preprocess →
//! embed → aggregate per track → gallery decision (after `min_crops` good crops) → events.
//!
//! Every buffer is made in [`Pipeline::new`]: detections, the tracker's table, one resized crop
//! and one embedding sum per track slot, the query buffer, the gallery arena and the event line.
//! Per frame our code allocates nothing (a counting-allocator test holds us to it); tract and
//! the decoders keep their own working memory.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::detect::{DetectError, Detections, Detector};
use crate::embed::{EmbedError, Embedder};
use crate::events::{self, Event, EventKind, EventSink, Identity};
use crate::frame::RgbView;
use crate::gallery::{
    Decision, Gallery, GalleryError, NewIdentity, Observation, PersonId, Timestamp,
};
use crate::manifest::InputSpec;
use crate::preprocess::Preprocessor;
use crate::quality::{CropGate, Rejections};
use crate::track::{SlotChange, Tracker};

/// The embedding model as the pipeline sees it: one crop at a time. `Embedder` is the real one;
/// tests may put a fake behind it.
pub trait CropEmbedder {
    fn input_spec(&self) -> &InputSpec;
    fn dim(&self) -> usize;
    /// The input to fill (`3 × H × W`).
    fn input(&mut self) -> &mut [f32];
    /// Runs on the input; the L2-normalised embedding.
    fn run(&mut self) -> Result<&[f32], EmbedError>;
}

impl CropEmbedder for Embedder {
    fn input_spec(&self) -> &InputSpec {
        &self.manifest().input
    }
    fn dim(&self) -> usize {
        Embedder::dim(self)
    }
    fn input(&mut self) -> &mut [f32] {
        self.input_slot(0)
    }
    fn run(&mut self) -> Result<&[f32], EmbedError> {
        Ok(Embedder::run(self, 1)?.row(0))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Detect(#[from] DetectError),
    #[error(transparent)]
    Embed(#[from] EmbedError),
    #[error("gallery: {0}")]
    Gallery(#[from] GalleryError),
    #[error("events: {0}")]
    Events(#[from] std::io::Error),
    #[error("crop: {0}")]
    Crop(#[from] crate::frame::FrameError),
}

/// Time spent per stage, and counts, since start.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Stats {
    pub frames: u64,
    /// Frames the detector ran on.
    pub detector_runs: u64,
    pub detections: u64,
    /// Detections of tracks that were not embedded, by reason (`quality`).
    pub crops_rejected: Rejections,
    pub tracks: u64,
    pub crops_embedded: u64,
    pub identities_new: u64,
    pub matches_known: u64,
    pub ambiguous: u64,
    pub events: u64,
    /// Events the sink could not take (disk full, …): counted and logged, the camera runs on.
    pub events_failed: u64,
    pub enrolled: u64,
    #[serde(serialize_with = "secs")]
    pub detect: Duration,
    #[serde(serialize_with = "secs")]
    pub track: Duration,
    #[serde(serialize_with = "secs")]
    pub embed: Duration,
    #[serde(serialize_with = "secs")]
    pub gallery: Duration,
    #[serde(serialize_with = "secs")]
    pub events_time: Duration,
}

/// Time by stage of a frame, or its mean over frames, in milliseconds.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct StageMs {
    pub capture: f64,
    pub detect: f64,
    pub track: f64,
    pub embed: f64,
    pub gallery: f64,
    pub events: f64,
    pub total: f64,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// The identity a track holds.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Held {
    Known {
        id: PersonId,
        similarity: f32,
        runner_up: Option<events::Candidate>,
    },
    New {
        id: PersonId,
        closest: Option<events::Candidate>,
    },
    Ambiguous {
        best: events::Candidate,
        runner_up: events::Candidate,
    },
    Unstored {
        closest: Option<events::Candidate>,
    },
}

impl Held {
    fn id(&self) -> Option<PersonId> {
        match *self {
            Held::Known { id, .. } | Held::New { id, .. } => Some(id),
            _ => None,
        }
    }
}

/// What the pipeline keeps per track slot.
struct TrackState {
    crop: Vec<u8>,
    /// Quality of the crop held for this window (None: no crop yet).
    crop_quality: Option<f32>,
    /// Frame of the latest embedding.
    last_embed: Option<u64>,
    sum: Vec<f32>,
    embeddings: u32,
    held: Option<Held>,
    /// The provisional identity this track created (replaced if it later matches someone).
    created: Option<PersonId>,
    first_seen: Timestamp,
    /// The enter event went out.
    entered: bool,
}

/// What one frame did, for the daemon's board I/O.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameOutcome {
    /// A track was recognised as a known identity this frame.
    pub recognised: bool,
}

/// Static settings of the pipeline.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    pub camera: String,
    /// Save the best crop of each entering track here as JPEG.
    pub crops_dir: Option<PathBuf>,
    /// Run the detector on every this many frames (1: all).
    pub detect_every: u32,
}

pub struct Pipeline<E> {
    config: PipelineConfig,
    detector: Box<dyn Detector>,
    tracker: Tracker,
    gate: CropGate,
    pre: Preprocessor,
    embedder: E,
    gallery: Gallery,
    sink: Box<dyn EventSink>,
    detections: Detections,
    states: Vec<TrackState>,
    query: Vec<f32>,
    /// The latest crop's embedding.
    latest: Vec<f32>,
    crop_path: PathBuf,
    /// When this pipeline started: part of crop file names.
    run_started: Timestamp,
    stats: Stats,
    /// The gallery changed since the last [`Pipeline::mark_saved`].
    dirty: bool,
}

impl<E: CropEmbedder> Pipeline<E> {
    /// `frame_size` is the source's: buffers are sized for crops of up to the whole frame.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: PipelineConfig,
        detector: Box<dyn Detector>,
        tracker: Tracker,
        gate: CropGate,
        embedder: E,
        gallery: Gallery,
        sink: Box<dyn EventSink>,
        frame_size: (u32, u32),
    ) -> Self {
        let pre = Preprocessor::with_max_source(embedder.input_spec(), frame_size.0, frame_size.1);
        let dim = embedder.dim();
        let states = (0..tracker.capacity())
            .map(|_| TrackState {
                crop: vec![0; pre.resized_len()],
                crop_quality: None,
                last_embed: None,
                sum: vec![0.0; dim],
                embeddings: 0,
                held: None,
                created: None,
                first_seen: Timestamp(0),
                entered: false,
            })
            .collect();
        Pipeline {
            config,
            detector,
            tracker,
            gate,
            pre,
            embedder,
            gallery,
            sink,
            detections: Detections::new(),
            states,
            query: vec![0.0; dim],
            latest: vec![0.0; dim],
            crop_path: PathBuf::with_capacity(256),
            run_started: Timestamp::now(),
            stats: Stats::default(),
            dirty: false,
        }
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn gallery(&self) -> &Gallery {
        &self.gallery
    }

    pub fn gallery_mut(&mut self) -> &mut Gallery {
        &mut self.gallery
    }

    /// The id the next track gets; [`set_next_track_id`](Self::set_next_track_id) carries it
    /// into a pipeline rebuilt on reload so that track ids stay unique for the run.
    pub fn next_track_id(&self) -> u64 {
        self.tracker.next_id()
    }

    pub fn set_next_track_id(&mut self, next: u64) {
        self.tracker.set_next_id(next);
    }

    pub fn camera(&self) -> &String {
        &self.config.camera
    }

    pub fn detector_description(&self) -> String {
        self.detector.describe()
    }

    /// Runs the detector on every `n`-th frame from now on (at least 1).
    pub fn set_detect_every(&mut self, n: u32) {
        self.config.detect_every = n.max(1);
    }

    pub fn detect_every(&self) -> u32 {
        self.config.detect_every
    }

    /// True when the gallery changed since the last save.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// The gallery was changed from outside (shared identities): save it.
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    pub fn mark_saved(&mut self) {
        self.dirty = false;
    }

    pub fn flush_events(&mut self) -> std::io::Result<()> {
        self.sink.flush()
    }

    /// Runs one frame through detection, tracking, embedding, matching and events.
    pub fn process(
        &mut self,
        image: RgbView<'_>,
        frame: u64,
        stream_time: Duration,
        frame_name: &str,
    ) -> Result<FrameOutcome, PipelineError> {
        let started = Instant::now();
        let (fw, fh) = (image.width(), image.height());
        let detect_now = frame.is_multiple_of(u64::from(self.config.detect_every.max(1)));
        if detect_now {
            self.detector.detect(image, &mut self.detections)?;
            self.stats.detector_runs += 1;
        } else {
            self.detections.clear();
        }
        let detected = Instant::now();
        let others_before = self.stats.embed + self.stats.gallery + self.stats.events_time;
        self.stats.detect += detected - started;
        self.stats.frames += 1;
        self.stats.detections += self.detections.len() as u64;
        if detect_now {
            self.tracker.update(frame, &self.detections);
        } else {
            self.tracker.predict(frame, fw, fh);
        }
        let mut outcome = FrameOutcome::default();
        let embed_every = u64::from(self.tracker.config().embed_every);
        let min_crops = self.gate.config().min_crops;
        let crop_width = self.pre.width();
        for slot in 0..self.tracker.capacity() {
            let change = self.tracker.change(slot);
            let Some(&track) = self.tracker.track(slot) else {
                continue;
            };
            if change == SlotChange::Started {
                self.stats.tracks += 1;
                let s = &mut self.states[slot];
                s.crop_quality = None;
                s.last_embed = None;
                s.sum.fill(0.0);
                s.embeddings = 0;
                s.held = None;
                s.created = None;
                s.first_seen = Timestamp::now();
                s.entered = false;
            }
            if change == SlotChange::Ended {
                log::debug!(
                    "track {} ended at frame {frame}: {} hits, confirmed {}, {} embeddings, last box {}",
                    track.id,
                    track.hits,
                    track.confirmed,
                    self.states[slot].embeddings,
                    track.rect
                );
                if self.states[slot].held.is_some() {
                    self.emit(EventKind::Leave, slot, frame, stream_time, frame_name)?;
                }
                continue;
            }
            // Keep the window's best good crop (quality::CropGate): tall and confident.
            if track.seen_now {
                let det = crate::detect::Detection {
                    rect: track.rect,
                    score: track.score,
                };
                let checked = self
                    .gate
                    .check_box(&det, (fw, fh), &self.detections)
                    .and_then(|()| {
                        let resized = self.pre.resize(image, track.rect).map_err(|e| {
                            log::warn!("crop {}: {e}", track.rect);
                            crate::quality::Rejection::Small
                        })?;
                        self.gate
                            .check_sharpness(resized, crop_width)
                            .map(|_| resized)
                    });
                match checked {
                    Ok(resized) => {
                        let quality = track.rect.height as f32 * track.score;
                        let s = &mut self.states[slot];
                        if s.crop_quality.is_none_or(|q| quality > q) {
                            s.crop.copy_from_slice(resized);
                            s.crop_quality = Some(quality);
                        }
                    }
                    Err(why) => self.stats.crops_rejected.count(why),
                }
            }
            // A good crop, and the window since the last embedding is over: embed it.
            let due = self.states[slot]
                .last_embed
                .is_none_or(|last| frame.saturating_sub(last) >= embed_every);
            if due && self.states[slot].crop_quality.is_some() {
                let mut track = track;
                let cos = self.embed(slot)?;
                // Someone else stepped into this track's place (a cosine to the track's mean
                // below `tracker.split_below`): the old track leaves, the new person gets a
                // track of their own (confirmed: the box is established).
                let split = cos.is_some_and(|c| c < self.tracker.config().split_below);
                if split {
                    log::debug!(
                        "track {} split at frame {frame}: a different person",
                        track.id
                    );
                    if self.states[slot].held.is_some() {
                        self.emit(EventKind::Leave, slot, frame, stream_time, frame_name)?;
                    }
                    track = self.tracker.split(slot, frame);
                    self.stats.tracks += 1;
                    let s = &mut self.states[slot];
                    s.held = None;
                    s.created = None;
                    s.first_seen = Timestamp::now();
                    s.entered = false;
                }
                self.states[slot].last_embed = Some(frame);
                self.accumulate(slot, split);
                if track.confirmed
                    && self.states[slot].embeddings >= min_crops
                    && self.decide(slot)?
                {
                    outcome.recognised |=
                        matches!(self.states[slot].held, Some(Held::Known { .. }));
                    let kind = if self.states[slot].entered {
                        EventKind::Update
                    } else {
                        EventKind::Enter
                    };
                    self.emit(kind, slot, frame, stream_time, frame_name)?;
                    self.states[slot].entered = true;
                }
            }
        }
        // Tracking and crop selection: what is left of the frame after the other stages.
        let others = self.stats.embed + self.stats.gallery + self.stats.events_time;
        self.stats.track += detected.elapsed().saturating_sub(others - others_before);
        Ok(outcome)
    }

    /// Embeds the slot's held crop into `latest`; returns its cosine to the track's mean so far
    /// (None for the first crop).
    fn embed(&mut self, slot: usize) -> Result<Option<f32>, PipelineError> {
        let started = Instant::now();
        let s = &mut self.states[slot];
        self.pre.normalise_into(&s.crop, self.embedder.input());
        let embedding = self.embedder.run()?;
        self.latest.copy_from_slice(embedding);
        s.crop_quality = None;
        let cos = (s.embeddings > 0).then(|| crate::embed::cosine(&s.sum, &self.latest));
        self.stats.crops_embedded += 1;
        self.stats.embed += started.elapsed();
        Ok(cos)
    }

    /// Adds `latest` to the track's sum (or restarts the sum from it).
    fn accumulate(&mut self, slot: usize, restart: bool) {
        let s = &mut self.states[slot];
        if restart {
            s.sum.copy_from_slice(&self.latest);
            s.embeddings = 1;
        } else {
            for (acc, v) in s.sum.iter_mut().zip(&self.latest) {
                *acc += v;
            }
            s.embeddings += 1;
        }
    }

    /// Decides who the track is from its aggregated embedding; true if that is news (first
    /// decision, or a different one).
    fn decide(&mut self, slot: usize) -> Result<bool, PipelineError> {
        let started = Instant::now();
        let s = &mut self.states[slot];
        if !unit_mean(&s.sum, &mut self.query) {
            return Ok(false);
        }
        let now = Timestamp::now();
        let news = match s.held {
            None => {
                let held = match self.gallery.observe(&self.query, now)? {
                    Observation::Known { best, .. } => {
                        self.stats.matches_known += 1;
                        Held::Known {
                            id: best.id,
                            similarity: best.similarity.0,
                            runner_up: None,
                        }
                    }
                    Observation::New { id, .. } => {
                        self.stats.identities_new += 1;
                        s.created = Some(id);
                        Held::New { id, closest: None }
                    }
                    Observation::Ambiguous { best, runner_up } => {
                        self.stats.ambiguous += 1;
                        Held::Ambiguous {
                            best: best.into(),
                            runner_up: runner_up.into(),
                        }
                    }
                    Observation::Unstored { best } => Held::Unstored {
                        closest: best.map(Into::into),
                    },
                };
                self.dirty = true;
                s.held = Some(held);
                true
            }
            Some(held) => match self.gallery.decide(&self.query)? {
                Decision::Match { best, .. } if Some(best.id) == held.id() => {
                    // Still the same person: a new view of them for the gallery.
                    self.gallery.refresh(best.id, &self.query, now)?;
                    self.dirty = true;
                    false
                }
                Decision::Match { best, runner_up } => {
                    // Someone else after all (or an undecided track resolved).
                    if let Some(created) = s.created.take()
                        && created != best.id
                    {
                        // The provisional identity this track made was a duplicate.
                        let _ = self.gallery.remove(created);
                    }
                    self.gallery.refresh(best.id, &self.query, now)?;
                    self.dirty = true;
                    self.stats.matches_known += 1;
                    s.held = Some(Held::Known {
                        id: best.id,
                        similarity: best.similarity.0,
                        runner_up: runner_up.map(Into::into),
                    });
                    true
                }
                Decision::Unknown { best } if held.id().is_none() => {
                    // Undecided until now, and clearly nobody known: a new identity.
                    let new = NewIdentity {
                        label: None,
                        pinned: false,
                        now,
                    };
                    match self.gallery.insert(&self.query, new) {
                        Ok((id, _)) => {
                            self.stats.identities_new += 1;
                            s.created = Some(id);
                            s.held = Some(Held::New {
                                id,
                                closest: best.map(Into::into),
                            });
                            self.dirty = true;
                            true
                        }
                        // No room or no id left: the track stays unknown, the run goes on.
                        Err(GalleryError::FullOfPinned { .. } | GalleryError::IdsExhausted) => {
                            false
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                // Ambiguous or unknown for a track that already has an identity: keep it.
                _ => false,
            },
        };
        self.stats.gallery += started.elapsed();
        Ok(news)
    }

    fn emit(
        &mut self,
        kind: EventKind,
        slot: usize,
        frame: u64,
        stream_time: Duration,
        frame_name: &str,
    ) -> Result<(), PipelineError> {
        let started = Instant::now();
        let Some(track) = self.tracker.track(slot) else {
            return Ok(());
        };
        let s = &self.states[slot];
        let Some(held) = s.held else { return Ok(()) };
        let label_of = |id: PersonId| self.gallery.get(id).and_then(|i| i.label);
        let identity = match held {
            Held::Known {
                id,
                similarity,
                runner_up,
            } => Identity::Known {
                id,
                label: label_of(id),
                similarity,
                runner_up,
            },
            Held::New { id, closest } => Identity::New { id, closest },
            Held::Ambiguous { best, runner_up } => Identity::Ambiguous { best, runner_up },
            Held::Unstored { closest } => Identity::Unstored { closest },
        };
        let crop = match (&self.config.crops_dir, kind) {
            (Some(dir), EventKind::Enter | EventKind::Enrol) => {
                use std::fmt::Write as _;
                let what = if kind == EventKind::Enrol {
                    "enrol"
                } else {
                    "enter"
                };
                // camera (≤ 64 checked characters) - run start (ms) - track: unique across
                // restarts, so a crop an older event names is never overwritten.
                let mut name = heapless::String::<128>::new();
                let named = write!(
                    name,
                    "{}-{}-track{}-{what}.jpg",
                    self.config.camera, self.run_started.0, track.id
                );
                self.crop_path.clear();
                self.crop_path.push(dir);
                self.crop_path.push(name.as_str());
                let spec = self.embedder.input_spec();
                let written = match named {
                    Ok(()) => write_jpeg(&self.crop_path, &s.crop, spec.width, spec.height),
                    Err(_) => Err(std::io::Error::other("file name too long")),
                };
                match written {
                    Ok(()) => Some(self.crop_path.as_path()),
                    Err(e) => {
                        log::warn!("{}: cannot save the crop: {e}", self.crop_path.display());
                        None
                    }
                }
            }
            _ => None,
        };
        let r = track.rect;
        let event = Event {
            event: kind,
            camera: &self.config.camera,
            track: track.id,
            time: Timestamp::now(),
            stream_ms: stream_time.as_millis() as u64,
            frame,
            frame_name,
            bbox: [r.x, r.y, r.width, r.height],
            identity,
            first_seen: s.first_seen,
            frames_seen: track.hits,
            embeddings: s.embeddings,
            crop,
        };
        // Events are best-effort beside the frame loop: a full disk must not stop the camera
        // (nor a restart loop under systemd). Counted, and logged at the 1st, 2nd, 4th, 8th….
        if let Err(e) = self.sink.emit(&event) {
            self.stats.events_failed += 1;
            let n = self.stats.events_failed;
            if n.is_power_of_two() {
                log::error!("events: cannot write an event: {e} ({n} lost so far)");
            }
        }
        self.stats.events += 1;
        self.stats.events_time += started.elapsed();
        Ok(())
    }

    /// Every track leaves: the stream ended, or (for a directory of stills, where each image is
    /// its own scene) the frame is done.
    pub fn finish(
        &mut self,
        frame: u64,
        stream_time: Duration,
        frame_name: &str,
    ) -> Result<(), PipelineError> {
        self.tracker.end_all();
        for slot in 0..self.tracker.capacity() {
            if self.tracker.change(slot) == SlotChange::Ended && self.states[slot].held.is_some() {
                self.emit(EventKind::Leave, slot, frame, stream_time, frame_name)?;
            }
        }
        self.sink.flush()?;
        Ok(())
    }

    /// Enrols the current track (confirmed, seen in this frame, the tallest) as a pinned
    /// identity; returns its id, or None if no track has an embedding yet.
    pub fn enrol_current(
        &mut self,
        label: Option<&str>,
        frame: u64,
        stream_time: Duration,
    ) -> Result<Option<PersonId>, PipelineError> {
        let best = self
            .tracker
            .tracks()
            .filter(|(slot, t)| t.confirmed && t.seen_now && self.states[*slot].embeddings > 0)
            .max_by_key(|(_, t)| t.rect.height)
            .map(|(slot, _)| slot);
        let Some(slot) = best else { return Ok(None) };
        let s = &mut self.states[slot];
        if !unit_mean(&s.sum, &mut self.query) {
            return Ok(None);
        }
        if let Some(created) = s.created.take() {
            let _ = self.gallery.remove(created);
        }
        let new = NewIdentity {
            label,
            pinned: true,
            now: Timestamp::now(),
        };
        let (id, _) = self.gallery.insert(&self.query, new)?;
        s.held = Some(Held::Known {
            id,
            similarity: 1.0,
            runner_up: None,
        });
        self.dirty = true;
        self.stats.enrolled += 1;
        self.emit(EventKind::Enrol, slot, frame, stream_time, "")?;
        self.states[slot].entered = true;
        Ok(Some(id))
    }
}

/// The direction of a track's embedding sum (its mean, L2-normalised) into `out`; false if the
/// sum is zero or not finite.
fn unit_mean(sum: &[f32], out: &mut [f32]) -> bool {
    let norm = crate::embed::dot(sum, sum).sqrt();
    if norm == 0.0 || !norm.is_finite() {
        return false;
    }
    for (o, v) in out.iter_mut().zip(sum) {
        *o = v / norm;
    }
    true
}

/// Writes an RGB8 image as JPEG (quality 90) to a new file of mode 0600 (a crop shows a
/// person): never through a symlink, never over an existing file.
fn write_jpeg(path: &std::path::Path, rgb: &[u8], width: u32, height: u32) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let encoded = std::panic::catch_unwind(|| -> std::io::Result<Vec<u8>> {
        let mut c = mozjpeg::Compress::new(mozjpeg::ColorSpace::JCS_RGB);
        c.set_size(width as usize, height as usize);
        c.set_quality(90.0);
        let mut started = c.start_compress(Vec::new())?;
        started.write_scanlines(rgb)?;
        started.finish()
    })
    .map_err(|_| std::io::Error::other("JPEG encoder failed"))??;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?; // create_new: O_CREAT | O_EXCL, which fails on any existing name, symlinks too
    file.write_all(&encoded)?;
    file.sync_data()
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use super::*;
    use crate::detect::{DetectError, Detection};
    use crate::frame::{Rect, RgbImage};
    use crate::gallery::{GalleryConfig, MatchPolicy, StorageFormat};
    use crate::manifest::{ChannelOrder, IMAGENET_MEAN, IMAGENET_STD};
    use crate::quality::QualityConfig;
    use crate::track::TrackerConfig;

    /// Boxes given per frame by the test.
    struct Scripted(Rc<RefCell<Vec<Detection>>>);

    impl Detector for Scripted {
        fn detect(&mut self, _: RgbView<'_>, out: &mut Detections) -> Result<(), DetectError> {
            out.clear();
            out.extend(self.0.borrow().iter().copied());
            Ok(())
        }
        fn describe(&self) -> String {
            "scripted".into()
        }
    }

    /// Embeds a crop as its mean colour, one-hot-ish: people of different colours differ.
    struct MeanColour {
        spec: InputSpec,
        input: Vec<f32>,
        out: Vec<f32>,
    }

    impl CropEmbedder for MeanColour {
        fn input_spec(&self) -> &InputSpec {
            &self.spec
        }
        fn dim(&self) -> usize {
            3
        }
        fn input(&mut self) -> &mut [f32] {
            &mut self.input
        }
        fn run(&mut self) -> Result<&[f32], EmbedError> {
            let plane = self.input.len() / 3;
            for (c, o) in self.out.iter_mut().enumerate() {
                let mean: f32 = self.input[c * plane..(c + 1) * plane].iter().sum::<f32>();
                *o = (mean / plane as f32 + 3.0).max(0.0);
            }
            let n = crate::embed::dot(&self.out, &self.out).sqrt();
            self.out.iter_mut().for_each(|v| *v /= n);
            Ok(&self.out)
        }
    }

    #[derive(Default)]
    struct Recorded(Rc<RefCell<Vec<(EventKind, u64, u32)>>>);

    impl EventSink for Recorded {
        fn emit(&mut self, e: &Event<'_>) -> std::io::Result<()> {
            self.0.borrow_mut().push((e.event, e.frame, e.embeddings));
            Ok(())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    type Events = Rc<RefCell<Vec<(EventKind, u64, u32)>>>;

    fn pipeline(boxes: Rc<RefCell<Vec<Detection>>>) -> (Pipeline<MeanColour>, Events) {
        let spec = InputSpec {
            name: "x".into(),
            height: 64,
            width: 32,
            channel_order: ChannelOrder::Rgb,
            pixel_divisor: 255.0,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        };
        let embedder = MeanColour {
            input: vec![0.0; 3 * 64 * 32],
            out: vec![0.0; 3],
            spec,
        };
        let gallery = Gallery::with_budget(
            GalleryConfig {
                dim: 3,
                exemplars: 4,
                format: StorageFormat::F32,
                budget_bytes: 1 << 16,
            },
            MatchPolicy {
                threshold: 0.99,
                ..MatchPolicy::default()
            },
        )
        .unwrap();
        let tracker = Tracker::new(TrackerConfig {
            confirm_frames: 2,
            embed_every: 1,
            split_below: 0.0,
            ..TrackerConfig::default()
        })
        .unwrap();
        let quality = QualityConfig {
            min_height: 40,
            min_sharpness: 0.0,
            min_crops: 4,
            ..QualityConfig::default()
        };
        let events = Events::default();
        let p = Pipeline::new(
            PipelineConfig {
                camera: "t".into(),
                crops_dir: None,
                detect_every: 1,
            },
            Box::new(Scripted(boxes)),
            tracker,
            CropGate::new(quality, crate::quality::BoxSource::Model),
            embedder,
            gallery,
            Box::new(Recorded(events.clone())),
            (320, 180),
        );
        (p, events)
    }

    fn frame() -> RgbImage {
        let mut img = RgbImage::black(320, 180).unwrap();
        // A red person at x 100..140, a green one at x 200..240.
        for (y, row) in img.as_bytes_mut().chunks_exact_mut(320 * 3).enumerate() {
            for (x, px) in row.chunks_exact_mut(3).enumerate() {
                if (20..140).contains(&y) && (100..140).contains(&x) {
                    px.copy_from_slice(&[200, 30, 30]);
                } else if (20..140).contains(&y) && (200..240).contains(&x) {
                    px.copy_from_slice(&[30, 200, 30]);
                }
            }
        }
        img
    }

    #[test]
    fn a_track_is_decided_only_after_min_crops_good_crops() {
        let person = Detection {
            rect: Rect::new(100, 20, 40, 120),
            score: 0.9,
        };
        let boxes = Rc::new(RefCell::new(vec![person]));
        let (mut p, events) = pipeline(boxes.clone());
        let img = frame();
        for f in 0..10 {
            p.process(img.view(), f, Duration::ZERO, "").unwrap();
        }
        let e = events.borrow().clone();
        // embedded from frame 0 on, confirmed at frame 1, decided at the 4th crop: frame 3
        assert_eq!(e, vec![(EventKind::Enter, 3, 4)]);
        assert_eq!(p.stats().crops_embedded, 10);
        assert_eq!(p.gallery().len(), 1);
    }

    #[test]
    fn crops_that_fail_the_gate_are_never_embedded_nor_make_identities() {
        // Cut by the left edge, low score, and two people overlapping: nothing is embedded.
        let cut = Detection {
            rect: Rect::new(0, 20, 40, 120),
            score: 0.9,
        };
        let faint = Detection {
            rect: Rect::new(200, 20, 40, 120),
            score: 0.4,
        };
        let boxes = Rc::new(RefCell::new(vec![cut, faint]));
        let (mut p, events) = pipeline(boxes.clone());
        let img = frame();
        for f in 0..10 {
            p.process(img.view(), f, Duration::ZERO, "").unwrap();
        }
        *boxes.borrow_mut() = vec![
            Detection {
                rect: Rect::new(100, 20, 40, 120),
                score: 0.9,
            },
            Detection {
                rect: Rect::new(110, 20, 40, 120),
                score: 0.9,
            },
        ];
        for f in 10..20 {
            p.process(img.view(), f, Duration::ZERO, "").unwrap();
        }
        assert!(events.borrow().is_empty(), "{:?}", events.borrow());
        assert_eq!(p.stats().crops_embedded, 0);
        assert_eq!(p.gallery().len(), 0);
        let r = &p.stats().crops_rejected;
        assert_eq!((r.edge, r.score, r.overlap), (10, 10, 20), "{r:?}");
    }

    #[test]
    fn between_detections_boxes_are_carried_and_nothing_is_embedded() {
        let person = Detection {
            rect: Rect::new(100, 20, 40, 120),
            score: 0.9,
        };
        let boxes = Rc::new(RefCell::new(vec![person]));
        let (mut p, events) = pipeline(boxes);
        p.set_detect_every(3);
        let img = frame();
        for f in 0..30 {
            p.process(img.view(), f, Duration::ZERO, "").unwrap();
        }
        // detector on frames 0, 3, …, 27: ten runs, ten crops; decided at the 4th (frame 9)
        assert_eq!(p.stats().detector_runs, 10);
        assert_eq!(p.stats().crops_embedded, 10);
        assert_eq!(events.borrow().first(), Some(&(EventKind::Enter, 9, 4)));
    }
}
