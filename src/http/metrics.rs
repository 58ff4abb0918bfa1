//! `/metrics` in the Prometheus text format (0.0.4), through `prometheus-client`.
//!
//! Per-stage frame times are histograms the frame loop observes into with atomic adds
//! ([`StageHistogram`]): it never waits for a scrape, never parks, never allocates. Counters and gauges are read from the
//! snapshot the frame loop publishes about once a second, at scrape time. No person id or label
//! is ever a metric label: metrics leave the device more often than anything else.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use super::{Shared, Status};
use crate::pipeline::StageMs;

pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

type Stage = [(&'static str, &'static str); 1];

/// The stages a frame's time is split into.
const STAGES: [&str; 7] = [
    "capture", "detect", "track", "embed", "gallery", "events", "total",
];

pub struct Metrics {
    registry: Registry,
    /// One histogram per stage, in `STAGES` order (handles into the registry's family).
    stages: Vec<StageHistogram>,
}

/// A histogram of seconds with the classic buckets, in atomics: observing is a few relaxed
/// atomic adds, from one writer (the frame loop). prometheus_client's `Histogram` takes a
/// `parking_lot` mutex per observation; when a scrape held it, the frame loop parked, and a
/// thread's first park allocates `parking_lot`'s per-thread data (two allocations in 28,107
/// turns of the frame loop under load, in the allocation test). A scrape reads each bucket
/// once: the count it reports is their sum, so the `+Inf` bucket always equals it.
#[derive(Clone, Debug)]
pub struct StageHistogram(Arc<Buckets>);

#[derive(Debug)]
struct Buckets {
    /// Upper bounds, the last `+∞`.
    bounds: Vec<f64>,
    counts: Vec<AtomicU64>,
    /// The sum of the observations, as `f64` bits (one writer: load, add, store).
    sum: AtomicU64,
}

impl StageHistogram {
    /// Buckets `bounds` (finite ones kept) and `+∞`, as prometheus_client's `Histogram::new`.
    pub fn new(bounds: impl IntoIterator<Item = f64>) -> Self {
        let bounds: Vec<f64> = bounds
            .into_iter()
            .filter(|b| b.is_finite())
            .chain([f64::INFINITY])
            .collect();
        let counts = bounds.iter().map(|_| AtomicU64::new(0)).collect();
        StageHistogram(Arc::new(Buckets {
            bounds,
            counts,
            sum: AtomicU64::new(0f64.to_bits()),
        }))
    }

    /// One observation (NaN counts in the `+∞` bucket, as prometheus_client's does).
    pub fn observe(&self, v: f64) {
        let b = &self.0;
        let at = b
            .bounds
            .iter()
            .position(|&u| u >= v)
            .unwrap_or(b.bounds.len() - 1);
        b.counts[at].fetch_add(1, Ordering::Relaxed);
        let sum = f64::from_bits(b.sum.load(Ordering::Relaxed)) + v;
        b.sum.store(sum.to_bits(), Ordering::Relaxed);
    }
}

impl TypedMetric for StageHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for StageHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> std::fmt::Result {
        let b = &self.0;
        let buckets: Vec<(f64, u64)> = b
            .bounds
            .iter()
            .zip(&b.counts)
            .map(|(&u, c)| (u, c.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, c)| c).sum();
        let sum = f64::from_bits(b.sum.load(Ordering::Relaxed));
        encoder.encode_histogram::<NoLabelSet>(
            sum,
            count,
            &buckets,
            None::<&HashMap<usize, Exemplar<NoLabelSet, f64>>>,
        )
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        // 0.5 ms … 16 s: an embedding on a fast core to a detector under emulation.
        let family = Family::<Stage, StageHistogram>::new_with_constructor(
            (|| StageHistogram::new(exponential_buckets(0.0005, 2.0, 16)))
                as fn() -> StageHistogram,
        );
        let stages = STAGES
            .iter()
            .map(|s| family.get_or_create(&[("stage", *s)]).clone())
            .collect();
        registry.register(
            "reidcam_frame_stage_seconds",
            "Time per frame spent in each stage (total: the whole frame)",
            family,
        );
        registry.register(
            "reidcam_build",
            "The build: version and target architecture",
            Info::new(vec![
                ("version", env!("CARGO_PKG_VERSION")),
                ("arch", std::env::consts::ARCH),
            ]),
        );
        Metrics { registry, stages }
    }

    /// One frame's stage times (milliseconds in, seconds recorded).
    pub fn observe(&self, t: &StageMs) {
        let values = [
            t.capture, t.detect, t.track, t.embed, t.gallery, t.events, t.total,
        ];
        for (h, ms) in self.stages.iter().zip(values) {
            h.observe(ms / 1e3);
        }
    }

    /// The text of a scrape.
    pub fn encode(&self, shared: &Shared) -> String {
        let snapshot = Snapshot {
            status: shared.status.lock().map(|s| s.clone()).unwrap_or_default(),
            uptime: shared.started.elapsed().as_secs_f64(),
            camera_down: shared
                .camera_down
                .load(std::sync::atomic::Ordering::Relaxed),
        };
        let mut of_now = Registry::default();
        of_now.register_collector(Box::new(snapshot));
        let mut out = String::with_capacity(8 << 10);
        for registry in [&self.registry, &of_now] {
            if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, registry)
            {
                log::warn!("http: /metrics: {e}");
            }
        }
        out
    }
}

