//! `flea`: the command line. Parses arguments, calls the library, and maps
//! errors to the exit codes documented in the README.

use clap::{Args, Parser, Subcommand};
use flea::engine::{Engine, EngineConfig};
use flea::generate::{teacher_forced, Generator};
use flea::gguf::GgufFile;
use flea::model::Model;
use flea::pipeline::{run_lines, LineOptions};
use flea::sampler::{Sampler, SamplerConfig};
use flea::tokenizer::Tokenizer;
use flea::{Error, Result};
use std::io::{BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "flea",
    version,
    about = "Run llama-family GGUF models, including ones larger than memory",
    long_about = "Run llama-family GGUF models (Q3_K/Q4_K/Q5_K/Q6_K/Q8_0/F16/F32) on the CPU.\n\n\
Exit codes: 0 success, 1 some prompts failed, 2 bad usage, 3 bad config, \
4 bad or unsupported model, 5 I/O failure, 130 interrupted."
)]
struct Cli {
    /// Log level for stderr: error, warn, info, debug, trace (or set FLEA_LOG).
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Complete prompts read from stdin, one per line; write one line per completion.
    #[command(
        long_about = "Read prompts from stdin, one per line, and write each completion \
to stdout as one line, in input order. Inside a completion, a newline is written as \\n, \
a carriage return as \\r and a backslash as \\\\, so every completion stays on one line. \
Output is flushed after each line. Logs and timings go to stderr."
    )]
    Run(RunArgs),
    /// Write teacher-forced logits for every position of a prompt to a file.
    #[command(
        long_about = "Run a prompt (or explicit token ids) through the model in one \
teacher-forced pass and write the logits of every position: little-endian f32, positions x \
vocab, row-major (the layout of llama.cpp reference dumps)."
    )]
    Logits(LogitsArgs),
    /// Print a GGUF file's metadata, tensor table and bytes per layer.
    Inspect(InspectArgs),
}

#[derive(Args)]
struct ModelArgs {
    /// Path to a GGUF model file.
    #[arg(long, short = 'm')]
    model: PathBuf,
    /// CPU threads for matrix products [default: available cores].
    #[arg(long, short = 't')]
    threads: Option<usize>,
    /// Context length (KV cache positions) [default: min(model's, 2048)].
    #[arg(long, short = 'c')]
    ctx_size: Option<usize>,
    /// Positions processed per forward pass during prefill.
    #[arg(long, default_value_t = 64)]
    chunk: usize,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Most tokens to generate per prompt.
    #[arg(long, short = 'n', default_value_t = 128)]
    max_tokens: usize,
    /// Sampling temperature; 0 means greedy.
    #[arg(long, default_value_t = SamplerConfig::default().temperature)]
    temperature: f32,
    /// Keep the k most likely tokens (0 = all).
    #[arg(long, default_value_t = SamplerConfig::default().top_k)]
    top_k: usize,
    /// Nucleus sampling threshold (1 = off).
    #[arg(long, default_value_t = SamplerConfig::default().top_p)]
    top_p: f32,
    /// Drop tokens below min_p x the top probability (0 = off).
    #[arg(long, default_value_t = SamplerConfig::default().min_p)]
    min_p: f32,
    /// Penalty for recently seen tokens (1 = off).
    #[arg(long, default_value_t = SamplerConfig::default().repeat_penalty)]
    repeat_penalty: f32,
    /// Random seed; the same seed gives the same output.
    #[arg(long, default_value_t = SamplerConfig::default().seed)]
    seed: u64,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["prompt", "tokens"])))]
struct LogitsArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Text to tokenize (BOS is added as llama.cpp does).
    #[arg(long)]
    prompt: Option<String>,
    /// Comma-separated token ids, used as given.
    #[arg(long, value_delimiter = ',')]
    tokens: Option<Vec<u32>>,
    /// Output file.
    #[arg(long, short = 'o')]
    out: PathBuf,
}

