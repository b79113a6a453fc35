//! Stated caps on every count and size that comes from outside: flags,
//! config files, JSONL requests and model files.
//!
//! Each is far above anything a real run needs and far below what would
//! overflow the planner's arithmetic or ask the allocator for terabytes, so
//! a hostile or mistyped value is refused with a message naming the value
//! and the cap before anything is allocated. The README lists them.

use crate::error::{Error, Result};

/// CPU threads. More than any board or server core count; each thread
/// costs a stack, and past a few thousand `spawn` itself fails.
pub const MAX_THREADS: usize = 1024;

/// Sequences decoded together (`--batch`, `[pipeline] batch`).
pub const MAX_BATCH: usize = 256;

/// Positions per forward pass while reading a prompt (`--chunk`). The CUDA
/// launch geometry puts positions on a grid axis limited to 65535.
pub const MAX_CHUNK: usize = 65_535;

/// KV cache positions (`--ctx-size`, `[generation] context`): 16M tokens,
/// two orders of magnitude past today's longest-context models.
pub const MAX_CONTEXT: usize = 1 << 24;

/// Transformer layers a model file may declare (the largest public models
/// have under 200).
pub const MAX_LAYERS: usize = 4096;

/// Width of one attention head (`*.attention.key_length`): public models
/// use 64-256.
pub const MAX_HEAD_DIM: usize = 4096;

/// Bytes in one line of `flea run` input (a prompt or a JSONL request).
/// A longer line is answered with an error record and skipped.
pub const MAX_LINE_BYTES: usize = 4 << 20;

/// `value` must be in `1..=max`; `name` is the flag or key as the user
/// wrote it. Returns the error that `make` builds from the message.
pub fn check_count(
    name: &str,
    value: usize,
    max: usize,
    make: fn(String) -> Error,
) -> Result<usize> {
    if value == 0 {
        return Err(make(format!("{name}: expected at least 1, found 0")));
    }
    if value > max {
        return Err(make(format!(
            "{name}: expected at most {max}, found {value}"
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_outside_the_range_name_value_and_cap() {
        assert_eq!(
            check_count("--threads", 4, MAX_THREADS, Error::usage).unwrap(),
            4
        );
        let e = check_count("--threads", 0, MAX_THREADS, Error::usage).unwrap_err();
        assert_eq!(e.message, "--threads: expected at least 1, found 0");
        let e = check_count("--threads", usize::MAX, MAX_THREADS, Error::usage).unwrap_err();
        assert_eq!(
            e.message,
            format!("--threads: expected at most 1024, found {}", usize::MAX)
        );
    }
}
