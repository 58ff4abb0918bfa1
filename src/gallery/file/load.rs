//! Reading a gallery file: every byte checked (envelope, header, entries) before a gallery is
//! built, and [`open`] with its [`Recovery`] policy for a damaged file.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::super::vectors::Arena;
use super::super::{
    Gallery, GalleryConfig, GalleryError, IdentityInfo, LABEL_CAPACITY, MatchPolicy, PersonId,
    StorageFormat, Timestamp,
};
use super::{
    CHECKSUM, FIXED_HEADER, FileError, FileHeader, MAGIC, MAX_MODEL_NAME, ModelTag, VERSION,
    backup_path, io_error, sibling,
};

/// Bounds-checked little-endian reads; every failure names the offset.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn corrupt(&self, what: impl Into<String>) -> FileError {
        FileError::Corrupt {
            path: self.path.to_owned(),
            offset: self.pos,
            what: what.into(),
        }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], FileError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end =
            end.ok_or_else(|| self.corrupt(format!("{what} runs past the end of the data")))?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], FileError> {
        Ok(self.take(N, what)?.try_into().expect("length checked"))
    }

    fn u8(&mut self, what: &str) -> Result<u8, FileError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16, FileError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &str) -> Result<u32, FileError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, FileError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn str(&mut self, n: usize, what: &str) -> Result<&'a str, FileError> {
        let at = self.pos;
        let bytes = self.take(n, what)?;
        std::str::from_utf8(bytes).map_err(|_| FileError::Corrupt {
            path: self.path.to_owned(),
            offset: at,
            what: format!("{what} is not UTF-8"),
        })
    }
}

/// Validates magic, version, length and checksum, and parses the header.
fn check_envelope(path: &Path, bytes: &[u8]) -> Result<FileHeader, FileError> {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(FileError::NotAGallery {
            path: path.to_owned(),
        });
    }
    let header = parse_header(path, bytes)?;
    if (bytes.len() as u64) < header.len {
        return Err(FileError::Truncated {
            path: path.to_owned(),
            len: bytes.len() as u64,
            expected: header.len,
        });
    }
    if bytes.len() as u64 != header.len {
        return Err(FileError::Corrupt {
            path: path.to_owned(),
            offset: header.len as usize,
            what: format!(
                "{} bytes follow the end the header declares",
                bytes.len() as u64 - header.len
            ),
        });
    }
    let body = bytes.len() - CHECKSUM;
    let stored = u32::from_le_bytes(bytes[body..].try_into().expect("4 bytes"));
    let computed = crc32fast::hash(&bytes[..body]);
    if stored != computed {
        return Err(FileError::Checksum {
            path: path.to_owned(),
            stored,
            computed,
        });
    }
    Ok(header)
}

/// Parses the fixed header and model name (after the magic matched).
fn parse_header(path: &Path, bytes: &[u8]) -> Result<FileHeader, FileError> {
    let truncated = |expected: usize| FileError::Truncated {
        path: path.to_owned(),
        len: bytes.len() as u64,
        expected: expected as u64,
    };
    if bytes.len() < 10 {
        return Err(truncated(FIXED_HEADER));
    }
    let mut r = Reader {
        bytes,
        pos: MAGIC.len(),
        path,
    };
    let version = r.u16("version")?;
    if version != VERSION {
        return Err(FileError::UnsupportedVersion {
            path: path.to_owned(),
            found: version,
        });
    }
    if bytes.len() < FIXED_HEADER {
        return Err(truncated(FIXED_HEADER));
    }
    let code = r.u8("format")?;
    let format = StorageFormat::from_code(code)
        .ok_or_else(|| r.corrupt(format!("unknown storage format code {code}")))?;
    let _flags = r.u8("flags")?;
    let dim = r.u32("dimension")? as usize;
    let exemplars = r.u32("exemplars per identity")? as usize;
    let identities = r.u32("identity count")? as usize;
    let next_id = PersonId(r.u32("next id")?);
    let len = r.u64("file length")?;
    let name_len = usize::from(r.u16("model name length")?);
    if name_len > MAX_MODEL_NAME {
        return Err(r.corrupt(format!(
            "model name length {name_len} exceeds {MAX_MODEL_NAME}"
        )));
    }
    if bytes.len() < FIXED_HEADER + name_len {
        return Err(truncated(FIXED_HEADER + name_len));
    }
    let model = r.str(name_len, "model name")?.to_owned();
    Ok(FileHeader {
        version,
        format,
        dim,
        exemplars,
        identities,
        next_id,
        len,
        model,
    })
}

