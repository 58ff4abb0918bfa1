//! Enrolled identities shared between cameras through the broker (`mqtt.share_gallery`,
//! `docs/mqtt.md` "Shared identities"): each camera publishes its enrolled (pinned) identities as
//! retained messages, one topic per identity, and copies the other cameras' into its gallery.
//!
//! - An identity is known everywhere by its *origin* (the camera that enrolled it) and its id
//!   there: `<prefix>/gallery/<model>/<origin>/<id>`. No coordination is needed to make one.
//! - Only the origin publishes an identity's content; any camera may erase it (an empty retained
//!   message on its topic), and every camera — the origin included — then removes it, from its
//!   gallery, its file and the file's backup.
//! - A copy is pinned like its original (an enrolled person is never evicted) and labelled like
//!   it; [`Peers`] (`<gallery>.peers.json`) remembers which local identity copies which remote one.
//! - Messages are validated (model, dimension, exemplar count and values, label, the origin in the
//!   payload against the topic) before anything is applied; a refused one is logged and counted.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::gallery::{Gallery, IdentityInfo, LABEL_CAPACITY, MAX_EXEMPLARS, PersonId, Timestamp};

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

/// What [`Sharing::apply`] changed in the gallery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// An identity was copied from a peer, replaced by a newer copy, or taken back.
    Stored,
    /// This local identity was erased (a peer's or our own erasure): the next save erases it
    /// from the file and its backup, and the caller releases the tracks holding it and deletes
    /// its thumbnail.
    Erased(PersonId),
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

/// Which local identity copies which remote one (`<gallery>.peers.json`, 0600).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Peers {
    /// `"<origin>/<id>"` → local id.
    pub copies: BTreeMap<String, u32>,
}

impl Peers {
    pub fn path_for(gallery: &Path) -> PathBuf {
        PathBuf::from(format!("{}.peers.json", gallery.display()))
    }

    /// Reads the map; a missing file is an empty map, a damaged one is reported and ignored
    /// (the copies are then made again from the broker's retained messages).
    pub fn load(path: &Path) -> Peers {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                log::error!("{}: damaged ({e}): starting an empty map", path.display());
                Peers::default()
            }),
            Err(_) => Peers::default(),
        }
    }

    /// Writes the map atomically (a new file renamed over the old), 0600, not through links.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let tmp = PathBuf::from(format!("{}.tmp", path.display()));
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    }

    fn key(origin: &str, id: u32) -> String {
        format!("{origin}/{id}")
    }

    pub fn local(&self, origin: &str, id: u32) -> Option<PersonId> {
        self.copies
            .get(&Peers::key(origin, id))
            .map(|&l| PersonId(l))
    }

    fn is_copy(&self, local: PersonId) -> bool {
        self.copies.values().any(|&l| l == local.0)
    }
}

/// The daemon's side of sharing: applies what arrives, says what to publish.
#[derive(Debug)]
pub struct Sharing {
    pub origin: String,
    pub model: String,
    pub peers: Peers,
    /// Own identities as last published (a digest of the message).
    published: BTreeMap<u32, u64>,
    /// Tombstones to publish: own identities gone (or withdrawn: the flag), copies the
    /// operator removed.
    erase: Vec<(String, u32, bool)>,
    /// Tombstones past their grace period, to clear (an empty retained message).
    clear: Vec<(String, u32)>,
    dim: usize,
    /// Updates refused at application (gallery full, …), for the summary.
    pub failed: u64,
}

