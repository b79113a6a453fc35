//! The `flea` command line: argument parsing, session assembly (model,
//! plan, engine), and each subcommand's rendering. The library does the
//! work; this module turns flags into calls and errors into exit codes.

mod bench;
mod checksum;
mod demo;
mod inspect;
mod logits;
mod plan;
mod run;
mod session;
mod synth;
mod tokenize;

use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::process::ExitCode;

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
Output is flushed after each line. Logs and timings go to stderr.\n\n\
Chat: with --chat each prompt is one user message, formatted with the model's chat template \
(tokenizer.chat_template) and its assistant turn opened; with --jsonl a request may give \
\"messages\": [{\"role\": \"user\", \"content\": \"...\"}, ...] instead of \"prompt\". \
Generation stops at the end of the model's turn."
    )]
    Run(run::RunArgs),
    /// Write teacher-forced logits for every position of a prompt to a file.
    #[command(
        long_about = "Run a prompt (or explicit token ids) through the model in one \
teacher-forced pass and write the logits of every position: little-endian f32, positions x \
vocab, row-major (the layout of llama.cpp reference dumps)."
    )]
    Logits(logits::LogitsArgs),
    /// Print a GGUF file's metadata, tensor table and bytes per layer.
    Inspect(inspect::InspectArgs),
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
    Tokenize(tokenize::TokenizeArgs),
    /// Show what a budget keeps resident and streams, and the predicted time per token.
    #[command(
        long_about = "Plan a run: which layers stay resident and which stream through \
the double buffer, what each part of the budget pays for, and the predicted decode time per \
token from this machine's measured disk bandwidth (O_DIRECT) and compute rate."
    )]
    Plan(plan::PlanArgs),
    /// Measure prefill and decode speed, I/O stalls and peak memory.
    #[command(
        long_about = "Benchmark a model inside a budget: prefill and decode tokens/s, \
per-token time split into I/O wait, compute and other, bytes read per token, effective GB/s \
next to the disk bound measured by this program (O_DIRECT sequential read), peak RSS, and \
overlap efficiency. --compare runs fully resident and streamed back to back; --no-prefetch \
loads each layer only when needed, to measure what overlap gains."
    )]
    Bench(bench::BenchArgs),
    /// Write a random-weight llama GGUF with real shapes, for benchmarks and sizing.
    #[command(
        long_about = "Write a random-weight llama GGUF with the real shapes of a preset \
(tiny, 1b = TinyLlama-1.1B, 7b/13b/70b = Llama-2) and llama.cpp's per-tensor type mix for the \
chosen quantization. Blocks hold random but valid values. The vocabulary is copied from --vocab \
(a GGUF with tokenizer.ggml.* keys), or a placeholder SPM vocabulary is built."
    )]
    Synth(synth::SynthArgs),
    /// Write MODEL.sums: a hash per layer and per global tensor, checked by --verify.
    #[command(
        long_about = "Hash the regions a run reads (each layer's tensors, the embeddings and \
output head) with XXH3-64 and write them next to the model as MODEL.sums. With --verify (or \
[io] verify = true), run, logits, bench and plan-with-measure check every layer they read \
against it: a file that changed or storage that returned corrupt data fails the run with \
exit 5, naming the layer, instead of producing wrong text."
    )]
    Checksum(checksum::ChecksumArgs),
    /// Stream a synthesized model ~4x larger than its budget and show the numbers.
    #[command(
        long_about = "Start here. With no download, synthesize (and cache) a 1B-shaped \
Q4_K_M model, pick a budget about a quarter of its size, stream it through a few prompts, and \
print the plan, tokens/s, peak RSS vs budget, bytes streamed per token vs the disk bound, and \
streamed vs fully resident speed. --model runs the same demo on your own GGUF."
    )]
    Demo(demo::DemoArgs),
}

/// Parse the command line, run the subcommand, and map its result to the
/// exit code the README documents.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_level.as_deref());
    // A kernel override the CPU cannot honour is a configuration error,
    // refused before any work (the library would only log and ignore it).
    if let Err(e) = flea::backend::cpu::Isa::from_env() {
        eprintln!("error: {e}");
        return ExitCode::from(flea::ErrorKind::Config.exit_code() as u8);
    }
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Logits(args) => logits::logits(args),
        Command::Inspect(args) => inspect::inspect(args),
        Command::Tokenize(args) => tokenize::tokenize(args),
        Command::Plan(args) => plan::plan(args),
        Command::Bench(args) => bench::bench_cmd(args),
        Command::Synth(args) => synth::synth_cmd(args),
        Command::Checksum(args) => checksum::checksum_cmd(args),
        Command::Demo(args) => demo::demo(args.model, args.budget, args.threads),
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
