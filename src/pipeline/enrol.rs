//! Enrolment: the person in view (the enroll button, `POST /api/v1/enrol`) or a picture of a
//! person (an uploaded crop), as a pinned identity.

use std::time::Duration;

use super::{CropEmbedder, Held, Pipeline, PipelineError, unit_mean};
use crate::events::EventKind;
use crate::frame::RgbView;
use crate::gallery::{NewIdentity, PersonId, Timestamp};

/// Why nobody was enrolled.
#[derive(Debug, PartialEq, Eq)]
pub enum NotEnrolled {
    /// No confirmed track with an embedding is in view.
    NobodyInView,
    /// That track is not in view, or has no embedding yet.
    NoSuchTrack(u64),
}

impl std::fmt::Display for NotEnrolled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotEnrolled::NobodyInView => {
                write!(f, "no confirmed person with an embedding is in view")
            }
            NotEnrolled::NoSuchTrack(t) => write!(
                f,
                "track {t} is not in view or has no embedding yet (GET /api/v1/frame lists the tracks)"
            ),
        }
    }
}

impl<E: CropEmbedder> Pipeline<E> {
    /// Enrols a track as a pinned identity: `track`, or the tallest confirmed track seen in
    /// this frame; it must have an embedding. A track that holds an identity (recognised, or
    /// made by it) pins that one (named if `label` is given, the track's mean added as an
    /// exemplar); otherwise a new pinned identity is made. An enrol event goes out.
    pub fn enrol_track(
        &mut self,
        track: Option<u64>,
        label: Option<&str>,
        frame: u64,
        stream_time: Duration,
    ) -> Result<Result<PersonId, NotEnrolled>, PipelineError> {
        let candidates = self
            .tracker
            .tracks()
            .filter(|(slot, t)| t.confirmed && self.states[*slot].embeddings > 0);
        let chosen = match track {
            Some(id) => candidates
                .filter(|(_, t)| t.id == id)
                .map(|(slot, _)| slot)
                .next(),
            None => candidates
                .filter(|(_, t)| t.seen_now)
                .max_by_key(|(_, t)| t.rect.height)
                .map(|(slot, _)| slot),
        };
        let Some(slot) = chosen else {
            return Ok(Err(match track {
                Some(id) => NotEnrolled::NoSuchTrack(id),
                None => NotEnrolled::NobodyInView,
            }));
        };
        let s = &mut self.states[slot];
        if !unit_mean(&s.sum, &mut self.query) {
            return Ok(Err(NotEnrolled::NobodyInView));
        }
        let held = s.held.and_then(|h| h.id());
        let id = match held.filter(|id| self.gallery.get(*id).is_some()) {
            // Someone the gallery has (matched, or made by this track): that identity is
            // pinned, named if a name is given, and keeps this view of them. No duplicate.
            Some(id) => {
                s.created = None;
                self.gallery.edit(id, label.map(Some), Some(true))?;
                self.gallery.offer_exemplar(id, &self.query)?;
                id
            }
            None => {
                if let Some(created) = s.created.take() {
                    let _ = self.gallery.remove(created);
                }
                let new = NewIdentity {
                    label,
                    pinned: true,
                    now: Timestamp::now(),
                };
                self.gallery.insert(&self.query, new)?.0
            }
        };
        s.held = Some(Held::Known {
            id,
            similarity: 1.0,
            runner_up: None,
        });
        // An operator chose this view of the person: its picture wins over any kept before.
        if let Some(q) = &mut s.best_quality {
            *q = f32::INFINITY;
        }
        self.dirty = true;
        self.stats.enrolled += 1;
        self.emit(EventKind::Enrol, slot, frame, stream_time, "")?;
        self.states[slot].entered = true;
        Ok(Ok(id))
    }

    /// Enrols the person in `image`, a picture cropped to them (as `reidcam gallery enroll`
    /// takes), as a pinned identity. Not on the per-frame path: a larger picture than the
    /// camera's frame grows the resize buffers once. The picture must pass the crop gate's size
    /// and shape tests ([`CropGate::check_picture`](crate::quality::CropGate::check_picture)) and its sharpness test, as a crop of the
    /// camera's would: a thumbnail-sized or blurred picture would make an identity that matches
    /// strangers.
    pub fn enrol_image(
        &mut self,
        image: RgbView<'_>,
        label: Option<&str>,
    ) -> Result<PersonId, PipelineError> {
        let rect = crate::frame::Rect {
            x: 0,
            y: 0,
            width: image.width(),
            height: image.height(),
        };
        self.gate
            .check_picture(image.width(), image.height())
            .map_err(PipelineError::Picture)?;
        self.pre.run(image, rect, self.embedder.input())?;
        let spec = self.embedder.input_spec();
        if let Err(why) = self
            .gate
            .check_sharpness(self.pre.resized(), spec.width as usize)
        {
            debug_assert_eq!(why, crate::quality::Rejection::Blur);
            return Err(PipelineError::Picture(format!(
                "the picture is too blurred to enrol (sharpness below quality.min_sharpness = {})",
                self.gate.config().min_sharpness
            )));
        }
        let embedding = self.embedder.run()?;
        self.query.copy_from_slice(embedding);
        let new = NewIdentity {
            label,
            pinned: true,
            now: Timestamp::now(),
        };
        let (id, _) = self.gallery.insert(&self.query, new)?;
        self.dirty = true;
        self.stats.enrolled += 1;
        Ok(id)
    }

    /// The crop [`enrol_image`](Self::enrol_image) embedded last, resized to the model's input.
    pub fn last_resized(&self) -> crate::events::Pixels<'_> {
        let spec = self.embedder.input_spec();
        crate::events::Pixels {
            rgb: self.pre.resized(),
            width: spec.width,
            height: spec.height,
            quality: f32::INFINITY,
        }
    }
}
