//! The `reidcam gallery` command line, with a real (tiny) ONNX model: enroll, list, show,
//! export, import and remove; a gallery locked by a running daemon is refused; `forget_after`
//! at the daemon's start.

use std::path::{Path, PathBuf};

use reidcam::gallery::file;

use crate::common::{command, encode, models, pattern, reidcam, s, scratch};

fn write_crops(dir: &Path, count: u32, seed: u32) -> Vec<PathBuf> {
    (0..count)
        .map(|i| {
            let base = pattern(40 + seed * 8 + i, 100);
            // Shift the pattern so that different people differ.
            let shift = (seed * 61 + i * 3) as u8;
            let bytes = base
                .as_bytes()
                .iter()
                .map(|b| b.wrapping_add(shift))
                .collect();
            let img = reidcam::RgbImage::from_raw(base.width(), base.height(), bytes).unwrap();
            let path = dir.join(format!("p{seed}_{i}.png"));
            std::fs::write(&path, encode(&img, image::ImageFormat::Png)).unwrap();
            path
        })
        .collect()
}

#[test]
fn gallery_command_line() {
    let dir = scratch("gallery-cli");
    let model = models().join("tiny_reid.onnx");
    let gallery = dir.join("g.bin");
    let base = ["gallery", "--model", s(&model), "--gallery", s(&gallery)];
    let run = |extra: &[&str]| reidcam(&[&base[..], extra].concat());

    let (ok, _, err) = run(&["list"]);
    assert!(!ok && err.contains("g.bin: no such gallery file"), "{err}");

    let alice = write_crops(&dir, 3, 1);
    let bob = write_crops(&dir, 2, 2);
    let mut args = vec!["enroll", "--label", "alice"];
    args.extend(alice.iter().map(|p| s(p)));
    let (ok, out, err) = run(&args);
    assert!(ok, "{err}");
    assert!(
        out.starts_with("enrolled 1 (alice) from 3 image(s)"),
        "{out}"
    );
    let mut args = vec!["enroll", "--label", "bob"];
    args.extend(bob.iter().map(|p| s(p)));
    let (ok, out, err) = run(&args);
    assert!(ok, "{err}");
    assert!(out.starts_with("enrolled 2 (bob)"), "{out}");

    let (ok, out, err) = run(&["list"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("2 of ") && out.contains("int8 storage, K = 8, 6-d"),
        "{out}"
    );
    let rows: Vec<&str> = out.lines().skip(2).collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert!(
        rows[0].split_whitespace().take(3).eq(["1", "alice", "yes"]),
        "{out}"
    );

    let (ok, out, _) = run(&["show", "2"]);
    assert!(
        ok && out.contains("label       bob") && out.contains("exemplars   2 of 8 (int8)"),
        "{out}"
    );

    // Issue 22: a reader that went away (`reidcam gallery list | head -1`) ends the command
    // quietly: no panic, exit 0 — for every command that prints (one writer, `cli::out!`).
    let bench = [
        "bench",
        "--model",
        s(&model),
        "--runs",
        "1",
        "--seconds",
        "0",
    ];
    for args in [[&base[..], &["list"]].concat(), bench.to_vec()] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let closed = command(Path::new(env!("CARGO_BIN_EXE_reidcam")))
            .args(&args)
            .stdout(writer)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&closed.stderr);
        assert!(
            closed.status.success() && !err.contains("panicked") && !err.contains("error"),
            "{args:?}: {}: {err}",
            closed.status
        );
    }

    // Export, import into an f32 gallery, compare listings.
    let export = dir.join("g.json");
    let (ok, out, err) = run(&["export", s(&export)]);
    assert!(ok && out.contains("exported 2 identities"), "{out}{err}");
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&export).unwrap()).unwrap();
    assert_eq!(doc["model"], "tiny_reid");
    assert_eq!(
        doc["identities"][0]["exemplars"][0]
            .as_array()
            .unwrap()
            .len(),
        6
    );
    let copy = dir.join("copy.bin");
    let (ok, out, err) = reidcam(&[
        "gallery",
        "--model",
        s(&model),
        "--gallery",
        s(&copy),
        "--format",
        "f32",
        "import",
        s(&export),
    ]);
    assert!(ok && out.contains("imported 2 identities"), "{out}{err}");
    let (_, listed, _) = reidcam(&[
        "gallery",
        "--model",
        s(&model),
        "--gallery",
        s(&copy),
        "list",
    ]);
    assert!(listed.contains("f32 storage"), "{listed}");
    let names = |text: &str| {
        text.lines()
            .skip(2)
            .map(|l| l.split_whitespace().take(4).collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&listed), names(&out_of(&run(&["list"]))));
    // Importing again clashes on ids: refused, file unchanged.
    let before = std::fs::read(&copy).unwrap();
    let (ok, _, err) = reidcam(&[
        "gallery",
        "--model",
        s(&model),
        "--gallery",
        s(&copy),
        "import",
        s(&export),
    ]);
    assert!(
        !ok && err.contains("g.json: identity 1 already exists"),
        "{err}"
    );
    assert_eq!(std::fs::read(&copy).unwrap(), before);

    // A thumbnail the daemon kept for identity 1 goes with it (the other one stays).
    let thumbs = dir.join("g.bin.thumbs");
    std::fs::create_dir_all(&thumbs).unwrap();
    std::fs::write(thumbs.join("1.jpg"), b"jpeg").unwrap();
    std::fs::write(thumbs.join("2.jpg"), b"jpeg").unwrap();
    let (ok, out, _) = run(&["remove", "1"]);
    assert!(ok && out.contains("removed 1; 1 identities left"), "{out}");
    assert!(!thumbs.join("1.jpg").exists() && thumbs.join("2.jpg").exists());
    // Erased everywhere: the backup holds no copy of alice either.
    let bak = dir.join("g.bin.bak");
    let (_, listed, err) = reidcam(&[
        "gallery",
        "--model",
        s(&model),
        "--gallery",
        s(&bak),
        "list",
    ]);
    assert!(
        listed.contains("bob") && !listed.contains("alice"),
        "{listed}{err}"
    );
    let (ok, _, err) = run(&["remove", "1"]);
    assert!(!ok && err.contains("no identity 1"), "{err}");

    // A damaged gallery file is an error naming it; nothing is written.
    std::fs::write(&gallery, b"REIDCAMG\x01\x00garbage").unwrap();
    let (ok, _, err) = run(&args);
    assert!(!ok && err.contains("g.bin: truncated"), "{err}");
    assert_eq!(std::fs::read(&gallery).unwrap(), b"REIDCAMG\x01\x00garbage");
    assert!(!err.contains("panicked"), "{err}");
}

