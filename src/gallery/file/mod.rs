//! Gallery files: a versioned little-endian binary format, saved atomically with a backup of the
//! previous good file, and validated completely on load.
//!
//! ```text
//! offset  size  field
//!      0     8  magic "REIDCAMG"
//!      8     2  version (1)
//!     10     1  storage format (1 int8, 2 f16, 3 f32)
//!     11     1  flags (0)
//!     12     4  dimension D
//!     16     4  exemplars per identity K of the gallery that wrote it
//!     20     4  identity count N
//!     24     4  next identity id
//!     28     8  file length in bytes, checksum included
//!     36     2  model name length L
//!     38     L  model name (UTF-8)
//!   then N entries:
//!                4 id, 1 flags (bit 0: pinned), 1 label length, label (UTF-8),
//!                8 first seen (ms since the epoch), 8 last seen, 4 times seen,
//!                1 exemplar count E (1..=K), then E × { 4 scale (f32), D × b values }
//!   last         4 CRC-32 (IEEE) of every byte before it
//! ```
//!
//! Saving writes `<file>.tmp` (mode 0600), fsyncs it, replaces `<file>.bak` with a hard link to the
//! current `<file>` (the previous good gallery; link to `<file>.bak.tmp`, then rename), renames the
//! temporary file over `<file>` and fsyncs the directory. At every instant `<file>` is a complete
//! gallery, the old one or the new one, and `<file>.bak` (once there is one) a complete older one.
//!
//! Loading never writes. [`open`] applies a [`Recovery`] policy when the file is damaged; the
//! damaged file is then renamed aside (`<file>.corrupt-<ms>`), never overwritten.
//!
//! This file: the format, its errors, locking and saving; `load.rs`: reading, checking and
//! opening with recovery.

mod load;

pub use load::{GalleryFile, Opened, Recovery, load, open};

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{Gallery, PersonId, StorageFormat};

pub const MAGIC: &[u8; 8] = b"REIDCAMG";
pub const VERSION: u16 = 1;
const FIXED_HEADER: usize = 38;
const CHECKSUM: usize = 4;
const MAX_MODEL_NAME: usize = 1024;
/// File permissions: embeddings are biometric data.
pub const FILE_MODE: u32 = 0o600;

/// Which model a gallery belongs to: embeddings of different models are not comparable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelTag {
    pub name: String,
    pub dim: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: cannot {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        source: io::Error,
    },
    #[error(
        "{path}: is a symbolic link; reidcam does not write through links (whoever made it would \
         choose what gets overwritten): replace it with the file itself"
    )]
    Symlink { path: PathBuf },
    #[error("{path}: model name is {len} bytes: a gallery file holds at most {MAX_MODEL_NAME}")]
    ModelNameTooLong { path: PathBuf, len: usize },
    #[error("{path}: not a reidcam gallery file (expected it to start with \"REIDCAMG\")")]
    NotAGallery { path: PathBuf },
    #[error(
        "{path}: gallery file version {found} is not supported (this build reads version {VERSION})"
    )]
    UnsupportedVersion { path: PathBuf, found: u16 },
    #[error("{path}: truncated: {len} bytes, the header says {expected}")]
    Truncated {
        path: PathBuf,
        len: u64,
        expected: u64,
    },
    #[error(
        "{path}: checksum mismatch (stored {stored:08x}, computed {computed:08x}): the file is damaged"
    )]
    Checksum {
        path: PathBuf,
        stored: u32,
        computed: u32,
    },
    #[error("{path}: damaged at byte {offset}: {what}")]
    Corrupt {
        path: PathBuf,
        offset: usize,
        what: String,
    },
    #[error(
        "{path}: saved for model {file_model:?} ({file_dim}-d), but the model in use is {model:?} ({dim}-d); \
         use the matching model, or move the file away to start a new gallery"
    )]
    WrongModel {
        path: PathBuf,
        file_model: String,
        file_dim: usize,
        model: String,
        dim: usize,
    },
    #[error("{path}: in use by another reidcam process (it holds {lock}); stop it first")]
    Locked { path: PathBuf, lock: PathBuf },
    #[error("{damage}; and the backup is unusable too: {backup}")]
    NoGoodCopy { damage: String, backup: String },
    #[error(
        "{path}: holds {identities} identities but the budget fits {capacity}: raise the budget to at least {needed} bytes"
    )]
    Capacity {
        path: PathBuf,
        identities: usize,
        capacity: usize,
        needed: usize,
    },
}

