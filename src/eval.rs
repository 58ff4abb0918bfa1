//! Evaluation with the Market-1501 protocol, on embeddings made by the firmware's own path, and
//! threshold calibration.
//!
//! - [`MarketSet::open`] reads a directory in Market-1501 layout: `query/` and
//!   `bounding_box_test/`, files named `PPPP_cCsS_FFFFFF_BB.jpg|png` (pid `-1` = junk, dropped;
//!   pid `0000` = distractor, kept as a negative).
//! - [`evaluate`] takes a query × gallery similarity matrix and computes, per query, after removing
//!   the gallery images of the same id *and* the same camera: CMC rank-k, AP as torchreid computes
//!   it (mean of precision at each hit), AP as the official Market-1501 code does (trapezoid rule
//!   over recall), and INP (hits / rank of the hardest hit). Ties are broken by gallery order
//!   (a stable sort), so results are deterministic.
//! - [`evaluate_identities`] ranks *identities* held in a real [`Gallery`] (stored form,
//!   exemplar policy and aggregation as on the camera) instead of single images.
//! - [`calibrate`] finds the similarity threshold that keeps the false-match rate of cross-camera
//!   different-person pairs under a target, and the true-match rate it keeps.

use std::path::{Path, PathBuf};

use ndarray::ArrayView2;
use serde::Serialize;

use crate::gallery::{
    Candidate, Gallery, GalleryConfig, GalleryError, MatchPolicy, NewIdentity, Timestamp,
};

/// One crop of the dataset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Crop {
    pub path: PathBuf,
    /// Person id; 0 = distractor. Junk (-1) never appears here: it is dropped when loading.
    pub pid: i32,
    pub camera: u32,
}

/// A dataset in Market-1501 layout.
#[derive(Clone, Debug)]
pub struct MarketSet {
    pub query: Vec<Crop>,
    pub gallery: Vec<Crop>,
    /// Junk images (pid -1) dropped from query and gallery.
    pub junk_dropped: usize,
}

/// What is wrong with a dataset directory.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(
        "{}: not a Market-1501 layout directory: missing {missing}/ (expected query/ and bounding_box_test/)",
        dir.display()
    )]
    NotMarketLayout { dir: PathBuf, missing: &'static str },
    #[error("{}: cannot list: {source}", dir.display())]
    List {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{}: file name does not follow Market-1501's PPPP_cCsS_FFFFFF_BB.jpg|png (person id, camera)",
        path.display()
    )]
    BadName { path: PathBuf },
    #[error("{}: no images in {which}/", dir.display())]
    Empty { dir: PathBuf, which: &'static str },
}

impl MarketSet {
    /// Lists `dir/query` and `dir/bounding_box_test`, sorted by file name.
    pub fn open(dir: &Path) -> Result<Self, EvalError> {
        // The layout first, so that a wrong directory is named as such.
        for which in ["query", "bounding_box_test"] {
            if !dir.join(which).is_dir() {
                return Err(EvalError::NotMarketLayout {
                    dir: dir.to_owned(),
                    missing: which,
                });
            }
        }
        let mut junk = 0;
        let mut read = |which: &'static str| -> Result<Vec<Crop>, EvalError> {
            let sub = dir.join(which);
            let entries = std::fs::read_dir(&sub).map_err(|source| EvalError::List {
                dir: sub.clone(),
                source,
            })?;
            let mut paths = Vec::new();
            for entry in entries {
                let path = entry
                    .map_err(|source| EvalError::List {
                        dir: sub.clone(),
                        source,
                    })?
                    .path();
                let ext = path
                    .extension()
                    .and_then(|e| e.to_str())
                    .map(str::to_ascii_lowercase);
                if matches!(ext.as_deref(), Some("jpg" | "jpeg" | "png")) {
                    paths.push(path);
                }
            }
            paths.sort();
            let mut crops = Vec::with_capacity(paths.len());
            for path in paths {
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                let (pid, camera) =
                    parse_name(name).ok_or_else(|| EvalError::BadName { path: path.clone() })?;
                if pid == -1 {
                    junk += 1;
                    continue;
                }
                crops.push(Crop { path, pid, camera });
            }
            if crops.is_empty() {
                return Err(EvalError::Empty {
                    dir: dir.to_owned(),
                    which,
                });
            }
            Ok(crops)
        };
        let query = read("query")?;
        let gallery = read("bounding_box_test")?;
        Ok(Self {
            query,
            gallery,
            junk_dropped: junk,
        })
    }
}

