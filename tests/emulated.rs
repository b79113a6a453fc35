//! Tests that need the emulated CUDA device (tests/emulator/, run by
//! scripts/emulated-gpu-check.sh): the driver's error injection and
//! memory size make the GPU error paths happen on demand, in child
//! processes so that the knobs (environment variables the fake driver
//! reads) never leak into other tests. Without `--features cuda` this file
//! is empty; without the emulated device (FLEA_EMULATED_GPU unset) each
//! test says it was skipped, except the ones that need no device.

mod common;

#[cfg(feature = "cuda")]
mod emulated {
    use super::common;
    use flea::backend::cuda::{self, CudaForward, CudaForwardConfig};
    use flea::backend::Feed;
    use flea::engine::EngineConfig;
    use flea::gguf::GgufFile;
    use flea::model::Model;
    use flea::ErrorKind;
    use std::io::Write;
    use std::process::{Command, Output, Stdio};

    fn say(line: &str) {
        let _ = std::io::stderr().write_all(line.as_bytes());
    }

    /// Whether the emulated device is in use; says so when not.
    fn emulated(test: &str) -> bool {
        if std::env::var_os("FLEA_EMULATED_GPU").is_none() {
            say(&format!("{test}: skipped: not on the emulated device\n"));
            return false;
        }
        true
    }

    /// This test binary again, running only `test`, with `env` set: the
    /// way to give one test its own driver settings.
    fn child(test: &str, env: &[(&str, String)]) -> Output {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", test, "--test-threads=1", "--nocapture"])
            .env("FLEA_EMU_CHILD", test);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }

    /// Whether this process is the child run for `test`.
    fn is_child(test: &str) -> bool {
        std::env::var("FLEA_EMU_CHILD").is_ok_and(|c| c == test)
    }

    fn flea(args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_flea"));
        cmd.args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut c = cmd.spawn().unwrap();
        let _ = c.stdin.take().unwrap().write_all(b"hello\n");
        c.wait_with_output().unwrap()
    }

    fn text(o: &Output) -> String {
        format!(
            "status {:?}\nstdout:\n{}\nstderr:\n{}",
            o.status.code(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    }

    fn config_file(tag: &str, body: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("flea-emu-{}-{tag}.toml", std::process::id()));
        std::fs::write(&p, body).unwrap();
        p
    }

    const TINY: &str = "llama-2-tiny-random.gguf";

    /// Bug 2 of issue 13: the default archs had no code for sm_75/80/86/89
    /// (T4, A100, A10/A40, RTX 30xx/40xx). Needs no device. build.rs's
    /// default covers sm_75 to sm_90, and when the build used it (it says
    /// so at compile time: cargo also sets FLEA_CUDA_ARCHS in the test's
    /// environment, so that cannot tell), the binary carries SASS for each
    /// and PTX for sm_75, the lowest, which newer GPUs JIT.
    #[test]
    fn default_archs_cover_turing_to_hopper() {
        let build_rs = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("build.rs"),
        )
        .unwrap();
        let default = build_rs
            .lines()
            .find_map(|l| l.strip_prefix("const DEFAULT_ARCHS: &str = \""))
            .and_then(|l| l.strip_suffix("\";"))
            .expect("build.rs has DEFAULT_ARCHS");
        let wanted = ["75", "80", "86", "87", "89", "90"];
        let default: Vec<&str> = default.split(';').collect();
        for want in wanted {
            assert!(
                default.contains(&want),
                "sm_{want} missing from the default {default:?}"
            );
        }
        if env!("FLEA_CUDA_ARCHS_SOURCE") != "default" {
            say("default archs: this build chose its own (FLEA_CUDA_ARCHS)\n");
            return;
        }
        let archs: Vec<&str> = cuda::FATBIN_ARCHS.split(';').collect();
        assert_eq!(archs, default);
        assert_eq!(cuda::FATBIN_PTX_ARCH, "75");
    }