impl FileError {
    /// Damage a backup can repair (as opposed to a wrong model, a newer version or an I/O error,
    /// which need the operator).
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            FileError::NotAGallery { .. }
                | FileError::Truncated { .. }
                | FileError::Checksum { .. }
                | FileError::Corrupt { .. }
        )
    }
}

/// What the fixed header of a gallery file says.
#[derive(Clone, Debug, PartialEq)]
pub struct FileHeader {
    pub version: u16,
    pub format: StorageFormat,
    pub dim: usize,
    pub exemplars: usize,
    pub identities: usize,
    pub next_id: PersonId,
    pub len: u64,
    pub model: String,
}

/// `<file>.lock`: held (advisory `flock`) by the one process allowed to change `<file>`.
pub fn lock_path(path: &Path) -> PathBuf {
    sibling(path, "lock")
}

/// Exclusive right to change a gallery file, for as long as the value lives: the daemon holds it
/// while it runs, `reidcam gallery` while it reads, changes and saves. Without it, a CLI enrolment
/// would be overwritten by the daemon's next save. The lock is advisory (`flock` on
/// `<file>.lock`) and released by the kernel when the process dies, even by SIGKILL.
#[derive(Debug)]
pub struct GalleryLock {
    _file: File,
    path: PathBuf,
}

impl GalleryLock {
    /// Takes the lock, or fails at once if another process holds it.
    pub fn acquire(gallery: &Path) -> Result<Self, FileError> {
        let path = lock_path(gallery);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(FILE_MODE)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(no_link_error(&path, "create the lock file"))?;
        match file.try_lock() {
            Ok(()) => Ok(GalleryLock { _file: file, path }),
            Err(std::fs::TryLockError::WouldBlock) => Err(FileError::Locked {
                path: gallery.to_owned(),
                lock: path,
            }),
            Err(std::fs::TryLockError::Error(e)) => Err(io_error(&path, "lock")(e)),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Creates (or truncates) a file readable by its owner only ([`FILE_MODE`]): galleries and their
/// exports hold biometric data. An existing file keeps its old mode through `open`, so the mode
/// is set explicitly too. A symbolic link at `path` is refused (`ELOOP`, see [`no_link_error`]),
/// never followed.
pub fn create_private(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    file.set_permissions(fs::Permissions::from_mode(FILE_MODE))?;
    Ok(file)
}

/// `<file>.bak`: the previous good gallery.
pub fn backup_path(path: &Path) -> PathBuf {
    sibling(path, "bak")
}

/// `<file>.tmp`: the file being written.
pub fn temp_path(path: &Path) -> PathBuf {
    sibling(path, "tmp")
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(suffix);
    path.with_file_name(name)
}

/// As [`io_error`], for an open with `O_NOFOLLOW`: its `ELOOP` means a symbolic link is there.
pub(crate) fn no_link_error<'a>(
    path: &'a Path,
    action: &'static str,
) -> impl FnOnce(io::Error) -> FileError + 'a {
    move |source| {
        if source.raw_os_error() == Some(libc::ELOOP) {
            FileError::Symlink {
                path: path.to_owned(),
            }
        } else {
            io_error(path, action)(source)
        }
    }
}

fn io_error<'a>(path: &'a Path, action: &'static str) -> impl FnOnce(io::Error) -> FileError + 'a {
    move |source| FileError::Io {
        path: path.to_owned(),
        action,
        source,
    }
}

/// Bytes `gallery` takes on disk.
pub fn file_len(gallery: &Gallery, model: &str) -> u64 {
    let config = gallery.config();
    let vector = 4 + config.dim * config.format.bytes_per_value();
    let entries: usize = gallery
        .identities()
        .map(|i| 27 + i.label.map_or(0, str::len) + i.exemplars * vector)
        .sum();
    (FIXED_HEADER + model.len() + entries + CHECKSUM) as u64
}

/// Saves atomically, keeping the previous file as `<file>.bak`. Returns the bytes written.
pub fn save(gallery: &Gallery, model: &str, path: &Path) -> Result<u64, FileError> {
    if model.len() > MAX_MODEL_NAME {
        return Err(FileError::ModelNameTooLong {
            path: path.to_owned(),
            len: model.len(),
        });
    }
    // The gallery itself is replaced by a rename, which would replace a link too — and the
    // link, not its target, would become the backup: refuse one here.
    if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(FileError::Symlink {
            path: path.to_owned(),
        });
    }
    let tmp = temp_path(path);
    let file = create_private(&tmp).map_err(no_link_error(&tmp, "create"))?;
    let len = file_len(gallery, model);
    let mut out = ChecksumWriter {
        inner: BufWriter::with_capacity(1 << 16, file),
        hasher: crc32fast::Hasher::new(),
    };
    write_body(gallery, model, len, &mut out).map_err(io_error(&tmp, "write"))?;
    let crc = out.hasher.finalize();
    let mut inner = out.inner;
    inner
        .write_all(&crc.to_le_bytes())
        .map_err(io_error(&tmp, "write"))?;
    let file = inner
        .into_inner()
        .map_err(|e| io_error(&tmp, "write")(e.into_error()))?;
    file.sync_all().map_err(io_error(&tmp, "fsync"))?;
    drop(file);

