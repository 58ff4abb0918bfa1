//! The daemon's side of the HTTP API (`[http]`): starting the server, the frame loop's turn
//! (heartbeat, changes asked for, stage times, the snapshot) and applying a change to the gallery.

use std::sync::Arc;
use std::time::Duration;

use super::{DaemonError, Running, Summary};
use crate::config::RunConfig;
use crate::gallery::GalleryError;
use crate::http::{Command, Http, Op, Recent, Refusal};
use crate::mqtt::Mqtt;
use crate::pipeline::{StageMs, Stats};

/// HTTP for `config`: `current` is kept when its configuration is the same (a reload does not
/// close the port), else stopped and replaced.
pub(super) fn start_http(
    config: &RunConfig,
    current: Option<Http>,
    capacity: usize,
    recent: &Arc<Recent>,
) -> Result<Option<Http>, DaemonError> {
    match (current, &config.http) {
        (Some(h), Some(c)) if h.config() == c => Ok(Some(h)),
        (current, wanted) => {
            if let Some(h) = current {
                h.stop();
            }
            Ok(wanted
                .as_ref()
                .map(|c| Http::start(c, capacity, recent.clone()))
                .transpose()?)
        }
    }
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
        summary: &mut Summary,
    ) {
        while let Some(command) = http.next_command() {
            self.apply(command, http, mqtt, summary);
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
        });
    }

    fn apply(&mut self, command: Command, http: &Http, mqtt: Option<&Mqtt>, summary: &mut Summary) {
        let gallery = self.pipeline.gallery_mut();
        let outcome = match &command.op {
            Op::Edit { id, label, pinned } => gallery
                .edit(*id, label.as_ref().map(|l| l.as_deref()), *pinned)
                .map_err(refusal),
            Op::Erase(id) => gallery.remove(*id).map_err(refusal).map(|()| {
                self.erase = true;
            }),
        };
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
        command.reply(saved);
    }
}
