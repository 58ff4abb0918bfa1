//! Who a track is: its crops' embeddings summed, and the gallery's decision on their mean
//! (a new identity, a known one, or undecided), kept or revised as more crops come.

use std::time::Instant;

use crate::gallery::{Decision, GalleryError, NewIdentity, Observation};

use super::{CropEmbedder, Held, Pipeline, PipelineError};

impl<E: CropEmbedder> Pipeline<E> {
    /// Adds `latest` to the track's sum (or restarts the sum from it).
    pub(super) fn accumulate(&mut self, slot: usize, restart: bool) {
        let s = &mut self.states[slot];
        if restart {
            s.sum.copy_from_slice(&s.latest);
            s.embeddings = 1;
        } else {
            for (acc, v) in s.sum.iter_mut().zip(&s.latest) {
                *acc += v;
            }
            s.embeddings += 1;
        }
    }

    /// Decides who the track is from its aggregated embedding; true if that is news (first
    /// decision, or a different one).
    pub(super) fn decide(&mut self, slot: usize) -> Result<bool, PipelineError> {
        let started = Instant::now();
        let now = self.gallery_time();
        let s = &mut self.states[slot];
        if !unit_mean(&s.sum, &mut self.query) {
            return Ok(false);
        }
        let news = match s.held {
            None => {
                let held = match self.gallery.observe(&self.query, now)? {
                    Observation::Known { best, .. } => {
                        self.stats.matches_known += 1;
                        Held::Known {
                            id: best.id,
                            similarity: best.similarity.0,
                            runner_up: None,
                        }
                    }
                    Observation::New { id, .. } => {
                        self.stats.identities_new += 1;
                        s.created = Some(id);
                        Held::New { id, closest: None }
                    }
                    Observation::Ambiguous { best, runner_up } => {
                        self.stats.ambiguous += 1;
                        Held::Ambiguous {
                            best: best.into(),
                            runner_up: runner_up.into(),
                        }
                    }
                    Observation::Unstored { best } => Held::Unstored {
                        closest: best.map(Into::into),
                    },
                };
                self.dirty = true;
                s.held = Some(held);
                true
            }
            Some(held) => match self.gallery.decide_at(&self.query, now)? {
                Decision::Match { best, .. } if Some(best.id) == held.id() => {
                    // Still the same person: a new view of them for the gallery.
                    self.gallery.refresh(best.id, &self.query, now)?;
                    self.dirty = true;
                    false
                }
                Decision::Match { best, runner_up } => {
                    // Someone else after all (or an undecided track resolved).
                    if let Some(created) = s.created.take()
                        && created != best.id
                    {
                        // The provisional identity this track made was a duplicate.
                        let _ = self.gallery.remove(created);
                    }
                    self.gallery.refresh(best.id, &self.query, now)?;
                    self.dirty = true;
                    self.stats.matches_known += 1;
                    s.held = Some(Held::Known {
                        id: best.id,
                        similarity: best.similarity.0,
                        runner_up: runner_up.map(Into::into),
                    });
                    true
                }
                Decision::Unknown { best } if held.id().is_none() => {
                    // Undecided until now, and clearly nobody known: a new identity.
                    let new = NewIdentity {
                        label: None,
                        pinned: false,
                        now,
                    };
                    match self.gallery.insert(&self.query, new) {
                        Ok((id, _)) => {
                            self.stats.identities_new += 1;
                            s.created = Some(id);
                            s.held = Some(Held::New {
                                id,
                                closest: best.map(Into::into),
                            });
                            self.dirty = true;
                            true
                        }
                        // No room or no id left: the track stays unknown, the run goes on.
                        Err(GalleryError::FullOfPinned { .. } | GalleryError::IdsExhausted) => {
                            false
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                // Ambiguous or unknown for a track that already has an identity: keep it.
                _ => false,
            },
        };
        self.stats.gallery += started.elapsed();
        Ok(news)
    }
}

/// The direction of a track's embedding sum (its mean, L2-normalised) into `out`; false if the
/// sum is zero or not finite.
pub(super) fn unit_mean(sum: &[f32], out: &mut [f32]) -> bool {
    let norm = crate::embed::dot(sum, sum).sqrt();
    if norm == 0.0 || !norm.is_finite() {
        return false;
    }
    for (o, v) in out.iter_mut().zip(sum) {
        *o = v / norm;
    }
    true
}
