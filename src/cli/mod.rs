//! Pieces of the command line that are not library material: progress display and plots.

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
