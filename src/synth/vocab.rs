//! The tokenizer keys a synthesized model carries: copied from a GGUF the
//! user names, or a placeholder SPM vocabulary.

use super::PLACEHOLDER_VOCAB;
use crate::error::Result;
use crate::gguf::{GgufFile, Value, ValueType};
use crate::tokenizer::Tokenizer;
use std::path::Path;

/// The `tokenizer.ggml.*` keys of `path`, checked to give a tokenizer this
/// runtime can load, and the vocabulary size.
pub(super) fn copied_vocab(path: &Path) -> Result<(Vec<(String, Value)>, usize)> {
    let file = GgufFile::open(path)?;
    let tokenizer = Tokenizer::from_gguf(&file)?;
    let keys = file
        .metadata
        .iter()
        .filter(|(k, _)| k.starts_with("tokenizer.ggml."))
        .cloned()
        .collect();
    Ok((keys, tokenizer.vocab_size()))
}

/// A stand-in SPM vocabulary of [`PLACEHOLDER_VOCAB`] tokens: `<unk>`,
/// `<s>`, `</s>`, the 256 byte tokens (so any text encodes, by byte
/// fallback), the space mark alone (so spaces are not spelled as the three
/// bytes of U+2581 and decode back to spaces), then made-up words so that
/// generated text reads as words.
pub(super) fn placeholder_vocab() -> Vec<(String, Value)> {
    let mut tokens = vec!["<unk>".to_string(), "<s>".into(), "</s>".into()];
    let mut types = vec![2, 3, 3];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
    }
    let mut scores = vec![0.0f32; tokens.len()];
    tokens.push("\u{2581}".into());
    types.push(1);
    scores.push(0.0);
    let fixed = tokens.len();
    for i in 0..PLACEHOLDER_VOCAB - fixed {
        tokens.push(filler_word(i));
        types.push(1);
        // Shorter words first and scored higher, as in a trained vocabulary.
        scores.push(-1.0 - i as f32);
    }
    let strings = tokens.into_iter().map(Value::String).collect();
    let scores = scores.into_iter().map(Value::F32).collect();
    let types = types.into_iter().map(Value::I32).collect();
    vec![
        ("tokenizer.ggml.model".into(), Value::String("llama".into())),
        ("tokenizer.ggml.pre".into(), Value::String("default".into())),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(ValueType::String, strings),
        ),
        (
            "tokenizer.ggml.scores".into(),
            Value::Array(ValueType::F32, scores),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(ValueType::I32, types),
        ),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
        ("tokenizer.ggml.unknown_token_id".into(), Value::U32(0)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(true)),
        ("tokenizer.ggml.add_eos_token".into(), Value::Bool(false)),
    ]
}

/// Word `i` of the placeholder vocabulary: `i` in bijective base 70 over
/// two-letter syllables, after a word-start mark. Syllables all have two
/// letters, so different numbers give different words.
pub(super) fn filler_word(i: usize) -> String {
    const CONSONANTS: &[u8] = b"bdfgklmnprstvz";
    const VOWELS: &[u8] = b"aeiou";
    let base = CONSONANTS.len() * VOWELS.len();
    let mut syllables = Vec::new();
    let mut n = i + 1;
    while n > 0 {
        let digit = (n - 1) % base;
        syllables.push([
            CONSONANTS[digit / VOWELS.len()],
            VOWELS[digit % VOWELS.len()],
        ]);
        n = (n - 1) / base;
    }
    let mut word = String::from("\u{2581}");
    for s in syllables.iter().rev() {
        word.push(s[0] as char);
        word.push(s[1] as char);
    }
    word
}
