//! Teacher-forced logits against llama.cpp's reference dumps, and greedy
//! generation against its greedy tokens.

mod common;

use flea::engine::{Engine, EngineConfig};
use flea::generate::sampler::{Sampler, SamplerConfig};
use flea::generate::{teacher_forced, Flow, Generator};
use flea::gguf::GgufFile;
use flea::model::Model;
use serde_json::Value;

struct Reference {
    sequence: Vec<u32>,
    greedy: Vec<u32>,
    prompt_tokens: Vec<u32>,
    logits: Vec<f32>,
    n_vocab: usize,
}

fn reference(name: &str) -> Reference {
    let json: Value = serde_json::from_slice(
        &std::fs::read(common::fixture(&format!("reference/{name}.json"))).unwrap(),
    )
    .unwrap();
    let ids = |key: &str| -> Vec<u32> {
        json[key]
            .as_array()
            .unwrap_or_else(|| panic!("{name}.json: no {key}"))
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect()
    };
    let logits = common::read_f32_file(&format!("reference/{name}.logits.bin"));
    let sequence = ids("sequence");
    let n_vocab = logits.len() / sequence.len();
    Reference {
        greedy: ids("greedy"),
        prompt_tokens: ids("prompt_tokens"),
        sequence,
        logits,
        n_vocab,
    }
}

fn config(n_ctx: usize) -> EngineConfig {
    EngineConfig {
        n_ctx,
        max_chunk: 16,
        n_seq: 1,
        threads: 2,
        ..Default::default()
    }
}

struct Agreement {
    mean_abs: f32,
    max_abs: f32,
    top1: f32,
}

fn compare(ours: &[f32], theirs: &[f32], n_vocab: usize) -> Agreement {
    assert_eq!(ours.len(), theirs.len());
    let diffs: Vec<f32> = ours
        .iter()
        .zip(theirs)
        .map(|(a, b)| (a - b).abs())
        .collect();
    let argmax = |row: &[f32]| flea::generate::sampler::argmax(row);
    let rows = ours.len() / n_vocab;
    let agree = ours
        .chunks(n_vocab)
        .zip(theirs.chunks(n_vocab))
        .filter(|(a, b)| argmax(a) == argmax(b))
        .count();
    Agreement {
        mean_abs: diffs.iter().sum::<f32>() / diffs.len() as f32,
        max_abs: diffs.iter().copied().fold(0.0, f32::max),
        top1: agree as f32 / rows as f32,
    }
}

fn our_logits(name: &str, tokens: &[u32]) -> Vec<f32> {
    let file = GgufFile::open(common::model(&format!("{name}.gguf"))).unwrap();
    let model = Model::from_gguf(&file).unwrap();
    let mut engine = Engine::new(&model, &file, &config(tokens.len())).unwrap();
    let mut out = Vec::new();
    teacher_forced(&mut engine, tokens, |row| {
        out.extend_from_slice(row);
        Ok(())
    })
    .unwrap();
    out
}

#[test]
fn quantized_models_match_llama_cpp_logits() {
    for name in common::SYNTH_MODELS {
        let r = reference(name);
        let ours = our_logits(name, &r.sequence);
        let a = compare(&ours, &r.logits, r.n_vocab);
        eprintln!(
            "{name}: mean |diff| {:.4}, max |diff| {:.4}, top-1 agreement {:.1}%",
            a.mean_abs,
            a.max_abs,
            a.top1 * 100.0
        );
        assert!(a.mean_abs <= 0.1, "{name}: mean |diff| {}", a.mean_abs);
        assert!(a.max_abs <= 0.75, "{name}: max |diff| {}", a.max_abs);
        assert!(a.top1 >= 0.85, "{name}: top-1 agreement {}", a.top1);
    }
}

#[test]
fn f16_model_made_by_others_matches_closely() {
    let name = "llama-2-tiny-random";
    let r = reference(name);
    let ours = our_logits(name, &r.sequence);
    let a = compare(&ours, &r.logits, r.n_vocab);
    eprintln!(
        "{name}: mean |diff| {:.5}, max |diff| {:.5}, top-1 {:.1}%",
        a.mean_abs,
        a.max_abs,
        a.top1 * 100.0
    );
    assert!(a.max_abs <= 0.02, "{name}: max |diff| {}", a.max_abs);
}

#[test]
fn chunking_and_threads_do_not_change_logits() {
    let name = "synth-256-Q4_K_M";
    let r = reference(name);
    let tokens = &r.sequence[..20];
    let file = GgufFile::open(common::model(&format!("{name}.gguf"))).unwrap();
    let model = Model::from_gguf(&file).unwrap();
    let run = |max_chunk, threads| {
        let cfg = EngineConfig {
            n_ctx: 64,
            max_chunk,
            n_seq: 1,
            threads,
            ..Default::default()
        };
        let mut engine = Engine::new(&model, &file, &cfg).unwrap();
        let mut out = Vec::new();
        teacher_forced(&mut engine, tokens, |row| {
            out.extend_from_slice(row);
            Ok(())
        })
        .unwrap();
        out
    };
    let base = run(1, 1);
    assert_eq!(base, run(7, 2), "chunk 7, 2 threads");
    assert_eq!(base, run(64, 2), "one chunk, 2 threads");
}

#[test]
fn greedy_q8_0_reproduces_reference_tokens() {
    let name = "synth-256-Q8_0";
    let r = reference(name);
    let file = GgufFile::open(common::model(&format!("{name}.gguf"))).unwrap();
    let model = Model::from_gguf(&file).unwrap();
    let engine = Engine::new(&model, &file, &config(128)).unwrap();
    let sampler = Sampler::new(
        SamplerConfig {
            temperature: 0.0,
            ..Default::default()
        },
        model.hparams.vocab_size,
    );
    let mut generator = Generator::new(engine, sampler);
    let c = generator
        .generate(
            &r.prompt_tokens,
            r.greedy.len(),
            &flea::generate::sequence::EndToken(None),
            |_| Flow::Continue,
        )
        .unwrap();
    let same = c
        .tokens
        .iter()
        .zip(&r.greedy)
        .take_while(|(a, b)| a == b)
        .count();
    eprintln!(
        "{name}: first {same} of {} greedy tokens agree",
        r.greedy.len()
    );
    assert!(same >= 8, "ours {:?}\ntheirs {:?}", c.tokens, r.greedy);
}
