//! reidcam: edge smart-camera firmware that re-identifies people.
//!
//! The data path, one module per stage (see `ARCHITECTURE.md`), wired by `daemon` → `pipeline`:
//! `capture` (camera, replays, synthetic scene) → `detect` (person detector, motion, zones) →
//! `track` (IoU + constant velocity) → `quality` (which crops are worth embedding) →
//! `preprocess` (Pillow-exact resize + normalise) → `embed` (tract; the only module that imports
//! it) → `gallery` (identities within a memory budget) → `events`.
//! `manifest` describes a model's input and output; `bench` measures the inference path;
//! `eval` runs the Market-1501 protocol and threshold calibration on the same path.

pub mod bench;
pub mod board;
pub mod capture;
pub mod config;
pub mod daemon;
pub mod detect;
pub mod embed;
pub mod eval;
pub mod events;
pub mod frame;
pub mod gallery;
pub mod http;
pub mod manifest;
pub mod mqtt;
pub mod npy;
pub mod pipeline;
pub mod preprocess;
pub mod quality;
pub mod simd;
pub mod thumbs;
pub mod track;

pub use embed::{EmbedConfig, EmbedError, Embedder, Embedding, Embeddings, ManifestChoice};
pub use frame::{FrameError, Rect, RgbImage, RgbView};
pub use manifest::ModelManifest;
pub use preprocess::Preprocessor;
