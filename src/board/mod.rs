//! Board profiles (`board/<name>.toml`): what a board is and what it must achieve. Data, not
//! code: nothing else in the crate names a board.
//!
//! ```toml
//! [board]
//! name = "raspberry-pi-4"                 # required
//! description = "Raspberry Pi 4 Model B"  # free text
//! target = "aarch64-unknown-linux-gnu"    # the Rust target its binaries are built for
//!
//! [budget]                                # `reidcam bench --board` fails above these
//! embed_p50_ms = 60.0                     # median latency per crop, batch 1
//! embed_p99_ms = 90.0                     # 99th percentile
//! threads = 1                             # threads for the benchmark (default 1)
//!
//! [io.led]                                # optional: status LED (see `io`)
//! chip = "/dev/gpiochip0"                 # GPIO character device
//! line = 17                               # line offset on that chip
//! active_low = false                      # true: the LED lights when the line is low
//!
//! [io.button]                             # optional: enroll button
//! chip = "/dev/gpiochip0"
//! line = 27
//! active_low = true                       # pulled up, pressed pulls it low
//! ```

pub mod io;

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoardProfile {
    pub board: BoardInfo,
    pub budget: LatencyBudget,
    /// GPIO for the status LED and the enroll button (none: no board I/O).
    #[serde(default)]
    pub io: BoardIo,
}

/// `[io]`: which GPIO lines the daemon drives.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoardIo {
    pub led: Option<GpioLine>,
    pub button: Option<GpioLine>,
}

/// One line of a GPIO character device.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpioLine {
    pub chip: PathBuf,
    pub line: u32,
    #[serde(default)]
    pub active_low: bool,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoardInfo {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Rust target triple of the board's binaries.
    pub target: String,
}

/// Latency the default embedding path must meet on the board (batch 1).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyBudget {
    pub embed_p50_ms: f64,
    pub embed_p99_ms: f64,
    #[serde(default = "one")]
    pub threads: usize,
}

fn one() -> usize {
    1
}

#[derive(Debug, thiserror::Error)]
pub enum BoardError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a valid board profile: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {field} {problem}")]
    Invalid {
        path: PathBuf,
        field: &'static str,
        problem: String,
    },
}

/// How a measurement compares with a budget.
#[derive(Clone, Debug, PartialEq)]
pub struct BudgetCheck {
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// One line per exceeded limit, naming the field.
    pub exceeded: Vec<String>,
}

impl BoardProfile {
    pub fn load(path: &Path) -> Result<Self, BoardError> {
        let text = std::fs::read_to_string(path).map_err(|source| BoardError::Read {
            path: path.to_owned(),
            source,
        })?;
        let profile: BoardProfile = toml::from_str(&text).map_err(|e| BoardError::Parse {
            path: path.to_owned(),
            message: e.message().to_owned(),
        })?;
        let invalid = |field, problem: String| BoardError::Invalid {
            path: path.to_owned(),
            field,
            problem,
        };
        let b = &profile.budget;
        for (field, v) in [
            ("budget.embed_p50_ms", b.embed_p50_ms),
            ("budget.embed_p99_ms", b.embed_p99_ms),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(invalid(
                    field,
                    format!("is {v}: expected a positive number of milliseconds"),
                ));
            }
        }
        if b.embed_p99_ms < b.embed_p50_ms {
            return Err(invalid(
                "budget.embed_p99_ms",
                format!(
                    "({}) is below budget.embed_p50_ms ({})",
                    b.embed_p99_ms, b.embed_p50_ms
                ),
            ));
        }
        if b.threads == 0 {
            return Err(invalid(
                "budget.threads",
                "is 0: expected at least 1".into(),
            ));
        }
        if profile.board.name.trim().is_empty() {
            return Err(invalid("board.name", "must not be empty".into()));
        }
        Ok(profile)
    }

    /// Compares measured per-crop latencies with the budget.
    pub fn check(&self, p50_ms: f64, p99_ms: f64) -> BudgetCheck {
        let mut exceeded = Vec::new();
        if p50_ms > self.budget.embed_p50_ms {
            exceeded.push(format!(
                "median latency {p50_ms:.2} ms exceeds budget.embed_p50_ms = {} ms",
                self.budget.embed_p50_ms
            ));
        }
        if p99_ms > self.budget.embed_p99_ms {
            exceeded.push(format!(
                "p99 latency {p99_ms:.2} ms exceeds budget.embed_p99_ms = {} ms",
                self.budget.embed_p99_ms
            ));
        }
        BudgetCheck {
            p50_ms,
            p99_ms,
            exceeded,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("reidcam-board-{}-{name}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        path
    }

    const GOOD: &str = "[board]\nname = \"x\"\ntarget = \"aarch64-unknown-linux-gnu\"\n\n[budget]\nembed_p50_ms = 10.0\nembed_p99_ms = 20.0\n";

    #[test]
    fn budget_checks_name_the_field() {
        let p = BoardProfile::load(&write("good", GOOD)).unwrap();
        assert_eq!(p.budget.threads, 1);
        assert!(p.check(9.0, 19.0).exceeded.is_empty());
        let c = p.check(11.0, 25.0);
        assert_eq!(c.exceeded.len(), 2);
        assert!(
            c.exceeded[0].contains("budget.embed_p50_ms = 10 ms"),
            "{:?}",
            c.exceeded
        );
    }

    #[test]
    fn bad_profiles_are_refused_with_the_field() {
        let err = BoardProfile::load(&write(
            "typo",
            &GOOD.replace("embed_p99_ms", "embed_p98_ms"),
        ))
        .unwrap_err();
        assert!(
            err.to_string().contains("unknown field `embed_p98_ms`"),
            "{err}"
        );
        let err = BoardProfile::load(&write("neg", &GOOD.replace("10.0", "-1.0"))).unwrap_err();
        assert!(
            err.to_string().contains("budget.embed_p50_ms is -1"),
            "{err}"
        );
        let err = BoardProfile::load(&write("order", &GOOD.replace("20.0", "5.0"))).unwrap_err();
        assert!(
            err.to_string().contains("budget.embed_p99_ms (5) is below"),
            "{err}"
        );
    }
}
