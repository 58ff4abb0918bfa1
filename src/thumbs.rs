//! Thumbnails: the best crop of each identity as a small JPEG beside the gallery
//! (`<gallery>.thumbs/<id>.jpg`, mode 0600 in a 0700 directory), within a byte budget, removed
//! with the identity. `[gallery] thumbnails = false` keeps no pictures at all.
//!
//! The frame loop never encodes nor writes: [`ThumbSink`] (an [`EventSink`] in the events tee)
//! copies an event's best crop into one of a few buffers made at start and hands it to a writer
//! thread, which keeps a thumbnail only when it is better (box height × detector score) than
//! the one on disk and fits the budget. With no free buffer the offer is dropped (counted): a
//! later event of the same person brings another.
//!
//! Erasure: [`Thumbnails::remove`] goes through the same ordered queue and waits for the writer,
//! so no offer made before it can bring the picture back; ids removed that way are refused
//! afterwards. [`Thumbnails::keep_only`] (at every gallery save) deletes the pictures of
//! identities that left the gallery any other way (eviction, `forget_after`, merges).

use std::collections::{HashMap, HashSet};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::events::{Event, EventSink, Identity};
use crate::gallery::{Gallery, PersonId};

/// Buffers for crops on their way to the writer.
const POOL: usize = 4;
/// JPEG quality of a thumbnail.
const QUALITY: f32 = 80.0;
/// The largest thumbnail file read back (a crop at a model's input size is ~5–15 KB).
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// Where thumbnails go and how many bytes they may take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThumbConfig {
    pub dir: PathBuf,
    pub budget_bytes: u64,
}

impl ThumbConfig {
    /// `<gallery file>.thumbs`.
    pub fn dir_for(gallery: &Path) -> PathBuf {
        let mut name = gallery.as_os_str().to_owned();
        name.push(".thumbs");
        PathBuf::from(name)
    }
}

/// The file of `id`'s thumbnail in `dir`.
pub fn file_of(dir: &Path, id: PersonId) -> PathBuf {
    dir.join(format!("{}.jpg", id.0))
}

/// The id whose thumbnail `name` is (`<id>.jpg`, as [`file_of`] names it), if it is one.
fn id_of(name: &str) -> Option<u32> {
    name.strip_suffix(".jpg")?.parse().ok()
}

/// The ids with a thumbnail file in `dir`: one directory read (none if it cannot be read).
pub fn listed(dir: &Path) -> HashSet<u32> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return HashSet::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| id_of(&e.file_name().to_string_lossy()))
        .collect()
}

