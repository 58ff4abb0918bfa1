//! Inference benchmark behind `reidcam bench`: load + optimise time, latency per crop over many
//! runs (p50/p90/p99), throughput, preprocessing cost and peak RSS.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::embed::{EmbedError, Embedder};
use crate::frame::RgbImage;
use crate::preprocess::Preprocessor;

/// How long to measure.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Untimed runs first (caches, lazy kernels).
    pub warmup_runs: usize,
    /// At least this many timed runs...
    pub min_runs: usize,
    /// ...and at least this much timed time.
    pub min_time: Duration,
    /// Never more than this many runs.
    pub max_runs: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            warmup_runs: 5,
            min_runs: 100,
            min_time: Duration::from_secs(3),
            max_runs: 100_000,
        }
    }
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Debug, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub mean: f64,
    pub min: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `samples` (sorted in place).
    pub fn of(samples: &mut [f64]) -> Self {
        assert!(!samples.is_empty(), "no samples");
        samples.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            let i = ((p / 100.0) * samples.len() as f64).ceil() as usize;
            samples[i.clamp(1, samples.len()) - 1]
        };
        Self {
            p50: rank(50.0),
            p90: rank(90.0),
            p99: rank(99.0),
            mean: samples.iter().sum::<f64>() / samples.len() as f64,
            min: samples[0],
        }
    }
}

/// What `reidcam bench` reports.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub model_name: String,
    pub input: [u32; 2],
    pub dim: usize,
    pub batch: usize,
    pub threads: usize,
    /// Reading, checking, optimising and planning the model, ms.
    pub load_ms: f64,
    pub runs: usize,
    /// Inference latency divided by the batch size, ms.
    pub latency_per_crop_ms: Percentiles,
    /// Inference latency of a whole batch, ms.
    pub latency_per_batch_ms: Percentiles,
    /// Crops per second over all timed runs.
    pub throughput_crops_per_s: f64,
    /// Resize + normalise of one 96×240 crop, µs (median).
    pub preprocess_us_per_crop: f64,
    /// Peak resident set size of the process (VmHWM), MiB.
    pub peak_rss_mib: Option<f64>,
    /// The CPU and the kernel sets in use (figures mean nothing without them).
    pub cpu: String,
    pub kernels: String,
}

/// The CPU model as /proc/cpuinfo names it (`model name` on x86; the core from `CPU part` on
/// ARM), or `unknown CPU`.
pub fn cpu_model() -> String {
    let text = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |key: &str| {
        text.lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == key))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
    };
    if let Some(name) = field("model name") {
        return name;
    }
    match field("CPU part").as_deref() {
        Some("0xd03") => "Arm Cortex-A53".into(),
        Some("0xd04") => "Arm Cortex-A35".into(),
        Some("0xd05") => "Arm Cortex-A55".into(),
        Some("0xd08") => "Arm Cortex-A72".into(),
        Some("0xd0b") => "Arm Cortex-A76".into(),
        Some("0xd0c") => "Arm Neoverse-N1".into(),
        Some(part) => format!("Arm CPU part {part}"),
        None => "unknown CPU".into(),
    }
}

/// The kernel sets the embedder uses here: `avx512f`, `avx2+fma`, `neon`, … and the int8 dot
/// products (`avx512-vnni`, `avx2-madd`, `neon-dotprod`, `neon-smlal`, or none: int8 layers
/// from dequantised weights).
pub fn kernel_sets() -> String {
    let dot = crate::embed::Dot::detect().map_or("none".to_owned(), |d| d.to_string());
    format!("{}, int8 dot products: {dot}", crate::embed::Isa::detect())
}

