//! GPU decode speed, fully resident or streamed inside a memory budget,
//! read against bounds measured by the same program.
//!
//! ```sh
//! flea synth --preset 7b --quant q4_k_m --out /tmp/7b.gguf
//! cargo run --release --features cuda --example gpu_bench -- /tmp/7b.gguf [--tokens 128] \
//!     [--prompt 32] [--device 0] [--cache-bytes N]
//! # streamed inside a budget, both feeds, against a resident run:
//! cargo run --release --features cuda --example gpu_bench -- /tmp/13b.gguf --budget 3GiB \
//!     --buffer both --compare --tokens 16 --prompt 8
//! ```
//!
//! **Streamed** (`--budget SIZE`, a size or a share of the model like
//! `40%`): plans the run as `flea` does, opens the residency (host slots
//! page-locked), and for each feed in `--buffer device|mapped|both` decodes
//! `--tokens` tokens greedily after a warm-up prompt pass. Each run prints a
//! JSON line: tokens/s; per token the time, the loader's I/O stall and the
//! host's wait for copies; per streamed layer the compute stream's wait for
//! its copy and its kernel time (CUDA events), per resident layer the
//! kernel time; host-to-device bandwidth achieved by the copies against
//! pinned `cuMemcpyHtoD` bandwidth measured here (256 MiB copies);
//! streamed time per token against the bounds (streamed bytes / pinned H2D
//! bandwidth, streamed bytes / O_DIRECT disk bandwidth measured here); peak
//! device memory from the plan and from `cuMemGetInfo`, each against the
//! budget; and a hash of every decode step's logits. `--compare` adds a
//! fully resident run (memory-mapped, all weights on the device); a last
//! JSON line sums up, including whether every run's logits hash and tokens
//! are equal (they must be: same kernels on the same bytes; exits 1 if
//! not) and whether device memory stayed within the budget
//! (`within_budget`).
//!
//! **Resident** (no `--budget`):
//! upload every weight (the first pass), prefill a synthetic prompt,
//! decode `--tokens` tokens greedily one at a time, then time
//! device-to-device copies. Prints a summary and one JSON line. HBM
//! utilization is `bytes x tokens/s / copy bandwidth`, both for the whole
//! file (as specified for the project's benchmark) and for the weight bytes
//! a decode step actually reads (every layer plus the output head; the
//! embedding table only gives one row). `--cache-bytes` caps the weights
//! kept on the device, so the rest are copied in per step (streaming from
//! host memory). Without a usable GPU it prints "skipped: no CUDA device"
//! and exits 0, or fails if FLEA_REQUIRE_GPU is set.

#[cfg(feature = "cuda")]
fn main() -> std::process::ExitCode {
    match bench::run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gpu_bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(not(feature = "cuda"))]
fn main() -> std::process::ExitCode {
    eprintln!("gpu_bench: built without --features cuda");
    std::process::ExitCode::from(2)
}

#[cfg(feature = "cuda")]
mod bench {
    use flea::backend::cuda::{self, CudaForward, CudaForwardConfig, Feed, H2dBandwidth};
    use flea::backend::{Backend, Batch, BatchEntry};
    use flea::bench::DiskBandwidth;
    use flea::config::Budget;
    use flea::engine::{Engine, EngineConfig, Logits, WeightSource};
    use flea::generate::sampler::argmax;
    use flea::gguf::GgufFile;
    use flea::model::Model;
    use flea::residency::plan::Plan;
    use flea::residency::{Residency, ResidencyOptions};
    use flea::{Error, Result};
    use serde_json::{json, Value};
    use std::path::{Path, PathBuf};
    use std::time::Instant;

    struct Args {
        model: PathBuf,
        tokens: usize,
        prompt: usize,
        device: usize,
        cache_bytes: u64,
        budget: Option<Budget>,
        buffers: Vec<Feed>,
        compare: bool,
        /// Stop a streamed or compared decode after this many seconds
        /// (slow storage must not blow the device session's time).
        max_seconds: f64,
    }