/// A gallery file read into memory with its envelope checked (magic, version, length,
/// checksum): tools look at the header to choose the gallery's configuration, then build the
/// gallery from the same bytes, without reading the file twice.
#[derive(Debug)]
pub struct GalleryFile {
    path: PathBuf,
    bytes: Vec<u8>,
    header: FileHeader,
}

impl GalleryFile {
    pub fn read(path: &Path) -> Result<Self, FileError> {
        let bytes = fs::read(path).map_err(io_error(path, "read"))?;
        Self::from_bytes(path, bytes)
    }

    /// A gallery file's bytes, checked (magic, version, length, checksum, header), `path` only
    /// naming it in errors (the fuzz target `gallery_file` feeds this).
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self, FileError> {
        let header = check_envelope(path, &bytes)?;
        Ok(GalleryFile {
            path: path.to_owned(),
            bytes,
            header,
        })
    }

    pub fn header(&self) -> &FileHeader {
        &self.header
    }

    /// A new gallery of `config` holding the file's identities: every field is validated before
    /// it is used, and a file for another model is refused. Embeddings stored in another format
    /// are converted; an identity with more exemplars than `config.exemplars` keeps its first
    /// ones (logged).
    pub fn into_gallery(
        self,
        model: &ModelTag,
        config: GalleryConfig,
        policy: MatchPolicy,
    ) -> Result<Gallery, GalleryError> {
        let GalleryFile {
            path,
            bytes,
            header,
        } = self;
        if header.model != model.name || header.dim != model.dim {
            return Err(FileError::WrongModel {
                path,
                file_model: header.model,
                file_dim: header.dim,
                model: model.name.clone(),
                dim: model.dim,
            }
            .into());
        }
        let mut gallery = Gallery::with_budget(config, policy)?;
        if header.identities > gallery.capacity() {
            return Err(FileError::Capacity {
                path,
                identities: header.identities,
                capacity: gallery.capacity(),
                needed: config.heap_bytes(header.identities),
            }
            .into());
        }
        read_entries(&path, &bytes, &header, &mut gallery)?;
        gallery.reserve_ids_below(header.next_id);
        Ok(gallery)
    }
}

/// Loads `path` into a new gallery of `config` ([`GalleryFile::into_gallery`]).
pub fn load(
    path: &Path,
    model: &ModelTag,
    config: GalleryConfig,
    policy: MatchPolicy,
) -> Result<Gallery, GalleryError> {
    GalleryFile::read(path)?.into_gallery(model, config, policy)
}

fn read_entries(
    path: &Path,
    bytes: &[u8],
    header: &FileHeader,
    gallery: &mut Gallery,
) -> Result<(), FileError> {
    let mut r = Reader {
        bytes: &bytes[..bytes.len() - CHECKSUM],
        pos: FIXED_HEADER + header.model.len(),
        path,
    };
    let value_bytes = header.dim * header.format.bytes_per_value();
    let convert = header.format != gallery.config().format;
    // Start-up only: a one-vector arena in the file's format and a float buffer, to convert.
    let (mut staging, mut values) = if convert {
        (
            Some(Arena::new(header.format, 1, header.dim)),
            vec![0.0f32; header.dim],
        )
    } else {
        (None, Vec::new())
    };
    let mut dropped = 0usize;
    for _ in 0..header.identities {
        let id = PersonId(r.u32("identity id")?);
        let flags = r.u8("identity flags")?;
        if flags & !1 != 0 {
            return Err(r.corrupt(format!("identity {id}: unknown flags {flags:#04x}")));
        }
        let label_len = usize::from(r.u8("label length")?);
        if label_len > LABEL_CAPACITY {
            return Err(r.corrupt(format!(
                "identity {id}: label of {label_len} bytes exceeds {LABEL_CAPACITY}"
            )));
        }
        let label = r.str(label_len, "label")?;
        let first_seen = Timestamp(r.u64("first seen")?);
        let last_seen = Timestamp(r.u64("last seen")?);
        let times_seen = r.u32("times seen")?;
        let count = usize::from(r.u8("exemplar count")?);
        if count == 0 || count > header.exemplars {
            return Err(r.corrupt(format!(
                "identity {id}: {count} exemplars, expected 1..={}",
                header.exemplars
            )));
        }
        let info = IdentityInfo {
            id,
            label: (!label.is_empty()).then_some(label),
            first_seen,
            last_seen,
            times_seen,
            pinned: flags & 1 != 0,
            exemplars: count,
        };
        let slot = gallery
            .restore_slot(&info)
            .map_err(|e| r.corrupt(format!("identity {id}: {e}")))?;
        for e in 0..count {
            let scale = f32::from_le_bytes(r.array("exemplar scale")?);
            if !(scale.is_finite() && scale >= 0.0) {
                return Err(r.corrupt(format!("identity {id}: exemplar {e} has scale {scale}")));
            }
            let raw = r.take(value_bytes, "exemplar values")?;
            let ok = match staging.as_mut() {
                None => gallery.push_raw_exemplar(slot, raw, scale),
                Some(arena) => {
                    let ok = arena.read_raw(0, raw, scale);
                    arena.decode(0, &mut values);
                    ok && gallery.push_exemplar(slot, &values)
                }
            };
            if !ok {
                return Err(r.corrupt(format!(
                    "identity {id}: exemplar {e} holds non-finite values"
                )));
            }
        }
        dropped += count.saturating_sub(gallery.config().exemplars);
    }
    if r.pos != r.bytes.len() {
        return Err(r.corrupt(format!(
            "{} bytes after the last identity",
            r.bytes.len() - r.pos
        )));
    }
    if dropped > 0 {
        log::warn!(
            "{}: kept the first {} exemplars per identity, dropped {dropped} (the file has up to {})",
            path.display(),
            gallery.config().exemplars,
            header.exemplars
        );
    }
    Ok(())
}

