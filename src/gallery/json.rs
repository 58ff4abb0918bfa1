//! JSON export and import: for inspection, and for migrating a gallery between storage formats,
//! budgets or firmware versions. Exemplars are written dequantised (f32).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::file::ModelTag;
use super::{Gallery, GalleryError, IdentityInfo, PersonId, StorageFormat, Timestamp};

/// The JSON document's version, bumped on incompatible changes.
pub const JSON_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GalleryJson {
    pub reidcam_gallery: u32,
    pub model: String,
    pub dim: usize,
    /// The format the embeddings were stored in before export (informative).
    pub format: StorageFormat,
    pub exemplars_per_identity: usize,
    pub next_id: PersonId,
    pub identities: Vec<IdentityJson>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityJson {
    pub id: PersonId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    pub pinned: bool,
    /// Milliseconds since the Unix epoch.
    pub first_seen: Timestamp,
    pub last_seen: Timestamp,
    pub times_seen: u32,
    /// Unit-norm embeddings, as stored (dequantised).
    pub exemplars: Vec<Vec<f32>>,
}

#[derive(Debug, thiserror::Error)]
#[error("{path}: {what}")]
pub struct ImportError {
    pub path: PathBuf,
    pub what: String,
}

/// The whole gallery as a JSON document, identities in id order.
pub fn export(gallery: &Gallery, model: &str) -> GalleryJson {
    let config = gallery.config();
    let mut identities: Vec<IdentityJson> = gallery
        .identities()
        .map(|info| {
            let exemplars = (0..info.exemplars)
                .map(|e| {
                    let mut v = vec![0.0; config.dim];
                    gallery
                        .exemplar(info.id, e, &mut v)
                        .expect("identity listed by the gallery");
                    v
                })
                .collect();
            IdentityJson {
                id: info.id,
                label: info.label.map(str::to_owned),
                pinned: info.pinned,
                first_seen: info.first_seen,
                last_seen: info.last_seen,
                times_seen: info.times_seen,
                exemplars,
            }
        })
        .collect();
    identities.sort_by_key(|i| i.id);
    GalleryJson {
        reidcam_gallery: JSON_VERSION,
        model: model.to_owned(),
        dim: config.dim,
        format: config.format,
        exemplars_per_identity: config.exemplars,
        next_id: gallery.next_id(),
        identities,
    }
}

/// Adds every identity of `doc` to `gallery`, keeping ids. Checked first, as a whole: the model
/// and dimension must match, ids must be free and unique, vectors `dim` long and finite, and the
/// gallery must have room; on any error the gallery is unchanged.
pub fn import(
    gallery: &mut Gallery,
    model: &ModelTag,
    doc: &GalleryJson,
    source: &Path,
) -> Result<usize, GalleryError> {
    let fail = |what: String| {
        GalleryError::Import(ImportError {
            path: source.to_owned(),
            what,
        })
    };
    if doc.reidcam_gallery != JSON_VERSION {
        return Err(fail(format!(
            "reidcam_gallery is {}, this build reads version {JSON_VERSION}",
            doc.reidcam_gallery
        )));
    }
    if doc.model != model.name || doc.dim != model.dim {
        return Err(fail(format!(
            "exported from model {:?} ({}-d), but the model in use is {:?} ({}-d)",
            doc.model, doc.dim, model.name, model.dim
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for identity in &doc.identities {
        let id = identity.id;
        if !seen.insert(id) {
            return Err(fail(format!("identity {id} appears twice")));
        }
        if gallery.get(id).is_some() {
            return Err(fail(format!(
                "identity {id} already exists in the gallery (remove it first)"
            )));
        }
        if identity.exemplars.is_empty() {
            return Err(fail(format!("identity {id} has no exemplars")));
        }
        for (e, v) in identity.exemplars.iter().enumerate() {
            if v.len() != model.dim {
                return Err(fail(format!(
                    "identity {id}, exemplar {e}: {} values, expected {}",
                    v.len(),
                    model.dim
                )));
            }
            if !v.iter().all(|x| x.is_finite()) || v.iter().all(|&x| x == 0.0) {
                return Err(fail(format!(
                    "identity {id}, exemplar {e}: zero or not finite"
                )));
            }
        }
        if let Some(label) = &identity.label
            && label.len() > super::LABEL_CAPACITY
        {
            return Err(fail(format!(
                "identity {id}: label is {} bytes, at most {} allowed",
                label.len(),
                super::LABEL_CAPACITY
            )));
        }
    }
    let free = gallery.capacity() - gallery.len();
    if doc.identities.len() > free {
        return Err(fail(format!(
            "{} identities do not fit: the gallery has room for {free} more (raise the budget)",
            doc.identities.len()
        )));
    }
    for identity in &doc.identities {
        let info = IdentityInfo {
            id: identity.id,
            label: identity.label.as_deref(),
            first_seen: identity.first_seen,
            last_seen: identity.last_seen,
            times_seen: identity.times_seen,
            pinned: identity.pinned,
            exemplars: identity.exemplars.len(),
        };
        gallery.restore(&info, identity.exemplars.iter().map(Vec::as_slice))?;
    }
    gallery.reserve_ids_below(doc.next_id);
    Ok(doc.identities.len())
}