    if fs::symlink_metadata(path).is_ok() {
        keep_backup(path)?;
    }
    fs::rename(&tmp, path).map_err(io_error(path, "rename the new gallery over"))?;
    sync_parent(path)?;
    Ok(len)
}

/// [`save`], then the backup made the new file too: after a removal (an erasure, forgotten
/// identities) no copy of the removed people stays behind in `<file>.bak`.
pub fn save_erasing(gallery: &Gallery, model: &str, path: &Path) -> Result<u64, FileError> {
    let len = save(gallery, model, path)?;
    keep_backup(path)?;
    sync_parent(path)?;
    Ok(len)
}

/// Makes `<file>.bak` the current `<file>`, atomically: the current file is hard-linked (or,
/// where the filesystem has no hard links, copied and fsynced) to `<file>.bak.tmp`, which is then
/// renamed over `<file>.bak`. The old backup stays in place until the new one replaces it.
fn keep_backup(path: &Path) -> Result<(), FileError> {
    let staging = sibling(path, "bak.tmp");
    match fs::remove_file(&staging) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error(&staging, "remove a stale")(e)),
    }
    if fs::hard_link(path, &staging).is_err() {
        fs::copy(path, &staging).map_err(io_error(&staging, "copy the backup to"))?;
        File::open(&staging)
            .and_then(|f| f.sync_all())
            .map_err(io_error(&staging, "fsync"))?;
    }
    // A gallery put in place by hand may be readable by others; its backup is not (a hard link
    // shares the mode, so the file being replaced becomes 0600 too).
    fs::set_permissions(&staging, fs::Permissions::from_mode(FILE_MODE))
        .map_err(io_error(&staging, "set permissions on"))?;
    let bak = backup_path(path);
    fs::rename(&staging, &bak).map_err(io_error(&bak, "rename the backup to"))
}

fn sync_parent(path: &Path) -> Result<(), FileError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir, "fsync directory"))
}

struct ChecksumWriter<W> {
    inner: W,
    hasher: crc32fast::Hasher,
}

impl<W: Write> Write for ChecksumWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn write_body(gallery: &Gallery, model: &str, len: u64, out: &mut impl Write) -> io::Result<()> {
    let config = gallery.config();
    out.write_all(MAGIC)?;
    out.write_all(&VERSION.to_le_bytes())?;
    out.write_all(&[config.format.code(), 0])?;
    out.write_all(&(config.dim as u32).to_le_bytes())?;
    out.write_all(&(config.exemplars as u32).to_le_bytes())?;
    out.write_all(&(gallery.len() as u32).to_le_bytes())?;
    out.write_all(&gallery.next_id().0.to_le_bytes())?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(&(model.len() as u16).to_le_bytes())?;
    out.write_all(model.as_bytes())?;
    for (slot, info) in gallery.occupied_slots() {
        let label = info.label.unwrap_or("");
        out.write_all(&info.id.0.to_le_bytes())?;
        out.write_all(&[u8::from(info.pinned), label.len() as u8])?;
        out.write_all(label.as_bytes())?;
        out.write_all(&info.first_seen.0.to_le_bytes())?;
        out.write_all(&info.last_seen.0.to_le_bytes())?;
        out.write_all(&info.times_seen.to_le_bytes())?;
        out.write_all(&[info.exemplars as u8])?;
        for e in 0..info.exemplars {
            let at = gallery.arena_slot(slot, e);
            out.write_all(&gallery.arena().header(at).scale.to_le_bytes())?;
            gallery.arena().write_raw(at, out)?;
        }
    }
    Ok(())
}
