//! The gallery: budget to the byte, no allocation after start-up, crash-safe saves, damaged files
//! refused without loss; the `reidcam gallery` command line in `cli`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use reidcam::gallery::file::{self, FileError, ModelTag, Opened, Recovery};
use reidcam::gallery::{
    ExemplarUpdate, Gallery, GalleryConfig, GalleryError, MatchPolicy, NewIdentity, Observation,
    PersonId, StorageFormat, Timestamp,
};

use crate::alloc_count::{allocations_during, bytes_during};
use crate::common::{command, scratch};

mod cli;

use reidcam::bench::XorShift as Rng;

/// `people` base directions in `dim` dimensions; `sample` adds view noise to one of them.
struct Crowd {
    bases: Vec<Vec<f32>>,
}

impl Crowd {
    fn new(people: usize, dim: usize, rng: &mut Rng) -> Self {
        Crowd {
            bases: (0..people)
                .map(|_| (0..dim).map(|_| rng.signed_unit()).collect())
                .collect(),
        }
    }

    fn sample(&self, person: usize, noise: f32, rng: &mut Rng, out: &mut [f32]) {
        for (o, &b) in out.iter_mut().zip(&self.bases[person]) {
            *o = b + noise * rng.signed_unit();
        }
    }
}

fn model_tag(dim: usize) -> ModelTag {
    ModelTag {
        name: "test-model".into(),
        dim,
    }
}

#[test]
fn budget_is_respected_to_the_byte() {
    for format in StorageFormat::ALL {
        for (dim, exemplars, budget) in [(512, 8, 1 << 20), (256, 4, 100_000), (128, 1, 4096)] {
            let config = GalleryConfig {
                dim,
                exemplars,
                format,
                budget_bytes: budget,
            };
            let (gallery, bytes) =
                bytes_during(|| Gallery::with_budget(config, MatchPolicy::default()).unwrap());
            let capacity = gallery.capacity();
            assert_eq!(
                bytes as usize,
                config.heap_bytes(capacity),
                "{format} {dim}-d K={exemplars}"
            );
            assert_eq!(gallery.heap_bytes(), bytes as usize);
            assert!(bytes as usize <= budget, "{format}: {bytes} > {budget}");
            assert!(
                config.heap_bytes(capacity + 1) > budget,
                "{format}: one more would still fit"
            );
        }
    }
}

#[test]
fn no_allocation_after_start_up() {
    for format in StorageFormat::ALL {
        let dim = 512;
        let config = GalleryConfig {
            dim,
            exemplars: 4,
            format,
            budget_bytes: 0,
        };
        let config = GalleryConfig {
            budget_bytes: config.heap_bytes(24),
            ..config
        };
        let policy = MatchPolicy {
            threshold: 0.8,
            margin: 0.02,
            ..MatchPolicy::default()
        };
        let mut gallery = Gallery::with_budget(config, policy).unwrap();
        let mut rng = Rng::new(0x5eed ^ format as u64);
        // 60 people through a gallery of 24: evictions, refreshes and new identities all happen.
        let crowd = Crowd::new(60, dim, &mut rng);
        let mut query = vec![0.0f32; dim];
        let mut top = [reidcam::gallery::Candidate::default(); 5];
        let mut label = String::with_capacity(16);
        let (mut new, mut evicted, mut replaced, mut kept, mut added) = (0, 0, 0, 0, 0);
        let ((), allocations) = allocations_during(|| {
            for step in 0..3000u64 {
                let person = rng.below(60) as usize;
                crowd.sample(person, 0.25, &mut rng, &mut query);
                let now = Timestamp(step);
                match gallery.observe(&query, now).unwrap() {
                    Observation::New { evicted: e, .. } => {
                        new += 1;
                        evicted += usize::from(e.is_some());
                    }
                    Observation::Known { exemplar, .. } => match exemplar {
                        ExemplarUpdate::Added => added += 1,
                        ExemplarUpdate::Replaced(_) => replaced += 1,
                        ExemplarUpdate::Kept => kept += 1,
                    },
                    Observation::Ambiguous { .. } | Observation::Unstored { .. } => {}
                }
                gallery.best_matches(&query, &mut top).unwrap();
                if step % 500 == 0 {
                    // An operator enrols someone (pinned, labelled) and removes them again.
                    use std::fmt::Write;
                    label.clear();
                    write!(label, "guest {step}").unwrap();
                    let enrol = NewIdentity {
                        label: Some(&label),
                        pinned: true,
                        now,
                    };
                    let (id, _) = gallery.insert(&query, enrol).unwrap();
                    gallery.remove(id).unwrap();
                }
            }
        });
        assert_eq!(
            allocations, 0,
            "{format}: the gallery allocated after start-up"
        );
        assert!(
            new > 24 && evicted > 0,
            "{format}: new {new}, evicted {evicted}"
        );
        assert!(
            added > 0 && replaced > 0 && kept > 0,
            "{format}: added {added}, replaced {replaced}, kept {kept}"
        );
    }
}

