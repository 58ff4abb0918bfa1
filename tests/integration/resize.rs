//! The resize is byte-identical to Pillow's `crop(rect).resize((W, H), BILINEAR)` on the
//! fixtures made by `tools/make_fixtures.py resize`.

use reidcam::manifest::ModelManifest;
use reidcam::{Preprocessor, Rect};

use crate::alloc_count::allocations_during;
use crate::common::{case, pattern, repo};

#[test]
fn resize_matches_pillow_byte_for_byte() {
    let root = repo().join("tests/fixtures/resize");
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    assert!(
        dirs.len() >= 7,
        "resize fixtures missing in {}",
        root.display()
    );
    let mut failures = Vec::new();
    for dir in &dirs {
        let c = case(dir);
        let n = |v: &serde_json::Value| v.as_u64().unwrap() as u32;
        let source = pattern(n(&c["source"]["width"]), n(&c["source"]["height"]));
        let r = &c["rect"];
        let rect = Rect::new(n(&r[0]), n(&r[1]), n(&r[2]), n(&r[3]));
        let (w, h) = (n(&c["output"][0]), n(&c["output"][1]));
        let tolerance = c["tolerance"]["max_abs_diff"].as_u64().unwrap() as u8;
        let expected = reidcam::frame::load_image(&dir.join("expected.png")).unwrap();
        assert_eq!((expected.width(), expected.height()), (w, h));

        let spec = ModelManifest::torchreid_default("t", "in", h, w, "out", 1).input;
        let mut pre = Preprocessor::new(&spec);
        let got = pre.resize(source.view(), rect).unwrap();
        let diffs: Vec<u8> = got
            .iter()
            .zip(expected.as_bytes())
            .map(|(a, b)| a.abs_diff(*b))
            .collect();
        let worst = diffs.iter().copied().max().unwrap();
        let differing = diffs.iter().filter(|d| **d > 0).count();
        if worst > tolerance {
            failures.push(format!(
                "{}: {differing} of {} bytes differ, worst by {worst} (tolerance {tolerance})",
                dir.file_name().unwrap().to_string_lossy(),
                diffs.len()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn preprocessing_allocates_nothing_once_sized() {
    // Sized for the frame, any crop of it (up, down, both pass orders, whole frame) must not
    // allocate; the same crops through an unsized preprocessor must (so the counter works).
    let frame = pattern(640, 480);
    let spec = ModelManifest::torchreid_default("t", "in", 256, 128, "out", 1).input;
    let rects = [
        Rect::new(0, 0, 640, 480),
        Rect::new(10, 20, 60, 200),
        Rect::new(300, 0, 340, 480),
        Rect::new(5, 5, 600, 100),
        Rect::new(1, 1, 3, 5),
    ];
    let mut slot = vec![0.0; 3 * 256 * 128];
    let mut sized = Preprocessor::with_max_source(&spec, 640, 480);
    let ((), n) = allocations_during(|| {
        for _ in 0..3 {
            for rect in rects {
                sized.run(frame.view(), rect, &mut slot).unwrap();
            }
        }
    });
    assert_eq!(n, 0, "preprocessing allocated {n} times after sizing");
    assert!(slot.iter().all(|v| v.is_finite()));

    let mut unsized_pre = Preprocessor::new(&spec);
    let ((), n) =
        allocations_during(|| unsized_pre.run(frame.view(), rects[0], &mut slot).unwrap());
    assert!(n > 0, "the counting allocator saw nothing");
}
