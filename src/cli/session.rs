//! What every model-running subcommand shares: the `--model`, `--config`,
//! `--budget`, `--threads`, `--ctx-size` and `--chunk` flags, and turning
//! them (over the config file) into a loaded model and a plan.

use clap::Args;
use flea::config::{Budget, ByteSize, Config};
use flea::engine::{Engine, EngineConfig};
use flea::gguf::GgufFile;
use flea::kv_cache::KvType;
use flea::kv_disk::KvOffload;
use flea::limits::{self, check_count};
use flea::model::Model;
use flea::residency::loader::RetryPolicy;
use flea::residency::plan::Plan;
use flea::residency::{Residency, ResidencyOptions};
use flea::tokenizer::Tokenizer;
use flea::{Error, Result};
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// Path to a GGUF model file.
    #[arg(long, short = 'm')]
    pub model: PathBuf,
    /// TOML config file (see configs/default.toml); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Memory budget: a size (6GiB, 512MiB) or a share of the model file (40%) [default: 6GiB].
    #[arg(long, value_parser = parse_budget)]
    pub budget: Option<Budget>,
    /// CPU threads [default: physical cores].
    #[arg(long, short = 't')]
    pub threads: Option<NonZeroUsize>,
    /// Context length: KV cache positions [default: min(model's, 2048)].
    #[arg(long, short = 'c')]
    pub ctx_size: Option<NonZeroUsize>,
    /// Positions per forward pass while reading a prompt (llama.cpp's
    /// -b/--batch-size) [default: 64].
    #[arg(long, short = 'b', visible_alias = "batch-size")]
    pub chunk: Option<NonZeroUsize>,
    /// Sequences decoded together; each streamed layer read serves all [default: 1].
    #[arg(long)]
    pub batch: Option<NonZeroUsize>,
    /// Check every layer read against MODEL.sums (see `flea checksum`) [config: io.verify].
    #[arg(long)]
    pub verify: bool,
    /// KV cache element type: f16 (half the memory, llama.cpp's default) or
    /// f32 [default: f16] [config: memory.kv_type].
    #[arg(long, value_parser = parse_kv_type)]
    pub kv_type: Option<KvType>,
    /// Where the KV cache lives: auto (on disk only when it does not fit
    /// the budget), off (RAM) or on (disk; CPU only) [default: auto]
    /// [config: memory.kv_offload].
    #[arg(long, value_parser = parse_kv_offload)]
    pub kv_offload: Option<KvOffload>,
    /// Directory of the KV file when on disk [default: the system temp
    /// dir] [config: memory.kv_dir].
    #[arg(long)]
    pub kv_dir: Option<String>,
}

fn parse_kv_offload(s: &str) -> std::result::Result<KvOffload, String> {
    match s.to_ascii_lowercase().as_str() {
        "auto" => Ok(KvOffload::Auto),
        "off" => Ok(KvOffload::Off),
        "on" => Ok(KvOffload::On),
        _ => Err(format!("expected auto, off or on, found {s:?}")),
    }
}

fn parse_kv_type(s: &str) -> std::result::Result<KvType, String> {
    s.parse()
}

fn parse_budget(s: &str) -> std::result::Result<Budget, String> {
    Budget::parse(s)
}

/// A model opened and planned, ready to build an engine.
pub struct Session {
    pub path: PathBuf,
    pub config: Config,
    pub file: GgufFile,
    pub model: Model,
    pub tokenizer: Tokenizer,
    pub plan: Plan,
    /// Context, chunk, sequences and threads, after flags and config.
    pub engine: EngineConfig,
    pub backend: BackendChoice,
}

/// Plan `model` (from `path`) for `backend`, which reports what it
/// allocates for the KV cache and activations (device memory, for CUDA);
/// a budget error names the file and the context.
fn plan_named(
    path: &std::path::Path,
    model: &Model,
    engine: &EngineConfig,
    backend: BackendChoice,
    budget: u64,
) -> Result<Plan> {
    // The KV cache may go to disk on the CPU only (`[memory] kv_offload`).
    let plan = match backend {
        BackendChoice::Cpu => engine.plan(model, budget),
        #[cfg(feature = "cuda")]
        BackendChoice::Cuda => Plan::make(
            model,
            flea::backend::cuda::CudaForward::memory_bytes(
                &model.hparams,
                flea::backend::cuda::CudaForwardConfig::new(
                    engine.n_ctx,
                    engine.max_chunk,
                    engine.n_seq,
                ),
            ),
            budget,
        ),
    };
    plan.map_err(|e| {
        Error::new(
            e.kind,
            format!(
                "{}: {} (context {}: --ctx-size)",
                path.display(),
                e.message,
                engine.n_ctx
            ),
        )
    })
}

