//! `flea bench`: orchestration of the measured runs and their report.

use super::session::{open_session, CommonArgs};
use clap::Args;
use flea::bench::{self, BenchOptions};
use flea::config::ByteSize;
use flea::gguf::GgufFile;
use flea::model::Model;
use flea::{Error, Result};
use std::io::Write;
use std::path::PathBuf;

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Prompt length for the prefill measurement.
    #[arg(long, default_value_t = 32)]
    prompt_tokens: usize,
    /// Tokens to decode.
    #[arg(long, default_value_t = 32)]
    gen_tokens: usize,
    /// Run fully resident and streamed back to back and print the ratio.
    #[arg(long)]
    compare: bool,
    /// Load each layer only when needed (no overlap of I/O and compute).
    #[arg(long)]
    no_prefetch: bool,
    /// Also measure these batch sizes (aggregate decode tokens/s), e.g. 1,4,16.
    #[arg(long, value_delimiter = ',')]
    batch_sweep: Vec<usize>,
    /// Also measure speculative decoding with this draft model (fully resident).
    #[arg(long)]
    draft: Option<PathBuf>,
    /// Tokens the draft proposes per target pass.
    #[arg(long, default_value_t = 4)]
    draft_tokens: usize,
    /// Print one JSON object on stdout instead of text.
    #[arg(long)]
    json: bool,
}

pub fn bench_cmd(args: BenchArgs) -> Result<u8> {
    let session = open_session(&args.common)?;
    let mut opts = BenchOptions {
        prompt_tokens: args.prompt_tokens,
        gen_tokens: args.gen_tokens,
        engine: session.engine.clone(),
        residency: session.residency_options(),
    };
    if args.no_prefetch {
        opts.residency.prefetch = false;
    }
    let need = args
        .prompt_tokens
        .checked_add(args.gen_tokens)
        .filter(|&n| n <= flea::limits::MAX_CONTEXT)
        .ok_or_else(|| {
            Error::usage(format!(
                "--prompt-tokens + --gen-tokens: expected at most {} in all, found {} + {}",
                flea::limits::MAX_CONTEXT,
                args.prompt_tokens,
                args.gen_tokens
            ))
        })?;
    if need > opts.engine.n_ctx {
        opts.engine.n_ctx = need;
    }
    let plan = opts.engine.plan(&session.model, session.plan.budget)?;
    log::info!("plan:\n{plan}");
    log::info!("measuring disk bandwidth (O_DIRECT sequential read) and memory bandwidth...");
    // Shared storage drifts: measure the disk right before and right after
    // the budgeted run and take the mean as its bound.
    let disk_before = bench::measure_disk_bandwidth(&session.path, 1 << 30)?;
    let memory_bw = bench::measure_memory_bandwidth(bench::memory_probe_bytes(plan.budget));
    let progress = |s: &str| log::info!("{s}");

    let streamed = bench::run(
        &session.path,
        &session.model,
        &plan,
        &opts,
        "budget",
        progress,
    )?;
    let disk_after = bench::measure_disk_bandwidth(&session.path, 1 << 30)?;
    log::info!(
        "disk: {:.2} GB/s before the run, {:.2} GB/s after",
        disk_before.bytes_per_s / 1e9,
        disk_after.bytes_per_s / 1e9
    );
    // With --verify, the same run again without it: the price of checking.
    let unverified = if opts.residency.verify {
        let mut o = opts.clone();
        o.residency.verify = false;
        Some(bench::run(
            &session.path,
            &session.model,
            &plan,
            &o,
            "budget, unverified",
            progress,
        )?)
    } else {
        None
    };
    let all = opts.engine.plan(&session.model, u64::MAX)?;
    let resident_fits = matches!(
        flea::platform::available_memory(),
        Some(a) if all.total_bytes() < a / 2
    );
    if args.compare && !resident_fits {
        log::warn!(
            "--compare: skipping the fully resident run: {} would not fit in the memory available (container limit included)",
            ByteSize(all.total_bytes())
        );
    }
    let resident = if args.compare && resident_fits {
        Some(bench::run(
            &session.path,
            &session.model,
            &all,
            &opts,
            "resident",
            progress,
        )?)
    } else {
        None
    };

    // Batch sizes: each plans its own KV caches inside the same budget.
    let mut sweep = Vec::new();
    for &n in &args.batch_sweep {
        flea::limits::check_count("--batch-sweep", n, flea::limits::MAX_BATCH, Error::usage)?;
        let mut o = opts.clone();
        o.engine = o.engine.with_batch(n);
        let p = o.engine.plan(&session.model, session.plan.budget)?;
        sweep.push(bench::run(
            &session.path,
            &session.model,
            &p,
            &o,
            &format!("batch {n}"),
            progress,
        )?);
    }
    // Speculative decoding: the draft's memory comes out of the budget.
    let speculative = match &args.draft {
        None => None,
        Some(draft_path) => {
            let draft_file = GgufFile::open(draft_path)?;
            let draft_model = Model::from_gguf(&draft_file)?;
            let draft_bytes = opts.engine.plan(&draft_model, u64::MAX)?.total_bytes();
            let target_budget = session.plan.budget.saturating_sub(draft_bytes);
            let p = opts.engine.plan(&session.model, target_budget)?;
            let plain = bench::run(
                &session.path,
                &session.model,
                &p,
                &opts,
                "target alone",
                progress,
            )?;
            let spec = bench::run_speculative(
                &session.path,
                &session.model,
                &p,
                draft_path,
                &draft_model,
                &opts,
                args.draft_tokens,
            )?;
            Some((plain, spec))
        }
    };

    let report = bench::Report::new(bench::Measured {
        model: session.path.display().to_string(),
        model_bytes: session.file.file_len(),
        threads: session.engine.threads,
        plan: plan.to_string(),
        streamed_bytes_per_pass: plan.streamed_bytes_per_pass(),
        disk_before,
        disk_after,
        memory_bandwidth: memory_bw,
        streamed,
        unverified,
        resident,
        batch_sweep: sweep,
        speculative,
    });
    let mut out = std::io::stdout().lock();
    if args.json {
        let json =
            serde_json::to_string(&report).map_err(|e| Error::io(format!("bench report: {e}")))?;
        writeln!(out, "{json}").map_err(Error::stdout)?;
    } else {
        write!(out, "{report}").map_err(Error::stdout)?;
    }
    Ok(0)
}
