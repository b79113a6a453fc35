//! The headless pipeline end to end with real processes: JSONL requests,
//! error records, stop strings, signals mid-generation and exit codes.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn spawn(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_flea"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn flea")
}

fn model() -> String {
    common::model("synth-256-Q4_K_M.gguf").display().to_string()
}

fn run_jsonl(input: &str, extra: &[&str]) -> (Option<i32>, Vec<serde_json::Value>, String) {
    let m = model();
    let mut args = vec!["run", "--model", &m, "--jsonl", "--max-tokens", "8"];
    args.extend_from_slice(extra);
    let mut child = spawn(&args);
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let records = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad record {l:?}: {e}")))
        .collect();
    (
        out.status.code(),
        records,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn jsonl_records_errors_and_order() {
    let input = concat!(
        r#"{"id": "a", "prompt": "Once upon a time", "max_tokens": 5, "temperature": 0}"#,
        "\n",
        "this is not json\n",
        "\n",
        r#"{"id": 3, "prompt": "Hello", "maxtokens": 2}"#,
        "\n",
        r#"{"id": {"k": 1}, "prompt": "Hello", "seed": 5, "temperature": 1.0}"#,
        "\n",
    );
    let (code, records, stderr) = run_jsonl(input, &[]);
    assert_eq!(code, Some(1), "a failed request makes exit 1: {stderr}");
    assert_eq!(records.len(), 4, "{records:?}");
    let r = &records[0];
    assert_eq!(r["id"], "a");
    assert_eq!(r["tokens"], 5);
    assert_eq!(r["finish_reason"], "length");
    assert!(!r["text"].as_str().unwrap().is_empty());
    assert!(r["timing"]["decode_ms"].is_number() && r["timing"]["prompt_tokens"] == 5);
    assert_eq!(records[1]["finish_reason"], "error");
    assert!(records[1]["error"].as_str().unwrap().contains("line 2"));
    assert_eq!(records[2]["id"], 3, "the id survives a bad field");
    assert!(records[2]["error"].as_str().unwrap().contains("maxtokens"));
    assert_eq!(records[3]["id"]["k"], 1);
    assert_eq!(records[3]["tokens"], 8);

    // The same request alone gives the same record text (seeded, independent).
    let (code, alone, _) = run_jsonl(
        concat!(
            r#"{"id": {"k": 1}, "prompt": "Hello", "seed": 5, "temperature": 1.0}"#,
            "\n"
        ),
        &[],
    );
    assert_eq!(code, Some(0));
    assert_eq!(alone[0]["text"], records[3]["text"]);
}

#[test]
fn stop_strings_end_the_completion() {
    // Greedy text for this prompt is known; stop at a piece of it.
    let (_, first, _) = run_jsonl(
        concat!(
            r#"{"prompt": "Once upon a time", "temperature": 0, "max_tokens": 12}"#,
            "\n"
        ),
        &[],
    );
    let full = first[0]["text"].as_str().unwrap().to_string();
    let cut: String = full
        .chars()
        .skip(full.chars().count() / 2)
        .take(3)
        .collect();
    let req = serde_json::json!({"prompt": "Once upon a time", "temperature": 0, "max_tokens": 12, "stop": [cut]});
    let (code, records, _) = run_jsonl(&format!("{req}\n"), &[]);
    assert_eq!(code, Some(0));
    let text = records[0]["text"].as_str().unwrap();
    assert_eq!(records[0]["finish_reason"], "stop");
    assert!(
        full.starts_with(text) && !text.contains(&cut) && text.len() < full.len(),
        "{text:?} vs {full:?}"
    );
}

fn kill(child: &Child, signal: i32) {
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, signal) };
}

