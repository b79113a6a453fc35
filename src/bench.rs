//! `flea bench`: measure prefill and decode through the residency engine,
//! and the bounds to read them against (disk bandwidth, memory bandwidth),
//! all in one process on one machine.

use crate::engine::{Engine, EngineConfig, Logits};
use crate::error::{Error, Result};
use crate::generate::sampler::argmax;
use crate::model::Model;
use crate::residency::buffer::{AlignedBuf, IO_ALIGN};
use crate::residency::loader::{read_range, FileReader, RetryPolicy};
use crate::residency::plan::Plan;
use crate::residency::stats::{peak_rss_bytes, reset_peak_rss};
use crate::residency::{Residency, ResidencyOptions};
use serde::Serialize;
use std::path::Path;
use std::time::{Duration, Instant};

/// Sequential read bandwidth of a file, measured with O_DIRECT where the
/// file system allows (so the page cache cannot flatter it).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct DiskBandwidth {
    pub bytes_per_s: f64,
    pub bytes: u64,
    pub direct: bool,
}

/// Read up to `max_bytes` of `path` sequentially in 8 MiB requests.
pub fn measure_disk_bandwidth(path: &Path, max_bytes: u64) -> Result<DiskBandwidth> {
    const CHUNK: usize = crate::residency::loader::MAX_REQUEST;
    let mut reader = FileReader::open(path, true)?;
    let len = std::fs::metadata(path)
        .map_err(|e| Error::io(format!("{}: {e}", path.display())))?
        .len();
    let total = len.min(max_bytes) / IO_ALIGN as u64 * IO_ALIGN as u64;
    let mut buf = AlignedBuf::new(CHUNK);
    let policy = RetryPolicy {
        retries: 2,
        backoff: Duration::from_millis(10),
    };
    let start = Instant::now();
    let mut offset = 0u64;
    while offset < total {
        let n = (total - offset).min(CHUNK as u64);
        read_range(
            &mut reader,
            &mut buf,
            offset..offset + n,
            n,
            policy,
            &"bandwidth probe",
            path,
        )?;
        offset += n;
    }
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    Ok(DiskBandwidth {
        bytes_per_s: total as f64 / secs,
        bytes: total,
        direct: reader.is_direct(),
    })
}

/// How large a RAM probe a budget allows: half the budget (the probe runs
/// and is freed before the model loads, so the peak stays the run's), at
/// least 32 MiB to stay well above the last-level cache of a Jetson or a
/// desktop part, at most 512 MiB.
pub fn memory_probe_bytes(budget: u64) -> usize {
    (budget / 2).clamp(32 << 20, 512 << 20) as usize
}

