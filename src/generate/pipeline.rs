//! The headless pipeline behind `flea run`: prompts in on a reader, one per
//! line (plain text, or JSON objects with `--jsonl`), completions out on a
//! writer, one line each, flushed as soon as each is done.
//!
//! A request is a prompt or, in JSONL, a conversation (`messages`), which
//! the model's chat template turns into the prompt (see [`crate::chat`]);
//! with [`ChatOptions::wrap_prompts`] (`--chat`) every prompt is one user
//! message of a conversation.
//!
//! A malformed request or a prompt that cannot run produces an error record
//! (JSONL) or an empty line (text) and the run goes on. A signal stops the
//! current completion at the next token, emits it as `interrupted`, and ends
//! the run; everything completed before was already flushed.

use crate::chat::{self, ChatTemplate, Message};
use crate::engine::{Engine, Logits, WeightSource};
use crate::error::{Error, Result};
use crate::generate::sampler::{Sampler, SamplerConfig};
use crate::generate::sequence::{completion_bytes, Limits, Refused, Sequence};
use crate::generate::speculative::Speculative;
use crate::generate::{Completion, FinishReason, Flow};
use crate::limits;
use crate::tokenizer::Tokenizer;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    /// Control tokens written in a prompt (`<|im_start|>`, `<s>`) become
    /// those tokens, as in `flea tokenize --special`; otherwise they stay
    /// text.
    pub special: bool,
    pub chat: ChatOptions,
}

/// How conversations become prompts.
#[derive(Debug, Clone)]
pub struct ChatOptions {
    /// The model's chat template, compiled once; or, when it has none (or
    /// it does not compile), the error a request that needs one gets.
    pub template: std::result::Result<Arc<ChatTemplate>, String>,
    /// Every prompt (a text line, a JSONL `prompt`) is one user message,
    /// rendered with the template (`--chat`).
    pub wrap_prompts: bool,
}

impl Default for ChatOptions {
    /// Prompts as they are; `messages` requests fail (no template).
    fn default() -> Self {
        ChatOptions {
            template: Err("no chat template was loaded".into()),
            wrap_prompts: false,
        }
    }
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
/// instead of silently ignored. Exactly one of `prompt` and `messages`
/// (checked by [`parse_request`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    #[serde(default)]
    id: serde_json::Value,
    prompt: Option<String>,
    messages: Option<Vec<Message>>,
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

/// What a request asks to complete.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Input {
    /// A prompt (a text line, or a JSONL `prompt`).
    Prompt(String),
    /// A conversation (JSONL `messages`).
    Messages(Vec<Message>),
}

/// Parse one JSONL line into a request and what it asks to complete; the
/// error names what is wrong (an unknown or mistyped field, `prompt` and
/// `messages` both or neither given).
fn parse_request(line: &str) -> std::result::Result<(Request, Input), String> {
    let mut r = serde_json::from_str::<Request>(line).map_err(|e| e.to_string())?;
    let input = match (r.prompt.take(), r.messages.take()) {
        (Some(prompt), None) => Input::Prompt(prompt),
        (None, Some(messages)) if messages.is_empty() => {
            return Err("field `messages` is empty: give at least one message".into())
        }
        (None, Some(messages)) => Input::Messages(messages),
        (Some(_), Some(_)) => {
            return Err("fields `prompt` and `messages` both given: give exactly one".into())
        }
        (None, None) => return Err("missing field `prompt` (or `messages`)".into()),
    };
    Ok((r, input))
}

/// The prompt tokens of `input`: a prompt as it is (BOS as the model
/// asks; control tokens parsed only with `special`), unless the options
/// wrap it as a user message; a conversation rendered with the chat
/// template and tokenized with control tokens.
fn input_tokens(
    input: Input,
    options: &ChatOptions,
    special: bool,
    tokenizer: &Tokenizer,
) -> std::result::Result<Vec<u32>, String> {
    let bos = tokenizer.add_bos_default();
    let messages = match input {
        Input::Prompt(text) if !options.wrap_prompts => {
            return Ok(if special {
                tokenizer.encode_with_special(&text, bos)
            } else {
                tokenizer.encode(&text, bos)
            });
        }
        Input::Prompt(text) => vec![Message::user(text)],
        Input::Messages(messages) => messages,
    };
    let template = options.template.as_ref().map_err(Clone::clone)?;
    let text = template.render(&messages, true).map_err(|e| e.message)?;
    Ok(chat::prompt_tokens(tokenizer, &text))
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
    String::from_utf8_lossy(&completion_bytes(tokenizer, tokens)).into_owned()
}

