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
