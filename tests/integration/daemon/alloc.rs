//! The per-frame path allocates nothing once warm: detection, tracking, embedding, matching and
//! events (thumbnails too) on the frame loop's thread, with a stand-in embedder and with our
//! default model; with `model.overlap`, on any thread of the process.

use std::time::Duration;

use reidcam::capture::{FrameSource, SyntheticConfig, SyntheticSource};
use reidcam::detect::{MotionConfig, MotionDetector};
use reidcam::events::{Event, EventSink};
use reidcam::gallery::{Gallery, GalleryConfig, MatchPolicy, StorageFormat};
use reidcam::manifest::InputSpec;
use reidcam::pipeline::{CropEmbedder, Pipeline, PipelineConfig};
use reidcam::quality::{BoxSource, CropGate};
use reidcam::track::{Tracker, TrackerConfig};
use reidcam::{EmbedConfig, Embedder, ManifestChoice};

use super::{emulated, synthetic_quality};
use crate::alloc_count::allocations_during;
use crate::common::{repo, scratch};

/// A stand-in embedder: the crop's mean colour per third of its height (no allocation).
struct ColourEmbedder {
    spec: InputSpec,
    input: Vec<f32>,
    out: [f32; 9],
}

impl CropEmbedder for ColourEmbedder {
    fn input_spec(&self) -> &InputSpec {
        &self.spec
    }
    fn dim(&self) -> usize {
        9
    }
    fn input(&mut self) -> &mut [f32] {
        &mut self.input
    }
    fn run(&mut self) -> Result<&[f32], reidcam::EmbedError> {
        let (h, w) = (self.spec.height as usize, self.spec.width as usize);
        for (c, plane) in self.input.chunks_exact(h * w).enumerate() {
            for band in 0..3 {
                let rows = &plane[band * h / 3 * w..(band + 1) * h / 3 * w];
                self.out[band * 3 + c] = 3.0 + rows.iter().sum::<f32>() / rows.len() as f32;
            }
        }
        let n = self.out.iter().map(|v| v * v).sum::<f32>().sqrt();
        self.out.iter_mut().for_each(|v| *v /= n);
        Ok(&self.out)
    }
}

/// Keeps the last line only, in a buffer sized up front.
struct LastLine(Vec<u8>, u64);