#[derive(Args)]
struct InspectArgs {
    /// Path to a GGUF file.
    #[arg(long, short = 'm')]
    model: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_level.as_deref());
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Logits(args) => logits(args),
        Command::Inspect(args) => inspect(args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.kind.exit_code() as u8)
        }
    }
}

fn init_logging(flag: Option<&str>) {
    let env = std::env::var("FLEA_LOG").ok();
    let level = flag
        .or(env.as_deref())
        .and_then(|s| s.parse::<log::LevelFilter>().ok())
        .unwrap_or(log::LevelFilter::Info);
    let config = simplelog::ConfigBuilder::new()
        .set_time_level(log::LevelFilter::Off)
        .set_target_level(log::LevelFilter::Off)
        .build();
    // Failing to set up logging only loses log lines; carry on.
    let _ = simplelog::TermLogger::init(
        level,
        config,
        simplelog::TerminalMode::Stderr,
        if std::io::stderr().is_terminal() {
            simplelog::ColorChoice::Auto
        } else {
            simplelog::ColorChoice::Never
        },
    );
}

/// Everything loaded from a model file.
struct Loaded {
    file: GgufFile,
    model: Model,
    tokenizer: Tokenizer,
}

fn load(path: &PathBuf) -> Result<Loaded> {
    let start = Instant::now();
    let file = GgufFile::open(path)?;
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
        "loaded {} in {:.0} ms: {} layers, dim {}, {} heads ({} kv), ffn {}, vocab {}",
        path.display(),
        start.elapsed().as_secs_f64() * 1e3,
        hp.n_layers,
        hp.dim,
        hp.n_heads,
        hp.n_kv_heads,
        hp.ffn_dim,
        hp.vocab_size
    );
    Ok(Loaded {
        file,
        model,
        tokenizer,
    })
}

fn engine_config(args: &ModelArgs, model: &Model) -> Result<EngineConfig> {
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    if threads == 0 {
        return Err(Error::usage("--threads: expected at least 1, found 0"));
    }
    let n_ctx = args
        .ctx_size
        .unwrap_or_else(|| model.hparams.context_length.min(2048));
    if n_ctx == 0 {
        return Err(Error::usage("--ctx-size: expected at least 1, found 0"));
    }
    if args.chunk == 0 {
        return Err(Error::usage("--chunk: expected at least 1, found 0"));
    }
    Ok(EngineConfig {
        n_ctx,
        max_chunk: args.chunk,
        threads,
    })
}

fn run(args: RunArgs) -> Result<u8> {
    let sampling = SamplerConfig {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        repeat_penalty: args.repeat_penalty,
        seed: args.seed,
        ..SamplerConfig::default()
    };
    sampling.validate()?;
    let loaded = load(&args.model.model)?;
    let config = engine_config(&args.model, &loaded.model)?;
    let engine = Engine::new(&loaded.model, &loaded.file, &config)?;
    let sampler = Sampler::new(sampling, loaded.model.hparams.vocab_size);
    let mut generator = Generator::new(engine, sampler);
    let options = LineOptions {
        max_tokens: args.max_tokens,
        seed: args.seed,
    };
    let summary = run_lines(
        &mut generator,
        &loaded.tokenizer,
        std::io::stdin().lock(),
        std::io::stdout().lock(),
        &options,
    )?;
    if summary.failed > 0 {
        log::warn!("{} of {} prompts failed", summary.failed, summary.prompts);
        return Ok(1);
    }
    Ok(0)
}

