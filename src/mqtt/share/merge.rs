//! Merges: one person's identities made at two cameras become one (`docs/mqtt.md`, "Merges").
//! Only an identity's origin merges it, by a rule every camera applies alike.

use std::collections::BTreeMap;

use super::{Applied, Sharing, Stone};
use crate::gallery::{Candidate, Gallery, PersonId};

impl Sharing {
    /// The local identity `origin`'s `id` is here, if this camera has it: its own (not a copy
    /// that happens to carry the id), or its copy of another camera's.
    pub(super) fn local_of(&self, gallery: &Gallery, origin: &str, id: u32) -> Option<PersonId> {
        let local = if origin == self.origin {
            Some(PersonId(id)).filter(|l| !self.peers.is_copy(*l))
        } else {
            self.peers.local(origin, id)
        };
        local.filter(|l| gallery.get(*l).is_some())
    }

    /// Merges this camera's shared identities into other cameras' identities of the same
    /// person (`docs/mqtt.md`, "Merges"). Only an identity's origin merges it, so two cameras
    /// never decide about one identity. The rule, the same at every camera, for an own shared
    /// identity and the shared identities whose similarity to its mean exemplar is `merge_at`
    /// or more (its duplicates):
    ///
    /// - the names among them do not differ (else it is an operator's call, not ours);
    /// - of it and its duplicates, the first in rank survives: pinned before unpinned, named
    ///   before unnamed, then by `origin/id`. If that is another camera's, this one merges
    ///   into it; if it is this one, the others merge into it, each at its origin.
    ///
    /// The own identity is removed here (its views go to the survivor's copy) and a tombstone
    /// naming the survivor is published: the other cameras move their tracks to it, and its
    /// origin takes the views. Tested are identities whose content changed since the last
    /// call (an own one, or the own ones near a copy that changed).
    pub fn merges(&mut self, gallery: &mut Gallery) -> Vec<Applied> {
        let mut done = Vec::new();
        let Some(at) = self.merge_at else {
            self.unchecked.clear();
            return done;
        };
        if !self.waiting.is_empty() {
            // What blocked them may be gone (erased, renamed, unpinned): O(gallery), no
            // similarity computed.
            let fingerprint = fingerprint(gallery);
            if fingerprint != self.fingerprint {
                self.fingerprint = fingerprint;
                self.unchecked.append(&mut self.waiting);
            }
        }
        if self.unchecked.is_empty() {
            return done;
        }
        let copies: BTreeMap<u32, (String, u32)> = self
            .peers
            .copies
            .iter()
            .filter_map(|(key, &local)| {
                let (origin, id) = key.split_once('/')?;
                Some((local, (origin.to_owned(), id.parse().ok()?)))
            })
            .collect();
        let mut query = vec![0.0f32; self.dim];
        for local in std::mem::take(&mut self.unchecked) {
            let local = PersonId(local);
            let mut own = [None; NEAREST];
            if copies.contains_key(&local.0) {
                // A copy changed: test the own identities near it.
                let near = nearest_others(gallery, local, &mut query);
                for (o, c) in own.iter_mut().zip(near.iter().flatten()) {
                    *o = (c.similarity.0 >= at
                        && shared_own(gallery, c.id, &copies, self.passers_by))
                    .then_some(c.id);
                }
            } else if shared_own(gallery, local, &copies, self.passers_by) {
                own[0] = Some(local);
            }
            for own in own.into_iter().flatten() {
                if let Some(merge) = self.merge_one(gallery, own, &copies, at, &mut query) {
                    done.push(merge);
                }
            }
        }
        done
    }

