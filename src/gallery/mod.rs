//! The on-device gallery: the identities a camera knows, in a memory budget fixed at start-up.
//!
//! # Storage: one preallocated arena, not `heapless`
//! Capacity depends on the model's dimension, `K` and the format, which are only known at run
//! time, so compile-time `heapless` capacities do not fit the vectors. Instead
//! [`Gallery::with_budget`] computes how many identities the budget holds and allocates, once:
//! a table of identity slots, one arena of `capacity · K + 1` exemplar vectors (identity `s` owns
//! arena slots `s·K .. s·K + K`; the extra slot holds a candidate exemplar during updates) and the
//! prepared-query buffers. Nothing grows afterwards: enrolment, matching, refresh, eviction and
//! removal only overwrite slots. Labels are `heapless::String`s inside the slot table, so a label
//! costs no allocation either. Fixed strides also make matching a linear scan over contiguous
//! memory.
//!
//! # Capacity
//! `heap_bytes(n) = n · (IDENTITY_SLOT_BYTES + K · (D · b + 8)) + (D · b + 8) + 5 · D`, with `D` the
//! dimension, `b` the bytes per value (int8 1, f16 2, f32 4), 8 the per-vector header (scale and
//! inverse norm) and `5 · D` the prepared query (f32 + i8). The capacity is the largest `n` with
//! `heap_bytes(n) ≤ budget`. See `docs/gallery.md` for the table.

pub mod file;
pub mod json;
pub mod kernels;
mod types;
mod vectors;

use std::fmt;

pub use kernels::Kernels;
pub use types::{
    Aggregation, Candidate, Decision, ExemplarUpdate, GalleryConfig, GalleryError, IdentityInfo,
    MatchPolicy, NewIdentity, Observation, PersonId, Similarity, Timestamp,
};
pub use vectors::StorageFormat;
use vectors::{Arena, PreparedQuery};

/// Longest label, in bytes of UTF-8.
pub const LABEL_CAPACITY: usize = 48;

/// Largest exemplar count per identity (stored as a byte in files).
pub const MAX_EXEMPLARS: usize = 255;

/// Largest embedding dimension the gallery accepts.
pub const MAX_DIM: usize = 8192;

/// Bytes one identity slot (metadata, label included) takes in the slot table.
pub const IDENTITY_SLOT_BYTES: usize = std::mem::size_of::<Slot>();

#[derive(Clone, Debug, Default)]
struct Slot {
    occupied: bool,
    pinned: bool,
    /// Another camera's identity (a copy, `mqtt.share_gallery`): evicted before this camera's
    /// own. Not in the file: the sharing side marks its copies at start.
    remote: bool,
    exemplars: u8,
    id: PersonId,
    times_seen: u32,
    first_seen: Timestamp,
    last_seen: Timestamp,
    label: heapless::String<LABEL_CAPACITY>,
}

/// The gallery. See the module docs for the memory layout.
pub struct Gallery {
    config: GalleryConfig,
    policy: MatchPolicy,
    kernels: Kernels,
    slots: Vec<Slot>,
    arena: Arena,
    query: PreparedQuery,
    len: usize,
    next_id: u32,
}

impl fmt::Debug for Gallery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gallery")
            .field("config", &self.config)
            .field("policy", &self.policy)
            .field("capacity", &self.slots.len())
            .field("len", &self.len)
            .finish()
    }
}

impl Gallery {
    /// Allocates everything the gallery will ever use; fails if the budget holds no identity.
    pub fn with_budget(config: GalleryConfig, policy: MatchPolicy) -> Result<Self, GalleryError> {
        Self::with_kernels(config, policy, Kernels::detect())
    }

    /// As [`Gallery::with_budget`], with explicit kernels (benchmarks compare them).
    pub fn with_kernels(
        config: GalleryConfig,
        policy: MatchPolicy,
        kernels: Kernels,
    ) -> Result<Self, GalleryError> {
        let capacity = config.capacity()?;
        let slots = vec![Slot::default(); capacity];
        let arena = Arena::new(config.format, capacity * config.exemplars + 1, config.dim);
        Ok(Gallery {
            config,
            policy,
            kernels,
            slots,
            arena,
            query: PreparedQuery::with_dim(config.dim),
            len: 0,
            next_id: 1,
        })
    }

    pub fn config(&self) -> &GalleryConfig {
        &self.config
    }

    pub fn policy(&self) -> &MatchPolicy {
        &self.policy
    }

    pub fn set_policy(&mut self, policy: MatchPolicy) {
        self.policy = policy;
    }