fn logits(args: LogitsArgs) -> Result<u8> {
    let loaded = load(&args.model.model)?;
    let tokens = match (&args.prompt, &args.tokens) {
        (Some(p), _) => loaded
            .tokenizer
            .encode(p, loaded.tokenizer.add_bos_default()),
        (None, Some(t)) => t.clone(),
        (None, None) => unreachable!("clap requires --prompt or --tokens"),
    };
    if tokens.is_empty() {
        return Err(Error::usage("no tokens to evaluate"));
    }
    let mut config = engine_config(&args.model, &loaded.model)?;
    config.n_ctx = config.n_ctx.max(tokens.len());
    let mut engine = Engine::new(&loaded.model, &loaded.file, &config)?;
    let file = std::fs::File::create(&args.out)
        .map_err(|e| Error::io(format!("{}: cannot create: {e}", args.out.display())))?;
    let mut out = BufWriter::new(file);
    let start = Instant::now();
    teacher_forced(&mut engine, &tokens, |row| {
        for v in row {
            out.write_all(&v.to_le_bytes())
                .map_err(|e| Error::io(format!("{}: {e}", args.out.display())))?;
        }
        Ok(())
    })?;
    out.flush()
        .map_err(|e| Error::io(format!("{}: {e}", args.out.display())))?;
    log::info!(
        "wrote {} x {} logits to {} in {:.1} ms",
        tokens.len(),
        loaded.model.hparams.vocab_size,
        args.out.display(),
        start.elapsed().as_secs_f64() * 1e3
    );
    Ok(0)
}

fn inspect(args: InspectArgs) -> Result<u8> {
    let start = Instant::now();
    let file = GgufFile::open(&args.model)?;
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let io = |e: std::io::Error| Error::io(format!("stdout: {e}"));
    writeln!(
        out,
        "file: {}\nGGUF version {}, {} metadata keys, {} tensors, alignment {}, data at offset {}, {} bytes",
        file.path.display(),
        file.version,
        file.metadata.len(),
        file.tensors.len(),
        file.alignment,
        file.data_offset,
        file.file_len()
    )
    .map_err(io)?;
    writeln!(out, "\nmetadata:").map_err(io)?;
    for (key, value) in &file.metadata {
        writeln!(out, "  {key} = {value}").map_err(io)?;
    }
    writeln!(out, "\ntensors:").map_err(io)?;
    for t in &file.tensors {
        writeln!(
            out,
            "  {:<32} {:<5} {:<16} offset {:>12}  {:>12} bytes",
            t.name,
            t.ggml_type.to_string(),
            t.shape_string(),
            file.tensor_file_offset(t),
            t.size_bytes
        )
        .map_err(io)?;
    }
    match Model::from_gguf(&file) {
        Ok(model) => {
            let hp = &model.hparams;
            writeln!(
                out,
                "\nmodel: llama, {} layers, dim {}, {} heads ({} kv, head dim {}), ffn {}, vocab {}, context {}, rope base {} over {} dims, rms eps {}",
                hp.n_layers, hp.dim, hp.n_heads, hp.n_kv_heads, hp.head_dim, hp.ffn_dim,
                hp.vocab_size, hp.context_length, hp.rope_base, hp.rope_dims, hp.rms_eps
            )
            .map_err(io)?;
            writeln!(out, "bytes per layer:").map_err(io)?;
            for (i, layer) in model.layers.iter().enumerate() {
                let span = layer.file_span();
                writeln!(
                    out,
                    "  layer {i:>3}: {:>12} bytes (file {}..{})",
                    layer.weight_bytes(),
                    span.start,
                    span.end
                )
                .map_err(io)?;
            }
            let embd = model.token_embd.bytes();
            let head = if model.output == model.token_embd {
                0
            } else {
                model.output.bytes()
            };
            writeln!(
                out,
                "  embeddings {embd} bytes, output head {head} bytes, output norm {} bytes",
                model.output_norm.bytes()
            )
            .map_err(io)?;
        }
        Err(e) => writeln!(out, "\nnot a loadable llama model: {e}").map_err(io)?,
    }
    out.flush().map_err(io)?;
    log::info!("inspected in {:.1} ms", start.elapsed().as_secs_f64() * 1e3);
    Ok(0)
}
