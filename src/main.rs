//! `flea`: the command line. Parses arguments, calls the library, and maps
//! errors to the exit codes documented in the README.

mod cli_demo;
mod cli_setup;

use clap::{Args, Parser, Subcommand};
use cli_setup::{open_session, CommonArgs};
use flea::bench::{self, BenchOptions};
use flea::config::ByteSize;
use flea::engine::Engine;
use flea::generate::teacher_forced;
use flea::gguf::GgufFile;
use flea::model::Model;
use flea::output_file::OutputFile;
use flea::pipeline::{self, Format, Interrupt, RunOptions};
use flea::sampler::{Sampler, SamplerConfig};
use flea::speculative::Speculative;
use flea::{Error, Result};
use std::io::{BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "flea",
    version,
    about = "Run llama-family GGUF models, including ones larger than memory",
    long_about = "Run llama-family GGUF models (Q3_K/Q4_K/Q5_K/Q6_K, Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/IQ4_NL, F16/BF16/F32) inside a fixed \
memory budget: what fits stays resident, the other layers stream from storage through a double \
buffer while the previous layer computes.\n\n\
Exit codes: 0 success, 1 some prompts failed, 2 bad usage, 3 bad config or budget, \
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
    /// Print the tokens a model's tokenizer makes of a text.
    #[command(
        long_about = "Tokenize TEXT (or, without it, all of stdin, taken as is: a final \
newline is part of the text) with the model's tokenizer and print one `id -> 'piece'` line per \
token, the piece's bytes written raw (a piece may hold part of a UTF-8 character; control \
tokens show their text), or with --ids one list `[1, 2, 3]`. Only the tokenizer is read, so a \
vocab-only GGUF works. BOS is added when the model asks for it (tokenizer.ggml.add_bos_token) \
unless --no-bos. Control tokens written in the text (<|im_start|>, <s>) stay text unless \
--special."
    )]
    Tokenize(TokenizeArgs),
    /// Show what a budget keeps resident and streams, and the predicted time per token.
    #[command(
        long_about = "Plan a run: which layers stay resident and which stream through \
the double buffer, what each part of the budget pays for, and the predicted decode time per \
token from this machine's measured disk bandwidth (O_DIRECT) and compute rate."
    )]
    Plan(PlanArgs),
    /// Measure prefill and decode speed, I/O stalls and peak memory.
    #[command(
        long_about = "Benchmark a model inside a budget: prefill and decode tokens/s, \
per-token time split into I/O wait, compute and other, bytes read per token, effective GB/s \
next to the disk bound measured by this program (O_DIRECT sequential read), peak RSS, and \
overlap efficiency. --compare runs fully resident and streamed back to back; --no-prefetch \
loads each layer only when needed, to measure what overlap gains."
    )]
    Bench(BenchArgs),
    /// Write a random-weight llama GGUF with real shapes, for benchmarks and sizing.
    #[command(
        long_about = "Write a random-weight llama GGUF with the real shapes of a preset \
(tiny, 1b = TinyLlama-1.1B, 7b/13b/70b = Llama-2) and llama.cpp's per-tensor type mix for the \
chosen quantization. Blocks hold random but valid values. The vocabulary is copied from --vocab \
(a GGUF with tokenizer.ggml.* keys), or a placeholder SPM vocabulary is built."
    )]
    Synth(SynthArgs),
    /// Write MODEL.sums: a hash per layer and per global tensor, checked by --verify.
    #[command(
        long_about = "Hash the regions a run reads (each layer's tensors, the embeddings and \
output head) with XXH3-64 and write them next to the model as MODEL.sums. With --verify (or \
[io] verify = true), run, logits, bench and plan-with-measure check every layer they read \
against it: a file that changed or storage that returned corrupt data fails the run with \
exit 5, naming the layer, instead of producing wrong text."
    )]
    Checksum(ChecksumArgs),
    /// Stream a synthesized model ~4x larger than its budget and show the numbers.
    #[command(
        long_about = "Start here. With no download, synthesize (and cache) a 1B-shaped \
Q4_K_M model, pick a budget about a quarter of its size, stream it through a few prompts, and \
print the plan, tokens/s, peak RSS vs budget, bytes streamed per token vs the disk bound, and \
streamed vs fully resident speed. --model runs the same demo on your own GGUF."
    )]
    Demo(DemoArgs),
}

