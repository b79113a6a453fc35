//! The one way tests reach `../shared/fixtures`: read in place, never copied.
#![allow(dead_code)]

pub mod no_alloc;

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

/// The architecture fixtures under `arch/` (random weights, real
/// tokenizers), one per architecture flea runs besides plain llama.
pub const ARCH_MODELS: [&str; 4] = ["synth-llama3", "synth-qwen2", "synth-qwen3", "synth-phi3"];

/// A fixture's reference in the `arch/` and `legacy/` layout: `sequence`,
/// per position the 40 largest reference logits as `(id, logit)` (largest
/// first), and where given `prompt_tokens` and the greedy continuation
/// (`generated`).
pub struct Top40 {
    pub sequence: Vec<u32>,
    pub top: Vec<Vec<(usize, f32)>>,
    pub prompt_tokens: Vec<u32>,
    pub generated: Vec<u32>,
}

impl Top40 {
    pub fn read(relative: &str) -> Top40 {
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(fixture(relative)).unwrap()).unwrap();
        let ids = |key: &str| -> Vec<u32> {
            json[key]
                .as_array()
                .map(|a| a.iter().map(|v| v.as_u64().unwrap() as u32).collect())
                .unwrap_or_default()
        };
        let top: Vec<Vec<(usize, f32)>> = json["teacher_forced_top40"]
            .as_array()
            .unwrap_or_else(|| panic!("{relative}: no teacher_forced_top40"))
            .iter()
            .map(|row| {
                row.as_array()
                    .unwrap()
                    .iter()
                    .map(|p| {
                        (
                            p[0].as_u64().unwrap() as usize,
                            p[1].as_f64().unwrap() as f32,
                        )
                    })
                    .collect()
            })
            .collect();
        let sequence = ids("sequence");
        assert_eq!(
            top.len(),
            sequence.len(),
            "{relative}: one top-40 per position"
        );
        Top40 {
            sequence,
            top,
            prompt_tokens: ids("prompt_tokens"),
            generated: ids("generated"),
        }
    }

    /// How `logits` (one row of `n_vocab` per position of `sequence`)
    /// agree with the reference on its listed entries.
    pub fn compare(&self, logits: &[f32], n_vocab: usize) -> Agreement {
        assert_eq!(
            logits.len(),
            self.sequence.len() * n_vocab,
            "one row per position"
        );
        let (mut sum, mut count, mut max_abs, mut agree) = (0.0f64, 0usize, 0.0f32, 0usize);
        for (row, want) in logits.chunks_exact(n_vocab).zip(&self.top) {
            for &(id, logit) in want {
                let d = (row[id] - logit).abs();
                sum += f64::from(d);
                max_abs = max_abs.max(d);
                count += 1;
            }
            let best = row
                .iter()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |b, (i, &v)| if v > b.1 { (i, v) } else { b },
                );
            if best.0 == want[0].0 {
                agree += 1;
            }
        }
        Agreement {
            mean_abs: (sum / count as f64) as f32,
            max_abs,
            top1: agree as f32 / self.sequence.len() as f32,
            positions: self.sequence.len(),
        }
    }
}

/// Logits agreement over a reference's positions.
#[derive(Debug, Clone, Copy)]
pub struct Agreement {
    pub mean_abs: f32,
    pub max_abs: f32,
    pub top1: f32,
    pub positions: usize,
}

impl Agreement {
    /// `None` when within the bounds, else what broke them.
    pub fn check(&self, mean: f32, max: f32, top1: f32) -> Option<String> {
        (self.mean_abs > mean || self.max_abs > max || self.top1 < top1).then(|| {
            format!(
                "mean {} (<= {mean}), max {} (<= {max}), top-1 {} (>= {top1})",
                self.mean_abs, self.max_abs, self.top1
            )
        })
    }
}

impl std::fmt::Display for Agreement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "mean |diff| {:.4}, max |diff| {:.4}, top-1 agreement {:.1}% over {} positions",
            self.mean_abs,
            self.max_abs,
            self.top1 * 100.0,
            self.positions
        )
    }
}

/// `plan` changed to stream every layer through the two slots, whatever the
/// budget rule would choose (for two-layer fixtures the minimum budget
/// keeps both resident, since two slots hold as much).
pub fn stream_everything(mut plan: flea::residency::plan::Plan) -> flea::residency::plan::Plan {
    use flea::residency::plan::Placement;
    plan.slot_bytes = plan.layer_reads.iter().map(|r| r.len()).max().unwrap();
    plan.placement.fill(Placement::Streamed);
    plan.resident_layer_bytes = 0;
    plan.budget = plan.total_bytes();
    plan
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

/// Run the `flea` binary of this build with `args`, `stdin` written to it
/// (the process may exit, on a bad flag say, before reading it), and
/// collect its exit status and output.
pub fn run_flea(args: &[&str], stdin: &[u8]) -> std::process::Output {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_flea"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn flea");
    let _ = child.stdin.take().unwrap().write_all(stdin);
    child.wait_with_output().unwrap()
}
