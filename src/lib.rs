//! Flea-Flicker: run language models larger than device memory.
//!
//! Dependencies point one way: `cli` (the binary) -> `generate` -> `engine`
//! -> {`residency`, `backend`, `model`} -> {`gguf`, `quant`}; backends know
//! nothing of files, configs or plans (tests/dependencies.rs checks). See
//! `../shared/DESIGN.md` for the architecture.

pub mod backend;
pub mod bench;
pub mod chat;
pub mod config;
pub mod engine;
pub mod error;
#[doc(hidden)]
pub mod fuzz;
pub mod generate;
pub mod gguf;
pub mod kv_cache;
pub mod kv_disk;
pub mod limits;
pub mod model;
pub mod output_file;
pub mod platform;
pub mod quant;
pub mod residency;
pub mod synth;
pub mod tokenizer;

pub use error::{Error, ErrorKind, Result};
