//! What the benchmarks against onnxruntime share: finding its library, and timing engines in
//! rotating turns.

#[cfg(target_arch = "x86_64")]
pub mod cpuid;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The onnxruntime shared library: `$ORT_DYLIB_PATH`, else the one in the tools venv's wheel.
pub fn onnxruntime_library() -> PathBuf {
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH") {
        return PathBuf::from(path);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/.venv/lib");
    let found = std::fs::read_dir(&venv).ok().and_then(|pythons| {
        pythons.flatten().find_map(|python| {
            let capi = python.path().join("site-packages/onnxruntime/capi");
            std::fs::read_dir(capi).ok()?.flatten().find_map(|f| {
                let name = f.file_name().to_string_lossy().into_owned();
                name.starts_with("libonnxruntime.so").then(|| f.path())
            })
        })
    });
    found.unwrap_or_else(|| {
        panic!(
            "no libonnxruntime.so under {}: run tools/setup-python.sh, or set ORT_DYLIB_PATH",
            venv.display()
        )
    })
}

/// The onnxruntime environment, loaded from [`onnxruntime_library`]; prints the CPU, our kernel
/// sets and the library, the header every table of these benchmarks starts with.
pub fn onnxruntime_environment() -> ort::environment::Environment {
    let library = onnxruntime_library();
    let env = ort::init_from(&library)
        .unwrap_or_else(|e| panic!("cannot load onnxruntime from {}: {e}", library.display()))
        .with_name("reidcam-bench")
        .build()
        .expect("onnxruntime environment");
    println!(
        "cpu: {}{} ; reidcam kernels: {} ; onnxruntime: {}",
        reidcam::bench::cpu_model(),
        if hidden() {
            " (CPUID without AVX-512, AVX-VNNI, AMX: --cpuid avx2-only)"
        } else {
            ""
        },
        reidcam::bench::kernel_sets(),
        library.display()
    );
    env
}

/// Runs `engines` engines (`run(engine)` runs engine `engine` once) in turns of ~100 ms each
/// (at least one run: tract's own int8 operators take 0.3–1 s per crop, and three runs per
/// turn made them most of the CI speed steps' time), the order rotating, until `seconds` have
/// passed (at least 3 rounds, so at least 3 runs per engine), so that machine noise
/// hits all of them alike, with [`settle`]`(threads)` of sleep before each turn: an engine's
/// idle threads must not run in the next one's turn. onnxruntime's pool spins after a run with
/// two intra-op threads for ~40 ms, one core's worth (measured: the process's CPU time in the
/// 5 ms windows after a run of our detector, Intel Xeon, onnxruntime 1.31), so on two cores the
/// engine after it ran its first ~40 ms with one core and a half; our detector's 2-thread time
/// read 10.7–13.4 ms from run to run that way, 10.4–11.3 with the pause, onnxruntime's own
/// the same either way (13.0–14.0). Returns each engine's run times (ms) and the rounds.
pub fn in_turns(
    engines: usize,
    seconds: f64,
    settle: Duration,
    mut run: impl FnMut(usize),
) -> (Vec<Vec<f64>>, usize) {
    let mut times = vec![Vec::new(); engines];
    let started = Instant::now();
    let mut round = 0;
    let turn_time = Duration::from_millis(100);
    while started.elapsed() < Duration::from_secs_f64(seconds) || round < 3 {
        for turn in 0..engines {
            let engine = (round + turn) % engines;
            std::thread::sleep(settle);
            let turn_started = Instant::now();
            let mut runs = 0;
            while runs == 0 || turn_started.elapsed() < turn_time {
                let t = Instant::now();
                run(engine);
                times[engine].push(t.elapsed().as_secs_f64() * 1e3);
                runs += 1;
            }
        }
        round += 1;
    }
    (times, round)
}

/// The pause [`in_turns`] makes before each turn when the engines run on `threads` threads:
/// none on one (no engine has idle threads then), else 60 ms (onnxruntime's ~40 ms of spinning,
/// and some).
pub fn settle(threads: usize) -> Duration {
    if threads > 1 {
        Duration::from_millis(60)
    } else {
        Duration::ZERO
    }
}

/// The median of `samples`.
pub fn median(samples: &mut [f64]) -> f64 {
    reidcam::bench::Percentiles::of(samples).p50
}

/// `1,8` as numbers, for `flag`.
pub fn list(value: &str, flag: &str) -> Vec<usize> {
    value
        .split(',')
        .map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{flag}: expected numbers like 1,8, got {value:?}"))
        })
        .collect()
}

/// The shared data: `$REIDCAM_SHARED`, else `../shared` beside the repository.
pub fn shared() -> PathBuf {
    std::env::var_os("REIDCAM_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"))
}

/// Writes the rows to `path` as JSON, if one was asked for (`--json`).
pub fn write_json(path: Option<&Path>, rows: &impl serde::Serialize) {
    if let Some(path) = path {
        let text = serde_json::to_string_pretty(rows).expect("rows serialise");
        std::fs::write(path, text)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }
}

/// Whether `--cpuid avx2-only` hides AVX-512 from this process.
pub fn hidden() -> bool {
    #[cfg(target_arch = "x86_64")]
    return cpuid::hidden();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The options every benchmark here takes: `--threads 1,2`, `--seconds S` (per row, in turns),
/// `--json out.json`, and `--cpuid avx2-only` (x86_64: both engines see a CPU without AVX-512,
/// AVX-VNNI or AMX — [`cpuid`]; given first, before anything detects the CPU).
pub struct Common {
    pub threads: Vec<usize>,
    pub seconds: f64,
    pub json: Option<PathBuf>,
}

impl Default for Common {
    fn default() -> Self {
        Common {
            threads: vec![1, 2],
            seconds: 3.0,
            json: None,
        }
    }
}

impl Common {
    /// Takes `flag`'s `value` if the flag is one of these; false if it is not.
    pub fn take(&mut self, flag: &str, value: &str) -> bool {
        match flag {
            "--threads" => self.threads = list(value, flag),
            "--seconds" => {
                self.seconds = value
                    .parse()
                    .expect("--seconds: expected a number of seconds")
            }
            "--json" => self.json = Some(PathBuf::from(value)),
            "--cpuid" => match value {
                #[cfg(target_arch = "x86_64")]
                "avx2-only" => cpuid::avx2_only(),
                _ => panic!("--cpuid: expected avx2-only (on x86_64), got {value:?}"),
            },
            _ => return false,
        }
        true
    }
}

/// The command line's `--flag value` pairs (cargo's own `--bench`, which it passes to
/// harness-less benches, left out).
pub fn flags() -> Vec<(String, String)> {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let mut pairs = Vec::new();
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .unwrap_or_else(|| panic!("{flag} needs a value"));
        pairs.push((flag, value));
    }
    pairs
}
