//! The wire format of shared identities: topics, the identity message (content or tombstone),
//! and the checks a received message passes before anything is applied.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::gallery::{Gallery, LABEL_CAPACITY, MAX_EXEMPLARS, PersonId, Timestamp};

/// The payload's format version.
const VERSION: u32 = 1;

/// One shared identity on the wire (JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityMessage {
    pub reidcam_identity: u32,
    pub model: String,
    pub dim: usize,
    pub origin: String,
    pub id: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// int8 exemplars: `values ≈ scale × codes`, codes as 2-digit hex (two's complement).
    #[serde(default)]
    pub exemplars: Vec<Int8Exemplar>,
    /// A tombstone: erased then (ms since the epoch); no label, no exemplars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erased_at: Option<u64>,
    /// With `erased_at`: the origin withdrew the identity from sharing (unpinned it) but keeps
    /// it. Other cameras erase their copies as for any tombstone; the origin keeps its own.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub withdrawn: bool,
    /// When the label was last set (ms since the epoch; absent: never renamed since sharing
    /// began). The stamp of a rename asked by another camera ([`LabelMessage`]), or the
    /// origin's own rename: the newest wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_at: Option<u64>,
    /// With `erased_at`: the identity was merged into this one (the same person, created
    /// separately at two cameras; `docs/mqtt.md`, "Merges"). Other cameras move the tracks
    /// naming it to that identity, and its origin takes the exemplars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged_into: Option<MergedInto>,
    /// Enrolled (absent: true). A passer-by's provisional identity (`mqtt.share_passers_by`)
    /// is `false`: other cameras store it unpinned, evicted first, forgotten by
    /// `gallery.forget_after`.
    #[serde(default = "enrolled", skip_serializing_if = "is_enrolled")]
    pub pinned: bool,
}

fn enrolled() -> bool {
    true
}

fn is_enrolled(pinned: &bool) -> bool {
    *pinned
}

/// The identity another was merged into.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MergedInto {
    pub origin: String,
    pub id: u32,
}

/// A camera holding a copy asks the origin to rename its identity (retained, on
/// [`label_topic`]); the origin applies it when it is newer than the label it has
/// (`label_at`), republishes the identity and clears the request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelMessage {
    pub reidcam_label: u32,
    pub origin: String,
    pub id: u32,
    /// The new name (absent: remove the name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// When the operator renamed the copy (ms since the epoch).
    pub at: u64,
    /// The camera that asks.
    pub from: String,
}

/// Which identity a gallery topic is about, and whether it is the identity itself or a rename
/// request for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    pub origin: String,
    pub id: u32,
    pub rename: bool,
}

impl From<(String, u32)> for Subject {
    fn from((origin, id): (String, u32)) -> Subject {
        Subject {
            origin,
            id,
            rename: false,
        }
    }
}

/// How long a tombstone stays retained (cameras that were off meanwhile learn of the erasure
/// when they connect); after that, the first camera that sees it clears it.
pub const TOMBSTONE_GRACE: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Int8Exemplar {
    pub scale: f32,
    pub codes: String,
}

/// What a camera received about another's identity, checked.
#[derive(Clone, Debug, PartialEq)]
pub enum RemoteUpdate {
    /// The identity as its origin has it now.
    Upsert {
        origin: String,
        id: u32,
        label: Option<String>,
        /// When the label was set (0: unknown, older than any rename).
        label_at: u64,
        exemplars: Vec<Vec<f32>>,
        /// Enrolled; `false`: a passer-by's provisional identity.
        pinned: bool,
    },
    /// Another camera asks `origin` to rename its identity `id`.
    Rename {
        origin: String,
        id: u32,
        label: Option<String>,
        at: u64,
        from: String,
    },
    /// A rename request was cleared (it was applied or refused): nothing to do.
    RenameCleared,
    /// Someone erased it (or its origin withdrew it: `withdrawn`, or merged it into another
    /// identity: `merged_into`); `clear`: the tombstone is past its grace period (clear it).
    Erase {
        origin: String,
        id: u32,
        withdrawn: bool,
        clear: bool,
        merged_into: Option<(String, u32)>,
    },
}