/// A small gallery with a label, a pinned identity and several exemplars.
fn small_gallery(format: StorageFormat, dim: usize) -> Gallery {
    let config = GalleryConfig {
        dim,
        exemplars: 3,
        format,
        budget_bytes: 1 << 16,
    };
    let mut gallery = Gallery::with_budget(config, MatchPolicy::default()).unwrap();
    let mut rng = Rng::new(42);
    let crowd = Crowd::new(3, dim, &mut rng);
    let mut v = vec![0.0; dim];
    for person in 0..3 {
        crowd.sample(person, 0.1, &mut rng, &mut v);
        let new = NewIdentity {
            label: (person == 0).then_some("alice"),
            pinned: person == 0,
            now: Timestamp(1_700_000_000_000 + person as u64),
        };
        let (id, _) = gallery.insert(&v, new).unwrap();
        for _ in 0..person {
            crowd.sample(person, 0.5, &mut rng, &mut v);
            gallery
                .refresh(id, &v, Timestamp(1_700_000_100_000))
                .unwrap();
        }
    }
    gallery
}

fn load(path: &Path, gallery: &Gallery) -> Result<Gallery, GalleryError> {
    file::load(
        path,
        &model_tag(gallery.config().dim),
        *gallery.config(),
        *gallery.policy(),
    )
}