    /// Merges `own` into the survivor among its duplicates, if that is another camera's.
    fn merge_one(
        &mut self,
        gallery: &mut Gallery,
        own: PersonId,
        copies: &BTreeMap<u32, (String, u32)>,
        at: f32,
        query: &mut [f32],
    ) -> Option<Applied> {
        let near = nearest_others(gallery, own, query);
        let mine = gallery.get(own)?;
        let mut label = mine.label;
        let mut first = (rank(mine.pinned, mine.label, &self.origin, own.0), None);
        self.waiting.remove(&own.0);
        for c in near.into_iter().flatten() {
            let shared =
                copies.contains_key(&c.id.0) || shared_own(gallery, c.id, copies, self.passers_by);
            let Some(info) = gallery.get(c.id).filter(|_| c.similarity.0 >= at && shared) else {
                continue;
            };
            // A duplicate: whatever is decided now may change when the gallery does.
            self.waiting.insert(own.0);
            match (label, info.label) {
                (Some(a), Some(b)) if a != b => {
                    // Two names: an operator's call, not ours.
                    log::info!(
                        "own identity {own} looks like {} ({b}) at {:.3}, but is named {a}: \
                         not merged",
                        c.id,
                        c.similarity.0
                    );
                    return None;
                }
                (None, b) => label = b,
                _ => {}
            }
            let origin = copies.get(&c.id.0).map_or(self.origin.as_str(), |(o, _)| o);
            let id = copies.get(&c.id.0).map_or(c.id.0, |(_, i)| *i);
            let key = rank(info.pinned, info.label, origin, id);
            if key < first.0 {
                first = (key, Some(c));
            }
        }
        // The survivor is this one, or another of this camera's (not a merge between cameras).
        let into = first.1.filter(|c| copies.contains_key(&c.id.0))?;
        let (origin, id) = copies[&into.id.0].clone();
        let similarity = into.similarity.0;
        self.waiting.remove(&own.0);
        absorb(gallery, own, into.id);
        gallery.remove(own).ok()?;
        self.published.remove(&own.0);
        self.label_at.remove(&own.0);
        self.known_label.remove(&own.0);
        log::info!(
            "own identity {own} is {origin}/{id} (here {}): similarity {similarity:.3}, \
             merged into it",
            into.id
        );
        self.erase.push(Stone {
            merged_into: Some((origin, id)),
            ..Stone::erased(self.origin.clone(), own.0)
        });
        self.merged += 1;
        Some(Applied::Merged {
            from: own,
            into: into.id,
            similarity: Some(similarity),
        })
    }
}

/// Whether `id` is one of this camera's shared identities (not a copy; enrolled, or any with
/// `passers_by`).
fn shared_own(
    gallery: &Gallery,
    id: PersonId,
    copies: &BTreeMap<u32, (String, u32)>,
    passers_by: bool,
) -> bool {
    !copies.contains_key(&id.0) && gallery.get(id).is_some_and(|i| i.pinned || passers_by)
}

/// The gallery's identities, names and pins, hashed.
fn fingerprint(gallery: &Gallery) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for i in gallery.identities() {
        (i.id.0, i.label, i.pinned).hash(&mut h);
    }
    h.finish()
}

/// How many identities near another a merge looks at.
const NEAREST: usize = 4;

/// Where an identity comes first among duplicates ([`Sharing::merges`]): smaller first.
fn rank(pinned: bool, label: Option<&str>, origin: &str, id: u32) -> (bool, bool, String, u32) {
    (!pinned, label.is_none(), origin.to_owned(), id)
}

/// The identities nearest to `id`'s mean exemplar, best first, `id` left out.
fn nearest_others(
    gallery: &mut Gallery,
    id: PersonId,
    query: &mut [f32],
) -> [Option<Candidate>; NEAREST] {
    let mut near = [None; NEAREST];
    let count = gallery.get(id).map_or(0, |i| i.exemplars);
    let mut exemplar = vec![0.0f32; query.len()];
    query.fill(0.0);
    for k in 0..count {
        if gallery.exemplar(id, k, &mut exemplar).is_err() {
            return near;
        }
        let norm = exemplar
            .iter()
            .map(|v| v * v)
            .sum::<f32>()
            .sqrt()
            .max(1e-12);
        for (q, e) in query.iter_mut().zip(&exemplar) {
            *q += e / norm;
        }
    }
    let mut top = [Candidate::default(); NEAREST + 1];
    let n = gallery.best_matches(query, &mut top).unwrap_or(0);
    let others = top[..n].iter().copied().filter(|c| c.id != id);
    for (slot, c) in near.iter_mut().zip(others) {
        *slot = Some(c);
    }
    near
}

/// `into` takes `from`'s exemplars (the gallery keeps the K most spread).
pub(super) fn absorb(gallery: &mut Gallery, from: PersonId, into: PersonId) {
    let count = gallery.get(from).map_or(0, |i| i.exemplars);
    let mut values = vec![0.0f32; gallery.config().dim];
    for k in 0..count {
        if gallery.exemplar(from, k, &mut values).is_ok() {
            let _ = gallery.offer_exemplar(into, &values);
        }
    }
}
