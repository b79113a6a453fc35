//! The deployment files: every board config under configs/ loads, the rootfs
//! tarball from cross/package.sh has the documented layout, modes and owner,
//! the systemd units are well formed, cross/deploy.sh --dry-run prints its
//! scp/ssh commands, and cross/docker-build.sh (the Dockerfile.jetson build
//! step) runs natively. Nothing here needs an aarch64 toolchain or a board:
//! the host's own `flea` binary stands in for the aarch64 one.

use flea::config::{Backend, Budget, Config};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh, empty directory for one test under cargo's per-target tmp dir.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("deploy-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Run a cross/ script with bash (so the checkout's file modes do not matter).
fn script(name: &str, args: &[&str]) -> Output {
    let path = root().join("cross").join(name);
    Command::new("bash")
        .arg(&path)
        .args(args)
        .current_dir(root())
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("FLEA_BINARY")
        .output()
        .unwrap_or_else(|e| panic!("cannot run bash {}: {e}", path.display()))
}

fn text(out: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn assert_ok(out: &Output, what: &str) {
    assert!(out.status.success(), "{what} failed:\n{}", text(out));
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn config_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("configs"))
        .expect("read configs/")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

const BOARD_CONFIGS: [&str; 7] = [
    "agx-orin-32gb",
    "agx-orin-64gb",
    "cpu",
    "default",
    "dgpu-8gb",
    "orin-nano-8gb",
    "orin-nx-16gb",
];

#[test]
fn every_config_loads() {
    let files = config_files();
    let names: BTreeSet<String> = files
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in BOARD_CONFIGS {
        assert!(names.contains(want), "configs/{want}.toml is missing");
    }
    for file in &files {
        // Config::load rejects unknown keys and bad values, naming the key.
        if let Err(e) = Config::load(file) {
            panic!("{}: {e}", file.display());
        }
    }
}

/// The keys Config accepts at the top level (`None`) or in a section, read
/// from the error it gives for an unknown one ("expected one of `a`, `b`").
fn known_keys(section: Option<&str>) -> Vec<String> {
    let probe = match section {
        None => "zz_probe = 1\n".to_string(),
        Some(s) => format!("[{s}]\nzz_probe = 1\n"),
    };
    let message = Config::parse(&probe, "probe.toml").unwrap_err().message;
    let expected = message
        .split_once("expected")
        .unwrap_or_else(|| panic!("no key list in: {message}"))
        .1;
    let keys: Vec<String> = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(String::from)
        .collect();
    assert!(!keys.is_empty(), "no key list in: {message}");
    keys
}

#[test]
fn default_toml_is_the_library_default_and_documents_every_key() {
    let path = root().join("configs/default.toml");
    let loaded = Config::load(&path).unwrap();
    assert_eq!(
        loaded,
        Config::default(),
        "configs/default.toml must hold the built-in defaults"
    );

    // Every key the library knows is written out (not left to the default)
    // and has a comment right above it or after it on the same line. The
    // keys come from Config itself: its unknown-field error lists them.
    let text = std::fs::read_to_string(&path).unwrap();
    let table: toml::Table = text.parse().unwrap();
    let sections = known_keys(None);
    assert!(sections.contains(&"memory".to_string()), "{sections:?}");
    let written: BTreeSet<String> = table.keys().cloned().collect();
    assert_eq!(
        written,
        sections.iter().cloned().collect(),
        "default.toml sections"
    );
    for section in &sections {
        let t = table[section.as_str()]
            .as_table()
            .unwrap_or_else(|| panic!("default.toml: {section} is not a table"));
        let have: BTreeSet<String> = t.keys().cloned().collect();
        let want: BTreeSet<String> = known_keys(Some(section)).into_iter().collect();
        assert_eq!(have, want, "default.toml [{section}] keys");
    }
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') || l.starts_with('[') {
            continue;
        }
        let above = i
            .checked_sub(1)
            .map(|j| lines[j].trim_start().starts_with('#'))
            .unwrap_or(false);
        assert!(
            above || l.contains('#'),
            "default.toml line {}: `{l}` has no comment",
            i + 1
        );
    }
}