/// Everything observable about a gallery, for equality checks.
fn snapshot(gallery: &Gallery) -> Vec<(String, Vec<Vec<f32>>)> {
    let mut out: Vec<_> = gallery
        .identities()
        .map(|i| {
            let vectors = (0..i.exemplars)
                .map(|e| {
                    let mut v = vec![0.0; gallery.config().dim];
                    gallery.exemplar(i.id, e, &mut v).unwrap();
                    v
                })
                .collect();
            (format!("{i:?}"), vectors)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn save_and_load_round_trip_every_format_with_mode_0600() {
    let dir = scratch("gallery-roundtrip");
    for format in StorageFormat::ALL {
        let gallery = small_gallery(format, 24);
        let path = dir.join(format!("{format}.gallery"));
        let written = file::save(&gallery, "test-model", &path).unwrap();
        assert_eq!(written, std::fs::metadata(&path).unwrap().len());
        let loaded = load(&path, &gallery).unwrap();
        assert_eq!(snapshot(&loaded), snapshot(&gallery), "{format}");
        assert_eq!(loaded.next_id(), gallery.next_id());
        // Saving again keeps the first file as the backup, byte for byte.
        let first = std::fs::read(&path).unwrap();
        file::save(&loaded, "test-model", &path).unwrap();
        assert_eq!(std::fs::read(file::backup_path(&path)).unwrap(), first);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            first,
            "{format}: saving is deterministic"
        );
        use std::os::unix::fs::PermissionsExt;
        for p in [path.clone(), file::backup_path(&path)] {
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.display());
        }
    }
    // A gallery loads into another storage format (converted) and another K (first ones kept).
    let path = dir.join("f32.gallery");
    let f32_gallery = load(&path, &small_gallery(StorageFormat::F32, 24)).unwrap();
    let config = GalleryConfig {
        format: StorageFormat::Int8,
        exemplars: 2,
        ..*f32_gallery.config()
    };
    let int8 = file::load(&path, &model_tag(24), config, MatchPolicy::default()).unwrap();
    assert_eq!(int8.len(), 3);
    assert!(int8.identities().all(|i| i.exemplars <= 2));
}

/// Issue 22, "writes follow symlinks": a link planted at `<gallery>.tmp` made a save truncate
/// and overwrite its target; a dangling link as the gallery replaced the backup. Both are now
/// refused with an error naming the path, the targets and the backup untouched.
#[test]
fn saves_never_write_through_symbolic_links() {
    let dir = scratch("gallery-symlinks");
    let gallery = small_gallery(StorageFormat::Int8, 24);
    let victim = dir.join("victim");
    std::fs::write(&victim, "keep me").unwrap();

    let path = dir.join("g.bin");
    std::os::unix::fs::symlink("victim", file::temp_path(&path)).unwrap();
    let err = file::save(&gallery, "test-model", &path).unwrap_err();
    assert!(matches!(err, file::FileError::Symlink { .. }), "{err}");
    assert!(
        err.to_string().contains("g.bin.tmp: is a symbolic link"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
    assert!(!path.exists());

    let path = dir.join("h.bin");
    file::save(&gallery, "test-model", &path).unwrap();
    file::save(&gallery, "test-model", &path).unwrap();
    let backup = std::fs::read(file::backup_path(&path)).unwrap();
    std::fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink("nowhere", &path).unwrap();
    let err = file::save(&gallery, "test-model", &path).unwrap_err();
    assert!(matches!(err, file::FileError::Symlink { .. }), "{err}");
    assert_eq!(std::fs::read(file::backup_path(&path)).unwrap(), backup);

    // A gallery put in place by hand, readable by all: its backup is private.
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join("j.bin");
    file::save(&gallery, "test-model", &path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    file::save(&gallery, "test-model", &path).unwrap();
    let bak = std::fs::metadata(file::backup_path(&path)).unwrap();
    assert_eq!(bak.permissions().mode() & 0o777, 0o600);

    let long = "m".repeat(1025);
    let err = file::save(&gallery, &long, &dir.join("i.bin")).unwrap_err();
    assert!(
        err.to_string()
            .contains("model name is 1025 bytes: a gallery file holds at most 1024"),
        "{err}"
    );
}

/// Writes `bytes` to a fresh file and tries to load it; checks the file was not touched.
fn load_bytes(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    like: &Gallery,
) -> Result<Gallery, GalleryError> {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    let result = load(&path, like);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "{name}: loading changed the file"
    );
    result
}

/// The error text of loading `bytes` (which must fail), the file left untouched.
fn refusal(dir: &Path, name: &str, bytes: &[u8], like: &Gallery) -> String {
    load_bytes(dir, name, bytes, like)
        .expect_err("a damaged gallery must be refused")
        .to_string()
}

fn with_checksum(mut bytes: Vec<u8>) -> Vec<u8> {
    let body = bytes.len() - 4;
    let crc = crc32fast::hash(&bytes[..body]);
    bytes[body..].copy_from_slice(&crc.to_le_bytes());
    bytes
}

#[test]
fn damaged_files_are_refused_with_a_clear_error_and_left_untouched() {
    let dir = scratch("gallery-damage");
    let gallery = small_gallery(StorageFormat::Int8, 8);
    let path = dir.join("good.gallery");
    file::save(&gallery, "test-model", &path).unwrap();
    let good = std::fs::read(&path).unwrap();
    assert_eq!(good.len(), 210, "the size docs/gallery.md quotes");
    assert!(load_bytes(&dir, "copy.gallery", &good, &gallery).is_ok());

    // Truncated at every byte offset.
    for len in 0..good.len() {
        let err = load_bytes(&dir, "cut.gallery", &good[..len], &gallery).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("cut.gallery"), "{len}: {text}");
        assert!(
            matches!(
                err,
                GalleryError::File(FileError::Truncated { .. } | FileError::NotAGallery { .. })
            ),
            "{len}: {text}"
        );
    }
    // Every single-bit flip is detected.
    let mut rng = Rng::new(7);
    for offset in 0..good.len() {
        let mut bad = good.clone();
        bad[offset] ^= 1 << rng.below(8);
        let err = load_bytes(&dir, "flip.gallery", &bad, &gallery).unwrap_err();
        assert!(
            matches!(err, GalleryError::File(_)),
            "flip at {offset}: {err}"
        );
    }
    // Random multi-byte garbage.
    for _ in 0..200 {
        let mut bad = good.clone();
        for _ in 0..1 + rng.below(8) {
            let at = rng.below(bad.len() as u64) as usize;
            bad[at] = rng.next_u64() as u8;
        }
        if bad != good {
            assert!(load_bytes(&dir, "garbage.gallery", &bad, &gallery).is_err());
        }
    }

    let mut wrong_magic = good.clone();
    wrong_magic[..8].copy_from_slice(b"PK\x03\x04zip!");
    let text = refusal(&dir, "magic.gallery", &wrong_magic, &gallery);
    assert!(
        text.contains("magic.gallery: not a reidcam gallery file"),
        "{text}"
    );

    let mut version = good.clone();
    version[8..10].copy_from_slice(&2u16.to_le_bytes());
    let text = refusal(&dir, "version.gallery", &with_checksum(version), &gallery);
    assert!(
        text.contains("version.gallery: gallery file version 2 is not supported"),
        "{text}"
    );

    // Another model, another dimension.
    for (tag, expected) in [
        (
            ModelTag {
                name: "other-model".into(),
                dim: 8,
            },
            "saved for model \"test-model\" (8-d), but the model in use is \"other-model\" (8-d)",
        ),
        (
            ModelTag {
                name: "test-model".into(),
                dim: 16,
            },
            "but the model in use is \"test-model\" (16-d)",
        ),
    ] {
        let config = GalleryConfig {
            dim: tag.dim,
            ..*gallery.config()
        };
        let err = file::load(&path, &tag, config, MatchPolicy::default()).unwrap_err();
        assert!(err.to_string().contains(expected), "{err}");
    }

    // Damage behind a valid checksum (a buggy writer): caught by the structural checks.
    let first_entry = 38 + "test-model".len();
    let mut zero_exemplars = good.clone();
    // id 4, flags 1, label 1, "alice" 5, first 8, last 8, seen 4 → exemplar count.
    zero_exemplars[first_entry + 4 + 1 + 1 + 5 + 8 + 8 + 4] = 0;
    let text = refusal(
        &dir,
        "count.gallery",
        &with_checksum(zero_exemplars),
        &gallery,
    );
    assert!(
        text.contains("identity 1: 0 exemplars, expected 1..=3"),
        "{text}"
    );
    let mut format_code = good.clone();
    format_code[10] = 9;
    let text = refusal(
        &dir,
        "format.gallery",
        &with_checksum(format_code),
        &gallery,
    );
    assert!(text.contains("unknown storage format code 9"), "{text}");

    // A budget that cannot hold the file is an error, not a silent drop.
    let small = GalleryConfig {
        budget_bytes: gallery.config().heap_bytes(2),
        ..*gallery.config()
    };
    let text = file::load(&path, &model_tag(8), small, MatchPolicy::default())
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("holds 3 identities but the budget fits 2"),
        "{text}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), good);
}

#[test]
fn recovery_policies_keep_the_damaged_file() {
    let dir = scratch("gallery-recovery");
    let gallery = small_gallery(StorageFormat::Int8, 8);
    let (config, policy, tag) = (*gallery.config(), *gallery.policy(), model_tag(8));
    let path = dir.join("cam.gallery");

    // Nothing on disk: a new, empty gallery.
    let (g, how) = file::open(&path, &tag, config, policy, Recovery::Fail).unwrap();
    assert!(g.is_empty() && matches!(how, Opened::New));

    file::save(&gallery, "test-model", &path).unwrap();
    let older = std::fs::read(&path).unwrap();
    let mut grown = load(&path, &gallery).unwrap();
    grown
        .insert(
            &[1.0; 8],
            NewIdentity {
                label: None,
                pinned: false,
                now: Timestamp(9),
            },
        )
        .unwrap();
    file::save(&grown, "test-model", &path).unwrap();
    let newer = std::fs::read(&path).unwrap();
    let damaged: Vec<u8> = newer[..newer.len() - 10].to_vec();

    for recovery in [Recovery::Fail, Recovery::Backup, Recovery::Empty] {
        let case = dir.join(format!("{recovery:?}"));
        std::fs::create_dir_all(&case).unwrap();
        let path = case.join("cam.gallery");
        std::fs::write(&path, &damaged).unwrap();
        std::fs::write(file::backup_path(&path), &older).unwrap();
        match file::open(&path, &tag, config, policy, recovery) {
            Err(e) => {
                assert_eq!(recovery, Recovery::Fail);
                assert!(e.to_string().contains("cam.gallery: truncated"), "{e}");
                assert_eq!(
                    std::fs::read(&path).unwrap(),
                    damaged,
                    "Fail leaves the file in place"
                );
            }
            Ok((g, Opened::FromBackup { set_aside, .. })) => {
                assert_eq!(recovery, Recovery::Backup);
                assert_eq!(g.len(), 3, "the backup's identities");
                let aside = set_aside.expect("damaged file moved aside");
                assert_eq!(std::fs::read(aside).unwrap(), damaged, "damaged bytes kept");
                // The next save makes a new file and leaves the good backup alone.
                file::save(&g, "test-model", &path).unwrap();
                assert_eq!(std::fs::read(file::backup_path(&path)).unwrap(), older);
            }
            Ok((g, Opened::Empty { set_aside, .. })) => {
                assert_eq!(recovery, Recovery::Empty);
                assert!(g.is_empty());
                assert_eq!(std::fs::read(set_aside.unwrap()).unwrap(), damaged);
            }
            Ok((_, other)) => panic!("{recovery:?}: unexpected {other:?}"),
        }
        assert_eq!(
            std::fs::read(file::backup_path(&path)).unwrap(),
            older,
            "backup untouched"
        );
    }

    // A file for another model is never "recovered", whatever the policy.
    let other = ModelTag {
        name: "other-model".into(),
        dim: 8,
    };
    let err = file::open(&path, &other, config, policy, Recovery::Empty).unwrap_err();
    assert!(
        err.to_string().contains("saved for model \"test-model\""),
        "{err}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), newer);

    // Both copies damaged, policy Backup: an error naming both problems; nothing moved.
    std::fs::write(&path, &damaged).unwrap();
    std::fs::write(file::backup_path(&path), b"REIDCAMG").unwrap();
    let err = file::open(&path, &tag, config, policy, Recovery::Backup).unwrap_err();
    assert!(err.to_string().contains("backup is unusable too"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), damaged);
}

// ---------------------------------------------------------------------------------------------
// Crash safety: a child process saves in a loop and is killed with SIGKILL at random moments.

const SAVE_LOOP_ENV: &str = "REIDCAM_TEST_SAVE_LOOP";
const CRASH_DIM: usize = 256;
/// Rounds natively; a quarter under qemu-user (each spawns the test binary, ~0.2 s emulated).
const CRASH_ROUNDS: usize = 200;
const READY: &str = "helper: saving";
const SAVED: &str = "helper: saved";

/// Gallery number `generation`: every identity's times_seen is the generation, and the count
/// varies with it, so a mix of two generations or a partial file cannot pass for a whole one.
fn generation_gallery(generation: u32) -> Gallery {
    let config = GalleryConfig {
        dim: CRASH_DIM,
        exemplars: 4,
        format: StorageFormat::F32,
        budget_bytes: 8 << 20,
    };
    let mut gallery = Gallery::with_budget(config, MatchPolicy::default()).unwrap();
    let mut v = vec![0.0f32; CRASH_DIM];
    for person in 0..(200 + generation % 13) {
        let info = reidcam::gallery::IdentityInfo {
            id: PersonId(person + 1),
            label: None,
            first_seen: Timestamp(u64::from(generation)),
            last_seen: Timestamp(u64::from(generation)),
            times_seen: generation,
            pinned: false,
            exemplars: 4,
        };
        let vectors: Vec<Vec<f32>> = (0..4)
            .map(|e| {
                for (i, x) in v.iter_mut().enumerate() {
                    *x = ((i as u32 + person * 7 + e * 3 + generation) % 17) as f32 + 1.0;
                }
                v.clone()
            })
            .collect();
        gallery
            .restore(&info, vectors.iter().map(Vec::as_slice))
            .unwrap();
    }
    gallery
}

/// The generation of a loaded gallery, after checking it is exactly that generation's.
fn check_generation(gallery: &Gallery) -> u32 {
    let generation = gallery.identities().next().expect("never empty").times_seen;
    assert_eq!(
        gallery.len() as u32,
        200 + generation % 13,
        "identity count of generation {generation}"
    );
    assert!(
        gallery
            .identities()
            .all(|i| i.times_seen == generation && i.exemplars == 4)
    );
    assert_eq!(snapshot(gallery), snapshot(&generation_gallery(generation)));
    generation
}

/// Not a test: the child of `saves_survive_sigkill_at_random_points`, run through this test
/// binary (`--ignored --exact`). Saves generations after the one on disk until killed.
#[test]
#[ignore = "helper process for the SIGKILL test"]
fn helper_save_loop() {
    let Some(path) = std::env::var_os(SAVE_LOOP_ENV).map(PathBuf::from) else {
        return;
    };
    let template = generation_gallery(0);
    let start = load(&path, &template).map_or(0, |g| check_generation(&g));
    // Tell the parent that saving starts now (start-up time varies, e.g. under emulation).
    println!("{READY}");
    std::io::Write::flush(&mut std::io::stdout()).unwrap();
    for generation in start + 1.. {
        file::save(&generation_gallery(generation), "test-model", &path).unwrap();
        println!("{SAVED}");
    }
}

#[test]
fn saves_survive_sigkill_at_random_points() {
    let dir = scratch("gallery-crash");
    let path = dir.join("crash.gallery");
    let template = generation_gallery(0);
    file::save(&generation_gallery(1), "test-model", &path).unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = Rng::new(0xc0ffee);
    let (mut last, mut killed_mid_write, mut advanced) = (1u32, 0usize, 0usize);
    let rounds = if crate::common::emulated() {
        CRASH_ROUNDS / 4
    } else {
        CRASH_ROUNDS
    };
    for round in 0..rounds {
        let mut child = command(&exe)
            .args([
                "gallery::helper_save_loop",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(SAVE_LOOP_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // libtest prints "test NAME ... " on the same line first.
        let ready = lines
            .by_ref()
            .map_while(Result::ok)
            .any(|line| line.ends_with(READY));
        assert!(ready, "round {round}: the helper never started saving");
        // Time one save, then kill at a random point of the next one or two (saves take ~4 ms
        // natively and ~20x that under qemu-user, so the window scales with the machine).
        let started = std::time::Instant::now();
        let saved = lines
            .by_ref()
            .map_while(Result::ok)
            .any(|line| line == SAVED);
        assert!(saved, "round {round}: the helper never finished a save");
        let one_save = started.elapsed().as_micros() as u64;
        std::thread::sleep(Duration::from_micros(rng.below(2 * one_save + 1)));
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        assert!(
            !status.success(),
            "round {round}: the helper ended by itself: {status}"
        );
        killed_mid_write += usize::from(file::temp_path(&path).exists());
        let loaded = load(&path, &template).unwrap_or_else(|e| panic!("round {round}: {e}"));
        let generation = check_generation(&loaded);
        assert!(
            generation >= last,
            "round {round}: went back from {last} to {generation}"
        );
        advanced += usize::from(generation > last);
        last = generation;
        if generation > 1 {
            let backup = load(&file::backup_path(&path), &template)
                .unwrap_or_else(|e| panic!("round {round}: backup: {e}"));
            // Equal when the kill came after the backup link and before the rename.
            assert!(
                check_generation(&backup) <= generation,
                "round {round}: backup newer than the file"
            );
        }
    }
    eprintln!(
        "crash test: {rounds} SIGKILLs, {killed_mid_write} left a partial temporary file, \
         {advanced} rounds saved at least once, final generation {last}; every load intact"
    );
    assert_eq!(
        advanced, rounds,
        "every round completes a save before its kill"
    );
    assert!(killed_mid_write > 0, "no kill landed during a write");
}
