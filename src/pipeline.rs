//! The headless pipeline behind `flea run`: prompts in on a reader, one per
//! line (plain text, or JSON objects with `--jsonl`), completions out on a
//! writer, one line each, flushed as soon as each is done.
//!
//! A malformed request or a prompt that cannot run produces an error record
//! (JSONL) or an empty line (text) and the run goes on. A signal stops the
//! current completion at the next token, emits it as `interrupted`, and ends
//! the run; everything completed before was already flushed.

use crate::engine::WeightSource;
use crate::error::{Error, Result};
use crate::generate::{Completion, FinishReason, Flow, Generator};
use crate::sampler::SamplerConfig;
use crate::tokenizer::Tokenizer;
use serde::Deserialize;
use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Input and output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One prompt per line in; one escaped completion per line out, in order.
    Text,
    /// One JSON request per line in; one JSON record per line out.
    Jsonl,
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub format: Format,
    pub max_tokens: usize,
    /// Defaults for every request. Each request restarts from its seed, so
    /// its output does not depend on the requests before it.
    pub sampling: SamplerConfig,
}

/// Shared between the pipeline and a signal handler.
#[derive(Debug, Default)]
pub struct Interrupt {
    /// A signal arrived: stop at the next token boundary. Shared with the
    /// generator, which checks it between tokens and prefill chunks.
    pub requested: Arc<AtomicBool>,
    /// A completion is in progress (otherwise the handler may exit at once:
    /// all finished output has been flushed).
    pub busy: AtomicBool,
}

/// What a whole run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RunSummary {
    pub prompts: usize,
    pub failed: usize,
    pub interrupted: bool,
}

/// One JSONL request. Unknown fields are errors, so a typo is reported
/// instead of silently ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    #[serde(default)]
    id: serde_json::Value,
    prompt: String,
    max_tokens: Option<usize>,
    temperature: Option<f32>,
    top_k: Option<usize>,
    top_p: Option<f32>,
    min_p: Option<f32>,
    repeat_penalty: Option<f32>,
    seed: Option<u64>,
    #[serde(default)]
    stop: StopStrings,
}

/// `"stop": "text"` or `"stop": ["a", "b"]`.
#[derive(Debug, Default, Deserialize)]
#[serde(untagged)]
enum StopStrings {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl StopStrings {
    fn into_vec(self) -> Vec<String> {
        match self {
            StopStrings::None => Vec::new(),
            StopStrings::One(s) => vec![s],
            StopStrings::Many(v) => v,
        }
    }
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

/// Where `stop` first occurs in `text`, if anywhere.
fn find_stop(text: &[u8], stops: &[String]) -> Option<usize> {
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.windows(s.len()).position(|w| w == s.as_bytes()))
        .min()
}

/// A finished request, ready to print.
struct Outcome {
    id: serde_json::Value,
    text: String,
    completion: Option<Completion>,
    error: Option<String>,
}

impl Outcome {
    fn finish_reason(&self) -> &'static str {
        match &self.completion {
            Some(c) if self.error.is_none() => c.finish.as_str(),
            _ => "error",
        }
    }

    fn to_json(&self) -> serde_json::Value {
        let mut record = serde_json::json!({
            "id": self.id,
            "text": self.text,
            "tokens": self.completion.as_ref().map_or(0, |c| c.tokens.len()),
            "finish_reason": self.finish_reason(),
        });
        if let Some(c) = &self.completion {
            let decode_s = c.decode_time.as_secs_f64();
            record["timing"] = serde_json::json!({
                "prompt_tokens": c.prompt_tokens,
                "prefill_ms": c.prefill_time.as_secs_f64() * 1e3,
                "decode_ms": decode_s * 1e3,
                "decode_tokens_per_s": if decode_s > 0.0 { c.tokens.len() as f64 / decode_s } else { 0.0 },
            });
        }
        if let Some(e) = &self.error {
            record["error"] = serde_json::Value::String(e.clone());
        }
        record
    }
}

/// Complete every request on `input` until EOF or an interrupt.
pub fn run<W: WeightSource>(
    generator: &mut Generator<'_, W>,
    tokenizer: &Tokenizer,
    input: impl BufRead,
    mut output: impl Write,
    options: &RunOptions,
    interrupt: &Interrupt,
) -> Result<RunSummary> {
    let mut summary = RunSummary::default();
    for (i, line) in input.lines().enumerate() {
        let n = i + 1;
        let line = line.map_err(|e| Error::io(format!("stdin: line {n}: {e}")))?;
        if options.format == Format::Jsonl && line.trim().is_empty() {
            continue;
        }
        summary.prompts += 1;
        interrupt.busy.store(true, Ordering::SeqCst);
        if interrupt.requested.load(Ordering::SeqCst) {
            summary.interrupted = true;
            summary.prompts -= 1;
            break;
        }
        let outcome = complete_one(generator, tokenizer, &line, n, options);
        interrupt.busy.store(false, Ordering::SeqCst);
        if outcome.error.is_some() {
            summary.failed += 1;
        }
        let record = match options.format {
            Format::Text => escape_line(&outcome.text),
            Format::Jsonl => outcome.to_json().to_string(),
        };
        writeln!(output, "{record}")
            .and_then(|_| output.flush())
            .map_err(|e| Error::io(format!("stdout: {e}")))?;
        if matches!(&outcome.completion, Some(c) if c.finish == FinishReason::Interrupted) {
            summary.interrupted = true;
            break;
        }
    }
    interrupt.busy.store(false, Ordering::SeqCst);
    Ok(summary)
}

