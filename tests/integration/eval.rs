//! `eval`'s metrics agree with the independent Python reference (torchreid's algorithm and the
//! official Market-1501 AP) on random distance matrices with ties, distractors, junk,
//! same-camera positives and queries without a match (fixtures from tools/eval_reference.py).

use ndarray::Array2;
use reidcam::eval::{Labels, evaluate};

use crate::common::{case, repo};

fn ints<T: TryFrom<i64>>(v: &serde_json::Value) -> Vec<T>
where
    T::Error: std::fmt::Debug,
{
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| T::try_from(x.as_i64().unwrap()).unwrap())
        .collect()
}

#[test]
fn metrics_match_the_python_reference() {
    let root = repo().join("tests/fixtures/eval");
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 4, "eval fixtures missing");
    for dir in dirs {
        let c = case(&dir);
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let rows = c["distances"].as_array().unwrap();
        let (nq, ng) = (rows.len(), rows[0].as_array().unwrap().len());
        // Similarity = −distance: same order, same ties.
        let sim = Array2::from_shape_fn((nq, ng), |(q, g)| -(rows[q][g].as_f64().unwrap() as f32));
        let (qp, qc, gp, gc): (Vec<i32>, Vec<u32>, Vec<i32>, Vec<u32>) = (
            ints(&c["query_pids"]),
            ints(&c["query_cameras"]),
            ints(&c["gallery_pids"]),
            ints(&c["gallery_cameras"]),
        );
        assert!(
            gp.contains(&-1) && gp.contains(&0),
            "{name}: case lacks junk or distractors"
        );
        let m = evaluate(
            sim.view(),
            Labels {
                query_pids: &qp,
                query_cameras: &qc,
                gallery_pids: &gp,
                gallery_cameras: &gc,
            },
        );
        let e = &c["expected"];
        let tol = c["tolerance"].as_f64().unwrap();
        for (field, got) in [
            ("rank1", m.rank1),
            ("rank5", m.rank5),
            ("rank10", m.rank10),
            ("map", m.map),
            ("map_official", m.map_official),
            ("minp", m.minp),
        ] {
            let want = e[field].as_f64().unwrap();
            assert!(
                (got / 100.0 - want).abs() <= tol,
                "{name}: {field} = {} but the reference says {}",
                got / 100.0,
                want
            );
        }
        assert_eq!(
            m.queries as u64,
            e["queries"].as_u64().unwrap(),
            "{name}: queries"
        );
        assert_eq!(
            m.queries_without_match as u64,
            e["queries_without_match"].as_u64().unwrap(),
            "{name}: queries without match"
        );
    }
}