/// A finished request, ready to print.
struct Outcome {
    id: serde_json::Value,
    text: String,
    completion: Option<Completion>,
    error: Option<String>,
    warning: Option<String>,
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
        if let Some(w) = &self.warning {
            record["warning"] = serde_json::Value::String(w.clone());
        }
        record
    }
}

/// One line of input, as the reader thread hands it over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputLine {
    /// A line of text, without its line ending.
    Text(String),
    /// A line that cannot be a request: not UTF-8, or longer than
    /// [`limits::MAX_LINE_BYTES`]. It gets an error record (an empty line in
    /// text mode) and the run goes on with the next line.
    Rejected(String),
}

/// Read lines on a thread of their own, so the scheduler can keep decoding
/// while it waits for input. `open` runs on that thread (stdin's lock is
/// not `Send`). The channel is bounded: a fast producer waits. Only a
/// failing read ends the input early; a bad line is handed over as
/// [`InputLine::Rejected`], so it cannot take the lines after it down.
pub fn spawn_line_reader<R, F>(open: F, capacity: usize) -> Receiver<std::io::Result<InputLine>>
where
    R: BufRead,
    F: FnOnce() -> R + Send + 'static,
{
    let (tx, rx) = mpsc::sync_channel(capacity.max(1));
    let spawned = std::thread::Builder::new()
        .name("flea-stdin".into())
        .spawn(move || {
            let mut reader = open();
            loop {
                let line = read_line(&mut reader, limits::MAX_LINE_BYTES);
                let stop = !matches!(line, Ok(Some(_)));
                let item = match line {
                    Ok(Some(l)) => Ok(l),
                    Ok(None) => break,
                    Err(e) => Err(e),
                };
                if tx.send(item).is_err() || stop {
                    break;
                }
            }
        });
    if let Err(e) = spawned {
        // No thread, no input: the run sees one read error and ends cleanly.
        let (tx, failed) = mpsc::sync_channel(1);
        let _ = tx.send(Err(e));
        return failed;
    }
    rx
}

