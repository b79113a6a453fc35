//! The `flea` binary end to end: real processes, real fixtures.

mod common;

use std::process::{Command, Output};

fn flea(args: &[&str], stdin: &str) -> Output {
    common::run_flea(args, stdin.as_bytes())
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
fn run_special_turns_control_tokens_in_the_prompt_into_tokens() {
    // synth-llama3 has the Llama 3 vocabulary: "hi<|eot_id|>" is BOS, "hi"
    // and 7 pieces of text, or with --special BOS, "hi" and <|eot_id|>.
    let model = common::fixture("arch/synth-llama3.gguf")
        .display()
        .to_string();
    let prompt_tokens = |special: bool| {
        let mut args = vec!["run", "-m", &model, "--jsonl", "-n", "1", "-t", "2"];
        if special {
            args.push("--special");
        }
        let out = flea(&args, "{\"prompt\": \"hi<|eot_id|>\"}\n");
        assert!(out.status.success(), "{}", stderr(&out));
        let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        record["timing"]["prompt_tokens"].as_u64().unwrap()
    };
    assert_eq!(prompt_tokens(false), 9);
    assert_eq!(prompt_tokens(true), 3);
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
        "memory_bandwidth_bytes_per_s",
        "weight_bytes_per_s",
        "memory_bound_fraction",
        "memory_bound_decode_tokens_per_s",
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
    let ratio = v["weight_bytes_per_s"].as_f64().unwrap()
        / v["memory_bandwidth_bytes_per_s"].as_f64().unwrap();
    assert!(
        (v["memory_bound_fraction"].as_f64().unwrap() - ratio).abs() <= 1e-9 * ratio.max(1.0),
        "{v}"
    );
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

/// `run --jsonl` records, one per output line.
fn records(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad record {l:?}: {e}")))
        .collect()
}

/// A small random llama with the Llama 3 vocabulary and its chat template.
fn chat_model() -> String {
    common::fixture("arch/synth-llama3.gguf")
        .display()
        .to_string()
}

// <|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|>
// <|start_header_id|>assistant<|end_header_id|>\n\n: 12 tokens; the plain
// prompt "Hello!" is 3 (BOS, "Hello", "!").
const CHAT_HELLO_TOKENS: u64 = 12;
const PLAIN_HELLO_TOKENS: u64 = 3;

#[test]
fn chat_flag_wraps_each_line_as_a_user_message() {
    let model = chat_model();
    let args = [
        "run",
        "--model",
        &model,
        "--chat",
        "-n",
        "3",
        "--temperature",
        "0",
        "-t",
        "2",
    ];
    let out = flea(&args, "Hello!\nName a color.\n");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8(out.stdout.clone())
            .unwrap()
            .lines()
            .count(),
        2
    );
    // The template made the prompt: 12 tokens, not the 3 of the bare line.
    let log = stderr(&out);
    assert!(
        log.contains(&format!("prompt 1: {CHAT_HELLO_TOKENS} prompt tokens")),
        "{log}"
    );

    // -p too.
    let mut with_p = args.to_vec();
    with_p.extend(["-p", "Hello!"]);
    let out = flea(&with_p, "");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains(&format!("prompt 1: {CHAT_HELLO_TOKENS} prompt tokens")));
}

#[test]
fn jsonl_messages_requests() {
    let model = chat_model();
    let input = concat!(
        r#"{"id": "m", "messages": [{"role": "user", "content": "Hello!"}]}"#,
        "\n",
        r#"{"id": "p", "prompt": "Hello!"}"#,
        "\n",
        r#"{"id": "both", "prompt": "Hello!", "messages": [{"role": "user", "content": "Hello!"}]}"#,
        "\n",
        r#"{"id": "neither", "max_tokens": 2}"#,
        "\n",
        r#"{"id": "badmsg", "messages": [{"role": "user", "text": "Hello!"}]}"#,
        "\n",
    );
    let prompt_tokens = |r: &serde_json::Value| r["timing"]["prompt_tokens"].as_u64();
    for chat in [false, true] {
        let mut args = vec!["run", "--model", &model, "--jsonl", "-n", "2", "-t", "2"];
        if chat {
            args.push("--chat");
        }
        let out = flea(&args, input);
        // Three malformed requests: exit 1, every request has its record.
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        let recs = records(&out);
        assert_eq!(recs.len(), 5, "{recs:?}");
        let by_id = |id: &str| recs.iter().find(|r| r["id"] == id).unwrap().clone();
        let m = by_id("m");
        assert_eq!(m["finish_reason"], "length", "{m}");
        assert_eq!(m["tokens"], 2);
        assert_eq!(prompt_tokens(&m), Some(CHAT_HELLO_TOKENS));
        // A prompt is a user message only with --chat.
        let p = by_id("p");
        let want = if chat {
            CHAT_HELLO_TOKENS
        } else {
            PLAIN_HELLO_TOKENS
        };
        assert_eq!(prompt_tokens(&p), Some(want), "chat {chat}: {p}");
        for (id, says) in [
            ("both", "`prompt` and `messages` both given"),
            ("neither", "missing field `prompt` (or `messages`)"),
            ("badmsg", "unknown field `text`"),
        ] {
            let r = by_id(id);
            assert_eq!(r["finish_reason"], "error", "{r}");
            let error = r["error"].as_str().unwrap();
            assert!(error.contains(says), "{id}: {error}");
        }
    }
}

#[test]
fn chat_on_a_model_without_a_template_is_an_error() {
    let model = model_arg("synth-256-Q8_0.gguf");
    // --chat fails at startup: a model error (4), naming the file and key.
    let out = flea(&["run", "--model", &model, "--chat", "-n", "2"], "Hello!\n");
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
    let log = stderr(&out);
    assert!(
        log.contains(&model) && log.contains("tokenizer.chat_template"),
        "{log}"
    );

    // Without --chat, a `messages` request gets an error record and a
    // plain prompt still runs.
    let input = concat!(
        r#"{"id": 1, "messages": [{"role": "user", "content": "Hello!"}]}"#,
        "\n",
        r#"{"id": 2, "prompt": "Hello!"}"#,
        "\n",
    );
    let out = flea(&["run", "--model", &model, "--jsonl", "-n", "2"], input);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let recs = records(&out);
    assert_eq!(recs.len(), 2, "{recs:?}");
    let error = recs[0]["error"].as_str().unwrap();
    assert!(
        error.contains(&model) && error.contains("tokenizer.chat_template"),
        "{error}"
    );
    assert_eq!(recs[1]["finish_reason"], "length", "{}", recs[1]);
}

#[test]
fn run_help_documents_chat() {
    let out = flea(&["run", "--help"], "");
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(help.contains("--chat"), "{help}");
    assert!(help.contains("\"messages\""), "{help}");
    assert!(help.contains("tokenizer.chat_template"), "{help}");
}
