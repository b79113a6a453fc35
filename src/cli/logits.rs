//! `flea logits`: teacher-forced logits of every position, to a file.

use super::session::{open_session, CommonArgs};
use clap::Args;
use flea::generate::teacher_forced;
use flea::output_file::OutputFile;
use flea::{Error, Result};
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["prompt", "tokens"])))]
pub struct LogitsArgs {
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

pub fn logits(args: LogitsArgs) -> Result<u8> {
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
    super::session::remove_partial_on_signal(&args.out)?;
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
