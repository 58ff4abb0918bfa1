//! The calibration plot: same- and different-person similarity distributions with the chosen
//! thresholds, as SVG.

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

use reidcam::eval::{OperatingPoint, PairSimilarities};

const BINS: usize = 100;

/// Normalised histogram (density) of `values` over [lo, hi), `BINS` bins: (bin centre, density).
fn density(values: &[f32], lo: f32, hi: f32) -> Vec<(f32, f32)> {
    let width = (hi - lo) / BINS as f32;
    let mut counts = [0usize; BINS];
    for v in values {
        let bin = (((v - lo) / width) as usize).min(BINS - 1);
        counts[bin] += 1;
    }
    let scale = 1.0 / (values.len() as f32 * width);
    counts
        .iter()
        .enumerate()
        .map(|(i, c)| (lo + (i as f32 + 0.5) * width, *c as f32 * scale))
        .collect()
}

pub fn similarity_distributions(
    path: &Path,
    title: &str,
    pairs: &PairSimilarities,
    points: &[OperatingPoint],
) -> anyhow::Result<()> {
    let all = pairs.same.iter().chain(&pairs.different);
    let lo = all.clone().copied().fold(f32::INFINITY, f32::min).min(0.0);
    let hi = all
        .copied()
        .fold(f32::NEG_INFINITY, f32::max)
        .max(lo + 1e-3);
    let same = density(&pairs.same, lo, hi);
    let different = density(&pairs.different, lo, hi);
    let top = same
        .iter()
        .chain(&different)
        .map(|p| p.1)
        .fold(0.0, f32::max)
        * 1.1;

    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    let draw =
        |e: &dyn std::fmt::Display| anyhow::anyhow!("{}: cannot draw plot: {e}", path.display());
    root.fill(&WHITE).map_err(|e| draw(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(lo..hi, 0f32..top)
        .map_err(|e| draw(&e))?;
    chart
        .configure_mesh()
        .x_desc("cosine similarity")
        .y_desc("density")
        .draw()
        .map_err(|e| draw(&e))?;
    let same_colour = RGBColor(0, 114, 178);
    let different_colour = RGBColor(213, 94, 0);
    chart
        .draw_series(
            AreaSeries::new(same.clone(), 0.0, same_colour.mix(0.25)).border_style(same_colour),
        )
        .map_err(|e| draw(&e))?
        .label(format!("same person ({} pairs)", pairs.same.len()))
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 18, y + 5)], same_colour.filled()));
    chart
        .draw_series(
            AreaSeries::new(different, 0.0, different_colour.mix(0.25))
                .border_style(different_colour),
        )
        .map_err(|e| draw(&e))?
        .label(format!(
            "different people ({} pairs)",
            pairs.different.len()
        ))
        .legend(move |(x, y)| {
            Rectangle::new([(x, y - 5), (x + 18, y + 5)], different_colour.filled())
        });
    let shades = [BLACK, RGBColor(110, 110, 110), RGBColor(170, 170, 170)];
    for (i, p) in points.iter().enumerate() {
        let shade = shades[i % shades.len()];
        let label = format!(
            "threshold {:.3}: FMR {:.2}%, TMR {:.1}%",
            p.threshold,
            100.0 * p.fmr,
            100.0 * p.tmr
        );
        chart
            .draw_series(LineSeries::new(
                [(p.threshold, 0.0), (p.threshold, top)],
                shade.stroke_width(2),
            ))
            .map_err(|e| draw(&e))?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], shade.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| draw(&e))?;
    root.present()
        .map_err(|e| draw(&e))
        .context("writing the plot")?;
    Ok(())
}