#[test]
fn board_budgets_leave_room_for_the_os() {
    // (config, memory the board has in GiB). The budget must leave at least
    // 1.5 GiB for L4T and the CUDA context, and the f32 KV cache of a 13B
    // llama (2 x 40 layers x 5120 x 4 bytes per position) at the board's
    // context must take at most half the budget.
    let boards = [
        ("orin-nano-8gb", 8.0),
        ("orin-nx-16gb", 16.0),
        ("agx-orin-32gb", 32.0),
        ("agx-orin-64gb", 64.0),
        ("dgpu-8gb", 8.0),
    ];
    const GIB: f64 = (1u64 << 30) as f64;
    for (name, memory_gib) in boards {
        let c = Config::load(&root().join(format!("configs/{name}.toml"))).unwrap();
        let Budget::Bytes(budget) = c.memory.budget else {
            panic!("{name}: budget should be a size, not a share of the model");
        };
        let budget_gib = budget as f64 / GIB;
        assert!(
            budget_gib <= memory_gib - 1.5,
            "{name}: budget {budget_gib:.2} GiB leaves under 1.5 GiB of {memory_gib} GiB"
        );
        let ctx = c.generation.context;
        assert!(ctx > 0, "{name}: set an explicit context");
        let kv_13b = 2.0 * 40.0 * 5120.0 * 4.0 * ctx as f64;
        assert!(
            kv_13b <= budget as f64 / 2.0,
            "{name}: a 13B KV cache at context {ctx} takes {:.2} GiB of {budget_gib:.2} GiB",
            kv_13b / GIB
        );
        assert_eq!(c.device.backend, Backend::Auto, "{name}");
    }
    let nano = Config::load(&root().join("configs/orin-nano-8gb.toml")).unwrap();
    assert!(nano.generation.context <= 512, "Orin Nano: 13B KV cache");
    let cpu = Config::load(&root().join("configs/cpu.toml")).unwrap();
    assert_eq!(cpu.device.backend, Backend::Cpu);
}

/// One `tar -tv` line: mode string, owner/group, path.
struct Entry {
    mode: String,
    owner: String,
    path: String,
}

fn list_tarball(tarball: &Path) -> Vec<Entry> {
    let out = Command::new("tar")
        .arg("-tvzf")
        .arg(tarball)
        .output()
        .expect("run tar");
    assert_ok(&out, "tar -tvzf");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            // -rwxr-xr-x 0/0   10652976 2026-11-26 03:44 usr/local/bin/flea
            let f: Vec<&str> = line.split_whitespace().collect();
            assert!(f.len() >= 6, "unexpected tar -tv line: {line}");
            Entry {
                mode: f[0].to_string(),
                owner: f[1].to_string(),
                path: f[5..].join(" ").trim_end_matches('/').to_string(),
            }
        })
        .collect()
}

