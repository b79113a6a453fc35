//! Speculative decoding gives exactly the target's greedy tokens, with the
//! target streamed and a quantized twin as the resident draft.

mod common;

use flea::engine::{Engine, EngineConfig};
use flea::generate::sampler::{Sampler, SamplerConfig};
use flea::generate::sequence::{EndToken, Limits, Sequence};
use flea::generate::speculative::Speculative;
use flea::generate::{Flow, Generator};
use flea::gguf::GgufFile;
use flea::model::Model;
use flea::residency::{Residency, ResidencyOptions};

/// The prompt admitted as a sequence of up to `max_tokens`.
fn sequence(max_tokens: usize, sampler: Sampler) -> Sequence {
    let limits = Limits {
        max_tokens,
        stops: Vec::new(),
    };
    Sequence::new(&PROMPT, limits, config().n_ctx, sampler).unwrap()
}

fn config() -> EngineConfig {
    EngineConfig {
        n_ctx: 128,
        max_chunk: 16,
        n_seq: 1,
        threads: 2,
        ..Default::default()
    }
}

fn greedy() -> SamplerConfig {
    SamplerConfig {
        temperature: 0.0,
        ..Default::default()
    }
}

const PROMPT: [u32; 11] = [1, 9038, 2501, 263, 931, 29892, 727, 471, 263, 2217, 19964];

#[test]
fn speculative_greedy_equals_target_greedy() {
    let target_path = common::model("synth-256-Q8_0.gguf");
    let draft_path = common::model("synth-256-Q3_K_S.gguf");
    let (tf, df) = (
        GgufFile::open(&target_path).unwrap(),
        GgufFile::open(&draft_path).unwrap(),
    );
    let (tm, dm) = (
        Model::from_gguf(&tf).unwrap(),
        Model::from_gguf(&df).unwrap(),
    );
    let vocab = tm.hparams.vocab_size;

    let plain = {
        let engine = Engine::new(&tm, &tf, &config()).unwrap();
        let mut g = Generator::new(engine, Sampler::new(greedy(), vocab));
        g.generate(&PROMPT, 40, &EndToken(None), |_| Flow::Continue)
            .unwrap()
            .tokens
    };
    for k in [1, 3, 6] {
        // The target streams every layer; the draft is memory-mapped.
        let plan = config().plan(&tm, config().minimum_budget(&tm)).unwrap();
        let target = Engine::new(
            &tm,
            Residency::open(&target_path, &tm, &plan, ResidencyOptions::default()).unwrap(),
            &config(),
        )
        .unwrap();
        let draft = Engine::new(&dm, &df, &config()).unwrap();
        let mut spec = Speculative::new(target, draft, Sampler::new(greedy(), vocab), k).unwrap();
        let mut seq = sequence(40, Sampler::new(greedy(), vocab));
        let c = spec
            .generate(&mut seq, &EndToken(None), |_| Flow::Continue)
            .unwrap();
        assert_eq!(c.tokens, plain, "k = {k}");
        let s = spec.stats;
        eprintln!(
            "k = {k}: {} sweeps for {} tokens, acceptance {:.0}%, {:.2} tokens per target pass",
            s.sweeps,
            c.tokens.len(),
            s.acceptance_rate() * 100.0,
            s.tokens_per_sweep()
        );
        assert!(
            s.sweeps < c.tokens.len() as u64,
            "k = {k}: verification must batch tokens"
        );
    }
}

#[test]
fn speculative_sampling_is_reproducible() {
    let path = common::model("synth-256-Q4_K_M.gguf");
    let draft_path = common::model("synth-256-Q3_K_M.gguf");
    let (tf, df) = (
        GgufFile::open(&path).unwrap(),
        GgufFile::open(&draft_path).unwrap(),
    );
    let (tm, dm) = (
        Model::from_gguf(&tf).unwrap(),
        Model::from_gguf(&df).unwrap(),
    );
    let vocab = tm.hparams.vocab_size;
    let run = || {
        let sampling = SamplerConfig {
            temperature: 0.8,
            seed: 5,
            ..Default::default()
        };
        let target = Engine::new(&tm, &tf, &config()).unwrap();
        let draft = Engine::new(&dm, &df, &config()).unwrap();
        let mut spec =
            Speculative::new(target, draft, Sampler::new(sampling.clone(), vocab), 4).unwrap();
        let mut seq = sequence(30, Sampler::new(sampling, vocab));
        spec.generate(&mut seq, &EndToken(None), |_| Flow::Continue)
            .unwrap()
            .tokens
    };
    let a = run();
    assert_eq!(a.len(), 30);
    assert_eq!(a, run());
}

#[test]
fn draft_with_another_vocabulary_is_an_error() {
    let tf = GgufFile::open(common::model("synth-256-Q8_0.gguf")).unwrap();
    let tm = Model::from_gguf(&tf).unwrap();
    let mut dm = tm.clone();
    dm.hparams.vocab_size = 1000;
    let target = Engine::new(&tm, &tf, &config()).unwrap();
    let draft = Engine::new(&dm, &tf, &config()).unwrap();
    let s = || Sampler::new(greedy(), 32000);
    let e = Speculative::new(target, draft, s(), 4)
        .err()
        .expect("mismatch");
    assert!(e.message.contains("vocabulary"), "{e}");
}

/// A prompt that fills the context exactly is admitted and gets its one
/// token, as the target alone gives it (the draft path used to refuse it).
#[test]
fn a_prompt_that_fills_the_context_gets_one_token() {
    let (tf, df) = (
        GgufFile::open(common::model("synth-256-Q8_0.gguf")).unwrap(),
        GgufFile::open(common::model("synth-256-Q3_K_S.gguf")).unwrap(),
    );
    let (tm, dm) = (
        Model::from_gguf(&tf).unwrap(),
        Model::from_gguf(&df).unwrap(),
    );
    let vocab = tm.hparams.vocab_size;
    let full = EngineConfig {
        n_ctx: PROMPT.len(),
        ..config()
    };
    let alone = {
        let engine = Engine::new(&tm, &tf, &full).unwrap();
        let mut g = Generator::new(engine, Sampler::new(greedy(), vocab));
        g.generate(&PROMPT, 8, &EndToken(None), |_| Flow::Continue)
            .unwrap()
    };
    assert_eq!(alone.tokens.len(), 1);
    let target = Engine::new(&tm, &tf, &full).unwrap();
    let draft = Engine::new(&dm, &df, &full).unwrap();
    let mut spec = Speculative::new(target, draft, Sampler::new(greedy(), vocab), 4).unwrap();
    let limits = Limits {
        max_tokens: 8,
        stops: Vec::new(),
    };
    let mut seq =
        Sequence::new(&PROMPT, limits, full.n_ctx, Sampler::new(greedy(), vocab)).unwrap();
    let c = spec
        .generate(&mut seq, &EndToken(None), |_| Flow::Continue)
        .unwrap();
    assert_eq!(c.tokens, alone.tokens);
}
