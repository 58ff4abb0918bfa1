//! Docs that stay true (issue 22): every repository path the sources and docs name exists, and
//! the documented defaults that have been wrong before match the code.

use std::path::{Path, PathBuf};

use crate::common::repo;

fn files_under(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, ext, out);
        } else if path.extension().is_some_and(|e| e == ext) {
            out.push(path);
        }
    }
}

/// Backquoted repository paths (`docs/x.md`, `board/...`) in a text.
fn named_paths(text: &str) -> Vec<&str> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|p| {
            ["docs/", "board/", "models/", "tools/", "tests/fixtures/"]
                .iter()
                .any(|d| p.starts_with(d))
                && !p.contains(['*', '<', ' ', '{'])
                && !p.contains(".venv") // made by tools/setup.sh, not tracked
        })
        .collect()
}

#[test]
fn every_repository_path_the_sources_and_docs_name_exists() {
    let root = repo();
    let mut files = Vec::new();
    files_under(&root.join("src"), "rs", &mut files);
    files_under(&root.join("docs"), "md", &mut files);
    files.extend(["README.md", "ARCHITECTURE.md"].map(|f| root.join(f)));
    let mut missing = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for p in named_paths(&text) {
            // a path ending in '/' is a directory; "models/default.onnx" etc. must be files
            if !root.join(p.trim_end_matches('/')).exists() {
                missing.push(format!(
                    "{}: `{p}`",
                    file.strip_prefix(root).unwrap().display()
                ));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "named but not in the repository:\n{}",
        missing.join("\n")
    );
}

#[test]
fn documented_match_threshold_fallback_is_the_code_s() {
    let doc = std::fs::read_to_string(repo().join("docs/daemon.md")).unwrap();
    let row = doc
        .lines()
        .find(|l| l.starts_with("| `gallery.threshold` |"))
        .expect("docs/daemon.md documents gallery.threshold");
    let code = reidcam::gallery::MatchPolicy::default().threshold;
    assert!(
        row.contains(&format!("else {code} ")),
        "{row}\n(code: {code})"
    );
}

/// The systemd unit we ship is sandboxed: `systemd-analyze security` (offline, on the file)
/// rates its exposure at most 3.0 of 10 (it was 8.3 before issue 22).
#[test]
fn the_shipped_systemd_unit_scores_at_most_3_exposure() {
    let found = std::process::Command::new("sh")
        .args(["-c", "command -v systemd-analyze"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "systemd-analyze missing: .ci/run installs systemd"
        );
        eprintln!("SKIPPED: systemd-analyze not installed");
        return;
    }
    let unit = repo().join("board/systemd/reidcam.service");
    let out = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for reidcam.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no exposure level in: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert!(score <= 3.0, "exposure {score}:\n{text}");
}

/// Leaf settings of a JSON value, by dotted path (tables descended, everything else a leaf).
fn leaves(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, serde_json::Value)>) {
    match v {
        serde_json::Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaves(&key, v, out);
            }
        }
        _ => out.push((prefix.to_owned(), v.clone())),
    }
}

/// A documented default as the value it stands for: `"x"` or x a string (`empty`: ""), numbers,
/// booleans, `{}` / `[]`.
fn documented(text: &str) -> serde_json::Value {
    let t = text.trim().trim_matches('`');
    if let Some(s) = t.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        return serde_json::Value::String(s.to_owned());
    }
    match t {
        "{}" => serde_json::json!({}),
        "empty" => serde_json::json!(""),
        "[]" => serde_json::json!([]),
        "true" => serde_json::json!(true),
        "false" => serde_json::json!(false),
        _ => t
            .parse::<f64>()
            .map(|n| serde_json::json!(n))
            .unwrap_or_else(|_| serde_json::Value::String(t.to_owned())),
    }
}

fn same(doc: &serde_json::Value, code: &serde_json::Value) -> bool {
    match (doc.as_f64(), code.as_f64()) {
        // f32 settings: equal to their shortest decimal form.
        (Some(a), Some(b)) => (a - b).abs() <= 1e-6 * b.abs().max(1.0),
        _ => doc == code,
    }
}

/// The `| `key` | default | … |` rows of `doc`'s `## Configuration` section, keys with `prefix`
/// put in front where they lack it (`enabled` → `http.enabled`).
fn table_rows(doc: &str, prefix: &str) -> Vec<(String, serde_json::Value)> {
    let text = std::fs::read_to_string(repo().join(doc)).unwrap();
    let table = text
        .split("## Configuration")
        .nth(1)
        .and_then(|t| t.split("\n## ").next())
        .unwrap_or_else(|| panic!("{doc}: no ## Configuration"));
    let mut rows = Vec::new();
    for line in table.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split(" | ").collect();
        let keys: Vec<&str> = cells[0]
            .trim_start_matches("| ")
            .split(", ")
            .map(|k| k.trim_matches('`'))
            .collect();
        // `a`, `b` | 1, 2 — or one value for both.
        let mut values: Vec<&str> = cells[1].split(", ").collect();
        if keys.len() == 1 || values.len() == 1 {
            values = vec![cells[1]; keys.len()];
        }
        assert_eq!(keys.len(), values.len(), "{doc}: {line}");
        let section = keys[0].rsplit_once('.').map_or("", |(s, _)| s);
        for (i, (key, value)) in keys.iter().zip(&values).enumerate() {
            let key = if i > 0 && !section.is_empty() && !key.contains('.') {
                format!("{section}.{key}")
            } else if !key.starts_with(prefix) {
                format!("{prefix}{key}")
            } else {
                (*key).to_owned()
            };
            rows.push((key, documented(value)));
        }
    }
    rows
}

/// The configuration tables of docs/daemon.md, docs/mqtt.md and docs/http.md against the code's
/// defaults (`ConfigFile`'s `Default`, as serialised): every row's default is the code's, and
/// every setting has a row, so that a default cannot drift from its documentation again.
#[test]
fn the_configuration_tables_match_the_defaults_of_the_code() {
    let code = serde_json::to_value(reidcam::config::ConfigFile::default()).unwrap();
    let mut settings = Vec::new();
    leaves("", &code, &mut settings);
    let mut wrong = Vec::new();
    for (doc, prefix, covers) in [
        ("docs/daemon.md", "", None),
        ("docs/mqtt.md", "mqtt.", Some("mqtt.")),
        ("docs/http.md", "http.", Some("http.")),
    ] {
        let rows = table_rows(doc, prefix);
        for (key, documented) in &rows {
            if key.ends_with(".*") {
                continue;
            }
            match settings.iter().find(|(k, _)| k == key) {
                Some((_, value)) if same(documented, value) => {}
                Some((_, value)) => wrong.push(format!(
                    "{doc}: {key}: documented {documented}, the code's {value}"
                )),
                None => wrong.push(format!("{doc}: {key}: documented, not a setting")),
            }
        }
        for (key, value) in &settings {
            let here = match covers {
                Some(p) => key.starts_with(p),
                None => !key.starts_with("mqtt.") && !key.starts_with("http."),
            };
            if here && !rows.iter().any(|(k, _)| k == key) {
                wrong.push(format!("{doc}: {key} (default {value}): not in the table"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
