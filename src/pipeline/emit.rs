//! A track's events (enter, update, enrol, leave) with the identity it holds, and the crop
//! saved beside an enter or enrol event when `crops_dir` is set.

use std::time::{Duration, Instant};

use crate::events::{self, Event, EventKind, Identity};
use crate::gallery::{PersonId, Timestamp};

use super::{CropEmbedder, Held, Pipeline, PipelineError};

impl<E: CropEmbedder> Pipeline<E> {
    pub(super) fn emit(
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
            Held::New { id, closest } => Identity::New {
                id,
                label: label_of(id),
                closest,
            },
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
            pixels: s.best_quality.map(|quality| {
                let spec = self.embedder.input_spec();
                events::Pixels {
                    rgb: &s.best,
                    width: spec.width,
                    height: spec.height,
                    quality,
                }
            }),
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
}

/// Writes an RGB8 image as JPEG (quality 90) to a new file of mode 0600 (a crop shows a
/// person): never through a symlink, never over an existing file.
fn write_jpeg(path: &std::path::Path, rgb: &[u8], width: u32, height: u32) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let encoded = crate::frame::encode_jpeg(rgb, width, height, 90.0)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?; // create_new: O_CREAT | O_EXCL, which fails on any existing name, symlinks too
    file.write_all(&encoded)?;
    file.sync_data()
}