/// The model as a topic level (no `/`, `+`, `#`).
pub fn model_level(model: &str) -> String {
    model
        .chars()
        .map(|c| {
            if matches!(c, '/' | '+' | '#') || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

pub fn topic(prefix: &str, model: &str, origin: &str, id: u32) -> String {
    format!("{prefix}/gallery/{}/{origin}/{id}", model_level(model))
}

/// Where cameras ask `origin` to rename its identity `id`.
pub fn label_topic(prefix: &str, model: &str, origin: &str, id: u32) -> String {
    format!("{}/label", topic(prefix, model, origin, id))
}

pub fn filter(prefix: &str, model: &str) -> String {
    format!("{prefix}/gallery/{}/#", model_level(model))
}

/// What a topic under [`filter`] is about: `<origin>/<id>` or `<origin>/<id>/label`.
pub fn parse_topic(prefix: &str, model: &str, topic: &str) -> Option<Subject> {
    let rest = topic
        .strip_prefix(prefix)?
        .strip_prefix("/gallery/")?
        .strip_prefix(model_level(model).as_str())?
        .strip_prefix('/')?;
    let (origin, id) = rest.split_once('/')?;
    crate::config::check_camera_name(origin).ok()?;
    let (id, rename) = match id.split_once('/') {
        Some((id, "label")) => (id, true),
        Some(_) => return None,
        None => (id, false),
    };
    Some(Subject {
        origin: origin.to_owned(),
        id: id.parse().ok()?,
        rename,
    })
}

/// The message for `id` of `gallery`, as `origin` publishes it; its label set at `label_at`
/// (0: unknown).
pub fn encode(
    gallery: &Gallery,
    id: PersonId,
    model: &str,
    origin: &str,
    label_at: u64,
) -> Option<Vec<u8>> {
    let info = gallery.get(id)?;
    let dim = gallery.config().dim;
    let mut values = vec![0.0f32; dim];
    let mut exemplars = Vec::with_capacity(info.exemplars);
    for k in 0..info.exemplars {
        gallery.exemplar(id, k, &mut values).ok()?;
        let max = values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
        let mut codes = String::with_capacity(dim * 2);
        for v in &values {
            let q = (v / scale).round().clamp(-127.0, 127.0) as i8;
            let _ = write!(codes, "{:02x}", q as u8);
        }
        exemplars.push(Int8Exemplar { scale, codes });
    }
    let message = IdentityMessage {
        reidcam_identity: VERSION,
        model: model.to_owned(),
        dim,
        origin: origin.to_owned(),
        id: id.0,
        label: info.label.map(str::to_owned),
        exemplars,
        erased_at: None,
        withdrawn: false,
        label_at: (label_at != 0).then_some(label_at),
        merged_into: None,
        pinned: info.pinned,
    };
    serde_json::to_vec(&message).ok()
}

/// The tombstone of `origin`'s identity `id`, erased (or `withdrawn` from sharing, or merged
/// into `merged_into`) now.
pub fn tombstone(
    model: &str,
    dim: usize,
    origin: &str,
    id: u32,
    withdrawn: bool,
    merged_into: Option<(&str, u32)>,
) -> Vec<u8> {
    let message = IdentityMessage {
        reidcam_identity: VERSION,
        model: model.to_owned(),
        dim,
        origin: origin.to_owned(),
        id,
        label: None,
        exemplars: Vec::new(),
        erased_at: Some(Timestamp::now().0),
        withdrawn,
        label_at: None,
        merged_into: merged_into.map(|(origin, id)| MergedInto {
            origin: origin.to_owned(),
            id,
        }),
        pinned: true,
    };
    serde_json::to_vec(&message).expect("serialises")
}

/// A rename request from `from` for `origin`'s identity `id`, asked at `at`.
pub fn rename_request(origin: &str, id: u32, label: Option<&str>, at: u64, from: &str) -> Vec<u8> {
    let message = LabelMessage {
        reidcam_label: VERSION,
        origin: origin.to_owned(),
        id,
        label: label.map(str::to_owned),
        at,
        from: from.to_owned(),
    };
    serde_json::to_vec(&message).expect("serialises")
}

fn check_version(found: u32) -> Result<(), String> {
    if found == VERSION {
        Ok(())
    } else {
        Err(format!("format version {found}, expected {VERSION}"))
    }
}

fn check_label(label: Option<&str>) -> Result<(), String> {
    match label {
        Some(l) if l.len() > LABEL_CAPACITY || l.is_empty() => Err(format!(
            "label of {} bytes: expected 1..{LABEL_CAPACITY}",
            l.len()
        )),
        _ => Ok(()),
    }
}

/// Checks a rename request received on `origin`/`id`'s label topic.
fn decode_rename(payload: &[u8], origin: String, id: u32) -> Result<RemoteUpdate, String> {
    if payload.is_empty() {
        return Ok(RemoteUpdate::RenameCleared);
    }
    let m: LabelMessage =
        serde_json::from_slice(payload).map_err(|e| format!("not a rename request: {e}"))?;
    check_version(m.reidcam_label)?;
    if m.origin != origin || m.id != id {
        return Err(format!(
            "says it renames {}/{} but was published for {origin}/{id}",
            m.origin, m.id
        ));
    }
    crate::config::check_camera_name(&m.from).map_err(|e| format!("from: {e}"))?;
    check_label(m.label.as_deref())?;
    Ok(RemoteUpdate::Rename {
        origin,
        id,
        label: m.label,
        at: m.at,
        from: m.from,
    })
}

/// Checks a message received on a topic ([`Subject`] from [`parse_topic`]) for a gallery of
/// `dim` and at most `k` exemplars of `model`. Errors say what was wrong.
pub fn decode(
    payload: &[u8],
    subject: impl Into<Subject>,
    model: &str,
    dim: usize,
    k: usize,
) -> Result<RemoteUpdate, String> {
    let Subject { origin, id, rename } = subject.into();
    if rename {
        return decode_rename(payload, origin, id);
    }
    if payload.is_empty() {
        return Ok(RemoteUpdate::Erase {
            origin,
            id,
            withdrawn: false,
            clear: false,
            merged_into: None,
        });
    }
    let m: IdentityMessage =
        serde_json::from_slice(payload).map_err(|e| format!("not an identity message: {e}"))?;
    check_version(m.reidcam_identity)?;
    if m.model != model || m.dim != dim {
        return Err(format!(
            "for model {:?} of dimension {}, this camera runs {model:?} of {dim}",
            m.model, m.dim
        ));
    }
    if m.origin != origin || m.id != id {
        return Err(format!(
            "says it is {}/{} but was published as {origin}/{id}",
            m.origin, m.id
        ));
    }
    if (m.withdrawn || m.merged_into.is_some()) && m.erased_at.is_none() {
        return Err("withdrawn or merged_into without erased_at".into());
    }
    let merged_into = match m.merged_into {
        Some(_) if m.withdrawn => return Err("both withdrawn and merged_into".into()),
        Some(into) => {
            crate::config::check_camera_name(&into.origin)
                .map_err(|e| format!("merged_into.origin: {e}"))?;
            if into.origin == origin && into.id == id {
                return Err("merged into itself".into());
            }
            Some((into.origin, into.id))
        }
        None => None,
    };
    if let Some(at) = m.erased_at {
        if !m.exemplars.is_empty() || m.label.is_some() || !m.pinned {
            return Err("a tombstone with a label or exemplars".into());
        }
        let age = Timestamp::now().0.saturating_sub(at);
        return Ok(RemoteUpdate::Erase {
            origin,
            id,
            withdrawn: m.withdrawn,
            clear: u128::from(age) > TOMBSTONE_GRACE.as_millis(),
            merged_into,
        });
    }
    check_label(m.label.as_deref())?;
    if m.exemplars.is_empty() || m.exemplars.len() > k.min(MAX_EXEMPLARS) {
        return Err(format!(
            "{} exemplars: expected 1..{}",
            m.exemplars.len(),
            k.min(MAX_EXEMPLARS)
        ));
    }
    let mut exemplars = Vec::with_capacity(m.exemplars.len());
    for (n, e) in m.exemplars.iter().enumerate() {
        if !(e.scale.is_finite() && e.scale > 0.0) || e.codes.len() != 2 * dim {
            return Err(format!(
                "exemplar {n}: scale {} and {} hex digits: expected a positive scale and {}",
                e.scale,
                e.codes.len(),
                2 * dim
            ));
        }
        let values: Option<Vec<f32>> = (0..dim)
            .map(|i| {
                let byte = u8::from_str_radix(e.codes.get(2 * i..2 * i + 2)?, 16).ok()?;
                Some(f32::from(byte as i8) * e.scale)
            })
            .collect();
        let values = values.ok_or_else(|| format!("exemplar {n}: codes are not hex"))?;
        if values.iter().all(|v| *v == 0.0) {
            return Err(format!("exemplar {n} is all zeros"));
        }
        exemplars.push(values);
    }
    Ok(RemoteUpdate::Upsert {
        origin,
        id,
        label: m.label,
        label_at: m.label_at.unwrap_or(0),
        exemplars,
        pinned: m.pinned,
    })
}