/// Where the forward pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    Cpu,
    #[cfg(feature = "cuda")]
    Cuda,
}

/// `auto` takes the GPU when a driver and a device are present (one log
/// line either way); `cuda` insists and fails clearly when it cannot.
fn choose_backend(wanted: flea::config::Backend) -> Result<BackendChoice> {
    use flea::config::Backend;
    #[cfg(feature = "cuda")]
    {
        match wanted {
            Backend::Cpu => Ok(BackendChoice::Cpu),
            Backend::Cuda => {
                flea::backend::cuda::open(0)?;
                Ok(BackendChoice::Cuda)
            }
            Backend::Auto => match flea::backend::cuda::cuda_probe() {
                Ok(()) => {
                    log::info!("backend: CUDA device 0");
                    Ok(BackendChoice::Cuda)
                }
                Err(e) => {
                    log::info!("backend: CPU (CUDA unusable: {e})");
                    Ok(BackendChoice::Cpu)
                }
            },
        }
    }
    #[cfg(not(feature = "cuda"))]
    {
        match wanted {
            Backend::Cuda => Err(Error::config(
                "device.backend = \"cuda\", but this build has no CUDA backend (rebuild with --features cuda, or use \"cpu\" or \"auto\")",
            )),
            Backend::Auto | Backend::Cpu => Ok(BackendChoice::Cpu),
        }
    }
}

pub fn open_session(args: &CommonArgs) -> Result<Session> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(b) = args.budget {
        config.memory.budget = b;
    }
    if let Some(t) = args.kv_type {
        config.memory.kv_type = t;
    }
    if let Some(o) = args.kv_offload {
        config.memory.kv_offload = o;
    }
    if let Some(d) = &args.kv_dir {
        config.memory.kv_dir = d.clone();
    }
    if args.verify {
        config.io.verify = true;
    }
    // Zero is refused by the flags' type (NonZeroUsize); the caps here.
    if let Some(t) = args.threads {
        config.device.threads =
            check_count("--threads", t.get(), limits::MAX_THREADS, Error::usage)?;
    }
    if let Some(c) = args.chunk {
        config.pipeline.prefill_chunk =
            check_count("--chunk", c.get(), limits::MAX_CHUNK, Error::usage)?;
    }
    if let Some(b) = args.batch {
        config.pipeline.batch = check_count("--batch", b.get(), limits::MAX_BATCH, Error::usage)?;
    }
    if let Some(c) = args.ctx_size {
        config.generation.context =
            check_count("--ctx-size", c.get(), limits::MAX_CONTEXT, Error::usage)?;
    }
    let backend = choose_backend(config.device.backend)?;

    let start = Instant::now();
    let path = args.model.clone();
    let file = GgufFile::open(&path)?;
    let model = Model::from_gguf(&file)?;
    let tokenizer = Tokenizer::from_gguf(&file)?;
    if tokenizer.vocab_size() != model.hparams.vocab_size {
        return Err(Error::model(format!(
            "{}: tokenizer has {} tokens but token_embd.weight has {} rows",
            path.display(),
            tokenizer.vocab_size(),
            model.hparams.vocab_size
        )));
    }
    let hp = &model.hparams;
    log::info!(
        "{}: {} layers, dim {}, {} heads ({} kv), ffn {}, vocab {}, {} (read header in {:.0} ms)",
        path.display(),
        hp.n_layers,
        hp.dim,
        hp.n_heads,
        hp.n_kv_heads,
        hp.ffn_dim,
        hp.vocab_size,
        ByteSize(file.file_len()),
        start.elapsed().as_secs_f64() * 1e3
    );
    let n_ctx = match config.generation.context {
        0 => hp.context_length.min(2048),
        c => c,
    };
    let threads = match config.device.threads {
        0 => flea::platform::physical_cores(),
        t => t,
    };
    let engine = EngineConfig {
        n_ctx,
        max_chunk: config.pipeline.prefill_chunk,
        n_seq: 1,
        threads,
        kv_type: config.memory.kv_type,
        kv_offload: config.memory.kv_offload,
        kv_dir: match config.memory.kv_dir.as_str() {
            "" => std::env::temp_dir(),
            d => d.into(),
        },
    }
    .with_batch(config.pipeline.batch);
    let budget = config.memory.budget.resolve(file.file_len());
    let plan = plan_named(&path, &model, &engine, backend, budget)?;
    Ok(Session {
        path,
        config,
        file,
        model,
        tokenizer,
        plan,
        engine,
        backend,
    })
}

