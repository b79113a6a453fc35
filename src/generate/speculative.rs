//! Speculative decoding: a small resident draft model proposes `k` tokens,
//! and one pass of the (streamed) target model verifies all of them, so a
//! streamed layer read serves several tokens of a single sequence.
//!
//! Acceptance is the standard rule (Leviathan et al., Chen et al.): a draft
//! token `d` drawn from the draft's distribution `q` is kept with
//! probability `min(1, p(d) / q(d))` under the target's distribution `p`;
//! on rejection the token is drawn from `max(0, p - q)`, renormalized. The
//! output is then distributed exactly as the target alone would sample it.
//! Greedy decoding is the special case where `p` and `q` are one-hot, and
//! gives exactly the target's greedy tokens.

use crate::engine::{Engine, Logits, WeightSource};
use crate::error::{Error, Result};
use crate::generate::sampler::Sampler;
use crate::generate::sequence::{Sequence, TokenText};
use crate::generate::{Completion, FinishReason, Flow};
use std::time::Instant;

/// Counters that say how well the draft predicts the target.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct SpecStats {
    /// Verification passes of the target.
    pub sweeps: u64,
    pub drafted: u64,
    pub accepted: u64,
    /// Tokens emitted by verification passes (accepted + one per pass).
    pub emitted: u64,
}

impl SpecStats {
    pub fn acceptance_rate(&self) -> f64 {
        self.accepted as f64 / self.drafted.max(1) as f64
    }

    pub fn tokens_per_sweep(&self) -> f64 {
        self.emitted as f64 / self.sweeps.max(1) as f64
    }
}

/// Keep the draft token `d` or replace it, given the target's `p` and the
/// draft's `q` (dense distributions). Returns the token and whether `d`
/// was accepted. `residual` is scratch of the vocabulary's size.
pub fn accept_or_resample(
    p: &[f32],
    q: &[f32],
    d: u32,
    sampler: &mut Sampler,
    residual: &mut [f32],
) -> (u32, bool) {
    let (pd, qd) = (p[d as usize], q[d as usize]);
    if qd > 0.0 && sampler.uniform() < (pd / qd).min(1.0) {
        return (d, true);
    }
    let mut mass = 0.0;
    for ((r, &pt), &qt) in residual.iter_mut().zip(p).zip(q) {
        *r = (pt - qt).max(0.0);
        mass += *r;
    }
    // p == q everywhere leaves no residual mass (and then rejection cannot
    // happen except by rounding): fall back to p itself.
    let from = if mass > 0.0 { &*residual } else { p };
    (sampler.draw_from(from), false)
}

pub struct Speculative<'a, W: WeightSource, D: WeightSource> {
    pub target: Engine<'a, W>,
    pub draft: Engine<'a, D>,
    /// Samples the draft's proposals; the target samples with the
    /// sequence's own sampler.
    pub draft_sampler: Sampler,
    k: usize,
    /// The sequence's history plus the drafts being scored: what the
    /// samplers' penalties see.
    seen: Vec<u32>,
    drafts: Vec<u32>,
    /// The pending token and the drafts: what one target pass verifies.
    verify: Vec<u32>,
    /// The draft's distribution for each drafted token: `k x vocab`.
    q: Vec<f32>,
    p: Vec<f32>,
    residual: Vec<f32>,
    row: Vec<f32>,
    pub stats: SpecStats,
}

impl<'a, W: WeightSource, D: WeightSource> Speculative<'a, W, D> {
    /// `k` draft tokens per verification pass.
    pub fn new(
        target: Engine<'a, W>,
        draft: Engine<'a, D>,
        draft_sampler: Sampler,
        k: usize,
    ) -> Result<Self> {
        let vocab = target.hparams().vocab_size;
        if draft.hparams().vocab_size != vocab {
            return Err(Error::usage(format!(
                "draft model has a vocabulary of {} tokens, the target {vocab}: they must share one",
                draft.hparams().vocab_size
            )));
        }
        if k == 0 || k + 1 > target.max_chunk() || k > draft.max_chunk() {
            return Err(Error::usage(format!(
                "draft tokens per pass {k}: expected 1..={}",
                target.max_chunk().saturating_sub(1).min(draft.max_chunk())
            )));
        }
        let n_ctx = target.n_ctx().min(draft.n_ctx());
        Ok(Speculative {
            target,
            draft,
            draft_sampler,
            k,
            seen: Vec::with_capacity(n_ctx + k + 1),
            drafts: Vec::with_capacity(k),
            verify: Vec::with_capacity(k + 1),
            q: vec![0.0; k * vocab],
            p: vec![0.0; vocab],
            residual: vec![0.0; vocab],
            row: vec![0.0; vocab],
            stats: SpecStats::default(),
        })
    }

