//! `flea run`: the headless pipeline over stdin (or one `-p` prompt), with
//! batching, speculative decoding and signal handling.

use super::session::{open_session, CommonArgs};
use clap::Args;
use flea::chat::{self, ChatTemplate};
use flea::engine::Engine;
use flea::generate::pipeline::{self, ChatOptions, Format, Interrupt, RunOptions};
use flea::generate::sampler::{Sampler, SamplerConfig};
use flea::generate::speculative::Speculative;
use flea::{Error, Result};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

#[derive(Args)]
pub struct RunArgs {
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
    /// Read JSON requests, one per line ({"id", "prompt" or "messages", "max_tokens",
    /// "temperature", "seed", "stop", ...}), and write one JSON record per request.
    /// "messages": [{"role": "user", "content": "..."}, ...] is a conversation, formatted
    /// with the model's chat template.
    #[arg(long)]
    jsonl: bool,
    /// Chat: each prompt (a line of stdin, -p, or a JSONL "prompt") is one user message,
    /// formatted with the model's chat template (tokenizer.chat_template); a model
    /// without one is an error.
    #[arg(long)]
    chat: bool,
    /// Turn control tokens written in a prompt (<|im_start|>, <|im_end|>) into those
    /// tokens, as `flea tokenize --special` does; without it they stay text. For a chat
    /// model's prompt rendered by hand.
    #[arg(long)]
    special: bool,
}

pub fn run(args: RunArgs) -> Result<u8> {
    let mut session = open_session(&args.common)?;
    let chat = chat_options(&session, args.chat)?;
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
    // The library names the setting (`top_p`); here it came from a flag.
    sampling
        .validate()
        .map_err(|e| Error::new(e.kind, format!("--{}", e.message.replacen('_', "-", 1))))?;
    let options = RunOptions {
        format: if args.jsonl {
            Format::Jsonl
        } else {
            Format::Text
        },
        max_tokens: args.max_tokens.unwrap_or(g.max_tokens),
        sampling: sampling.clone(),
        chat,
        special: args.special,
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
                    match (args.jsonl, args.chat) {
                        (true, _) => "JSON requests",
                        (false, true) => "each line one user message",
                        (false, false) => "plain text",
                    }
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
            let draft = super::session::open_draft(&mut session, draft_path)?;
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

/// The model's chat template, compiled once. With `--chat` a model without
/// one (or with one that does not compile) fails here, before any input is
/// read; otherwise only `messages` requests need it, and each gets the error.
fn chat_options(session: &super::session::Session, wrap_prompts: bool) -> Result<ChatOptions> {
    let path = session.path.display().to_string();
    let template = match ChatTemplate::from_gguf(&session.file, &session.tokenizer) {
        Ok(Some(t)) => {
            log::debug!("chat template: {}", t.origin());
            Ok(Arc::new(t))
        }
        Ok(None) if wrap_prompts => return Err(chat::missing_template(&path)),
        Ok(None) => Err(chat::missing_template(&path).message),
        Err(e) if wrap_prompts => return Err(e),
        Err(e) => {
            log::warn!("{e}; \"messages\" requests will fail");
            Err(e.message)
        }
    };
    Ok(ChatOptions {
        template,
        wrap_prompts,
    })
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
