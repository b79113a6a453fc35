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

/// SmolLM2-135M-Instruct Q4_1, which is not among the fixtures (98 MB):
/// `scripts/fetch-smollm2.sh` fetches it. `$FLEA_SMOLLM2` if set (it must
/// then exist), else the script's default cache path
/// (`${FLEA_MODEL_CACHE:-$HOME/.cache/flea}/SmolLM2-135M-Instruct.Q4_1.gguf`)
/// if the file is there. When it is absent the test should skip: this says so
/// on stderr and returns `None`; but with `FLEA_REQUIRE_REAL_MODELS=1` (CI
/// sets it) absence fails the test, so a skip can never pass silently.
pub fn smollm2() -> Option<PathBuf> {
    const NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
    let required = std::env::var_os("FLEA_REQUIRE_REAL_MODELS").is_some_and(|v| v == "1");
    if let Some(path) = std::env::var_os("FLEA_SMOLLM2") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "FLEA_SMOLLM2={} is not a file (run scripts/fetch-smollm2.sh)",
            path.display()
        );
        return Some(path);
    }
    let cache = match std::env::var_os("FLEA_MODEL_CACHE") {
        Some(dir) => Some(PathBuf::from(dir)),
        None => std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/flea")),
    };
    let path = cache.map(|dir| dir.join(NAME));
    match path {
        Some(path) if path.is_file() => Some(path),
        _ => {
            let looked = path.map_or("no FLEA_MODEL_CACHE or HOME".into(), |p| {
                p.display().to_string()
            });
            assert!(
                !required,
                "FLEA_REQUIRE_REAL_MODELS=1 but SmolLM2 is not fetched (FLEA_SMOLLM2 unset, {looked} absent); run scripts/fetch-smollm2.sh"
            );
            // Written to the stderr handle, not with eprintln!, which the
            // test harness captures and shows only for failing tests: a skip
            // must show in a passing run.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIP: SmolLM2 not fetched; run scripts/fetch-smollm2.sh (FLEA_SMOLLM2 unset, {looked} absent)"
            );
            None
        }
    }
}
