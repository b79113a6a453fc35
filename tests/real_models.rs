//! Trained models, so that "the text is right" is checked, not only "the
//! logits match" (fixtures README, `real/`).
//!
//! - stories260K (F32, in the fixtures): llama.cpp's 64 greedy tokens exactly,
//!   and every teacher-forced logit within [`STORIES_MAX_ABS`] of llama.cpp's.
//! - SmolLM2-135M-Instruct Q4_1 (98 MB, not in the fixtures: fetched by
//!   `scripts/fetch-smollm2.sh`, found by `common::smollm2()`, which skips
//!   loudly when it is absent and fails instead under
//!   `FLEA_REQUIRE_REAL_MODELS=1`): teacher-forced logits against the exact
//!   math reference's top-40 per position, and the chat answer ("... Paris.")
//!   ending at `<|im_end|>` through the library's generator and through
//!   `flea run --special`.
//!
//! Why the chat answer starts from the reference's first answer token: right
//! after the prompt, exact math ranks "The" (504, 25.325) barely above "L"
//! (60, 25.243), with "La" (15319, 24.942) next. Rounding activations to 8
//! bits per 32-block, as flea's integer kernels and llama.cpp do, reorders
//! them: a numpy pass with that rounding emulated gives "L" 24.633, "The"
//! 24.386, "La" 24.310; flea "L" 24.524, "La" 24.227, "The" 24.162; and
//! from "L" it goes on "L'Étoile, la Marseillaise, ..." without ending the
//! turn. Flea is as far from exact math as that emulation (mean KL 0.0038
//! for both over the 85 positions; flea's top-1 agrees with the emulation's
//! at all 85), so this is the rounding, not a fault. After "The" the answer
//! is "The capital of France is Paris." then `<|im_end|>` (the thinnest
//! step: "." over "," after "Paris", 0.30 in exact math, 0.07 in flea; either
//! keeps "Paris").

mod common;

use flea::engine::{Engine, EngineConfig};
use flea::generate::sampler::{argmax, Sampler, SamplerConfig};
use flea::generate::sequence::EndToken;
use flea::generate::{teacher_forced, FinishReason, Flow, Generator};
use flea::gguf::GgufFile;
use flea::model::Model;
use flea::tokenizer::Tokenizer;
use serde_json::Value;
use std::path::Path;

/// stories260K, F32 weights: largest and mean |logit diff| allowed against
/// llama.cpp's teacher-forced logits. With an f32 KV cache flea measured max
/// 0.0233, mean 0.0020, and agrees with a float64 numpy pass over the same
/// file (tools/np_ref.py) to 1e-5, while llama.cpp itself is 0.0233 from that
/// pass (it keeps K and V in f16 by default). With flea's default f16 cache
/// both round K and V, at different points of their computations: max
/// 0.0303, mean 0.0017. The bound sits above both.
const STORIES_MAX_ABS: f32 = 0.04;
const STORIES_MEAN_ABS: f64 = 0.005;

/// SmolLM2 Q4_1 against exact math (float64 over the dequantized weights),
/// over each position's reference top-40: flea rounds activations to 8 bits
/// per 32-block before its integer dot products, as llama.cpp does, which
/// the reference does not. That rounding alone (emulated in numpy) is mean
/// |diff| 0.228 from exact math over all logits; flea measured mean 0.243,
/// max 1.64 over the top-40, top-1 83 of 85 positions (97.6%), the two misses
/// at near-ties the emulation misses too.
const SMOLLM2_MEAN_ABS: f32 = 0.35;
const SMOLLM2_TOP1: f32 = 0.9;

/// `<|im_end|>` in SmolLM2's vocabulary: the end of the assistant's turn.
const IM_END: u32 = 2;

fn json(relative: &str) -> Value {
    serde_json::from_slice(&std::fs::read(common::fixture(relative)).unwrap()).unwrap()
}

