//! Flea-Flicker: run language models larger than device memory.
//!
//! Dependencies point one way: `generate` -> `engine` -> `backend`, `model`
//! -> `gguf`, `quant`. See `../shared/DESIGN.md` for the architecture.

pub mod error;
pub mod gguf;
pub mod quant;

pub use error::{Error, ErrorKind, Result};