impl EventSink for LastLine {
    fn emit(&mut self, event: &Event<'_>) -> std::io::Result<()> {
        self.0.clear();
        serde_json::to_writer(&mut self.0, event)?;
        self.1 += 1;
        Ok(())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// 200 frames of warm-up, then 600 of the synthetic scene through detection, tracking,
/// embedding with `embedder`, matching (at `threshold`) and events (with thumbnails: their
/// sink copies crops for the writer thread): no allocation on the frame loop's thread. With
/// `overlap` (the embeddings on the pipeline's worker beside the detection; no thumbnails, whose
/// writer thread allocates) no allocation in the whole process: run alone in a child process.
fn per_frame_path_allocates_nothing<E: CropEmbedder>(embedder: E, threshold: f32, overlap: bool) {
    let config = SyntheticConfig {
        width: 320,
        height: 180,
        ..SyntheticConfig::default()
    };
    let mut source = SyntheticSource::new(config).unwrap();
    let gallery = Gallery::with_budget(
        GalleryConfig {
            dim: embedder.dim(),
            exemplars: 4,
            format: StorageFormat::Int8,
            budget_bytes: (64 * embedder.dim()).max(4096),
        },
        MatchPolicy {
            threshold,
            ..MatchPolicy::default()
        },
    )
    .unwrap();
    let tracker = Tracker::new(TrackerConfig::default()).unwrap();
    let gate = CropGate::new(synthetic_quality(), BoxSource::Motion);
    let spec = embedder.input_spec();
    let thumbs = reidcam::thumbs::Thumbnails::start(
        reidcam::thumbs::ThumbConfig {
            dir: scratch("alloc-thumbs").join("g.thumbs"),
            budget_bytes: 1 << 20,
        },
        (spec.width * spec.height * 3) as usize,
        gallery.capacity(),
    )
    .unwrap();
    let mut sinks: Vec<Box<dyn reidcam::events::EventSink>> =
        vec![Box::new(LastLine(Vec::with_capacity(4096), 0))];
    if !overlap {
        sinks.push(Box::new(thumbs.sink()));
    }
    let sink = reidcam::events::Tee(sinks);
    let mut pipeline = Pipeline::new(
        PipelineConfig {
            camera: "test".into(),
            crops_dir: None,
            detect_every: 1,
            thumbnails: !overlap,
            overlap,
        },
        Box::new(MotionDetector::new(MotionConfig::default()).unwrap()),
        tracker,
        gate,
        embedder,
        gallery,
        Box::new(sink),
        (320, 180),
    );
    let mut frame_no = 0u64;
    let mut step = |pipeline: &mut Pipeline<E>, n: usize| {
        for _ in 0..n {
            let frame = source.next_frame().unwrap();
            pipeline
                .process(
                    frame.image,
                    frame_no,
                    Duration::from_millis(frame_no * 100),
                    "",
                )
                .unwrap();
            frame_no += 1;
        }
    };
    // Warm-up: the first people, tracks and identities. Then 600 frames counted; under
    // emulation 300 (with the real model ~0.2 s a frame there).
    step(&mut pipeline, 200);
    let before = pipeline.stats().clone();
    let counted = if crate::common::emulated() { 300 } else { 600 };
    let ((), allocations) = if overlap {
        crate::alloc_count::process_allocations_during(|| step(&mut pipeline, counted))
    } else {
        allocations_during(|| step(&mut pipeline, counted))
    };
    let after = pipeline.stats();
    eprintln!(
        "{counted} frames counted: {} tracks, {} crops embedded, {} events",
        after.tracks - before.tracks,
        after.crops_embedded - before.crops_embedded,
        after.events - before.events
    );
    assert!(after.tracks > before.tracks + 5, "{after:?}");
    assert!(
        after.crops_embedded > before.crops_embedded + 50,
        "{after:?}"
    );
    assert!(after.events > before.events + 5, "{after:?}");
    assert_eq!(
        allocations, 0,
        "allocations in {counted} frames of detect/track/embed/match/events"
    );
    let written = thumbs
        .stats()
        .written
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(overlap || written > 0, "no thumbnail written");
}

#[test]
fn the_per_frame_path_allocates_nothing_after_warm_up() {
    let spec = InputSpec {
        name: "x".into(),
        height: 64,
        width: 32,
        channel_order: Default::default(),
        pixel_divisor: 255.0,
        mean: [0.5; 3],
        std: [0.25; 3],
    };
    let embedder = ColourEmbedder {
        input: vec![0.0; 3 * 64 * 32],
        spec,
        out: [0.0; 9],
    };
    per_frame_path_allocates_nothing(embedder, 0.999, false);
}

/// [`per_frame_path_allocates_nothing`] with our default model through tract (every op of it
/// ours, outputs recycled).
fn with_the_real_model(overlap: bool) {
    let embedder = Embedder::load(
        &repo().join("models/default.onnx"),
        ManifestChoice::Sidecar,
        &EmbedConfig::default(),
    )
    .unwrap();
    let threshold = embedder.manifest().matching.as_ref().unwrap().threshold;
    per_frame_path_allocates_nothing(embedder, threshold as f32, overlap);
}

/// Under emulation left to the host suite (~110 s under qemu-user): on ARM the real model's
/// frames are counted by [`overlapped_per_frame_path_allocates_nothing_on_any_thread`] (the same
/// detection, tracking, embedding and matching, the embeddings on a worker thread), the
/// thumbnails and this frame loop by [`the_per_frame_path_allocates_nothing_after_warm_up`], and
/// the model's own runs by `kernels::embedding_allocates_nothing_once_warm`.
#[test]
fn the_per_frame_path_allocates_nothing_with_the_real_model() {
    if emulated() {
        return;
    }
    with_the_real_model(false);
}

/// `model.overlap`: the real model's embeddings on the pipeline's worker thread beside the
/// detection on the frame loop's — nothing allocated on any thread (counted in a child process
/// running only [`overlapped_per_frame_path_allocates_nothing_alone`]).
#[test]
fn overlapped_per_frame_path_allocates_nothing_on_any_thread() {
    crate::alloc_count::run_alone(
        "daemon::alloc::overlapped_per_frame_path_allocates_nothing_alone",
    );
}

#[test]
#[ignore = "run alone in a child process by overlapped_per_frame_path_allocates_nothing_on_any_thread"]
fn overlapped_per_frame_path_allocates_nothing_alone() {
    assert!(
        crate::alloc_count::alone_in_process(),
        "counts the whole process: run it through its parent test"
    );
    with_the_real_model(true);
}