fn complete_one<W: WeightSource>(
    generator: &mut Generator<'_, W>,
    tokenizer: &Tokenizer,
    line: &str,
    n: usize,
    options: &RunOptions,
) -> Outcome {
    let mut outcome = Outcome {
        id: serde_json::Value::Null,
        text: String::new(),
        completion: None,
        error: None,
    };
    let (prompt, max_tokens, sampling, stops) = match options.format {
        Format::Text => (
            line.to_string(),
            options.max_tokens,
            options.sampling.clone(),
            Vec::new(),
        ),
        Format::Jsonl => match serde_json::from_str::<Request>(line) {
            Ok(r) => {
                outcome.id = r.id;
                let d = &options.sampling;
                let sampling = SamplerConfig {
                    temperature: r.temperature.unwrap_or(d.temperature),
                    top_k: r.top_k.unwrap_or(d.top_k),
                    top_p: r.top_p.unwrap_or(d.top_p),
                    min_p: r.min_p.unwrap_or(d.min_p),
                    repeat_penalty: r.repeat_penalty.unwrap_or(d.repeat_penalty),
                    seed: r.seed.unwrap_or(d.seed),
                    ..d.clone()
                };
                (
                    r.prompt,
                    r.max_tokens.unwrap_or(options.max_tokens),
                    sampling,
                    r.stop.into_vec(),
                )
            }
            Err(e) => {
                // Keep the id if the line is JSON with one, so the caller
                // can match the error to its request.
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                    outcome.id = v.get("id").cloned().unwrap_or_default();
                }
                let msg = format!("stdin: line {n}: malformed request: {e}");
                log::error!("{msg}");
                outcome.error = Some(msg);
                return outcome;
            }
        },
    };
    if let Err(e) = sampling.validate() {
        let msg = format!("stdin: line {n}: {e}");
        log::error!("{msg}");
        outcome.error = Some(msg);
        return outcome;
    }
    generator.sampler.set_config(sampling);
    let tokens = tokenizer.encode(&prompt, tokenizer.add_bos_default());
    let mut text: Vec<u8> = Vec::with_capacity(max_tokens * 8);
    let mut stop_at = None;
    let result = generator.generate(&tokens, max_tokens, tokenizer.eos(), |t| {
        if stops.is_empty() {
            return Flow::Continue;
        }
        text.extend_from_slice(&tokenizer.token_piece(t));
        match find_stop(&text, &stops) {
            Some(at) => {
                stop_at = Some(at);
                Flow::Finish(FinishReason::Stop)
            }
            None => Flow::Continue,
        }
    });
    match result {
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
            let mut full = completion_text(tokenizer, &c.tokens);
            if let Some(at) = stop_at {
                // The stop string and anything after it are not output.
                full = String::from_utf8_lossy(&full.as_bytes()[..at]).into_owned();
            }
            outcome.text = full;
            outcome.completion = Some(c);
        }
        Err(e) => {
            let msg = format!("prompt {n}: {e}");
            log::error!("{msg}");
            outcome.error = Some(msg);
        }
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_keeps_one_line() {
        assert_eq!(escape_line("a\nb\\n\rc"), "a\\nb\\\\n\\rc");
        assert_eq!(escape_line("plain ünïcode"), "plain ünïcode");
    }

    #[test]
    fn stop_strings() {
        let stops = vec!["\n\n".to_string(), "END".to_string()];
        assert_eq!(find_stop(b"abc END x\n\n", &stops), Some(4));
        assert_eq!(find_stop(b"abc", &stops), None);
        assert_eq!(find_stop(b"abc", &[String::new()]), None);
    }

    #[test]
    fn requests_parse_and_reject_unknown_fields() {
        let r: Request = serde_json::from_str(r#"{"id": 7, "prompt": "hi", "stop": "x"}"#).unwrap();
        assert_eq!(r.id, serde_json::json!(7));
        assert_eq!(r.stop.into_vec(), vec!["x"]);
        let r: Request =
            serde_json::from_str(r#"{"prompt": "hi", "stop": ["a", "b"], "seed": 3}"#).unwrap();
        assert_eq!(r.stop.into_vec().len(), 2);
        let e = serde_json::from_str::<Request>(r#"{"prompt": "hi", "maxtokens": 3}"#).unwrap_err();
        assert!(e.to_string().contains("maxtokens"));
        assert!(serde_json::from_str::<Request>(r#"{"id": 1}"#).is_err());
    }
}