/// Sequential read bandwidth of RAM: every core sums its share of a
/// `bytes`-long buffer, which must be larger than the caches (one core
/// alone cannot saturate the memory bus). See [`memory_probe_bytes`].
pub fn measure_memory_bandwidth(bytes: usize) -> f64 {
    let buf: Vec<u64> = (0..bytes / 8).map(|i| i as u64).collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = buf.len().div_ceil(threads);
    let mut best = f64::MAX;
    for _ in 0..3 {
        let start = Instant::now();
        let total = std::thread::scope(|s| {
            let handles: Vec<_> = buf
                .chunks(per)
                .map(|part| {
                    s.spawn(move || {
                        // Eight independent lanes vectorize and keep the
                        // loop bound by loads, not adds.
                        let mut acc = [0u64; 8];
                        for c in part.chunks_exact(8) {
                            for (a, &x) in acc.iter_mut().zip(c) {
                                *a = a.wrapping_add(x);
                            }
                        }
                        acc.iter().fold(0u64, |a, &b| a.wrapping_add(b))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(0))
                .fold(0u64, u64::wrapping_add)
        });
        std::hint::black_box(total);
        best = best.min(start.elapsed().as_secs_f64());
    }
    (buf.len() * 8) as f64 / best.max(1e-9)
}

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    pub engine: EngineConfig,
    pub residency: ResidencyOptions,
}

/// One measured run (fields documented in the README under `flea bench --json`).
#[derive(Debug, Clone, Serialize)]
pub struct BenchRun {
    pub mode: String,
    pub budget_bytes: u64,
    pub planned_bytes: u64,
    pub streamed_layers: usize,
    pub resident_layers: usize,
    pub prefetch: bool,
    pub direct_io: bool,
    pub load_seconds: f64,
    /// Sequences decoded together; token rates are totals over all of them.
    pub batch: usize,
    pub prefill_tokens: usize,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens: usize,
    pub decode_tokens_per_s: f64,
    /// Per decode step (one token of every sequence): wall time, and its
    /// split. At batch 1 a step is a token.
    pub decode_ms_per_token: f64,
    pub stall_ms_per_token: f64,
    pub compute_ms_per_token: f64,
    pub other_ms_per_token: f64,
    /// Loader read time per token (overlaps compute when prefetching).
    pub io_ms_per_token: f64,
    pub bytes_read_per_token: f64,
    /// KV cache bytes read from disk per decode step (`[memory]
    /// kv_offload`; 0 with the cache in RAM).
    pub kv_bytes_read_per_token: f64,
    /// Of the KV blocks decode loaded, the fraction the reader thread had
    /// read ahead (the rest were read in the compute thread).
    pub kv_blocks_read_ahead_fraction: f64,
    pub effective_bytes_per_s: f64,
    /// max(io, compute) / wall: 1.0 means I/O fully hidden behind compute
    /// (or compute behind I/O).
    pub overlap_efficiency: f64,
    pub peak_rss_bytes: u64,
}

/// Deterministic prompt tokens that avoid the special ids; `stream`
/// varies them between sequences.
fn bench_tokens(n: usize, vocab: usize, stream: usize) -> Vec<u32> {
    (0..n)
        .map(|i| {
            let x = (i + 7919 * stream) as u64 * 2_654_435_761;
            3 + (x % (vocab as u64 - 3)) as u32
        })
        .collect()
}

/// Prefill a synthetic prompt, then decode greedily, through a residency
/// source built from `plan`, reporting where the time went.
pub fn run(
    path: &Path,
    model: &Model,
    plan: &Plan,
    opts: &BenchOptions,
    mode: &str,
    mut progress: impl FnMut(&str),
) -> Result<BenchRun> {
    let hp = &model.hparams;
    if opts.prompt_tokens == 0 {
        return Err(Error::usage("prompt tokens: expected at least 1"));
    }
    if opts.prompt_tokens + opts.gen_tokens > opts.engine.n_ctx {
        return Err(Error::usage(format!(
            "prompt tokens {} + generated tokens {} exceed the context of {}",
            opts.prompt_tokens, opts.gen_tokens, opts.engine.n_ctx
        )));
    }
    reset_peak_rss();
    let load_start = Instant::now();
    let source = Residency::open(path, model, plan, opts.residency)?;
    let direct_io = source.is_direct();
    let mut engine = Engine::new(model, source, &opts.engine.resolved(plan))?;
    let load_seconds = load_start.elapsed().as_secs_f64();

    // Every sequence gets its own prompt; the decode steps of all of them
    // share each pass (batch 1 is plain decoding).
    let n_seq = opts.engine.n_seq;
    let vocab = hp.vocab_size;
    let prompts: Vec<Vec<u32>> = (0..n_seq)
        .map(|s| bench_tokens(opts.prompt_tokens, vocab, s))
        .collect();
    let mut next = vec![0u32; n_seq];
    progress(&format!(
        "{mode}: prefill {} x {} tokens",
        n_seq, opts.prompt_tokens
    ));
    let start = Instant::now();
    for (s, prompt) in prompts.iter().enumerate() {
        engine.prefill(s, prompt, 0, Logits::Last, |rows| {
            if !rows.is_empty() {
                next[s] = argmax(rows);
            }
            Ok(true)
        })?;
    }
    let prefill_s = start.elapsed().as_secs_f64();

    engine.weights_mut().reset_stats();
    let kv_before = engine.kv_reads();
    let mut forward_time = Duration::ZERO;
    let start = Instant::now();
    for i in 0..opts.gen_tokens {
        let t = Instant::now();
        engine.clear_batch();
        for (s, tok) in next.iter().enumerate() {
            engine.push(
                s,
                std::slice::from_ref(tok),
                opts.prompt_tokens + i,
                Logits::Last,
            );
        }
        let rows = engine.run_batch()?;
        forward_time += t.elapsed();
        for (s, row) in rows.chunks_exact(vocab).enumerate() {
            next[s] = argmax(row);
        }
        if (i + 1) % 16 == 0 || i + 1 == opts.gen_tokens {
            let elapsed = start.elapsed().as_secs_f64();
            progress(&format!(
                "{mode}: decode {}/{} steps, {:.2} tok/s",
                i + 1,
                opts.gen_tokens,
                ((i + 1) * n_seq) as f64 / elapsed
            ));
        }
    }
    let decode_s = start.elapsed().as_secs_f64();
    let kv_after = engine.kv_reads();
    let kv_read = kv_after.bytes - kv_before.bytes;
    let kv_ahead = kv_after.blocks_read_ahead - kv_before.blocks_read_ahead;
    let kv_in_place = kv_after.blocks_read_in_place - kv_before.blocks_read_in_place;
    let stats = engine.weights().stats().clone();
    let n = opts.gen_tokens.max(1) as f64;
    let stall = stats.stall_time.as_secs_f64();
    let io = stats.read_time.as_secs_f64();
    let compute = forward_time.as_secs_f64() - stall;
    let wall = decode_s;
    Ok(BenchRun {
        mode: mode.to_string(),
        budget_bytes: plan.budget,
        planned_bytes: plan.total_bytes(),
        streamed_layers: plan.streamed_layers().count(),
        resident_layers: plan.placement.len() - plan.streamed_layers().count(),
        prefetch: opts.residency.prefetch,
        direct_io,
        load_seconds,
        batch: n_seq,
        prefill_tokens: n_seq * opts.prompt_tokens,
        prefill_tokens_per_s: (n_seq * opts.prompt_tokens) as f64 / prefill_s.max(1e-9),
        decode_tokens: n_seq * opts.gen_tokens,
        decode_tokens_per_s: (n_seq * opts.gen_tokens) as f64 / decode_s.max(1e-9),
        decode_ms_per_token: wall * 1e3 / n,
        stall_ms_per_token: stall * 1e3 / n,
        compute_ms_per_token: compute * 1e3 / n,
        other_ms_per_token: (wall - forward_time.as_secs_f64()) * 1e3 / n,
        io_ms_per_token: io * 1e3 / n,
        bytes_read_per_token: stats.streamed_bytes as f64 / n,
        kv_bytes_read_per_token: kv_read as f64 / n,
        kv_blocks_read_ahead_fraction: kv_ahead as f64 / (kv_ahead + kv_in_place).max(1) as f64,
        effective_bytes_per_s: stats.streamed_bytes as f64 / wall.max(1e-9),
        overlap_efficiency: io.max(compute) / wall.max(1e-9),
        peak_rss_bytes: peak_rss_bytes().unwrap_or(0),
    })
}

/// Weight bytes per second the CPU backend multiplies at decode (one
/// position), measured on layer 0's matrices read into memory.
pub fn measure_compute_rate(path: &Path, model: &Model, threads: usize) -> Result<f64> {
    use crate::backend::cpu::CpuBackend;
    use crate::engine::FileBytes;
    let layer = &model.layers[0];
    let read = crate::residency::plan::LayerRead::covering(layer.file_span());
    // O_DIRECT like the runs themselves: the page cache counts against a
    // container's memory limit.
    let mut reader = FileReader::open(path, true)?;
    let mut buf = AlignedBuf::new(read.len() as usize);
    let policy = RetryPolicy {
        retries: 2,
        backoff: Duration::from_millis(10),
    };
    read_range(
        &mut reader,
        &mut buf,
        read.range.clone(),
        read.needed(),
        policy,
        &"layer 0",
        path,
    )?;
    let bytes = FileBytes {
        base: read.range.start,
        bytes: &buf,
        resident: true,
    };
    let backend = CpuBackend::new(threads);
    let matrices = [
        &layer.wq,
        &layer.wk,
        &layer.wv,
        &layer.wo,
        &layer.w_gate,
        &layer.w_up,
        &layer.w_down,
    ];
    let widest = matrices
        .iter()
        .map(|t| t.cols.max(t.rows))
        .max()
        .unwrap_or(1);
    let x = vec![0.01f32; widest];
    let mut out = vec![0.0f32; widest];
    let mut best = f64::MAX;
    for _ in 0..3 {
        let start = Instant::now();
        for t in matrices {
            backend.matmul(bytes.weight(t), &x[..t.cols], &mut out[..t.rows], 1);
        }
        best = best.min(start.elapsed().as_secs_f64());
    }
    let matrix_bytes: u64 = matrices.iter().map(|t| t.bytes()).sum();
    Ok(matrix_bytes as f64 / best.max(1e-9))
}

/// Predicted decode time per token for a plan, from measured rates.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Prediction {
    pub io_seconds: f64,
    pub compute_seconds: f64,
    /// With prefetch, I/O and compute overlap: the larger one wins.
    pub overlapped_seconds: f64,
    /// Without prefetch they add up.
    pub serial_seconds: f64,
}

pub fn predict(
    plan: &Plan,
    model: &Model,
    disk_bytes_per_s: f64,
    compute_bytes_per_s: f64,
) -> Prediction {
    let weights: u64 =
        model.layers.iter().map(|l| l.weight_bytes()).sum::<u64>() + model.output.bytes();
    let io = plan.streamed_bytes_per_pass() as f64 / disk_bytes_per_s.max(1.0);
    let compute = weights as f64 / compute_bytes_per_s.max(1.0);
    Prediction {
        io_seconds: io,
        compute_seconds: compute,
        overlapped_seconds: io.max(compute),
        serial_seconds: io + compute,
    }
}

/// Speculative decoding measured the same way as [`run`].
#[derive(Debug, Clone, Serialize)]
pub struct SpeculativeRun {
    pub draft_tokens: usize,
    pub decode_tokens: usize,
    pub decode_tokens_per_s: f64,
    pub acceptance_rate: f64,
    /// Tokens emitted per pass of the target (1.0 = no gain).
    pub tokens_per_target_pass: f64,
    pub target_passes: u64,
    pub peak_rss_bytes: u64,
}

/// Decode greedily with `draft` proposing `k` tokens per pass of the
/// target (streamed as `plan` says; the draft fully resident).
pub fn run_speculative(
    path: &Path,
    model: &Model,
    plan: &Plan,
    draft_path: &Path,
    draft_model: &Model,
    opts: &BenchOptions,
    k: usize,
) -> Result<SpeculativeRun> {
    use crate::generate::sampler::{Sampler, SamplerConfig};
    use crate::generate::sequence::{EndToken, Limits, Refused, Sequence};
    use crate::generate::speculative::Speculative;
    use crate::generate::Flow;
    reset_peak_rss();
    let greedy = SamplerConfig {
        temperature: 0.0,
        ..Default::default()
    };
    let vocab = model.hparams.vocab_size;
    let target = Engine::new(
        model,
        Residency::open(path, model, plan, opts.residency)?,
        &opts.engine,
    )?;
    let draft_plan = opts.engine.plan(draft_model, u64::MAX)?;
    let draft = Engine::new(
        draft_model,
        Residency::open(draft_path, draft_model, &draft_plan, opts.residency)?,
        &opts.engine,
    )?;
    let mut spec = Speculative::new(target, draft, Sampler::new(greedy.clone(), vocab), k)?;
    let prompt = bench_tokens(opts.prompt_tokens, vocab, 0);
    let limits = Limits {
        max_tokens: opts.gen_tokens,
        stops: Vec::new(),
    };
    let mut seq = Sequence::new(&prompt, limits, spec.n_ctx(), Sampler::new(greedy, vocab))
        .map_err(|Refused(why)| Error::usage(why))?;
    let c = spec.generate(&mut seq, &EndToken(None), |_| Flow::Continue)?;
    let s = spec.stats;
    Ok(SpeculativeRun {
        draft_tokens: k,
        decode_tokens: c.tokens.len(),
        decode_tokens_per_s: c.tokens.len() as f64 / c.decode_time.as_secs_f64().max(1e-9),
        acceptance_rate: s.acceptance_rate(),
        tokens_per_target_pass: s.tokens_per_sweep(),
        target_passes: s.sweeps,
        peak_rss_bytes: peak_rss_bytes().unwrap_or(0),
    })
}

/// Everything one `flea bench` measured, with the ratios derived once: its
/// JSON form (`--json`, fields documented in the README) and its text form
/// (`Display`) are two views of this one value.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub model: String,
    pub model_bytes: u64,
    pub threads: usize,
    /// The CPU kernel set ([`crate::backend::cpu::Isa::best`], which
    /// `FLEA_CPU_ISA` overrides).
    pub cpu_kernels: &'static str,
    pub budget_bytes: u64,
    pub decode_tokens_per_s: f64,
    pub prefill_tokens_per_s: f64,
    pub peak_rss_bytes: u64,
    pub bytes_read_per_token: f64,
    /// Streamed layer bytes each forward pass reads (the plan's figure).
    pub streamed_bytes_per_pass: u64,
    pub disk_bound_bytes_per_s: f64,
    pub disk_bytes_per_s_before: f64,
    pub disk_bytes_per_s_after: f64,
    pub disk_direct: bool,
    pub disk_bound_ms_per_token: f64,
    /// KV cache bytes read from disk per decode step (0 in RAM).
    pub kv_bytes_read_per_token: f64,
    /// (streamed layer bytes + KV bytes read) per step over the disk
    /// bandwidth: the disk bound with the KV cache on disk.
    pub kv_disk_bound_ms_per_token: f64,
    pub memory_bandwidth_bytes_per_s: f64,
    /// Model file bytes x decode tokens/s per sequence: how close decode is
    /// to the memory bound.
    pub weight_bytes_per_s: f64,
    /// `weight_bytes_per_s` over `memory_bandwidth_bytes_per_s`: the share
    /// of the memory bound decode reaches (1.0 = every token reads the whole
    /// file at the measured RAM bandwidth).
    pub memory_bound_fraction: f64,
    /// The memory bound itself: RAM bandwidth over the model file's bytes,
    /// the decode tokens/s of one sequence that only reads its weights.
    pub memory_bound_decode_tokens_per_s: f64,
    pub overlap_efficiency: f64,
    pub verify: bool,
    pub unverified: Option<BenchRun>,
    pub verify_cost: Option<f64>,
    pub streamed: BenchRun,
    pub resident: Option<BenchRun>,
    pub resident_over_streamed_decode: Option<f64>,
    pub batch_sweep: Vec<BenchRun>,
    pub last_batch_over_first: Option<f64>,
    pub speculative: Option<SpeculativeRun>,
    pub speculative_target_alone: Option<BenchRun>,
    pub speculative_speedup: Option<f64>,
    /// The plan, as `flea plan` shows it (text form only).
    #[serde(skip)]
    pub plan: String,
}

