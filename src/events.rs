//! Events out: one JSON object per line (schema in `docs/daemon.md`, "Events"), to stdout or to
//! a file that rotates by size. [`EventSink`] is the seam for other transports (MQTT comes later).
//!
//! Serialisation goes into one reused buffer; strings in an [`Event`] are borrowed, so emitting
//! allocates nothing once the buffer has grown to the longest line.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::gallery::{PersonId, Timestamp};

/// What happened to a track.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// A confirmed track's first identity decision.
    Enter,
    /// The decision changed (another identity, or an ambiguous/unknown track resolved).
    Update,
    /// The track ended (out of view for `tracker.max_missed` frames, or the stream ended).
    Leave,
    /// An operator enrolled the track as a pinned identity (the enroll button).
    Enrol,
    /// Two identities were found to be one person (shared identities, `docs/mqtt.md`
    /// "Merges"): not about a track (`track` 0, no box); `identity` says which into which.
    Merge,
}

/// Who the track is, as the gallery decided.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(tag = "decision", rename_all = "lowercase")]
pub enum Identity<'a> {
    /// A confident match with a stored identity.
    Known {
        id: PersonId,
        #[serde(skip_serializing_if = "Option::is_none")]
        label: Option<&'a str>,
        similarity: f32,
        /// The next-best identity, if any (the margin is to it).
        #[serde(skip_serializing_if = "Option::is_none")]
        runner_up: Option<Candidate>,
    },
    /// Nobody matched: stored as a new provisional identity.
    New {
        id: PersonId,
        /// The name an operator gave it since (a later event of the same track: its leave).
        #[serde(skip_serializing_if = "Option::is_none")]
        label: Option<&'a str>,
        /// The closest stored identity's similarity (below the threshold), if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        closest: Option<Candidate>,
    },
    /// Two identities within the margin: not decided.
    Ambiguous {
        best: Candidate,
        runner_up: Candidate,
    },
    /// Nobody matched and the gallery is full of pinned identities: not stored.
    Unstored {
        #[serde(skip_serializing_if = "Option::is_none")]
        closest: Option<Candidate>,
    },
    /// A `merge` event's: identity `merged` is now `id` (it is gone from the gallery).
    Merged {
        id: PersonId,
        #[serde(skip_serializing_if = "Option::is_none")]
        label: Option<&'a str>,
        merged: PersonId,
        /// The match that decided it, when this camera decided (the other cameras follow).
        #[serde(skip_serializing_if = "Option::is_none")]
        similarity: Option<f32>,
    },
}

/// An identity and a similarity, for the JSON.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Candidate {
    pub id: PersonId,
    pub similarity: f32,
}

impl From<crate::gallery::Candidate> for Candidate {
    fn from(c: crate::gallery::Candidate) -> Self {
        Candidate {
            id: c.id,
            similarity: c.similarity.0,
        }
    }
}

/// One event. Times: `time` is the wall clock when emitted, `stream_ms` the frame's position in
/// its source (driver timestamp for cameras, media time for recordings).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Event<'a> {
    pub event: EventKind,
    pub camera: &'a str,
    pub track: u64,
    #[serde(serialize_with = "rfc3339")]
    pub time: Timestamp,
    pub stream_ms: u64,
    /// Frame number in the stream.
    pub frame: u64,
    /// The frame's file, for image-directory sources.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub frame_name: &'a str,
    /// `[x, y, width, height]` in frame pixels, the track's latest box.
    #[serde(rename = "box")]
    pub bbox: [u32; 4],
    pub identity: Identity<'a>,
    /// When the track started (wall clock) and how many frames it has been seen in.
    #[serde(serialize_with = "rfc3339")]
    pub first_seen: Timestamp,
    pub frames_seen: u32,
    /// Crops embedded and aggregated into the track's embedding.
    pub embeddings: u32,
    /// The crop saved as JPEG (`events.crops_dir`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crop: Option<&'a Path>,
    /// The track's best crop so far, for sinks that keep pictures (thumbnails); never written
    /// into the event itself.
    #[serde(skip)]
    pub pixels: Option<Pixels<'a>>,
}