fn ids(json: &Value, key: &str) -> Vec<u32> {
    json[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} in the reference json"))
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
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

/// Every position's logits of `tokens` in one teacher-forced pass, and the
/// vocabulary size.
fn our_logits(path: &Path, tokens: &[u32]) -> (Vec<f32>, usize) {
    let file = GgufFile::open(path).unwrap();
    let model = Model::from_gguf(&file).unwrap();
    let mut engine = Engine::new(&model, &file, &config(tokens.len())).unwrap();
    let mut out = Vec::new();
    teacher_forced(&mut engine, tokens, |row| {
        out.extend_from_slice(row);
        Ok(())
    })
    .unwrap();
    (out, model.hparams.vocab_size)
}

/// Greedy generation from `prompt` through the library's generator, ending
/// at `ends` if given, else at the tokenizer's end-of-generation tokens (the
/// path `flea run` takes); also the tokenizer.
fn greedy(
    path: &Path,
    prompt: &[u32],
    max_tokens: usize,
    ends: Option<EndToken>,
) -> (flea::generate::Completion, Tokenizer) {
    let file = GgufFile::open(path).unwrap();
    let model = Model::from_gguf(&file).unwrap();
    let tokenizer = Tokenizer::from_gguf(&file).unwrap();
    let engine = Engine::new(&model, &file, &config(prompt.len() + max_tokens)).unwrap();
    let sampler = Sampler::new(
        SamplerConfig {
            temperature: 0.0,
            ..Default::default()
        },
        model.hparams.vocab_size,
    );
    let mut generator = Generator::new(engine, sampler);
    let completion = match &ends {
        Some(end) => generator.generate(prompt, max_tokens, end, |_| Flow::Continue),
        None => generator.generate(prompt, max_tokens, &tokenizer, |_| Flow::Continue),
    }
    .unwrap();
    (completion, tokenizer)
}

#[test]
fn stories260k_greedy_tokens_equal_llama_cpp() {
    let r = json("real/stories260K.json");
    let prompt = ids(&r, "prompt_tokens");
    let want = ids(&r, "generated");
    assert_eq!(want.len(), 64);
    // The reference ignores end of sequence: so do we (no end token).
    let (c, tokenizer) = greedy(
        &common::fixture("real/stories260K-F32.gguf"),
        &prompt,
        want.len(),
        Some(EndToken(None)),
    );
    let text = flea::generate::pipeline::completion_text(&tokenizer, &c.tokens);
    eprintln!("stories260K: {text:?}");
    assert_eq!(c.tokens, want, "ours: {text:?}");
    assert_eq!(c.finish, FinishReason::Length);
    assert_eq!(text, r["generated_text"].as_str().unwrap());
}

#[test]
fn stories260k_teacher_forced_logits_match_llama_cpp() {
    let r = json("real/stories260K.json");
    let sequence = ids(&r, "sequence");
    let theirs = common::read_f32_file("real/stories260K.logits.bin");
    let (ours, n_vocab) = our_logits(&common::fixture("real/stories260K-F32.gguf"), &sequence);
    assert_eq!(n_vocab as u64, r["n_vocab"].as_u64().unwrap());
    assert_eq!(theirs.len(), sequence.len() * n_vocab, "logits.bin size");
    assert_eq!(ours.len(), theirs.len());
    let (mut max_abs, mut sum, mut agree) = (0.0f32, 0.0f64, 0);
    for (a, b) in ours.chunks_exact(n_vocab).zip(theirs.chunks_exact(n_vocab)) {
        for (x, y) in a.iter().zip(b) {
            let d = (x - y).abs();
            max_abs = max_abs.max(d);
            sum += f64::from(d);
        }
        agree += usize::from(argmax(a) == argmax(b));
    }
    let mean_abs = sum / ours.len() as f64;
    eprintln!(
        "stories260K: mean |diff| {mean_abs:.6}, max |diff| {max_abs:.6}, top-1 {agree}/{} positions",
        sequence.len()
    );
    assert!(max_abs <= STORIES_MAX_ABS, "max |diff| {max_abs}");
    assert!(mean_abs <= STORIES_MEAN_ABS, "mean |diff| {mean_abs}");
    assert_eq!(agree, sequence.len(), "top-1 must agree everywhere");
}

/// The SmolLM2 chat reference (prompt tokens, greedy tokens, sequence and
/// per-position top-40, in the arch/ layout) and the rendered prompt text.
struct Chat {
    prompt: String,
    reference: common::Top40,
}

impl std::ops::Deref for Chat {
    type Target = common::Top40;
    fn deref(&self) -> &common::Top40 {
        &self.reference
    }
}

fn smollm2_reference() -> Chat {
    const FILE: &str = "real/smollm2-135m-instruct-france.json";
    Chat {
        prompt: json(FILE)["prompt"].as_str().unwrap().to_owned(),
        reference: common::Top40::read(FILE),
    }
}

#[test]
fn smollm2_teacher_forced_logits_match_exact_math() {
    let Some(path) = common::smollm2() else {
        return;
    };
    let r = smollm2_reference();
    let (ours, n_vocab) = our_logits(&path, &r.sequence);
    let a = r.compare(&ours, n_vocab);
    eprintln!("SmolLM2 Q4_1 against exact math, over the top-40: {a}");
    if let Some(why) = a.check(SMOLLM2_MEAN_ABS, f32::INFINITY, SMOLLM2_TOP1) {
        panic!("SmolLM2: {why}");
    }
}

/// "The": the exact-math first answer token, at a near-tie that 8-bit
/// activations tip the other way (see the top of this file).
const THE: u32 = 504;
const L: u32 = 60;
const LA: u32 = 15319;

#[test]
fn smollm2_answers_paris_and_stops_at_im_end() {
    let Some(path) = common::smollm2() else {
        return;
    };
    let r = smollm2_reference();
    assert_eq!(r.sequence[..r.prompt_tokens.len()], r.prompt_tokens[..]);
    // The reference ignores end of turn; `<|im_end|>` comes after the answer.
    let answer_len = r
        .generated
        .iter()
        .position(|&t| t == IM_END)
        .expect("the reference emits <|im_end|>");
    // The near-tie right after the prompt: the reference's best three,
    // "The", "L" and "La", lie within 0.4; ours are the same three, in
    // another order.
    let at = r.prompt_tokens.len() - 1;
    let want = &r.top[at];
    assert_eq!(
        [want[0].0, want[1].0, want[2].0],
        [THE as usize, L as usize, LA as usize]
    );
    assert!(want[0].1 - want[2].1 < 0.4, "{:?}", &want[..3]);
    let (ours, n_vocab) = our_logits(&path, &r.prompt_tokens);
    let last = &ours[at * n_vocab..];
    let mut order: Vec<usize> = (0..n_vocab).collect();
    order.sort_unstable_by(|&a, &b| last[b].total_cmp(&last[a]));
    let mut top3 = order[..3].to_vec();
    eprintln!(
        "SmolLM2 after the prompt: ours {:?}, reference {:?}",
        top3.iter().map(|&i| (i, last[i])).collect::<Vec<_>>(),
        &want[..3]
    );
    top3.sort_unstable();
    let mut expected = [THE as usize, L as usize, LA as usize];
    expected.sort_unstable();
    assert_eq!(top3, expected, "our best three after the prompt");

    let mut prompt = r.prompt_tokens.clone();
    prompt.push(THE);
    let (c, tokenizer) = greedy(&path, &prompt, r.generated.len(), None);
    assert!(
        tokenizer.is_end_of_generation(IM_END),
        "<|im_end|> ends generation"
    );
    let text = flea::generate::pipeline::completion_text(&tokenizer, &c.tokens);
    let reference =
        flea::generate::pipeline::completion_text(&tokenizer, &r.generated[1..answer_len]);
    eprintln!(
        "SmolLM2: \"The\" + {text:?} ({:?}); reference {reference:?}",
        c.finish
    );
    assert!(text.contains("Paris"), "answer: {text:?}");
    assert_eq!(
        c.finish,
        FinishReason::Stop,
        "ended by <|im_end|>: {text:?}"
    );
    assert!(
        c.tokens.len() < r.generated.len() && !c.tokens.contains(&IM_END),
        "stopped at <|im_end|> and left it out: {:?}",
        c.tokens
    );
}

#[test]
fn smollm2_flea_run_special_answers_paris_and_stops() {
    let Some(path) = common::smollm2() else {
        return;
    };
    let r = smollm2_reference();
    // The rendered chat prompt holds newlines: one JSONL request carries it
    // on one line. --special makes its <|im_start|> and <|im_end|> the
    // control tokens the reference tokenized; "The" is the answer's first
    // token (see the top of this file).
    let request = serde_json::json!({
        "id": "france",
        "prompt": format!("{}The", r.prompt),
        "max_tokens": 48,
    });
    let out = spawn_flea(
        &[
            "run",
            "--model",
            path.to_str().unwrap(),
            "--jsonl",
            "--special",
            "--temperature",
            "0",
            "--threads",
            "2",
        ],
        &format!("{request}\n"),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let record: Value = serde_json::from_str(stdout.trim_end())
        .unwrap_or_else(|e| panic!("one JSON record expected ({e}): {stdout:?}\nstderr: {stderr}"));
    eprintln!("flea run --special: {record}");
    assert_eq!(record["id"], "france");
    assert_eq!(
        record["timing"]["prompt_tokens"].as_u64(),
        Some(r.prompt_tokens.len() as u64 + 1),
        "--special tokenizes the rendered prompt as the reference did (plus \"The\")"
    );
    let text = record["text"].as_str().unwrap();
    assert!(text.contains("Paris"), "answer: {text:?}");
    assert_eq!(
        record["finish_reason"], "stop",
        "ended by <|im_end|>: {record}"
    );
    assert!(!text.contains("<|im_end|>"), "{text:?}");
}

/// `flea run --chat`: a plain line becomes one user message in SmolLM2's
/// own template (which adds its default system message), greedy. The
/// question asks for English: without that, the 8-bit rounding near-tie at
/// the first answer token (see the top of this file) sends the model into
/// French. It answers and ends its turn at `<|im_end|>`, unprinted.
#[test]
fn smollm2_flea_run_chat_answers_in_english_and_stops_at_end_of_turn() {
    let Some(path) = common::smollm2() else {
        return;
    };
    let model = path.to_str().unwrap();
    let args = [
        "run",
        "--model",
        model,
        "--chat",
        "--temperature",
        "0",
        "-n",
        "48",
    ];
    let question = "What is the capital of France? Answer in English.";
    // Text mode: the completion alone, one line.
    let out = spawn_flea(&args, &format!("{question}\n"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let text = String::from_utf8(out.stdout).unwrap();
    eprintln!("flea run --chat: {text:?}");
    assert!(text.contains("Paris"), "answer: {text:?}");
    assert!(
        !text.contains("<|im_end|>") && !text.contains("<|im_start|>"),
        "{text:?}"
    );
    // JSONL: the same request, and the record says the turn ended.
    let mut jsonl = args.to_vec();
    jsonl.push("--jsonl");
    let request = serde_json::json!({"prompt": question});
    let out = spawn_flea(&jsonl, &format!("{request}\n"));
    let record: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(record["finish_reason"], "stop", "{record}");
    assert!(record["tokens"].as_u64().unwrap() < 48, "{record}");
    assert_eq!(
        format!("{}\n", record["text"].as_str().unwrap()),
        text,
        "text and JSONL modes agree"
    );
}

fn spawn_flea(args: &[&str], stdin: &str) -> std::process::Output {
    common::run_flea(args, stdin.as_bytes())
}
