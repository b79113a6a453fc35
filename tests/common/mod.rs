//! The one way tests reach `../shared/fixtures`: read in place, never copied.
#![allow(dead_code)]

use std::path::PathBuf;

/// Root of the shared fixtures: `$FLEA_FIXTURES`, else `../shared/fixtures`
/// beside the project root.
pub fn fixtures_dir() -> PathBuf {
    match std::env::var_os("FLEA_FIXTURES") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures"),
    }
}

/// Path of a fixture file; fails the test naming the path if it is missing.
pub fn fixture(relative: &str) -> PathBuf {
    let path = fixtures_dir().join(relative);
    assert!(
        path.exists(),
        "fixture not found: {} (set FLEA_FIXTURES to the fixtures folder)",
        path.display()
    );
    path
}

/// A fixture model under `models/`.
pub fn model(name: &str) -> PathBuf {
    fixture(&format!("models/{name}"))
}

/// The five synth-256 models, which share weights across quantizations.
pub const SYNTH_MODELS: [&str; 5] = [
    "synth-256-Q3_K_M",
    "synth-256-Q3_K_S",
    "synth-256-Q4_K_M",
    "synth-256-Q6_K",
    "synth-256-Q8_0",
];

/// The 32-weight block format models under `legacy/` (one random llama,
/// every matrix in one format).
pub const LEGACY_MODELS: [&str; 5] = [
    "synth-64-Q4_0",
    "synth-64-Q4_1",
    "synth-64-Q5_0",
    "synth-64-Q5_1",
    "synth-64-IQ4_NL",
];

/// Read a little-endian f32 file.
pub fn read_f32_file(relative: &str) -> Vec<f32> {
    let bytes = std::fs::read(fixture(relative)).expect("read fixture");
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}
