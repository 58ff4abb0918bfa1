//! The gallery's vocabulary: ids, similarities, timestamps, its configuration and errors, and
//! what its operations return. [`Gallery`](super::Gallery) itself is in `mod.rs`.

use std::fmt;

use super::vectors::{Arena, PreparedQuery};
use super::{
    IDENTITY_SLOT_BYTES, LABEL_CAPACITY, MAX_DIM, MAX_EXEMPLARS, StorageFormat, file, json,
};

/// A stable identity number. Never reused within a gallery.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
pub struct PersonId(pub u32);

impl fmt::Display for PersonId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// A cosine similarity in [-1, 1].
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd, Default)]
pub struct Similarity(pub f32);

impl fmt::Display for Similarity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.4}", self.0)
    }
}

/// Milliseconds since the Unix epoch. The gallery never reads a clock: callers pass the time.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(pub u64);

impl Timestamp {
    pub fn now() -> Self {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(since.as_millis() as u64)
    }
}

impl fmt::Display for Timestamp {
    /// RFC 3339, UTC, millisecond precision.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (secs, millis) = (self.0 / 1000, self.0 % 1000);
        let (days, rem) = (secs / 86_400, secs % 86_400);
        // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
        let z = days as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        )
    }
}

/// How an identity's exemplar similarities combine into its score.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Aggregation {
    /// The best exemplar.
    Max,
    /// The mean over exemplars: the default, as it ranks better on cuhk03-val (rank-1 44.35 vs
    /// 41.46 with osnet_x0_25_msmt17, K = 8; see `docs/gallery.md`).
    Mean,
}

impl std::str::FromStr for Aggregation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "max" => Ok(Aggregation::Max),
            "mean" => Ok(Aggregation::Mean),
            _ => Err(format!("unknown aggregation {s:?}: expected max or mean")),
        }
    }
}

/// Storage shape and budget: fixed for the life of a gallery.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GalleryConfig {
    /// Embedding dimension (from the model).
    pub dim: usize,
    /// Exemplars kept per identity (K).
    pub exemplars: usize,
    pub format: StorageFormat,
    /// Heap bytes the gallery may use, all of it allocated at start-up.
    pub budget_bytes: usize,
}

/// How queries are decided.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MatchPolicy {
    /// Minimum similarity for a match (per model: `[matching] threshold` in its manifest).
    pub threshold: f32,
    /// A match must beat the runner-up identity by at least this much, else it is ambiguous.
    pub margin: f32,
    pub aggregation: Aggregation,
    /// Short-term re-identification: an identity last seen at most `recent_ms` ago matches from
    /// `recent_threshold` on (a person whose track broke as they crossed someone); 0: off.
    pub recent_ms: u64,
    pub recent_threshold: f32,
}

impl Default for MatchPolicy {
    fn default() -> Self {
        MatchPolicy {
            threshold: 0.7,
            margin: 0.05,
            aggregation: Aggregation::Mean,
            recent_ms: 0,
            recent_threshold: 1.0,
        }
    }
}

impl GalleryConfig {
    /// Heap bytes a gallery of `identities` takes: the capacity formula of the module docs.
    pub fn heap_bytes(&self, identities: usize) -> usize {
        identities * IDENTITY_SLOT_BYTES
            + Arena::bytes(self.format, identities * self.exemplars + 1, self.dim)
            + PreparedQuery::bytes(self.dim)
    }

    /// Bytes each identity adds (slot + K exemplars).
    pub fn bytes_per_identity(&self) -> usize {
        self.heap_bytes(1) - self.heap_bytes(0)
    }

    /// How many identities fit in the budget.
    pub fn capacity(&self) -> Result<usize, GalleryError> {
        self.validate()?;
        let fixed = self.heap_bytes(0);
        let capacity = self.budget_bytes.saturating_sub(fixed) / self.bytes_per_identity();
        if capacity == 0 {
            return Err(GalleryError::BudgetTooSmall {
                budget: self.budget_bytes,
                needed: self.heap_bytes(1),
            });
        }
        Ok(capacity)
    }