/// Parses `PPPP_cCsS_...` (or `-1_cCsS_...`) into (person id, camera).
pub fn parse_name(name: &str) -> Option<(i32, u32)> {
    let mut parts = name.split('_');
    let pid: i32 = parts.next()?.parse().ok()?;
    if pid < -1 {
        return None;
    }
    let cam = parts.next()?.strip_prefix('c')?;
    let digits = cam.find(|c: char| !c.is_ascii_digit()).unwrap_or(cam.len());
    let camera: u32 = cam[..digits].parse().ok()?;
    // At least one more part (frame index) must follow.
    parts.next()?;
    Some((pid, camera))
}

/// Embeddings of a list of image files through the firmware's path (decode, Pillow-exact resize,
/// tract), batched. Images that cannot be read or decoded are skipped and returned with their
/// error; `progress(done, total)` is called after each batch.
pub struct EmbeddedSet {
    /// One L2-normalised row per readable image, in input order.
    pub embeddings: ndarray::Array2<f32>,
    /// Index into the input list of each row.
    pub kept: Vec<usize>,
    /// Images skipped: input index and the error.
    pub unreadable: Vec<(usize, String)>,
}

pub fn embed_paths(
    embedder: &mut crate::Embedder,
    paths: &[&Path],
    mut progress: impl FnMut(usize, usize),
) -> Result<EmbeddedSet, crate::EmbedError> {
    let dim = embedder.dim();
    let batch = embedder.batch_size();
    let mut pre = crate::Preprocessor::new(&embedder.manifest().input);
    let mut data = Vec::with_capacity(paths.len() * dim);
    let (mut kept, mut unreadable) = (Vec::new(), Vec::new());
    let mut pending = Vec::with_capacity(batch);
    let mut i = 0;
    while i < paths.len() {
        pending.clear();
        while pending.len() < batch && i < paths.len() {
            let loaded = crate::frame::load_image(paths[i]).and_then(|img| {
                pre.run(img.view(), img.bounds(), embedder.input_slot(pending.len()))
            });
            match loaded {
                Ok(()) => pending.push(i),
                Err(e) => unreadable.push((i, e.to_string())),
            }
            i += 1;
        }
        if !pending.is_empty() {
            let rows = embedder.run(pending.len())?;
            data.extend_from_slice(rows.as_flat());
            kept.extend_from_slice(&pending);
        }
        progress(i, paths.len());
    }
    let embeddings =
        ndarray::Array2::from_shape_vec((kept.len(), dim), data).expect("rows are dim long");
    Ok(EmbeddedSet {
        embeddings,
        kept,
        unreadable,
    })
}

/// Identity and camera of every row (query) and column (gallery) of a similarity matrix.
#[derive(Clone, Copy, Debug)]
pub struct Labels<'a> {
    pub query_pids: &'a [i32],
    pub query_cameras: &'a [u32],
    pub gallery_pids: &'a [i32],
    pub gallery_cameras: &'a [u32],
}

/// Market-1501 protocol results, in percent except the counts.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Metrics {
    pub rank1: f64,
    pub rank5: f64,
    pub rank10: f64,
    /// torchreid's AP: mean over hits of precision at the hit.
    pub map: f64,
    /// The official Market-1501 AP: trapezoid rule over recall.
    pub map_official: f64,
    /// Mean inverse negative penalty: hits / (rank of the last hit).
    pub minp: f64,
    /// Queries evaluated (those with at least one valid gallery match).
    pub queries: usize,
    /// Queries without any valid gallery match (same id on another camera): not in the metrics.
    pub queries_without_match: usize,
    pub gallery: usize,
}

