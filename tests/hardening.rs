//! Hostile input end to end: every reproducer from the hardening issue, as a
//! real `flea` process, with its exit code and message asserted. None may
//! panic (101), abort (134), hang, or lose a request to another request.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn flea(args: &[&str], stdin: &[u8]) -> Output {
    common::run_flea(args, stdin)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn model() -> String {
    common::model("synth-256-Q4_K_M.gguf").display().to_string()
}

/// A fresh, empty directory for one test under cargo's per-target tmp dir.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("hardening-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Exit code `code` and a message on stderr containing every one of `words`.
fn assert_fails(out: &Output, code: i32, words: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "stderr:\n{err}");
    for w in words {
        assert!(err.contains(w), "expected {w:?} in stderr:\n{err}");
    }
}

#[test]
fn huge_flags_are_usage_errors_naming_value_and_cap() {
    let m = model();
    let huge = u64::MAX.to_string();
    let cases: [(&str, &str, &str); 6] = [
        ("--ctx-size", "4611686018427387904", "at most 16777216"),
        ("-c", &huge, "at most 16777216"),
        ("--threads", &huge, "at most 1024"),
        ("--threads", "100000", "at most 1024"),
        ("--batch", "100000000", "at most 256"),
        ("--chunk", &huge, "at most 65535"),
    ];
    for (flag, value, cap) in cases {
        let out = flea(&["run", "-m", &m, flag, value], b"hi\n");
        assert_fails(&out, 2, &[value, cap]);
    }
}

#[test]
fn huge_config_values_are_config_errors() {
    let dir = scratch("config");
    let config = dir.join("big.toml");
    std::fs::write(&config, "[generation]\ncontext = 4611686018427387904\n").unwrap();
    let out = flea(
        &["plan", "-m", &model(), "--config", config.to_str().unwrap()],
        b"",
    );
    assert_fails(&out, 3, &["generation.context", "4611686018427387904"]);
    std::fs::write(&config, "[device]\nthreads = 100000\n").unwrap();
    let out = flea(
        &["plan", "-m", &model(), "--config", config.to_str().unwrap()],
        b"",
    );
    assert_fails(&out, 3, &["device.threads", "100000"]);
}

/// Patch the u32/u64 value of `llama.block_count` in a copy of a fixture.
fn with_block_count(dir: &Path, count: u64) -> PathBuf {
    let mut bytes = std::fs::read(model()).unwrap();
    let key = b"llama.block_count";
    let at = bytes
        .windows(key.len())
        .position(|w| w == key)
        .expect("the fixture has llama.block_count")
        + key.len();
    let ty = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    match ty {
        4 => bytes[at + 4..at + 8].copy_from_slice(&(count as u32).to_le_bytes()),
        10 => bytes[at + 4..at + 12].copy_from_slice(&count.to_le_bytes()),
        other => panic!("unexpected block_count type {other}"),
    }
    let path = dir.join("patched.gguf");
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn a_block_count_beyond_the_tensor_table_is_a_model_error() {
    let dir = scratch("blocks");
    let path = with_block_count(&dir, 1 << 31);
    let out = flea(&["inspect", "-m", path.to_str().unwrap()], b"");
    assert_fails(&out, 4, &["llama.block_count", "2147483648", "at most"]);
}

#[test]
fn inspect_on_a_directory_says_so() {
    let dir = scratch("inspect-dir");
    let out = flea(&["inspect", "-m", dir.to_str().unwrap()], b"");
    assert_fails(&out, 5, &["is a directory"]);
}

#[test]
fn max_tokens_beyond_the_context_is_clamped_and_said() {
    let m = model();
    let input = b"{\"id\": 1, \"prompt\": \"hi\", \"max_tokens\": 1000000000000}\n{\"id\": 2, \"prompt\": \"hi\", \"max_tokens\": 2}\n";
    let out = flea(&["run", "-m", &m, "-c", "32", "--jsonl"], input);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let records: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 2);
    let warning = records[0]["warning"].as_str().unwrap();
    assert!(warning.contains("clamped"), "{warning}");
    assert!(records[0]["tokens"].as_u64().unwrap() <= 32);
    assert_eq!(records[1]["tokens"], 2);

    let huge = u64::MAX.to_string();
    let out = flea(
        &["run", "-m", &m, "-c", "16", "--max-tokens", &huge],
        b"hi\n",
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("clamped"));
}