fn package(dir: &Path, extra: &[&str]) -> PathBuf {
    let tarball = dir.join("flea-rootfs.tar.gz");
    let mut args = vec![
        "--binary",
        env!("CARGO_BIN_EXE_flea"),
        "--any-arch",
        "--out",
        tarball.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = script("package.sh", &args);
    assert_ok(&out, "cross/package.sh");
    assert!(tarball.is_file(), "no tarball at {}", tarball.display());
    tarball
}

#[test]
fn package_is_a_rootfs_overlay_with_modes_and_owner() {
    let dir = scratch("package");
    let tarball = package(&dir, &[]);
    let entries = list_tarball(&tarball);

    let mut files = BTreeSet::new();
    for e in &entries {
        assert_eq!(
            e.owner, "0/0",
            "{}: owner should be root:root (0/0)",
            e.path
        );
        assert!(
            !e.path.starts_with('/') && !e.path.starts_with("./") && !e.path.contains(".."),
            "{}: paths are relative to the rootfs, without ./",
            e.path
        );
        let want = if e.mode.starts_with('d') {
            "drwxr-xr-x"
        } else if e.path == "usr/local/bin/flea" {
            "-rwxr-xr-x"
        } else {
            "-rw-r--r--"
        };
        assert_eq!(e.mode, want, "{}: mode", e.path);
        if !e.mode.starts_with('d') {
            files.insert(e.path.clone());
        }
    }
    let mut expected: BTreeSet<String> = [
        "usr/local/bin/flea",
        "etc/flea/config.toml",
        "etc/systemd/system/flea.service",
        "etc/systemd/system/flea-input.socket",
        "usr/lib/tmpfiles.d/flea.conf",
        "usr/share/doc/flea/README",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    for c in config_files() {
        expected.insert(format!(
            "etc/flea/{}",
            c.file_name().unwrap().to_string_lossy()
        ));
    }
    assert_eq!(files, expected, "tarball file list");

    // config.toml is the default board's file, byte for byte; the binary is
    // the one given.
    let x = dir.join("x");
    std::fs::create_dir_all(&x).unwrap();
    let out = Command::new("tar")
        .arg("-xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(&x)
        .output()
        .unwrap();
    assert_ok(&out, "tar -xzf");
    assert_eq!(
        std::fs::read(x.join("etc/flea/config.toml")).unwrap(),
        std::fs::read(root().join("configs/orin-nano-8gb.toml")).unwrap()
    );
    assert_eq!(
        std::fs::read(x.join("usr/local/bin/flea")).unwrap(),
        std::fs::read(env!("CARGO_BIN_EXE_flea")).unwrap()
    );
    Config::load(&x.join("etc/flea/config.toml")).unwrap();

    // --default-config picks another board.
    let other = package(
        &scratch("package-nx"),
        &["--default-config", "orin-nx-16gb"],
    );
    let y = dir.join("y");
    std::fs::create_dir_all(&y).unwrap();
    let out = Command::new("tar")
        .arg("-xzf")
        .arg(&other)
        .arg("-C")
        .arg(&y)
        .arg("etc/flea/config.toml")
        .output()
        .unwrap();
    assert_ok(&out, "tar -xzf");
    assert_eq!(
        std::fs::read(y.join("etc/flea/config.toml")).unwrap(),
        std::fs::read(root().join("configs/orin-nx-16gb.toml")).unwrap()
    );
}

#[test]
fn package_refuses_a_host_binary_without_any_arch() {
    if cfg!(target_arch = "aarch64") {
        println!("skipped: the test binary is aarch64 itself");
        return;
    }
    let dir = scratch("package-refuse");
    let out = script(
        "package.sh",
        &[
            "--binary",
            env!("CARGO_BIN_EXE_flea"),
            "--out",
            dir.join("t.tar.gz").to_str().unwrap(),
        ],
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not aarch64"),
        "{}",
        text(&out)
    );
    let out = script("package.sh", &["--default-config", "no-such-board"]);
    assert!(!out.status.success(), "{}", text(&out));
}

/// A systemd unit file as section -> [(key, value)], rejecting what systemd
/// would warn about: keys outside a section, lines without `=`, unknown
/// section names.
fn parse_unit(path: &Path) -> BTreeMap<String, Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut sections: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut logical = String::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if logical.is_empty() && (line.is_empty() || line.starts_with('#') || line.starts_with(';'))
        {
            continue;
        }
        // A trailing backslash continues the line.
        if let Some(head) = line.strip_suffix('\\') {
            logical.push_str(head);
            logical.push(' ');
            continue;
        }
        logical.push_str(line);
        let l = std::mem::take(&mut logical);
        if let Some(name) = l.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            assert!(
                ["Unit", "Service", "Socket", "Install"].contains(&name),
                "{}:{}: unexpected section [{name}]",
                path.display(),
                i + 1
            );
            sections.entry(name.to_string()).or_default();
            current = Some(name.to_string());
            continue;
        }
        let section = current
            .as_ref()
            .unwrap_or_else(|| panic!("{}:{}: key before any section", path.display(), i + 1));
        let (k, v) = l
            .split_once('=')
            .unwrap_or_else(|| panic!("{}:{}: expected key=value: {l}", path.display(), i + 1));
        sections
            .get_mut(section)
            .unwrap()
            .push((k.trim().to_string(), v.trim().to_string()));
    }
    sections
}