#[test]
fn sigterm_mid_generation_flushes_partial_result_and_exits_130() {
    let m = model();
    let mut child = spawn(&[
        "run",
        "--model",
        &m,
        "--jsonl",
        "--ctx-size",
        "4096",
        "--threads",
        "1",
    ]);
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, r#"{{"id": 1, "prompt": "first", "max_tokens": 3}}"#).unwrap();
    writeln!(
        stdin,
        r#"{{"id": 2, "prompt": "second", "max_tokens": 4000}}"#
    )
    .unwrap();
    stdin.flush().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["id"], 1);
    assert_eq!(first["finish_reason"], "length");
    std::thread::sleep(Duration::from_millis(300));
    kill(&child, libc::SIGTERM);
    let second: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(second["id"], 2);
    assert_eq!(second["finish_reason"], "interrupted");
    let n = second["tokens"].as_u64().unwrap();
    assert!(n > 0 && n < 4000, "partial: {n} tokens");
    drop(stdin);
    assert_eq!(child.wait().unwrap().code(), Some(130));
}

#[test]
fn sigint_while_waiting_for_input_exits_130_promptly() {
    let m = model();
    let mut child = spawn(&["run", "--model", &m]);
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "a prompt").unwrap();
    stdin.flush().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let done = lines.next().unwrap().unwrap();
    assert!(!done.is_empty());
    // Now idle, blocked reading stdin.
    kill(&child, libc::SIGINT);
    let start = Instant::now();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(start.elapsed() < Duration::from_secs(10));
    drop(stdin);
}

#[test]
fn eof_is_a_normal_exit() {
    let (code, records, _) = run_jsonl("", &[]);
    assert_eq!(code, Some(0));
    assert!(records.is_empty());
}

#[test]
fn log_level_controls_stderr() {
    let (_, _, quiet) = run_jsonl(
        "{\"prompt\": \"x\", \"max_tokens\": 1}\n",
        &["--log-level", "error"],
    );
    assert!(!quiet.contains("INFO"), "{quiet}");
    let m = model();
    let mut child = Command::new(env!("CARGO_BIN_EXE_flea"))
        .args(["run", "--model", &m, "--max-tokens", "1"])
        .env("FLEA_LOG", "debug")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"x\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("INFO"));
}

fn run_text(input: &str, extra: &[&str]) -> (Option<i32>, String) {
    let m = model();
    let mut args = vec!["run", "--model", &m, "--max-tokens", "12"];
    args.extend_from_slice(extra);
    let mut child = spawn(&args);
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.code(), String::from_utf8(out.stdout).unwrap())
}

const PROMPTS: &str = "Once upon a time\nHi\nThe quick brown fox jumps over the lazy dog and keeps running far away\n\nA\nIn a galaxy far, far away, there lived\nZ\n";

#[test]
fn batched_output_equals_each_prompt_alone() {
    for sampling in [
        &["--temperature", "0"][..],
        &["--temperature", "0.9", "--seed", "11"][..],
    ] {
        let (code, alone) = run_text(PROMPTS, sampling);
        assert_eq!(code, Some(0));
        assert_eq!(alone.lines().count(), PROMPTS.lines().count());
        for batch in ["2", "4", "16"] {
            let mut args = sampling.to_vec();
            args.extend(["--batch", batch, "--chunk", "8"]);
            let (code, batched) = run_text(PROMPTS, &args);
            assert_eq!(code, Some(0));
            assert_eq!(batched, alone, "batch {batch}, {sampling:?}");
        }
    }
}

#[test]
fn jsonl_batched_records_keep_their_ids() {
    let input: String = PROMPTS
        .lines()
        .enumerate()
        .map(|(i, p)| {
            let max = 4 + (i * 5) % 11;
            format!(
                "{}\n",
                serde_json::json!({"id": i, "prompt": p, "max_tokens": max, "temperature": 0})
            )
        })
        .collect();
    let (code, alone, _) = run_jsonl(&input, &[]);
    assert_eq!(code, Some(0));
    let (code, batched, _) = run_jsonl(&input, &["--batch", "3"]);
    assert_eq!(code, Some(0));
    assert_eq!(batched.len(), alone.len());
    for r in &alone {
        let twin = batched
            .iter()
            .find(|b| b["id"] == r["id"])
            .expect("same ids");
        assert_eq!(twin["text"], r["text"], "id {}", r["id"]);
        assert_eq!(twin["tokens"], r["tokens"]);
    }
}