#[derive(Debug)]
struct Snapshot {
    status: Status,
    uptime: f64,
    camera_down: bool,
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: f64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

/// One counter with a label per kind.
fn by_kind(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &'static str,
    kinds: &[(&'static str, u64)],
) -> std::fmt::Result {
    let first = ConstCounter::new(0u64);
    let mut m = e.encode_descriptor(name, help, None, first.metric_type())?;
    for (kind, v) in kinds {
        ConstCounter::new(*v).encode(m.encode_family(&[(label, *kind)])?)?;
    }
    Ok(())
}

impl Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let s = &self.status;
        let c = &s.counts;
        let e = &mut e;
        counter(e, "reidcam_frames", "Frames processed", s.frames)?;
        counter(
            e,
            "reidcam_detector_runs",
            "Frames the detector ran on",
            c.detector_runs,
        )?;
        counter(e, "reidcam_detections", "People detected", c.detections)?;
        counter(e, "reidcam_tracks", "Tracks started", c.tracks)?;
        counter(e, "reidcam_embeddings", "Crops embedded", c.crops_embedded)?;
        let r = &c.crops_rejected;
        by_kind(
            e,
            "reidcam_crops_rejected",
            "Crops not embedded, by reason",
            "reason",
            &[
                ("score", r.score),
                ("small", r.small),
                ("shape", r.shape),
                ("edge", r.edge),
                ("overlap", r.overlap),
                ("blur", r.blur),
            ],
        )?;
        by_kind(
            e,
            "reidcam_decisions",
            "Identity decisions, by kind",
            "kind",
            &[
                ("new", c.identities_new),
                ("known", c.matches_known),
                ("ambiguous", c.ambiguous),
                ("enrolled", c.enrolled),
            ],
        )?;
        counter(e, "reidcam_events", "Events written", c.events)?;
        counter(
            e,
            "reidcam_events_failed",
            "Events the sink could not take (disk full, ...)",
            c.events_failed,
        )?;
        counter(
            e,
            "reidcam_camera_reopens",
            "Times the camera was reopened",
            s.camera_reopens,
        )?;
        gauge(e, "reidcam_fps", "Frames per second", s.fps)?;
        gauge(
            e,
            "reidcam_identities",
            "Identities in the gallery",
            s.identities as f64,
        )?;
        gauge(
            e,
            "reidcam_gallery_capacity",
            "Identities the gallery's memory budget holds",
            s.capacity as f64,
        )?;
        gauge(
            e,
            "reidcam_gallery_bytes",
            "Gallery memory reserved (the arena for its whole capacity)",
            s.gallery_bytes as f64,
        )?;
        gauge(
            e,
            "reidcam_gallery_used_bytes",
            "Gallery memory its identities fill",
            s.used_bytes as f64,
        )?;
        if let Some((files, bytes, _)) = s.thumbnails {
            gauge(
                e,
                "reidcam_thumbnails",
                "Thumbnail files kept",
                files as f64,
            )?;
            gauge(
                e,
                "reidcam_thumbnail_bytes",
                "Bytes of the thumbnails kept",
                bytes as f64,
            )?;
        }
        gauge(
            e,
            "reidcam_gallery_budget_bytes",
            "Gallery memory budget",
            s.budget_bytes as f64,
        )?;
        gauge(
            e,
            "reidcam_camera_down",
            "1 while the camera is lost",
            f64::from(u8::from(self.camera_down)),
        )?;
        gauge(
            e,
            "reidcam_uptime_seconds",
            "Seconds since start",
            self.uptime,
        )?;
        if let Some(d) = s.mqtt_delivered {
            counter(
                e,
                "reidcam_mqtt_delivered",
                "Events the broker acknowledged",
                d,
            )?;
        }
        if let Some(d) = s.mqtt_dropped {
            counter(
                e,
                "reidcam_mqtt_dropped",
                "Events dropped: MQTT queue full",
                d,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::histogram::Histogram;

    use super::*;

    /// The exposition of `metric` registered alone as `stage_seconds`.
    fn text(metric: impl prometheus_client::registry::Metric) -> String {
        let mut registry = Registry::default();
        registry.register("stage_seconds", "Time", metric);
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).unwrap();
        out
    }

    #[test]
    fn the_atomic_histogram_reads_as_prometheus_clients_own() {
        let bounds = || exponential_buckets(0.0005, 2.0, 16);
        let (ours, theirs) = (StageHistogram::new(bounds()), Histogram::new(bounds()));
        let values = [
            0.0,
            0.0004,
            0.0005,
            0.00051,
            0.013,
            0.25,
            9.0,
            17.0,
            1e9,
            f64::NAN,
        ];
        for (i, &v) in values.iter().enumerate() {
            ours.observe(v);
            theirs.observe(v);
            assert_eq!(text(ours.clone()), text(theirs.clone()), "after {i} values");
        }
        assert!(text(ours).contains("stage_seconds_bucket{le=\"+Inf\"} 10"));
    }
}