#[derive(Args)]
struct SynthArgs {
    /// Shape: tiny, 1b, 7b, 13b or 70b.
    #[arg(long)]
    preset: flea::synth::Preset,
    /// Quantization mix: q4_k_m, q3_k_m, q3_k_s, q6_k, q8_0 or f16 (llama.cpp's
    /// mixes), or q4_0, q4_1, q5_0, q5_1, iq4_nl (every matrix in that format,
    /// like llama-quantize --pure).
    #[arg(long, default_value = "q4_k_m")]
    quant: flea::synth::QuantMix,
    /// Copy the tokenizer from this GGUF (e.g. a vocab-only file).
    #[arg(long)]
    vocab: Option<PathBuf>,
    /// Random seed: same seed and options, same bytes.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Output file.
    #[arg(long, short = 'o')]
    out: PathBuf,
}

#[derive(Args)]
struct ChecksumArgs {
    /// Path to a GGUF model file; the hashes go to this path + ".sums".
    #[arg(long, short = 'm')]
    model: PathBuf,
}

#[derive(Args)]
struct DemoArgs {
    /// Run the demo on this GGUF instead of a synthesized one.
    #[arg(long, short = 'm')]
    model: Option<PathBuf>,
    /// Memory budget [default: a quarter of the model, or the minimum if larger].
    #[arg(long, value_parser = flea::config::Budget::parse)]
    budget: Option<flea::config::Budget>,
    /// CPU threads [default: physical cores].
    #[arg(long, short = 't')]
    threads: Option<usize>,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Complete this one prompt instead of reading prompts from stdin.
    #[arg(long, short = 'p', conflicts_with = "jsonl")]
    prompt: Option<String>,
    /// Most tokens to generate per prompt, clamped to what the context holds
    /// [config: generation.max_tokens, default 128].
    #[arg(long, short = 'n', visible_alias = "n-predict")]
    max_tokens: Option<usize>,
    /// Sampling temperature; 0 means greedy [default 0.8].
    #[arg(long, visible_alias = "temp")]
    temperature: Option<f32>,
    /// Keep the k most likely tokens, 0 = all [default 40].
    #[arg(long)]
    top_k: Option<usize>,
    /// Nucleus sampling threshold, 1 = off [default 0.95].
    #[arg(long)]
    top_p: Option<f32>,
    /// Drop tokens below min_p x the top probability, 0 = off [default 0.05].
    #[arg(long)]
    min_p: Option<f32>,
    /// Penalty for recently seen tokens, 1 = off [default 1.0].
    #[arg(long)]
    repeat_penalty: Option<f32>,
    /// Random seed; the same seed gives the same output [default 42].
    #[arg(long)]
    seed: Option<u64>,
    /// A small model that drafts tokens for this one to verify (speculative
    /// decoding); kept fully resident, its memory comes out of the budget.
    #[arg(long)]
    draft: Option<PathBuf>,
    /// Tokens the draft proposes per verification pass.
    #[arg(long, default_value_t = 4)]
    draft_tokens: usize,
    /// Read JSON requests, one per line ({"id", "prompt", "max_tokens", "temperature",
    /// "seed", "stop", ...}), and write one JSON record per request.
    #[arg(long)]
    jsonl: bool,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["prompt", "tokens"])))]
struct LogitsArgs {
    #[command(flatten)]
    common: CommonArgs,
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

#[derive(Args)]
struct TokenizeArgs {
    /// Path to a GGUF file (a vocab-only file is enough).
    #[arg(long, short = 'm')]
    model: PathBuf,
    /// Print only the ids, as one list: [1, 2, 3].
    #[arg(long)]
    ids: bool,
    /// Do not add BOS, even if the model asks for it.
    #[arg(long)]
    no_bos: bool,
    /// Turn control tokens written in the text (<|im_start|>, <s>) into those tokens.
    #[arg(long)]
    special: bool,
    /// The text [default: all of stdin].
    text: Option<String>,
}

#[derive(Args)]
struct PlanArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Skip the disk and compute measurements (no prediction).
    #[arg(long)]
    no_measure: bool,
}