fn out_of(result: &(bool, String, String)) -> String {
    assert!(result.0, "{}", result.2);
    result.1.clone()
}

#[test]
fn a_locked_gallery_is_refused_by_the_command_line() {
    let dir = scratch("gallery-lock");
    let path = dir.join("cam.gallery");
    let lock = file::GalleryLock::acquire(&path).unwrap();
    // A second holder in this process is refused too (flock locks are per open file).
    let again = file::GalleryLock::acquire(&path).unwrap_err();
    assert!(
        again
            .to_string()
            .contains("cam.gallery: in use by another reidcam process"),
        "{again}"
    );
    let model = models().join("tiny_reid.onnx");
    let gallery = |action: &[&str]| {
        let mut args = vec!["gallery", "--model", s(&model), "--gallery", s(&path)];
        args.extend_from_slice(action);
        reidcam(&args)
    };
    // A change waits for the holder; reading does not (the holder replaces the file whole).
    let (ok, _, err) = gallery(&["remove", "1"]);
    assert!(
        !ok && err.contains("cam.gallery: in use by another reidcam process (it holds"),
        "{err}"
    );
    let (ok, _, err) = gallery(&["list"]);
    assert!(!ok && err.contains("no such gallery file"), "{err}");
    drop(lock);
    let (ok, _, err) = gallery(&["remove", "1"]);
    assert!(!ok && err.contains("no such gallery file"), "{err}");
}

/// `gallery.forget_after`: a passer-by not seen for longer is removed at the daemon's start from
/// memory, the file and its backup; one seen more recently and the enrolled (pinned) are kept.
#[test]
fn forget_after_removes_unseen_passers_by_from_the_file_and_its_backup() {
    let dir = scratch("gallery-forget");
    let model = models().join("tiny_reid.onnx");
    let gallery = dir.join("g.bin");
    let unit = |axis: usize| {
        let mut v = vec![0.0f32; 6];
        v[axis] = 1.0;
        v
    };
    let hour_ago = reidcam::gallery::Timestamp::now().0 - 3_600_000;
    let doc = serde_json::json!({
        "reidcam_gallery": 1, "model": "tiny_reid", "dim": 6, "format": "f32",
        "exemplars_per_identity": 8, "next_id": 3,
        "identities": [
            {"id": 1, "pinned": false, "first_seen": 0, "last_seen": 1000, "times_seen": 1,
             "exemplars": [unit(0)]},
            {"id": 2, "label": "staff", "pinned": true, "first_seen": 0, "last_seen": 1000,
             "times_seen": 1, "exemplars": [unit(1)]},
            {"id": 3, "pinned": false, "first_seen": 0, "last_seen": hour_ago, "times_seen": 1,
             "exemplars": [unit(2)]},
        ]
    });
    let export = dir.join("in.json");
    std::fs::write(&export, doc.to_string()).unwrap();
    let base = ["gallery", "--model", s(&model), "--gallery", s(&gallery)];
    let (ok, _, err) = reidcam(&[&base[..], &["import", s(&export)]].concat());
    assert!(ok, "{err}");
    // A second save (an enrolment): the backup holds the three imported identities.
    let crops = write_crops(&dir, 1, 5);
    let (ok, _, err) =
        reidcam(&[&base[..], &["enroll", "--label", "visitor", s(&crops[0])]].concat());
    assert!(ok, "{err}");
    assert!(dir.join("g.bin.bak").exists());

    let config = dir.join("c.toml");
    std::fs::write(
        &config,
        "[detector]\nkind = \"motion\"\n[gallery]\nforget_after = \"1d\"\n",
    )
    .unwrap();
    let summary = dir.join("s.json");
    let (ok, _, err) = reidcam(&[
        "run",
        "--config",
        s(&config),
        "--source",
        "synthetic:320x180",
        "--model",
        s(&model),
        "--gallery",
        s(&gallery),
        "--max-frames",
        "3",
        "--events",
        s(&dir.join("e.jsonl")),
        "--summary-json",
        s(&summary),
    ]);
    assert!(ok, "{err}");
    let sm: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    assert_eq!(sm["identities_forgotten"], 1, "{err}");
    for file in [gallery.clone(), dir.join("g.bin.bak")] {
        let (_, listed, err) = reidcam(&[
            "gallery",
            "--model",
            s(&model),
            "--gallery",
            s(&file),
            "list",
        ]);
        let ids: Vec<&str> = listed
            .lines()
            .skip(2)
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        // 1 was last seen in 1970; 3 an hour ago (kept for a day); 2 and 4 are pinned.
        assert_eq!(ids, ["2", "3", "4"], "{}: {listed}{err}", file.display());
    }
}
