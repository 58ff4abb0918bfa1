//! The per-frame path, wired in one place: detect (every N-th frame; the tracker carries the
//! boxes in between) → track → (best good crop per track and window: `quality`) → preprocess →
//! embed → aggregate per track → gallery decision (after `min_crops` good crops) → events.
//!
//! Every buffer is made in [`Pipeline::new`]: detections, the tracker's table, one resized crop
//! and one embedding sum per track slot, the query buffer, the gallery arena and the event line.
//! Per frame our code allocates nothing (counting-allocator tests hold us to it, the YOLOX
//! detector's network included: every node of it is one of our ops); the decoders keep their
//! own working memory.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::detect::{DetectError, Detections, Detector};
use crate::embed::{EmbedError, Embedder, SpinPool};
use crate::events::{self, EventKind, EventSink};
use crate::frame::RgbView;
use crate::gallery::{Gallery, GalleryError, PersonId, Timestamp};
use crate::manifest::InputSpec;
use crate::preprocess::Preprocessor;
use crate::quality::{CropGate, Rejections};
use crate::track::{SlotChange, Tracker};

mod decide;
mod emit;
mod enrol;
mod identities;
mod view;

use decide::unit_mean;

pub use enrol::NotEnrolled;
pub use view::{MAX_SHOWN, Shown, ShownKind};