    /// Generate `seq` as the target alone would (exactly, for greedy; in
    /// distribution, for sampling): the sequence's sampler is the target's,
    /// its rules end the run. `on_token` sees each token as it is taken.
    pub fn generate(
        &mut self,
        seq: &mut Sequence,
        ends: &dyn TokenText,
        mut on_token: impl FnMut(u32) -> Flow,
    ) -> Result<Completion> {
        let vocab = self.target.hparams().vocab_size;
        let n_ctx = self.n_ctx();
        let prompt: Vec<u32> = seq.prompt().to_vec();
        if prompt.len() > n_ctx {
            return Err(Error::usage(format!(
                "prompt of {} tokens does not fit in the context of {n_ctx} tokens",
                prompt.len()
            )));
        }
        let start = Instant::now();
        // Prefill both; the target's last logits give the first token. The
        // draft sees the prompt's last token with the first catch-up.
        let row = &mut self.row;
        self.target.prefill(0, &prompt, 0, Logits::Last, |rows| {
            if !rows.is_empty() {
                row.copy_from_slice(rows);
            }
            Ok(true)
        })?;
        let first = seq.draw(&mut self.row);
        self.draft
            .prefill(0, &prompt[..prompt.len() - 1], 0, Logits::None, |_| {
                Ok(true)
            })?;
        let prefill_time = start.elapsed();
        let decode_start = Instant::now();

        // `filled`: positions in the target's cache; the newest token is
        // pending (fed with the next verification pass).
        let mut filled = prompt.len();
        let mut draft_pos = prompt.len() - 1;
        let mut next = Some(first);
        'outer: while let Some(t) = next.take() {
            if take(seq, t, filled, ends, &mut on_token) {
                break;
            }
            // Draft k tokens after the pending one: no more than may still
            // be generated, nor than the context holds after it (k = 0
            // near the end is a plain decode step).
            let k = self.k.min(seq.room()).min(n_ctx - filled - 1);
            self.drafts.clear();
            for i in 0..k {
                let logits = if i == 0 {
                    // Catch up on what the draft has not seen: the pending
                    // token, and after a fully accepted pass the last draft.
                    let tail = &seq.history()[draft_pos..];
                    let out = self.draft.forward(tail, draft_pos, Logits::Last)?;
                    draft_pos = seq.history().len();
                    out
                } else {
                    let d = self.drafts[i - 1];
                    let out = self.draft.forward(&[d], draft_pos, Logits::Last)?;
                    draft_pos += 1;
                    out
                };
                self.row.copy_from_slice(logits);
                let q = &mut self.q[i * vocab..(i + 1) * vocab];
                // Penalties see the history plus the drafts so far.
                self.seen.clear();
                self.seen.extend_from_slice(seq.history());
                self.seen.extend_from_slice(&self.drafts);
                self.draft_sampler
                    .distribution(&mut self.row, &self.seen, q);
                let d = self.draft_sampler.draw_from(q);
                self.drafts.push(d);
            }

            // One target pass verifies the pending token and all drafts.
            self.verify.clear();
            self.verify.push(t);
            self.verify.extend_from_slice(&self.drafts);
            let rows = self.target.forward(&self.verify, filled, Logits::All)?;
            self.stats.sweeps += 1;
            self.stats.drafted += k as u64;
            let mut accepted = 0;
            let mut replacement = None;
            for i in 0..=k {
                self.row.copy_from_slice(&rows[i * vocab..(i + 1) * vocab]);
                self.seen.clear();
                self.seen.extend_from_slice(seq.history());
                self.seen.extend_from_slice(&self.drafts[..i]);
                let target = seq.sampler_mut();
                target.distribution(&mut self.row, &self.seen, &mut self.p);
                if i == k {
                    replacement = Some(target.draw_from(&self.p));
                    break;
                }
                let q = &self.q[i * vocab..(i + 1) * vocab];
                let (tok, ok) =
                    accept_or_resample(&self.p, q, self.drafts[i], target, &mut self.residual);
                if !ok {
                    replacement = Some(tok);
                    break;
                }
                accepted += 1;
            }
            self.stats.accepted += accepted as u64;
            self.stats.emitted += accepted as u64 + 1;
            // The target's cache now holds the pending token and the
            // accepted drafts; the draft's holds what it was fed of those.
            filled += 1;
            for i in 0..accepted {
                if take(seq, self.drafts[i], filled, ends, &mut on_token) {
                    break 'outer;
                }
                filled += 1;
            }
            draft_pos = draft_pos.min(filled);
            next = replacement;
        }
        Ok(Completion {
            prompt_tokens: prompt.len(),
            prefill_time,
            decode_time: decode_start.elapsed(),
            finish: seq.finished().unwrap_or(FinishReason::Length),
            tokens: seq.generated().to_vec(),
        })
    }

    /// Positions both models can hold: the context sequences are admitted to.
    pub fn n_ctx(&self) -> usize {
        self.target.n_ctx().min(self.draft.n_ctx())
    }
}

