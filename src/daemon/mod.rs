//! `reidcam run`: builds the pipeline from a [`RunConfig`] and runs the frame loop until the
//! stream ends, a frame limit, or a stop request; reloads on request; saves the gallery
//! periodically and at every stop. Signals, `sd_notify` and the command line are the binary's;
//! this module sees them as flags and a callback, so tests drive it directly.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::board::io::{self, LinuxButton, LinuxLed};
use crate::capture::{Backoff, CaptureError, FrameSource, Opener};
use crate::config::{ConfigError, RunConfig};
use crate::embed::Embedder;
use crate::gallery::Timestamp;
use crate::gallery::file::{self, GalleryLock, ModelTag};
use crate::http::{Http, HttpError, Recent};
use crate::mqtt::share::{Applied, Peers, RemoteUpdate, Sharing};
use crate::mqtt::{Mqtt, MqttError, MqttStats};
use crate::pipeline::{Pipeline, PipelineError, Stats};
use crate::thumbs::Thumbnails;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Embed(#[from] crate::embed::EmbedError),
    #[error(transparent)]
    Detect(#[from] crate::detect::DetectError),
    #[error(transparent)]
    Gallery(#[from] crate::gallery::GalleryError),
    #[error(transparent)]
    File(#[from] file::FileError),
    #[error(transparent)]
    Board(#[from] crate::board::BoardError),
    #[error(transparent)]
    Io(#[from] io::IoError),
    #[error("{}: cannot open the events file: {source}", path.display())]
    Events {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("tracker: {0}")]
    Tracker(String),
    #[error(transparent)]
    Mqtt(#[from] MqttError),
    #[error(transparent)]
    Http(#[from] HttpError),
}

/// Requests from outside the loop (signal handlers set them).
#[derive(Debug, Default)]
pub struct Controls {
    /// Stop cleanly (SIGINT, SIGTERM).
    pub stop: Arc<AtomicBool>,
    /// Reload the configuration (SIGHUP).
    pub reload: Arc<AtomicBool>,
}

pub use crate::pipeline::StageMs;

/// What a run did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Summary {
    pub source: String,
    pub detector: String,
    /// The embedding model: manifest name and file.
    pub model: String,
    pub frames: u64,
    pub seconds: f64,
    pub fps: f64,
    pub counts: Stats,
    /// Identities in the gallery at the end.
    pub identities: usize,
    pub per_frame_ms: StageMs,
    /// Milliseconds per embedded crop.
    pub embed_per_crop_ms: f64,
    pub camera_reopens: u64,
    /// Replay frames that could not be decoded and were skipped.
    pub bad_frames: u64,
    /// A replay that broke off at a damaged part (the run ended there, as at the end of the
    /// stream, with everything saved and reported): what was wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub damaged: Option<String>,
    pub reloads: u64,
    /// Resident memory (KiB) after warm-up (frame `warmup_frames`), at the end, and the most
    /// seen after warm-up (sampled every 100 frames).
    pub warmup_frames: u64,
    pub rss_after_warmup_kib: u64,
    pub rss_end_kib: u64,
    pub rss_max_kib: u64,
    pub gallery_saves: u64,
    /// Why the loop ended: `end of stream`, `damaged stream`, `frame limit`, `stopped`.
    pub ended_by: String,
    /// The detector ran on every this many frames (the last value in force).
    pub detect_every: u32,
    /// Identities removed by `gallery.forget_after`.
    pub identities_forgotten: u64,
    /// MQTT counters, when `[mqtt]` is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<MqttStats>,
}

/// Resident set size in KiB (`VmRSS`, read from /proc without allocating; 0 if unreadable).
pub fn rss_kib() -> u64 {
    crate::bench::proc_status_kib("VmRSS:").unwrap_or(0)
}

mod api;
mod build;

use build::{start, start_mqtt};

struct Running {
    source: Box<dyn FrameSource>,
    reopening: bool,
    pipeline: Pipeline<Embedder>,
    model_tag: ModelTag,
    gallery_path: Option<std::path::PathBuf>,
    _lock: Option<GalleryLock>,
    led: Option<LinuxLed>,
    button: Option<LinuxButton>,
    source_name: String,
    /// The source is a directory of unrelated stills.
    stills: bool,
    /// Identities were forgotten: the next save leaves no copy of them in the backup.
    erase: bool,
    /// Enrolled identities shared through the broker (`mqtt.share_gallery`).
    sharing: Option<Sharing>,
    /// The identities' pictures (`gallery.thumbnails`).
    thumbs: Option<Thumbnails>,
}

impl Running {
    /// Forgets the unpinned identities not seen for `forget_after` (from memory now, from the
    /// file and its backup at the save that follows).
    fn forget(&mut self, forget_after: Option<Duration>, summary: &mut Summary) {
        let Some(age) = forget_after else { return };
        let before = Timestamp(Timestamp::now().0.saturating_sub(age.as_millis() as u64));
        let n = self.pipeline.gallery_mut().forget_unseen(before);
        if n > 0 {
            log::info!("forgot {n} identities not seen for {age:?} (gallery.forget_after)");
            summary.identities_forgotten += n as u64;
            self.erase = true;
        }
    }

    /// `id` has just been removed from the gallery (through the API, or by a peer's erasure):
    /// the next save leaves no copy in the backup, no track keeps naming the person, and the
    /// thumbnail goes now, not at the next save's sweep. Errors: the thumbnail's.
    fn erased(&mut self, id: crate::gallery::PersonId) -> std::io::Result<()> {
        self.erase = true;
        self.pipeline.release(id);
        self.thumbs.as_ref().map_or(Ok(()), |t| t.remove(id))
    }

    /// Applies the shared identities that arrived and, every `SHARE_EVERY`, publishes this
    /// camera's changes. Between frames: the gallery belongs to the frame loop.
    fn share(&mut self, mqtt: &Mqtt, updates: &mut Vec<RemoteUpdate>, publish: bool) {
        let Some(sharing) = &mut self.sharing else {
            return;
        };
        mqtt.take_remote(updates);
        let mut changed = false;
        let mut erased = Vec::new();
        for update in updates.drain(..) {
            match sharing.apply(self.pipeline.gallery_mut(), update) {
                None => {}
                Some(Applied::Stored) => changed = true,
                Some(gone) => {
                    changed = true;
                    // Rare: this allocates only when someone erased or merged a shared person.
                    erased.push(gone);
                }
            }
        }
        // Own identities that are another camera's person too (allocates only when one of
        // them changed since the last look), looked for when something arrived and on the
        // publication turns, not every frame.
        let merged = if publish || changed {
            sharing.merges(self.pipeline.gallery_mut())
        } else {
            Vec::new()
        };
        changed |= !merged.is_empty();
        erased.extend(merged);
        if changed {
            self.pipeline.mark_dirty();
            mqtt.set_labelled(self.pipeline.gallery());
        }
        if mqtt.take_republish() {
            sharing.republish();
        }
        // Offline, nothing is published: a connection asks for everything anyway.
        if (publish || changed) && mqtt.connected() {
            let out = sharing.outgoing(self.pipeline.gallery(), &mqtt.config().prefix);
            if !out.is_empty() {
                mqtt.publish_gallery(out);
            }
        }
        for gone in erased {
            let (id, what) = match gone {
                Applied::Merged {
                    from,
                    into,
                    similarity,
                } => {
                    self.pipeline.merged(from, into, similarity);
                    (from, "merged: its tracks moved")
                }
                Applied::Erased(id) => (id, "erased: tracks released"),
                Applied::Stored => continue,
            };
            match self.erased(id) {
                Err(e) => log::error!("thumbnail of {id}: {e} (the next save retries)"),
                Ok(()) if self.thumbs.is_some() => log::info!("{id} {what}, thumbnail deleted"),
                Ok(()) => log::info!("{id} {what}"),
            }
        }
    }

    fn save(&mut self, summary: &mut Summary) -> Result<(), DaemonError> {
        if let Some(path) = &self.gallery_path
            && (self.pipeline.is_dirty() || self.erase)
        {
            if std::mem::take(&mut self.erase) {
                file::save_erasing(self.pipeline.gallery(), &self.model_tag.name, path)?;
            } else {
                file::save(self.pipeline.gallery(), &self.model_tag.name, path)?;
            }
            if let Some(sharing) = &self.sharing {
                let peers = Peers::path_for(path);
                if let Err(e) = sharing.peers.save(&peers) {
                    log::error!("{}: cannot save: {e}", peers.display());
                }
            }
            self.pipeline.mark_saved();
            summary.gallery_saves += 1;
            // Pictures of identities that left the gallery since (evicted, forgotten, merged).
            if let Some(t) = &self.thumbs {
                t.keep_only(self.pipeline.gallery());
            }
            log::debug!(
                "{}: saved {} identities",
                path.display(),
                self.pipeline.gallery().len()
            );
        }
        Ok(())
    }
}

/// Damaged replay frames in a row after which the stream is given up (a file that is damaged
/// throughout, or not video at all past its header).
const MAX_BAD_IN_A_ROW: u32 = 100;

/// How often own gallery changes are looked for and published (`mqtt.share_gallery`).
const SHARE_EVERY: Duration = Duration::from_secs(1);

/// The services the frame loop talks to, when configured.
struct Links<'a> {
    mqtt: Option<&'a Mqtt>,
    http: Option<&'a mut Http>,
}

/// Why the frame loop returned.
enum Exit {
    Ended(&'static str),
    Reload,
}

/// Runs the daemon: `load` gives the configuration (called again on reload; a configuration
/// that fails to load or start keeps the previous one running); `notify` receives sd_notify
/// states (`READY=1`, `RELOADING=1`, `STOPPING=1`, `WATCHDOG=1`, `STATUS=…`).
pub fn run(
    load: impl FnMut() -> Result<RunConfig, ConfigError>,
    controls: &Controls,
    notify: impl FnMut(&str),
    watchdog: Option<Duration>,
) -> Result<Summary, DaemonError> {
    run_with_source(load, controls, notify, watchdog, None)
}

/// [`run`] with the source opened by `custom` (a live source, reopened when it fails) instead of
/// the configured one, for the first configuration; a reload uses the configured source.
pub fn run_with_source(
    mut load: impl FnMut() -> Result<RunConfig, ConfigError>,
    controls: &Controls,
    mut notify: impl FnMut(&str),
    watchdog: Option<Duration>,
    custom: Option<Opener>,
) -> Result<Summary, DaemonError> {
    let mut config = load()?;
    // Kept across reloads: the API's recent events do not restart with the pipeline.
    let recent = Recent::new();
    let mut mqtt = start_mqtt(&config, None)?;
    let mut running = start(&config, custom, mqtt.as_ref(), &recent)?;
    let mut http = api::start_http(&config, None, &running, &recent)?;
    let mut summary = Summary::default();
    loop {
        notify("READY=1");
        let exit = frame_loop(
            &config,
            &mut running,
            Links {
                mqtt: mqtt.as_ref(),
                http: http.as_mut(),
            },
            controls,
            &mut notify,
            watchdog,
            &mut summary,
        );
        // Whatever happened, keep what the gallery learnt (and forget what it must).
        running.forget(config.forget_after, &mut summary);
        let saved = running.save(&mut summary);
        running.pipeline.flush_events().ok();
        let exit = exit?;
        saved?;
        match exit {
            Exit::Ended(why) => {
                summary.ended_by = why.into();
                notify("STOPPING=1");
                summary.mqtt = mqtt.take().map(Mqtt::stop);
                if let Some(h) = http.take() {
                    h.stop();
                }
                return Ok(summary);
            }
            Exit::Reload => {
                notify("RELOADING=1");
                summary.reloads += 1;
                match load() {
                    Ok(new) => {
                        let next_track = running.pipeline.next_track_id();
                        // Free the camera and the gallery lock before the new configuration takes them.
                        drop(running);
                        let started = start_mqtt(&new, mqtt.take()).and_then(|m| {
                            mqtt = m;
                            start(&new, None, mqtt.as_ref(), &recent)
                        });
                        match started {
                            Ok(r) => {
                                log::info!("configuration reloaded");
                                running = r;
                                config = new;
                            }
                            Err(e) => {
                                log::error!(
                                    "reload failed, keeping the previous configuration: {e}"
                                );
                                mqtt = start_mqtt(&config, mqtt.take())?;
                                running = start(&config, None, mqtt.as_ref(), &recent)?;
                            }
                        }
                        running.pipeline.set_next_track_id(next_track);
                        http = match api::start_http(&config, http.take(), &running, &recent) {
                            Ok(h) => h,
                            Err(e) => {
                                log::error!("http after reload: {e}; the API is off");
                                None
                            }
                        };
                    }
                    Err(e) => log::error!("reload failed, keeping the previous configuration: {e}"),
                }
            }
        }
    }
}

fn frame_loop(
    config: &RunConfig,
    running: &mut Running,
    links: Links<'_>,
    controls: &Controls,
    notify: &mut impl FnMut(&str),
    watchdog: Option<Duration>,
    summary: &mut Summary,
) -> Result<Exit, DaemonError> {
    let Links { mqtt, mut http } = links;
    let started = Instant::now();
    let mut last_save = Instant::now();
    let mut last_ping = Instant::now();
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut capture_time = Duration::ZERO;
    let mut frames = 0u64;
    let mut stream_time = Duration::ZERO;
    let mut first_stream: Option<Duration> = None;
    let warmup = config.max_frames.map_or(1000, |m| (m / 10).clamp(1, 1000));
    summary.warmup_frames = warmup;
    summary.source = running.source_name.clone();
    summary.detector = running.pipeline.detector_description();
    summary.model = format!("{} ({})", running.model_tag.name, config.model.display());
    let frame_limit = config.max_frames.unwrap_or(u64::MAX);
    let mut camera_down = false;
    // Damaged replay frames in a row: past MAX_BAD_IN_A_ROW the stream is given up.
    let mut bad_in_a_row = 0u32;
    // Detect every N-th frame: configured, or measured over the first frames where the frame
    // rate matters (a camera, a paced replay); as fast as possible, every frame.
    let mut pace = (config.detect_every.is_none() && (running.reopening || config.realtime))
        .then(DetectPace::default);
    summary.detect_every = running.pipeline.detect_every();
    // Identities that went unseen while the daemon was off are forgotten at once.
    running.forget(config.forget_after, summary);
    let mut updates = Vec::new();
    let mut last_share: Option<Instant> = None;
    let mut clock = api::StageClock::default();
    let exit = loop {
        if let Some(h) = http.as_deref() {
            h.beat();
            running.serve_changes(h, mqtt, (frames, stream_time), summary);
        }
        if let Some(m) = mqtt {
            let due = last_share.is_none_or(|t| t.elapsed() >= SHARE_EVERY);
            running.share(m, &mut updates, due);
            if due {
                last_share = Some(Instant::now());
            }
        }
        if controls.stop.load(Ordering::Relaxed) {
            break Exit::Ended("stopped");
        }
        if controls.reload.swap(false, Ordering::Relaxed) {
            break Exit::Reload;
        }
        if frames >= frame_limit {
            break Exit::Ended("frame limit");
        }
        let now = started.elapsed();
        if let Some(period) = watchdog
            && last_ping.elapsed() >= period
        {
            notify("WATCHDOG=1");
            last_ping = Instant::now();
        }
        if last_save.elapsed() >= config.save_every {
            running.forget(config.forget_after, summary);
            if let Err(e) = running.save(summary) {
                log::error!("cannot save the gallery (will retry): {e}");
                if let Some(led) = &mut running.led {
                    led.set_error(true);
                }
            }
            last_save = Instant::now();
        }
        let t0 = Instant::now();
        let frame = match running.source.next_frame() {
            Ok(frame) => frame,
            Err(CaptureError::Ended { .. }) => break Exit::Ended("end of stream"),
            Err(e @ CaptureError::BadFrame { .. }) => {
                summary.bad_frames += 1;
                bad_in_a_row += 1;
                if summary.bad_frames.is_power_of_two() {
                    log::warn!("{e} ({} damaged frames so far)", summary.bad_frames);
                }
                if bad_in_a_row > MAX_BAD_IN_A_ROW {
                    log::error!("{MAX_BAD_IN_A_ROW} damaged frames in a row: ending the replay");
                    summary.damaged = Some(e.to_string());
                    break Exit::Ended("damaged stream");
                }
                continue;
            }
            // A replay that breaks off after it played (a truncated recording): ends as at
            // its end, with the tracks' leave events, the gallery saved and the summary.
            Err(e @ CaptureError::Replay { .. }) if frames > 0 => {
                log::error!("{e}: ending the replay here");
                summary.damaged = Some(e.to_string());
                break Exit::Ended("damaged stream");
            }
            Err(e) if running.reopening && e.is_transient() => {
                let delay = backoff.next_delay();
                log::warn!("{e}; reopening in {delay:?}");
                camera_down = true;
                if let Some(h) = http.as_deref() {
                    h.set_camera_down(true);
                }
                if let Some(led) = &mut running.led {
                    led.set_error(true);
                    led.update(now).ok();
                }
                notify("STATUS=camera lost, reopening");
                // Sleep in small steps so that a stop request is not delayed.
                let until = Instant::now() + delay;
                while Instant::now() < until && !controls.stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                    // The API stays served while the camera is away (rename, erase, enrol
                    // answer at once instead of timing out).
                    if let Some(h) = http.as_deref() {
                        h.beat();
                        running.serve_changes(h, mqtt, (frames, stream_time), summary);
                    }
                }
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if camera_down {
            camera_down = false;
            backoff.reset();
            notify("STATUS=running");
            if let Some(h) = http.as_deref() {
                h.set_camera_down(false);
            }
            if let Some(led) = &mut running.led {
                led.set_error(false);
            }
        }
        bad_in_a_row = 0;
        let capture = t0.elapsed();
        capture_time += capture;
        let first = *first_stream.get_or_insert(frame.timestamp);
        stream_time = frame.timestamp.saturating_sub(first);
        if config.realtime {
            let due = started + stream_time;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let t1 = Instant::now();
        let outcome = running
            .pipeline
            .process(frame.image, frames, stream_time, frame.name)?;
        if running.stills {
            // Each image is its own scene: its people are tracks of one frame.
            running.pipeline.finish(frames, stream_time, frame.name)?;
        }
        frames += 1;
        if let Some(h) = http.as_deref_mut() {
            if h.live_due() {
                let pipeline = &running.pipeline;
                h.live_frame(frames, frame.image, |out| pipeline.shown(out));
            }
            let times = clock.frame(running.pipeline.stats(), capture, capture + t1.elapsed());
            h.frame(&times);
            if h.publish_due() {
                running.publish(h, mqtt, frames, started.elapsed(), summary);
            }
        }
        if let Some(p) = &mut pace
            && let Some(n) = p.observe(stream_time, running.pipeline.stats())
        {
            log::info!(
                "detector {:.1} ms per frame, a frame every {:.1} ms: detecting every {n} frame(s)",
                p.detect_ms,
                p.interval_ms
            );
            running.pipeline.set_detect_every(n);
            summary.detect_every = n;
            pace = None;
        }
        if let Some(led) = &mut running.led {
            if outcome.recognised {
                led.known_person(now);
            }
            if let Err(e) = led.update(now) {
                log::warn!("{e}");
            }
        }
        if let Some(button) = &mut running.button {
            match button.poll(now) {
                Ok(true) => match running
                    .pipeline
                    .enrol_track(None, None, frames, stream_time)?
                {
                    Ok(id) => log::info!("enrolled the current track as {id}"),
                    Err(why) => log::warn!("enroll button: {why}"),
                },
                Ok(false) => {}
                Err(e) => log::warn!("{e}"),
            }
        }
        if frames == warmup {
            summary.rss_after_warmup_kib = rss_kib();
            summary.rss_max_kib = summary.rss_after_warmup_kib;
        } else if frames > warmup && frames.is_multiple_of(100) {
            summary.rss_max_kib = summary.rss_max_kib.max(rss_kib());
        }
    };
    // Stop or reload: every track leaves (a reload starts a new pipeline); the last gallery
    // changes go out.
    running.pipeline.finish(frames, stream_time, "")?;
    if let Some(m) = mqtt {
        running.share(m, &mut updates, true);
    }
    summary.camera_reopens = running.source.reopens();
    let seconds = started.elapsed().as_secs_f64();
    let stats = running.pipeline.stats().clone();
    let per = |d: Duration| {
        if frames == 0 {
            0.0
        } else {
            d.as_secs_f64() * 1000.0 / frames as f64
        }
    };
    summary.frames += frames;
    summary.seconds += seconds;
    summary.fps = summary.frames as f64 / summary.seconds.max(1e-9);
    summary.per_frame_ms = StageMs {
        capture: per(capture_time),
        detect: per(stats.detect),
        track: per(stats.track),
        embed: per(stats.embed),
        gallery: per(stats.gallery),
        events: per(stats.events_time),
        total: per(started.elapsed()),
    };
    summary.embed_per_crop_ms = if stats.crops_embedded == 0 {
        0.0
    } else {
        stats.embed.as_secs_f64() * 1000.0 / stats.crops_embedded as f64
    };
    summary.identities = running.pipeline.gallery().len();
    summary.counts = stats;
    summary.rss_end_kib = rss_kib();
    summary.rss_max_kib = summary.rss_max_kib.max(summary.rss_end_kib);
    if summary.rss_after_warmup_kib == 0 {
        // A run shorter than the warm-up: the end is all there is.
        summary.rss_after_warmup_kib = summary.rss_end_kib;
        summary.warmup_frames = frames;
    }
    Ok(exit)
}

/// Chooses how often to detect from what the first frames measured: the detector may take at
/// most [`DetectPace::SHARE`] of the time between frames on average.
#[derive(Debug, Default)]
struct DetectPace {
    first: Option<(Duration, Duration, u64)>,
    detect_ms: f64,
    interval_ms: f64,
}

impl DetectPace {
    /// Frames measured (after one for warm-up).
    const FRAMES: u64 = 8;
    const SHARE: f64 = 0.6;

    /// Called after each frame; Some(N) once decided.
    fn observe(&mut self, stream_time: Duration, stats: &Stats) -> Option<u32> {
        let Some((t0, d0, runs0)) = self.first else {
            // The first frame warms the detector up: measure from the next.
            self.first = Some((stream_time, stats.detect, stats.detector_runs));
            return None;
        };
        let runs = stats.detector_runs - runs0;
        if runs < Self::FRAMES {
            return None;
        }
        self.detect_ms = (stats.detect - d0).as_secs_f64() * 1e3 / runs as f64;
        self.interval_ms = (stream_time.saturating_sub(t0)).as_secs_f64() * 1e3 / runs as f64;
        Some(detect_every(self.detect_ms, self.interval_ms, Self::SHARE))
    }
}

/// Frames per detection so that detecting takes at most `share` of the frame time.
fn detect_every(detect_ms: f64, interval_ms: f64, share: f64) -> u32 {
    if interval_ms.is_nan() || interval_ms <= 0.0 {
        return 1;
    }
    let n = (detect_ms / (share * interval_ms)).ceil();
    (n as u32).clamp(1, crate::config::MAX_DETECT_EVERY)
}

/// Sends a state to systemd's notification socket (`$NOTIFY_SOCKET`), if any.
pub fn sd_notify(state: &str) {
    use std::os::unix::net::UnixDatagram;
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = socket.as_encoded_bytes();
    let result = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|addr| sock.send_to_addr(state.as_bytes(), &addr))
    } else {
        sock.send_to(state.as_bytes(), Path::new(&socket))
    };
    if let Err(e) = result {
        log::debug!("sd_notify {state}: {e}");
    }
}

/// The watchdog period systemd asks for (`$WATCHDOG_USEC`), halved, if it is meant for us.
pub fn watchdog_period() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    Some(Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_interval_follows_the_detector_time() {
        // 80 ms detector, 10 fps camera: 80 / (0.6 · 100) → every 2nd frame.
        assert_eq!(detect_every(80.0, 100.0, 0.6), 2);
        assert_eq!(detect_every(20.0, 100.0, 0.6), 1);
        // A Pi-4-class 700 ms detector at 25 fps: every 30th frame at most.
        assert_eq!(detect_every(700.0, 40.0, 0.6), 30);
        assert_eq!(detect_every(5.0, 0.0, 0.6), 1);
    }

    #[test]
    fn the_pace_is_measured_after_a_warm_up_frame() {
        let mut pace = DetectPace::default();
        let mut stats = Stats::default();
        let mut decided = None;
        for f in 0..20u64 {
            // warm-up frame: 500 ms; then 90 ms per detection at 25 fps
            stats.detect += Duration::from_millis(if f == 0 { 500 } else { 90 });
            stats.detector_runs += 1;
            if let Some(n) = pace.observe(Duration::from_millis(40 * f), &stats) {
                decided = Some((f, n));
                break;
            }
        }
        // 90 / (0.6 · 40) = 3.75 → every 4th frame, decided after 1 + 8 frames
        assert_eq!(decided, Some((8, 4)));
    }
}
