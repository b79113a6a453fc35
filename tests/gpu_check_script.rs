//! scripts/gpu-check.sh without a GPU: a stand-in `nvidia-smi` reports a
//! driver, stand-in artifact sets (MANIFEST plus executables that only say
//! they ran) stand for what scripts/gpu-artifacts.sh builds, and the script
//! must print the driver first, pick the set that driver can load, and say
//! clearly when none can (issue 13).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch(tag: &str) -> Scratch {
    let d = std::env::temp_dir().join(format!("flea-gpu-check-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    Scratch(d)
}

fn executable(path: &Path, body: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A `nvidia-smi` for driver `version` whose banner says `cuda`.
fn nvidia_smi(bin: &Path, version: &str, cuda: &str) {
    executable(
        &bin.join("nvidia-smi"),
        &format!(
            r#"case "$*" in
  *--query-gpu=driver_version*) echo "{version}" ;;
  *--query-gpu=*) echo "name, driver_version"; echo "Stand-in GPU, {version}" ;;
  *) echo "| NVIDIA-SMI {version}   Driver Version: {version}   CUDA Version: {cuda}     |" ;;
esac"#
        ),
    );
}

/// An artifact set built by CUDA `release`, whose executables append their
/// name to `ran` (and `flea synth` writes its --out file).
fn artifact_set(dir: &Path, release: &str, ran: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("MANIFEST"),
        format!("commit: test\ncuda archs: 75;80;86;87;89;90\ncuda release: {release}\n"),
    )
    .unwrap();
    let log = ran.display();
    let stub = |name: &str| {
        format!(
            r#"echo "{release} {name} $*" >> "{log}"
prev=""
for a in "$@"; do [ "$prev" = "--out" ] && : > "$a"; prev="$a"; done
echo '{{"within_budget":true}}'"#
        )
    };
    for name in ["flea", "gpu_bench", "tests/gpu"] {
        executable(&dir.join(name), &stub(name));
    }
}

fn gpu_check(root: &Path, bin: &Path, work: &Path, env: &[(&str, &str)]) -> Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/gpu-check.sh");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("bash");
    cmd.arg(&script)
        .arg(root)
        .arg(work.join("logs"))
        .env("PATH", path)
        .env("FLEA_GPU_CHECK_WORK", work.join("work"))
        .env("FLEA_NVRTC_LIB", "")
        .env_remove("CUDA_HOME")
        .env_remove("FLEA_FIXTURES")
        .env_remove("OUT");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Whether this machine has an NVRTC the script would find by itself.
fn host_has_nvrtc() -> bool {
    ["/usr/local/cuda/lib64/libnvrtc.so.12"]
        .iter()
        .any(|p| Path::new(p).exists())
        || Command::new("sh")
            .args([
                "-c",
                "ldconfig -p 2>/dev/null | grep -q 'libnvrtc\\.so\\.12 '",
            ])
            .status()
            .is_ok_and(|s| s.success())
}

#[test]
fn the_driver_comes_first_and_picks_the_set_it_can_load() {
    let s = scratch("pick");
    let (bin, root, ran) = (s.0.join("bin"), s.0.join("art"), s.0.join("ran"));
    nvidia_smi(&bin, "550.54.15", "12.4");
    artifact_set(&root.join("cuda-12.4"), "12.4", &ran);
    artifact_set(&root.join("cuda-13.0"), "13.0", &ran);
    let out = gpu_check(&root, &bin, &s.0, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let first = stdout.lines().next().unwrap_or_default();
    assert_eq!(first, "driver: 550.54.15 (CUDA 12.4)", "{}", text(&out));
    assert!(
        stdout.contains(&format!("artifacts: {}", root.join("cuda-12.4").display())),
        "{}",
        text(&out)
    );
    let ran = std::fs::read_to_string(&ran).unwrap();
    assert!(
        ran.lines().all(|l| l.starts_with("12.4 ")),
        "ran a CUDA 13 artifact on a 12.4 driver:\n{ran}"
    );
    assert!(
        ran.contains("tests/gpu") && ran.contains("gpu_bench"),
        "{ran}"
    );
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("== gpu-check: driver 550.54.15") && last.contains("tests PASS"),
        "{last}"
    );

    // A driver new enough for both: the newest.
    let s2 = scratch("pick-new");
    let (bin2, ran2) = (s2.0.join("bin"), s2.0.join("ran"));
    nvidia_smi(&bin2, "580.65.06", "13.0");
    artifact_set(&root.join("cuda-12.4"), "12.4", &ran2);
    artifact_set(&root.join("cuda-13.0"), "13.0", &ran2);
    let out = gpu_check(&root, &bin2, &s2.0, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let ran2 = std::fs::read_to_string(&ran2).unwrap();
    assert!(ran2.lines().all(|l| l.starts_with("13.0 ")), "{ran2}");
}

#[test]
fn a_driver_too_old_for_every_set_is_named_and_needs_nvrtc() {
    if host_has_nvrtc() {
        eprintln!("skipped: this machine has an NVRTC the script finds by itself");
        return;
    }
    let s = scratch("old");
    let (bin, root, ran) = (s.0.join("bin"), s.0.join("art"), s.0.join("ran"));
    nvidia_smi(&bin, "535.183.01", "12.2");
    artifact_set(&root, "13.0", &ran);
    let out = gpu_check(&root, &bin, &s.0, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("driver: 535.183.01 (CUDA 12.2)"),
        "{}",
        text(&out)
    );
    for want in ["older than every artifact set", "R580", "no NVRTC"] {
        assert!(stdout.contains(want), "no {want:?}: {}", text(&out));
    }
    assert!(!ran.exists(), "ran something it cannot load");

    // With NVRTC there, it goes on with the set, through the carried sources.
    let lib = s.0.join("libnvrtc.so.12");
    std::fs::write(&lib, b"").unwrap();
    let out = gpu_check(
        &root,
        &bin,
        &s.0,
        &[("FLEA_NVRTC_LIB", lib.to_str().unwrap())],
    );
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("compiles the kernel sources it carries with NVRTC"),
        "{}",
        text(&out)
    );
}