/// What to do when the gallery file is damaged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Recovery {
    /// Refuse to start.
    Fail,
    /// Start from `<file>.bak` (and fail if that is damaged too).
    Backup,
    /// Start with an empty gallery.
    Empty,
}

/// How [`open`] got its gallery.
#[derive(Debug)]
pub enum Opened {
    /// Neither the file nor a backup existed.
    New,
    Loaded,
    /// The file was damaged: loaded the backup; the damaged file was moved to `set_aside`.
    FromBackup {
        damage: FileError,
        set_aside: Option<PathBuf>,
    },
    /// The file was damaged: started empty; the damaged file was moved to `set_aside`.
    Empty {
        damage: FileError,
        set_aside: Option<PathBuf>,
    },
}

/// Opens the gallery at `path` for a daemon: loads it, or starts new if neither it nor its backup
/// exists, or applies `recovery` if it is damaged (a missing file whose backup exists counts as
/// damaged). A wrong model, an unsupported version, a too-small budget and I/O errors are never
/// "recovered": they need the operator. Nothing is deleted or overwritten.
pub fn open(
    path: &Path,
    model: &ModelTag,
    config: GalleryConfig,
    policy: MatchPolicy,
    recovery: Recovery,
) -> Result<(Gallery, Opened), GalleryError> {
    let bak = backup_path(path);
    let damage = if path.exists() {
        match load(path, model, config, policy) {
            Ok(g) => return Ok((g, Opened::Loaded)),
            Err(GalleryError::File(e)) if e.is_damage() => e,
            Err(e) => return Err(e),
        }
    } else if bak.exists() {
        FileError::Io {
            path: path.to_owned(),
            action: "find (its backup exists)",
            source: io::Error::from(io::ErrorKind::NotFound),
        }
    } else {
        return Ok((Gallery::with_budget(config, policy)?, Opened::New));
    };
    let gallery = match recovery {
        Recovery::Fail => return Err(damage.into()),
        Recovery::Backup => load(&bak, model, config, policy).map_err(|e| {
            log::error!("{}: the backup is unusable too: {e}", bak.display());
            GalleryError::File(FileError::NoGoodCopy {
                damage: damage.to_string(),
                backup: e.to_string(),
            })
        })?,
        Recovery::Empty => Gallery::with_budget(config, policy)?,
    };
    let set_aside = set_aside(path)?;
    log::warn!(
        "{damage}; {} (damaged file kept as {})",
        if recovery == Recovery::Backup {
            "started from the backup"
        } else {
            "started empty"
        },
        set_aside
            .as_deref()
            .map_or("-".into(), |p| p.display().to_string())
    );
    Ok(match recovery {
        Recovery::Backup => (gallery, Opened::FromBackup { damage, set_aside }),
        _ => (gallery, Opened::Empty { damage, set_aside }),
    })
}

/// Renames a damaged file to `<file>.corrupt-<ms>` so that the next save cannot overwrite it.
fn set_aside(path: &Path) -> Result<Option<PathBuf>, FileError> {
    if !path.exists() {
        return Ok(None);
    }
    let aside = sibling(path, &format!("corrupt-{}", Timestamp::now().0));
    fs::rename(path, &aside).map_err(io_error(path, "move the damaged gallery aside"))?;
    Ok(Some(aside))
}