fn digest(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

impl Sharing {
    pub fn new(origin: &str, model: &str, peers: Peers, gallery: &Gallery) -> Sharing {
        let mut sharing = Sharing {
            origin: origin.to_owned(),
            model: model.to_owned(),
            peers,
            published: BTreeMap::new(),
            erase: Vec::new(),
            clear: Vec::new(),
            dim: gallery.config().dim,
            failed: 0,
        };
        // A copy the operator removed while the daemon was off is erased everywhere.
        sharing.copies_removed(gallery);
        sharing
    }

    /// Copies no longer in `gallery` (the operator removed them: the CLI while the daemon was
    /// off, or the API) are forgotten here and erased everywhere.
    fn copies_removed(&mut self, gallery: &Gallery) {
        let gone: Vec<String> = self
            .peers
            .copies
            .iter()
            .filter(|(_, local)| gallery.get(PersonId(**local)).is_none())
            .map(|(key, _)| key.clone())
            .collect();
        for key in gone {
            self.peers.copies.remove(&key);
            if let Some((origin, id)) = key.split_once('/')
                && let Ok(id) = id.parse()
            {
                log::info!("shared identity {key} was removed here: erasing it everywhere");
                self.erase.push((origin.to_owned(), id, false));
            }
        }
    }

    /// Publish everything again (a new connection: the broker may have lost its retained
    /// messages).
    pub fn republish(&mut self) {
        self.published.clear();
    }

    /// Applies one update; `None` if the gallery did not change.
    pub fn apply(&mut self, gallery: &mut Gallery, update: RemoteUpdate) -> Option<Applied> {
        match update {
            RemoteUpdate::Erase {
                origin,
                id,
                withdrawn,
                clear,
            } => {
                if clear {
                    self.clear.push((origin.clone(), id));
                }
                let local = if origin == self.origin {
                    self.published.remove(&id);
                    // Our own withdrawal (unpinned here): the identity stays.
                    Some(PersonId(id)).filter(|l| !withdrawn && !self.peers.is_copy(*l))
                } else {
                    let l = self.peers.local(&origin, id);
                    self.peers.copies.remove(&Peers::key(&origin, id));
                    l
                };
                let local = local.filter(|l| gallery.get(*l).is_some())?;
                gallery.remove(local).ok()?;
                log::info!("shared identity {origin}/{id} erased (here: {local})");
                Some(Applied::Erased(local))
            }
            RemoteUpdate::Upsert {
                origin,
                id,
                label,
                exemplars,
            } => {
                let now = Timestamp::now();
                let own = origin == self.origin;
                let local = if own {
                    // Our own, from the broker. Still here: nothing to do. Issued by this
                    // gallery and gone: removed while we were off, erase it everywhere. Never
                    // issued by it (a new or recovered gallery file): take it back.
                    if let Some(info) = gallery.get(PersonId(id)) {
                        // Unpinned while off or offline: withdraw it from sharing.
                        if !info.pinned && !self.peers.is_copy(info.id) {
                            self.erase.push((origin, id, true));
                        }
                        return None;
                    }
                    if self.peers.is_copy(PersonId(id)) {
                        return None;
                    }
                    if id < gallery.next_id().0 {
                        self.erase.push((origin, id, false));
                        return None;
                    }
                    gallery.reserve_ids_below(PersonId(id.saturating_add(1)));
                    PersonId(id)
                } else {
                    match self.peers.local(&origin, id) {
                        Some(l) if gallery.get(l).is_some() => {
                            gallery.remove(l).ok()?;
                            l
                        }
                        _ => {
                            let l = gallery.next_id();
                            gallery.reserve_ids_below(PersonId(l.0.saturating_add(1)));
                            l
                        }
                    }
                };
                let info = IdentityInfo {
                    id: local,
                    label: label.as_deref(),
                    first_seen: now,
                    last_seen: now,
                    times_seen: 0,
                    pinned: true,
                    exemplars: exemplars.len(),
                };
                match gallery.restore(&info, exemplars.iter().map(|e| &e[..])) {
                    Ok(()) if own => {
                        log::info!("own identity {id} taken back from the broker");
                        Some(Applied::Stored)
                    }
                    Ok(()) => {
                        self.peers.copies.insert(Peers::key(&origin, id), local.0);
                        log::info!(
                            "shared identity {origin}/{id}{} copied here as {local}",
                            label.map(|l| format!(" ({l})")).unwrap_or_default()
                        );
                        Some(Applied::Stored)
                    }
                    Err(e) => {
                        self.peers.copies.remove(&Peers::key(&origin, id));
                        self.failed += 1;
                        log::warn!("shared identity {origin}/{id} not copied: {e}");
                        None
                    }
                }
            }
        }
    }

    /// Messages to publish (retained): own enrolled identities that changed since last time,
    /// and erasures (empty payloads).
    pub fn outgoing(&mut self, gallery: &Gallery, prefix: &str) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        let own: Vec<PersonId> = gallery
            .identities()
            .filter(|i| i.pinned && !self.peers.is_copy(i.id))
            .map(|i| i.id)
            .collect();
        for id in &own {
            if let Some(payload) = encode(gallery, *id, &self.model, &self.origin) {
                let d = digest(&payload);
                if self.published.get(&id.0) != Some(&d) {
                    self.published.insert(id.0, d);
                    out.push((topic(prefix, &self.model, &self.origin, id.0), payload));
                }
            }
        }
        let gone: Vec<u32> = self
            .published
            .keys()
            .copied()
            .filter(|id| !own.contains(&PersonId(*id)))
            .collect();
        for id in &gone {
            self.published.remove(id);
        }
        for id in gone {
            // Still here but unpinned: withdrawn from sharing, not erased.
            let withdrawn = gallery.get(PersonId(id)).is_some();
            self.erase.push((self.origin.clone(), id, withdrawn));
        }
        self.copies_removed(gallery);
        for (origin, id, withdrawn) in self.erase.drain(..) {
            let stone = tombstone(&self.model, self.dim, &origin, id, withdrawn);
            out.push((topic(prefix, &self.model, &origin, id), stone));
        }
        for (origin, id) in self.clear.drain(..) {
            out.push((topic(prefix, &self.model, &origin, id), Vec::new()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gallery::{GalleryConfig, MatchPolicy, NewIdentity, StorageFormat};

    fn gallery() -> Gallery {
        let config = GalleryConfig {
            dim: 4,
            exemplars: 4,
            format: StorageFormat::Int8,
            budget_bytes: 64 << 10,
        };
        Gallery::with_budget(config, MatchPolicy::default()).unwrap()
    }

    fn enrol(g: &mut Gallery, v: [f32; 4], label: &str) -> PersonId {
        let new = NewIdentity {
            label: Some(label),
            pinned: true,
            now: Timestamp(1),
        };
        g.insert(&v, new).unwrap().0
    }

    #[test]
    fn an_identity_travels_and_its_erasure_too() {
        let mut door = gallery();
        let alice = enrol(&mut door, [0.6, 0.8, 0.0, 0.0], "alice");
        let mut at_door = Sharing::new("door", "m", Peers::default(), &door);
        let out = at_door.outgoing(&door, "reidcam");
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, "reidcam/gallery/m/door/1");
        assert!(
            at_door.outgoing(&door, "reidcam").is_empty(),
            "unchanged: nothing"
        );

        let mut yard = gallery();
        enrol(&mut yard, [0.0, 0.0, 1.0, 0.0], "bob");
        let mut at_yard = Sharing::new("yard", "m", Peers::default(), &yard);
        let got = parse_topic("reidcam", "m", &out[0].0).unwrap();
        let update = decode(&out[0].1, got, "m", 4, 4).unwrap();
        assert_eq!(at_yard.apply(&mut yard, update), Some(Applied::Stored));
        let copy = at_yard.peers.local("door", alice.0).unwrap();
        let info = yard.get(copy).unwrap();
        assert_eq!((info.label, info.pinned), (Some("alice"), true));
        let mut v = [0.0; 4];
        yard.exemplar(copy, 0, &mut v).unwrap();
        assert!(
            (v[0] - 0.6).abs() < 0.01 && (v[1] - 0.8).abs() < 0.01,
            "{v:?}"
        );
        // The copy is not published back as the yard's own.
        assert_eq!(at_yard.outgoing(&yard, "reidcam").len(), 1, "only bob");

        // Erased at the yard: the door removes its own.
        yard.remove(copy).unwrap();
        let mut at_yard = Sharing::new("yard", "m", at_yard.peers.clone(), &yard);
        let out = at_yard.outgoing(&yard, "reidcam");
        let erase = out
            .iter()
            .find(|(t, _)| t == "reidcam/gallery/m/door/1")
            .unwrap();
        let stone: IdentityMessage = serde_json::from_slice(&erase.1).unwrap();
        assert!(stone.erased_at.is_some() && stone.exemplars.is_empty());
        let update = decode(&erase.1, ("door".into(), 1), "m", 4, 4).unwrap();
        assert!(matches!(update, RemoteUpdate::Erase { clear: false, .. }));
        assert_eq!(
            at_door.apply(&mut door, update),
            Some(Applied::Erased(alice))
        );
        assert!(door.get(alice).is_none());
        let out = at_door.outgoing(&door, "reidcam");
        assert!(out.is_empty(), "already erased: {out:?}");
    }

    /// Unpinning an own identity withdraws it from sharing: the other cameras erase their
    /// copies, the origin keeps it (its own tombstone coming back does not erase it). Unpinned
    /// while offline, it is withdrawn when its retained message comes back.
    #[test]
    fn an_unpinned_identity_is_withdrawn_not_erased() {
        let mut door = gallery();
        let alice = enrol(&mut door, [0.6, 0.8, 0.0, 0.0], "alice");
        let mut at_door = Sharing::new("door", "m", Peers::default(), &door);
        let shared = at_door.outgoing(&door, "reidcam");
        let mut yard = gallery();
        let mut at_yard = Sharing::new("yard", "m", Peers::default(), &yard);
        let update = decode(&shared[0].1, ("door".into(), 1), "m", 4, 4).unwrap();
        assert_eq!(at_yard.apply(&mut yard, update), Some(Applied::Stored));
        let copy = at_yard.peers.local("door", 1).unwrap();

        door.edit(alice, None, Some(false)).unwrap();
        let out = at_door.outgoing(&door, "reidcam");
        assert_eq!(out.len(), 1, "{out:?}");
        let stone: IdentityMessage = serde_json::from_slice(&out[0].1).unwrap();
        assert!(stone.withdrawn && stone.erased_at.is_some(), "{stone:?}");
        // Back at the door: kept.
        let update = decode(&out[0].1, ("door".into(), 1), "m", 4, 4).unwrap();
        assert_eq!(at_door.apply(&mut door, update.clone()), None);
        assert!(door.get(alice).is_some_and(|i| !i.pinned));
        // At the yard: the copy is erased.
        assert_eq!(
            at_yard.apply(&mut yard, update),
            Some(Applied::Erased(copy))
        );
        assert!(yard.get(copy).is_none());

        // Re-pinned: shared again. Unpinned while the door was off: a new run's Sharing has
        // published nothing, and withdraws it when the old retained message arrives.
        door.edit(alice, None, Some(true)).unwrap();
        let again = at_door.outgoing(&door, "reidcam");
        assert_eq!(again.len(), 1);
        door.edit(alice, None, Some(false)).unwrap();
        let mut next_run = Sharing::new("door", "m", Peers::default(), &door);
        assert!(next_run.outgoing(&door, "reidcam").is_empty());
        let update = decode(&again[0].1, ("door".into(), 1), "m", 4, 4).unwrap();
        assert_eq!(next_run.apply(&mut door, update), None);
        let out = next_run.outgoing(&door, "reidcam");
        let stone: IdentityMessage = serde_json::from_slice(&out[0].1).unwrap();
        assert!(stone.withdrawn, "{stone:?}");
        assert!(door.get(alice).is_some());

        // A plain erasure of the door's identity (from a peer) still erases it at the door.
        let erased = tombstone("m", 4, "door", 1, false);
        let update = decode(&erased, ("door".into(), 1), "m", 4, 4).unwrap();
        assert_eq!(
            next_run.apply(&mut door, update),
            Some(Applied::Erased(alice))
        );
    }

    /// A shared copy removed through the API while the daemon runs is erased everywhere at the
    /// next publication (not only at the next start).
    #[test]
    fn a_copy_removed_while_running_is_erased_everywhere() {
        let mut door = gallery();
        enrol(&mut door, [0.6, 0.8, 0.0, 0.0], "alice");
        let shared = Sharing::new("door", "m", Peers::default(), &door).outgoing(&door, "reidcam");
        let mut yard = gallery();
        let mut at_yard = Sharing::new("yard", "m", Peers::default(), &yard);
        let update = decode(&shared[0].1, ("door".into(), 1), "m", 4, 4).unwrap();
        at_yard.apply(&mut yard, update).unwrap();
        assert!(at_yard.outgoing(&yard, "reidcam").is_empty());
        let copy = at_yard.peers.local("door", 1).unwrap();
        yard.remove(copy).unwrap();
        let out = at_yard.outgoing(&yard, "reidcam");
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].0, "reidcam/gallery/m/door/1");
        let stone: IdentityMessage = serde_json::from_slice(&out[0].1).unwrap();
        assert!(stone.erased_at.is_some() && !stone.withdrawn);
        assert!(at_yard.peers.local("door", 1).is_none());
    }

    #[test]
    fn bad_messages_are_refused_with_the_reason() {
        let mut door = gallery();
        enrol(&mut door, [1.0, 0.0, 0.0, 0.0], "alice");
        let good = encode(&door, PersonId(1), "m", "door").unwrap();
        let from = || ("door".to_owned(), 1);
        assert!(decode(&good, from(), "m", 4, 4).is_ok());
        type Case<'a> = (&'a [u8], &'a str, usize, (String, u32), &'a str);
        let cases: [Case; 5] = [
            (b"{not json", "m", 4, from(), "not an identity"),
            (&good, "other", 4, from(), "model"),
            (&good, "m", 8, from(), "dimension"),
            (&good, "m", 4, ("yard".into(), 1), "published as"),
            (&good, "m", 4, ("door".into(), 2), "published as"),
        ];
        for (payload, model, dim, origin, why) in cases {
            let err = decode(payload, origin, model, dim, 4).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
        let text = String::from_utf8(good).unwrap();
        for (from_, to, why) in [
            ("\"scale\":", "\"scale\":-", "scale"),
            ("\"codes\":\"", "\"codes\":\"zz", "hex digits"),
        ] {
            let bad = text.replacen(from_, to, 1);
            let err = decode(bad.as_bytes(), from(), "m", 4, 4).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
        assert!(parse_topic("reidcam", "m", "reidcam/gallery/m/../1").is_none());
        assert_eq!(
            parse_topic("reidcam", "m", "reidcam/gallery/m/door/7"),
            Some(("door".into(), 7))
        );
    }
}