/// Evaluates a query × gallery similarity matrix (higher = more alike) with the Market-1501
/// protocol. Gallery entries with pid -1 are treated as junk (ignored), as are those of the query's
/// id on the query's camera.
pub fn evaluate(similarity: ArrayView2<'_, f32>, labels: Labels<'_>) -> Metrics {
    let (nq, ng) = similarity.dim();
    assert_eq!(labels.query_pids.len(), nq, "query labels");
    assert_eq!(labels.query_cameras.len(), nq, "query cameras");
    assert_eq!(labels.gallery_pids.len(), ng, "gallery labels");
    assert_eq!(labels.gallery_cameras.len(), ng, "gallery cameras");

    let mut order: Vec<usize> = Vec::with_capacity(ng);
    let mut matches: Vec<bool> = Vec::with_capacity(ng);
    let (mut hits_at, mut ap_sum, mut ap_official_sum, mut inp_sum) = ([0usize; 3], 0.0, 0.0, 0.0);
    let mut evaluated = 0;
    for q in 0..nq {
        let (qpid, qcam) = (labels.query_pids[q], labels.query_cameras[q]);
        let row = similarity.row(q);
        order.clear();
        order.extend(0..ng);
        // Stable: equal similarities keep gallery order.
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        matches.clear();
        for &g in &order {
            let gpid = labels.gallery_pids[g];
            let junk = gpid == -1 || (gpid == qpid && labels.gallery_cameras[g] == qcam);
            if !junk {
                matches.push(gpid == qpid);
            }
        }
        let relevant = matches.iter().filter(|m| **m).count();
        if relevant == 0 {
            continue;
        }
        evaluated += 1;
        let first = matches.iter().position(|m| *m).expect("relevant > 0");
        for (slot, k) in hits_at.iter_mut().zip([1, 5, 10]) {
            if first < k {
                *slot += 1;
            }
        }
        let (mut hits, mut ap, mut ap_official) = (0usize, 0.0, 0.0);
        let (mut old_recall, mut old_precision) = (0.0, 1.0);
        let mut last = 0;
        for (i, &m) in matches.iter().enumerate() {
            if m {
                hits += 1;
                ap += hits as f64 / (i + 1) as f64;
                last = i;
            }
            let recall = hits as f64 / relevant as f64;
            let precision = hits as f64 / (i + 1) as f64;
            ap_official += (recall - old_recall) * (old_precision + precision) / 2.0;
            (old_recall, old_precision) = (recall, precision);
            if hits == relevant {
                break;
            }
        }
        ap_sum += ap / relevant as f64;
        ap_official_sum += ap_official;
        inp_sum += relevant as f64 / (last + 1) as f64;
    }
    let pct = |x: f64| {
        if evaluated == 0 {
            0.0
        } else {
            100.0 * x / evaluated as f64
        }
    };
    Metrics {
        rank1: pct(hits_at[0] as f64),
        rank5: pct(hits_at[1] as f64),
        rank10: pct(hits_at[2] as f64),
        map: pct(ap_sum),
        map_official: pct(ap_official_sum),
        minp: pct(inp_sum),
        queries: evaluated,
        queries_without_match: nq - evaluated,
        gallery: ng,
    }
}

/// A threshold for a target false-match rate.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OperatingPoint {
    /// Target false-match rate (fraction of different-person pairs accepted).
    pub target_fmr: f64,
    /// Similarity threshold: a pair matches when its similarity is ≥ this.
    pub threshold: f32,
    /// False-match rate actually reached on the data.
    pub fmr: f64,
    /// Fraction of same-person pairs accepted at this threshold.
    pub tmr: f64,
}

/// Same- and different-person similarities of the cross-camera query × gallery pairs.
#[derive(Clone, Debug, Default)]
pub struct PairSimilarities {
    pub same: Vec<f32>,
    pub different: Vec<f32>,
}

impl PairSimilarities {
    /// Collects the pairs of `similarity` whose cameras differ (junk, pid -1, excluded).
    pub fn cross_camera(similarity: ArrayView2<'_, f32>, labels: Labels<'_>) -> Self {
        let mut pairs = Self::default();
        for (q, row) in similarity.rows().into_iter().enumerate() {
            for (g, &s) in row.iter().enumerate() {
                let gpid = labels.gallery_pids[g];
                if gpid == -1 || labels.gallery_cameras[g] == labels.query_cameras[q] {
                    continue;
                }
                if gpid == labels.query_pids[q] && gpid != 0 {
                    pairs.same.push(s);
                } else {
                    pairs.different.push(s);
                }
            }
        }
        pairs
    }
}

/// For each target false-match rate: the lowest threshold (rounded up to 4 decimals, so that it
/// reads well in a config and never lets more impostors through) whose false-match rate on
/// `pairs.different` is ≤ the target, and the rates measured at it. Points come in target order.
pub fn calibrate(pairs: &PairSimilarities, target_fmrs: &[f64]) -> Vec<OperatingPoint> {
    assert!(!pairs.different.is_empty(), "no different-person pairs");
    let mut impostors = pairs.different.clone();
    impostors.sort_by(|a, b| b.total_cmp(a));
    let accepted = |v: &[f32], threshold: f32| v.iter().filter(|s| **s >= threshold).count() as f64;
    target_fmrs
        .iter()
        .map(|&target_fmr| {
            let allowed = (target_fmr * impostors.len() as f64).floor() as usize;
            // Just above the (allowed+1)-th highest impostor: at most `allowed` impostors reach it.
            let threshold = if allowed >= impostors.len() {
                -1.0
            } else {
                let exact = next_up(impostors[allowed]);
                let rounded = ((f64::from(exact) * 1e4).ceil() / 1e4) as f32;
                if rounded >= exact {
                    rounded
                } else {
                    next_up(rounded)
                }
            };
            OperatingPoint {
                target_fmr,
                threshold,
                fmr: accepted(&impostors, threshold) / impostors.len() as f64,
                tmr: if pairs.same.is_empty() {
                    0.0
                } else {
                    accepted(&pairs.same, threshold) / pairs.same.len() as f64
                },
            }
        })
        .collect()
}

