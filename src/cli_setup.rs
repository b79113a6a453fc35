//! What every model-running subcommand shares: the `--model`, `--config`,
//! `--budget`, `--threads`, `--ctx-size` and `--chunk` flags, and turning
//! them (over the config file) into a loaded model and a plan.

use clap::Args;
use flea::config::{Budget, ByteSize, Config};
use flea::engine::{Engine, EngineConfig};
use flea::gguf::GgufFile;
use flea::model::Model;
use flea::residency::loader::RetryPolicy;
use flea::residency::plan::Plan;
use flea::residency::{Residency, ResidencyOptions};
use flea::tokenizer::Tokenizer;
use flea::{Error, Result};
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
    pub threads: Option<usize>,
    /// Context length: KV cache positions [default: min(model's, 2048)].
    #[arg(long, short = 'c')]
    pub ctx_size: Option<usize>,
    /// Positions per forward pass while reading a prompt [default: 64].
    #[arg(long)]
    pub chunk: Option<usize>,
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
    pub n_ctx: usize,
    pub max_chunk: usize,
    pub threads: usize,
}

pub fn open_session(args: &CommonArgs) -> Result<Session> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(b) = args.budget {
        config.memory.budget = b;
    }
    if let Some(t) = args.threads {
        if t == 0 {
            return Err(Error::usage("--threads: expected at least 1, found 0"));
        }
        config.device.threads = t;
    }
    if let Some(c) = args.chunk {
        if c == 0 {
            return Err(Error::usage("--chunk: expected at least 1, found 0"));
        }
        config.pipeline.prefill_chunk = c;
    }
    if let Some(c) = args.ctx_size {
        if c == 0 {
            return Err(Error::usage("--ctx-size: expected at least 1, found 0"));
        }
        config.generation.context = c;
    }
    if config.device.backend == flea::config::Backend::Cuda {
        return Err(Error::config(
            "device.backend = \"cuda\": this build has no CUDA backend; use \"cpu\" or \"auto\"",
        ));
    }

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
    let max_chunk = config.pipeline.prefill_chunk;
    let budget = config.memory.budget.resolve(file.file_len());
    let plan = Plan::make(&model, n_ctx, max_chunk, budget)
        .map_err(|e| Error::new(e.kind, format!("{}: {}", path.display(), e.message)))?;
    log::info!("plan (budget {}):\n{plan}", config.memory.budget);
    Ok(Session {
        path,
        config,
        file,
        model,
        tokenizer,
        plan,
        n_ctx,
        max_chunk,
        threads,
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
        }
    }

    /// Grow the context (and re-plan) for a pass longer than configured.
    pub fn replan_for_context(&mut self, n_ctx: usize) -> Result<()> {
        self.n_ctx = n_ctx;
        self.plan = Plan::make(&self.model, n_ctx, self.max_chunk, self.plan.budget)?;
        Ok(())
    }

    /// Load the resident weights and start streaming, as planned.
    pub fn engine(&self) -> Result<Engine<'_, Residency>> {
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
        let config = EngineConfig {
            n_ctx: self.n_ctx,
            max_chunk: self.max_chunk,
            threads: self.threads,
        };
        Engine::new(&self.model, source, &config)
    }
}
