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
        exemplars: Vec<Vec<f32>>,
    },
    /// Someone erased it (or its origin withdrew it: `withdrawn`); `clear`: the tombstone is
    /// past its grace period (clear it).
    Erase {
        origin: String,
        id: u32,
        withdrawn: bool,
        clear: bool,
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

pub fn filter(prefix: &str, model: &str) -> String {
    format!("{prefix}/gallery/{}/#", model_level(model))
}

/// `(origin, id)` of a topic under [`filter`].
pub fn parse_topic(prefix: &str, model: &str, topic: &str) -> Option<(String, u32)> {
    let rest = topic
        .strip_prefix(prefix)?
        .strip_prefix("/gallery/")?
        .strip_prefix(model_level(model).as_str())?
        .strip_prefix('/')?;
    let (origin, id) = rest.split_once('/')?;
    crate::config::check_camera_name(origin).ok()?;
    Some((origin.to_owned(), id.parse().ok()?))
}

/// The message for `id` of `gallery`, as `origin` publishes it.
pub fn encode(gallery: &Gallery, id: PersonId, model: &str, origin: &str) -> Option<Vec<u8>> {
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
    };
    serde_json::to_vec(&message).ok()
}

/// The tombstone of `origin`'s identity `id`, erased (or `withdrawn` from sharing) now.
pub fn tombstone(model: &str, dim: usize, origin: &str, id: u32, withdrawn: bool) -> Vec<u8> {
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
    };
    serde_json::to_vec(&message).expect("serialises")
}

/// Checks a message received on `topic` (`(origin, id)` from [`parse_topic`]) for a gallery of
/// `dim` and at most `k` exemplars of `model`. Errors say what was wrong.
pub fn decode(
    payload: &[u8],
    (origin, id): (String, u32),
    model: &str,
    dim: usize,
    k: usize,
) -> Result<RemoteUpdate, String> {
    if payload.is_empty() {
        return Ok(RemoteUpdate::Erase {
            origin,
            id,
            withdrawn: false,
            clear: false,
        });
    }
    let m: IdentityMessage =
        serde_json::from_slice(payload).map_err(|e| format!("not an identity message: {e}"))?;
    if m.reidcam_identity != VERSION {
        return Err(format!(
            "format version {}, expected {VERSION}",
            m.reidcam_identity
        ));
    }
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
    if m.withdrawn && m.erased_at.is_none() {
        return Err("withdrawn without erased_at".into());
    }
    if let Some(at) = m.erased_at {
        if !m.exemplars.is_empty() || m.label.is_some() {
            return Err("a tombstone with a label or exemplars".into());
        }
        let age = Timestamp::now().0.saturating_sub(at);
        return Ok(RemoteUpdate::Erase {
            origin,
            id,
            withdrawn: m.withdrawn,
            clear: u128::from(age) > TOMBSTONE_GRACE.as_millis(),
        });
    }
    if let Some(label) = &m.label
        && (label.len() > LABEL_CAPACITY || label.is_empty())
    {
        return Err(format!(
            "label of {} bytes: expected 1..{LABEL_CAPACITY}",
            label.len()
        ));
    }
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
        exemplars,
    })
}

