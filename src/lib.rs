//! Flea-Flicker: run language models larger than device memory.
//!
//! Dependencies point one way: `generate` -> `engine` -> `backend`, `model`
//! -> `gguf`, `quant`. See `../shared/DESIGN.md` for the architecture.

pub mod backend;
pub mod bench;
pub mod config;
pub mod engine;
pub mod error;
#[doc(hidden)]
pub mod fuzz;
pub mod generate;
pub mod gguf;
pub mod kv_cache;
pub mod limits;
pub mod model;
pub mod output_file;
pub mod pipeline;
pub mod platform;
pub mod quant;
pub mod residency;
pub mod sampler;
pub mod sequence;
pub mod speculative;
pub mod synth;
pub mod tokenizer;

pub use error::{Error, ErrorKind, Result};
