//! reidcam's integration tests: one binary, one module per area.

mod common;
mod errors;
mod parity;
mod resize;
