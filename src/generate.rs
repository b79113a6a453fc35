//! Prompt in, tokens out: prefill in chunks, then one decode step per token,
//! sampling each next token. Also the teacher-forced pass behind
//! `flea logits`.

use crate::engine::{Engine, Logits, WeightSource};
use crate::error::{Error, Result};
use crate::sampler::Sampler;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model produced its end-of-sequence token.
    Stop,
    /// `max_tokens` was reached, or the context filled up.
    Length,
    /// The caller asked to stop (a signal).
    Interrupted,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Interrupted => "interrupted",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Completion {
    /// Generated tokens, without the prompt and without the end token.
    pub tokens: Vec<u32>,
    pub finish: FinishReason,
    pub prompt_tokens: usize,
    pub prefill_time: Duration,
    pub decode_time: Duration,
}

/// What the caller's per-token callback wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// End the completion here, for this reason (a stop string: `Stop`; a
    /// signal: `Interrupted`).
    Finish(FinishReason),
}

pub struct Generator<'a, W: WeightSource> {
    pub engine: Engine<'a, W>,
    pub sampler: Sampler,
    /// The newest logits row, copied so the sampler may penalize in place.
    logits: Vec<f32>,
    /// Prompt plus generated tokens of the current sequence.
    history: Vec<u32>,
    /// Set from outside (a signal handler) to stop at the next token or
    /// prefill chunk boundary.
    interrupt: Option<Arc<AtomicBool>>,
}

impl<'a, W: WeightSource> Generator<'a, W> {
    pub fn new(engine: Engine<'a, W>, sampler: Sampler) -> Self {
        let vocab = engine.hparams().vocab_size;
        let n_ctx = engine.n_ctx();
        Generator {
            engine,
            sampler,
            logits: vec![0.0; vocab],
            history: Vec::with_capacity(n_ctx),
            interrupt: None,
        }
    }

    /// Watch `flag`: once it is set, generation ends at the next boundary
    /// with [`FinishReason::Interrupted`], keeping what was generated.
    pub fn set_interrupt(&mut self, flag: Arc<AtomicBool>) {
        self.interrupt = Some(flag);
    }

    fn interrupted(&self) -> bool {
        self.interrupt
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed))
    }

    /// Generate up to `max_tokens` after `prompt` (which already holds BOS
    /// if wanted). The KV cache starts empty for every call. `on_token` sees
    /// each token as it is sampled and may stop the run.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        max_tokens: usize,
        eos: Option<u32>,
        mut on_token: impl FnMut(u32) -> Flow,
    ) -> Result<Completion> {
        let n_ctx = self.engine.n_ctx();
        if prompt.is_empty() {
            return Err(Error::usage("empty prompt: nothing to condition on"));
        }
        if prompt.len() > n_ctx {
            return Err(Error::usage(format!(
                "prompt of {} tokens does not fit in the context of {n_ctx} tokens (raise --ctx-size)",
                prompt.len()
            )));
        }
        // At most n_ctx - prompt + 1 tokens fit, whatever was asked.
        let mut tokens = Vec::with_capacity(max_tokens.min(n_ctx - prompt.len() + 1));
        self.history.clear();
        self.history.extend_from_slice(prompt);

        let start = Instant::now();
        let chunk = self.engine.max_chunk();
        let mut pos = 0;
        for piece in prompt.chunks(chunk) {
            if self.interrupted() {
                return Ok(Completion {
                    tokens,
                    finish: FinishReason::Interrupted,
                    prompt_tokens: prompt.len(),
                    prefill_time: start.elapsed(),
                    decode_time: Duration::ZERO,
                });
            }
            let last = pos + piece.len() == prompt.len();
            let want = if last { Logits::Last } else { Logits::None };
            let logits = self.engine.forward(piece, pos, want)?;
            if last {
                self.logits.copy_from_slice(logits);
            }
            pos += piece.len();
        }
        let prefill_time = start.elapsed();

        let start = Instant::now();
        let mut finish = FinishReason::Length;
        while tokens.len() < max_tokens {
            let next = self.sampler.sample(&mut self.logits, &self.history);
            if Some(next) == eos {
                finish = FinishReason::Stop;
                break;
            }
            tokens.push(next);
            self.history.push(next);
            if let Flow::Finish(reason) = on_token(next) {
                finish = reason;
                break;
            }
            if self.interrupted() {
                finish = FinishReason::Interrupted;
                break;
            }
            // The last token needs no forward pass, and a full context
            // cannot take another position.
            if tokens.len() == max_tokens || pos == n_ctx {
                break;
            }
            let logits = self.engine.forward(&[next], pos, Logits::Last)?;
            self.logits.copy_from_slice(logits);
            pos += 1;
        }
        Ok(Completion {
            tokens,
            finish,
            prompt_tokens: prompt.len(),
            prefill_time,
            decode_time: start.elapsed(),
        })
    }
}

/// Run `tokens` through the model in chunks and hand every position's
/// logits row to `sink`, in order.
pub fn teacher_forced<W: WeightSource>(
    engine: &mut Engine<'_, W>,
    tokens: &[u32],
    mut sink: impl FnMut(&[f32]) -> Result<()>,
) -> Result<()> {
    if tokens.len() > engine.n_ctx() {
        return Err(Error::usage(format!(
            "{} tokens do not fit in the context of {} tokens (raise --ctx-size)",
            tokens.len(),
            engine.n_ctx()
        )));
    }
    let vocab = engine.hparams().vocab_size;
    let chunk = engine.max_chunk();
    for (i, piece) in tokens.chunks(chunk).enumerate() {
        let logits = engine.forward(piece, i * chunk, Logits::All)?;
        for row in logits.chunks_exact(vocab) {
            sink(row)?;
        }
    }
    Ok(())
}
