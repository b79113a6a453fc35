//! The 32-weight block formats (Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL) end to end:
//! teacher-forced logits of the legacy fixture models against their
//! reference top-40 per position.
//!
//! The oracles (fixtures README, `legacy/`) are llama.cpp for Q5_0, Q5_1 and
//! IQ4_NL and an exact-math numpy forward pass for Q4_0 and Q4_1 (llama.cpp
//! of that date computes those two files wrongly on x86). Our kernels round
//! activations to 8 bits per 32-block, as llama.cpp does, so against either
//! oracle they differ by about that rounding: llama.cpp and numpy differ by
//! mean |d| 0.027-0.029 and max 0.22 on the three files both get right, and
//! flea measured mean 0.026-0.029, max 0.13-0.18, top-1 94-100% (35
//! positions each). The bounds leave room for that spread, and a wrong
//! nibble order or bias fails them by far.

mod common;

use flea::engine::{Engine, EngineConfig};
use flea::generate::teacher_forced;
use flea::gguf::GgufFile;
use flea::model::Model;
use serde_json::Value;

const MEAN_ABS: f32 = 0.06;
const MAX_ABS: f32 = 0.4;
const TOP1: f32 = 0.9;

/// `sequence` and, per position, the reference's 40 largest logits as
/// `(id, logit)`, largest first.
fn reference(name: &str) -> (Vec<u32>, Vec<Vec<(usize, f32)>>) {
    let json: Value = serde_json::from_slice(
        &std::fs::read(common::fixture(&format!("legacy/{name}.json"))).unwrap(),
    )
    .unwrap();
    let sequence = json["sequence"]
        .as_array()
        .unwrap_or_else(|| panic!("{name}.json: no sequence"))
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let top = json["teacher_forced_top40"]
        .as_array()
        .unwrap_or_else(|| panic!("{name}.json: no teacher_forced_top40"))
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    (
                        p[0].as_u64().unwrap() as usize,
                        p[1].as_f64().unwrap() as f32,
                    )
                })
                .collect()
        })
        .collect();
    (sequence, top)
}

fn our_logits(name: &str, tokens: &[u32]) -> (Vec<f32>, usize) {
    let file = GgufFile::open(common::fixture(&format!("legacy/{name}.gguf"))).unwrap();
    let model = Model::from_gguf(&file).unwrap();
    let cfg = EngineConfig {
        n_ctx: tokens.len(),
        max_chunk: 16,
        n_seq: 1,
        threads: 2,
    };
    let mut engine = Engine::new(&model, &file, &cfg).unwrap();
    let mut out = Vec::new();
    teacher_forced(&mut engine, tokens, |row| {
        out.extend_from_slice(row);
        Ok(())
    })
    .unwrap();
    (out, model.hparams.vocab_size)
}

#[test]
fn legacy_models_match_the_reference_top40() {
    let mut failures = Vec::new();
    for name in common::LEGACY_MODELS {
        let (sequence, top) = reference(name);
        assert_eq!(top.len(), sequence.len(), "{name}: one top-40 per position");
        let (ours, n_vocab) = our_logits(name, &sequence);
        assert_eq!(ours.len(), sequence.len() * n_vocab, "{name}: logits");
        let (mut sum, mut count, mut max_abs, mut agree) = (0.0f64, 0usize, 0.0f32, 0usize);
        for (row, want) in ours.chunks_exact(n_vocab).zip(&top) {
            for &(id, logit) in want {
                let d = (row[id] - logit).abs();
                sum += f64::from(d);
                max_abs = max_abs.max(d);
                count += 1;
            }
            if flea::generate::sampler::argmax(row) as usize == want[0].0 {
                agree += 1;
            }
        }
        let mean_abs = (sum / count as f64) as f32;
        let top1 = agree as f32 / sequence.len() as f32;
        eprintln!(
            "{name}: mean |diff| {mean_abs:.4}, max |diff| {max_abs:.4}, top-1 agreement {:.1}% over {} positions",
            top1 * 100.0,
            sequence.len()
        );
        if mean_abs > MEAN_ABS || max_abs > MAX_ABS || top1 < TOP1 {
            failures.push(format!(
                "{name}: mean {mean_abs} (<= {MEAN_ABS}), max {max_abs} (<= {MAX_ABS}), top-1 {top1} (>= {TOP1})"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