/// Removes `id`'s thumbnail (the CLI's `gallery remove`); absent is fine.
pub fn remove_file(dir: &Path, id: PersonId) -> io::Result<()> {
    match std::fs::remove_file(file_of(dir, id)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Reads `id`'s thumbnail (never through a symbolic link, at most [`MAX_FILE_BYTES`]).
pub fn read(dir: &Path, id: PersonId) -> io::Result<Vec<u8>> {
    use std::io::Read as _;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(file_of(dir, id))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Counts for the status page and /metrics.
#[derive(Debug, Default)]
pub struct ThumbStats {
    pub written: AtomicU64,
    pub removed: AtomicU64,
    /// Offers dropped: no free buffer, or over the budget.
    pub dropped: AtomicU64,
    pub over_budget: AtomicU64,
    pub failed: AtomicU64,
    /// Bytes on disk now.
    pub bytes: AtomicU64,
    pub files: AtomicU64,
}

/// A crop in a pooled buffer.
struct Crop {
    rgb: Vec<u8>,
    width: u32,
    height: u32,
}

enum Job {
    Offer {
        id: u32,
        quality: f32,
        crop: Crop,
    },
    Remove {
        id: u32,
        done: SyncSender<()>,
    },
    /// Keep only the ids in `Shared::live`.
    Sweep,
}

struct Shared {
    pool: Mutex<Vec<Vec<u8>>>,
    /// The gallery's ids at the latest save (capacity: the gallery's).
    live: Mutex<Vec<u32>>,
    stats: ThumbStats,
}

/// The writer thread and its queue; cloned handles go to the sink.
pub struct Thumbnails {
    config: ThumbConfig,
    jobs: SyncSender<Job>,
    shared: Arc<Shared>,
}

impl Thumbnails {
    /// Creates the directory (0700) if needed, reads what is there and starts the writer.
    /// `crop_bytes`: the size of one crop (the model's input, RGB8); `capacity`: the gallery's.
    pub fn start(config: ThumbConfig, crop_bytes: usize, capacity: usize) -> io::Result<Self> {
        let dir = &config.dir;
        match std::fs::symlink_metadata(dir) {
            Ok(m) if m.file_type().is_symlink() || !m.is_dir() => {
                return Err(io::Error::other(format!(
                    "{}: expected a directory for thumbnails (not a link or a file)",
                    dir.display()
                )));
            }
            Ok(m) => {
                if m.permissions().mode() & 0o077 != 0 {
                    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?,
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", dir.display()))),
        }
        let shared = Arc::new(Shared {
            pool: Mutex::new((0..POOL).map(|_| vec![0u8; crop_bytes]).collect()),
            live: Mutex::new(Vec::with_capacity(capacity)),
            stats: ThumbStats::default(),
        });
        let mut writer = Writer::open(&config, shared.clone())?;
        // Offers, a removal and a sweep at most waiting at once.
        let (jobs, rx) = std::sync::mpsc::sync_channel(POOL + 4);
        // The writer ends when the last sender is gone (ours, the sinks' with their pipeline)
        // after the jobs it has: not joined.
        std::thread::Builder::new()
            .name("thumbnails".into())
            .spawn(move || writer.run(rx))?;
        Ok(Thumbnails {
            config,
            jobs,
            shared,
        })
    }

    pub fn config(&self) -> &ThumbConfig {
        &self.config
    }

    pub fn stats(&self) -> &ThumbStats {
        &self.shared.stats
    }

    /// The sink for the events tee.
    pub fn sink(&self) -> ThumbSink {
        ThumbSink {
            jobs: self.jobs.clone(),
            shared: self.shared.clone(),
        }
    }

    /// Offers a crop for `id` (an enrolment from a picture): as the sink does.
    pub fn offer(&self, id: PersonId, pixels: &crate::events::Pixels<'_>) {
        offer(&self.jobs, &self.shared, id.0, pixels);
    }

    /// Deletes `id`'s thumbnail and waits (up to 5 s) until it is gone; later offers for `id`
    /// are refused.
    pub fn remove(&self, id: PersonId) -> io::Result<()> {
        let (done, wait) = std::sync::mpsc::sync_channel(1);
        self.jobs
            .send(Job::Remove { id: id.0, done })
            .map_err(|_| io::Error::other("thumbnail writer stopped"))?;
        wait.recv_timeout(Duration::from_secs(5))
            .map_err(|_| io::Error::other("thumbnail writer did not answer in 5 s"))
    }

    /// Deletes the thumbnails of identities no longer in `gallery` (asked for, not waited for;
    /// no allocation: the id list was sized at start).
    pub fn keep_only(&self, gallery: &Gallery) {
        let Ok(mut live) = self.shared.live.try_lock() else {
            return;
        };
        live.clear();
        let room = live.capacity();
        live.extend(gallery.identities().take(room).map(|i| i.id.0));
        drop(live);
        // Full queue: the next save sweeps.
        self.jobs.try_send(Job::Sweep).ok();
    }
}

/// The events tee's thumbnail sink: copies an event's crop into a pooled buffer for the
/// writer (no I/O, no allocation).
pub struct ThumbSink {
    jobs: SyncSender<Job>,
    shared: Arc<Shared>,
}

impl EventSink for ThumbSink {
    fn emit(&mut self, event: &Event<'_>) -> io::Result<()> {
        let id = match event.identity {
            Identity::Known { id, .. } | Identity::New { id, .. } => id,
            _ => return Ok(()),
        };
        if let Some(pixels) = &event.pixels {
            offer(&self.jobs, &self.shared, id.0, pixels);
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn offer(jobs: &SyncSender<Job>, shared: &Shared, id: u32, pixels: &crate::events::Pixels<'_>) {
    let buffer = shared.pool.try_lock().ok().and_then(|mut p| p.pop());
    let Some(mut rgb) = buffer else {
        shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    };
    if rgb.len() != pixels.rgb.len() {
        // Another model's crop size (after a reload): this buffer is remade once.
        rgb.resize(pixels.rgb.len(), 0);
    }
    rgb.copy_from_slice(pixels.rgb);
    let crop = Crop {
        rgb,
        width: pixels.width,
        height: pixels.height,
    };
    match jobs.try_send(Job::Offer {
        id,
        quality: pixels.quality,
        crop,
    }) {
        Ok(()) => {}
        Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => {
            shared.stats.dropped.fetch_add(1, Ordering::Relaxed);
            if let Job::Offer { crop, .. } = job
                && let Ok(mut pool) = shared.pool.lock()
            {
                pool.push(crop.rgb);
            }
        }
    }
}

/// The writer thread's state: what is on disk.
struct Writer {
    dir: PathBuf,
    budget: u64,
    shared: Arc<Shared>,
    /// id → (file bytes, quality of its crop; 0 for files found at start).
    kept: HashMap<u32, (u64, f32)>,
    total: u64,
    erased: HashSet<u32>,
    warned_budget: bool,
}

impl Writer {
    fn open(config: &ThumbConfig, shared: Arc<Shared>) -> io::Result<Writer> {
        let mut kept = HashMap::new();
        let mut total = 0;
        for entry in std::fs::read_dir(&config.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".tmp") {
                std::fs::remove_file(entry.path()).ok();
                continue;
            }
            let Some(id) = id_of(&name) else {
                continue;
            };
            let meta = entry.metadata()?;
            if meta.is_file() {
                kept.insert(id, (meta.len(), 0.0));
                total += meta.len();
            }
        }
        let writer = Writer {
            dir: config.dir.clone(),
            budget: config.budget_bytes,
            shared,
            kept,
            total,
            erased: HashSet::new(),
            warned_budget: false,
        };
        writer.publish();
        Ok(writer)
    }

    fn publish(&self) {
        let s = &self.shared.stats;
        s.bytes.store(self.total, Ordering::Relaxed);
        s.files.store(self.kept.len() as u64, Ordering::Relaxed);
    }

    fn run(&mut self, jobs: Receiver<Job>) {
        while let Ok(job) = jobs.recv() {
            match job {
                Job::Offer { id, quality, crop } => {
                    if let Err(e) = self.offer(id, quality, &crop) {
                        // A full or read-only disk: logged at the 1st, 2nd, 4th, 8th… failure.
                        let n = self.shared.stats.failed.fetch_add(1, Ordering::Relaxed) + 1;
                        if n.is_power_of_two() {
                            log::warn!(
                                "{}: cannot write a thumbnail: {e} ({n} failures so far)",
                                self.dir.display()
                            );
                        }
                    }
                    if let Ok(mut pool) = self.shared.pool.lock() {
                        pool.push(crop.rgb);
                    }
                }
                Job::Remove { id, done } => {
                    self.erased.insert(id);
                    self.remove(id);
                    done.send(()).ok();
                }
                Job::Sweep => {
                    let live: HashSet<u32> = match self.shared.live.lock() {
                        Ok(l) => l.iter().copied().collect(),
                        Err(_) => continue,
                    };
                    let gone: Vec<u32> = self
                        .kept
                        .keys()
                        .copied()
                        .filter(|id| !live.contains(id))
                        .collect();
                    for id in gone {
                        self.remove(id);
                    }
                }
            }
            self.publish();
        }
    }

    fn offer(&mut self, id: u32, quality: f32, crop: &Crop) -> io::Result<()> {
        if self.erased.contains(&id) {
            return Ok(());
        }
        let (old_bytes, old_quality) = self.kept.get(&id).copied().unwrap_or((0, -1.0));
        if self.kept.contains_key(&id) && quality <= old_quality {
            return Ok(());
        }
        let jpeg = crate::frame::encode_jpeg(&crop.rgb, crop.width, crop.height, QUALITY)?;
        let new_bytes = jpeg.len() as u64;
        if self.total - old_bytes + new_bytes > self.budget {
            let s = &self.shared.stats;
            s.over_budget.fetch_add(1, Ordering::Relaxed);
            s.dropped.fetch_add(1, Ordering::Relaxed);
            if !self.warned_budget {
                self.warned_budget = true;
                log::warn!(
                    "{}: thumbnail budget of {} bytes reached ({} files): new identities get no picture until some are erased",
                    self.dir.display(),
                    self.budget,
                    self.kept.len()
                );
            }
            return Ok(());
        }
        let path = file_of(&self.dir, PersonId(id));
        let tmp = self.dir.join(format!("{id}.jpg.tmp"));
        std::fs::remove_file(&tmp).ok();
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        file.write_all(&jpeg)?;
        drop(file);
        std::fs::rename(&tmp, &path)?;
        self.total = self.total - old_bytes + new_bytes;
        self.kept.insert(id, (new_bytes, quality));
        self.shared.stats.written.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn remove(&mut self, id: u32) {
        match remove_file(&self.dir, PersonId(id)) {
            Ok(()) => {
                if let Some((bytes, _)) = self.kept.remove(&id) {
                    self.total -= bytes;
                    self.shared.stats.removed.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => {
                self.shared.stats.failed.fetch_add(1, Ordering::Relaxed);
                log::error!("{}: cannot erase thumbnail {id}: {e}", self.dir.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Pixels;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("reidcam-thumbs-{name}-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A 32×64 crop of noise seeded by `seed` (JPEG does not shrink it much).
    fn crop(seed: u32) -> Vec<u8> {
        let mut x = seed.wrapping_mul(2_654_435_761).max(1);
        (0..32 * 64 * 3)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    fn pixels(rgb: &[u8], quality: f32) -> Pixels<'_> {
        Pixels {
            rgb,
            width: 32,
            height: 64,
            quality,
        }
    }

    /// Waits until the writer has taken every job so far (a removal of an unused id is a
    /// barrier: the queue is in order).
    fn settle(t: &Thumbnails) {
        t.remove(PersonId(u32::MAX)).unwrap();
    }

    #[test]
    fn thumbnails_are_private_better_ones_replace_and_erasure_is_final() {
        let dir = scratch("basic").join("g.bin.thumbs");
        let config = ThumbConfig {
            dir: dir.clone(),
            budget_bytes: 1 << 20,
        };
        let t = Thumbnails::start(config, 32 * 64 * 3, 16).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let (a, b) = (crop(1), crop(2));
        t.offer(PersonId(7), &pixels(&a, 10.0));
        settle(&t);
        let file = file_of(&dir, PersonId(7));
        let first = std::fs::read(&file).unwrap();
        assert_eq!(&first[..2], &[0xFF, 0xD8], "a JPEG");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A worse crop does not replace it; a better one does.
        t.offer(PersonId(7), &pixels(&b, 5.0));
        settle(&t);
        assert_eq!(std::fs::read(&file).unwrap(), first);
        t.offer(PersonId(7), &pixels(&b, 20.0));
        settle(&t);
        assert_ne!(std::fs::read(&file).unwrap(), first);
        assert_eq!(
            read(&dir, PersonId(7)).unwrap(),
            std::fs::read(&file).unwrap()
        );
        // Erased: gone, and an offer queued later (a track still holding the id) is refused.
        t.remove(PersonId(7)).unwrap();
        assert!(!file.exists());
        t.offer(PersonId(7), &pixels(&a, 99.0));
        settle(&t);
        assert!(!file.exists());
        assert_eq!(t.stats().written.load(Ordering::Relaxed), 2);
        assert_eq!(t.stats().bytes.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn the_budget_holds_and_a_sweep_follows_the_gallery() {
        use crate::gallery::{GalleryConfig, MatchPolicy, NewIdentity, StorageFormat, Timestamp};
        let dir = scratch("budget").join("t");
        let one = crate::frame::encode_jpeg(&crop(1), 32, 64, QUALITY)
            .unwrap()
            .len() as u64;
        let config = ThumbConfig {
            dir: dir.clone(),
            // Room for two and a half.
            budget_bytes: one * 5 / 2,
        };
        let t = Thumbnails::start(config.clone(), 32 * 64 * 3, 16).unwrap();
        let rgb = crop(1);
        for id in 1..=4 {
            t.offer(PersonId(id), &pixels(&rgb, 1.0));
            settle(&t);
        }
        let files = || {
            let mut ids: Vec<String> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            ids.sort();
            ids
        };
        assert_eq!(files(), ["1.jpg", "2.jpg"]);
        assert!(t.stats().bytes.load(Ordering::Relaxed) <= one * 5 / 2);
        assert_eq!(t.stats().over_budget.load(Ordering::Relaxed), 2);
        // The gallery holds only identity 2 (and others without pictures): 1 goes.
        let gallery_config = GalleryConfig {
            dim: 4,
            exemplars: 1,
            format: StorageFormat::F32,
            budget_bytes: 4096,
        };
        let mut gallery = Gallery::with_budget(gallery_config, MatchPolicy::default()).unwrap();
        let new = NewIdentity {
            label: None,
            pinned: false,
            now: Timestamp(1),
        };
        let (first, _) = gallery.insert(&[1.0, 0.0, 0.0, 0.0], new).unwrap();
        let (second, _) = gallery.insert(&[0.0, 1.0, 0.0, 0.0], new).unwrap();
        gallery.remove(first).unwrap();
        assert_eq!(second, PersonId(2));
        t.keep_only(&gallery);
        settle(&t);
        assert_eq!(files(), ["2.jpg"]);
        // Restarted over the same directory: what is there is counted against the budget.
        drop(t);
        let t = Thumbnails::start(config, 32 * 64 * 3, 16).unwrap();
        assert_eq!(t.stats().files.load(Ordering::Relaxed), 1);
        assert_eq!(t.stats().bytes.load(Ordering::Relaxed), one);
    }

    #[test]
    fn a_link_in_place_of_the_directory_is_refused() {
        let root = scratch("link");
        std::os::unix::fs::symlink("/tmp", root.join("g.thumbs")).unwrap();
        let config = ThumbConfig {
            dir: root.join("g.thumbs"),
            budget_bytes: 1 << 20,
        };
        let e = Thumbnails::start(config, 16, 1).err().unwrap();
        assert!(e.to_string().contains("expected a directory"), "{e}");
    }
}
