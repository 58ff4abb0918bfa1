//! The spool: events not yet taken by the broker, on disk, so that they survive a restart
//! (`mqtt.spool`). One file, 0600, never written through a symbolic link:
//!
//! ```text
//! "RCSPOOL1"  u64 LE: offset of the first undelivered record
//! records:    u32 LE length, u32 LE CRC-32 of the payload, payload (one event's JSON)
//! ```
//!
//! Appends are fsynced before the event is published; a delivered event only moves the head
//! offset (not fsynced: after a crash at worst an event is published twice, never lost). A torn
//! last record (power cut during an append) is cut off at open. When the file would pass its
//! bound, delivered records are compacted away (a new file renamed over the old); the caller
//! drops the oldest undelivered events when even that is not enough.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"RCSPOOL1";
const HEADER: u64 = 16;
/// Bytes a record takes besides its payload.
pub const RECORD_OVERHEAD: u64 = 8;

/// An open spool.
pub struct Spool {
    path: PathBuf,
    file: File,
    /// Offset of the first undelivered record.
    head: u64,
    /// End of the last record.
    end: u64,
    max_bytes: u64,
}

/// What [`Spool::open`] found.
#[derive(Debug, Default, PartialEq)]
pub struct Recovered {
    /// Undelivered events, oldest first.
    pub events: Vec<Vec<u8>>,
    /// Bytes of a torn or damaged tail that were cut off.
    pub cut_bytes: u64,
    /// A file that was not a spool, kept aside under this name.
    pub set_aside: Option<PathBuf>,
}

fn open_flags() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW);
    o
}

fn named(path: &Path, what: &str, e: io::Error) -> io::Error {
    let e = crate::events::link_refused(e);
    io::Error::new(e.kind(), format!("{}: {what}: {e}", path.display()))
}

impl Spool {
    /// Opens (or creates) the spool at `path`, bounded to `max_bytes`. A file that is not a
    /// spool is never overwritten: it is renamed to `<path>.corrupt-<ms>` and a new spool starts.
    pub fn open(path: &Path, max_bytes: u64) -> io::Result<(Spool, Recovered)> {
        let mut recovered = Recovered::default();
        let existing = match open_flags().open(path) {
            Ok(mut file) => {
                let mut bytes = Vec::new();
                file.read_to_end(&mut bytes)
                    .map_err(|e| named(path, "cannot read the spool", e))?;
                if bytes.len() as u64 >= HEADER && &bytes[..8] == MAGIC {
                    Some((file, bytes))
                } else if bytes.is_empty() {
                    None
                } else {
                    let aside = PathBuf::from(format!(
                        "{}.corrupt-{}",
                        path.display(),
                        crate::gallery::Timestamp::now().0
                    ));
                    std::fs::rename(path, &aside)
                        .map_err(|e| named(path, "cannot set a damaged spool aside", e))?;
                    log::error!(
                        "{}: not a reidcam spool file: kept as {}, starting an empty spool",
                        path.display(),
                        aside.display()
                    );
                    recovered.set_aside = Some(aside);
                    None
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(named(path, "cannot open the spool", e)),
        };
        let spool = match existing {
            Some((file, bytes)) => {
                let head = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
                let mut at = head.clamp(HEADER, bytes.len() as u64) as usize;
                while let Some(record) = bytes.get(at..at + RECORD_OVERHEAD as usize) {
                    let len = u32::from_le_bytes(record[..4].try_into().expect("4")) as usize;
                    let crc = u32::from_le_bytes(record[4..].try_into().expect("4"));
                    let start = at + RECORD_OVERHEAD as usize;
                    match bytes.get(start..start + len) {
                        Some(payload) if crc32fast::hash(payload) == crc => {
                            recovered.events.push(payload.to_vec());
                            at = start + len;
                        }
                        _ => break,
                    }
                }
                recovered.cut_bytes = bytes.len() as u64 - at as u64;
                let spool = Spool {
                    path: path.to_owned(),
                    file,
                    head: head.clamp(HEADER, at as u64),
                    end: at as u64,
                    max_bytes,
                };
                if recovered.cut_bytes > 0 {
                    log::warn!(
                        "{}: cut {} bytes of a torn or damaged last record",
                        path.display(),
                        recovered.cut_bytes
                    );
                    spool
                        .file
                        .set_len(spool.end)
                        .map_err(|e| named(path, "cannot cut the torn tail", e))?;
                }
                spool
            }
            None => Spool::create(path, max_bytes)?,
        };
        spool.write_head()?;
        Ok((spool, recovered))
    }

    fn create(path: &Path, max_bytes: u64) -> io::Result<Spool> {
        let file = open_flags()
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| named(path, "cannot create the spool", e))?;
        let spool = Spool {
            path: path.to_owned(),
            file,
            head: HEADER,
            end: HEADER,
            max_bytes,
        };
        spool.write_all_at(MAGIC, 0)?;
        spool.write_head()?;
        spool.sync()?;
        Ok(spool)
    }

    fn write_all_at(&self, bytes: &[u8], at: u64) -> io::Result<()> {
        self.file
            .write_all_at(bytes, at)
            .map_err(|e| named(&self.path, "cannot write the spool", e))
    }

    fn write_head(&self) -> io::Result<()> {
        self.write_all_at(&self.head.to_le_bytes(), 8)
    }

    fn sync(&self) -> io::Result<()> {
        self.file
            .sync_data()
            .map_err(|e| named(&self.path, "cannot sync the spool", e))
    }

    /// Bytes of undelivered records.
    pub fn live_bytes(&self) -> u64 {
        self.end - self.head
    }

    /// Whether `extra` bytes of records fit beside the undelivered ones.
    pub fn fits(&self, extra: u64) -> bool {
        HEADER + self.live_bytes() + extra <= self.max_bytes
    }

    /// Appends events and fsyncs. The caller has made room ([`Spool::fits`]).
    pub fn append<'a>(&mut self, payloads: impl Iterator<Item = &'a [u8]>) -> io::Result<()> {
        let payloads: Vec<&[u8]> = payloads.collect();
        if payloads.is_empty() {
            return Ok(());
        }
        let added: u64 = payloads
            .iter()
            .map(|p| RECORD_OVERHEAD + p.len() as u64)
            .sum();
        if self.end + added > self.max_bytes {
            self.compact()?;
        }
        let mut buf = Vec::with_capacity(added as usize);
        for p in &payloads {
            buf.extend_from_slice(&(p.len() as u32).to_le_bytes());
            buf.extend_from_slice(&crc32fast::hash(p).to_le_bytes());
            buf.extend_from_slice(p);
        }
        self.write_all_at(&buf, self.end)?;
        self.end += added;
        self.sync()
    }

