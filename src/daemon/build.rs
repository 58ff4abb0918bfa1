//! Building a [`Running`] from a [`RunConfig`]: the source, the detector, the model, the
//! gallery (locked, loaded or recovered), the events sinks (file, MQTT, the API's recent
//! events, thumbnails), the pipeline and the board's LED and button; and the MQTT link.

use std::sync::Arc;

use super::{DaemonError, Running};
use crate::board::BoardProfile;
use crate::board::io;
use crate::capture::{FrameSource, Opener, Reopening};
use crate::config::{DetectorChoice, RunConfig};
use crate::detect::{Detector, MotionDetector, YoloxDetector, ZoneDetector};
use crate::embed::{EmbedConfig, Embedder, ManifestChoice};
use crate::events::{EventSink, JsonLines, Tee};
use crate::gallery::file::{self, GalleryLock, ModelTag, Opened};
use crate::gallery::{Gallery, MatchPolicy};
use crate::http::Recent;
use crate::mqtt::Mqtt;
use crate::mqtt::share::{Peers, Sharing};
use crate::pipeline::{Pipeline, PipelineConfig};
use crate::quality::{BoxSource, CropGate};
use crate::thumbs::Thumbnails;
use crate::track::Tracker;

/// Builds everything from `config`; nothing is written until the first save. `custom` replaces
/// the configured source by a live one (tests inject a camera that fails and recovers).
pub(super) fn start(
    config: &RunConfig,
    custom: Option<Opener>,
    mqtt: Option<&Mqtt>,
    recent: &Arc<Recent>,
) -> Result<Running, DaemonError> {
    // The camera (or recording) first: its size sizes the buffers.
    let spec = config.source.clone();
    let (source, reopening): (Box<dyn FrameSource>, bool) = if let Some(opener) = custom {
        (Box::new(Reopening::open("injected source", opener)?), true)
    } else if let crate::capture::SourceSpec::V4l2(camera) = &spec {
        // A camera is reopened when lost; a recording ends.
        let name = camera.device.display().to_string();
        let opener = Box::new(move || spec.open());
        (Box::new(Reopening::open(name, opener)?), true)
    } else {
        (spec.open()?, false)
    };
    let source_name = source.describe();
    log::info!("source: {source_name}");
    let frame_size = source.size();

    let manifest = match &config.manifest {
        Some(m) => ManifestChoice::File(m.clone()),
        None => ManifestChoice::Sidecar,
    };
    let embedder = Embedder::load(
        &config.model,
        manifest,
        &EmbedConfig {
            batch: 1,
            threads: config.threads,
            ..EmbedConfig::default()
        },
    )?;
    let detector: Box<dyn Detector> = match &config.detector {
        DetectorChoice::Motion(m) => Box::new(MotionDetector::new(m.clone())?),
        DetectorChoice::Zones(z) => {
            Box::new(ZoneDetector::new(z.clone(), frame_size.0, frame_size.1)?)
        }
        DetectorChoice::Model(y) => Box::new(YoloxDetector::load(y.clone())?),
    };
    log::info!("detector: {}", detector.describe());

    let defaults = MatchPolicy::default();
    let matching = embedder.manifest().matching.as_ref();
    let recent_threshold = config
        .recent_threshold
        .or_else(|| matching.and_then(|m| m.recent_threshold).map(|t| t as f32));
    let policy = MatchPolicy {
        threshold: config
            .threshold
            .unwrap_or_else(|| matching.map_or(defaults.threshold, |m| m.threshold as f32)),
        margin: config.margin,
        aggregation: config.aggregation,
        // No threshold for it (configured or calibrated): the rule is off.
        recent_ms: recent_threshold.map_or(0, |_| config.recent_ms),
        recent_threshold: recent_threshold.unwrap_or(defaults.recent_threshold),
    };
    let gallery_config = crate::gallery::GalleryConfig {
        dim: embedder.dim(),
        ..config.gallery
    };
    let model_tag = ModelTag {
        name: embedder.manifest().model.name.clone(),
        dim: embedder.dim(),
    };
    let (mut gallery, lock) = match &config.gallery_path {
        Some(path) => {
            let lock = GalleryLock::acquire(path)?;
            let (gallery, opened) =
                file::open(path, &model_tag, gallery_config, policy, config.recovery)?;
            match opened {
                Opened::New => log::info!("{}: new gallery", path.display()),
                Opened::Loaded => {
                    log::info!("{}: {} identities loaded", path.display(), gallery.len())
                }
                other => log::warn!("{}: damaged, recovered: {other:?}", path.display()),
            }
            (gallery, Some(lock))
        }
        None => (Gallery::with_budget(gallery_config, policy)?, None),
    };
    log::info!(
        "gallery: {} of {} identities, {} bytes",
        gallery.len(),
        gallery.capacity(),
        gallery.heap_bytes()
    );

    let sink: Box<dyn EventSink> = match &config.events {
        Some(path) => Box::new(
            JsonLines::file(path, config.rotate_bytes, config.keep).map_err(|source| {
                DaemonError::Events {
                    path: path.clone(),
                    source,
                }
            })?,
        ),
        None => Box::new(JsonLines::stdout()),
    };
    let sharing = mqtt.filter(|m| m.shares()).map(|m| {
        let peers = config
            .gallery_path
            .as_deref()
            .map(|p| Peers::load(&Peers::path_for(p)))
            .unwrap_or_default();
        m.set_share(&model_tag.name, model_tag.dim, gallery.config().exemplars);
        let mut sharing = Sharing::new(&config.camera, &model_tag.name, peers, &gallery);
        sharing.merge_at = m.config().merge_threshold.map(|t| {
            if t > 0.0 {
                t
            } else {
                (gallery.policy().threshold + crate::mqtt::MERGE_ABOVE_MATCH).min(0.99)
            }
        });
        sharing.passers_by = m.config().share_passers_by;
        sharing
    });
    if let Some(sharing) = &sharing {
        sharing.mark_copies(&mut gallery);
    }
    let sink: Box<dyn EventSink> = match mqtt {
        Some(m) => {
            m.set_labelled(&gallery);
            Box::new(Tee(vec![sink, Box::new(m.events())]))
        }
        None => sink,
    };
    // The API's recent events, when it is on.
    let sink: Box<dyn EventSink> = if config.http.is_some() {
        Box::new(Tee(vec![sink, Box::new(recent.sink())]))
    } else {
        sink
    };
    // Pictures are optional: a directory that cannot be made turns them off, not the camera.
    let spec = &embedder.manifest().input;
    let crop_bytes = spec.width as usize * spec.height as usize * 3;
    let thumbs = config.thumbnails.as_ref().and_then(|t| {
        Thumbnails::start(t.clone(), crop_bytes, gallery.capacity())
            .inspect(|_| {
                log::info!(
                    "thumbnails: {} (budget {} bytes)",
                    t.dir.display(),
                    t.budget_bytes
                )
            })
            .map_err(|e| log::error!("thumbnails are off: {e}"))
            .ok()
    });
    let sink: Box<dyn EventSink> = match &thumbs {
        Some(t) => Box::new(Tee(vec![sink, Box::new(t.sink())])),
        None => sink,
    };
    let stills = matches!(config.source, crate::capture::SourceSpec::Images { .. });
    let mut tracker_config = config.tracker.clone();
    if tracker_config.split_below < 0.0 {
        tracker_config.split_below = embedder
            .manifest()
            .matching
            .as_ref()
            .and_then(|m| m.split_below)
            .map_or(crate::track::DEFAULT_SPLIT_BELOW, |s| s as f32);
    }
    if stills {
        // A person in a still is confirmed and embedded at once.
        tracker_config.confirm_frames = 1;
    }
    let tracker = Tracker::new(tracker_config).map_err(DaemonError::Tracker)?;
    let boxes = match config.detector {
        DetectorChoice::Model(_) => BoxSource::Model,
        DetectorChoice::Motion(_) => BoxSource::Motion,
        DetectorChoice::Zones(_) => BoxSource::Zones,
    };
    let mut quality = config.quality.clone();
    if stills {
        // One crop per person in a still: decide on it.
        quality.min_crops = 1;
    }
    let gate = CropGate::new(quality, boxes);
    let pipeline = Pipeline::new(
        PipelineConfig {
            camera: config.camera.clone(),
            crops_dir: config.crops_dir.clone(),
            detect_every: config.detect_every.unwrap_or(1),
            thumbnails: thumbs.is_some(),
            overlap: config.overlap,
        },
        detector,
        tracker,
        gate,
        embedder,
        gallery,
        sink,
        frame_size,
    );

    let (mut led, mut button) = (None, None);
    if let Some(board) = &config.board {
        let profile = BoardProfile::load(board)?;
        if let Some(line) = &profile.io.led {
            led = Some(io::open_led(line)?);
        }
        if let Some(line) = &profile.io.button {
            button = Some(io::open_button(line)?);
        }
        log::info!(
            "board {}: LED {}, button {}",
            profile.board.name,
            if led.is_some() { "on" } else { "none" },
            if button.is_some() { "on" } else { "none" }
        );
    }
    Ok(Running {
        source,
        reopening,
        pipeline,
        model_tag,
        gallery_path: config.gallery_path.clone(),
        _lock: lock,
        led,
        button,
        source_name,
        stills,
        erase: false,
        sharing,
        thumbs,
    })
}

/// MQTT for `config`: `current` is kept when its configuration and camera are the same
/// (a reload does not drop the connection), else stopped and replaced.
pub(super) fn start_mqtt(
    config: &RunConfig,
    current: Option<Mqtt>,
) -> Result<Option<Mqtt>, DaemonError> {
    match (current, &config.mqtt) {
        (Some(m), Some(c)) if m.config() == c && m.camera() == config.camera => Ok(Some(m)),
        (current, wanted) => {
            drop(current);
            Ok(wanted
                .as_ref()
                .map(|c| Mqtt::start(c, &config.camera))
                .transpose()?)
        }
    }
}
