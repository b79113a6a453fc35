//! The `flea` binary end to end: real processes, real fixtures.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn flea(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_flea"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn flea");
    // The process may exit (on a bad flag, say) before reading its input.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    child.wait_with_output().unwrap()
}

fn model_arg(name: &str) -> String {
    common::model(name).display().to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn reference_json(name: &str) -> serde_json::Value {
    serde_json::from_slice(
        &std::fs::read(common::fixture(&format!("reference/{name}.json"))).unwrap(),
    )
    .unwrap()
}

#[test]
fn greedy_run_reproduces_reference_text() {
    let r = reference_json("synth-256-Q8_0");
    let prompt = r["prompt"].as_str().unwrap();
    let model = model_arg("synth-256-Q8_0.gguf");
    let out = flea(
        &[
            "run",
            "--model",
            &model,
            "--temperature",
            "0",
            "--max-tokens",
            "24",
            "--threads",
            "2",
        ],
        &format!("{prompt}\n"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8(out.stdout).unwrap();
    // The first 8 greedy tokens, spelled out, must open our completion.
    let file = flea::gguf::GgufFile::open(common::model("synth-256-Q8_0.gguf")).unwrap();
    let tok = flea::tokenizer::Tokenizer::from_gguf(&file).unwrap();
    let greedy: Vec<u32> = r["greedy"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let first8 = flea::generate::pipeline::completion_text(&tok, &greedy[..8]);
    assert!(
        stdout.starts_with(&flea::generate::pipeline::escape_line(&first8)),
        "ours: {stdout:?}\nexpected prefix: {first8:?}"
    );
    assert_eq!(stdout.lines().count(), 1);
}

#[test]
fn one_output_line_per_prompt_in_order() {
    let model = model_arg("synth-256-Q4_K_M.gguf");
    let args = ["run", "--model", &model, "--max-tokens", "6", "--seed", "7"];
    let out = flea(&args, "first\n\nthird prompt\n");
    assert!(out.status.success(), "{}", stderr(&out));
    let all = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = all.lines().collect();
    assert_eq!(lines.len(), 3, "{all:?}");
    // Each prompt's output does not depend on its neighbours.
    let alone = flea(&args, "third prompt\n");
    assert_eq!(
        String::from_utf8(alone.stdout)
            .unwrap()
            .trim_end_matches('\n'),
        lines[2]
    );
}

#[test]
fn logits_match_library_and_reference_shape() {
    let r = reference_json("synth-256-Q8_0");
    let seq: Vec<String> = r["sequence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.to_string())
        .collect();
    let out_path = std::env::temp_dir().join(format!("flea-cli-logits-{}.bin", std::process::id()));
    let model = model_arg("synth-256-Q8_0.gguf");
    let out = flea(
        &[
            "logits",
            "--model",
            &model,
            "--tokens",
            &seq.join(","),
            "--out",
            out_path.to_str().unwrap(),
        ],
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let ours = std::fs::read(&out_path).unwrap();
    let _ = std::fs::remove_file(&out_path);
    let theirs = std::fs::read(common::fixture("reference/synth-256-Q8_0.logits.bin")).unwrap();
    assert_eq!(ours.len(), theirs.len());
    let max_diff = ours
        .chunks_exact(4)
        .zip(theirs.chunks_exact(4))
        .map(|(a, b)| {
            let a = f32::from_le_bytes(a.try_into().unwrap());
            let b = f32::from_le_bytes(b.try_into().unwrap());
            (a - b).abs()
        })
        .fold(0.0, f32::max);
    assert!(max_diff <= 0.75, "max diff {max_diff}");
}

#[test]
fn logits_with_prompt_adds_bos() {
    let r = reference_json("synth-256-Q8_0");
    let n = r["prompt_tokens"].as_array().unwrap().len();
    let out_path = std::env::temp_dir().join(format!("flea-cli-prompt-{}.bin", std::process::id()));
    let model = model_arg("synth-256-Q8_0.gguf");
    let out = flea(
        &[
            "logits",
            "--model",
            &model,
            "--prompt",
            r["prompt"].as_str().unwrap(),
            "--out",
            out_path.to_str().unwrap(),
        ],
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let len = std::fs::metadata(&out_path).unwrap().len();
    let _ = std::fs::remove_file(&out_path);
    assert_eq!(len, (n * 32000 * 4) as u64);
}

#[test]
fn inspect_lists_tensors_and_layers() {
    let model = model_arg("synth-256-Q3_K_M.gguf");
    let out = flea(&["inspect", "--model", &model], "");
    assert!(out.status.success(), "{}", stderr(&out));
    let s = String::from_utf8(out.stdout).unwrap();
    assert!(s.contains("blk.3.ffn_down.weight"), "{s}");
    assert!(s.contains("llama.block_count = 4"), "{s}");
    assert!(s.contains("layer   3:"), "{s}");
}

#[test]
fn tokenize_prints_ids_and_pieces() {
    let vocab = common::fixture("tokenizer/ggml-vocab-llama3-bpe.gguf")
        .display()
        .to_string();
    let stdout = |o: Output| {
        assert!(o.status.success(), "{}", stderr(&o));
        String::from_utf8(o.stdout).unwrap()
    };
    // BOS because the file asks for it (tokenizer.ggml.add_bos_token).
    let out = flea(&["tokenize", "--model", &vocab, "--ids", "Hello world"], "");
    assert_eq!(stdout(out), "[128000, 9906, 1917]\n");
    // Text from stdin, taken whole (the newline is a token), one line per
    // token as llama-tokenize prints them.
    let out = flea(&["tokenize", "-m", &vocab, "--no-bos"], "Hello world\n");
    assert_eq!(
        stdout(out),
        "  9906 -> 'Hello'\n  1917 -> ' world'\n   198 -> '\n'\n"
    );
    // A control token written in the text stays text unless --special; BOS
    // shows its name.
    let args = ["tokenize", "-m", &vocab, "<|eot_id|>"];
    let plain = stdout(flea(&args, ""));
    assert!(
        plain.starts_with("128000 -> '<|begin_of_text|>'\n"),
        "{plain}"
    );
    assert!(!plain.contains("128009"), "{plain}");
    let special = stdout(flea(&[&args[..], &["--special", "--ids"]].concat(), ""));
    assert_eq!(special, "[128000, 128009]\n");

    // A file that is no GGUF: model error (4); no file: I/O error (5).
    let bad = std::env::temp_dir().join(format!("flea-cli-tok-{}.gguf", std::process::id()));
    std::fs::write(&bad, b"not a gguf file at all").unwrap();
    let out = flea(&["tokenize", "-m", bad.to_str().unwrap(), "x"], "");
    let _ = std::fs::remove_file(&bad);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let out = flea(&["tokenize", "-m", "/nonexistent/v.gguf", "x"], "");
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
}

#[test]
fn every_subcommand_has_help() {
    for sub in ["run", "logits", "inspect", "tokenize"] {
        let out = flea(&[sub, "--help"], "");
        assert!(out.status.success());
        let s = String::from_utf8(out.stdout).unwrap();
        assert!(s.contains("--model"), "{sub}: {s}");
    }
}

#[test]
fn exit_codes() {
    // Missing file: I/O (5).
    let out = flea(&["inspect", "--model", "/nonexistent/model.gguf"], "");
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("/nonexistent/model.gguf"));

    // Not a GGUF: model error (4).
    let bad = std::env::temp_dir().join(format!("flea-cli-bad-{}.gguf", std::process::id()));
    std::fs::write(&bad, b"not a gguf file at all").unwrap();
    let out = flea(&["run", "--model", bad.to_str().unwrap()], "hi\n");
    let _ = std::fs::remove_file(&bad);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("bad magic"));

    // Bad flag values: usage (2).
    let model = model_arg("synth-256-Q8_0.gguf");
    let out = flea(&["run", "--model", &model, "--top-p", "0"], "");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--top-p"));
    let out = flea(&["run", "--bogus"], "");
    assert_eq!(out.status.code(), Some(2));

    // A prompt that cannot run (longer than the context) fails alone: exit 1,
    // and the other prompts still complete.
    let long = "word ".repeat(200);
    let out = flea(
        &[
            "run",
            "--model",
            &model,
            "--ctx-size",
            "32",
            "--max-tokens",
            "2",
        ],
        &format!("short\n{long}\nshort\n"),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let s = String::from_utf8(out.stdout.clone()).unwrap();
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[1].is_empty() && !lines[0].is_empty());
    assert!(stderr(&out).contains("prompt 2") && stderr(&out).contains("context"));
}

fn temp_file(tag: &str, contents: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("flea-cli-{tag}-{}", std::process::id()));
    std::fs::write(&p, contents).unwrap();
    p
}

#[test]
fn config_file_and_flags() {
    let model = model_arg("synth-256-Q8_0.gguf");
    // A bad key in the config: exit 3, naming the key and the file.
    let bad = temp_file("bad.toml", "[memory]\nbudgett = \"1GiB\"\n");
    let out = flea(
        &["run", "--model", &model, "--config", bad.to_str().unwrap()],
        "hi\n",
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("budgett") && stderr(&out).contains(bad.to_str().unwrap()));
    let _ = std::fs::remove_file(&bad);

    // A missing config file: exit 3.
    let out = flea(
        &["run", "--model", &model, "--config", "/nonexistent/x.toml"],
        "",
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));

    // A budget too small in the file: exit 3 with the minimum; the flag overrides it.
    let small = temp_file(
        "small.toml",
        "[memory]\nbudget = \"1MiB\"\n[generation]\ntemperature = 0.0\nmax_tokens = 4\ncontext = 64\n[pipeline]\nprefill_chunk = 8\n",
    );
    let args = [
        "run",
        "--model",
        &model,
        "--config",
        small.to_str().unwrap(),
    ];
    let out = flea(&args, "hello\n");
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("below the minimum"),
        "{}",
        stderr(&out)
    );
    let mut with_flag = args.to_vec();
    with_flag.extend(["--budget", "20MiB"]);
    let streamed = flea(&with_flag, "hello\n");
    assert!(streamed.status.success(), "{}", stderr(&streamed));
    assert!(
        stderr(&streamed).contains("streamed"),
        "{}",
        stderr(&streamed)
    );
    // Streaming changes nothing in the output: same text as fully resident.
    let mut resident = args.to_vec();
    resident.extend(["--budget", "1GiB"]);
    let resident = flea(&resident, "hello\n");
    assert_eq!(streamed.stdout, resident.stdout);
    let _ = std::fs::remove_file(&small);
}

#[test]
fn plan_prints_ranges_and_prediction() {
    let model = model_arg("synth-256-Q6_K.gguf");
    let out = flea(
        &[
            "plan", "--model", &model, "--budget", "16.2MiB", "-c", "64", "--chunk", "8",
        ],
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let s = String::from_utf8(out.stdout).unwrap();
    assert!(s.contains("streamed") && s.contains("resident"), "{s}");
    assert!(s.contains("predicted decode") && s.contains("disk"), "{s}");
    assert!(s.contains("minimum budget"), "{s}");
    assert!(s.contains("batch 16:"), "the batch trade-off is shown: {s}");
}

#[test]
fn bench_json_has_documented_fields() {
    let model = model_arg("synth-256-Q4_K_M.gguf");
    let out = flea(
        &[
            "bench",
            "--model",
            &model,
            "--budget",
            "13.5MiB",
            "-c",
            "64",
            "--chunk",
            "8",
            "--prompt-tokens",
            "8",
            "--gen-tokens",
            "4",
            "--compare",
            "--json",
        ],
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for field in [
        "decode_tokens_per_s",
        "prefill_tokens_per_s",
        "peak_rss_bytes",
        "bytes_read_per_token",
        "disk_bound_bytes_per_s",
        "overlap_efficiency",
        "budget_bytes",
        "resident_over_streamed_decode",
    ] {
        assert!(
            v.get(field).is_some_and(|f| !f.is_null()),
            "missing {field}: {v}"
        );
    }
    assert!(
        v["bytes_read_per_token"].as_f64().unwrap() > 0.0,
        "streams: {v}"
    );
    assert!(v["streamed"]["stall_ms_per_token"].is_number());
}

#[test]
fn cpu_kernel_override_is_checked_and_changes_no_bits() {
    let model = model_arg("synth-256-Q4_K_M.gguf");
    let logits = |isa: Option<&str>| {
        let path = std::env::temp_dir().join(format!(
            "flea-cli-isa-{}-{}.bin",
            isa.unwrap_or("auto"),
            std::process::id()
        ));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_flea"));
        cmd.args(["logits", "--model", &model, "--tokens", "1,2,3,4,5,6,7,8,9"])
            .args(["--out", path.to_str().unwrap()])
            .env_remove("FLEA_CPU_ISA");
        if let Some(isa) = isa {
            cmd.env("FLEA_CPU_ISA", isa);
        }
        let out = cmd.output().unwrap();
        let bytes = std::fs::read(&path).ok();
        let _ = std::fs::remove_file(&path);
        (out, bytes)
    };
    // Unknown names and sets this CPU lacks are configuration errors.
    for bad in ["avx9000", "neon+dotprod", "avxvnni"] {
        let (out, _) = logits(Some(bad));
        let available = flea::backend::cpu::Isa::available();
        if available.iter().any(|i| i.name() == bad) {
            continue;
        }
        assert_eq!(out.status.code(), Some(3), "{bad}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(&format!("FLEA_CPU_ISA={bad}")),
            "{}",
            stderr(&out)
        );
    }
    // Every set this CPU runs gives the logits of the scalar kernels, bit
    // for bit (tests/cpu_kernels.rs checks the kernels themselves).
    let (out, auto) = logits(None);
    assert!(out.status.success(), "{}", stderr(&out));
    for isa in flea::backend::cpu::Isa::available() {
        let (out, forced) = logits(Some(isa.name()));
        assert!(out.status.success(), "{isa}: {}", stderr(&out));
        assert!(
            forced == auto,
            "{isa}: logits differ from the default kernels"
        );
    }
}

#[test]
fn cuda_requested_without_a_gpu_is_a_clear_error() {
    let model = model_arg("synth-256-Q8_0.gguf");
    let cfg = temp_file("cuda.toml", "[device]\nbackend = \"cuda\"\n");
    let out = flea(
        &["run", "--model", &model, "--config", cfg.to_str().unwrap()],
        "hi\n",
    );
    let _ = std::fs::remove_file(&cfg);
    // This machine has no GPU: either the build lacks CUDA or the driver
    // or device is missing; both are configuration errors, not panics.
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).to_lowercase().contains("cuda"),
        "{}",
        stderr(&out)
    );
    // auto falls back to the CPU.
    let cfg = temp_file("auto.toml", "[device]\nbackend = \"auto\"\n");
    let out = flea(
        &[
            "run",
            "--model",
            &model,
            "--config",
            cfg.to_str().unwrap(),
            "-n",
            "2",
        ],
        "hi\n",
    );
    let _ = std::fs::remove_file(&cfg);
    assert!(out.status.success(), "{}", stderr(&out));
}