    /// Identities the budget holds.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Heap bytes in use (all allocated at start-up).
    pub fn heap_bytes(&self) -> usize {
        self.config.heap_bytes(self.capacity())
    }

    /// The id the next new identity gets.
    pub fn next_id(&self) -> PersonId {
        PersonId(self.next_id)
    }

    /// Identities in slot order.
    pub fn identities(&self) -> impl Iterator<Item = IdentityInfo<'_>> {
        self.slots.iter().filter(|s| s.occupied).map(Slot::info)
    }

    pub fn get(&self, id: PersonId) -> Option<IdentityInfo<'_>> {
        self.find(id).map(|i| self.slots[i].info())
    }

    /// Writes exemplar `index` of `id`, dequantised, into `out` (`dim` values).
    pub fn exemplar(
        &self,
        id: PersonId,
        index: usize,
        out: &mut [f32],
    ) -> Result<(), GalleryError> {
        let slot = self.find(id).ok_or(GalleryError::UnknownId(id))?;
        self.check_dim(out.len())?;
        assert!(
            index < usize::from(self.slots[slot].exemplars),
            "exemplar index out of range"
        );
        self.arena.decode(self.arena_slot(slot, index), out);
        Ok(())
    }

    /// Fills `out` with the identities most similar to `query`, best first; returns how many.
    pub fn best_matches(
        &mut self,
        query: &[f32],
        out: &mut [Candidate],
    ) -> Result<usize, GalleryError> {
        self.prepare(query)?;
        Ok(self.rank_prepared(out))
    }

    /// Decides who `query` is, without changing the gallery.
    pub fn decide(&mut self, query: &[f32]) -> Result<Decision, GalleryError> {
        let mut top = [Candidate::default(); 2];
        let n = self.best_matches(query, &mut top)?;
        Ok(self.decision(&top[..n], None))
    }

    /// [`decide`](Self::decide) at time `now`: an identity seen within the policy's
    /// `recent_ms` also matches from `recent_threshold` on.
    pub fn decide_at(&mut self, query: &[f32], now: Timestamp) -> Result<Decision, GalleryError> {
        let mut top = [Candidate::default(); 2];
        let n = self.best_matches(query, &mut top)?;
        Ok(self.decision(&top[..n], Some(now)))
    }

    /// The camera's policy in one call: decide, then refresh a confident match, store an unknown
    /// person as a new provisional identity (evicting the least recently seen unpinned one when
    /// full), and leave ambiguous queries alone.
    pub fn observe(&mut self, query: &[f32], now: Timestamp) -> Result<Observation, GalleryError> {
        match self.decide_at(query, now)? {
            Decision::Match { best, .. } => {
                let exemplar = self.refresh(best.id, query, now)?;
                Ok(Observation::Known { best, exemplar })
            }
            Decision::Ambiguous { best, runner_up } => {
                Ok(Observation::Ambiguous { best, runner_up })
            }
            Decision::Unknown { best } => {
                let new = NewIdentity {
                    label: None,
                    pinned: false,
                    now,
                };
                match self.insert(query, new) {
                    Ok((id, evicted)) => Ok(Observation::New { id, evicted }),
                    Err(GalleryError::FullOfPinned { .. }) => Ok(Observation::Unstored { best }),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Adds a new identity with `embedding` as its first exemplar. When the gallery is full, the
    /// least recently seen unpinned identity is evicted (and returned); if every identity is
    /// pinned, nothing changes and this fails.
    pub fn insert(
        &mut self,
        embedding: &[f32],
        new: NewIdentity<'_>,
    ) -> Result<(PersonId, Option<PersonId>), GalleryError> {
        let label = make_label(new.label)?;
        self.prepare(embedding)?;
        if self.next_id == u32::MAX {
            return Err(GalleryError::IdsExhausted);
        }
        let id = PersonId(self.next_id);
        let (slot, evicted) = self.free_slot()?;
        self.next_id += 1;
        self.occupy(
            slot,
            Slot {
                occupied: true,
                pinned: new.pinned,
                remote: false,
                exemplars: 0,
                id,
                times_seen: 1,
                first_seen: new.now,
                last_seen: new.now,
                label,
            },
        );
        self.append_prepared(slot);
        Ok((id, evicted))
    }

    /// Records a sighting of `id` at `now` and offers `embedding` as an exemplar
    /// ([`Gallery::offer_exemplar`]) — unless `id` is pinned, whose exemplars only an operator
    /// changes.
    pub fn refresh(
        &mut self,
        id: PersonId,
        embedding: &[f32],
        now: Timestamp,
    ) -> Result<ExemplarUpdate, GalleryError> {
        let slot = self.find(id).ok_or(GalleryError::UnknownId(id))?;
        // An operator's enrolment is curated: automatic sightings do not change its exemplars
        // (a near-threshold false match would otherwise pull it towards someone else).
        let update = if self.slots[slot].pinned {
            self.check_dim(embedding.len())?;
            ExemplarUpdate::Kept
        } else {
            self.offer_at(slot, embedding)?
        };
        let s = &mut self.slots[slot];
        s.last_seen = s.last_seen.max(now);
        s.times_seen = s.times_seen.saturating_add(1);
        Ok(update)
    }

    /// Offers `embedding` as an exemplar of `id`: added while the identity has fewer than K;
    /// otherwise, of the K + 1 candidates, the most redundant one (highest similarity to its
    /// nearest other candidate; ties broken by the higher total similarity) is dropped, which
    /// keeps the exemplars spread over the views seen. Sighting metadata is not touched.
    pub fn offer_exemplar(
        &mut self,
        id: PersonId,
        embedding: &[f32],
    ) -> Result<ExemplarUpdate, GalleryError> {
        let slot = self.find(id).ok_or(GalleryError::UnknownId(id))?;
        self.offer_at(slot, embedding)
    }

    fn offer_at(&mut self, slot: usize, embedding: &[f32]) -> Result<ExemplarUpdate, GalleryError> {
        self.prepare(embedding)?;
        let count = usize::from(self.slots[slot].exemplars);
        if count < self.config.exemplars {
            self.append_prepared(slot);
            return Ok(ExemplarUpdate::Added);
        }
        // The candidate goes to the spare arena slot; compare all K + 1 pairwise.
        let spare = self.spare_slot();
        self.arena.encode(spare, self.query.unit());
        let k = self.config.exemplars;
        let at = |i: usize| if i == count { spare } else { slot * k + i };
        let redundancy = |i: usize| {
            let (mut nearest, mut total) = (f32::MIN, 0.0f32);
            for j in (0..=count).filter(|&j| j != i) {
                let s = self.arena.pair_similarity(&self.kernels, at(i), at(j));
                nearest = nearest.max(s);
                total += s;
            }
            (nearest, total)
        };
        // The most redundant stored exemplar (the earliest on a tie)...
        let (mut worst, mut worst_key) = (0, redundancy(0));
        for i in 1..count {
            let key = redundancy(i);
            if key > worst_key {
                (worst, worst_key) = (i, key);
            }
        }
        // ...is replaced only if the new embedding is strictly less redundant than it.
        if redundancy(count) >= worst_key {
            return Ok(ExemplarUpdate::Kept);
        }
        self.arena.copy_slot(spare, at(worst));
        Ok(ExemplarUpdate::Replaced(worst))
    }

    /// Changes an identity's label (`Some(None)` removes it) and/or pinned state (an
    /// operator's action).
    pub fn edit(
        &mut self,
        id: PersonId,
        label: Option<Option<&str>>,
        pinned: Option<bool>,
    ) -> Result<(), GalleryError> {
        let slot = self.find(id).ok_or(GalleryError::UnknownId(id))?;
        if let Some(label) = label {
            self.slots[slot].label = make_label(label)?;
        }
        if let Some(pinned) = pinned {
            self.slots[slot].pinned = pinned;
        }
        Ok(())
    }

    /// Removes an identity, pinned or not (an operator's action).
    pub fn remove(&mut self, id: PersonId) -> Result<(), GalleryError> {
        let slot = self.find(id).ok_or(GalleryError::UnknownId(id))?;
        self.slots[slot].occupied = false;
        self.slots[slot].exemplars = 0;
        self.len -= 1;
        Ok(())
    }

    /// Removes every unpinned identity last seen before `before` (`gallery.forget_after`);
    /// returns how many.
    pub fn forget_unseen(&mut self, before: Timestamp) -> usize {
        let mut forgotten = 0;
        for slot in &mut self.slots {
            if slot.occupied && !slot.pinned && slot.last_seen < before {
                slot.occupied = false;
                slot.exemplars = 0;
                self.len -= 1;
                forgotten += 1;
            }
        }
        forgotten
    }

    /// Puts an identity read from a file or an import back, keeping its id. `exemplars` yields
    /// dequantised vectors; at most K are kept (the first K).
    pub fn restore<'v>(
        &mut self,
        info: &IdentityInfo<'_>,
        exemplars: impl IntoIterator<Item = &'v [f32]>,
    ) -> Result<(), GalleryError> {
        let slot = self.restore_slot(info)?;
        for values in exemplars {
            self.check_dim(values.len())?;
            if !self.push_exemplar(slot, values) {
                self.remove(info.id)?;
                return Err(GalleryError::BadEmbedding);
            }
        }
        Ok(())
    }

    /// Marks `id` as another camera's (a shared copy): evicted first when room is needed.
    pub fn set_remote(&mut self, id: PersonId, remote: bool) {
        if let Some(slot) = self.find(id) {
            self.slots[slot].remote = remote;
        }
    }

    /// Makes room for one identity if the gallery is full: removes the least recently seen
    /// unpinned remote identity, else (unless `only_remote`) the least recently seen unpinned
    /// one. Returns what was removed; `None` when there was room or nothing may go.
    pub fn make_room(&mut self, only_remote: bool) -> Option<PersonId> {
        if self.len < self.slots.len() {
            return None;
        }
        let victim = self
            .victim()
            .filter(|&v| !only_remote || self.slots[v].remote)?;
        let id = self.slots[victim].id;
        self.remove(id).ok()?;
        Some(id)
    }

    /// The slot eviction takes: unpinned, remote before own, then the least recently seen.
    fn victim(&self) -> Option<usize> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.occupied && !s.pinned)
            .min_by_key(|(_, s)| (!s.remote, s.last_seen, s.times_seen, s.id))
            .map(|(i, _)| i)
    }

    /// Ensures the next new identity gets at least `next`.
    pub fn reserve_ids_below(&mut self, next: PersonId) {
        self.next_id = self.next_id.max(next.0);
    }

    pub(crate) fn restore_slot(&mut self, info: &IdentityInfo<'_>) -> Result<usize, GalleryError> {
        if self.find(info.id).is_some() {
            return Err(GalleryError::DuplicateId(info.id));
        }
        let label = make_label(info.label)?;
        let slot =
            self.slots
                .iter()
                .position(|s| !s.occupied)
                .ok_or(GalleryError::FullOfPinned {
                    capacity: self.capacity(),
                })?;
        self.occupy(
            slot,
            Slot {
                occupied: true,
                pinned: info.pinned,
                remote: false,
                exemplars: 0,
                id: info.id,
                times_seen: info.times_seen,
                first_seen: info.first_seen,
                last_seen: info.last_seen,
                label,
            },
        );
        self.next_id = self.next_id.max(info.id.0.saturating_add(1));
        Ok(slot)
    }

    /// Raw access for the file format: the arena slot of exemplar `index` of slot `slot`.
    pub(crate) fn arena_slot(&self, slot: usize, index: usize) -> usize {
        slot * self.config.exemplars + index
    }

    pub(crate) fn arena(&self) -> &Arena {
        &self.arena
    }

    pub(crate) fn occupied_slots(&self) -> impl Iterator<Item = (usize, IdentityInfo<'_>)> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.occupied)
            .map(|(i, s)| (i, s.info()))
    }

    /// Appends an exemplar to `slot` unless it already has K. False if `values` is zero or not
    /// finite.
    pub(crate) fn push_exemplar(&mut self, slot: usize, values: &[f32]) -> bool {
        if usize::from(self.slots[slot].exemplars) >= self.config.exemplars {
            return true;
        }
        if self.prepare(values).is_err() {
            return false;
        }
        self.append_prepared(slot);
        true
    }

    pub(crate) fn push_raw_exemplar(&mut self, slot: usize, bytes: &[u8], scale: f32) -> bool {
        let index = usize::from(self.slots[slot].exemplars);
        if index >= self.config.exemplars {
            return true;
        }
        let at = self.arena_slot(slot, index);
        if !self.arena.read_raw(at, bytes, scale) {
            return false;
        }
        self.slots[slot].exemplars += 1;
        true
    }

    fn occupy(&mut self, slot: usize, value: Slot) {
        if !self.slots[slot].occupied {
            self.len += 1;
        }
        self.slots[slot] = value;
    }

    fn find(&self, id: PersonId) -> Option<usize> {
        self.slots.iter().position(|s| s.occupied && s.id == id)
    }

    fn spare_slot(&self) -> usize {
        self.capacity() * self.config.exemplars
    }

    fn check_dim(&self, got: usize) -> Result<(), GalleryError> {
        if got != self.config.dim {
            return Err(GalleryError::Dimension {
                expected: self.config.dim,
                got,
            });
        }
        Ok(())
    }

    fn prepare(&mut self, query: &[f32]) -> Result<(), GalleryError> {
        self.check_dim(query.len())?;
        if !self.query.set(query, self.config.format) {
            return Err(GalleryError::BadEmbedding);
        }
        Ok(())
    }

    /// Stores the prepared query as the next exemplar of `slot` (which has fewer than K).
    fn append_prepared(&mut self, slot: usize) {
        let at = self.arena_slot(slot, usize::from(self.slots[slot].exemplars));
        self.arena.encode(at, self.query.unit());
        self.slots[slot].exemplars += 1;
    }

    /// A free slot: an empty one, else the least recently seen unpinned identity's (evicted).
    fn free_slot(&mut self) -> Result<(usize, Option<PersonId>), GalleryError> {
        if let Some(slot) = self.slots.iter().position(|s| !s.occupied) {
            return Ok((slot, None));
        }
        let victim = self.victim().ok_or(GalleryError::FullOfPinned {
            capacity: self.capacity(),
        })?;
        let evicted = self.slots[victim].id;
        log::debug!("gallery full: evicting identity {evicted}");
        Ok((victim, Some(evicted)))
    }

    fn rank_prepared(&self, out: &mut [Candidate]) -> usize {
        let mut filled = 0;
        let k = self.config.exemplars;
        for (slot, s) in self.slots.iter().enumerate().filter(|(_, s)| s.occupied) {
            let count = usize::from(s.exemplars);
            let first = slot * k;
            let score = match self.policy.aggregation {
                Aggregation::Max => (first..first + count)
                    .map(|e| self.arena.similarity(&self.kernels, e, &self.query))
                    .fold(f32::MIN, f32::max),
                Aggregation::Mean => {
                    (first..first + count)
                        .map(|e| self.arena.similarity(&self.kernels, e, &self.query))
                        .sum::<f32>()
                        / count.max(1) as f32
                }
            };
            insert_top(
                out,
                &mut filled,
                Candidate {
                    id: s.id,
                    similarity: Similarity(score),
                },
            );
        }
        filled
    }

    fn decision(&self, top: &[Candidate], now: Option<Timestamp>) -> Decision {
        let Some(&best) = top.first() else {
            return Decision::Unknown { best: None };
        };
        let runner_up = top.get(1).copied();
        if best.similarity.0 < self.policy.threshold && !self.recent_match(best, now) {
            return Decision::Unknown { best: Some(best) };
        }
        match runner_up {
            Some(r) if best.similarity.0 - r.similarity.0 < self.policy.margin => {
                Decision::Ambiguous { best, runner_up: r }
            }
            _ => Decision::Match { best, runner_up },
        }
    }

    /// Whether `best` passes the short-term rule: seen at most `recent_ms` before `now`, at or
    /// above `recent_threshold`.
    fn recent_match(&self, best: Candidate, now: Option<Timestamp>) -> bool {
        let p = &self.policy;
        let (Some(now), true) = (
            now,
            p.recent_ms > 0 && best.similarity.0 >= p.recent_threshold,
        ) else {
            return false;
        };
        self.slots
            .iter()
            .find(|s| s.occupied && s.id == best.id)
            .is_some_and(|s| now.0.saturating_sub(s.last_seen.0) <= p.recent_ms)
    }
}