#[derive(Args)]
struct BenchArgs {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_level.as_deref());
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Logits(args) => logits(args),
        Command::Inspect(args) => inspect(args),
        Command::Tokenize(args) => tokenize(args),
        Command::Plan(args) => plan(args),
        Command::Bench(args) => bench_cmd(args),
        Command::Synth(args) => synth_cmd(args),
        Command::Checksum(args) => checksum_cmd(args),
        Command::Demo(args) => cli_demo::demo(args.model, args.budget, args.threads),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) if e.kind == flea::ErrorKind::OutputClosed => {
            log::debug!("{e}");
            ExitCode::SUCCESS
        }
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
        .set_thread_level(log::LevelFilter::Off)
        .build();
    let color = if std::io::stderr().is_terminal() {
        simplelog::ColorChoice::Auto
    } else {
        simplelog::ColorChoice::Never
    };
    // Failing to set up logging only loses log lines; carry on.
    let _ = simplelog::TermLogger::init(level, config, simplelog::TerminalMode::Stderr, color);
}

fn run(args: RunArgs) -> Result<u8> {
    let mut session = open_session(&args.common)?;
    let g = &session.config.generation;
    let sampling = SamplerConfig {
        temperature: args.temperature.unwrap_or(g.temperature),
        top_k: args.top_k.unwrap_or(g.top_k),
        top_p: args.top_p.unwrap_or(g.top_p),
        min_p: args.min_p.unwrap_or(g.min_p),
        repeat_penalty: args.repeat_penalty.unwrap_or(g.repeat_penalty),
        seed: args.seed.unwrap_or(g.seed),
        ..SamplerConfig::default()
    };
    sampling.validate()?;
    let options = RunOptions {
        format: if args.jsonl {
            Format::Jsonl
        } else {
            Format::Text
        },
        max_tokens: args.max_tokens.unwrap_or(g.max_tokens),
        sampling: sampling.clone(),
    };
    let interrupt = Arc::new(Interrupt::default());
    install_signal_handler(interrupt.clone())?;
    let input = match args.prompt.clone() {
        // One prompt from the command line: the same pipeline, fed once.
        Some(prompt) => {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            let _ = tx.send(Ok(pipeline::InputLine::Text(prompt)));
            rx
        }
        None => {
            if std::io::stdin().is_terminal() {
                eprintln!(
                    "reading prompts from stdin, one per line ({}); end with Ctrl-D (or use -p TEXT)",
                    if args.jsonl { "JSON requests" } else { "plain text" }
                );
            }
            pipeline::spawn_line_reader(|| std::io::stdin().lock(), 2 * session.engine.n_seq)
        }
    };
    let summary = match &args.draft {
        None => pipeline::run(
            &mut session.engine()?,
            &session.tokenizer,
            input,
            std::io::stdout().lock(),
            &options,
            &interrupt,
        )?,
        Some(draft_path) => {
            if session.engine.n_seq > 1 {
                return Err(Error::usage(
                    "--draft works on one sequence at a time; drop --batch (or set it to 1)",
                ));
            }
            // The draft is small and resident: it runs on the CPU.
            let draft = cli_setup::open_draft(&mut session, draft_path)?;
            let vocab = session.model.hparams.vocab_size;
            let draft_engine = Engine::new(&draft.model, draft.weights, &session.engine)?;
            let mut spec = Speculative::new(
                session.engine()?,
                draft_engine,
                Sampler::new(sampling.clone(), vocab),
                args.draft_tokens,
            )?;
            pipeline::run_speculative(
                &mut spec,
                &session.tokenizer,
                input,
                std::io::stdout().lock(),
                &options,
                &interrupt,
            )?
        }
    };
    if summary.interrupted {
        log::warn!(
            "interrupted after {} prompts; completed output was flushed",
            summary.prompts
        );
        return Ok(130);
    }
    if summary.failed > 0 {
        log::warn!("{} of {} prompts failed", summary.failed, summary.prompts);
        return Ok(1);
    }
    Ok(0)
}

