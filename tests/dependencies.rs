//! The dependency arrows of `../shared/DESIGN.md`, checked over the source:
//! `cli` -> `generate` -> `engine` -> {`residency`, `backend`, `model`} ->
//! {`gguf`, `quant`}. A backend computes; it knows nothing of files,
//! configs, plans, the engine that drives it or the command line. The
//! planner (`residency`) knows no backend. A line that breaks a rule fails
//! this test with its file and line.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// Every `crate::X` / `flea::X` module a file refers to, with its line.
fn references(path: &Path) -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut refs = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        for prefix in ["crate::", "flea::"] {
            let mut rest = code;
            while let Some(at) = rest.find(prefix) {
                let tail = &rest[at + prefix.len()..];
                let module: String = tail
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                refs.push((n + 1, module));
                rest = tail;
            }
        }
    }
    refs
}

/// Files under `dir` (relative to src/) that refer to any of `forbidden`.
fn violations(dir: &str, forbidden: &[&str]) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    for file in rust_files(&root.join(dir)) {
        for (line, module) in references(&file) {
            if forbidden.contains(&module.as_str()) {
                found.push(format!(
                    "{}:{line}: refers to `{module}`",
                    file.strip_prefix(&root).unwrap().display()
                ));
            }
        }
    }
    found
}

#[test]
fn backends_know_no_files_configs_plans_engine_or_cli() {
    let found = violations(
        "backend",
        &["config", "engine", "residency", "cli", "generate", "bench"],
    );
    assert!(found.is_empty(), "backend imports:\n{}", found.join("\n"));
}

#[test]
fn the_planner_and_loader_know_no_backend_or_engine() {
    let found = violations("residency", &["engine", "generate", "cli", "bench"]);
    assert!(found.is_empty(), "residency imports:\n{}", found.join("\n"));
}

#[test]
fn the_engine_knows_no_generation_or_cli() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found: Vec<String> = references(&root.join("engine.rs"))
        .into_iter()
        .filter(|(_, m)| ["generate", "cli", "bench", "config"].contains(&m.as_str()))
        .map(|(n, m)| format!("engine.rs:{n}: refers to `{m}`"))
        .collect();
    assert!(found.is_empty(), "engine imports:\n{}", found.join("\n"));
}

#[test]
fn the_model_formats_know_nothing_above_them() {
    for dir in ["gguf", "quant"] {
        let found = violations(
            dir,
            &[
                "engine",
                "residency",
                "backend",
                "generate",
                "cli",
                "bench",
                "model",
                "config",
            ],
        );
        assert!(found.is_empty(), "{dir} imports:\n{}", found.join("\n"));
    }
}
