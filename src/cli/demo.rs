//! `flea demo`: the first thing a newcomer runs. With no download it
//! synthesizes a model about four times larger than the budget it picks,
//! streams it through the engine on a few prompts, and shows what matters:
//! the plan, tokens/s, peak RSS against the budget, bytes streamed per
//! token against the disk bound, and resident vs streamed speed.

use crate::cli::session::{open_session, CommonArgs};
use clap::Args;
use flea::bench::{self, BenchOptions};
use flea::config::{Budget, ByteSize};
use flea::generate::sampler::{Sampler, SamplerConfig};
use flea::generate::{Flow, Generator};
use flea::synth::{self, Preset, QuantMix, SynthOptions};
use flea::{Error, Result};
use std::io::Write;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Instant;

const PROMPTS: [&str; 3] = [
    "Once upon a time, in a workshop full of tiny machines,",
    "The three rules of running a large model on a small board are",
    "Dear diary, today the robot learned",
];

/// The demo model: TinyLlama-1.1B's shape in Q4_K_M, cached so the second
/// run starts at once.
fn cached_model() -> Result<PathBuf> {
    let dir = match std::env::var_os("XDG_CACHE_HOME") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => match std::env::var_os("HOME") {
            Some(h) => PathBuf::from(h).join(".cache"),
            None => std::env::temp_dir(),
        },
    }
    .join("flea-flicker");
    std::fs::create_dir_all(&dir).map_err(|e| {
        Error::io(format!(
            "{}: cannot create cache folder: {e}",
            dir.display()
        ))
    })?;
    let path = dir.join("demo-1b-q4_k_m.gguf");
    if path.exists() {
        eprintln!("using cached demo model {}", path.display());
        return Ok(path);
    }
    eprintln!(
        "synthesizing a random-weight 1B Q4_K_M model (TinyLlama shape, ~670 MB) at {} ...",
        path.display()
    );
    let opts = SynthOptions::new(Preset::B1, QuantMix::Q4KM);
    crate::cli::session::remove_partial_on_signal(&path)?;
    let report = synth::synth(&opts, &path, progress_bar("synth"))?;
    eprintln!(
        "\nwrote {} in {:.1} s ({:.0} MB/s)",
        ByteSize(report.bytes),
        report.seconds,
        report.bytes_per_second() / 1e6
    );
    Ok(path)
}

/// A progress callback that redraws one stderr line at most every 200 ms.
pub fn progress_bar(what: &'static str) -> impl FnMut(u64, u64) {
    let start = Instant::now();
    let mut last = 0.0f64;
    move |done, total| {
        let t = start.elapsed().as_secs_f64();
        if t - last < 0.2 && done < total {
            return;
        }
        last = t;
        eprint!(
            "\r{what}: {:>5.1}% of {} ({:.0} MB/s)   ",
            100.0 * done as f64 / total.max(1) as f64,
            ByteSize(total),
            done as f64 / t.max(1e-9) / 1e6
        );
    }
}

