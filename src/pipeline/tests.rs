//! The pipeline's gating and decision rules with a scripted detector and a fake embedder.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use super::*;
use crate::detect::{DetectError, Detection};
use crate::events::Event;
use crate::frame::{Rect, RgbImage};
use crate::gallery::{GalleryConfig, MatchPolicy, StorageFormat};
use crate::manifest::{ChannelOrder, IMAGENET_MEAN, IMAGENET_STD};
use crate::quality::QualityConfig;
use crate::track::TrackerConfig;

/// Boxes given per frame by the test (shared with it: the detector may run on another thread).
type Boxes = Arc<Mutex<Vec<Detection>>>;

fn script(boxes: Vec<Detection>) -> Boxes {
    Arc::new(Mutex::new(boxes))
}

struct Scripted(Boxes);

impl Detector for Scripted {
    fn detect(&mut self, _: RgbView<'_>, out: &mut Detections) -> Result<(), DetectError> {
        out.clear();
        out.extend(self.0.lock().unwrap().iter().copied());
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

fn pipeline(boxes: Boxes) -> (Pipeline<MeanColour>, Events) {
    pipeline_with(boxes, false, 0.0)
}

/// [`pipeline`] with `overlap` and the tracker's `split_below` given.
fn pipeline_with(boxes: Boxes, overlap: bool, split_below: f32) -> (Pipeline<MeanColour>, Events) {
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
        split_below,
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
            thumbnails: false,
            overlap,
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
    // A red person at x 100..140, a green one at x 200..240.
    frame_of(&[(100, RED), (200, GREEN)])
}

const RED: [u8; 3] = [200, 30, 30];
const GREEN: [u8; 3] = [30, 200, 30];

/// People 40 × 120 pixels from y = 20, at these x, in these colours.
fn frame_of(people: &[(usize, [u8; 3])]) -> RgbImage {
    let mut img = RgbImage::black(320, 180).unwrap();
    for (y, row) in img.as_bytes_mut().chunks_exact_mut(320 * 3).enumerate() {
        for (x, px) in row.chunks_exact_mut(3).enumerate() {
            for &(left, colour) in people {
                if (20..140).contains(&y) && (left..left + 40).contains(&x) {
                    px.copy_from_slice(&colour);
                }
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
    let boxes = script(vec![person]);
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

/// Two people: one comes and goes, the other's place is taken by someone else (a split). With
/// `overlap` (each frame's crops embedded beside the next frame's detection) the same events, for
/// the same frames, the same identities — only later, after the next frame's detection.
#[test]
fn overlapping_detection_and_embedding_decides_as_one_after_the_other() {
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        eprintln!("skipped: one core, where the pipeline does not overlap");
        return;
    }
    let at = |x| Detection {
        rect: Rect::new(x, 20, 40, 120),
        score: 0.9,
    };
    let run = |overlap: bool| {
        let boxes = script(vec![]);
        let (mut p, events) = pipeline_with(boxes.clone(), overlap, 0.9);
        let mut after_frame_3 = None;
        for f in 0..60u64 {
            let (people, image) = match f {
                0..5 => (vec![at(100)], frame_of(&[(100, RED)])),
                5..15 => (
                    vec![at(100), at(200)],
                    frame_of(&[(100, RED), (200, GREEN)]),
                ),
                15..30 => (vec![at(200)], frame_of(&[(200, GREEN)])),
                // Someone in red steps into the green person's box.
                _ => (vec![at(200)], frame_of(&[(200, RED)])),
            };
            *boxes.lock().unwrap() = people;
            p.process(image.view(), f, Duration::from_millis(100 * f), "")
                .unwrap();
            if f == 3 {
                after_frame_3 = Some(events.borrow().len());
            }
        }
        p.finish(60, Duration::from_secs(6), "").unwrap();
        let identities: Vec<_> = p
            .gallery()
            .identities()
            .map(|i| (i.id, i.times_seen, i.exemplars))
            .collect();
        let e = events.borrow().clone();
        (e, identities, p.stats().crops_embedded, after_frame_3)
    };
    let (one_by_one, ids, embedded, at_3) = run(false);
    let (overlapped, ids_o, embedded_o, at_3_o) = run(true);
    // Decided at the 4th crop, frame 3: out at once, or (overlap) after frame 4's detection.
    assert_eq!(one_by_one.first(), Some(&(EventKind::Enter, 3, 4)));
    assert_eq!((at_3, at_3_o), (Some(1), Some(0)));
    let kinds: Vec<_> = one_by_one.iter().map(|e| e.0).collect();
    assert!(
        kinds.contains(&EventKind::Leave)
            && kinds.iter().filter(|&&k| k == EventKind::Enter).count() == 3,
        "two people and the one who stepped in: {one_by_one:?}"
    );
    let sorted = |mut e: Vec<(EventKind, u64, u32)>| {
        e.sort_by_key(|&(kind, frame, n)| (frame, kind as u8, n));
        e
    };
    assert_eq!(sorted(overlapped), sorted(one_by_one));
    assert_eq!((ids_o, embedded_o), (ids, embedded));
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
    let boxes = script(vec![cut, faint]);
    let (mut p, events) = pipeline(boxes.clone());
    let img = frame();
    for f in 0..10 {
        p.process(img.view(), f, Duration::ZERO, "").unwrap();
    }
    *boxes.lock().unwrap() = vec![
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
    let boxes = script(vec![person]);
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

#[test]
fn enrolling_a_known_person_pins_them_and_a_stranger_gets_a_new_identity() {
    let red = Detection {
        rect: Rect::new(100, 20, 40, 120),
        score: 0.9,
    };
    let boxes = script(vec![red]);
    let (mut p, events) = pipeline(boxes.clone());
    let img = frame();
    // Nobody confirmed yet: nothing to enrol.
    assert_eq!(
        p.enrol_track(None, Some("Ann"), 0, Duration::ZERO).unwrap(),
        Err(NotEnrolled::NobodyInView)
    );
    for f in 0..6 {
        p.process(img.view(), f, Duration::ZERO, "").unwrap();
    }
    // The red person made an identity of their own; enrolling them pins that one, named.
    let made = p.gallery().identities().next().unwrap().id;
    let id = p.enrol_track(None, Some("Ann"), 6, Duration::ZERO).unwrap();
    assert_eq!(id, Ok(made));
    assert_eq!(p.gallery().len(), 1, "no duplicate");
    let info = p.gallery().get(made).unwrap();
    assert!(info.pinned && info.label == Some("Ann"), "{info:?}");
    assert_eq!(events.borrow().last().unwrap().0, EventKind::Enrol);
    // A track that is not there.
    assert_eq!(
        p.enrol_track(Some(99), None, 6, Duration::ZERO).unwrap(),
        Err(NotEnrolled::NoSuchTrack(99))
    );
    // Erased while in view: the track holds nobody now, and enrolling it makes a new one.
    p.gallery_mut().remove(made).unwrap();
    p.release(made);
    let shown = {
        let mut out = heapless::Vec::new();
        p.shown(&mut out);
        out
    };
    assert_eq!(shown.len(), 1);
    assert_eq!((shown[0].kind, shown[0].id), (ShownKind::Unstored, None));
    let again = p
        .enrol_track(None, None, 7, Duration::ZERO)
        .unwrap()
        .unwrap();
    assert_ne!(again, made);
    assert!(p.gallery().get(again).unwrap().pinned);
    assert_eq!(p.gallery().len(), 1);
}

/// The gallery is told the stream's time, not the wall clock's: a replay decides as it was
/// filmed however fast it plays, and nobody from an earlier run counts as seen moments ago.
#[test]
fn the_gallery_is_timed_by_the_stream_and_after_every_earlier_run() {
    let person = Detection {
        rect: Rect::new(100, 20, 40, 120),
        score: 0.9,
    };
    let boxes = script(vec![person]);
    let (mut p, _) = pipeline(boxes);
    // Someone from an earlier run, seen (by a replay timed ahead of the wall clock) an hour
    // from now; in green, so the red person is not them.
    let later = Timestamp(Timestamp::now().0 + 3_600_000);
    let earlier_run = crate::gallery::NewIdentity {
        label: None,
        pinned: false,
        now: later,
    };
    let (earlier, _) = p
        .gallery_mut()
        .insert(&[0.0, 1.0, 0.0], earlier_run)
        .unwrap();
    let img = frame();
    let started = Timestamp::now();
    // Frames 10 s apart in the stream, played at once: decided at the 4th, 30 s in.
    for f in 0..4 {
        p.process(img.view(), f, Duration::from_secs(10 * f), "")
            .unwrap();
    }
    let new = p
        .gallery()
        .identities()
        .find(|i| i.id != earlier)
        .expect("the red person has an identity");
    let recent = p.gallery().policy().recent_ms;
    assert!(
        new.last_seen.0 >= later.0 + recent + 30_000,
        "last seen {} ms after the earlier run's {}",
        new.last_seen.0 as i64 - later.0 as i64,
        later.0
    );
    assert!(new.last_seen.0 <= later.0 + recent + 1 + 30_000 + (Timestamp::now().0 - started.0));
}
