//! Choosing the next token from logits: greedy, or temperature sampling with
//! top-k, top-p and min-p filters, after a repetition penalty. A seeded RNG
//! makes every run with the same seed produce the same tokens.

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct SamplerConfig {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep only the k most likely tokens; 0 disables.
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p; 1 disables.
    pub top_p: f32,
    /// Drop tokens less likely than min_p times the most likely one; 0 disables.
    pub min_p: f32,
    /// Divide positive logits (multiply negative ones) of recent tokens; 1 disables.
    pub repeat_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repeat_last_n: usize,
    pub seed: u64,
}

impl Default for SamplerConfig {
    /// llama.cpp's defaults, with a fixed seed so runs are reproducible.
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 42,
        }
    }
}

impl SamplerConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str, found: String| Err(Error::usage(format!("{what}, found {found}")));
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad(
                "temperature: expected a number >= 0",
                self.temperature.to_string(),
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p: expected a number in (0, 1]", self.top_p.to_string());
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p: expected a number in [0, 1]", self.min_p.to_string());
        }
        if !(self.repeat_penalty > 0.0 && self.repeat_penalty.is_finite()) {
            return bad(
                "repeat_penalty: expected a number > 0",
                self.repeat_penalty.to_string(),
            );
        }
        Ok(())
    }
}

/// SplitMix64 seeding an xorshift64* generator: small, fast, reproducible.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Rng(z | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

#[derive(Clone)]
pub struct Sampler {
    config: SamplerConfig,
    rng: Rng,
    /// (logit or probability, token id), reused for every token.
    candidates: Vec<(f32, u32)>,
}

impl Sampler {
    pub fn new(config: SamplerConfig, vocab_size: usize) -> Sampler {
        Sampler {
            rng: Rng::new(config.seed),
            config,
            candidates: Vec::with_capacity(vocab_size),
        }
    }

    pub fn config(&self) -> &SamplerConfig {
        &self.config
    }

    /// Restart the random stream (a new prompt with an explicit seed).
    pub fn reseed(&mut self, seed: u64) {
        self.rng = Rng::new(seed);
    }

    /// New settings (per request), keeping the buffers; restarts the RNG
    /// from the new seed.
    pub fn set_config(&mut self, config: SamplerConfig) {
        self.rng = Rng::new(config.seed);
        self.config = config;
    }

    /// Pick the next token. `logits` is modified by the repetition penalty;
    /// `history` holds the tokens so far (prompt and generated).
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        self.penalize(logits, history);
        if self.config.temperature == 0.0 {
            return argmax(logits);
        }
        self.filter(logits);
        self.draw()
    }

    /// The distribution `sample` draws from, densely: `probs[t]` for every
    /// token (zero where filtered out). Greedy is all mass on the argmax.
    /// Speculative decoding compares the draft's and the target's.
    pub fn distribution(&mut self, logits: &mut [f32], history: &[u32], probs: &mut [f32]) {
        self.penalize(logits, history);
        probs.fill(0.0);
        if self.config.temperature == 0.0 {
            probs[argmax(logits) as usize] = 1.0;
            return;
        }
        self.filter(logits);
        let total: f32 = self.candidates.iter().map(|e| e.0).sum();
        for &(p, t) in &self.candidates {
            probs[t as usize] = p / total;
        }
    }

    /// A uniform draw in [0, 1) from this sampler's stream.
    pub fn uniform(&mut self) -> f32 {
        self.rng.next_f32()
    }

    /// Draw a token from a dense distribution (which need not sum to 1).
    pub fn draw_from(&mut self, probs: &[f32]) -> u32 {
        let total: f32 = probs.iter().sum();
        let mut r = self.rng.next_f32() * total;
        let mut last = 0;
        for (t, &p) in probs.iter().enumerate() {
            if p > 0.0 {
                last = t;
                r -= p;
                if r < 0.0 {
                    return t as u32;
                }
            }
        }
        last as u32
    }

    /// Divide positive logits (multiply negative ones) of recent tokens.
    fn penalize(&self, logits: &mut [f32], history: &[u32]) {
        let c = &self.config;
        if c.repeat_penalty == 1.0 {
            return;
        }
        let recent = &history[history.len().saturating_sub(c.repeat_last_n)..];
        // Penalize each distinct token once, as llama.cpp does.
        for (i, &t) in recent.iter().enumerate() {
            if recent[..i].contains(&t) {
                continue;
            }
            if let Some(l) = logits.get_mut(t as usize) {
                *l = if *l > 0.0 {
                    *l / c.repeat_penalty
                } else {
                    *l * c.repeat_penalty
                };
            }
        }
    }

    /// Fill `candidates` with (probability, token), best first, after
    /// top-k, temperature softmax, top-p and min-p. Not normalized after
    /// the last two filters; `draw` scales by the total.
    fn filter(&mut self, logits: &[f32]) {
        let c = &self.config;
        let cand = &mut self.candidates;
        cand.clear();
        cand.extend(logits.iter().enumerate().map(|(i, &l)| (l, i as u32)));
        let by_logit_desc =
            |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        if c.top_k > 0 && c.top_k < cand.len() {
            cand.select_nth_unstable_by(c.top_k - 1, by_logit_desc);
            cand.truncate(c.top_k);
        }
        cand.sort_unstable_by(by_logit_desc);

        // Softmax at the temperature.
        let max = cand[0].0;
        let mut sum = 0.0f32;
        for e in cand.iter_mut() {
            e.0 = ((e.0 - max) / c.temperature).exp();
            sum += e.0;
        }
        for e in cand.iter_mut() {
            e.0 /= sum;
        }
        if c.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = cand.len();
            for (i, e) in cand.iter().enumerate() {
                acc += e.0;
                if acc >= c.top_p {
                    keep = i + 1;
                    break;
                }
            }
            cand.truncate(keep);
        }
        if c.min_p > 0.0 {
            let floor = cand[0].0 * c.min_p;
            let keep = cand.iter().take_while(|e| e.0 >= floor).count().max(1);
            cand.truncate(keep);
        }
    }

    /// Draw from `candidates`.
    fn draw(&mut self) -> u32 {
        let cand = &self.candidates;
        let total: f32 = cand.iter().map(|e| e.0).sum();
        let mut r = self.rng.next_f32() * total;
        for e in cand.iter() {
            r -= e.0;
            if r < 0.0 {
                return e.1;
            }
        }
        cand[cand.len() - 1].1
    }
}

