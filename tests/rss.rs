//! Measured memory: a model four times larger than its budget streams with
//! a peak RSS inside the budget plus the fixed overhead stated in the
//! README. Runs `flea bench` in its own process so nothing else in the
//! test harness counts against it.

use std::process::Command;

/// The README's fixed overhead (binary, metadata, tokenizer, stacks) with
/// headroom for allocator slack.
const OVERHEAD: u64 = 32 << 20;

#[test]
fn streamed_1b_model_stays_inside_a_quarter_of_its_size() {
    let dir = std::env::temp_dir().join(format!("flea-rss-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("1b-q4_k_m.gguf");
    let flea = env!("CARGO_BIN_EXE_flea");
    let status = Command::new(flea)
        .args(["synth", "--preset", "1b", "--quant", "q4_k_m", "--out"])
        .arg(&model)
        .args(["--log-level", "warn"])
        .status()
        .unwrap();
    assert!(status.success());
    let model_bytes = std::fs::metadata(&model).unwrap().len();
    let budget = model_bytes / 4;
    let out = Command::new(flea)
        .args(["bench", "--model"])
        .arg(&model)
        .args([
            "--budget",
            &format!("{budget}B"),
            "--ctx-size",
            "256",
            "--chunk",
            "16",
        ])
        .args([
            "--prompt-tokens",
            "4",
            "--gen-tokens",
            "3",
            "--json",
            "--log-level",
            "warn",
        ])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let peak = v["peak_rss_bytes"].as_u64().unwrap();
    let planned = v["streamed"]["planned_bytes"].as_u64().unwrap();
    eprintln!(
        "model {} MiB, budget {} MiB, planned {} MiB, peak RSS {} MiB",
        model_bytes >> 20,
        budget >> 20,
        planned >> 20,
        peak >> 20
    );
    assert!(model_bytes >= 4 * budget);
    assert!(planned <= budget);
    assert!(v["streamed"]["streamed_layers"].as_u64().unwrap() > 0);
    assert!(
        peak <= budget + OVERHEAD,
        "peak RSS {peak} exceeds budget {budget} + {OVERHEAD}"
    );
}