#[test]
fn eval_cli_reports_layout_errors() {
    let dir = std::env::temp_dir().join(format!("reidcam-it-{}-eval-layout", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("query")).unwrap();
    let model = repo().join("tests/fixtures/models/tiny_reid.onnx");
    let args = |d: &std::path::Path| {
        vec![
            "eval".to_string(),
            "--model".into(),
            model.to_str().unwrap().into(),
            "--data".into(),
            d.to_str().unwrap().into(),
        ]
    };
    let run =
        |a: Vec<String>| crate::common::reidcam(&a.iter().map(String::as_str).collect::<Vec<_>>());

    let (ok, _, err) = run(args(&dir));
    assert!(
        !ok && err.contains("not a Market-1501 layout directory: missing bounding_box_test/"),
        "{err}"
    );

    std::fs::create_dir_all(dir.join("bounding_box_test")).unwrap();
    std::fs::write(dir.join("query/person-one.jpg"), b"x").unwrap();
    let (ok, _, err) = run(args(&dir));
    assert!(
        !ok && err.contains("person-one.jpg: file name does not follow Market-1501"),
        "{err}"
    );
}

/// A small Market-layout set of synthetic crops: 4 people × 2 cameras × 2 frames, plus a junk
/// and a distractor crop in the gallery.
fn synthetic_market(dir: &std::path::Path) {
    let _ = std::fs::remove_dir_all(dir);
    for sub in ["query", "bounding_box_test"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let save = |path: std::path::PathBuf, tint: [u8; 3], size: (u32, u32)| {
        let base = crate::common::pattern(size.0, size.1);
        let pixels: Vec<u8> = base
            .as_bytes()
            .chunks(3)
            .flat_map(|px| {
                [
                    px[0] / 2 + tint[0] / 2,
                    px[1] / 2 + tint[1] / 2,
                    px[2] / 2 + tint[2] / 2,
                ]
            })
            .collect();
        image::RgbImage::from_raw(size.0, size.1, pixels)
            .unwrap()
            .save(path)
            .unwrap();
    };
    let tints = [[250, 10, 10], [10, 250, 10], [10, 10, 250], [200, 200, 20]];
    for (p, tint) in tints.iter().enumerate() {
        let pid = p + 1;
        for frame in 0..2 {
            let size = (40 + 3 * frame, 100 + 5 * p as u32);
            save(
                dir.join(format!("query/{pid:04}_c1s1_{frame:06}_00.png")),
                *tint,
                size,
            );
            save(
                dir.join(format!("bounding_box_test/{pid:04}_c2s1_{frame:06}_00.png")),
                *tint,
                (size.1 / 2, size.1),
            );
        }
    }
    save(
        dir.join("bounding_box_test/-1_c2s1_000009_00.png"),
        [0, 0, 0],
        (30, 90),
    );
    save(
        dir.join("bounding_box_test/0000_c2s1_000010_00.png"),
        [128, 128, 128],
        (50, 120),
    );
}

#[test]
fn eval_and_calibrate_cli_end_to_end() {
    let dir = std::env::temp_dir().join(format!("reidcam-it-{}-market", std::process::id()));
    synthetic_market(&dir);
    let model = repo().join("tests/fixtures/models/tiny_reid.onnx");
    let (m, d) = (model.to_str().unwrap(), dir.to_str().unwrap());

    let (ok, out, err) =
        crate::common::reidcam(&["eval", "--model", m, "--data", d, "--batch", "3"]);
    assert!(ok, "{err}");
    assert!(out.contains("1 junk dropped"), "{out}");
    let last = out.lines().last().unwrap();
    let fields: Vec<&str> = last.split(' ').collect();
    let names: Vec<&str> = fields
        .iter()
        .map(|f| f.split('=').next().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "rank1",
            "rank5",
            "rank10",
            "mAP",
            "mAP_official",
            "mINP",
            "queries",
            "gallery"
        ],
        "{last}"
    );
    for f in &fields[..6] {
        let v = f.split('=').nth(1).unwrap();
        assert!(
            v.len() >= 4 && v.split('.').nth(1).map(str::len) == Some(2),
            "{f} not NN.NN"
        );
        assert!((0.0..=100.0).contains(&v.parse::<f64>().unwrap()), "{f}");
    }
    assert!(last.ends_with("queries=8 gallery=9"), "{last}");

    let plot = dir.join("cal.svg");
    let (ok, out, err) = crate::common::reidcam(&[
        "calibrate",
        "--model",
        m,
        "--data",
        d,
        "--plot",
        plot.to_str().unwrap(),
        "--json",
        "--fmr",
        "0.2,0.05",
    ]);
    assert!(ok, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["same_pairs"], 16);
    assert_eq!(report["operating_points"].as_array().unwrap().len(), 2);
    assert!(std::fs::read_to_string(&plot).unwrap().starts_with("<svg"));
    // The snippet is a valid [matching] section for a manifest.
    let manifest = format!(
        "[model]\nname = \"t\"\n[input]\nname = \"x\"\nheight = 16\nwidth = 8\n[output]\nname = \"emb\"\ndim = 6\n{}",
        report["config_snippet"].as_str().unwrap()
    );
    let parsed =
        reidcam::ModelManifest::from_toml(&manifest, std::path::Path::new("snippet.toml")).unwrap();
    let threshold = parsed.matching.unwrap().threshold;
    let chosen = report["operating_points"][1]["threshold"].as_f64().unwrap();
    assert!((threshold - chosen).abs() < 1e-6, "{threshold} vs {chosen}");
}
