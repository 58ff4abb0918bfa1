//! The daemon's side of the HTTP API (`[http]`): starting the server, the frame loop's turn
//! (heartbeat, changes asked for, stage times, the snapshot) and applying a change to the gallery.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{DaemonError, Running, Summary};
use crate::config::RunConfig;
use crate::gallery::GalleryError;
use crate::http::{Command, Http, Op, Outcome, Recent, Refusal};
use crate::mqtt::Mqtt;
use crate::pipeline::{StageMs, Stats};

/// HTTP for `config`: `current` is kept when its configuration is the same (a reload does not
/// close the port), else stopped and replaced. Sized for `running`'s gallery; reads its
/// thumbnails.
pub(super) fn start_http(
    config: &RunConfig,
    current: Option<Http>,
    running: &Running,
    recent: &Arc<Recent>,
) -> Result<Option<Http>, DaemonError> {
    let capacity = running.pipeline.gallery().capacity();
    let http = match (current, &config.http) {
        (Some(h), Some(c)) if h.config() == c => Some(h),
        (current, wanted) => {
            if let Some(h) = current {
                h.stop();
            }
            wanted
                .as_ref()
                .map(|c| Http::start(c, capacity, recent.clone()))
                .transpose()?
        }
    };
    if let Some(h) = &http {
        h.set_thumbnails(running.thumbs.as_ref().map(|t| t.config().dir.as_path()));
    }
    Ok(http)
}

/// Stage totals of the pipeline at the previous frame, to take one frame's share.
#[derive(Default)]
pub(super) struct StageClock {
    detect: Duration,
    track: Duration,
    embed: Duration,
    gallery: Duration,
    events: Duration,
}

impl StageClock {
    pub(super) fn frame(&mut self, stats: &Stats, capture: Duration, total: Duration) -> StageMs {
        let ms = |now: Duration, before: &mut Duration| {
            let d = now.saturating_sub(*before);
            *before = now;
            d.as_secs_f64() * 1e3
        };
        StageMs {
            capture: capture.as_secs_f64() * 1e3,
            detect: ms(stats.detect, &mut self.detect),
            track: ms(stats.track, &mut self.track),
            embed: ms(stats.embed, &mut self.embed),
            gallery: ms(stats.gallery, &mut self.gallery),
            events: ms(stats.events_time, &mut self.events),
            total: total.as_secs_f64() * 1e3,
        }
    }
}

fn refusal(e: GalleryError) -> Refusal {
    match e {
        GalleryError::UnknownId(id) => (404, format!("no identity {}", id.0)),
        other => (400, other.to_string()),
    }
}

impl Running {
    /// Applies the changes the API asked for (between frames: the gallery is the loop's). A
    /// change is saved before it is answered: an erased person is gone from the file and its
    /// backup when the client hears so.
    pub(super) fn serve_changes(
        &mut self,
        http: &Http,
        mqtt: Option<&Mqtt>,
        at: (u64, Duration),
        summary: &mut Summary,
    ) {
        while let Some(command) = http.next_command() {
            self.apply(command, http, mqtt, at, summary);
        }
    }

    /// Refreshes the API's snapshot (about once a second).
    pub(super) fn publish(
        &self,
        http: &mut Http,
        mqtt: Option<&Mqtt>,
        frames: u64,
        elapsed: Duration,
        summary: &Summary,
    ) {
        let pipeline = &self.pipeline;
        let mqtt_stats = mqtt.map(Mqtt::stats);
        http.publish(pipeline.gallery(), |s| {
            if s.source != self.source_name {
                s.source.clone_from(&self.source_name);
                s.detector = pipeline.detector_description();
                s.model.clone_from(&self.model_tag.name);
                s.camera.clone_from(pipeline.camera());
            }
            s.frames = summary.frames + frames;
            s.fps = frames as f64 / elapsed.as_secs_f64().max(1e-9);
            s.counts.clone_from(pipeline.stats());
            s.camera_reopens = self.source.reopens();
            s.mqtt_delivered = mqtt_stats.as_ref().map(|m| m.delivered);
            s.mqtt_dropped = mqtt_stats.as_ref().map(|m| m.dropped);
            s.thumbnails = self.thumbs.as_ref().map(|t| {
                let stats = t.stats();
                (
                    stats.files.load(Ordering::Relaxed),
                    stats.bytes.load(Ordering::Relaxed),
                    t.config().budget_bytes,
                )
            });
        });
    }

    /// One change; `at`: the frame number and stream time (for an enrol event).
    fn apply(
        &mut self,
        command: Command,
        http: &Http,
        mqtt: Option<&Mqtt>,
        at: (u64, Duration),
        summary: &mut Summary,
    ) {
        let outcome = self.change(&command.op, at);
        if outcome.is_err() {
            command.reply(outcome);
            return;
        }
        self.pipeline.mark_dirty();
        http.publish_identities(self.pipeline.gallery());
        if let Some(m) = mqtt {
            m.set_labelled(self.pipeline.gallery());
        }
        let saved = self.save(summary).map_err(|e| {
            log::error!("cannot save the gallery after an API change (will retry): {e}");
            (
                500,
                format!("changed in memory, but the gallery file could not be written: {e}"),
            )
        });
        command.reply(saved.map(|()| outcome.ok().flatten()));
    }

    fn change(&mut self, op: &Op, (frame, stream_time): (u64, Duration)) -> Outcome {
        let internal = |e: crate::pipeline::PipelineError| (500, e.to_string());
        match op {
            Op::Edit { id, label, pinned } => self
                .pipeline
                .gallery_mut()
                .edit(*id, label.as_ref().map(|l| l.as_deref()), *pinned)
                .map_err(refusal)
                .map(|()| None),
            Op::Erase(id) => {
                self.pipeline.gallery_mut().remove(*id).map_err(refusal)?;
                if let Some(sharing) = &mut self.sharing {
                    sharing.erased_by_operator(*id);
                }
                self.erased(*id).map_err(|e| {
                    log::error!("thumbnail of {id}: {e}");
                    (
                        500,
                        format!("erased from the gallery, but its thumbnail: {e}"),
                    )
                })?;
                Ok(None)
            }
            Op::EnrolTrack { track, label } => {
                match self
                    .pipeline
                    .enrol_track(*track, label.as_deref(), frame, stream_time)
                    .map_err(internal)?
                {
                    Ok(id) => Ok(Some(id)),
                    Err(why) => Err((409, why.to_string())),
                }
            }
            Op::EnrolImage { image, label } => {
                let id = self
                    .pipeline
                    .enrol_image(image.view(), label.as_deref())
                    .map_err(|e| match e {
                        crate::pipeline::PipelineError::Gallery(g) => refusal(g),
                        crate::pipeline::PipelineError::Picture(why) => (422, why),
                        other => internal(other),
                    })?;
                if let Some(t) = &self.thumbs {
                    t.offer(id, &self.pipeline.last_resized());
                }
                Ok(Some(id))
            }
        }
    }
}
