//! Pieces of the command line that are not library material: progress display and plots.

/// Writes a line to standard output, as `println!` would, but a reader that went away
/// (`reidcam gallery list | head -1`) is an error (`main` ends the command quietly, exit 0, on
/// it) where `println!` would panic. Commands write their files before the lines that report
/// them, so nothing is lost by stopping there.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*)
            .map_err(|e| anyhow::Error::new(e).context("writing to standard output"))?
    }};
}
pub(crate) use out;

/// Whether an error is a closed standard output (the reader went away).
pub fn is_closed_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

pub mod capture;
pub mod detect;
pub mod gallery;
#[cfg(feature = "tools")]
pub mod plot;
/// A build without the `tools` feature has no plots (`calibrate` refuses to start).
#[cfg(not(feature = "tools"))]
pub mod plot {
    pub fn similarity_distributions(
        path: &std::path::Path,
        _title: &str,
        _pairs: &reidcam::eval::PairSimilarities,
        _points: &[reidcam::eval::OperatingPoint],
    ) -> anyhow::Result<()> {
        anyhow::bail!(
            "{}: this build has no plots (Cargo feature `tools`)",
            path.display()
        )
    }
}
pub mod run;

/// A progress bar on stderr (drawn only when stderr is a terminal; none in a build without the
/// `tools` feature).
pub struct Progress {
    #[cfg(feature = "tools")]
    bar: indicatif::ProgressBar,
}

impl Progress {
    pub fn set_position(&self, done: u64) {
        #[cfg(feature = "tools")]
        self.bar.set_position(done);
        #[cfg(not(feature = "tools"))]
        let _ = done;
    }

    pub fn finish_and_clear(&self) {
        #[cfg(feature = "tools")]
        self.bar.finish_and_clear();
    }
}

pub fn progress_bar(total: u64, what: &str) -> Progress {
    #[cfg(feature = "tools")]
    {
        use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(what.to_owned());
        Progress { bar }
    }
    #[cfg(not(feature = "tools"))]
    {
        let _ = (total, what);
        Progress {}
    }
}

/// The matching policy for a model: its calibrated `[matching] threshold` if the manifest has
/// one, the gallery's defaults otherwise.
pub fn match_policy(manifest: &reidcam::ModelManifest) -> reidcam::gallery::MatchPolicy {
    let defaults = reidcam::gallery::MatchPolicy::default();
    reidcam::gallery::MatchPolicy {
        threshold: manifest
            .matching
            .as_ref()
            .map_or(defaults.threshold, |m| m.threshold as f32),
        ..defaults
    }
}