/// The next line of `reader` without its `\n` (or `\r\n`), `None` at the
/// end. A line longer than `max` bytes is read to its end but not kept, so
/// memory stays bounded whatever the input.
fn read_line(reader: &mut impl BufRead, max: usize) -> std::io::Result<Option<InputLine>> {
    let mut bytes = Vec::new();
    let mut total = 0usize;
    let mut too_long = false;
    loop {
        let buf = match reader.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            if total == 0 {
                return Ok(None);
            }
            break;
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        total += take;
        // Room for the line ending on top of `max` bytes of text.
        if too_long || bytes.len() + take > max + 2 {
            too_long = true;
            bytes = Vec::new();
        } else {
            bytes.extend_from_slice(&buf[..take]);
        }
        reader.consume(take);
        if done {
            break;
        }
    }
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    if too_long || bytes.len() > max {
        return Ok(Some(InputLine::Rejected(format!(
            "line of {total} bytes is longer than the limit of {max} bytes"
        ))));
    }
    Ok(Some(match String::from_utf8(bytes) {
        Ok(text) => InputLine::Text(text),
        Err(e) => InputLine::Rejected(format!(
            "not valid UTF-8 (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        )),
    }))
}

/// A request being served: its KV cache slot, its input line and id, and
/// its [`Sequence`] (prompt, sampler, rules, what it has generated).
struct Active {
    slot: usize,
    line: usize,
    id: serde_json::Value,
    seq: Sequence,
    /// Positions already in the KV cache (prompt, then generated).
    pos: usize,
    started: Instant,
    prefill_time: Duration,
}

impl Active {
    fn prefilling(&self) -> bool {
        self.pos < self.seq.prompt().len()
    }
}

/// Where finished records go: straight out (JSONL), or held until every
/// earlier line is out (text), so output order equals input order.
struct Output<Wr: Write> {
    out: Wr,
    format: Format,
    held: BTreeMap<usize, String>,
    next_line: usize,
}

impl<Wr: Write> Output<Wr> {
    fn emit(&mut self, line: usize, outcome: &Outcome) -> Result<()> {
        let record = match self.format {
            Format::Text => escape_line(&outcome.text),
            Format::Jsonl => outcome.to_json().to_string(),
        };
        match self.format {
            Format::Jsonl => self.write(&record),
            Format::Text => {
                self.held.insert(line, record);
                while let Some(r) = self.held.remove(&self.next_line) {
                    self.write(&r)?;
                    self.next_line += 1;
                }
                Ok(())
            }
        }
    }

    fn write(&mut self, record: &str) -> Result<()> {
        writeln!(self.out, "{record}")
            .and_then(|_| self.out.flush())
            .map_err(Error::stdout)
    }
}

/// Serve requests from `input` until EOF or an interrupt, up to the
/// engine's sequence count at once (continuous batching). Every pass of
/// the engine applies each layer to all active sequences: prompt chunks and
/// decode steps alike. A finished sequence leaves and the next request
/// takes its slot.
pub fn run<W: WeightSource>(
    engine: &mut Engine<'_, W>,
    tokenizer: &Tokenizer,
    input: Receiver<std::io::Result<InputLine>>,
    output: impl Write,
    options: &RunOptions,
    interrupt: &Interrupt,
) -> Result<RunSummary> {
    let n_seq = engine.n_seq();
    let max_chunk = engine.max_chunk();
    let vocab = engine.hparams().vocab_size;
    let mut out = Output {
        out: output,
        format: options.format,
        held: BTreeMap::new(),
        next_line: 1,
    };
    let mut summary = RunSummary::default();
    let mut free: Vec<usize> = (0..n_seq).rev().collect();
    let mut active: Vec<Active> = Vec::with_capacity(n_seq);
    let mut fed: Vec<usize> = Vec::with_capacity(n_seq);
    let n_ctx = engine.n_ctx();
    let mut logits = vec![0.0f32; vocab];
    let mut line_no = 0usize;
    let mut eof = false;

    loop {
        // Admit requests while slots are free; wait for input only when
        // nothing is running.
        while !eof && !free.is_empty() && !summary.interrupted {
            let next = if active.is_empty() {
                interrupt.busy.store(false, Ordering::SeqCst);
                input.recv().ok()
            } else {
                match input.try_recv() {
                    Ok(line) => Some(line),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => None,
                }
            };
            let Some(line) = next else {
                eof = true;
                break;
            };
            interrupt.busy.store(true, Ordering::SeqCst);
            if interrupt.requested.load(Ordering::SeqCst) {
                summary.interrupted = true;
                break;
            }
            line_no += 1;
            if let Some(mut a) = intake(
                line,
                line_no,
                options,
                tokenizer,
                n_ctx,
                vocab,
                &mut summary,
                &mut out,
            )? {
                a.slot = free.pop().expect("a free slot");
                active.push(a);
            }
        }
        if active.is_empty() {
            if eof || summary.interrupted {
                break;
            }
            continue;
        }

        // One pass: decode steps first (one position each), then prompt
        // chunks in the room left. `fed[i]` is what sequence i feeds.
        let mut room = max_chunk;
        fed.clear();
        fed.resize(active.len(), 0);
        for (i, a) in active.iter().enumerate() {
            if !a.prefilling() && room > 0 {
                fed[i] = 1;
                room -= 1;
            }
        }
        for (i, a) in active.iter().enumerate() {
            if a.prefilling() && room > 0 {
                fed[i] = (a.seq.prompt().len() - a.pos).min(room);
                room -= fed[i];
            }
        }
        engine.clear_batch();
        for (i, a) in active.iter().enumerate().filter(|(i, _)| fed[*i] > 0) {
            if a.prefilling() {
                let end = a.pos + fed[i];
                let want = if end == a.seq.prompt().len() {
                    Logits::Last
                } else {
                    Logits::None
                };
                engine.push(a.slot, &a.seq.prompt()[a.pos..end], a.pos, want);
            } else {
                let pending = a.seq.pending().expect("a decoding sequence has a token");
                engine.push(a.slot, &[pending], a.pos, Logits::Last);
            }
        }
        let rows = engine.run_batch()?;

        // Sample for every sequence that got a logits row (in push order).
        let mut row = 0;
        for (i, a) in active.iter_mut().enumerate().filter(|(i, _)| fed[*i] > 0) {
            let was_prefilling = a.prefilling();
            a.pos += fed[i];
            if was_prefilling && a.prefilling() {
                continue;
            }
            logits.copy_from_slice(&rows[row * vocab..(row + 1) * vocab]);
            row += 1;
            if was_prefilling {
                a.prefill_time = a.started.elapsed();
            }
            a.seq.sample(&mut logits, a.pos, tokenizer);
        }
        if interrupt.requested.load(Ordering::SeqCst) {
            summary.interrupted = true;
            for a in active.iter_mut().filter(|a| a.seq.finished().is_none()) {
                a.seq.finish(FinishReason::Interrupted);
            }
        }

        // Finished sequences leave; their records go out now.
        let mut i = 0;
        while i < active.len() {
            if active[i].seq.finished().is_none() {
                i += 1;
                continue;
            }
            let a = active.swap_remove(i);
            free.push(a.slot);
            let outcome = finished(a, tokenizer);
            out.emit(outcome.0, &outcome.1)?;
        }
        if summary.interrupted && active.is_empty() {
            break;
        }
    }
    interrupt.busy.store(false, Ordering::SeqCst);
    Ok(summary)
}

/// Serve requests one at a time with speculative decoding: the draft
/// proposes, one pass of the (streamed) target verifies. Same input,
/// output and signal handling as [`run`].
pub fn run_speculative<W: WeightSource, D: WeightSource>(
    spec: &mut Speculative<'_, W, D>,
    tokenizer: &Tokenizer,
    input: Receiver<std::io::Result<InputLine>>,
    output: impl Write,
    options: &RunOptions,
    interrupt: &Interrupt,
) -> Result<RunSummary> {
    let n_ctx = spec.target.n_ctx().min(spec.draft.n_ctx());
    let vocab = spec.target.hparams().vocab_size;
    let mut out = Output {
        out: output,
        format: options.format,
        held: BTreeMap::new(),
        next_line: 1,
    };
    let mut summary = RunSummary::default();
    let mut line_no = 0;
    loop {
        interrupt.busy.store(false, Ordering::SeqCst);
        let Ok(line) = input.recv() else { break };
        interrupt.busy.store(true, Ordering::SeqCst);
        if interrupt.requested.load(Ordering::SeqCst) {
            summary.interrupted = true;
            break;
        }
        line_no += 1;
        let Some(mut a) = intake(
            line,
            line_no,
            options,
            tokenizer,
            n_ctx,
            vocab,
            &mut summary,
            &mut out,
        )?
        else {
            continue;
        };
        spec.draft_sampler
            .set_config(a.seq.sampler().config().clone());
        let result = spec.generate(&mut a.seq, tokenizer, |_| {
            if interrupt.requested.load(Ordering::SeqCst) {
                Flow::Finish(FinishReason::Interrupted)
            } else {
                Flow::Continue
            }
        });
        match result {
            Ok(c) => {
                a.prefill_time = c.prefill_time;
                let interrupted = c.finish == FinishReason::Interrupted;
                let (line, outcome) = finished(a, tokenizer);
                out.emit(line, &outcome)?;
                if interrupted {
                    summary.interrupted = true;
                    break;
                }
            }
            Err(e) => fail(
                &mut out,
                &mut summary,
                line_no,
                a.id,
                format!("prompt {line_no}: {e}"),
            )?,
        }
    }
    let s = spec.stats;
    if s.sweeps > 0 {
        log::info!(
            "speculative: {} target passes, {:.0}% of {} drafted tokens accepted, {:.2} tokens per pass",
            s.sweeps,
            s.acceptance_rate() * 100.0,
            s.drafted,
            s.tokens_per_sweep()
        );
    }
    interrupt.busy.store(false, Ordering::SeqCst);
    Ok(summary)
}

/// Turn one input line into a request, or into an error record (counted
/// as failed). Blank JSONL lines are skipped. `None`: nothing to run.
#[allow(clippy::too_many_arguments)]
fn intake<Wr: Write>(
    line: std::io::Result<InputLine>,
    n: usize,
    options: &RunOptions,
    tokenizer: &Tokenizer,
    n_ctx: usize,
    vocab: usize,
    summary: &mut RunSummary,
    out: &mut Output<Wr>,
) -> Result<Option<Active>> {
    let line = match line.map_err(|e| Error::io(format!("stdin: line {n}: {e}")))? {
        InputLine::Text(text) => text,
        InputLine::Rejected(why) => {
            summary.prompts += 1;
            let msg = format!("stdin: line {n}: {why}");
            fail(out, summary, n, serde_json::Value::Null, msg)?;
            return Ok(None);
        }
    };
    if options.format == Format::Jsonl && line.trim().is_empty() {
        return Ok(None);
    }
    summary.prompts += 1;
    match admit(&line, n, options, tokenizer, n_ctx, vocab) {
        Ok(a) => Ok(Some(a)),
        Err((id, msg)) => {
            fail(out, summary, n, id, msg)?;
            Ok(None)
        }
    }
}

/// Log a failed request and emit its error record.
fn fail<Wr: Write>(
    out: &mut Output<Wr>,
    summary: &mut RunSummary,
    line: usize,
    id: serde_json::Value,
    msg: String,
) -> Result<()> {
    log::error!("{msg}");
    summary.failed += 1;
    let outcome = Outcome {
        id,
        text: String::new(),
        completion: None,
        error: Some(msg),
        warning: None,
    };
    out.emit(line, &outcome)
}

/// Everything `flea run` does with one input line before the engine sees
/// it (parse, validate, tokenize, size against the context), for the fuzz
/// harness: the error message a bad line gets, or `Ok`.
pub fn check_line(
    line: &str,
    options: &RunOptions,
    tokenizer: &Tokenizer,
    n_ctx: usize,
) -> std::result::Result<(), String> {
    admit(line, 1, options, tokenizer, n_ctx, tokenizer.vocab_size())
        .map(|_| ())
        .map_err(|(_, msg)| msg)
}

/// Parse and tokenize one input line into a request ready to run.
fn admit(
    line: &str,
    n: usize,
    options: &RunOptions,
    tokenizer: &Tokenizer,
    n_ctx: usize,
    vocab: usize,
) -> std::result::Result<Active, (serde_json::Value, String)> {
    let (id, input, max_tokens, sampling, stops) = match options.format {
        Format::Text => (
            serde_json::Value::Null,
            Input::Prompt(line.to_string()),
            options.max_tokens,
            options.sampling.clone(),
            Vec::new(),
        ),
        Format::Jsonl => match parse_request(line) {
            Ok((r, input)) => {
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
                let max = r.max_tokens.unwrap_or(options.max_tokens);
                (r.id, input, max, sampling, r.stop.into_vec())
            }
            Err(e) => {
                // Keep the id if the line is JSON with one, so the caller
                // can match the error to its request.
                let id = serde_json::from_str::<serde_json::Value>(line)
                    .ok()
                    .and_then(|v| v.get("id").cloned())
                    .unwrap_or_default();
                return Err((id, format!("stdin: line {n}: malformed request: {e}")));
            }
        },
    };
    if let Err(e) = sampling.validate() {
        return Err((id, format!("stdin: line {n}: {e}")));
    }
    let tokens = match input_tokens(input, &options.chat, options.special, tokenizer) {
        Ok(tokens) => tokens,
        Err(why) => return Err((id, format!("prompt {n}: {why}"))),
    };
    let limits = Limits { max_tokens, stops };
    let seq = match Sequence::new(&tokens, limits, n_ctx, Sampler::new(sampling, vocab)) {
        Ok(seq) => seq,
        Err(Refused(why)) => return Err((id, format!("prompt {n}: {why}"))),
    };
    if let Some(w) = &seq.warning {
        log::warn!("prompt {n}: {w}");
    }
    Ok(Active {
        slot: 0,
        line: n,
        id,
        seq,
        pos: 0,
        started: Instant::now(),
        prefill_time: Duration::ZERO,
    })
}

/// The record of a finished sequence, and its input line.
fn finished(a: Active, tokenizer: &Tokenizer) -> (usize, Outcome) {
    let finish = a.seq.finished().expect("finished");
    let total = a.started.elapsed();
    let completion = Completion {
        prompt_tokens: a.seq.prompt().len(),
        prefill_time: a.prefill_time,
        decode_time: total.saturating_sub(a.prefill_time),
        finish,
        tokens: a.seq.generated().to_vec(),
    };
    let prefill_s = completion.prefill_time.as_secs_f64().max(1e-9);
    let decode_s = completion.decode_time.as_secs_f64().max(1e-9);
    log::info!(
        "prompt {}: {} prompt tokens in {:.1} ms ({:.1} tok/s), {} generated in {:.1} ms ({:.2} tok/s), finish {}",
        a.line,
        completion.prompt_tokens,
        prefill_s * 1e3,
        completion.prompt_tokens as f64 / prefill_s,
        completion.tokens.len(),
        decode_s * 1e3,
        completion.tokens.len() as f64 / decode_s,
        finish.as_str()
    );
    (
        a.line,
        Outcome {
            id: a.id,
            text: a.seq.text(tokenizer),
            completion: Some(completion),
            error: None,
            warning: a.seq.warning,
        },
    )
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
    fn requests_parse_and_reject_unknown_fields() {
        let (r, input) = parse_request(r#"{"id": 7, "prompt": "hi", "stop": "x"}"#).unwrap();
        assert_eq!(r.id, serde_json::json!(7));
        assert_eq!(r.stop.into_vec(), vec!["x"]);
        assert_eq!(input, Input::Prompt("hi".into()));
        let (r, _) = parse_request(r#"{"prompt": "hi", "stop": ["a", "b"], "seed": 3}"#).unwrap();
        assert_eq!(r.stop.into_vec().len(), 2);
        let e = parse_request(r#"{"prompt": "hi", "maxtokens": 3}"#).unwrap_err();
        assert!(e.contains("maxtokens"), "{e}");
    }

    #[test]
    fn requests_give_a_prompt_or_messages() {
        let (_, input) =
            parse_request(r#"{"messages": [{"role": "user", "content": "hi"}]}"#).unwrap();
        assert_eq!(input, Input::Messages(vec![Message::user("hi")]));
        let both = r#"{"prompt": "x", "messages": [{"role": "user", "content": "hi"}]}"#;
        for (line, field) in [
            (r#"{"id": 1}"#, "`prompt` (or `messages`)"),
            (both, "`prompt` and `messages` both given"),
            (r#"{"messages": []}"#, "`messages` is empty"),
            (r#"{"messages": [{"role": "user"}]}"#, "content"),
            (
                r#"{"messages": [{"role": "user", "content": "a", "x": 1}]}"#,
                "`x`",
            ),
            (r#"{"messages": "hi"}"#, "invalid type"),
        ] {
            let e = parse_request(line).unwrap_err();
            assert!(e.contains(field), "{line}: {e}");
        }
    }

    /// Byte-level BPE over "h" and "i", with BOS `<s>` (asked for) and a
    /// control token `<|u|>`.
    fn tiny_tokenizer() -> Tokenizer {
        let parts = crate::tokenizer::TokenizerParts {
            model: "gpt2".into(),
            tokens: ["h", "i", "<s>", "<|u|>"].map(String::from).to_vec(),
            token_types: Some(vec![1, 1, 3, 3]),
            merges: Some(Vec::new()),
            bos: Some(2),
            add_bos: Some(true),
            ..Default::default()
        };
        Tokenizer::from_parts(parts, "tiny").unwrap()
    }

    fn chat(source: &str, wrap_prompts: bool) -> ChatOptions {
        let template = ChatTemplate::new(source, Some("<s>"), None, "tiny").unwrap();
        ChatOptions {
            template: Ok(Arc::new(template)),
            wrap_prompts,
        }
    }

    #[test]
    fn prompts_become_chat_turns_only_when_asked() {
        let tok = tiny_tokenizer();
        let prompt = || Input::Prompt("hi".into());
        let plain = ChatOptions::default();
        assert_eq!(
            input_tokens(prompt(), &plain, false, &tok),
            Ok(vec![2, 0, 1])
        );
        let e = input_tokens(
            Input::Messages(vec![Message::user("hi")]),
            &plain,
            false,
            &tok,
        );
        assert_eq!(e, Err("no chat template was loaded".into()));

        // The template writes BOS: it is not added again.
        let with_bos = "{{ bos_token }}{% for m in messages %}<|u|>{{ m.content }}{% endfor %}";
        assert_eq!(
            input_tokens(prompt(), &chat(with_bos, false), false, &tok),
            Ok(vec![2, 0, 1])
        );
        assert_eq!(
            input_tokens(prompt(), &chat(with_bos, true), false, &tok),
            Ok(vec![2, 3, 0, 1])
        );
        // It does not: the model asks for BOS, so it goes first.
        let without = "{% for m in messages %}<|u|>{{ m.content }}{% endfor %}";
        assert_eq!(
            input_tokens(prompt(), &chat(without, true), false, &tok),
            Ok(vec![2, 3, 0, 1])
        );
        let two = Input::Messages(vec![Message::user("h"), Message::new("assistant", "i")]);
        assert_eq!(
            input_tokens(two, &chat(without, false), false, &tok),
            Ok(vec![2, 3, 0, 3, 1])
        );

        let refuses = "{{ raise_exception('no ' + messages[0].role) }}";
        let e = input_tokens(prompt(), &chat(refuses, true), false, &tok).unwrap_err();
        assert!(e.ends_with("refused the conversation: no user"), "{e}");
    }
}
