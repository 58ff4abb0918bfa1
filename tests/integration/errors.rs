//! Bad input: each case is a one-line error naming the file and the problem, a non-zero exit,
//! and no panic.

use std::path::{Path, PathBuf};

use crate::common::{encode, models, pattern, reidcam, repo, s, scratch};

fn good_crop(dir: &Path) -> PathBuf {
    let path = dir.join("crop.png");
    let png = encode(&pattern(40, 100), image::ImageFormat::Png);
    std::fs::write(&path, png).unwrap();
    path
}

/// Runs `reidcam embed` expecting failure; returns the single stderr line.
fn embed_fails(args: &[&str]) -> String {
    let mut full = vec!["embed"];
    full.extend_from_slice(args);
    let (ok, stdout, stderr) = reidcam(&full);
    assert!(!ok, "expected failure for {args:?}, got stdout {stdout}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let lines: Vec<_> = stderr
        .lines()
        .filter(|l| l.starts_with("reidcam: error:"))
        .collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {stderr}");
    assert_eq!(
        stderr.lines().filter(|l| !l.contains(" WARN ")).count(),
        1,
        "stderr has more than the error line: {stderr}"
    );
    lines[0].to_owned()
}

#[test]
fn file_that_is_not_onnx() {
    let dir = scratch("not-onnx");
    let model = dir.join("notes.onnx");
    std::fs::write(&model, "these are my notes, not a model\n").unwrap();
    let crop = good_crop(&dir);
    let line = embed_fails(&["--model", s(&model), s(&crop)]);
    assert!(
        line.contains("notes.onnx: not a loadable ONNX model"),
        "{line}"
    );
}

#[test]
fn missing_model_file() {
    let dir = scratch("missing-model");
    let crop = good_crop(&dir);
    let line = embed_fails(&["--model", s(&dir.join("nope.onnx")), s(&crop)]);
    assert!(line.contains("nope.onnx: cannot read model"), "{line}");
}

#[test]
fn onnx_whose_input_is_not_an_image() {
    let dir = scratch("not-image");
    let crop = good_crop(&dir);
    let line = embed_fails(&["--model", s(&models().join("vector_input.onnx")), s(&crop)]);
    assert!(
        line.contains("vector_input.onnx: input \"v\" has shape [1,10] (rank 2)"),
        "{line}"
    );
    assert!(line.contains("expected one NCHW f32 image input"), "{line}");

    let line = embed_fails(&["--model", s(&models().join("gray_input.onnx")), s(&crop)]);
    assert!(
        line.contains("gray_input.onnx: input \"x\" has shape [1,1,16,8] with 1 channels"),
        "{line}"
    );
}

fn tiny_manifest(dir: &Path, edit: (&str, &str)) -> PathBuf {
    let text = r#"[model]
name = "tiny_reid"

[input]
name = "x"
height = 16
width = 8

[output]
name = "emb"
dim = 6
"#
    .replace(edit.0, edit.1);
    let path = dir.join("tiny.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn manifest_that_contradicts_the_model() {
    let dir = scratch("contradiction");
    let crop = good_crop(&dir);
    let model = models().join("tiny_reid.onnx");
    for (edit, expected) in [
        (
            ("height = 16", "height = 32"),
            "input.height is 32 in the manifest but 16 in the model",
        ),
        (
            ("dim = 6", "dim = 512"),
            "output.dim is 512 in the manifest but 6 in the model",
        ),
        (
            ("name = \"x\"", "name = \"images\""),
            "input.name is \"images\" in the manifest but absent (inputs: [\"x\"])",
        ),
        (
            ("name = \"emb\"", "name = \"features\""),
            "output.name is \"features\" in the manifest but absent",
        ),
    ] {
        let manifest = tiny_manifest(&dir, edit);
        let line = embed_fails(&["--model", s(&model), "--manifest", s(&manifest), s(&crop)]);
        assert!(
            line.contains("tiny_reid.onnx: manifest")
                && line.contains("tiny.toml contradicts the model"),
            "{line}"
        );
        assert!(line.contains(expected), "{line}");
    }
}

#[test]
fn manifest_with_unknown_field() {
    let dir = scratch("manifest-typo");
    let crop = good_crop(&dir);
    let manifest = tiny_manifest(&dir, ("dim = 6", "dim = 6\nnormalise = true"));
    let line = embed_fails(&[
        "--model",
        s(&models().join("tiny_reid.onnx")),
        "--manifest",
        s(&manifest),
        s(&crop),
    ]);
    assert!(
        line.contains("tiny.toml: not a valid model manifest: unknown field `normalise`"),
        "{line}"
    );
}

#[test]
fn unreadable_truncated_and_non_images() {
    let dir = scratch("bad-images");
    let model = models().join("tiny_reid.onnx");
    let line = embed_fails(&["--model", s(&model), s(&dir.join("gone.jpg"))]);
    assert!(line.contains("gone.jpg: cannot read image"), "{line}");

    let img = pattern(64, 128);
    let jpeg = encode(&img, image::ImageFormat::Jpeg);
    let truncated = dir.join("truncated.jpg");
    std::fs::write(&truncated, &jpeg[..jpeg.len() * 2 / 3]).unwrap();
    let line = embed_fails(&["--model", s(&model), s(&truncated)]);
    assert!(
        line.contains("truncated.jpg: not a decodable JPEG or PNG image: JPEG data is truncated"),
        "{line}"
    );

    let text = dir.join("readme.png");
    std::fs::write(&text, "hello").unwrap();
    let line = embed_fails(&["--model", s(&model), s(&text)]);
    assert!(
        line.contains("readme.png: not a decodable JPEG or PNG image"),
        "{line}"
    );

    let png = encode(&img, image::ImageFormat::Png);
    let cut = dir.join("cut.png");
    std::fs::write(&cut, &png[..png.len() / 2]).unwrap();
    let line = embed_fails(&["--model", s(&model), s(&cut)]);
    assert!(
        line.contains("cut.png: not a decodable JPEG or PNG image"),
        "{line}"
    );
}

#[test]
fn batch_larger_than_a_fixed_batch_model() {
    let dir = scratch("fixed-batch");
    let crop = good_crop(&dir);
    let line = embed_fails(&[
        "--model",
        s(&models().join("fixed_batch.onnx")),
        "--batch",
        "4",
        s(&crop),
    ]);
    assert!(
        line.contains("batch size is fixed at 1; configured batch is 4"),
        "{line}"
    );
}

#[test]
fn thread_counts_past_any_board_are_refused() {
    // A thousand spinning workers on a few cores ran no crop at all (before the bound).
    let dir = scratch("threads-bound");
    let crop = good_crop(&dir);
    let model = models().join("tiny_reid.onnx");
    let line = embed_fails(&["--model", s(&model), "--threads", "1000", s(&crop)]);
    assert!(
        line.contains("tiny_reid.onnx") && line.contains("threads (1000) must be at most 64"),
        "{line}"
    );
}

#[test]
fn bench_over_a_board_budget_fails_naming_the_field() {
    let dir = scratch("board-budget");
    let model = models().join("tiny_reid.onnx");
    let profile = |p50: f64, p99: f64| {
        let path = dir.join(format!("board-{p50}.toml"));
        let text = format!(
            "[board]\nname = \"test-board\"\ntarget = \"aarch64-unknown-linux-gnu\"\n\n[budget]\nembed_p50_ms = {p50}\nembed_p99_ms = {p99}\n"
        );
        std::fs::write(&path, text).unwrap();
        path
    };
    let args = |board: &Path| {
        [
            "bench",
            "--model",
            s(&model),
            "--runs",
            "5",
            "--seconds",
            "0",
            "--board",
            s(board),
        ]
        .map(str::to_owned)
    };
    let tight = profile(0.000001, 0.000002);
    let a = args(&tight);
    let (ok, out, err) = reidcam(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!ok, "{out}");
    assert!(
        out.contains("budget         test-board") && out.contains("EXCEEDED"),
        "{out}"
    );
    assert!(
        err.contains("board-0.000001.toml: median latency") && err.contains("budget.embed_p50_ms"),
        "{err}"
    );
    let roomy = profile(10000.0, 20000.0);
    let a = args(&roomy);
    let (ok, out, err) = reidcam(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok && out.contains(": met"), "{out}{err}");
    let broken = dir.join("broken.toml");
    std::fs::write(&broken, "[board]\nname = \"x\"\n").unwrap();
    let a = args(&broken);
    let (ok, _, err) = reidcam(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        !ok && err.contains("broken.toml: not a valid board profile: missing field `target`"),
        "{err}"
    );
}

#[test]
fn shipped_board_profiles_load() {
    for entry in std::fs::read_dir(repo().join("board")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let profile = reidcam::board::BoardProfile::load(&path).unwrap();
            assert_eq!(
                path.file_stem().unwrap().to_str().unwrap(),
                profile.board.name,
                "file name and board.name agree"
            );
        }
    }
}