    /// Bug 1 of issue 13: `auto` must fall back to the CPU when the driver
    /// creates a context but cannot load the kernels (a driver older than
    /// the toolkit that built them), with one log line saying why; `cuda`
    /// must fail naming the driver version and what the binary carries.
    #[test]
    fn auto_falls_back_to_the_cpu_when_the_kernels_cannot_load() {
        if !emulated("auto fallback") {
            return;
        }
        let model = common::model(TINY).display().to_string();
        let old = [("FAKE_CUDA_OLD_DRIVER", "1")];
        let auto = config_file("auto", "[device]\nbackend = \"auto\"\n");
        let out = flea(
            &[
                "run",
                "--model",
                &model,
                "--config",
                auto.to_str().unwrap(),
                "-n",
                "2",
            ],
            &old,
        );
        assert!(out.status.success(), "{}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err.lines().filter(|l| l.contains("backend: CPU")).collect();
        assert_eq!(lines.len(), 1, "{}", text(&out));
        assert!(lines[0].contains("cannot load the kernels"), "{}", lines[0]);

        let cuda = config_file("cuda", "[device]\nbackend = \"cuda\"\n");
        let out = flea(
            &[
                "run",
                "--model",
                &model,
                "--config",
                cuda.to_str().unwrap(),
                "-n",
                "2",
            ],
            &old,
        );
        let _ = std::fs::remove_file(&auto);
        let _ = std::fs::remove_file(&cuda);
        assert_eq!(out.status.code(), Some(3), "{}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("driver CUDA 11.4"), "{}", text(&out));
        assert!(err.contains(cuda::FATBIN_ARCHS), "{}", text(&out));
        assert!(
            err.contains(&format!("PTX for compute_{}", cuda::FATBIN_PTX_ARCH)),
            "{}",
            text(&out)
        );
        assert!(
            err.contains(&format!("built by CUDA {}", cuda::device::NVCC_RELEASE)),
            "{}",
            text(&out)
        );
        // No NVRTC on this tier's library path (unless the machine has a
        // real one): the error says so, and how to get it.
        if cuda::nvrtc::available().is_err() {
            assert!(
                err.contains("NVRTC: libnvrtc not found") && err.contains("nvidia-cuda-nvrtc-cu12"),
                "{}",
                text(&out)
            );
        } else {
            assert!(err.contains("NVRTC"), "{}", text(&out));
        }

        // And with a working driver, auto takes the device.
        let auto = config_file("auto2", "[device]\nbackend = \"auto\"\n");
        let out = flea(
            &[
                "run",
                "--model",
                &model,
                "--config",
                auto.to_str().unwrap(),
                "-n",
                "2",
            ],
            &[],
        );
        let _ = std::fs::remove_file(&auto);
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("backend: CUDA device 0"),
            "{}",
            text(&out)
        );
    }

    /// Every device allocation and every kernel launch that fails turns
    /// into an error exit with a message, never a panic or an abort: the
    /// fake driver fails the Nth allocation or launch.
    #[test]
    fn failed_allocations_and_launches_are_errors_not_panics() {
        if !emulated("injected failures") {
            return;
        }
        let model = common::model(TINY).display().to_string();
        let cuda = config_file("inject", "[device]\nbackend = \"cuda\"\n");
        let mut checked = 0;
        for knob in ["FAKE_CUDA_FAIL_ALLOC", "FAKE_CUDA_FAIL_LAUNCH"] {
            for n in [1, 2, 3, 5, 8, 13, 21, 34, 55, 89] {
                let n = n.to_string();
                let out = flea(
                    &[
                        "run",
                        "--model",
                        &model,
                        "--config",
                        cuda.to_str().unwrap(),
                        "-n",
                        "4",
                    ],
                    &[(knob, n.as_str())],
                );
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(
                    !err.contains("panicked") && out.status.code().is_some_and(|c| c != 101),
                    "{knob}={n}: {}",
                    text(&out)
                );
                if !out.status.success() {
                    assert!(
                        err.to_lowercase().contains("cuda"),
                        "{knob}={n}: {}",
                        text(&out)
                    );
                    checked += 1;
                }
            }
        }
        let _ = std::fs::remove_file(&cuda);
        assert!(
            checked >= 10,
            "only {checked} injected failures reached the run"
        );
    }

    /// Bug 5 of issue 13: the up-front free-memory check left out the
    /// embeddings and the output head, so a device that held everything
    /// else failed later with a raw out-of-memory error. On a device with
    /// room for all but half of them, `CudaForward::new` must refuse with
    /// the budget message.
    #[test]
    fn the_memory_check_counts_embeddings_and_output_head() {
        const TEST: &str = "emulated::the_memory_check_counts_embeddings_and_output_head";
        if !emulated("memory check") {
            return;
        }
        let name = "synth-256-Q8_0.gguf";
        let file = GgufFile::open(common::model(name)).unwrap();
        let model = Model::from_gguf(&file).unwrap();
        let engine = EngineConfig {
            n_ctx: 64,
            max_chunk: 8,
            n_seq: 1,
            threads: 1,
            ..Default::default()
        };
        let plan = engine.plan(&model, u64::MAX).unwrap();
        let cfg = CudaForwardConfig::for_plan(&engine, &plan, Feed::Device);
        if is_child(TEST) {
            let err = CudaForward::new(&model.hparams, cfg)
                .err()
                .expect("CudaForward::new must refuse a device without room for the weights");
            assert_eq!(err.kind, ErrorKind::Config, "{err}");
            assert!(
                err.to_string().contains("embeddings and output head"),
                "{err}"
            );
            return;
        }
        let without = CudaForward::memory_bytes(&model.hparams, cfg) + cfg.resident_bytes;
        assert!(
            plan.global_bytes >= 4 << 20,
            "fixture too small for MiB steps"
        );
        let mib = (without + plan.global_bytes / 2).div_ceil(1 << 20);
        let out = child(TEST, &[("FAKE_CUDA_MEM_MB", mib.to_string())]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("1 passed"),
            "{}",
            text(&out)
        );
    }

    /// The emulated NVRTC's folder (tests/emulator/build.sh), which
    /// scripts/emulated-gpu-check.sh names in FLEA_EMU_NVRTC_DIR; `None`
    /// (and the test says it skipped) without it.
    fn nvrtc_dir(test: &str) -> Option<String> {
        if !emulated(test) {
            return None;
        }
        let dir = std::env::var("FLEA_EMU_NVRTC_DIR")
            .ok()
            .filter(|d| std::path::Path::new(d).join("libnvrtc.so.12").is_file());
        if dir.is_none() {
            say(&format!(
                "{test}: skipped: FLEA_EMU_NVRTC_DIR names no emulated NVRTC\n"
            ));
        }
        dir
    }

    /// The library path with the emulated NVRTC first.
    fn with_nvrtc(dir: &str) -> String {
        match std::env::var("LD_LIBRARY_PATH") {
            Ok(p) if !p.is_empty() => format!("{dir}:{p}"),
            _ => dir.to_string(),
        }
    }

    fn cache_home(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("flea-emu-cache-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// The cached images under `cache` (`$XDG_CACHE_HOME/flea`).
    fn cached_images(cache: &std::path::Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(cache.join("flea"))
            .map(|rd| {
                rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Issue 13, loading that cannot strand a user: where the driver cannot
    /// load the embedded image (a driver older than the toolkit that built
    /// it) and NVRTC is there, the carried sources are compiled for the
    /// device at start, cached on disk, and the run goes on on the GPU; the
    /// next start loads the cached image (here: with compilation made to
    /// fail, it still runs); another GPU gets an image of its own; `auto`
    /// takes the GPU too. The emulated driver runs its host-compiled
    /// kernels whatever the image: this checks the plumbing (the library
    /// found, the options, the cache, the driver taking NVRTC's output),
    /// and `nvidias_nvrtc_compiles_the_carried_kernels` the sources.
    #[test]
    fn nvrtc_compiles_the_carried_kernels_when_the_image_cannot_load() {
        let Some(dir) = nvrtc_dir("nvrtc fallback") else {
            return;
        };
        let model = common::model(TINY).display().to_string();
        let cache = cache_home("nvrtc");
        let count = cache.join("compiles");
        let cuda = config_file("nvrtc", "[device]\nbackend = \"cuda\"\n");
        let ld = with_nvrtc(&dir);
        let xdg = cache.display().to_string();
        let counter = count.display().to_string();
        let run = |extra: &[(&str, &str)], config: &std::path::Path| {
            let mut env = vec![
                ("FAKE_CUDA_OLD_DRIVER", "1"),
                ("LD_LIBRARY_PATH", ld.as_str()),
                ("XDG_CACHE_HOME", xdg.as_str()),
                ("FAKE_NVRTC_COUNT", counter.as_str()),
                ("FLEA_LOG", "info"),
            ];
            env.extend_from_slice(extra);
            flea(
                &[
                    "run",
                    "--model",
                    &model,
                    "--config",
                    config.to_str().unwrap(),
                    "-n",
                    "2",
                    "--temp",
                    "0",
                ],
                &env,
            )
        };
        let compiles = || {
            std::fs::read_to_string(&count)
                .unwrap_or_default()
                .lines()
                .count()
        };
        let first = run(&[], &cuda);
        assert!(first.status.success(), "{}", text(&first));
        let err = String::from_utf8_lossy(&first.stderr);
        assert!(
            err.contains("compiled with NVRTC 12.6, sm_87") && err.contains("cached at"),
            "{}",
            text(&first)
        );
        assert_eq!(compiles(), 1);
        let images = cached_images(&cache);
        assert_eq!(images.len(), 1, "{images:?}");
        assert!(
            images[0].starts_with("kernels-") && images[0].ends_with("-sm_87.cubin"),
            "{images:?}"
        );

        // The next start: from the cache, no compile (it would fail).
        let second = run(&[("FAKE_NVRTC_FAIL", "1")], &cuda);
        assert!(second.status.success(), "{}", text(&second));
        assert!(
            String::from_utf8_lossy(&second.stderr).contains("from the cache"),
            "{}",
            text(&second)
        );
        assert_eq!(compiles(), 1, "the cached image was compiled again");
        assert_eq!(first.stdout, second.stdout, "same kernels, same text");

        // Another GPU: an image of its own, the first one kept.
        let other = run(&[("FAKE_CUDA_CC_MINOR", "6")], &cuda);
        assert!(other.status.success(), "{}", text(&other));
        assert_eq!(compiles(), 2);
        let images = cached_images(&cache);
        assert_eq!(images.len(), 2, "{images:?}");
        assert!(
            images.iter().any(|i| i.ends_with("-sm_86.cubin")),
            "{images:?}"
        );

        // `auto` takes the GPU through NVRTC as well, in one log line.
        let auto = config_file("nvrtc-auto", "[device]\nbackend = \"auto\"\n");
        let out = run(&[], &auto);
        let _ = std::fs::remove_file(&auto);
        let _ = std::fs::remove_file(&cuda);
        assert!(out.status.success(), "{}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        let backend: Vec<&str> = err.lines().filter(|l| l.contains("backend:")).collect();
        assert_eq!(backend.len(), 1, "{}", text(&out));
        assert!(backend[0].contains("CUDA device 0"), "{}", text(&out));
        let _ = std::fs::remove_dir_all(&cache);
    }

    /// When NVRTC is there but fails, or its image is refused too, the
    /// error names the driver version, what the binary carries and what
    /// NVRTC did; `auto` falls back to the CPU with one line saying so.
    #[test]
    fn nvrtc_failures_are_named_in_the_load_error() {
        let Some(dir) = nvrtc_dir("nvrtc failures") else {
            return;
        };
        let model = common::model(TINY).display().to_string();
        let cache = cache_home("nvrtc-fail");
        let ld = with_nvrtc(&dir);
        let xdg = cache.display().to_string();
        let cuda = config_file("nvrtc-fail", "[device]\nbackend = \"cuda\"\n");
        let auto = config_file("nvrtc-fail-auto", "[device]\nbackend = \"auto\"\n");
        let run = |knob: &str, config: &std::path::Path| {
            flea(
                &[
                    "run",
                    "--model",
                    &model,
                    "--config",
                    config.to_str().unwrap(),
                    "-n",
                    "2",
                ],
                &[
                    ("FAKE_CUDA_OLD_DRIVER", "1"),
                    (knob, "1"),
                    ("LD_LIBRARY_PATH", ld.as_str()),
                    ("XDG_CACHE_HOME", xdg.as_str()),
                ],
            )
        };
        for (knob, says) in [
            ("FAKE_NVRTC_FAIL", "compilation failed on purpose"),
            (
                "FAKE_CUDA_REFUSE_NVRTC",
                "the driver refused that image too",
            ),
        ] {
            let out = run(knob, &cuda);
            assert_eq!(out.status.code(), Some(3), "{knob}: {}", text(&out));
            let err = String::from_utf8_lossy(&out.stderr);
            for want in [
                "driver CUDA 11.4",
                cuda::FATBIN_ARCHS,
                "NVRTC 12.6, sm_87",
                says,
            ] {
                assert!(err.contains(want), "{knob}: no {want:?} in {}", text(&out));
            }
            let out = run(knob, &auto);
            assert!(out.status.success(), "{knob}: {}", text(&out));
            let err = String::from_utf8_lossy(&out.stderr);
            // One line about it all: the fallback's, with the reason.
            let lines: Vec<&str> = err
                .lines()
                .filter(|l| l.contains("CUDA") || l.contains("NVRTC"))
                .collect();
            assert_eq!(lines.len(), 1, "{knob}: {}", text(&out));
            assert!(
                lines[0].contains("backend: CPU") && lines[0].contains(says),
                "{knob}: {}",
                lines[0]
            );
        }
        let _ = std::fs::remove_file(&cuda);
        let _ = std::fs::remove_file(&auto);
        let _ = std::fs::remove_dir_all(&cache);
    }

    /// The carried sources compile with NVIDIA's NVRTC for every default
    /// architecture, into cubins that define every kernel the backend
    /// loads. Needs a real libnvrtc named by FLEA_NVRTC_LIB
    /// (scripts/nvrtc-check.sh installs one from PyPI and runs this);
    /// no device is used. Skipped without it.
    #[test]
    fn nvidias_nvrtc_compiles_the_carried_kernels() {
        let Some(lib) = std::env::var_os("FLEA_NVRTC_LIB").filter(|l| !l.is_empty()) else {
            say("real NVRTC: skipped: FLEA_NVRTC_LIB names no libnvrtc\n");
            return;
        };
        cuda::nvrtc::available().unwrap_or_else(|e| panic!("{lib:?}: {e}"));
        let version = cuda::nvrtc::version().unwrap();
        let archs: Vec<(i32, i32)> = std::env::var("FLEA_NVRTC_ARCHS")
            .unwrap_or_else(|_| "75 87 90".into())
            .split_whitespace()
            .map(|a| {
                let a: i32 = a.parse().expect("FLEA_NVRTC_ARCHS: numbers like 87");
                (a / 10, a % 10)
            })
            .collect();
        let geometry = &cuda::geometry::FORMAT_SUFFIXES;
        for arch in archs {
            let t = std::time::Instant::now();
            let cubin = cuda::nvrtc::compile(
                cuda::kernel_cache::NVRTC_SOURCE,
                &cuda::nvrtc::options(arch),
            )
            .unwrap_or_else(|e| panic!("NVRTC {version:?} for {arch:?}: {e}"));
            say(&format!(
                "NVRTC {}.{} sm_{}{}: {} bytes in {:.1} s\n",
                version.0,
                version.1,
                arch.0,
                arch.1,
                cubin.len(),
                t.elapsed().as_secs_f64()
            ));
            assert!(cubin.starts_with(b"\x7fELF"), "not a cubin");
            let has = |name: &str| {
                let mut sym = name.as_bytes().to_vec();
                sym.push(0);
                cubin.windows(sym.len()).any(|w| w == sym.as_slice())
            };
            let mut names: Vec<String> = [
                "rmsnorm",
                "rmsnorm_gather",
                "rope",
                "kv_store",
                "attention",
                "swiglu",
                "add_in_place",
                "argmax_rows",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            for f in geometry.iter() {
                names.push(cuda::geometry::matmul_name(f));
                names.push(cuda::geometry::embed_name(f));
                for c in 1..=cuda::geometry::MATVEC_MAX_COLS {
                    names.push(cuda::geometry::matvec_name(f, c).unwrap());
                }
            }
            for n in &names {
                assert!(
                    has(n),
                    "sm_{}{}: no kernel {n} in the cubin",
                    arch.0,
                    arch.1
                );
            }
        }
    }

    /// Issue 13: host waits block instead of spinning a core. The primary
    /// context carries CU_CTX_SCHED_BLOCKING_SYNC, and the emulated driver
    /// aborts any host wait that would spin (every other test here runs
    /// with that check); the check itself works: a wait on an event made
    /// without CU_EVENT_BLOCKING_SYNC, with work queued, aborts.
    #[test]
    fn host_waits_block_instead_of_spinning() {
        const TEST: &str = "emulated::host_waits_block_instead_of_spinning";
        if !emulated("blocking waits") {
            return;
        }
        let gpu = cuda::open(0).unwrap();
        if is_child(TEST) {
            use cuda::cudarc::driver::sys::CUevent_flags;
            let mut x = gpu.zeros::<f32>(1024).unwrap();
            let y = gpu.zeros::<f32>(1024).unwrap();
            gpu.add_in_place(&mut x.slice_mut(..), &y.slice(..), 1024)
                .unwrap();
            let spin = gpu
                .context()
                .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
                .unwrap();
            spin.record(gpu.stream()).unwrap();
            let _ = spin.synchronize();
            say("the spinning wait was not caught\n");
            return;
        }
        let flags = gpu.context_flags().unwrap();
        assert_eq!(
            flags & 0x7,
            0x4,
            "flags {flags:#x}: not CU_CTX_SCHED_BLOCKING_SYNC"
        );
        // Our own waits pass the check (lazy policy: work is still queued).
        let mut x = gpu.zeros::<f32>(1024).unwrap();
        let y = gpu.zeros::<f32>(1024).unwrap();
        gpu.add_in_place(&mut x.slice_mut(..), &y.slice(..), 1024)
            .unwrap();
        gpu.synchronize().unwrap();
        drop(gpu);
        let out = child(TEST, &[("FAKE_CUDA_POLICY", "lazy".into())]);
        assert!(!out.status.success(), "{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("busy-spinning"),
            "{}",
            text(&out)
        );
    }

    /// Issue 13: a launch the hardware cannot take (here: more query rows
    /// than the grid's y limit, which `--chunk` is capped below) is an
    /// error naming the limit, not a panic, and nothing is launched.
    #[test]
    fn a_launch_past_the_grid_limit_is_an_error() {
        if !emulated("grid limit") {
            return;
        }
        let gpu = cuda::open(0).unwrap();
        let n = cuda::geometry::MAX_GRID_Y + 1;
        let head_dim = 32;
        let mut out = gpu.zeros::<f32>(n * head_dim).unwrap();
        let q = gpu.zeros::<f32>(n * head_dim).unwrap();
        let cache = gpu.zeros::<f32>(head_dim).unwrap();
        let rows = gpu.zeros::<i32>(n).unwrap();
        let shape = cuda::AttentionShape {
            n_heads: 1,
            n_kv_heads: 1,
            head_dim,
            n_ctx: 1,
            window: None,
        };
        let e = gpu
            .attention(
                &mut out.slice_mut(..),
                &q.slice(..),
                &cache.slice(..),
                &cache.slice(..),
                &rows.slice(..),
                &rows.slice(..),
                n,
                shape,
            )
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Config);
        assert!(e.to_string().contains("65535"), "{e}");
        // And a buffer too short is an error too, not a panic.
        let e = gpu
            .add_in_place(&mut out.slice_mut(..4), &q.slice(..), 8)
            .unwrap_err();
        assert!(e.to_string().contains("add_in_place"), "{e}");
        gpu.synchronize().unwrap();
    }

    /// Issue 13, bug 3 (unified memory): on an integrated GPU the resident
    /// weights (layers, embeddings, output head) live once, in the weight
    /// source's host copy, which the kernels read in place; nothing of them
    /// is uploaded, so the device memory the run allocates leaves them out
    /// and the up-front check passes on a device with room for everything
    /// else only. The logits equal, bit for bit, those of the same plan on
    /// a discrete GPU (uploaded weights). One layer resident, the others
    /// streamed through the mapped slots, as the Orin configs run; the
    /// default `buffer = "device"` gets the mapped slots too.
    #[test]
    fn integrated_gpu_holds_resident_weights_once() {
        const TEST: &str = "emulated::integrated_gpu_holds_resident_weights_once";
        if !emulated("integrated") {
            return;
        }
        let path = common::model("synth-256-Q4_K_M.gguf");
        let file = GgufFile::open(&path).unwrap();
        let model = Model::from_gguf(&file).unwrap();
        let engine = EngineConfig {
            n_ctx: 64,
            max_chunk: 8,
            n_seq: 1,
            threads: 1,
            ..Default::default()
        };
        // Room for the two slots and one resident layer.
        let all = engine.plan(&model, u64::MAX).unwrap();
        let slot = all.layer_reads.iter().map(|r| r.len()).max().unwrap();
        let budget = all.global_bytes + all.engine_bytes + 3 * slot;
        let plan = engine.plan(&model, budget).unwrap();
        assert!(
            plan.is_streaming() && plan.resident_layer_bytes > 0,
            "{plan}"
        );
        let cfg = CudaForwardConfig::for_plan(&engine, &plan, Feed::Mapped);
        let vocab = model.hparams.vocab_size as u64;
        let tokens: Vec<u32> = (0..12u64)
            .map(|i| (1 + (i * 7919) % (vocab - 1)) as u32)
            .collect();
        if is_child(TEST) {
            let out = std::env::var("FLEA_EMU_OUT").unwrap();
            let feed = match std::env::var("FLEA_EMU_FEED").as_deref() {
                Ok("device") => Feed::Device,
                _ => Feed::Mapped,
            };
            let cfg = CudaForwardConfig::for_plan(&engine, &plan, feed);
            let probe = cuda::open(0).unwrap();
            let (free0, _) = probe.mem_info().unwrap();
            let source = flea::residency::Residency::open(
                &path,
                &model,
                &plan,
                flea::residency::ResidencyOptions::default(),
            )
            .unwrap();
            let mut e = flea::engine::streaming_engine(&model, source, cfg, &engine).unwrap();
            let mut logits = Vec::new();
            flea::generate::teacher_forced(&mut e, &tokens, |row| {
                logits.extend_from_slice(row);
                Ok(())
            })
            .unwrap();
            let (free1, _) = probe.mem_info().unwrap();
            drop(e);
            let mut bytes = (free0 - free1).to_le_bytes().to_vec();
            for x in &logits {
                bytes.extend_from_slice(&x.to_le_bytes());
            }
            std::fs::write(out, bytes).unwrap();
            return;
        }
        let run = |integrated: &str, mem_mb: Option<u64>, feed: &str| {
            let out = std::env::temp_dir().join(format!(
                "flea-emu-int-{}-{integrated}-{feed}",
                std::process::id()
            ));
            let mut env = vec![
                ("FAKE_CUDA_INTEGRATED", integrated.to_string()),
                ("FLEA_EMU_OUT", out.display().to_string()),
                ("FLEA_EMU_FEED", feed.to_string()),
            ];
            if let Some(mb) = mem_mb {
                env.push(("FAKE_CUDA_MEM_MB", mb.to_string()));
            }
            let o = child(TEST, &env);
            assert!(o.status.success(), "integrated={integrated}: {}", text(&o));
            let bytes = std::fs::read(&out).unwrap();
            let _ = std::fs::remove_file(&out);
            let used = u64::from_le_bytes(bytes[..8].try_into().unwrap());
            let logits: Vec<u32> = bytes[8..]
                .chunks(4)
                .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            (used, logits)
        };
        // Room for the KV cache, activations and norms, not the weights.
        let own = CudaForward::memory_bytes(&model.hparams, cfg);
        let weights = plan.resident_layer_bytes + plan.global_bytes;
        let mib = (own + weights / 4).div_ceil(1 << 20) + 1;
        assert!(
            (mib << 20) < own + weights,
            "fixture too small: {mib} MiB would hold the weights"
        );
        let (used_int, logits_int) = run("1", Some(mib), "mapped");
        let (used_dis, logits_dis) = run("0", None, "mapped");
        assert!(!logits_int.is_empty());
        assert!(
            logits_int == logits_dis,
            "integrated and discrete logits differ"
        );
        // `[device] buffer = "device"` on an integrated GPU reads the
        // mapped host slots too: no device double buffer (two more copies
        // of a layer in the same RAM, outside the budget), the same bits.
        let (used_int_dev, logits_int_dev) = run("1", Some(mib), "device");
        assert_eq!(
            used_int_dev, used_int,
            "integrated with buffer = device allocated other device memory than mapped"
        );
        assert!(
            logits_int_dev == logits_int,
            "integrated device-feed logits differ"
        );
        say(&format!(
            "integrated: device memory {used_int} bytes, discrete {used_dis}; resident \
             weights {weights}\n"
        ));
        // Everything the discrete run uploaded (the arena of resident
        // layers, the embedding table and the output head) is missing from
        // the integrated run.
        let mut uploaded = plan.resident_layer_bytes + model.token_embd.bytes();
        if model.output != model.token_embd {
            uploaded += model.output.bytes();
        }
        assert!(
            used_dis >= used_int + uploaded,
            "integrated {used_int}, discrete {used_dis}, uploaded weights {uploaded}"
        );
        assert!(used_int < plan.resident_layer_bytes + model.token_embd.bytes());
    }
}