/// A crop as packed RGB8 rows, with the quality it was chosen by (box height × score).
#[derive(Clone, Copy, Debug)]
pub struct Pixels<'a> {
    pub rgb: &'a [u8],
    pub width: u32,
    pub height: u32,
    pub quality: f32,
}

/// Wall-clock times as RFC 3339 strings (UTC, milliseconds).
fn rfc3339<S: serde::Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(t)
}

/// Where events go.
pub trait EventSink {
    fn emit(&mut self, event: &Event<'_>) -> io::Result<()>;
    fn flush(&mut self) -> io::Result<()>;
}

/// JSON lines to stdout or to a size-rotated file (`events.jsonl`, `.1`, … `.keep`).
pub struct JsonLines {
    out: Output,
    line: Vec<u8>,
    written: u64,
}

enum Output {
    Stdout,
    File {
        path: PathBuf,
        file: File,
        max_bytes: u64,
        keep: u32,
    },
}

impl JsonLines {
    pub fn stdout() -> Self {
        Self::with(Output::Stdout, 0)
    }

    /// Appends to `path`; when it would pass `max_bytes` it becomes `path.1` (older ones shift,
    /// up to `path.<keep>`; the oldest is deleted). `max_bytes = 0` never rotates.
    pub fn file(path: &Path, max_bytes: u64, keep: u32) -> io::Result<Self> {
        let file = open_append(path)?;
        let written = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(Self::with(
            Output::File {
                path: path.to_owned(),
                file,
                max_bytes,
                keep,
            },
            written,
        ))
    }

    fn with(out: Output, written: u64) -> Self {
        JsonLines {
            out,
            line: Vec::with_capacity(1024),
            written,
        }
    }
}

/// Opens the events file for appending: created 0600 (events name identities and crops), never
/// through a symbolic link (whoever planted one would choose the file we append to).
fn open_append(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(link_refused)
}

/// For a file opened with `O_NOFOLLOW`: its `ELOOP` said as what it means (a symbolic link is
/// there, and reidcam does not write through one); any other error unchanged.
pub(crate) fn link_refused(e: io::Error) -> io::Error {
    if e.raw_os_error() == Some(libc::ELOOP) {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "is a symbolic link: reidcam does not write through links",
        )
    } else {
        e
    }
}

fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

impl EventSink for JsonLines {
    fn emit(&mut self, event: &Event<'_>) -> io::Result<()> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, event)?;
        self.line.push(b'\n');
        let len = self.line.len() as u64;
        match &mut self.out {
            Output::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(&self.line)?;
                out.flush()?;
            }
            Output::File {
                path,
                file,
                max_bytes,
                keep,
            } => {
                if *max_bytes > 0 && self.written > 0 && self.written + len > *max_bytes {
                    file.sync_all()?;
                    if *keep == 0 {
                        std::fs::remove_file(&*path)?;
                    } else {
                        for n in (1..*keep).rev() {
                            let from = rotated(path, n);
                            if from.exists() {
                                std::fs::rename(&from, rotated(path, n + 1))?;
                            }
                        }
                        std::fs::rename(&*path, rotated(path, 1))?;
                    }
                    *file = open_append(path)?;
                    self.written = 0;
                }
                if let Err(e) = file.write_all(&self.line) {
                    // No torn line for the next event to be glued onto: cut back to the last
                    // whole one (best-effort: the disk may refuse that too).
                    let _ = file.set_len(self.written);
                    return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display())));
                }
                self.written += len;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.out {
            Output::File { file, .. } => file.flush(),
            _ => Ok(()),
        }
    }
}

/// Events to several sinks (the JSON-lines output and MQTT): the first error is returned after
/// every sink has had the event.
pub struct Tee(pub Vec<Box<dyn EventSink>>);