/// The embedding model as the pipeline sees it: one crop at a time. `Embedder` is the real one;
/// tests may put a fake behind it.
pub trait CropEmbedder: Send {
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
    /// A picture offered for enrolment is not a usable view of a person (the message says why).
    #[error("{0}")]
    Picture(String),
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
    /// The held crop is chosen to be embedded: with `PipelineConfig::overlap`, while the
    /// detector runs on the next frame ([`Pipeline::process`]).
    pending: bool,
    /// The latest crop's embedding.
    latest: Vec<f32>,
    sum: Vec<f32>,
    embeddings: u32,
    held: Option<Held>,
    /// The provisional identity this track created (replaced if it later matches someone).
    created: Option<PersonId>,
    first_seen: Timestamp,
    /// The enter event went out.
    entered: bool,
    /// The track's best crop over its whole life (for thumbnails; empty when they are off).
    best: Vec<u8>,
    best_quality: Option<f32>,
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
    /// Keep each track's best crop and hand it to the event sinks (thumbnails).
    pub thumbnails: bool,
    /// Embed the crops a frame chose on a thread of their own while the detector runs on the
    /// next frame (`model.overlap`; not on a machine with one core); their decisions and events
    /// follow that detection. The same decisions and events as one after the other (nothing the
    /// detector does depends on them), one frame later.
    pub overlap: bool,
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
    /// `PipelineConfig::overlap`: one worker, which embeds while this thread runs the detector.
    overlap: Option<SpinPool>,
    /// The frame whose crops are pending: number, stream time, name.
    pending_frame: (u64, Duration),
    pending_name: String,
    crop_path: PathBuf,
    /// When this pipeline started: part of crop file names.
    run_started: Timestamp,
    stats: Stats,
    /// The gallery changed since the last [`Pipeline::mark_saved`].
    dirty: bool,
    /// The latest frame's number and stream time (for events between frames).
    last_frame: (u64, Duration),
    /// The gallery's clock ([`Pipeline::gallery_time`]): its start, set at the first decision,
    /// and the latest time it gave.
    gallery_base: Option<Timestamp>,
    gallery_clock: Timestamp,
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
                pending: false,
                latest: vec![0.0; dim],
                sum: vec![0.0; dim],
                embeddings: 0,
                held: None,
                created: None,
                first_seen: Timestamp(0),
                entered: false,
                best: if config.thumbnails {
                    vec![0; pre.resized_len()]
                } else {
                    Vec::new()
                },
                best_quality: None,
            })
            .collect();
        // On one core the worker would only take turns with the detector.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let overlap = (config.overlap && cores > 1)
            .then(|| SpinPool::new(1, "reidcam-overlap"))
            .and_then(|pool| {
            pool.inspect_err(|e| {
                log::warn!("model.overlap: cannot start its thread ({e}): detecting and embedding in turn")
            })
            .ok()
        });
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
            overlap,
            pending_frame: (0, Duration::ZERO),
            pending_name: String::with_capacity(256),
            crop_path: PathBuf::with_capacity(256),
            run_started: Timestamp::now(),
            stats: Stats::default(),
            dirty: false,
            last_frame: (0, Duration::ZERO),
            gallery_base: None,
            gallery_clock: Timestamp::default(),
        }
    }

    /// The time the gallery is told a track was seen: the run's start plus the frame's stream
    /// time, never going back. For a camera that is the wall clock; a replay is timed as it was
    /// filmed, so its decisions — the short-term window `recent_ms` above all — do not depend on
    /// how fast this machine plays it (with the wall clock, a faster detector made two people
    /// who left and entered 4.8 s apart in the video 0.9 s apart, and merged them). The run's
    /// start is moved past every identity the gallery already holds by more than `recent_ms`,
    /// so that no one from an earlier run (whose replay may have been timed ahead of the wall
    /// clock) counts as seen moments ago.
    fn gallery_time(&mut self) -> Timestamp {
        let base = *self.gallery_base.get_or_insert_with(|| {
            let gap = self.gallery.policy().recent_ms + 1;
            let after_all = self.gallery.identities().map(|i| i.last_seen.0 + gap).max();
            Timestamp(self.run_started.0.max(after_all.unwrap_or(0)))
        });
        let at = Timestamp(base.0 + self.last_frame.1.as_millis() as u64);
        self.gallery_clock = self.gallery_clock.max(at);
        self.gallery_clock
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
        let (fw, fh) = (image.width(), image.height());
        let detect_now = frame.is_multiple_of(u64::from(self.config.detect_every.max(1)));
        // The detector on this frame, beside the embedding of the crops the last one chose.
        self.detect_beside_pending(detect_now.then_some(image))?;
        if detect_now {
            self.stats.detector_runs += 1;
        }
        self.stats.frames += 1;
        self.stats.detections += self.detections.len() as u64;
        let mut outcome = FrameOutcome::default();
        // What those crops decide, as of their frame (the tracker has not moved on yet).
        self.settle_pending(&mut outcome)?;
        let tracking = Instant::now();
        let others_before = self.stats.embed + self.stats.gallery + self.stats.events_time;
        self.last_frame = (frame, stream_time);
        if detect_now {
            self.tracker.update(frame, (fw, fh), &self.detections);
        } else {
            self.tracker.predict(frame, fw, fh);
        }
        let embed_every = u64::from(self.tracker.config().embed_every);
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
                s.best_quality = None;
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
                        if !s.best.is_empty() && s.best_quality.is_none_or(|q| quality > q) {
                            s.best.copy_from_slice(resized);
                            s.best_quality = Some(quality);
                        }
                    }
                    Err(why) => self.stats.crops_rejected.count(why),
                }
            }
            // A good crop, and the window since the last embedding is over: embed it — now, or
            // (overlap) beside the next frame's detection. Either way the window restarts here.
            let s = &mut self.states[slot];
            let due = s
                .last_embed
                .is_none_or(|last| frame.saturating_sub(last) >= embed_every);
            if due && s.crop_quality.is_some() {
                s.crop_quality = None;
                s.last_embed = Some(frame);
                if self.overlap.is_some() {
                    s.pending = true;
                } else {
                    let started = Instant::now();
                    embed_crop(&self.pre, &mut self.embedder, s)?;
                    self.stats.crops_embedded += 1;
                    self.stats.embed += started.elapsed();
                    self.settle(slot, frame, stream_time, frame_name, &mut outcome)?;
                }
            }
        }
        // The last frame's pending crops were settled above: any pending now are this frame's.
        if self.states.iter().any(|s| s.pending) {
            self.pending_frame = (frame, stream_time);
            self.pending_name.clear();
            self.pending_name.push_str(frame_name);
        }
        // Tracking and crop selection: what is left of that part after the other stages.
        let others = self.stats.embed + self.stats.gallery + self.stats.events_time;
        self.stats.track += tracking.elapsed().saturating_sub(others - others_before);
        Ok(outcome)
    }

    /// Runs the detector on `image` (None: clears the detections, between detector frames) and
    /// embeds the pending crops: with `overlap`, the embeddings on the pool's worker (always
    /// there) while this thread detects.
    fn detect_beside_pending(&mut self, image: Option<RgbView<'_>>) -> Result<(), PipelineError> {
        let pending = self.states.iter().filter(|s| s.pending).count();
        let Pipeline {
            detector,
            detections,
            embedder,
            states,
            pre,
            overlap,
            stats,
            ..
        } = self;
        let detect = |detector: &mut Box<dyn Detector>, detections: &mut Detections| {
            let started = Instant::now();
            let result = match image {
                Some(image) => detector.detect(image, detections),
                None => {
                    detections.clear();
                    Ok(())
                }
            };
            (result, started.elapsed())
        };
        let embed = |embedder: &mut E, states: &mut [TrackState]| {
            let started = Instant::now();
            let result = states
                .iter_mut()
                .filter(|s| s.pending)
                .try_for_each(|s| embed_crop(pre, embedder, s));
            (result, started.elapsed())
        };
        let ((detected, detect_time), (embedded, embed_time)) = match overlap {
            Some(pool) if pending > 0 => {
                let det = std::sync::Mutex::new((detector, detections, None));
                let emb = std::sync::Mutex::new((embedder, states, None));
                // The detector on this thread (the job's last part: the pool's caller runs it), as
                // without overlap, its own threads with it; the embeddings always on the worker
                // (pinned: the model's ops recycle their tensors per thread, and this thread
                // taking a late worker's part would allocate a second set). The other way round
                // this thread waited for the whole detection by yielding in a loop, taking a
                // core from the detector's threads (41 against 50 fps on 2 cores).
                pool.run_pinned(2, &|part| {
                    if part == 0 {
                        let mut e = emb.lock().unwrap_or_else(|e| e.into_inner());
                        let (embedder, states, out) = &mut *e;
                        *out = Some(embed(embedder, states));
                    } else {
                        let mut d = det.lock().unwrap_or_else(|e| e.into_inner());
                        let (detector, detections, out) = &mut *d;
                        *out = Some(detect(detector, detections));
                    }
                });
                let detected = det.into_inner().unwrap_or_else(|e| e.into_inner()).2;
                let embedded = emb.into_inner().unwrap_or_else(|e| e.into_inner()).2;
                (
                    detected.expect("the pool ran the detection part"),
                    embedded.expect("the pool ran the embedding part"),
                )
            }
            _ => (detect(detector, detections), embed(embedder, states)),
        };
        stats.detect += detect_time;
        if pending > 0 {
            stats.embed += embed_time;
        }
        detected?;
        embedded?;
        stats.crops_embedded += pending as u64;
        Ok(())
    }

    /// Settles the pending crops (embedded by [`detect_beside_pending`](Self::detect_beside_pending))
    /// as of the frame that chose them.
    fn settle_pending(&mut self, outcome: &mut FrameOutcome) -> Result<(), PipelineError> {
        if !self.states.iter().any(|s| s.pending) {
            return Ok(());
        }
        let (frame, stream_time) = self.pending_frame;
        let name = std::mem::take(&mut self.pending_name);
        let mut result = Ok(());
        for slot in 0..self.states.len() {
            if std::mem::take(&mut self.states[slot].pending) {
                result = self.settle(slot, frame, stream_time, &name, outcome);
                if result.is_err() {
                    break;
                }
            }
        }
        self.pending_name = name;
        result
    }

    /// What the slot's newly embedded crop (`latest`) does: a split when it is someone else, the
    /// track's sum, and its identity once it has enough crops (events for frame `frame`).
    fn settle(
        &mut self,
        slot: usize,
        frame: u64,
        stream_time: Duration,
        frame_name: &str,
        outcome: &mut FrameOutcome,
    ) -> Result<(), PipelineError> {
        let Some(&track) = self.tracker.track(slot) else {
            return Ok(());
        };
        let min_crops = self.gate.config().min_crops;
        let s = &self.states[slot];
        let cos = (s.embeddings > 0).then(|| crate::embed::cosine(&s.sum, &s.latest));
        let mut track = track;
        // Someone else stepped into this track's place (a cosine to the track's mean below
        // `tracker.split_below`): the old track leaves, the new person gets a track of their
        // own (confirmed: the box is established).
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
            s.best_quality = None;
        }
        self.accumulate(slot, split);
        if track.confirmed && self.states[slot].embeddings >= min_crops && self.decide(slot)? {
            outcome.recognised |= matches!(self.states[slot].held, Some(Held::Known { .. }));
            let kind = if self.states[slot].entered {
                EventKind::Update
            } else {
                EventKind::Enter
            };
            self.emit(kind, slot, frame, stream_time, frame_name)?;
            self.states[slot].entered = true;
        }
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
        // Crops still pending (overlap): embedded (on the worker, as always) and settled first,
        // as of their frame.
        if self.states.iter().any(|s| s.pending) {
            self.detect_beside_pending(None)?;
            self.settle_pending(&mut FrameOutcome::default())?;
        }
        self.tracker.end_all();
        for slot in 0..self.tracker.capacity() {
            if self.tracker.change(slot) == SlotChange::Ended && self.states[slot].held.is_some() {
                self.emit(EventKind::Leave, slot, frame, stream_time, frame_name)?;
            }
        }
        self.sink.flush()?;
        Ok(())
    }
}

/// Embeds the slot's held crop into its `latest`.
fn embed_crop<E: CropEmbedder>(
    pre: &Preprocessor,
    embedder: &mut E,
    s: &mut TrackState,
) -> Result<(), EmbedError> {
    pre.normalise_into(&s.crop, embedder.input());
    s.latest.copy_from_slice(embedder.run()?);
    Ok(())
}

#[cfg(test)]
mod tests;