/// Keeps `out[..filled]` sorted best first (ties: lower id first) and at most `out.len()` long.
fn insert_top(out: &mut [Candidate], filled: &mut usize, c: Candidate) {
    let better = |a: &Candidate, b: &Candidate| {
        a.similarity.0 > b.similarity.0 || (a.similarity.0 == b.similarity.0 && a.id < b.id)
    };
    let mut at = *filled;
    while at > 0 && better(&c, &out[at - 1]) {
        at -= 1;
    }
    if at >= out.len() {
        return;
    }
    let end = (*filled + 1).min(out.len());
    out.copy_within(at..end - 1, at + 1);
    out[at] = c;
    *filled = end;
}

fn make_label(label: Option<&str>) -> Result<heapless::String<LABEL_CAPACITY>, GalleryError> {
    let mut out = heapless::String::new();
    if let Some(label) = label {
        out.push_str(label)
            .map_err(|_| GalleryError::LabelTooLong {
                label: label.to_owned(),
                len: label.len(),
            })?;
    }
    Ok(out)
}

impl Slot {
    fn info(&self) -> IdentityInfo<'_> {
        IdentityInfo {
            id: self.id,
            label: (!self.label.is_empty()).then_some(self.label.as_str()),
            first_seen: self.first_seen,
            last_seen: self.last_seen,
            times_seen: self.times_seen,
            pinned: self.pinned,
            exemplars: usize::from(self.exemplars),
        }
    }
}

#[cfg(test)]
mod tests;