/// Benchmarks `embedder` with its configured batch. `threads` is reported as given.
pub fn run(
    embedder: &mut Embedder,
    threads: usize,
    options: &BenchOptions,
) -> Result<BenchReport, EmbedError> {
    let batch = embedder.batch_size();
    let spec = embedder.manifest().input.clone();
    let crop = synthetic_crop(96, 240);
    let mut pre = Preprocessor::with_max_source(&spec, crop.width(), crop.height());

    // Fill the batch with real preprocessed pixels, timing the preprocessing.
    let mut pre_samples = Vec::new();
    for _ in 0..20 {
        for slot in 0..batch {
            let started = Instant::now();
            pre.run(crop.view(), crop.bounds(), embedder.input_slot(slot))
                .expect("synthetic crop fits");
            pre_samples.push(started.elapsed().as_secs_f64() * 1e6);
        }
    }

    for _ in 0..options.warmup_runs {
        embedder.run(batch)?;
    }
    let mut samples = Vec::with_capacity(options.min_runs);
    let started = Instant::now();
    while samples.len() < options.max_runs
        && (samples.len() < options.min_runs || started.elapsed() < options.min_time)
    {
        let t = Instant::now();
        embedder.run(batch)?;
        samples.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let total = started.elapsed().as_secs_f64();
    let runs = samples.len();
    let mut per_crop: Vec<f64> = samples.iter().map(|ms| ms / batch as f64).collect();
    let manifest = embedder.manifest();
    Ok(BenchReport {
        model: embedder.label().to_owned(),
        model_name: manifest.model.name.clone(),
        input: [manifest.input.height, manifest.input.width],
        dim: embedder.dim(),
        batch,
        threads,
        load_ms: embedder.load_time().as_secs_f64() * 1e3,
        runs,
        latency_per_crop_ms: Percentiles::of(&mut per_crop),
        latency_per_batch_ms: Percentiles::of(&mut samples),
        throughput_crops_per_s: (runs * batch) as f64 / total,
        preprocess_us_per_crop: Percentiles::of(&mut pre_samples).p50,
        peak_rss_mib: peak_rss_bytes().map(|b| b as f64 / (1024.0 * 1024.0)),
        cpu: cpu_model(),
        kernels: kernel_sets(),
    })
}

/// A deterministic person-sized test crop (smooth gradients plus texture).
pub fn synthetic_crop(width: u32, height: u32) -> RgbImage {
    let mut data = Vec::with_capacity((width * height * 3) as usize);
    for y in 0..height {
        for x in 0..width {
            let texture = ((x * 7 + y * 13) % 17) as u8;
            data.extend_from_slice(&[
                (x * 255 / width) as u8 ^ texture,
                (y * 255 / height) as u8,
                ((x + y) % 256) as u8,
            ]);
        }
    }
    RgbImage::from_raw(width, height, data).expect("sizes match")
}

/// xorshift64*: a small deterministic generator for synthetic data in benches and tests (not
/// for anything that needs real randomness).
#[derive(Clone, Debug)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator from any seed (zero is remapped: xorshift must not start at 0).
    pub fn new(seed: u64) -> Self {
        XorShift(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [-1, 1).
    pub fn signed_unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    /// Uniform in 0..n.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Any i8.
    pub fn i8(&mut self) -> i8 {
        (self.next_u64() >> 56) as u8 as i8
    }
}

/// Peak resident set size of this process (`VmHWM` in `/proc/self/status`), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    proc_status_kib("VmHWM:").map(|kib| kib * 1024)
}

/// Current resident set size (`VmRSS`), in bytes.
pub fn rss_bytes() -> Option<u64> {
    proc_status_kib("VmRSS:").map(|kib| kib * 1024)
}

/// A `kB` field of `/proc/self/status` (`VmRSS:`, `VmHWM:`), read into a stack buffer: no
/// allocation, so the daemon's frame loop may call it. The kernel reports these in KiB whatever
/// its page size (16 KiB and 64 KiB pages: Raspberry Pi 5, some arm64 distributions), unlike
/// `/proc/self/statm`, which counts pages.
pub fn proc_status_kib(key: &str) -> Option<u64> {
    use std::io::Read;
    let mut buf = [0u8; 8192];
    let mut f = std::fs::File::open("/proc/self/status").ok()?;
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(_) => return None,
        }
    }
    parse_status_kib(&buf[..n], key)
}

fn parse_status_kib(status: &[u8], key: &str) -> Option<u64> {
    status
        .split(|&b| b == b'\n')
        .find_map(|l| l.strip_prefix(key.as_bytes()))
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut s: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let p = Percentiles::of(&mut s);
        assert_eq!((p.p50, p.p90, p.p99, p.min), (50.0, 90.0, 99.0, 1.0));
        assert!((p.mean - 50.5).abs() < 1e-9);
        let p = Percentiles::of(&mut [7.0]);
        assert_eq!((p.p50, p.p99), (7.0, 7.0));
    }

    #[test]
    fn status_fields_are_parsed_in_kib_whatever_the_page_size() {
        let status = b"Name:\treidcam\nVmHWM:\t   51234 kB\nVmRSS:\t   40960 kB\nThreads:\t2\n";
        assert_eq!(parse_status_kib(status, "VmRSS:"), Some(40960));
        assert_eq!(parse_status_kib(status, "VmHWM:"), Some(51234));
        assert_eq!(parse_status_kib(status, "VmSwap:"), None);
        assert_eq!(parse_status_kib(b"VmRSS:\tlots kB\n", "VmRSS:"), None);
    }

    #[test]
    fn rss_is_readable_on_linux() {
        // RSS first: other test threads may grow it, and the peak read later covers that.
        let rss = rss_bytes().unwrap();
        let peak = peak_rss_bytes().unwrap();
        assert!(peak >= rss && rss > 1024 * 1024, "rss {rss}, peak {peak}");
    }
}