impl Session {
    pub fn residency_options(&self) -> ResidencyOptions {
        ResidencyOptions {
            direct: self.config.io.direct,
            retry: RetryPolicy {
                retries: self.config.io.retries,
                backoff: Duration::from_millis(self.config.io.retry_backoff_ms),
            },
            prefetch: self.config.pipeline.prefetch,
            verify: self.config.io.verify,
        }
    }

    /// Plan again for a different budget.
    pub fn replan(&mut self, budget: u64) -> Result<()> {
        self.plan = plan_named(&self.path, &self.model, &self.engine, self.backend, budget)?;
        Ok(())
    }

    /// Grow the context (and re-plan) for a pass longer than configured.
    pub fn replan_for_context(&mut self, n_ctx: usize) -> Result<()> {
        self.engine.n_ctx = n_ctx;
        self.replan(self.plan.budget)
    }

    /// Load the resident weights and start streaming, as planned, on the
    /// chosen backend. On the GPU resident layers stay in device memory
    /// once uploaded; streamed layers go through the planned host slots
    /// (page-locked) and, as `[device] buffer` says, a device double buffer
    /// or the mapped host slots themselves.
    pub fn engine(&self) -> Result<Engine<'_, Residency>> {
        log::info!("plan:\n{}", self.plan);
        let start = Instant::now();
        let source = Residency::open(
            &self.path,
            &self.model,
            &self.plan,
            self.residency_options(),
        )?;
        let stats = source.stats();
        log::info!(
            "loaded {} resident in {:.0} ms{}",
            ByteSize(stats.resident_bytes),
            start.elapsed().as_secs_f64() * 1e3,
            if self.plan.is_streaming() {
                if source.is_direct() {
                    "; streaming with O_DIRECT"
                } else {
                    "; streaming with buffered reads + DONTNEED"
                }
            } else {
                ""
            }
        );
        match self.backend {
            BackendChoice::Cpu => {
                Engine::new(&self.model, source, &self.engine.resolved(&self.plan))
            }
            #[cfg(feature = "cuda")]
            BackendChoice::Cuda => {
                let config = self
                    .engine
                    .cuda_forward(&self.plan, self.config.device.buffer);
                flea::engine::streaming_engine(&self.model, source, config, &self.engine)
            }
        }
    }
}

/// A draft model for speculative decoding, loaded fully resident.
pub struct Draft {
    pub model: Model,
    pub weights: Residency,
}

/// Load the draft, check it shares the target's vocabulary, and take its
/// memory out of the target's budget (re-planning the target).
pub fn open_draft(session: &mut Session, path: &std::path::Path) -> Result<Draft> {
    let file = GgufFile::open(path)?;
    let model = Model::from_gguf(&file)?;
    let tokenizer = Tokenizer::from_gguf(&file)?;
    let same_vocab = tokenizer.vocab_size() == session.tokenizer.vocab_size()
        && (0..tokenizer.vocab_size() as u32)
            .all(|t| tokenizer.token_text(t) == session.tokenizer.token_text(t));
    if !same_vocab {
        return Err(Error::usage(format!(
            "{}: the draft's vocabulary ({} tokens) differs from the target's ({} tokens, {}); speculative decoding needs the same tokenizer",
            path.display(),
            tokenizer.vocab_size(),
            session.tokenizer.vocab_size(),
            session.path.display()
        )));
    }
    let plan = session.engine.plan(&model, u64::MAX)?;
    let draft_bytes = plan.total_bytes();
    let budget = session.plan.budget;
    if draft_bytes >= budget {
        return Err(Error::config(format!(
            "{}: the draft needs {} resident, more than the whole budget of {}",
            path.display(),
            ByteSize(draft_bytes),
            ByteSize(budget)
        )));
    }
    session.replan(budget - draft_bytes)?;
    log::info!(
        "draft {}: {} resident; the target plans within the remaining {}",
        path.display(),
        ByteSize(draft_bytes),
        ByteSize(budget - draft_bytes)
    );
    let weights = Residency::open(path, &model, &plan, session.residency_options())?;
    Ok(Draft { model, weights })
}

/// SIGINT/SIGTERM while an output file is written: remove its partial
/// file (the target is untouched until the final rename) and exit 130.
pub fn remove_partial_on_signal(target: &std::path::Path) -> Result<()> {
    let partial = flea::output_file::partial_path(target)?;
    ctrlc::set_handler(move || {
        let _ = std::fs::remove_file(&partial);
        std::process::exit(130);
    })
    .map_err(|e| Error::io(format!("cannot install the signal handler: {e}")))
}
