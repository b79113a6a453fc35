//! Fully resident GPU decode speed, read against the device's own memory
//! bandwidth measured by the same program.
//!
//! ```sh
//! flea synth --preset 7b --quant q4_k_m --out /tmp/7b.gguf
//! cargo run --release --features cuda --example gpu_bench -- /tmp/7b.gguf [--tokens 128] \
//!     [--prompt 32] [--device 0] [--cache-bytes N]
//! ```
//!
//! Steps: upload every weight (the first pass), prefill a synthetic prompt,
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
    use flea::backend::cuda::{self, CudaForward, CudaForwardConfig};
    use flea::engine::{Engine, EngineConfig, Logits};
    use flea::gguf::GgufFile;
    use flea::model::Model;
    use flea::sampler::argmax;
    use flea::{Error, Result};
    use std::path::PathBuf;
    use std::time::Instant;

    struct Args {
        model: PathBuf,
        tokens: usize,
        prompt: usize,
        device: usize,
        cache_bytes: u64,
    }

    fn parse() -> Result<Args> {
        let mut it = std::env::args().skip(1);
        let mut a = Args {
            model: PathBuf::new(),
            tokens: 128,
            prompt: 32,
            device: 0,
            cache_bytes: u64::MAX,
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
                s if s.starts_with("--") => return Err(Error::usage(format!("unknown flag {s}"))),
                s => a.model = PathBuf::from(s),
            }
        }
        if a.model.as_os_str().is_empty() || a.tokens == 0 || a.prompt == 0 {
            return Err(Error::usage(
                "usage: gpu_bench MODEL.gguf [--tokens 128] [--prompt 32] [--device 0] [--cache-bytes N]",
            ));
        }
        Ok(a)
    }

    pub fn run() -> Result<()> {
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
    fn run_prompt<B: flea::backend::Backend>(
        engine: &mut Engine<'_, &GgufFile, B>,
        prompt: &[u32],
        chunk: usize,
    ) -> Result<u32> {
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
}