/// The smallest f32 greater than `x` (finite inputs).
fn next_up(x: f32) -> f32 {
    if x.is_nan() || x == f32::INFINITY {
        return x;
    }
    if x == 0.0 {
        return f32::from_bits(1);
    }
    let bits = x.to_bits();
    f32::from_bits(if x > 0.0 { bits + 1 } else { bits - 1 })
}

/// Identity-level results through a gallery, in percent except the counts.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct IdentityMetrics {
    pub rank1: f64,
    pub rank5: f64,
    /// Queries evaluated (their identity is enrolled from another camera).
    pub queries: usize,
    /// Queries whose identity has no crop on another camera: not in the metrics.
    pub queries_without_match: usize,
    /// Identities and exemplars held (summed over the per-camera galleries).
    pub identities: usize,
    pub exemplars: usize,
    /// Heap bytes of the largest per-camera gallery.
    pub heap_bytes: usize,
}

/// Enrols the gallery crops as identities in a real [`Gallery`] and ranks identities for each
/// query. As in the Market-1501 protocol, nothing a query's own camera saw may match it: for each
/// query camera, a gallery is built from the crops of the *other* cameras (each pid one
/// identity, its crops offered in order through the gallery's exemplar policy, so at most
/// `config.exemplars` are kept). Junk (pid -1) is skipped; distractors (pid 0) are one identity.
/// `config.budget_bytes` is ignored: each gallery is sized to hold exactly its identities.
pub fn evaluate_identities(
    query: ArrayView2<'_, f32>,
    gallery: ArrayView2<'_, f32>,
    labels: Labels<'_>,
    config: GalleryConfig,
    policy: MatchPolicy,
) -> Result<IdentityMetrics, GalleryError> {
    let mut cameras: Vec<u32> = labels.query_cameras.to_vec();
    cameras.sort_unstable();
    cameras.dedup();
    let mut metrics = IdentityMetrics {
        rank1: 0.0,
        rank5: 0.0,
        queries: 0,
        queries_without_match: 0,
        identities: 0,
        exemplars: 0,
        heap_bytes: 0,
    };
    let (mut hits1, mut hits5) = (0usize, 0usize);
    for camera in cameras {
        let enrolled: Vec<usize> = (0..gallery.nrows())
            .filter(|&g| labels.gallery_cameras[g] != camera && labels.gallery_pids[g] != -1)
            .collect();
        let mut pids: Vec<i32> = enrolled.iter().map(|&g| labels.gallery_pids[g]).collect();
        pids.sort_unstable();
        pids.dedup();
        let queries = (0..query.nrows()).filter(|&q| labels.query_cameras[q] == camera);
        if pids.is_empty() {
            metrics.queries_without_match += queries.count();
            continue;
        }
        let sized = GalleryConfig {
            budget_bytes: config.heap_bytes(pids.len()),
            ..config
        };
        let mut held = Gallery::with_budget(sized, policy)?;
        // PersonId → pid (ids are handed out from 1 in enrolment order).
        let mut pid_of = std::collections::HashMap::new();
        let mut id_of = std::collections::HashMap::new();
        for &g in &enrolled {
            let pid = labels.gallery_pids[g];
            let row = gallery.row(g);
            let row = row.as_slice().expect("standard layout");
            match id_of.get(&pid) {
                Some(&id) => {
                    held.offer_exemplar(id, row)?;
                }
                None => {
                    let new = NewIdentity {
                        label: None,
                        pinned: true,
                        now: Timestamp(0),
                    };
                    let (id, _) = held.insert(row, new)?;
                    id_of.insert(pid, id);
                    pid_of.insert(id, pid);
                }
            }
        }
        metrics.identities += held.len();
        metrics.exemplars += held.identities().map(|i| i.exemplars).sum::<usize>();
        metrics.heap_bytes = metrics.heap_bytes.max(held.heap_bytes());
        let mut top = [Candidate::default(); 5];
        for q in queries {
            let pid = labels.query_pids[q];
            if !id_of.contains_key(&pid) {
                metrics.queries_without_match += 1;
                continue;
            }
            let row = query.row(q);
            let n = held.best_matches(row.as_slice().expect("standard layout"), &mut top)?;
            let rank = top[..n].iter().position(|c| pid_of[&c.id] == pid);
            metrics.queries += 1;
            hits1 += usize::from(rank == Some(0));
            hits5 += usize::from(rank.is_some());
        }
    }
    if metrics.queries > 0 {
        metrics.rank1 = 100.0 * hits1 as f64 / metrics.queries as f64;
        metrics.rank5 = 100.0 * hits5 as f64 / metrics.queries as f64;
    }
    Ok(metrics)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn names() {
        assert_eq!(parse_name("0001_c1s1_000151_01.jpg"), Some((1, 1)));
        assert_eq!(parse_name("-1_c3s2_000151_01.jpg"), Some((-1, 3)));
        assert_eq!(parse_name("0000_c6s4_002202_05.png"), Some((0, 6)));
        assert_eq!(parse_name("1500_c12_000151.jpg"), Some((1500, 12)));
        for bad in [
            "c1s1_000151_01.jpg",
            "0001.jpg",
            "0001_x1s1_1.jpg",
            "abc_c1s1_1.jpg",
            "0001_c1s1",
            "-2_c1s1_1.jpg",
        ] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn hand_computed_query() {
        // One query (pid 1, cam 1). Gallery by similarity: [pid1 cam1 (junk), pid2, pid1 cam2,
        // pid -1 (junk), pid3, pid1 cam3]. Kept ranking: neg, hit, neg, hit.
        let sim = array![[0.9f32, 0.8, 0.7, 0.65, 0.6, 0.5]];
        let labels = Labels {
            query_pids: &[1],
            query_cameras: &[1],
            gallery_pids: &[1, 2, 1, -1, 3, 1],
            gallery_cameras: &[1, 2, 2, 2, 2, 3],
        };
        let m = evaluate(sim.view(), labels);
        assert_eq!((m.rank1, m.rank5), (0.0, 100.0));
        // torchreid AP: (1/2 + 2/4) / 2 = 0.5
        assert!((m.map - 50.0).abs() < 1e-9, "{}", m.map);
        // official: ranks 1..4, recall 0, .5, .5, 1; precision 0, .5, 1/3, .5
        // ap = (.5-0)*(0+.5)/2 + (1-.5)*(1/3+.5)/2 = .125 + .2083333
        assert!((m.map_official - 100.0 * (0.125 + 0.5 * (1.0 / 3.0 + 0.5) / 2.0)).abs() < 1e-9);
        // INP: 2 hits, last at rank 4.
        assert!((m.minp - 50.0).abs() < 1e-9);
        assert_eq!((m.queries, m.queries_without_match), (1, 0));
    }

    #[test]
    fn ties_keep_gallery_order_and_queries_without_match_are_counted() {
        let sim = array![[0.5f32, 0.5, 0.5], [0.1, 0.2, 0.3]];
        let labels = Labels {
            query_pids: &[7, 9],
            query_cameras: &[1, 1],
            gallery_pids: &[8, 7, 7],
            gallery_cameras: &[2, 2, 2],
        };
        let m = evaluate(sim.view(), labels);
        // Query 7: tie → gallery order 8, 7, 7 → first hit at rank 2. Query 9: no match.
        assert_eq!(
            (m.rank1, m.rank5, m.queries, m.queries_without_match),
            (0.0, 100.0, 1, 1)
        );
    }

    #[test]
    fn calibration_threshold() {
        let pairs = PairSimilarities {
            same: vec![0.9, 0.8, 0.7, 0.4],
            different: (0..100).map(|i| i as f32 / 100.0).collect(),
        };
        let p = &calibrate(&pairs, &[0.01])[0];
        // One impostor (0.99) may pass: threshold just above 0.98, rounded up to 4 decimals.
        assert_eq!(p.threshold, 0.9801);
        assert_eq!((p.fmr, p.tmr), (0.01, 0.0));
        let p = &calibrate(&pairs, &[0.25])[0];
        assert_eq!(p.threshold, 0.7401);
        assert_eq!((p.fmr, p.tmr), (0.25, 0.5));
        // Every target is met, whatever the rounding.
        let targets = [0.001, 0.013, 0.05, 0.5, 0.999];
        for (p, target) in calibrate(&pairs, &targets).iter().zip(targets) {
            assert_eq!(p.target_fmr, target);
            assert!(p.fmr <= target, "{target}: {}", p.fmr);
        }
        assert_eq!(next_up(1.0), 1.0 + f32::EPSILON);
        assert!(next_up(-0.5) > -0.5);
    }
}