/// SIGINT/SIGTERM: between completions, exit at once (everything finished
/// is already flushed); during one, ask it to stop at the next token so its
/// partial result is written. A second signal exits at once.
fn install_signal_handler(interrupt: Arc<Interrupt>) -> Result<()> {
    ctrlc::set_handler(move || {
        let again = interrupt.requested.swap(true, Ordering::SeqCst);
        if again || !interrupt.busy.load(Ordering::SeqCst) {
            std::process::exit(130);
        }
    })
    .map_err(|e| Error::io(format!("cannot install the signal handler: {e}")))
}

fn logits(args: LogitsArgs) -> Result<u8> {
    let mut session = open_session(&args.common)?;
    let tokens = match (&args.prompt, &args.tokens) {
        (Some(p), _) => session
            .tokenizer
            .encode(p, session.tokenizer.add_bos_default()),
        (None, tokens) => tokens.clone().unwrap_or_default(),
    };
    if tokens.is_empty() {
        return Err(Error::usage("no tokens to evaluate"));
    }
    let vocab = session.model.hparams.vocab_size;
    if let Some(bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
        return Err(Error::usage(format!(
            "--tokens: token id {bad} is out of range: the vocabulary has {vocab} tokens (0..={})",
            vocab - 1
        )));
    }
    if tokens.len() > session.engine.n_ctx {
        session.replan_for_context(tokens.len())?;
    }
    cli_setup::remove_partial_on_signal(&args.out)?;
    let mut output = OutputFile::create(&args.out)?;
    let mut out = BufWriter::new(output.file());
    let start = Instant::now();
    let write_err = |e: std::io::Error| Error::io(format!("{}: {e}", args.out.display()));
    teacher_forced(&mut session.engine()?, &tokens, |row| {
        for v in row {
            out.write_all(&v.to_le_bytes()).map_err(write_err)?;
        }
        Ok(())
    })?;
    out.flush().map_err(write_err)?;
    drop(out);
    output.commit()?;
    log::info!(
        "wrote {} x {} logits to {} in {:.1} ms",
        tokens.len(),
        session.model.hparams.vocab_size,
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
    let io = Error::stdout;
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
        Err(e) => {
            // The header and tensor table above are still worth reading;
            // the error goes to stderr with its exit code.
            out.flush().map_err(io)?;
            return Err(e);
        }
    }
    out.flush().map_err(io)?;
    log::info!("inspected in {:.1} ms", start.elapsed().as_secs_f64() * 1e3);
    Ok(0)
}

fn tokenize(args: TokenizeArgs) -> Result<u8> {
    let file = GgufFile::open(&args.model)?;
    let tokenizer = flea::tokenizer::Tokenizer::from_gguf(&file)?;
    let text = match args.text {
        Some(text) => text,
        None => std::io::read_to_string(std::io::stdin().lock()).map_err(|e| {
            if e.kind() == std::io::ErrorKind::InvalidData {
                Error::usage("stdin: the text is not valid UTF-8")
            } else {
                Error::io(format!("stdin: {e}"))
            }
        })?,
    };
    let add_bos = tokenizer.add_bos_default() && !args.no_bos;
    let tokens = if args.special {
        tokenizer.encode_with_special(&text, add_bos)
    } else {
        tokenizer.encode(&text, add_bos)
    };

    let mut out = BufWriter::new(std::io::stdout().lock());
    let io = |e: std::io::Error| Error::io(format!("stdout: {e}"));
    if args.ids {
        let list: Vec<String> = tokens.iter().map(u32::to_string).collect();
        writeln!(out, "[{}]", list.join(", ")).map_err(io)?;
    } else {
        // llama-tokenize's layout. Pieces are written as raw bytes, as the
        // model produces them; tokens that print nothing (BOS, control
        // tokens) show their stored text so that they can be seen.
        for &t in &tokens {
            let piece = tokenizer.token_piece(t);
            let shown = if piece.is_empty() {
                tokenizer.token_text(t).unwrap_or_default().as_bytes()
            } else {
                piece
            };
            write!(out, "{t:6} -> '").map_err(io)?;
            out.write_all(shown).map_err(io)?;
            writeln!(out, "'").map_err(io)?;
        }
    }
    out.flush().map_err(io)?;
    Ok(0)
}