fn get<'a>(unit: &'a BTreeMap<String, Vec<(String, String)>>, s: &str, k: &str) -> &'a str {
    unit.get(s)
        .and_then(|kv| kv.iter().find(|(key, _)| key == k))
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {k}= in [{s}]"))
}

#[test]
fn systemd_units_are_well_formed() {
    let dir = root().join("cross/rootfs/etc/systemd/system");
    let service = parse_unit(&dir.join("flea.service"));
    let socket = parse_unit(&dir.join("flea-input.socket"));
    for s in ["Unit", "Service", "Install"] {
        assert!(service.contains_key(s), "flea.service has no [{s}]");
    }
    for s in ["Unit", "Socket", "Install"] {
        assert!(socket.contains_key(s), "flea-input.socket has no [{s}]");
    }
    let exec = get(&service, "Service", "ExecStart");
    assert!(
        exec.starts_with(
            "/usr/local/bin/flea run --config /etc/flea/config.toml --model /models/model.gguf"
        ),
        "ExecStart={exec}"
    );
    assert_eq!(get(&service, "Service", "StandardInput"), "socket");
    assert_eq!(get(&service, "Unit", "Requires"), "flea-input.socket");
    assert_eq!(get(&socket, "Socket", "ListenFIFO"), "/run/flea/input");
    assert_eq!(get(&socket, "Socket", "Service"), "flea.service");
    assert_eq!(get(&socket, "Socket", "Accept"), "no");
    // flea exits 130 on SIGTERM: a stop must not count as a failure.
    assert!(get(&service, "Service", "SuccessExitStatus").contains("130"));
    // The completions file's directory comes from tmpfiles.d.
    let output = get(&service, "Service", "StandardOutput");
    let tmpfiles =
        std::fs::read_to_string(root().join("cross/rootfs/usr/lib/tmpfiles.d/flea.conf")).unwrap();
    let log_dir = output
        .strip_prefix("append:")
        .and_then(|p| Path::new(p).parent())
        .unwrap_or_else(|| panic!("StandardOutput={output}"));
    assert!(
        tmpfiles.lines().any(|l| l
            .split_whitespace()
            .take(2)
            .eq(["d", log_dir.to_str().unwrap()])),
        "tmpfiles.d/flea.conf does not create {}",
        log_dir.display()
    );

    if !have("systemd-analyze") {
        println!("skipped systemd-analyze verify: systemd-analyze not installed");
        return;
    }
    // systemd-analyze checks that ExecStart's program exists, so verify
    // copies that start this test's own flea binary.
    let copy = scratch("units");
    let exe = env!("CARGO_BIN_EXE_flea");
    let service_text = std::fs::read_to_string(dir.join("flea.service"))
        .unwrap()
        .replace(
            "ExecStart=/usr/local/bin/flea ",
            &format!("ExecStart={exe} "),
        );
    std::fs::write(copy.join("flea.service"), service_text).unwrap();
    std::fs::copy(
        dir.join("flea-input.socket"),
        copy.join("flea-input.socket"),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no", "--generators=no"])
        .arg(copy.join("flea-input.socket"))
        .arg(copy.join("flea.service"))
        .current_dir(&copy)
        .output()
        .unwrap();
    println!("{}", text(&out));
    assert_ok(&out, "systemd-analyze verify");
    // Unknown keys and bad values are only warnings there; none is allowed
    // about our units.
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let ours: Vec<&str> = all
        .lines()
        .filter(|l| l.contains("flea.service") || l.contains("flea-input.socket"))
        .collect();
    assert!(ours.is_empty(), "systemd-analyze warnings: {ours:#?}");
}

#[test]
fn deploy_dry_run_prints_scp_and_ssh() {
    let dir = scratch("deploy");
    let tarball = dir.join("flea-0.0.0-aarch64-rootfs.tar.gz");
    std::fs::write(&tarball, b"not really a tarball").unwrap();
    let tb = tarball.to_str().unwrap();

    let out = script(
        "deploy.sh",
        &[
            "--dry-run",
            "--tarball",
            tb,
            "--config",
            "orin-nx-16gb",
            "--enable",
            "user@jetson",
        ],
    );
    assert_ok(&out, "deploy.sh --dry-run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "one scp and one ssh command:\n{stdout}");
    assert!(
        lines[0].starts_with("+ scp ")
            && lines[0].contains(tb)
            && lines[0].contains("user@jetson:/tmp/flea-rootfs."),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with("+ ssh ") && lines[1].contains(" user@jetson "),
        "{}",
        lines[1]
    );
    for want in [
        "sudo sh -c",
        "tar -xzf",
        "--no-overwrite-dir",
        "cp /etc/flea/orin-nx-16gb.toml /etc/flea/config.toml",
        "systemctl daemon-reload",
        "systemctl enable --now flea-input.socket",
        "systemctl try-restart flea.service",
    ] {
        assert!(
            lines[1].contains(want),
            "ssh command lacks {want:?}: {}",
            lines[1]
        );
    }

    // root needs no sudo; ssh options reach both commands.
    let out = script(
        "deploy.sh",
        &[
            "--dry-run",
            "--tarball",
            tb,
            "-o",
            "Port=2222",
            "root@10.0.0.2",
        ],
    );
    assert_ok(&out, "deploy.sh --dry-run as root");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("sudo"), "{stdout}");
    assert_eq!(stdout.matches("Port=2222").count(), 2, "{stdout}");
    assert!(!stdout.contains("enable --now"), "{stdout}");

    for bad in [
        &["--dry-run"][..],
        &["--dry-run", "--config", "no-such-board", "user@jetson"][..],
        &["--dry-run", "--bogus", "user@jetson"][..],
    ] {
        let out = script("deploy.sh", bad);
        assert!(
            !out.status.success(),
            "deploy.sh {bad:?} should fail:\n{}",
            text(&out)
        );
    }
}

#[test]
fn scripts_pass_bash_n_and_shellcheck() {
    let mut scripts: Vec<PathBuf> = std::fs::read_dir(root().join("cross"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sh"))
        .collect();
    scripts.sort();
    assert!(scripts.len() >= 7, "cross/*.sh: {scripts:?}");
    for s in &scripts {
        let out = Command::new("bash").arg("-n").arg(s).output().unwrap();
        assert_ok(&out, &format!("bash -n {}", s.display()));
    }
    if have("shellcheck") {
        let out = Command::new("shellcheck")
            .arg("-x")
            .args(&scripts)
            .current_dir(root())
            .output()
            .unwrap();
        assert_ok(&out, "shellcheck -x cross/*.sh");
    } else {
        println!("skipped shellcheck: not installed (apt-get install -y shellcheck)");
    }
}

/// The architecture an ELF file is for, as `uname -m` names it.
fn elf_machine(path: &Path) -> Option<&'static str> {
    use std::io::Read;
    let mut bytes = [0u8; 20];
    std::fs::File::open(path)
        .ok()?
        .read_exact(&mut bytes)
        .ok()?;
    if &bytes[..4] != b"\x7fELF" {
        return None;
    }
    match u16::from_le_bytes([bytes[18], bytes[19]]) {
        62 => Some("x86_64"),
        183 => Some("aarch64"),
        _ => None,
    }
}

#[test]
fn docker_build_script_stages_the_runtime_files() {
    let out = script("docker-build.sh", &["--check"]);
    assert_ok(&out, "docker-build.sh --check");

    // Build as the Dockerfile does, but for this host and with the dev
    // profile, which `cargo test` has already built: the nested cargo call is
    // then a no-op. Only when this test's flea is a plain host build: an ELF
    // for the machine's own architecture (asked of a child process, which
    // runs natively even when this test runs under QEMU) in `<target>/debug`,
    // not `<target>/<triple>/debug`. Otherwise (cross/test.sh, --target
    // builds) stage the binary there is, and leave that target dir alone.
    let stage = scratch("docker-stage").join("stage");
    let exe = Path::new(env!("CARGO_BIN_EXE_flea"));
    let profile_dir = exe.parent().unwrap();
    let target_dir = profile_dir.parent().unwrap();
    let machine = Command::new("uname").arg("-m").output().unwrap();
    let machine = String::from_utf8_lossy(&machine.stdout).trim().to_string();
    let in_triple_dir = target_dir.file_name().is_some_and(|n| {
        n.to_string_lossy()
            .starts_with(&format!("{}-", std::env::consts::ARCH))
    });
    let host_build = elf_machine(exe) == Some(machine.as_str())
        && profile_dir.file_name().is_some_and(|n| n == "debug")
        && !in_triple_dir;
    let path = root().join("cross/docker-build.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(&path)
        .args([
            "--stage",
            stage.to_str().unwrap(),
            "--default-config",
            "agx-orin-64gb",
        ])
        .current_dir(root())
        .env_remove("CUDA_HOME");
    if host_build {
        cmd.args(["--profile", "dev"])
            .env("CARGO_TARGET_DIR", target_dir);
    } else {
        cmd.args(["--binary", exe.to_str().unwrap()]);
    }
    let start = std::time::Instant::now();
    let out = cmd.output().unwrap();
    println!(
        "{} (nested cargo build: {host_build})\n{}\n(took {:.1} s)",
        exe.display(),
        text(&out),
        start.elapsed().as_secs_f64()
    );
    assert_ok(&out, "docker-build.sh");

    let flea = stage.join("usr/local/bin/flea");
    assert!(flea.is_file(), "{} missing", flea.display());
    assert_eq!(std::fs::read(&flea).unwrap(), std::fs::read(exe).unwrap());
    assert_eq!(
        std::fs::read(stage.join("etc/flea/config.toml")).unwrap(),
        std::fs::read(root().join("configs/agx-orin-64gb.toml")).unwrap()
    );
    for c in config_files() {
        assert!(stage
            .join("etc/flea")
            .join(c.file_name().unwrap())
            .is_file());
    }

    // The Dockerfile copies exactly these staged paths and runs this script.
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile.jetson")).unwrap();
    for want in [
        "bash cross/docker-build.sh --stage /stage",
        "COPY --from=build /stage/usr/local/bin/flea /usr/local/bin/flea",
        "COPY --from=build /stage/etc/flea/ /etc/flea/",
        r#"ENTRYPOINT ["flea", "run", "--config", "/etc/flea/config.toml"]"#,
    ] {
        assert!(
            dockerfile.contains(want),
            "Dockerfile.jetson lacks {want:?}"
        );
    }
    // Every COPY from the build context names a path that exists.
    for line in dockerfile.lines() {
        let Some(rest) = line.strip_prefix("COPY ") else {
            continue;
        };
        if rest.starts_with("--from") {
            continue;
        }
        let parts: Vec<&str> = rest.split_whitespace().collect();
        for src in &parts[..parts.len() - 1] {
            assert!(
                root().join(src).exists(),
                "Dockerfile.jetson copies missing {src}"
            );
        }
    }
}
