//! reidcam's integration tests: one binary, one module per area.

mod alloc_count;
mod broker;
mod capture;
mod common;
mod daemon;
mod docs;
mod errors;
mod eval;
mod gallery;
mod http;
mod kernels;
mod mqtt;
mod parity;
mod resize;
mod share;

#[global_allocator]
static ALLOCATOR: alloc_count::Counting = alloc_count::Counting;
