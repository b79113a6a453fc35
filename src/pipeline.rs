//! The headless pipeline behind `flea run`: prompts in on a reader, one per
//! line, completions out on a writer, one line each, in input order and
//! flushed as soon as each is done.

use crate::engine::WeightSource;
use crate::error::{Error, Result};
use crate::generate::{Flow, Generator};
use crate::tokenizer::Tokenizer;
use std::io::{BufRead, Write};

/// Per-run settings of the line pipeline.
#[derive(Debug, Clone)]
pub struct LineOptions {
    pub max_tokens: usize,
    /// Every prompt restarts the sampler from this seed, so a prompt's
    /// output does not depend on the prompts before it.
    pub seed: u64,
}

/// What a whole run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RunSummary {
    pub prompts: usize,
    pub failed: usize,
}

/// Keep a completion on one line: escape backslash, newline and CR.
pub fn escape_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

/// The text of generated tokens, as the model spelled it (the leading space
/// of the first token is kept: it separates the completion from the prompt).
pub fn completion_text(tokenizer: &Tokenizer, tokens: &[u32]) -> String {
    let bytes: Vec<u8> = tokens
        .iter()
        .flat_map(|&t| tokenizer.token_piece(t))
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Complete every line of `input`. A prompt that fails is logged and gives
/// an empty line, so output lines stay aligned with input lines; I/O errors
/// on the streams end the run.
pub fn run_lines<W: WeightSource>(
    generator: &mut Generator<'_, W>,
    tokenizer: &Tokenizer,
    input: impl BufRead,
    mut output: impl Write,
    options: &LineOptions,
) -> Result<RunSummary> {
    let mut summary = RunSummary::default();
    for (i, line) in input.lines().enumerate() {
        let n = i + 1;
        let line = line.map_err(|e| Error::io(format!("stdin: line {n}: {e}")))?;
        summary.prompts += 1;
        let prompt = tokenizer.encode(&line, tokenizer.add_bos_default());
        generator.sampler.reseed(options.seed);
        let result = generator.generate(&prompt, options.max_tokens, tokenizer.eos(), |_| {
            Flow::Continue
        });
        let text = match result {
            Ok(c) => {
                let prefill_s = c.prefill_time.as_secs_f64().max(1e-9);
                let decode_s = c.decode_time.as_secs_f64().max(1e-9);
                log::info!(
                    "prompt {n}: {} prompt tokens in {:.1} ms ({:.1} tok/s), {} generated in {:.1} ms ({:.2} tok/s), finish {}",
                    c.prompt_tokens,
                    prefill_s * 1e3,
                    c.prompt_tokens as f64 / prefill_s,
                    c.tokens.len(),
                    decode_s * 1e3,
                    c.tokens.len() as f64 / decode_s,
                    c.finish.as_str()
                );
                completion_text(tokenizer, &c.tokens)
            }
            Err(e) => {
                log::error!("prompt {n}: {e}");
                summary.failed += 1;
                String::new()
            }
        };
        writeln!(output, "{}", escape_line(&text))
            .and_then(|_| output.flush())
            .map_err(|e| Error::io(format!("stdout: {e}")))?;
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_keeps_one_line() {
        assert_eq!(escape_line("a\nb\\n\rc"), "a\\nb\\\\n\\rc");
        assert_eq!(escape_line("plain ünïcode"), "plain ünïcode");
    }
}