fn plan(args: PlanArgs) -> Result<u8> {
    let session = open_session(&args.common)?;
    let mut out = std::io::stdout().lock();
    let io = Error::stdout;
    writeln!(out, "{}", session.plan).map_err(io)?;
    writeln!(
        out,
        "minimum budget for this model at context {}: {}",
        session.engine.n_ctx,
        ByteSize(session.engine.minimum_budget(&session.model))
    )
    .map_err(io)?;
    // Each sequence decoded together costs a KV cache: show what batching
    // takes from the resident layers under the same budget.
    let trade: Vec<String> = [1usize, 4, 16]
        .iter()
        .map(|&n| {
            let e = session.engine.with_batch(n);
            match e.plan(&session.model, session.plan.budget) {
                Ok(p) => format!(
                    "batch {n}: {} resident layers",
                    p.placement.len() - p.streamed_layers().count()
                ),
                Err(_) => format!("batch {n}: does not fit"),
            }
        })
        .collect();
    writeln!(out, "{}", trade.join("; ")).map_err(io)?;
    if args.no_measure {
        return Ok(0);
    }
    log::info!("measuring disk bandwidth (O_DIRECT) and compute rate...");
    let disk = bench::measure_disk_bandwidth(&session.path, 512 << 20)?;
    let compute =
        bench::measure_compute_rate(&session.path, &session.model, session.engine.threads)?;
    let p = bench::predict(&session.plan, &session.model, disk.bytes_per_s, compute);
    writeln!(
        out,
        "disk {:.2} GB/s ({}), compute {:.2} GB/s of weights on {} threads",
        disk.bytes_per_s / 1e9,
        if disk.direct { "O_DIRECT" } else { "buffered" },
        compute / 1e9,
        session.engine.threads
    )
    .map_err(io)?;
    writeln!(
        out,
        "predicted decode: {:.1} ms/token with prefetch (I/O {:.1} ms, compute {:.1} ms overlapped), {:.1} ms/token without",
        p.overlapped_seconds * 1e3,
        p.io_seconds * 1e3,
        p.compute_seconds * 1e3,
        p.serial_seconds * 1e3
    )
    .map_err(io)?;
    Ok(0)
}