    /// The oldest undelivered event of `len` bytes was delivered (or dropped).
    pub fn consume(&mut self, len: usize) -> io::Result<()> {
        self.head = (self.head + RECORD_OVERHEAD + len as u64).min(self.end);
        self.write_head()
    }

    /// Rewrites the file with only the undelivered records (a new file renamed over the old, so
    /// a crash leaves one or the other).
    fn compact(&mut self) -> io::Result<()> {
        let mut live = vec![0u8; self.live_bytes() as usize];
        self.file
            .read_exact_at(&mut live, self.head)
            .map_err(|e| named(&self.path, "cannot read the spool", e))?;
        let tmp = PathBuf::from(format!("{}.tmp", self.path.display()));
        let _ = std::fs::remove_file(&tmp);
        let mut file = open_flags()
            .create_new(true)
            .open(&tmp)
            .map_err(|e| named(&tmp, "cannot create", e))?;
        let mut header = [0u8; HEADER as usize];
        header[..8].copy_from_slice(MAGIC);
        header[8..].copy_from_slice(&HEADER.to_le_bytes());
        file.write_all(&header)
            .and_then(|()| file.write_all(&live))
            .and_then(|()| file.sync_all())
            .map_err(|e| named(&tmp, "cannot write", e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| named(&self.path, "cannot replace", e))?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir).and_then(|d| d.sync_all()).ok();
        }
        self.file = file;
        self.head = HEADER;
        self.end = HEADER + live.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("reidcam-spool-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn event(n: u32) -> Vec<u8> {
        format!("{{\"event\":\"enter\",\"track\":{n}}}").into_bytes()
    }

    #[test]
    fn undelivered_events_survive_a_reopen_in_order() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = scratch("reopen");
        let path = dir.join("spool");
        let (mut spool, found) = Spool::open(&path, 1 << 16).unwrap();
        assert!(found.events.is_empty());
        let events: Vec<Vec<u8>> = (0..5).map(event).collect();
        spool.append(events.iter().map(|e| &e[..])).unwrap();
        spool.consume(events[0].len()).unwrap();
        spool.consume(events[1].len()).unwrap();
        drop(spool);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (_, found) = Spool::open(&path, 1 << 16).unwrap();
        assert_eq!(found.events, events[2..]);
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_torn_tail_is_cut_and_a_foreign_file_set_aside() {
        let dir = scratch("torn");
        let path = dir.join("spool");
        let (mut spool, _) = Spool::open(&path, 1 << 16).unwrap();
        spool
            .append([event(1), event(2)].iter().map(|e| &e[..]))
            .unwrap();
        drop(spool);
        // A power cut half-way through the second record.
        let len = std::fs::metadata(&path).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 5)
            .unwrap();
        let (_, found) = Spool::open(&path, 1 << 16).unwrap();
        assert_eq!(found.events, vec![event(1)]);
        assert!(found.cut_bytes > 0);

        std::fs::write(&path, b"my precious notes").unwrap();
        let (_, found) = Spool::open(&path, 1 << 16).unwrap();
        let aside = found.set_aside.expect("set aside");
        assert_eq!(std::fs::read(aside).unwrap(), b"my precious notes");
        assert!(found.events.is_empty());

        let link = dir.join("link");
        std::os::unix::fs::symlink(dir.join("elsewhere"), &link).unwrap();
        let err = Spool::open(&link, 1 << 16)
            .err()
            .expect("a link is refused");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(!dir.join("elsewhere").exists());
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn delivered_records_are_compacted_away_at_the_bound() {
        let dir = scratch("compact");
        let path = dir.join("spool");
        let bound = 4096;
        let (mut spool, _) = Spool::open(&path, bound).unwrap();
        let mut live = std::collections::VecDeque::new();
        for n in 0..2000 {
            let e = event(n);
            spool.append(std::iter::once(&e[..])).unwrap();
            live.push_back(e);
            while live.len() > 3 {
                let old = live.pop_front().unwrap();
                spool.consume(old.len()).unwrap();
            }
            assert!(std::fs::metadata(&path).unwrap().len() <= bound);
        }
        drop(spool);
        let (_, found) = Spool::open(&path, bound).unwrap();
        assert_eq!(found.events, Vec::from(live));
        std::fs::remove_dir_all(dir).ok();
    }
}