    fn validate(&self) -> Result<(), GalleryError> {
        if self.dim == 0 || self.dim > MAX_DIM {
            return Err(GalleryError::Config(format!(
                "dimension {} is out of range: expected 1..={MAX_DIM}",
                self.dim
            )));
        }
        if self.exemplars == 0 || self.exemplars > MAX_EXEMPLARS {
            return Err(GalleryError::Config(format!(
                "exemplars per identity {} is out of range: expected 1..={MAX_EXEMPLARS}",
                self.exemplars
            )));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GalleryError {
    #[error("gallery budget of {budget} bytes is too small: one identity needs {needed} bytes")]
    BudgetTooSmall { budget: usize, needed: usize },
    #[error("gallery configuration: {0}")]
    Config(String),
    #[error("embedding has {got} values, the gallery holds {expected}-d embeddings")]
    Dimension { expected: usize, got: usize },
    #[error("embedding is zero or not finite")]
    BadEmbedding,
    #[error("label {label:?} is {len} bytes long: at most {LABEL_CAPACITY} allowed")]
    LabelTooLong { label: String, len: usize },
    #[error("no identity {0} in the gallery")]
    UnknownId(PersonId),
    #[error("identity {0} already exists")]
    DuplicateId(PersonId),
    #[error(
        "gallery is full: all {capacity} identities are pinned (remove one, or raise the budget)"
    )]
    FullOfPinned { capacity: usize },
    /// Ids are never reused (events and other cameras refer to them): once an identity holds the
    /// last id (only a file or an import can bring one that high), no new identity can be made.
    #[error(
        "no identity ids left: identity {} exists and ids are never reused (export, renumber, import)",
        u32::MAX
    )]
    IdsExhausted,
    #[error(transparent)]
    File(#[from] file::FileError),
    #[error(transparent)]
    Import(#[from] json::ImportError),
}

/// One identity as the gallery reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct IdentityInfo<'a> {
    pub id: PersonId,
    pub label: Option<&'a str>,
    pub first_seen: Timestamp,
    pub last_seen: Timestamp,
    pub times_seen: u32,
    /// Enrolled by an operator: never evicted, only removed by an operator.
    pub pinned: bool,
    pub exemplars: usize,
}

/// Metadata for a new identity.
#[derive(Clone, Copy, Debug)]
pub struct NewIdentity<'a> {
    pub label: Option<&'a str>,
    pub pinned: bool,
    pub now: Timestamp,
}

/// An identity and its aggregated similarity to a query.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct Candidate {
    pub id: PersonId,
    pub similarity: Similarity,
}

/// What the gallery makes of a query.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Decision {
    /// `best` passes the threshold and beats the runner-up by the margin.
    Match {
        best: Candidate,
        runner_up: Option<Candidate>,
    },
    /// Two identities are within the margin of each other, the best above the threshold.
    Ambiguous {
        best: Candidate,
        runner_up: Candidate,
    },
    /// Nobody passes the threshold (`best` is the closest, if the gallery is not empty).
    Unknown { best: Option<Candidate> },
}

/// What [`Gallery::observe`] did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Observation {
    /// A confident match; the identity was refreshed.
    Known {
        best: Candidate,
        exemplar: ExemplarUpdate,
    },
    /// Nobody matched: a new provisional identity, possibly evicting the least recently seen one.
    New {
        id: PersonId,
        evicted: Option<PersonId>,
    },
    /// Too close to call: nothing changed.
    Ambiguous {
        best: Candidate,
        runner_up: Candidate,
    },
    /// Nobody matched and the gallery is full of pinned identities: not stored.
    Unstored { best: Option<Candidate> },
}

/// What a refresh did to an identity's exemplars.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExemplarUpdate {
    /// Fewer than K exemplars: the new one was added.
    Added,
    /// Exemplar at this index was the most redundant of the K + 1 and was replaced.
    Replaced(usize),
    /// The new embedding was the most redundant: exemplars unchanged.
    Kept,
}
