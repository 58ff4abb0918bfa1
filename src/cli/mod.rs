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
pub mod plot;
pub mod run;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar on stderr (drawn only when stderr is a terminal).
pub fn progress_bar(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(what.to_owned());
    bar
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
