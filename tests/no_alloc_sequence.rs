//! The per-token work of `flea run` beyond the engine pass (sampling, the
//! end-of-generation check, stop strings) allocates nothing: a counting
//! global allocator watches a [`Sequence`] with stop strings take tokens.
//! (tests/no_alloc.rs watches the engine passes; this binary is separate so
//! that the two counters do not see each other's threads.)

mod common;

use flea::generate::sampler::{Sampler, SamplerConfig};
use flea::generate::sequence::{Limits, Sequence};
use flea::gguf::GgufFile;
use flea::tokenizer::Tokenizer;

#[global_allocator]
static GLOBAL: common::no_alloc::Counting = common::no_alloc::Counting;

#[test]
fn taking_tokens_with_stop_strings_allocates_nothing() {
    let file = GgufFile::open(common::model("synth-256-Q4_K_M.gguf")).unwrap();
    let tokenizer = Tokenizer::from_gguf(&file).unwrap();
    let vocab = tokenizer.vocab_size();
    for sampling in [
        SamplerConfig {
            temperature: 0.0,
            ..Default::default()
        },
        SamplerConfig::default(),
    ] {
        let limits = Limits {
            max_tokens: 48,
            stops: vec!["\u{1}never\u{2}".into(), "qqqqqqqq".into()],
        };
        let prompt = [1u32, 450, 4996];
        let mut seq = Sequence::new(&prompt, limits, 128, Sampler::new(sampling, vocab)).unwrap();
        let mut logits = vec![0.0f32; vocab];
        // The first steps may size the sampler's buffers; none after.
        let mut counts = Vec::with_capacity(64);
        for step in 0..48 {
            // Logits that favour a different ordinary token each step.
            for (i, l) in logits.iter_mut().enumerate() {
                *l = ((i * 7919 + step * 104_729) % 1000) as f32 / 100.0;
            }
            seq.sample(&mut logits, prompt.len() + step, &tokenizer);
            counts.push(common::no_alloc::allocations());
            if seq.finished().is_some() {
                break;
            }
        }
        assert!(
            counts.len() > 8,
            "the sequence ended early: {:?}",
            seq.finished()
        );
        let steady = &counts[2..];
        assert!(
            steady.windows(2).all(|w| w[0] == w[1]),
            "allocations while taking tokens: {counts:?}"
        );
    }
}