/// Take `t` into `seq` (with `filled` positions in the target's cache) and
/// show it to `on_token`; whether the sequence is finished.
fn take(
    seq: &mut Sequence,
    t: u32,
    filled: usize,
    ends: &dyn TokenText,
    on_token: &mut impl FnMut(u32) -> Flow,
) -> bool {
    let before = seq.generated().len();
    seq.accept(t, filled, ends);
    if seq.generated().len() > before {
        if let Flow::Finish(reason) = on_token(t) {
            seq.finish(reason);
        }
    }
    seq.finished().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::sampler::SamplerConfig;

    /// Drawing d ~ q and applying the rule yields tokens distributed as p.
    #[test]
    fn acceptance_rule_preserves_the_target_distribution() {
        let p = [0.5f32, 0.2, 0.2, 0.1, 0.0];
        let q = [0.1f32, 0.5, 0.1, 0.1, 0.2];
        let mut draft = Sampler::new(
            SamplerConfig {
                seed: 1,
                ..Default::default()
            },
            5,
        );
        let mut target = Sampler::new(
            SamplerConfig {
                seed: 2,
                ..Default::default()
            },
            5,
        );
        let mut residual = [0.0f32; 5];
        let mut counts = [0usize; 5];
        let (mut accepted, trials) = (0, 200_000);
        for _ in 0..trials {
            let d = draft.draw_from(&q);
            let (t, ok) = accept_or_resample(&p, &q, d, &mut target, &mut residual);
            counts[t as usize] += 1;
            accepted += ok as usize;
        }
        for (i, &c) in counts.iter().enumerate() {
            let freq = c as f64 / trials as f64;
            assert!(
                (freq - p[i] as f64).abs() < 0.006,
                "token {i}: {freq} vs {}",
                p[i]
            );
        }
        // Expected acceptance: sum_x min(p, q) = 0.1 + 0.2 + 0.1 + 0.1 + 0 = 0.5.
        let rate = accepted as f64 / trials as f64;
        assert!((rate - 0.5).abs() < 0.006, "acceptance {rate}");
    }

    #[test]
    fn greedy_acceptance_is_argmax_agreement() {
        let p = [0.0f32, 1.0, 0.0];
        let q_same = [0.0f32, 1.0, 0.0];
        let q_other = [1.0f32, 0.0, 0.0];
        let mut s = Sampler::new(SamplerConfig::default(), 3);
        let mut r = [0.0f32; 3];
        assert_eq!(
            accept_or_resample(&p, &q_same, 1, &mut s, &mut r),
            (1, true)
        );
        assert_eq!(
            accept_or_resample(&p, &q_other, 0, &mut s, &mut r),
            (1, false)
        );
    }
}