    fn parse() -> Result<Args> {
        let mut it = std::env::args().skip(1);
        let mut a = Args {
            model: PathBuf::new(),
            tokens: 128,
            prompt: 32,
            device: 0,
            cache_bytes: u64::MAX,
            budget: None,
            buffers: vec![Feed::Device],
            compare: false,
            max_seconds: f64::INFINITY,
        };
        let number = |flag: &str, v: Option<String>| -> Result<u64> {
            v.and_then(|s| s.parse().ok())
                .ok_or_else(|| Error::usage(format!("{flag}: expected a number")))
        };
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "--tokens" => a.tokens = number("--tokens", it.next())? as usize,
                "--prompt" => a.prompt = number("--prompt", it.next())? as usize,
                "--device" => a.device = number("--device", it.next())? as usize,
                "--cache-bytes" => a.cache_bytes = number("--cache-bytes", it.next())?,
                "--budget" => {
                    let v = it.next().unwrap_or_default();
                    a.budget = Some(
                        Budget::parse(&v).map_err(|e| Error::usage(format!("--budget: {e}")))?,
                    );
                }
                "--buffer" => {
                    a.buffers = match it.next().as_deref() {
                        Some("device") => vec![Feed::Device],
                        Some("mapped") => vec![Feed::Mapped],
                        Some("both") => vec![Feed::Device, Feed::Mapped],
                        _ => return Err(Error::usage("--buffer: expected device, mapped or both")),
                    }
                }
                "--compare" => a.compare = true,
                "--max-seconds" => a.max_seconds = number("--max-seconds", it.next())? as f64,
                s if s.starts_with("--") => return Err(Error::usage(format!("unknown flag {s}"))),
                s => a.model = PathBuf::from(s),
            }
        }
        if a.model.as_os_str().is_empty() || a.tokens == 0 || a.prompt == 0 {
            return Err(Error::usage(
                "usage: gpu_bench MODEL.gguf [--tokens 128] [--prompt 32] [--device 0] \
                 [--cache-bytes N] [--budget SIZE [--buffer device|mapped|both] [--compare] \
                 [--max-seconds S]]",
            ));
        }
        Ok(a)
    }

    /// Log lines (pinning, fallbacks) to stderr at `FLEA_LOG` (default info).
    fn init_logging() {
        let level = std::env::var("FLEA_LOG")
            .ok()
            .and_then(|s| s.parse::<log::LevelFilter>().ok())
            .unwrap_or(log::LevelFilter::Info);
        let _ = simplelog::TermLogger::init(
            level,
            simplelog::Config::default(),
            simplelog::TerminalMode::Stderr,
            simplelog::ColorChoice::Never,
        );
    }

    pub fn run() -> Result<()> {
        init_logging();
        let args = parse()?;
        if !cuda::cuda_available() {
            if std::env::var_os("FLEA_REQUIRE_GPU").is_some() {
                // Say why: open() names the missing driver or device.
                cuda::open(args.device)?;
                return Err(Error::config(
                    "FLEA_REQUIRE_GPU is set but no CUDA device is usable",
                ));
            }
            println!("gpu_bench: skipped: no CUDA device");
            return Ok(());
        }
        if let Some(budget) = args.budget {
            return run_streamed(&args, budget);
        }
        let file = GgufFile::open(&args.model)?;
        let model = Model::from_gguf(&file)?;
        let hp = &model.hparams;
        let file_bytes = file.file_len();
        let step_bytes: u64 = model.layers.iter().map(|l| l.weight_bytes()).sum::<u64>()
            + model.output.bytes()
            + model.output_norm.bytes();

        let gpu = cuda::open(args.device)?;
        let info = gpu.info().clone();
        println!("{info}");
        println!(
            "model {}: {:.2} GB file, {:.2} GB read per decode step, {} layers, dim {}",
            args.model.display(),
            file_bytes as f64 / 1e9,
            step_bytes as f64 / 1e9,
            hp.n_layers,
            hp.dim
        );

        let n_ctx = args.prompt + args.tokens + 1;
        let chunk = args.prompt.min(512);
        let mut cfg = CudaForwardConfig::new(n_ctx, chunk, 1);
        cfg.device = args.device;
        cfg.weight_cache_bytes = args.cache_bytes;
        let backend = CudaForward::with_gpu(gpu, hp, cfg)?;
        let engine_cfg = EngineConfig {
            n_ctx,
            max_chunk: chunk,
            n_seq: 1,
            threads: 1,
            ..Default::default()
        };
        let mut engine = Engine::with_backend(&model, &file, backend, &engine_cfg)?;
        let vocab = hp.vocab_size as u64;
        let prompt: Vec<u32> = (0..args.prompt as u64)
            .map(|i| 3 + (i * 2_654_435_761 % (vocab - 3)) as u32)
            .collect();

        // First pass: uploads every weight.
        let t = Instant::now();
        run_prompt(&mut engine, &prompt, chunk)?;
        let load_s = t.elapsed().as_secs_f64();
        println!("first pass (weights uploaded): {load_s:.2} s");

        let t = Instant::now();
        let mut next = run_prompt(&mut engine, &prompt, chunk)?;
        let prefill_s = t.elapsed().as_secs_f64();
        let prefill_tps = prompt.len() as f64 / prefill_s;
        println!(
            "prefill: {} tokens in {:.3} s = {prefill_tps:.1} tok/s",
            prompt.len(),
            prefill_s
        );

        let t = Instant::now();
        for i in 0..args.tokens {
            let logits = engine.forward(&[next], prompt.len() + i, Logits::Last)?;
            next = argmax(logits);
        }
        let decode_s = t.elapsed().as_secs_f64();
        let tps = args.tokens as f64 / decode_s;
        println!(
            "decode: {} tokens in {decode_s:.3} s = {tps:.1} tok/s ({:.2} ms/token)",
            args.tokens,
            1e3 * decode_s / args.tokens as f64
        );
        drop(engine);

        // The bound: device-to-device copy bandwidth on the same device.
        let gpu = cuda::open(args.device)?;
        let copy = (1usize << 30).min(info.total_bytes / 8);
        let bw = cuda::measure_d2d_bandwidth(&gpu, copy, 20)?;
        let util_file = file_bytes as f64 * tps / bw.bytes_per_s;
        let util_step = step_bytes as f64 * tps / bw.bytes_per_s;
        println!(
            "device-to-device copy: {:.0} GB/s (read + write of {} MiB x {})",
            bw.bytes_per_s / 1e9,
            copy >> 20,
            bw.copies
        );
        println!(
            "HBM utilization: {:.1}% by file bytes ({:.0} GB/s), {:.1}% by bytes read per step ({:.0} GB/s)",
            100.0 * util_file,
            file_bytes as f64 * tps / 1e9,
            100.0 * util_step,
            step_bytes as f64 * tps / 1e9
        );
        let json = serde_json::json!({
            "device": info.name,
            "compute_capability": format!("{}.{}", info.compute_capability.0, info.compute_capability.1),
            "driver_cuda_version": info.driver_version,
            "model": args.model.display().to_string(),
            "file_bytes": file_bytes,
            "step_bytes": step_bytes,
            "weight_cache_bytes": args.cache_bytes,
            "first_pass_s": load_s,
            "prefill_tokens": prompt.len(),
            "prefill_tokens_per_s": prefill_tps,
            "decode_tokens": args.tokens,
            "decode_tokens_per_s": tps,
            "d2d_bytes_per_s": bw.bytes_per_s,
            "hbm_utilization_file": util_file,
            "hbm_utilization_step": util_step,
        });
        println!("{json}");
        Ok(())
    }

    /// The prompt from position 0 in chunks; the greedy next token.
    fn run_prompt(engine: &mut Engine<'_, &GgufFile>, prompt: &[u32], chunk: usize) -> Result<u32> {
        let mut next = 0;
        let pieces = prompt.len().div_ceil(chunk);
        for (i, piece) in prompt.chunks(chunk).enumerate() {
            let want = if i + 1 == pieces {
                Logits::Last
            } else {
                Logits::None
            };
            let logits = engine.forward(piece, i * chunk, want)?;
            if want == Logits::Last {
                next = argmax(logits);
            }
        }
        Ok(next)
    }

    // ------------------------------------------------------------ streamed

    /// One pass of the engine's loop (`Engine::run_batch` without its
    /// checks: the inputs here are made valid), keeping the backend in hand
    /// to read its counters. Logits of the last position.
    fn pass<'b, W: WeightSource, B: Backend>(
        model: &Model,
        source: &mut W,
        backend: &'b mut B,
        tokens: &[u32],
        start_pos: usize,
        logits: Logits,
    ) -> Result<&'b [f32]> {
        let entries = [BatchEntry {
            seq: 0,
            first: 0,
            len: tokens.len(),
            start_pos,
            logits,
        }];
        let batch = Batch {
            entries: &entries,
            tokens,
        };
        backend.begin(batch, source.global(&model.token_embd))?;
        for (l, layer) in model.layers.iter().enumerate() {
            let bytes = source.acquire_layer(l)?;
            let r = backend.layer(l, layer, bytes);
            source.release_layer(l);
            r?;
        }
        backend.finish(
            source.global(&model.output_norm),
            source.global(&model.output),
        )
    }

    /// FNV-1a over the bits of every logit: equal hashes, equal logits.
    struct LogitsHash(u64);

    impl LogitsHash {
        fn new() -> LogitsHash {
            LogitsHash(0xcbf2_9ce4_8422_2325)
        }
        fn add_bytes(&mut self, bytes: &[u8]) {
            for &b in bytes {
                self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
        }
        fn add(&mut self, logits: &[f32]) {
            for x in logits {
                self.add_bytes(&x.to_bits().to_le_bytes());
            }
        }
    }

    /// What one decode run gave.
    struct Decoded {
        json: Value,
        tokens: Vec<u32>,
        /// Per decode step, the hash of its logits.
        step_hashes: Vec<u64>,
        ms_per_token: f64,
        within_budget: bool,
    }

    fn synthetic_prompt(model: &Model, n: usize) -> Vec<u32> {
        let vocab = model.hparams.vocab_size as u64;
        (0..n as u64)
            .map(|i| 3 + (i * 2_654_435_761 % (vocab - 3)) as u32)
            .collect()
    }

    /// The prompt in chunks of `chunk` from position 0; greedy next token.
    fn prompt_passes<W: WeightSource, B: Backend>(
        model: &Model,
        source: &mut W,
        backend: &mut B,
        prompt: &[u32],
        chunk: usize,
    ) -> Result<u32> {
        let pieces = prompt.len().div_ceil(chunk);
        let mut next = 0;
        for (i, piece) in prompt.chunks(chunk).enumerate() {
            let want = if i + 1 == pieces {
                Logits::Last
            } else {
                Logits::None
            };
            let logits = pass(model, source, backend, piece, i * chunk, want)?;
            if want == Logits::Last {
                next = argmax(logits);
            }
        }
        Ok(next)
    }

    /// What a decode gave: the tokens, each step's logits hash, seconds.
    struct Steps {
        tokens: Vec<u32>,
        hashes: Vec<u64>,
        seconds: f64,
    }

    impl Steps {
        /// One hash over every step.
        fn hash(&self) -> u64 {
            let mut h = LogitsHash::new();
            for x in &self.hashes {
                h.add_bytes(&x.to_le_bytes());
            }
            h.0
        }
    }

    /// Up to `tokens` greedy single-token steps after the prompt, stopping
    /// early once `max_seconds` have passed.
    fn decode<W: WeightSource, B: Backend>(
        model: &Model,
        source: &mut W,
        backend: &mut B,
        first: u32,
        start_pos: usize,
        tokens: usize,
        max_seconds: f64,
    ) -> Result<Steps> {
        let mut out = Vec::with_capacity(tokens);
        let mut hashes = Vec::with_capacity(tokens);
        let mut next = first;
        let t = Instant::now();
        for i in 0..tokens {
            let logits = pass(model, source, backend, &[next], start_pos + i, Logits::Last)?;
            let mut hash = LogitsHash::new();
            hash.add(logits);
            hashes.push(hash.0);
            next = argmax(logits);
            out.push(next);
            if t.elapsed().as_secs_f64() > max_seconds && i + 1 < tokens {
                println!(
                    "  (stopped after {} of {tokens} tokens: --max-seconds {max_seconds})",
                    i + 1
                );
                break;
            }
        }
        Ok(Steps {
            tokens: out,
            hashes,
            seconds: t.elapsed().as_secs_f64(),
        })
    }

    fn gib(b: f64) -> f64 {
        b / (1u64 << 30) as f64
    }

    /// One streamed run through `buffer`.
    #[allow(clippy::too_many_arguments)]
    fn streamed_run(
        args: &Args,
        model: &Model,
        plan: &Plan,
        engine: &EngineConfig,
        buffer: Feed,
        h2d: &H2dBandwidth,
        disk: &DiskBandwidth,
    ) -> Result<Decoded> {
        let hp = &model.hparams;
        let gpu = cuda::open(args.device)?;
        let (free0, _) = gpu.mem_info()?;
        let t = Instant::now();
        let mut source = Residency::open(&args.model, model, plan, ResidencyOptions::default())?;
        let load_s = t.elapsed().as_secs_f64();
        let mut cfg = CudaForwardConfig::for_plan(engine, plan, buffer);
        cfg.device = args.device;
        cfg.profile = true;
        let device_plan = flea::engine::device_plan(hp, cfg, plan);
        let mut backend = CudaForward::with_gpu(gpu, hp, cfg)?;
        backend.pin_host_slots(&mut source)?;
        let feed = backend.feed();
        let mut min_free = backend.gpu().mem_info()?.0;

        // Warm-up: the prompt (uploads the resident layers).
        let prompt = synthetic_prompt(model, args.prompt);
        let t = Instant::now();
        let first = prompt_passes(model, &mut source, &mut backend, &prompt, engine.max_chunk)?;
        let first_pass_s = t.elapsed().as_secs_f64();
        min_free = min_free.min(backend.gpu().mem_info()?.0);

        backend.reset_layer_times();
        source.reset_stats();
        let steps = decode(
            model,
            &mut source,
            &mut backend,
            first,
            prompt.len(),
            args.tokens,
            args.max_seconds,
        )?;
        let (hash, decode_s) = (steps.hash(), steps.seconds);
        min_free = min_free.min(backend.gpu().mem_info()?.0);
        let times = backend.layer_times();
        let io = source.stats().clone();

        let n = steps.tokens.len() as f64;
        let tps = n / decode_s;
        let ms_per_token = 1e3 * decode_s / n;
        let measured_device = free0.saturating_sub(min_free) as u64;
        let planned_device = device_plan.total_bytes();
        let within_budget = measured_device <= plan.budget && planned_device <= plan.budget;
        let per = |x: f64, k: u64| if k > 0 { x / k as f64 } else { 0.0 };
        let streamed_bytes_per_token = io.streamed_bytes as f64 / n;
        let copy_bytes_per_token = times.copy_bytes as f64 / n;
        // The bounds: each streamed byte crosses the disk once and (device
        // feed) PCIe / the memory bus once per token.
        let h2d_bound_ms = 1e3 * copy_bytes_per_token / h2d.bytes_per_s;
        let disk_bound_ms = 1e3 * streamed_bytes_per_token / disk.bytes_per_s;
        let achieved = times.copy_bytes_per_s();
        let buffer_name = match buffer {
            Feed::Device => "device",
            Feed::Mapped => "mapped",
        };
        let feed_name = match feed {
            Feed::Device => "device",
            Feed::Mapped => "mapped",
        };
        println!(
            "streamed ({buffer_name}, fed {feed_name}, host slots {}): {tps:.2} tok/s, \
             {ms_per_token:.1} ms/token (I/O stall {:.1}, host copy wait {:.1}); bounds: \
             H2D {h2d_bound_ms:.1} ms, disk {disk_bound_ms:.1} ms",
            if backend.locked_host_bytes() > 0 {
                "page-locked"
            } else {
                "pageable"
            },
            io.stall_time.as_secs_f64() * 1e3 / n,
            times.host_wait_ms / n
        );
        println!(
            "  per streamed layer: copy wait {:.2} ms, kernels {:.2} ms, copy {:.2} ms; \
             per resident layer: kernels {:.2} ms",
            per(times.copy_wait_ms, times.streamed_layers()),
            per(times.streamed_compute_ms, times.streamed_layers()),
            per(times.copy_ms, times.copied_layers),
            per(times.resident_compute_ms, times.resident_layers)
        );
        println!(
            "  H2D achieved {} vs pinned {:.1} GB/s; device memory: plan {:.2} GiB, measured \
             {:.2} GiB, budget {:.2} GiB{}",
            achieved.map_or("n/a (no copies)".to_string(), |b| format!(
                "{:.1} GB/s",
                b / 1e9
            )),
            h2d.bytes_per_s / 1e9,
            gib(planned_device as f64),
            gib(measured_device as f64),
            gib(plan.budget as f64),
            if within_budget {
                ""
            } else {
                "  ** OVER BUDGET **"
            }
        );
        let json = json!({
            "run": "streamed",
            "buffer": buffer_name,
            "feed": feed_name,
            "host_slots_locked_bytes": backend.locked_host_bytes(),
            "budget_bytes": plan.budget,
            "planned_host_bytes": plan.total_bytes(),
            "planned_device_bytes": planned_device,
            "measured_device_bytes": measured_device,
            "within_budget": within_budget,
            "device_slot_bytes": backend.device_slot_bytes(),
            "streamed_layers": plan.streamed_layers().count(),
            "resident_layers": plan.placement.len() - plan.streamed_layers().count(),
            "resident_load_s": load_s,
            "first_pass_s": first_pass_s,
            "decode_tokens": steps.tokens.len(),
            "decode_tokens_per_s": tps,
            "ms_per_token": ms_per_token,
            "io_stall_ms_per_token": io.stall_time.as_secs_f64() * 1e3 / n,
            "io_read_ms_per_token": io.read_time.as_secs_f64() * 1e3 / n,
            "host_copy_wait_ms_per_token": times.host_wait_ms / n,
            "streamed_bytes_per_token": streamed_bytes_per_token,
            "copy_bytes_per_token": copy_bytes_per_token,
            "copy_ms_per_token": times.copy_ms / n,
            "copy_wait_ms_per_streamed_layer": per(times.copy_wait_ms, times.streamed_layers()),
            "compute_ms_per_streamed_layer": per(times.streamed_compute_ms, times.streamed_layers()),
            "copy_ms_per_copied_layer": per(times.copy_ms, times.copied_layers),
            "compute_ms_per_resident_layer": per(times.resident_compute_ms, times.resident_layers),
            "h2d_achieved_bytes_per_s": achieved,
            "h2d_pinned_bytes_per_s": h2d.bytes_per_s,
            "h2d_efficiency": achieved.map(|a| a / h2d.bytes_per_s),
            "h2d_bound_ms_per_token": h2d_bound_ms,
            "disk_bound_ms_per_token": disk_bound_ms,
            "over_bound": ms_per_token / h2d_bound_ms.max(disk_bound_ms).max(1e-9),
            "logits_hash": format!("{hash:016x}"),
            "layer_times": format!("{times:?}"),
        });
        println!("{json}");
        Ok(Decoded {
            json,
            tokens: steps.tokens,
            step_hashes: steps.hashes,
            ms_per_token,
            within_budget,
        })
    }

    /// The same decode fully resident: memory-mapped file, every weight
    /// kept on the device.
    fn resident_run(
        args: &Args,
        model: &Model,
        file: &GgufFile,
        engine: &EngineConfig,
    ) -> Result<Decoded> {
        let hp = &model.hparams;
        let gpu = cuda::open(args.device)?;
        let (free0, _) = gpu.mem_info()?;
        let mut cfg = CudaForwardConfig::new(engine.n_ctx, engine.max_chunk, 1);
        cfg.device = args.device;
        cfg.profile = true;
        let mut backend = CudaForward::with_gpu(gpu, hp, cfg)?;
        let mut source = file;
        let prompt = synthetic_prompt(model, args.prompt);
        let t = Instant::now();
        let first = prompt_passes(model, &mut source, &mut backend, &prompt, engine.max_chunk)?;
        let first_pass_s = t.elapsed().as_secs_f64();
        backend.reset_layer_times();
        let steps = decode(
            model,
            &mut source,
            &mut backend,
            first,
            prompt.len(),
            args.tokens,
            args.max_seconds,
        )?;
        let (hash, decode_s) = (steps.hash(), steps.seconds);
        let measured = free0.saturating_sub(backend.gpu().mem_info()?.0) as u64;
        let times = backend.layer_times();
        let n = steps.tokens.len() as f64;
        let tps = n / decode_s;
        let ms_per_token = 1e3 * decode_s / n;
        println!(
            "resident: {tps:.2} tok/s, {ms_per_token:.1} ms/token, kernels {:.2} ms/layer, \
             device memory {:.2} GiB",
            times.resident_compute_ms / times.resident_layers.max(1) as f64,
            gib(measured as f64)
        );
        let json = json!({
            "run": "resident",
            "measured_device_bytes": measured,
            "first_pass_s": first_pass_s,
            "decode_tokens": steps.tokens.len(),
            "decode_tokens_per_s": tps,
            "ms_per_token": ms_per_token,
            "compute_ms_per_resident_layer": times.resident_compute_ms / times.resident_layers.max(1) as f64,
            "logits_hash": format!("{hash:016x}"),
        });
        println!("{json}");
        Ok(Decoded {
            json,
            tokens: steps.tokens,
            step_hashes: steps.hashes,
            ms_per_token,
            within_budget: true,
        })
    }

    fn run_streamed(args: &Args, budget: Budget) -> Result<()> {
        let file = GgufFile::open(&args.model)?;
        let model = Model::from_gguf(&file)?;
        let file_bytes = file.file_len();
        let n_ctx = args.prompt + args.tokens + 1;
        let engine = EngineConfig {
            n_ctx,
            max_chunk: args.prompt.min(512),
            n_seq: 1,
            threads: 1,
            ..Default::default()
        };
        let plan = engine.plan(&model, budget.resolve(file_bytes))?;
        let gpu = cuda::open(args.device)?;
        let info = gpu.info().clone();
        println!("{info}");
        println!(
            "model {}: {:.2} GB, {} layers; budget {:.2} GiB\n{plan}",
            args.model.display(),
            file_bytes as f64 / 1e9,
            model.hparams.n_layers,
            gib(plan.budget as f64)
        );
        // The bounds, measured here: pinned host-to-device copies and the
        // O_DIRECT read of the model file.
        let h2d = cuda::measure_h2d_bandwidth(&gpu, 256 << 20, 8)?;
        drop(gpu);
        let disk = flea::bench::measure_disk_bandwidth(Path::new(&args.model), 2 << 30)?;
        println!(
            "pinned H2D {:.1} GB/s (256 MiB x {}); disk {:.2} GB/s ({}, {:.1} GiB)",
            h2d.bytes_per_s / 1e9,
            h2d.copies,
            disk.bytes_per_s / 1e9,
            if disk.direct { "O_DIRECT" } else { "buffered" },
            gib(disk.bytes as f64)
        );

        let mut runs = Vec::new();
        for &buffer in &args.buffers {
            runs.push(streamed_run(
                args, &model, &plan, &engine, buffer, &h2d, &disk,
            )?);
        }
        let resident = if args.compare {
            Some(resident_run(args, &model, &file, &engine)?)
        } else {
            None
        };
        let all: Vec<&Decoded> = runs.iter().chain(resident.as_ref()).collect();
        // Runs may have stopped early (--max-seconds): compare the steps
        // all of them made.
        let common = all.iter().map(|r| r.tokens.len()).min().unwrap_or(0);
        let identical = common > 0
            && all.windows(2).all(|w| {
                w[0].step_hashes[..common] == w[1].step_hashes[..common]
                    && w[0].tokens[..common] == w[1].tokens[..common]
            });
        let within = runs.iter().all(|r| r.within_budget);
        let summary = json!({
            "summary": "gpu_bench streamed",
            "device": info.name,
            "compute_capability": format!("{}.{}", info.compute_capability.0, info.compute_capability.1),
            "driver_cuda_version": info.driver_version,
            "model": args.model.display().to_string(),
            "file_bytes": file_bytes,
            "budget_bytes": plan.budget,
            "streamed_bytes_per_pass": plan.streamed_bytes_per_pass(),
            "h2d_pinned_bytes_per_s": h2d.bytes_per_s,
            "disk_bytes_per_s": disk.bytes_per_s,
            "disk_direct": disk.direct,
            "ms_per_token": all.iter().map(|r| r.json["run"].as_str().unwrap_or("?").to_string()
                + "/" + r.json["buffer"].as_str().unwrap_or("-")).zip(all.iter().map(|r| r.ms_per_token))
                .map(|(k, v)| (k, json!(v))).collect::<serde_json::Map<String, Value>>(),
            "resident_over_streamed": resident.as_ref().map(|r| {
                runs.iter().map(|s| s.ms_per_token / r.ms_per_token).collect::<Vec<f64>>()
            }),
            "logits_identical": identical,
            "compared_steps": common,
            "within_budget": within,
        });
        println!("{summary}");
        if !identical {
            return Err(Error::config(
                "streamed and resident runs gave different logits (see logits_hash), or none \
                 decoded a token",
            ));
        }
        if !within {
            // Reported (and checked by scripts/gpu-check.sh), not fatal:
            // the runs above are still worth reading.
            eprintln!("gpu_bench: device memory exceeded the budget (see measured_device_bytes)");
        }
        Ok(())
    }
}