fn bench_cmd(args: BenchArgs) -> Result<u8> {
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
    let disk = bench::DiskBandwidth {
        bytes_per_s: (disk_before.bytes_per_s + disk_after.bytes_per_s) / 2.0,
        ..disk_before
    };
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
    let verify_cost = unverified
        .as_ref()
        .map(|u| streamed.decode_ms_per_token / u.decode_ms_per_token - 1.0);
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
    let disk_bound_s = plan.streamed_bytes_per_pass() as f64 / disk.bytes_per_s.max(1.0);

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
    let batch_gain = match (sweep.first(), sweep.last()) {
        (Some(a), Some(b)) if sweep.len() > 1 => {
            Some(b.decode_tokens_per_s / a.decode_tokens_per_s)
        }
        _ => None,
    };

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

    if args.json {
        let json = serde_json::json!({
            "model": session.path.display().to_string(),
            "model_bytes": session.file.file_len(),
            "threads": session.engine.threads,
            "budget_bytes": plan.budget,
            "decode_tokens_per_s": streamed.decode_tokens_per_s,
            "prefill_tokens_per_s": streamed.prefill_tokens_per_s,
            "peak_rss_bytes": streamed.peak_rss_bytes,
            "bytes_read_per_token": streamed.bytes_read_per_token,
            "disk_bound_bytes_per_s": disk.bytes_per_s,
            "disk_bytes_per_s_before": disk_before.bytes_per_s,
            "disk_bytes_per_s_after": disk_after.bytes_per_s,
            "disk_direct": disk.direct,
            "disk_bound_ms_per_token": disk_bound_s * 1e3,
            "memory_bandwidth_bytes_per_s": memory_bw,
            "weight_bytes_per_s": session.file.file_len() as f64 * streamed.decode_tokens_per_s / streamed.batch as f64,
            "overlap_efficiency": streamed.overlap_efficiency,
            "verify": opts.residency.verify,
            "unverified": unverified,
            "verify_cost": verify_cost,
            "streamed": streamed,
            "resident": resident,
            "resident_over_streamed_decode": resident.as_ref().map(|r| r.decode_tokens_per_s / streamed.decode_tokens_per_s),
            "batch_sweep": sweep,
            "last_batch_over_first": batch_gain,
            "speculative": speculative.as_ref().map(|(_, s)| s),
            "speculative_target_alone": speculative.as_ref().map(|(p, _)| p),
            "speculative_speedup": speculative.as_ref().map(|(p, s)| s.decode_tokens_per_s / p.decode_tokens_per_s),
        });
        writeln!(std::io::stdout().lock(), "{json}").map_err(Error::stdout)?;
        return Ok(0);
    }
    let mut out = std::io::stdout().lock();
    let io = Error::stdout;
    writeln!(
        out,
        "model {} ({}), {} threads",
        session.path.display(),
        ByteSize(session.file.file_len()),
        session.engine.threads
    )
    .map_err(io)?;
    writeln!(out, "{plan}").map_err(io)?;
    for r in std::iter::once(&streamed).chain(resident.as_ref()) {
        writeln!(
            out,
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
        )
        .map_err(io)?;
        writeln!(
            out,
            "  prefill {:.2} tok/s ({} tokens)",
            r.prefill_tokens_per_s, r.prefill_tokens
        )
        .map_err(io)?;
        writeln!(
            out,
            "  decode  {:.2} tok/s: {:.1} ms/token = stall {:.1} + compute {:.1} + other {:.1} (loader reading {:.1} ms/token)",
            r.decode_tokens_per_s,
            r.decode_ms_per_token,
            r.stall_ms_per_token,
            r.compute_ms_per_token,
            r.other_ms_per_token,
            r.io_ms_per_token
        )
        .map_err(io)?;
        writeln!(
            out,
            "  read {:.1} MiB/token at {:.2} GB/s effective; overlap efficiency {:.2}",
            r.bytes_read_per_token / (1 << 20) as f64,
            r.effective_bytes_per_s / 1e9,
            r.overlap_efficiency
        )
        .map_err(io)?;
        let budget = if r.budget_bytes == u64::MAX {
            "unbounded".to_string()
        } else {
            ByteSize(r.budget_bytes).to_string()
        };
        writeln!(
            out,
            "  peak RSS {} (budget {budget}, planned {})",
            ByteSize(r.peak_rss_bytes),
            ByteSize(r.planned_bytes)
        )
        .map_err(io)?;
    }
    writeln!(
        out,
        "\ndisk bound: {:.2} GB/s ({}) -> {:.1} ms/token to read {:.1} MiB of streamed layers",
        disk.bytes_per_s / 1e9,
        if disk.direct { "O_DIRECT" } else { "buffered" },
        disk_bound_s * 1e3,
        plan.streamed_bytes_per_pass() as f64 / (1 << 20) as f64
    )
    .map_err(io)?;
    if let (Some(cost), Some(u)) = (verify_cost, &unverified) {
        writeln!(
            out,
            "verification (--verify): {:+.1}% decode time ({:.1} ms/token checked vs {:.1} unchecked)",
            cost * 100.0,
            streamed.decode_ms_per_token,
            u.decode_ms_per_token
        )
        .map_err(io)?;
    }
    writeln!(
        out,
        "memory: {:.2} GB/s sequential read; decode touches {:.2} GB/s of model file (file bytes x tok/s)",
        memory_bw / 1e9,
        session.file.file_len() as f64 * streamed.decode_tokens_per_s / streamed.batch as f64 / 1e9
    )
    .map_err(io)?;
    if !sweep.is_empty() {
        writeln!(
            out,
            "\nbatch sweep (aggregate decode tokens/s, same budget):"
        )
        .map_err(io)?;
        for r in &sweep {
            writeln!(
                out,
                "  batch {:>3}: {:>8.2} tok/s ({} resident / {} streamed layers, {:.1} ms per step)",
                r.batch, r.decode_tokens_per_s, r.resident_layers, r.streamed_layers, r.decode_ms_per_token
            )
            .map_err(io)?;
        }
        if let Some(g) = batch_gain {
            writeln!(
                out,
                "  batch {} vs batch {}: {g:.2}x",
                sweep[sweep.len() - 1].batch,
                sweep[0].batch
            )
            .map_err(io)?;
        }
    }
    if let Some((plain, spec)) = &speculative {
        writeln!(
            out,
            "\nspeculative ({} draft tokens): {:.2} tok/s vs {:.2} tok/s alone = {:.2}x; acceptance {:.0}%, {:.2} tokens per target pass",
            spec.draft_tokens,
            spec.decode_tokens_per_s,
            plain.decode_tokens_per_s,
            spec.decode_tokens_per_s / plain.decode_tokens_per_s,
            spec.acceptance_rate * 100.0,
            spec.tokens_per_target_pass
        )
        .map_err(io)?;
    }
    if let Some(r) = &resident {
        let bound = disk_bound_s.max(r.decode_ms_per_token / 1e3);
        writeln!(
            out,
            "streamed/resident decode time: {:.2}x; streamed vs max(disk bound, resident compute) = {:.1} / {:.1} ms = {:.2}x",
            streamed.decode_ms_per_token / r.decode_ms_per_token,
            streamed.decode_ms_per_token,
            bound * 1e3,
            streamed.decode_ms_per_token / (bound * 1e3)
        )
        .map_err(io)?;
    }
    Ok(0)
}