impl EventSink for Tee {
    fn emit(&mut self, event: &Event<'_>) -> io::Result<()> {
        let mut result = Ok(());
        for sink in &mut self.0 {
            let r = sink.emit(event);
            if result.is_ok() {
                result = r;
            }
        }
        result
    }

    fn flush(&mut self) -> io::Result<()> {
        let mut result = Ok(());
        for sink in &mut self.0 {
            let r = sink.flush();
            if result.is_ok() {
                result = r;
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(track: u64) -> Event<'static> {
        Event {
            event: EventKind::Enter,
            camera: "door",
            track,
            time: Timestamp(1_700_000_000_000),
            stream_ms: 1500,
            frame: 15,
            frame_name: "",
            bbox: [1, 2, 30, 60],
            identity: Identity::Known {
                id: PersonId(3),
                label: Some("alice"),
                similarity: 0.75,
                runner_up: None,
            },
            first_seen: Timestamp(1_700_000_000_000),
            frames_seen: 4,
            embeddings: 1,
            crop: None,
            pixels: None,
        }
    }

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("reidcam-events-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Issue 22: the events file is 0600 like the gallery, and a symbolic link planted at its
    /// path is refused, its target untouched.
    #[test]
    fn events_file_is_private_and_never_written_through_a_link() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = scratch("private");
        let path = dir.join("events.jsonl");
        let mut sink = JsonLines::file(&path, 0, 0).unwrap();
        sink.emit(&event(1)).unwrap();
        sink.flush().unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let victim = dir.join("victim");
        std::fs::write(&victim, "keep me").unwrap();
        let link = dir.join("linked.jsonl");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let err = JsonLines::file(&link, 0, 0)
            .err()
            .expect("a link is refused");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn events_are_one_json_object_per_line() {
        let dir = scratch("line");
        let path = dir.join("events.jsonl");
        let mut sink = JsonLines::file(&path, 0, 0).unwrap();
        sink.emit(&event(7)).unwrap();
        sink.flush().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 1);
        let e = &lines[0];
        assert_eq!(e["event"], "enter");
        assert_eq!(e["track"], 7);
        assert_eq!(e["box"], serde_json::json!([1, 2, 30, 60]));
        assert_eq!(e["identity"]["decision"], "known");
        assert_eq!(e["identity"]["id"], 3);
        assert_eq!(e["identity"]["label"], "alice");
        assert_eq!(e["time"], "2023-11-14T22:13:20.000Z");
        assert!(e.get("frame_name").is_none() && e.get("crop").is_none());
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn files_rotate_by_size_and_keep_the_newest() {
        let dir = scratch("rotate");
        let path = dir.join("events.jsonl");
        let mut sink = JsonLines::file(&path, 700, 2).unwrap();
        for t in 0..20 {
            sink.emit(&event(t)).unwrap();
        }
        sink.flush().unwrap();
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        let (now, one, two) = (
            read(&path),
            read(&rotated(&path, 1)),
            read(&rotated(&path, 2)),
        );
        assert!(!rotated(&path, 3).exists());
        for text in [&now, &one, &two] {
            assert!(!text.is_empty() && text.len() <= 700, "{}", text.len());
        }
        // The newest event is in the live file; the files hold consecutive tracks.
        let tracks = |t: &str| -> Vec<u64> {
            t.lines()
                .map(|l| {
                    serde_json::from_str::<serde_json::Value>(l).unwrap()["track"]
                        .as_u64()
                        .unwrap()
                })
                .collect()
        };
        let all: Vec<u64> = [two, one, now].iter().flat_map(|t| tracks(t)).collect();
        assert_eq!(*all.last().unwrap(), 19);
        assert!(all.windows(2).all(|w| w[1] == w[0] + 1));
        std::fs::remove_dir_all(dir).ok();
    }
}