pub fn demo(
    model: Option<PathBuf>,
    budget: Option<Budget>,
    threads: Option<NonZeroUsize>,
) -> Result<u8> {
    let synthetic = model.is_none();
    let path = match model {
        Some(p) => p,
        None => cached_model()?,
    };
    // A short context keeps the KV cache small, so most of the budget
    // goes to weights and the model is ~4x the budget.
    let args = CommonArgs {
        model: path.clone(),
        config: None,
        budget: Some(Budget::Bytes(u64::MAX)),
        threads,
        ctx_size: NonZeroUsize::new(256),
        chunk: NonZeroUsize::new(16),
        batch: NonZeroUsize::new(1),
        verify: false,
        kv_type: None,
        kv_offload: None,
        kv_dir: None,
    };
    let mut session = open_session(&args)?;
    let file_len = session.file.file_len();
    let minimum = session.engine.minimum_budget(&session.model);
    let budget_bytes = match budget {
        Some(b) => b.resolve(file_len),
        None => (file_len / 4).max(minimum),
    };
    session.replan(budget_bytes)?;

    let mut out = std::io::stdout().lock();
    let io = Error::stdout;
    // "0.9x smaller" reads as nonsense: say plainly when nothing streams.
    let streams = session.plan.is_streaming();
    let ratio = if streams {
        format!(
            "{:.1}x smaller than the model",
            file_len as f64 / budget_bytes as f64
        )
    } else {
        "the whole model fits: nothing streams".to_string()
    };
    writeln!(
        out,
        "Flea-Flicker demo: {} ({}) inside a budget of {} ({ratio})",
        path.display(),
        ByteSize(file_len),
        ByteSize(budget_bytes),
    )
    .map_err(io)?;
    if synthetic {
        writeln!(
            out,
            "The weights are random, so the text below is nonsense: the point is the numbers."
        )
        .map_err(io)?;
    }
    writeln!(out, "\n== plan\n{}", session.plan).map_err(io)?;

    writeln!(out, "\n== completions (greedy, 16 tokens each, streamed)").map_err(io)?;
    {
        let engine = session.engine()?;
        let sampler = Sampler::new(
            SamplerConfig {
                temperature: 0.0,
                ..Default::default()
            },
            session.model.hparams.vocab_size,
        );
        let mut generator = Generator::new(engine, sampler);
        for prompt in PROMPTS {
            let tokens = session
                .tokenizer
                .encode(prompt, session.tokenizer.add_bos_default());
            let c = generator.generate(&tokens, 16, &session.tokenizer, |_| Flow::Continue)?;
            let text = flea::generate::pipeline::completion_text(&session.tokenizer, &c.tokens);
            writeln!(
                out,
                "{prompt}{}\n    ({} tokens, {:.2} tok/s)",
                flea::generate::pipeline::escape_line(&text),
                c.tokens.len(),
                c.tokens.len() as f64 / c.decode_time.as_secs_f64().max(1e-9)
            )
            .map_err(io)?;
        }
    }

    writeln!(out, "\n== measurements").map_err(io)?;
    eprintln!("measuring disk bandwidth (O_DIRECT) ...");
    let disk = bench::measure_disk_bandwidth(&path, 512 << 20)?;
    let opts = BenchOptions {
        prompt_tokens: 8,
        gen_tokens: 16,
        engine: session.engine.clone(),
        residency: session.residency_options(),
    };
    let progress = |s: &str| log::info!("{s}");
    let streamed = bench::run(
        &path,
        &session.model,
        &session.plan,
        &opts,
        "streamed",
        progress,
    )?;
    let bound_ms = session.plan.streamed_bytes_per_pass() as f64 / disk.bytes_per_s * 1e3;
    writeln!(
        out,
        "streamed: {:.2} tok/s decode, {:.1} ms/token (I/O wait {:.1} ms, compute {:.1} ms)",
        streamed.decode_tokens_per_s,
        streamed.decode_ms_per_token,
        streamed.stall_ms_per_token,
        streamed.compute_ms_per_token
    )
    .map_err(io)?;
    writeln!(
        out,
        "peak RSS {} against a budget of {} (planned {}; the rest is the process itself)",
        ByteSize(streamed.peak_rss_bytes),
        ByteSize(budget_bytes),
        ByteSize(streamed.planned_bytes)
    )
    .map_err(io)?;
    if streams {
        writeln!(
            out,
            "streamed {} per token; the disk reads that in {:.1} ms at {:.2} GB/s ({}): decode runs at {:.0}% of the disk bound",
            ByteSize(streamed.bytes_read_per_token as u64),
            bound_ms,
            disk.bytes_per_s / 1e9,
            if disk.direct { "O_DIRECT" } else { "buffered" },
            100.0 * bound_ms / streamed.decode_ms_per_token
        )
        .map_err(io)?;
    } else {
        writeln!(
            out,
            "nothing streamed: every layer is resident, so the disk ({:.2} GB/s) plays no part per token",
            disk.bytes_per_s / 1e9
        )
        .map_err(io)?;
    }

    if !streams {
        // The run above was the fully resident run.
    } else if fits_in_memory(file_len) {
        let all = session.engine.plan(&session.model, u64::MAX)?;
        let resident = bench::run(&path, &session.model, &all, &opts, "resident", progress)?;
        writeln!(
            out,
            "fully resident: {:.2} tok/s decode; streamed runs at {:.0}% of resident speed in {:.0}% of the memory",
            resident.decode_tokens_per_s,
            100.0 * streamed.decode_tokens_per_s / resident.decode_tokens_per_s,
            100.0 * budget_bytes as f64 / all.total_bytes() as f64
        )
        .map_err(io)?;
    } else {
        writeln!(
            out,
            "fully resident: skipped, the model does not fit in the memory available (container limit included)"
        )
        .map_err(io)?;
    }
    writeln!(
        out,
        "\nnext: `flea bench --model {} --budget 40% --compare`, or `flea run --model YOUR.gguf --budget 4GiB`",
        path.display()
    )
    .map_err(io)?;
    Ok(0)
}

/// Whether a fully resident copy would fit in memory now available.
fn fits_in_memory(bytes: u64) -> bool {
    // Half of what is available (container limits included): the
    // comparison must not push the machine, or the container, into swap or
    // the OOM killer.
    matches!(flea::platform::available_memory(), Some(a) if bytes < a / 2)
}

#[derive(Args)]
pub struct DemoArgs {
    /// Run the demo on this GGUF instead of a synthesized one.
    #[arg(long, short = 'm')]
    pub model: Option<PathBuf>,
    /// Memory budget [default: a quarter of the model, or the minimum if larger].
    #[arg(long, value_parser = flea::config::Budget::parse)]
    pub budget: Option<flea::config::Budget>,
    /// CPU threads [default: physical cores].
    #[arg(long, short = 't')]
    pub threads: Option<NonZeroUsize>,
}