fn checksum_cmd(args: ChecksumArgs) -> Result<u8> {
    use flea::residency::checksum::{sidecar_path, Sums};
    let file = GgufFile::open(&args.model)?;
    let model = Model::from_gguf(&file)?;
    let target = sidecar_path(&args.model);
    let start = Instant::now();
    let bytes = file.bytes_at(0..file.file_len());
    let sums = Sums::compute(&model, bytes, cli_demo::progress_bar("checksum"));
    eprintln!();
    cli_setup::remove_partial_on_signal(&target)?;
    let mut out = OutputFile::create(&target)?;
    out.file()
        .write_all(sums.to_text().as_bytes())
        .map_err(|e| Error::io(format!("{}: {e}", out.partial().display())))?;
    out.commit()?;
    let seconds = start.elapsed().as_secs_f64();
    log::info!(
        "wrote {} ({} layers, {} global regions) in {:.2} s: {:.0} MB/s",
        target.display(),
        sums.layers.len(),
        sums.globals.len(),
        seconds,
        file.file_len() as f64 / seconds.max(1e-9) / 1e6
    );
    Ok(0)
}

fn synth_cmd(args: SynthArgs) -> Result<u8> {
    let opts = flea::synth::SynthOptions {
        preset: args.preset,
        quant: args.quant,
        vocab: args.vocab,
        seed: args.seed,
    };
    log::info!(
        "writing {} {} to {}",
        opts.preset,
        opts.quant,
        args.out.display()
    );
    cli_setup::remove_partial_on_signal(&args.out)?;
    let report = flea::synth::synth(&opts, &args.out, cli_demo::progress_bar("synth"))?;
    eprintln!();
    log::info!(
        "wrote {} ({} tensors) in {:.1} s: {:.0} MB/s",
        ByteSize(report.bytes),
        report.tensors,
        report.seconds,
        report.bytes_per_second() / 1e6
    );
    Ok(0)
}