/// What [`Report::new`] is made from: the measured runs and probes.
pub struct Measured {
    pub model: String,
    pub model_bytes: u64,
    pub threads: usize,
    pub plan: String,
    pub streamed_bytes_per_pass: u64,
    pub disk_before: DiskBandwidth,
    pub disk_after: DiskBandwidth,
    pub memory_bandwidth: f64,
    pub streamed: BenchRun,
    pub unverified: Option<BenchRun>,
    pub resident: Option<BenchRun>,
    pub batch_sweep: Vec<BenchRun>,
    /// The target alone, then with its draft.
    pub speculative: Option<(BenchRun, SpeculativeRun)>,
}

impl Report {
    pub fn new(m: Measured) -> Report {
        let s = &m.streamed;
        // Shared storage drifts: the bound is the mean of the probes taken
        // right before and right after the budgeted run.
        let disk = (m.disk_before.bytes_per_s + m.disk_after.bytes_per_s) / 2.0;
        let disk_bound_s = m.streamed_bytes_per_pass as f64 / disk.max(1.0);
        let batch_gain = match (m.batch_sweep.first(), m.batch_sweep.last()) {
            (Some(a), Some(b)) if m.batch_sweep.len() > 1 => {
                Some(b.decode_tokens_per_s / a.decode_tokens_per_s)
            }
            _ => None,
        };
        let (alone, spec) = match m.speculative {
            Some((a, s)) => (Some(a), Some(s)),
            None => (None, None),
        };
        let weight_bytes_per_s = m.model_bytes as f64 * s.decode_tokens_per_s / s.batch as f64;
        Report {
            model: m.model,
            model_bytes: m.model_bytes,
            threads: m.threads,
            cpu_kernels: crate::backend::cpu::Isa::best().name(),
            budget_bytes: s.budget_bytes,
            decode_tokens_per_s: s.decode_tokens_per_s,
            prefill_tokens_per_s: s.prefill_tokens_per_s,
            peak_rss_bytes: s.peak_rss_bytes,
            bytes_read_per_token: s.bytes_read_per_token,
            streamed_bytes_per_pass: m.streamed_bytes_per_pass,
            disk_bound_bytes_per_s: disk,
            disk_bytes_per_s_before: m.disk_before.bytes_per_s,
            disk_bytes_per_s_after: m.disk_after.bytes_per_s,
            disk_direct: m.disk_before.direct,
            disk_bound_ms_per_token: disk_bound_s * 1e3,
            kv_bytes_read_per_token: s.kv_bytes_read_per_token,
            kv_disk_bound_ms_per_token: (m.streamed_bytes_per_pass as f64
                + s.kv_bytes_read_per_token)
                / disk.max(1.0)
                * 1e3,
            memory_bandwidth_bytes_per_s: m.memory_bandwidth,
            weight_bytes_per_s,
            memory_bound_fraction: weight_bytes_per_s / m.memory_bandwidth.max(1.0),
            memory_bound_decode_tokens_per_s: m.memory_bandwidth / (m.model_bytes.max(1) as f64),
            overlap_efficiency: s.overlap_efficiency,
            verify: m.unverified.is_some(),
            verify_cost: m
                .unverified
                .as_ref()
                .map(|u| s.decode_ms_per_token / u.decode_ms_per_token - 1.0),
            unverified: m.unverified,
            resident_over_streamed_decode: m
                .resident
                .as_ref()
                .map(|r| r.decode_tokens_per_s / s.decode_tokens_per_s),
            resident: m.resident,
            last_batch_over_first: batch_gain,
            batch_sweep: m.batch_sweep,
            speculative_speedup: match (&alone, &spec) {
                (Some(a), Some(s)) => Some(s.decode_tokens_per_s / a.decode_tokens_per_s),
                _ => None,
            },
            speculative: spec,
            speculative_target_alone: alone,
            plan: m.plan,
            streamed: m.streamed,
        }
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::config::ByteSize;
        let s = &self.streamed;
        writeln!(
            f,
            "model {} ({}), {} threads, CPU kernels {}",
            self.model,
            ByteSize(self.model_bytes),
            self.threads,
            self.cpu_kernels
        )?;
        writeln!(f, "{}", self.plan)?;
        for r in std::iter::once(s).chain(self.resident.as_ref()) {
            writeln!(
                f,
                "\n[{}] {} streamed / {} resident layers, prefetch {}, {}",
                r.mode,
                r.streamed_layers,
                r.resident_layers,
                if r.prefetch { "on" } else { "off" },
                if r.direct_io {
                    "O_DIRECT"
                } else {
                    "buffered I/O"
                }
            )?;
            writeln!(
                f,
                "  prefill {:.2} tok/s ({} tokens)",
                r.prefill_tokens_per_s, r.prefill_tokens
            )?;
            writeln!(
                f,
                "  decode  {:.2} tok/s: {:.1} ms/token = stall {:.1} + compute {:.1} + other {:.1} (loader reading {:.1} ms/token)",
                r.decode_tokens_per_s,
                r.decode_ms_per_token,
                r.stall_ms_per_token,
                r.compute_ms_per_token,
                r.other_ms_per_token,
                r.io_ms_per_token
            )?;
            writeln!(
                f,
                "  read {:.1} MiB/token at {:.2} GB/s effective; overlap efficiency {:.2}",
                r.bytes_read_per_token / (1 << 20) as f64,
                r.effective_bytes_per_s / 1e9,
                r.overlap_efficiency
            )?;
            if r.kv_bytes_read_per_token > 0.0 {
                writeln!(
                    f,
                    "  kv cache read from disk: {:.1} MiB/token (beside {:.1} MiB/token of weights), {:.0}% of its blocks read ahead",
                    r.kv_bytes_read_per_token / (1 << 20) as f64,
                    r.bytes_read_per_token / (1 << 20) as f64,
                    r.kv_blocks_read_ahead_fraction * 100.0
                )?;
            }
            let budget = if r.budget_bytes == u64::MAX {
                "unbounded".to_string()
            } else {
                ByteSize(r.budget_bytes).to_string()
            };
            writeln!(
                f,
                "  peak RSS {} (budget {budget}, planned {})",
                ByteSize(r.peak_rss_bytes),
                ByteSize(r.planned_bytes)
            )?;
        }
        writeln!(
            f,
            "\ndisk bound: {:.2} GB/s ({}) -> {:.1} ms/token to read {:.1} MiB of streamed layers",
            self.disk_bound_bytes_per_s / 1e9,
            if self.disk_direct {
                "O_DIRECT"
            } else {
                "buffered"
            },
            self.disk_bound_ms_per_token,
            self.streamed_bytes_per_pass as f64 / (1 << 20) as f64
        )?;
        if self.kv_bytes_read_per_token > 0.0 {
            writeln!(
                f,
                "kv cache on disk: {:.1} MiB read per token beside {:.1} MiB of weights -> disk bound {:.1} ms/token; decode {:.1} ms/token ({:.2}x the bound)",
                self.kv_bytes_read_per_token / (1 << 20) as f64,
                self.streamed_bytes_per_pass as f64 / (1 << 20) as f64,
                self.kv_disk_bound_ms_per_token,
                s.decode_ms_per_token,
                s.decode_ms_per_token / self.kv_disk_bound_ms_per_token.max(1e-9)
            )?;
        }
        if let (Some(cost), Some(u)) = (self.verify_cost, &self.unverified) {
            writeln!(
                f,
                "verification: {:+.1}% decode time ({:.1} ms/token checked vs {:.1} unchecked)",
                cost * 100.0,
                s.decode_ms_per_token,
                u.decode_ms_per_token
            )?;
        }
        writeln!(
            f,
            "memory: {:.2} GB/s sequential read; decode touches {:.2} GB/s of model file (file bytes x tok/s) = {:.0}% of it (memory bound: {:.1} tok/s)",
            self.memory_bandwidth_bytes_per_s / 1e9,
            self.weight_bytes_per_s / 1e9,
            self.memory_bound_fraction * 100.0,
            self.memory_bound_decode_tokens_per_s
        )?;
        if !self.batch_sweep.is_empty() {
            writeln!(f, "\nbatch sweep (aggregate decode tokens/s, same budget):")?;
            for r in &self.batch_sweep {
                writeln!(
                    f,
                    "  batch {:>3}: {:>8.2} tok/s ({} resident / {} streamed layers, {:.1} ms per step)",
                    r.batch,
                    r.decode_tokens_per_s,
                    r.resident_layers,
                    r.streamed_layers,
                    r.decode_ms_per_token
                )?;
            }
            if let Some(g) = self.last_batch_over_first {
                let (first, last) = (
                    &self.batch_sweep[0],
                    &self.batch_sweep[self.batch_sweep.len() - 1],
                );
                writeln!(
                    f,
                    "  batch {} vs batch {}: {g:.2}x",
                    last.batch, first.batch
                )?;
            }
        }
        if let (Some(spec), Some(alone), Some(speedup)) = (
            &self.speculative,
            &self.speculative_target_alone,
            self.speculative_speedup,
        ) {
            writeln!(
                f,
                "\nspeculative ({} draft tokens): {:.2} tok/s vs {:.2} tok/s alone = {speedup:.2}x; acceptance {:.0}%, {:.2} tokens per target pass",
                spec.draft_tokens,
                spec.decode_tokens_per_s,
                alone.decode_tokens_per_s,
                spec.acceptance_rate * 100.0,
                spec.tokens_per_target_pass
            )?;
        }
        if let Some(r) = &self.resident {
            let bound_ms = self.disk_bound_ms_per_token.max(r.decode_ms_per_token);
            writeln!(
                f,
                "streamed/resident decode time: {:.2}x; streamed vs max(disk bound, resident compute) = {:.1} / {:.1} ms = {:.2}x",
                s.decode_ms_per_token / r.decode_ms_per_token,
                s.decode_ms_per_token,
                bound_ms,
                s.decode_ms_per_token / bound_ms
            )?;
        }
        Ok(())
    }
}
