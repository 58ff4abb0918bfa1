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

mod merge;
#[cfg(test)]
mod tests;
mod wire;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::gallery::{Gallery, IdentityInfo, PersonId, Timestamp};
use merge::absorb;

pub use wire::{
    IdentityMessage, Int8Exemplar, LabelMessage, MergedInto, RemoteUpdate, Subject,
    TOMBSTONE_GRACE, decode, encode, filter, label_topic, model_level, parse_topic, rename_request,
    tombstone, topic,
};

/// What [`Sharing::apply`] changed in the gallery.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Applied {
    /// An identity was copied from a peer, replaced by a newer copy, or taken back.
    Stored,
    /// This local identity was erased (a peer's or our own erasure): the next save erases it
    /// from the file and its backup, and the caller releases the tracks holding it and deletes
    /// its thumbnail.
    Erased(PersonId),
    /// `from` was merged into `into` (the same person, created separately at two cameras): it
    /// is gone as for [`Applied::Erased`], and the tracks naming it now name `into`.
    /// `similarity`: the match that decided it, when this camera decided.
    Merged {
        from: PersonId,
        into: PersonId,
        similarity: Option<f32>,
    },
}

/// A tombstone to publish.
#[derive(Clone, Debug, PartialEq)]
struct Stone {
    origin: String,
    id: u32,
    /// Unpinned at its origin, which keeps it: withdrawn from sharing, not erased.
    withdrawn: bool,
    /// Merged into this identity (`origin`, `id`).
    merged_into: Option<(String, u32)>,
}

impl Stone {
    fn erased(origin: String, id: u32) -> Stone {
        Stone {
            origin,
            id,
            withdrawn: false,
            merged_into: None,
        }
    }
}

/// Which local identity copies which remote one (`<gallery>.peers.json`, 0600).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Peers {
    /// `"<origin>/<id>"` → local id.
    pub copies: BTreeMap<String, u32>,
    /// `"<origin>/<id>"` → when this camera learnt it was erased (ms since the epoch). An
    /// origin never reuses an id, so an erased identity stays erased: content for it arriving
    /// later (published concurrently with the erasure, which the broker then kept instead of
    /// the tombstone) is refused and the tombstone published again. Kept for
    /// [`TOMBSTONE_GRACE`].
    #[serde(default)]
    pub erased: BTreeMap<String, u64>,
    /// Copies (`origin/id`): the label and stamp their origin last published, kept across
    /// restarts so that a copy renamed before the origin's message comes back is told from one
    /// the origin renamed.
    #[serde(default)]
    pub received: BTreeMap<String, (Option<String>, u64)>,
    /// Copies of passers-by's provisional identities (`origin/id`): evicted and forgotten
    /// here like this camera's own passers-by, which erases them nowhere else. Only an
    /// operator's erasure (the API) erases one everywhere.
    #[serde(default)]
    pub provisional: std::collections::BTreeSet<String>,
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
    /// Tombstones to publish: own identities gone (withdrawn, or merged), copies the operator
    /// removed.
    erase: Vec<Stone>,
    /// Tombstones past their grace period, to clear (an empty retained message).
    clear: Vec<(String, u32)>,
    /// Own identities: when their label was set (ms; 0: unknown) and the label this side last
    /// knew (published, or set by a request), to tell an operator's rename here.
    label_at: BTreeMap<u32, u64>,
    known_label: BTreeMap<u32, Option<String>>,
    /// Own identities whose rename request was handled: clear it (an empty retained message).
    requests_done: Vec<u32>,
    /// Copies renamed here: the label asked of the origin, when, and whether to (re)send it.
    asked: BTreeMap<String, Asked>,
    dim: usize,
    /// Updates refused at application (gallery full, …), for the summary.
    pub failed: u64,
    /// Merge an own identity into another camera's when they match from this similarity on
    /// (`mqtt.merge_threshold`; `None`: never).
    pub merge_at: Option<f32>,
    /// Local identities whose content changed since the last [`Sharing::merges`]: the ones to
    /// test.
    unchecked: std::collections::BTreeSet<u32>,
    /// Own identities that have duplicates but were not merged (two names; the survivor is
    /// this camera's): tested again whenever the gallery's identities or names change.
    waiting: std::collections::BTreeSet<u32>,
    /// The gallery's identities, names and pins when `waiting` was last tested.
    fingerprint: u64,
    /// Own identities this camera merged into another's (each also a `merge` event and a log
    /// line).
    pub merged: u64,
    /// Share passers-by's provisional identities too (`mqtt.share_passers_by`).
    pub passers_by: bool,
    /// Copies of passers-by an operator erased here (the API) since the last turn: erased
    /// everywhere, unlike those evicted or forgotten.
    erased_here: Vec<u32>,
}