#[test]
fn bad_lines_get_an_answer_and_the_run_goes_on() {
    let m = model();
    // Text mode: a line of invalid UTF-8 gets an empty line; both
    // neighbours are served.
    let out = flea(
        &["run", "-m", &m, "-n", "3", "--temperature", "0"],
        b"one\n\xff\xfe bad\ntwo\n",
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout.clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(!lines[0].is_empty() && lines[1].is_empty() && !lines[2].is_empty());
    assert!(stderr(&out).contains("not valid UTF-8"));

    // JSONL: invalid UTF-8, bad JSON, a bad field, a line past the length
    // limit: one error record each, and the good requests around them run.
    let mut input = Vec::new();
    input.extend_from_slice(b"{\"id\": 1, \"prompt\": \"a\", \"max_tokens\": 2}\n");
    input.extend_from_slice(b"{\"id\": 2, \"prompt\": \"\xff\"}\n");
    input.extend_from_slice(b"{not json\n");
    input.extend_from_slice(b"{\"id\": 4, \"prompt\": \"a\", \"max_tokens\": -1}\n");
    input.extend_from_slice(b"{\"id\": 5, \"prompt\": \"");
    input.extend(std::iter::repeat_n(b'x', flea::limits::MAX_LINE_BYTES + 10));
    input.extend_from_slice(b"\"}\n");
    input.extend_from_slice(b"{\"id\": 6, \"prompt\": \"b\", \"max_tokens\": 2}\n");
    let out = flea(&["run", "-m", &m, "--jsonl"], &input);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let records: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let reasons: Vec<&str> = records
        .iter()
        .map(|r| r["finish_reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        ["length", "error", "error", "error", "error", "length"],
        "{records:?}"
    );
    assert_eq!(records[5]["id"], 6);
    assert!(records[4]["error"]
        .as_str()
        .unwrap()
        .contains("longer than"));
}

#[test]
fn a_closed_stdout_ends_the_run_quietly_with_exit_0() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_flea"))
        .args(["run", "-m", &model(), "-n", "4", "--temperature", "0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"first\n").unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 1];
    stdout.read_exact(&mut first).unwrap();
    // The reader goes away (`| head -c 1`); the next completion meets EPIPE.
    drop(stdout);
    for _ in 0..4 {
        let _ = stdin.write_all(b"more\n");
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("error"), "{}", stderr(&out));
}

#[test]
fn outputs_are_never_written_over_devices_directories_or_links() {
    let dir = scratch("outputs");
    // /dev/null stays a device.
    let out = flea(&["synth", "--preset", "tiny", "--out", "/dev/null"], b"");
    assert_fails(&out, 5, &["/dev/null", "not a regular file"]);
    let meta = std::fs::metadata("/dev/null").unwrap();
    assert!(!meta.is_file(), "/dev/null was replaced by a regular file");
    let out = flea(
        &["synth", "--preset", "tiny", "--out", dir.to_str().unwrap()],
        b"",
    );
    assert_fails(&out, 5, &["is a directory"]);

    // A symlink is followed: the file it names is written, the link stays.
    let real = dir.join("real.gguf");
    std::fs::write(&real, b"old").unwrap();
    let link = dir.join("link.gguf");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let out = flea(
        &["synth", "--preset", "tiny", "--out", link.to_str().unwrap()],
        b"",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(std::fs::metadata(&real).unwrap().len() > 1000);
    assert!(flea::gguf::GgufFile::open(&link).is_ok());
}

#[test]
fn logits_with_a_bad_token_leaves_no_file() {
    let dir = scratch("logits");
    let target = dir.join("out.bin");
    let out = flea(
        &[
            "logits",
            "-m",
            &model(),
            "--tokens",
            "1,99999999",
            "--out",
            target.to_str().unwrap(),
        ],
        b"",
    );
    assert_fails(&out, 2, &["99999999", "out of range", "32000"]);
    assert!(!target.exists());
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
}

fn wait_for(path: &Path, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn kill(child: &Child, signal: i32) {
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, signal) };
}

#[test]
fn sigterm_during_synth_removes_the_partial_file() {
    let dir = scratch("synth-signal");
    let target = dir.join("big.gguf");
    let child = Command::new(env!("CARGO_BIN_EXE_flea"))
        .args(["synth", "--preset", "1b", "--out", target.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let partial = dir.join("big.gguf.partial");
    assert!(
        wait_for(&partial, Duration::from_secs(30)),
        "no partial file appeared"
    );
    kill(&child, 15);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(!partial.exists(), "the partial file was left behind");
    assert!(!target.exists());
}

/// A copy of the Q4_K_M fixture (which this test then corrupts), its
/// sidecar, and the budget at which every layer streams.
fn corruptible_copy(dir: &Path) -> PathBuf {
    let path = dir.join("model.gguf");
    std::fs::copy(model(), &path).unwrap();
    let out = flea(&["checksum", "-m", path.to_str().unwrap()], b"");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(dir.join("model.gguf.sums").exists());
    path
}

#[test]
fn verify_catches_a_file_corrupted_mid_run() {
    let dir = scratch("verify");
    let path = corruptible_copy(&dir);
    let p = path.to_str().unwrap().to_string();
    // A budget that fits a single layer per slot: every layer streams, so
    // every token re-reads (and re-checks) every layer. (Sized with an f32
    // KV cache: the f16 default would leave room for a resident layer.)
    let args = [
        "run",
        "-m",
        &p,
        "--kv-type",
        "f32",
        "--budget",
        "21MiB",
        "-c",
        "64",
        "--verify",
        "-n",
        "4",
        "--temperature",
        "0",
    ];
    let mut child = Command::new(env!("CARGO_BIN_EXE_flea"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"first prompt\n").unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = Vec::new();
    let mut byte = [0u8; 1];
    while stdout.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        first.push(byte[0]);
    }
    assert!(!first.is_empty(), "the clean file must run");

    // Zero the middle of layer 2's tensors while the run is live.
    let file = flea::gguf::GgufFile::open(&path).unwrap();
    let m = flea::model::Model::from_gguf(&file).unwrap();
    let span = m.layers[2].file_span();
    drop(file);
    let mid = (span.start + span.end) / 2;
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0u8; 4096], mid).unwrap();
    f.sync_all().unwrap();

    stdin.write_all(b"second prompt\n").unwrap();
    drop(stdin);
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_fails(&out, 5, &["layer 2", "checksum mismatch"]);
}

#[test]
fn verify_without_a_sidecar_is_a_clear_error() {
    let dir = scratch("verify-missing");
    let path = dir.join("model.gguf");
    std::fs::copy(model(), &path).unwrap();
    let out = flea(&["run", "-m", path.to_str().unwrap(), "--verify"], b"hi\n");
    assert_fails(&out, 3, &["model.gguf.sums", "flea checksum"]);
}

#[test]
fn draft_emits_exactly_max_tokens() {
    let target = common::model("synth-256-Q8_0.gguf").display().to_string();
    let draft = common::model("synth-256-Q3_K_S.gguf").display().to_string();
    let input = b"{\"prompt\": \"Once upon a time\", \"max_tokens\": 8}\n";
    let alone = flea(
        &["run", "-m", &target, "--jsonl", "--temperature", "0"],
        input,
    );
    let spec = flea(
        &[
            "run",
            "-m",
            &target,
            "--draft",
            &draft,
            "--jsonl",
            "--temperature",
            "0",
        ],
        input,
    );
    assert!(spec.status.success(), "{}", stderr(&spec));
    let record = |o: &Output| -> serde_json::Value {
        serde_json::from_slice(o.stdout.split(|&b| b == b'\n').next().unwrap()).unwrap()
    };
    let (a, s) = (record(&alone), record(&spec));
    assert_eq!(s["tokens"], 8, "{s}");
    assert_eq!(a["text"], s["text"]);
}

#[test]
fn install_nvcc_fails_loudly_when_pip_fails() {
    let dir = scratch("nvcc");
    // A "venv" whose pip knows no package and cannot install one.
    let bin = dir.join("venv/bin");
    std::fs::create_dir_all(&bin).unwrap();
    let pip = bin.join("pip");
    std::fs::write(&pip, "#!/bin/sh\necho \"pip: no network\" >&2\nexit 1\n").unwrap();
    std::fs::set_permissions(&pip, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install-nvcc.sh"))
        .env("FLEA_NVCC_VENV", dir.join("venv"))
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("installing nvidia-cuda-nvcc"), "{err}");
    assert!(err.contains("pip install failed"), "{err}");
    assert!(out.stdout.is_empty(), "nothing to export after a failure");
}

/// A memory cgroup with `limit` bytes, v1 or v2, or `None` where this
/// machine does not let us make one (not root, no memory controller).
struct MemoryCgroup {
    dir: PathBuf,
    v2: bool,
}

impl MemoryCgroup {
    fn create(name: &str, limit: u64) -> Option<MemoryCgroup> {
        let v1 = Path::new("/sys/fs/cgroup/memory");
        let v2 = Path::new("/sys/fs/cgroup");
        let (dir, v2, limit_file) = if v1.join("memory.limit_in_bytes").exists() {
            (v1.join(name), false, "memory.limit_in_bytes")
        } else if std::fs::read_to_string(v2.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|w| w == "memory"))
        {
            (v2.join(name), true, "memory.max")
        } else {
            return None;
        };
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir).ok()?;
        std::fs::write(dir.join(limit_file), limit.to_string()).ok()?;
        Some(MemoryCgroup { dir, v2 })
    }

    /// Run `flea ARGS` inside the group; its output and the group's peak.
    fn run(&self, args: &[&str]) -> (Output, u64) {
        let peak_file = if self.v2 {
            "memory.peak"
        } else {
            "memory.max_usage_in_bytes"
        };
        if !self.v2 {
            let _ = std::fs::write(self.dir.join(peak_file), "0");
        }
        let procs = self.dir.join("cgroup.procs");
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > '{}' && exec \"$0\" \"$@\"",
                procs.display()
            ))
            .arg(env!("CARGO_BIN_EXE_flea"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let peak = std::fs::read_to_string(self.dir.join(peak_file))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        (out, peak)
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[test]
fn bench_plan_and_demo_stay_inside_a_cgroup_limit_near_the_budget() {
    // Budget 21 MiB (every layer streams at context 64); the limit leaves
    // 40 MiB for the process itself (binary, stacks, allocator) and nothing
    // for probe buffers or page cache beyond what the budget allows.
    let budget_mib = 21u64;
    let limit = (budget_mib + 40) << 20;
    let name = format!("flea-test-{}", std::process::id());
    let Some(group) = MemoryCgroup::create(&name, limit) else {
        eprintln!(
            "SKIPPED: cannot create a memory cgroup here (needs root and a memory controller)"
        );
        return;
    };
    let m = model();
    let budget = format!("{budget_mib}MiB");
    let runs: [Vec<&str>; 3] = [
        vec!["bench", "-m", &m, "--budget", &budget, "-c", "64"],
        vec!["plan", "-m", &m, "--budget", &budget, "-c", "64"],
        vec!["demo", "-m", &m, "--budget", &budget],
    ];
    for args in runs {
        let (out, peak) = group.run(&args);
        assert!(
            out.status.success(),
            "{args:?} under a {} MiB cgroup limit: {} (peak {} MiB)\n{}",
            limit >> 20,
            out.status,
            peak >> 20,
            stderr(&out)
        );
        eprintln!(
            "{}: cgroup peak {} MiB (limit {} MiB)",
            args[0],
            peak >> 20,
            limit >> 20
        );
    }
}
