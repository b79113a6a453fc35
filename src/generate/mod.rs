//! Prompt in, tokens out. Every way of generating lives here, over the
//! engine: a [`sequence::Sequence`] holds one request's history, sampler
//! ([`sampler`]) and finish rules; the [`Generator`] runs one sequence at a
//! time; [`speculative`] decoding verifies a draft's tokens in one target
//! pass; the headless [`pipeline`] (`flea run`) batches sequences. Also the
//! teacher-forced pass behind `flea logits`.

pub mod pipeline;
pub mod sampler;
pub mod sequence;
pub mod speculative;

use crate::engine::{Engine, Logits, WeightSource};
use crate::error::{Error, Result};
use sampler::Sampler;
use sequence::{Limits, Refused, Sequence, TokenText};
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
    /// Each call starts from a copy of this sampler and stores its state
    /// back, so consecutive calls continue one random stream.
    pub sampler: Sampler,
    /// The newest logits row, copied so the sampler may penalize in place.
    logits: Vec<f32>,
    /// Set from outside (a signal handler) to stop at the next token or
    /// prefill chunk boundary.
    interrupt: Option<Arc<AtomicBool>>,
}

impl<'a, W: WeightSource> Generator<'a, W> {
    pub fn new(engine: Engine<'a, W>, sampler: Sampler) -> Self {
        let vocab = engine.hparams().vocab_size;
        Generator {
            engine,
            sampler,
            logits: vec![0.0; vocab],
            interrupt: None,
        }
    }

    /// Watch `flag`: once it is set, generation ends at the next boundary
    /// with [`FinishReason::Interrupted`], keeping what was generated.
    pub fn set_interrupt(&mut self, flag: Arc<AtomicBool>) {
        self.interrupt = Some(flag);
    }

    /// Generate up to `max_tokens` after `prompt` (which already holds BOS
    /// if wanted), ending at `ends`' end-of-generation tokens; see
    /// [`Sequence`] for every rule. The KV cache starts empty for every
    /// call. `on_token` sees each token as it is sampled and may stop the
    /// run.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        max_tokens: usize,
        ends: &dyn TokenText,
        mut on_token: impl FnMut(u32) -> Flow,
    ) -> Result<Completion> {
        let limits = Limits {
            max_tokens,
            stops: Vec::new(),
        };
        let mut seq = Sequence::new(prompt, limits, self.engine.n_ctx(), self.sampler.clone())
            .map_err(|Refused(why)| Error::usage(why))?;
        let interrupt = self.interrupt.clone();
        let interrupted = || {
            interrupt
                .as_ref()
                .is_some_and(|f| f.load(Ordering::Relaxed))
        };

        let start = Instant::now();
        let logits = &mut self.logits;
        let done = self.engine.prefill(0, prompt, 0, Logits::Last, |rows| {
            if !rows.is_empty() {
                logits.copy_from_slice(rows);
            }
            Ok(!interrupted())
        })?;
        let prefill_time = start.elapsed();
        if !done {
            seq.finish(FinishReason::Interrupted);
        }

        let start = Instant::now();
        let mut filled = prompt.len();
        while seq.finished().is_none() {
            let before = seq.generated().len();
            seq.sample(&mut self.logits, filled, ends);
            if seq.generated().len() == before {
                break; // an end token, or nothing left to generate
            }
            let next = seq.pending().expect("a token was just taken");
            if let Flow::Finish(reason) = on_token(next) {
                seq.finish(reason);
            } else if interrupted() {
                seq.finish(FinishReason::Interrupted);
            }
            if seq.finished().is_some() {
                break;
            }
            let rows = self.engine.forward(&[next], filled, Logits::Last)?;
            self.logits.copy_from_slice(rows);
            filled += 1;
        }
        let completion = Completion {
            tokens: seq.generated().to_vec(),
            finish: seq.finished().unwrap_or(FinishReason::Length),
            prompt_tokens: prompt.len(),
            prefill_time,
            decode_time: start.elapsed(),
        };
        self.sampler = seq.into_sampler();
        Ok(completion)
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
            "{} tokens do not fit in the context of {} tokens",
            tokens.len(),
            engine.n_ctx()
        )));
    }
    let vocab = engine.hparams().vocab_size;
    engine.prefill(0, tokens, 0, Logits::All, |rows| {
        for row in rows.chunks_exact(vocab) {
            sink(row)?;
        }
        Ok(true)
    })?;
    Ok(())
}