/// A rename of a copy, asked of its origin.
#[derive(Clone, Debug, PartialEq)]
struct Asked {
    label: Option<String>,
    at: u64,
    send: bool,
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
            label_at: BTreeMap::new(),
            known_label: BTreeMap::new(),
            requests_done: Vec::new(),
            asked: BTreeMap::new(),
            dim: gallery.config().dim,
            failed: 0,
            merge_at: None,
            unchecked: std::collections::BTreeSet::new(),
            waiting: std::collections::BTreeSet::new(),
            fingerprint: 0,
            merged: 0,
            passers_by: false,
            erased_here: Vec::new(),
        };
        // A copy the operator removed while the daemon was off is erased everywhere.
        sharing.copies_removed(gallery);
        let now = Timestamp::now().0;
        let grace = TOMBSTONE_GRACE.as_millis() as u64;
        sharing
            .peers
            .erased
            .retain(|_, at| now.saturating_sub(*at) <= grace);
        sharing
    }

    /// Marks the copies in `gallery` as remote (evicted first: the file does not keep it).
    pub fn mark_copies(&self, gallery: &mut Gallery) {
        for local in self.peers.copies.values() {
            gallery.set_remote(PersonId(*local), true);
        }
    }

    /// The operator erased `local` here (the API): if it is a copy of a passer-by, that is
    /// an erasure to publish, not a local eviction.
    pub fn erased_by_operator(&mut self, local: PersonId) {
        self.erased_here.push(local.0);
    }

    /// Copies no longer in `gallery` are forgotten here. An enrolled person's copy was removed
    /// by the operator (the CLI while the daemon was off, or the API): erased everywhere. A
    /// passer-by's was evicted or forgotten (`gallery.forget_after`) here, which concerns no
    /// other camera, unless the operator erased it ([`Sharing::erased_by_operator`]).
    fn copies_removed(&mut self, gallery: &Gallery) {
        let present: BTreeMap<u32, bool> =
            gallery.identities().map(|i| (i.id.0, i.pinned)).collect();
        // A copy unpinned here (the API) is a passer-by here too.
        for (key, local) in &self.peers.copies {
            match present.get(local) {
                Some(false) => self.peers.provisional.insert(key.clone()),
                Some(true) => self.peers.provisional.remove(key),
                None => continue,
            };
        }
        let gone: Vec<String> = self
            .peers
            .copies
            .iter()
            .filter(|(_, local)| !present.contains_key(local))
            .map(|(key, _)| key.clone())
            .collect();
        for key in gone {
            let local = self.peers.copies.remove(&key);
            self.peers.received.remove(&key);
            self.asked.remove(&key);
            let by_operator = local.is_some_and(|l| self.erased_here.contains(&l));
            if self.peers.provisional.remove(&key) && !by_operator {
                log::debug!("copy of passer-by {key} evicted or forgotten here");
                continue;
            }
            if let Some((origin, id)) = key.split_once('/')
                && let Ok(id) = id.parse()
            {
                log::info!("shared identity {key} was removed here: erasing it everywhere");
                self.erase.push(Stone::erased(origin.to_owned(), id));
            }
        }
    }

    /// Publish everything again (a new connection: the broker may have lost its retained
    /// messages). What was published stays known, so an identity erased or unpinned before the
    /// next publication still gets its tombstone.
    pub fn republish(&mut self) {
        for digest in self.published.values_mut() {
            *digest = 0;
        }
        for asked in self.asked.values_mut() {
            asked.send = true;
        }
    }

    /// Applies one update; `None` if the gallery did not change.
    pub fn apply(&mut self, gallery: &mut Gallery, update: RemoteUpdate) -> Option<Applied> {
        match update {
            RemoteUpdate::Erase {
                origin,
                id,
                withdrawn,
                clear,
                merged_into,
            } => {
                if clear {
                    self.clear.push((origin.clone(), id));
                }
                let key = Peers::key(&origin, id);
                self.peers.received.remove(&key);
                self.asked.remove(&key);
                if !withdrawn {
                    self.peers.erased.insert(key, Timestamp::now().0);
                }
                let own = origin == self.origin;
                // Our own withdrawal (unpinned here): the identity stays.
                let local = if own && withdrawn {
                    None
                } else {
                    self.local_of(gallery, &origin, id)
                };
                if own {
                    self.published.remove(&id);
                    if !withdrawn {
                        self.label_at.remove(&id);
                        self.known_label.remove(&id);
                    }
                } else {
                    self.peers.copies.remove(&Peers::key(&origin, id));
                }
                let local = local?;
                if let Some((into_origin, into_id)) = merged_into
                    && let Some(into) = self.local_of(gallery, &into_origin, into_id)
                {
                    if into_origin == self.origin {
                        // Ours: it takes the merged identity's views, and is published again.
                        absorb(gallery, local, into);
                        self.unchecked.insert(into.0);
                    }
                    gallery.remove(local).ok()?;
                    self.unchecked.remove(&local.0);
                    log::info!(
                        "shared identity {origin}/{id} merged into {into_origin}/{into_id} \
                         (here: {local} into {into})"
                    );
                    return Some(Applied::Merged {
                        from: local,
                        into,
                        similarity: None,
                    });
                }
                gallery.remove(local).ok()?;
                self.unchecked.remove(&local.0);
                log::info!("shared identity {origin}/{id} erased (here: {local})");
                Some(Applied::Erased(local))
            }
            RemoteUpdate::RenameCleared => None,
            RemoteUpdate::Rename {
                origin,
                id,
                label,
                at,
                from,
            } => {
                if origin != self.origin {
                    return None; // for its origin to decide
                }
                self.requests_done.push(id);
                let local = PersonId(id);
                let info = gallery.get(local)?;
                let newer = at > self.label_at.get(&id).copied().unwrap_or(0);
                let shared = info.pinned || self.passers_by;
                if !shared || self.peers.is_copy(local) || !newer {
                    log::info!("rename of {id} asked by {from} not applied (older, or not shared)");
                    // The asker keeps its name until it sees ours, newer: publish it again.
                    if let Some(d) = self.published.get_mut(&id) {
                        *d = 0;
                    }
                    return None;
                }
                gallery.edit(local, Some(label.as_deref()), None).ok()?;
                self.label_at.insert(id, at);
                self.known_label.insert(id, label.clone());
                log::info!(
                    "{local} renamed {} as {from} asked",
                    label.as_deref().unwrap_or("(no name)")
                );
                Some(Applied::Stored)
            }
            RemoteUpdate::Upsert {
                origin,
                id,
                label,
                label_at,
                exemplars,
                pinned,
            } => {
                if self.peers.erased.contains_key(&Peers::key(&origin, id)) {
                    // Erased, and this came after (or raced) the tombstone: erased it stays,
                    // and the broker gets the tombstone again.
                    self.erase.push(Stone::erased(origin, id));
                    return None;
                }
                let now = Timestamp::now();
                let own = origin == self.origin;
                let mut label = label;
                let local = if own {
                    // Our own, from the broker. Still here: nothing to do. Issued by this
                    // gallery and gone: removed while we were off, erase it everywhere. Never
                    // issued by it (a new or recovered gallery file): take it back.
                    if let Some(info) = gallery.get(PersonId(id)) {
                        // Unpinned while off or offline: withdraw it from sharing.
                        if !info.pinned && !self.passers_by && !self.peers.is_copy(info.id) {
                            self.erase.push(Stone {
                                withdrawn: true,
                                ..Stone::erased(origin, id)
                            });
                        } else if info.label == label.as_deref() {
                            // The stamp of the label it has (a restart forgets it).
                            let at = self.label_at.entry(id).or_insert(0);
                            *at = (*at).max(label_at);
                        } else {
                            // The broker has another label than ours: publish ours again.
                            if let Some(d) = self.published.get_mut(&id) {
                                *d = 0;
                            }
                        }
                        return None;
                    }
                    if self.peers.is_copy(PersonId(id)) {
                        return None;
                    }
                    if id < gallery.next_id().0 {
                        self.erase.push(Stone::erased(origin, id));
                        return None;
                    }
                    gallery.reserve_ids_below(PersonId(id.saturating_add(1)));
                    PersonId(id)
                } else {
                    let key = Peers::key(&origin, id);
                    let before = self
                        .peers
                        .received
                        .insert(key.clone(), (label.clone(), label_at));
                    match self.peers.local(&origin, id) {
                        Some(l) if let Some(info) = gallery.get(l) => {
                            let here = info.label.map(str::to_owned);
                            label = self.settle_label(&key, here, before, label, label_at);
                            gallery.remove(l).ok()?;
                            l
                        }
                        // Removed here (the API) since the last publication turn: that is an
                        // erasure, not a reason to copy it again.
                        Some(_) => {
                            self.copies_removed(gallery);
                            return None;
                        }
                        None => {
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
                    pinned,
                    exemplars: exemplars.len(),
                };
                // Full: a remote passer-by makes room (the least recently seen); an enrolled
                // person, any passer-by (remote first).
                if let Some(gone) = gallery.make_room(!info.pinned) {
                    log::info!("gallery full: {gone} evicted for shared identity {origin}/{id}");
                }
                match gallery.restore(&info, exemplars.iter().map(|e| &e[..])) {
                    Ok(()) if own => {
                        log::info!("own identity {id} taken back from the broker");
                        Some(Applied::Stored)
                    }
                    Ok(()) => {
                        let key = Peers::key(&origin, id);
                        if pinned {
                            self.peers.provisional.remove(&key);
                        } else {
                            self.peers.provisional.insert(key.clone());
                        }
                        self.peers.copies.insert(key, local.0);
                        gallery.set_remote(local, true);
                        self.unchecked.insert(local.0);
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

    /// The label a copy keeps when its origin's message arrives: the origin's, unless the copy
    /// was renamed here later than the origin's label was set (then the rename is asked of the
    /// origin again: it may never have seen it). `before`: what the origin had published.
    fn settle_label(
        &mut self,
        key: &str,
        here: Option<String>,
        before: Option<(Option<String>, u64)>,
        theirs: Option<String>,
        their_at: u64,
    ) -> Option<String> {
        if here == theirs {
            self.asked.remove(key);
            return theirs;
        }
        let asked = match self.asked.get(key) {
            Some(a) if a.label == here => Some(a.at),
            // Renamed here and not asked yet.
            _ if before.is_some_and(|(l, _)| l != here) => Some(Timestamp::now().0),
            _ => None,
        };
        match asked {
            Some(at) if at > their_at => {
                self.asked.insert(
                    key.to_owned(),
                    Asked {
                        label: here.clone(),
                        at,
                        send: true,
                    },
                );
                here
            }
            _ => {
                self.asked.remove(key);
                theirs
            }
        }
    }

    /// Renames of copies made here since their origin's last message: asked of the origin.
    fn renames(&mut self, gallery: &Gallery, prefix: &str, out: &mut Vec<(String, Vec<u8>)>) {
        let labels: BTreeMap<u32, Option<&str>> =
            gallery.identities().map(|i| (i.id.0, i.label)).collect();
        for (key, local) in &self.peers.copies {
            let Some(label) = labels.get(local) else {
                continue;
            };
            let Some((theirs, _)) = self.peers.received.get(key) else {
                continue; // nothing from the origin yet this run: nothing to compare
            };
            let here = label.map(str::to_owned);
            if &here == theirs {
                self.asked.remove(key);
                continue;
            }
            let asked = self.asked.entry(key.clone()).or_insert_with(|| Asked {
                label: here.clone(),
                at: Timestamp::now().0,
                send: true,
            });
            if asked.label != here {
                *asked = Asked {
                    label: here.clone(),
                    at: Timestamp::now().0,
                    send: true,
                };
            }
            if std::mem::take(&mut asked.send)
                && let Some((origin, id)) = key.split_once('/')
                && let Ok(id) = id.parse()
            {
                let request = rename_request(origin, id, here.as_deref(), asked.at, &self.origin);
                out.push((label_topic(prefix, &self.model, origin, id), request));
            }
        }
    }

    /// Messages to publish (retained): own enrolled identities that changed since last time,
    /// renames of copies (asked of their origin), and erasures (empty payloads).
    pub fn outgoing(&mut self, gallery: &Gallery, prefix: &str) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        // Once per call: a copy test per identity would be quadratic in the gallery.
        let copies: std::collections::BTreeSet<u32> = self.peers.copies.values().copied().collect();
        let own: Vec<PersonId> = gallery
            .identities()
            .filter(|i| (i.pinned || self.passers_by) && !copies.contains(&i.id.0))
            .map(|i| i.id)
            .collect();
        for id in &own {
            let label = gallery.get(*id).and_then(|i| i.label).map(str::to_owned);
            match self.known_label.get(&id.0) {
                // Renamed here by the operator since: the newest label.
                Some(known) if *known != label => {
                    self.label_at.insert(id.0, Timestamp::now().0);
                }
                _ => {}
            }
            self.known_label.insert(id.0, label);
            let label_at = self.label_at.get(&id.0).copied().unwrap_or(0);
            if let Some(payload) = encode(gallery, *id, &self.model, &self.origin, label_at) {
                let d = digest(&payload);
                if self.published.get(&id.0) != Some(&d) {
                    if self.published.insert(id.0, d) != Some(0) {
                        // New content (not a republication): test it for a merge.
                        self.unchecked.insert(id.0);
                    }
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
            self.erase.push(Stone {
                withdrawn,
                ..Stone::erased(self.origin.clone(), id)
            });
        }
        self.copies_removed(gallery);
        self.erased_here.clear();
        self.renames(gallery, prefix, &mut out);
        for id in self.requests_done.drain(..) {
            out.push((
                label_topic(prefix, &self.model, &self.origin, id),
                Vec::new(),
            ));
        }
        for stone in self.erase.drain(..) {
            if !stone.withdrawn {
                let key = Peers::key(&stone.origin, stone.id);
                self.peers.erased.insert(key, Timestamp::now().0);
            }
            let into = stone.merged_into.as_ref().map(|(o, i)| (o.as_str(), *i));
            let payload = tombstone(
                &self.model,
                self.dim,
                &stone.origin,
                stone.id,
                stone.withdrawn,
                into,
            );
            out.push((topic(prefix, &self.model, &stone.origin, stone.id), payload));
        }
        for (origin, id) in self.clear.drain(..) {
            out.push((topic(prefix, &self.model, &origin, id), Vec::new()));
        }
        out
    }
}