/// Index of the largest logit; the lowest index wins ties.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        (0..100).map(|i| ((i * 37) % 100) as f32 / 10.0).collect()
    }

    #[test]
    fn temperature_zero_is_greedy() {
        let mut s = Sampler::new(
            SamplerConfig {
                temperature: 0.0,
                ..Default::default()
            },
            100,
        );
        let mut l = logits();
        assert_eq!(s.sample(&mut l, &[]), argmax(&logits()));
    }

    #[test]
    fn same_seed_same_tokens() {
        let run = |seed| {
            let mut s = Sampler::new(
                SamplerConfig {
                    seed,
                    temperature: 1.5,
                    top_k: 0,
                    top_p: 1.0,
                    min_p: 0.0,
                    ..Default::default()
                },
                100,
            );
            (0..50)
                .map(|_| s.sample(&mut logits(), &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn top_k_one_is_greedy() {
        let mut s = Sampler::new(
            SamplerConfig {
                top_k: 1,
                ..Default::default()
            },
            100,
        );
        for _ in 0..20 {
            assert_eq!(s.sample(&mut logits(), &[]), argmax(&logits()));
        }
    }

    #[test]
    fn min_p_and_top_p_restrict_to_likely_tokens() {
        let mut l = vec![0.0f32; 10];
        l[3] = 10.0;
        l[4] = 9.9;
        let mut s = Sampler::new(
            SamplerConfig {
                temperature: 1.0,
                top_k: 0,
                top_p: 0.99,
                min_p: 0.5,
                ..Default::default()
            },
            10,
        );
        for _ in 0..100 {
            let t = s.sample(&mut l.clone(), &[]);
            assert!(t == 3 || t == 4, "sampled {t}");
        }
    }

    #[test]
    fn repetition_penalty_demotes_seen_tokens() {
        let mut l = vec![1.0f32, 2.0, 1.9];
        let mut s = Sampler::new(
            SamplerConfig {
                temperature: 0.0,
                repeat_penalty: 1.5,
                ..Default::default()
            },
            3,
        );
        assert_eq!(s.sample(&mut l, &[1, 1]), 2);
        assert!((l[1] - 2.0 / 1.5).abs() < 1e-6);
    }

    #[test]
    fn validation_names_the_flag() {
        let c = SamplerConfig {
            top_p: 0.0,
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().message.contains("top_p"));
    }
}
