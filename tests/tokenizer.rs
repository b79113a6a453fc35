//! The SPM and byte-level BPE tokenizers against llama.cpp's own test
//! vectors and the reference prompts of the fixture models.

mod common;

use flea::gguf::GgufFile;
use flea::tokenizer::Tokenizer;
use flea::ErrorKind;
use std::path::PathBuf;

/// llama.cpp's test-tokenizer-0 input format: each test string is followed
/// by this separator (including both newlines), so the file ends with one
/// and a string may itself be empty or consist only of newlines.
const CASE_SEPARATOR: &str = "\n__ggml_vocab_test__\n";

const VOCAB: &str = "tokenizer/ggml-vocab-llama-spm.gguf";
const PHI3_VOCAB: &str = "tokenizer/ggml-vocab-phi-3.gguf";
const LLAMA3_VOCAB: &str = "tokenizer/ggml-vocab-llama3-bpe.gguf";
const QWEN2_VOCAB: &str = "tokenizer/ggml-vocab-qwen2.gguf";
const GPT2_VOCAB: &str = "tokenizer/ggml-vocab-gpt-2.gguf";

fn load(path: &std::path::Path) -> Tokenizer {
    let file = GgufFile::open(path).expect("open gguf");
    Tokenizer::from_gguf(&file).expect("build tokenizer")
}

/// The test strings of `vocab` and their expected ids (without BOS).
fn vocab_cases(vocab: &str) -> Vec<(String, Vec<u32>)> {
    let inp = std::fs::read_to_string(common::fixture(&format!("{vocab}.inp"))).unwrap();
    let out = std::fs::read_to_string(common::fixture(&format!("{vocab}.out"))).unwrap();

    // Only text *before* a separator is a case; whatever follows the last
    // one (nothing, in the fixture) is not.
    let mut texts: Vec<&str> = inp.split(CASE_SEPARATOR).collect();
    texts.pop();
    // One line per case; the empty string's line is empty, so keep empty
    // lines (`lines` does, and drops only the final newline).
    let expected: Vec<Vec<u32>> = out
        .lines()
        .map(|l| l.split_whitespace().map(|t| t.parse().unwrap()).collect())
        .collect();
    assert_eq!(
        texts.len(),
        expected.len(),
        "{vocab}: .inp has {} cases but .out has {} lines",
        texts.len(),
        expected.len()
    );
    texts.into_iter().map(str::to_owned).zip(expected).collect()
}

/// Every case of `vocab` must give exactly the expected ids.
fn assert_vocab_exact(vocab: &str) {
    let tok = load(&common::fixture(vocab));
    let cases = vocab_cases(vocab);
    assert!(cases.len() > 40, "only {} cases parsed", cases.len());
    let mut failures = Vec::new();
    for (i, (text, expected)) in cases.iter().enumerate() {
        let got = tok.encode(text, false);
        if &got != expected {
            failures.push(format!(
                "case {i} {text:?}:\n  expected {expected:?}\n  got      {got:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{vocab}: {} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn llama_spm_vocab_matches_llama_cpp() {
    assert_vocab_exact(VOCAB);
}

#[test]
fn phi3_spm_vocab_matches_llama_cpp() {
    assert_vocab_exact(PHI3_VOCAB);
}

#[test]
fn llama3_bpe_vocab_matches_reference() {
    assert_vocab_exact(LLAMA3_VOCAB);
}

#[test]
fn qwen2_bpe_vocab_matches_reference() {
    assert_vocab_exact(QWEN2_VOCAB);
}

#[test]
fn gpt2_bpe_vocab_matches_reference() {
    assert_vocab_exact(GPT2_VOCAB);
}

const BPE_VOCABS: [&str; 3] = [LLAMA3_VOCAB, QWEN2_VOCAB, GPT2_VOCAB];

#[test]
fn bpe_decode_round_trips_fixture_strings() {
    for vocab in BPE_VOCABS {
        let tok = load(&common::fixture(vocab));
        for (text, _) in vocab_cases(vocab) {
            let ids = tok.encode(&text, false);
            // Byte-level BPE loses nothing and adds no space.
            assert_eq!(tok.decode(&ids), text, "{vocab}: {text:?} ({ids:?})");
            let streamed: Vec<u8> = ids
                .iter()
                .flat_map(|&t| tok.token_piece(t).iter().copied())
                .collect();
            assert_eq!(streamed, text.as_bytes(), "{vocab}: pieces of {text:?}");
        }
    }
}

#[test]
fn streamed_completion_never_splits_a_character() {
    // GPT-2's vocabulary spells most CJK characters and emoji as several
    // byte tokens, so single pieces are not UTF-8; the pipeline must join
    // the bytes of a completion before turning them into text.
    let tok = load(&common::fixture(GPT2_VOCAB));
    let text = "日本語の文章 🚀 naïve";
    let ids = tok.encode(text, false);
    let partial = ids
        .iter()
        .filter(|&&t| std::str::from_utf8(tok.token_piece(t)).is_err())
        .count();
    assert!(
        partial > 0,
        "expected some tokens to hold part of a character"
    );
    assert_eq!(flea::generate::pipeline::completion_text(&tok, &ids), text);
}

#[test]
fn bpe_vocab_special_tokens() {
    let llama3 = load(&common::fixture(LLAMA3_VOCAB));
    assert_eq!(llama3.vocab_size(), 128256);
    assert_eq!(
        (llama3.bos(), llama3.eos(), llama3.eot()),
        (Some(128000), Some(128001), Some(128009))
    );
    assert!(llama3.add_bos_default());
    assert!(
        llama3.token_piece(128000).is_empty(),
        "control tokens print nothing"
    );
    assert_eq!(llama3.encode("Hello", true), vec![128000, 9906]);

    let qwen2 = load(&common::fixture(QWEN2_VOCAB));
    assert_eq!((qwen2.bos(), qwen2.eos()), (Some(151643), Some(151645)));
    assert!(!qwen2.add_bos_default());

    let gpt2 = load(&common::fixture(GPT2_VOCAB));
    assert_eq!((gpt2.bos(), gpt2.eos()), (Some(50256), Some(50256)));
    assert!(!gpt2.add_bos_default(), "no add_bos_token key: BPE default");
}

#[test]
fn end_of_generation_tokens() {
    let llama3 = load(&common::fixture(LLAMA3_VOCAB));
    // <|end_of_text|> (EOS), <|eot_id|> (EOT).
    for id in [128001, 128009] {
        assert!(llama3.is_end_of_generation(id), "{id}");
    }
    // BOS, <|start_header_id|>, a reserved token, normal text, out of range.
    for id in [128000, 128006, 128010, 9906, 999_999] {
        assert!(!llama3.is_end_of_generation(id), "{id}");
    }

    let qwen2 = load(&common::fixture(QWEN2_VOCAB));
    // <|im_end|> (EOS) and <|endoftext|> (by its text; the file's BOS).
    for id in [151645, 151643] {
        assert!(qwen2.is_end_of_generation(id), "{id}");
    }
    for id in [151644, 151646, 9707] {
        assert!(!qwen2.is_end_of_generation(id), "{id}");
    }

    let spm = load(&common::fixture(VOCAB));
    assert!(spm.is_end_of_generation(2));
    assert!(!spm.is_end_of_generation(1));
}

fn chat_templates() -> serde_json::Value {
    let text = std::fs::read_to_string(common::fixture("tokenizer/chat-templates.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn control_tokens_parse_only_when_asked() {
    let qwen2 = load(&common::fixture(QWEN2_VOCAB));
    let (start, end) = (151644, 151645);
    for case in chat_templates()["qwen2"].as_array().unwrap() {
        let rendered = case["rendered"].as_str().unwrap();
        // With special parsing: each marker is one token and the text
        // between is tokenized on its own.
        let mut expected = Vec::new();
        for (i, turn) in rendered.split("<|im_start|>").enumerate() {
            if i > 0 {
                expected.push(start);
            }
            for (j, part) in turn.split("<|im_end|>").enumerate() {
                if j > 0 {
                    expected.push(end);
                }
                expected.extend(qwen2.encode(part, false));
            }
        }
        assert_eq!(qwen2.encode_with_special(rendered, false), expected);
        // Without: the markers are plain text and round-trip as such.
        let plain = qwen2.encode(rendered, false);
        assert!(
            !plain.contains(&start) && !plain.contains(&end),
            "{plain:?}"
        );
        assert_eq!(qwen2.decode(&plain), rendered);
    }

    let llama3 = load(&common::fixture(LLAMA3_VOCAB));
    for case in chat_templates()["llama3-bpe"].as_array().unwrap() {
        let rendered = case["rendered"].as_str().unwrap();
        let ids = llama3.encode_with_special(rendered, false);
        // The template writes BOS itself.
        assert_eq!(&ids[..2], &[128000, 128006], "{ids:?}");
        assert_eq!(
            ids.iter().filter(|&&t| t == 128009).count(),
            rendered.matches("<|eot_id|>").count()
        );
        assert!(!llama3.encode(rendered, false).contains(&128006));
    }

    // SPM: `</s>` in text is text unless asked.
    let spm = load(&common::fixture(VOCAB));
    assert!(!spm.encode("a</s>", false).contains(&2));
    assert!(spm.encode_with_special("a</s>", false).ends_with(&[2]));
}

#[test]
fn arch_prompts_tokenize_like_llama_cpp() {
    // Small models with real vocabularies; llama.cpp tokenized the prompt
    // (BOS as each file asks: Llama 3 and Phi-3 yes, Qwen no).
    for name in ["synth-llama3", "synth-qwen2", "synth-qwen3", "synth-phi3"] {
        let tok = load(&common::fixture(&format!("arch/{name}.gguf")));
        let text = std::fs::read_to_string(common::fixture(&format!("arch/{name}.json"))).unwrap();
        let r: serde_json::Value = serde_json::from_str(&text).unwrap();
        let prompt = r["prompt"].as_str().unwrap();
        assert_eq!(
            tok.encode(prompt, tok.add_bos_default()),
            ids(&r["prompt_tokens"]),
            "{name}: {prompt:?}"
        );
    }
}

#[test]
fn bpe_vocab_loads_and_encodes_fast() {
    // 128k tokens and 280k merges: the merge table is built once at load.
    let path = common::fixture(LLAMA3_VOCAB);
    let start = std::time::Instant::now();
    let file = GgufFile::open(&path).unwrap();
    let parsed = start.elapsed();
    let tok = Tokenizer::from_gguf(&file).unwrap();
    let loaded = start.elapsed();
    let text: String = vocab_cases(LLAMA3_VOCAB)
        .into_iter()
        .map(|c| c.0)
        .collect::<Vec<_>>()
        .join(" ")
        .repeat(20);
    let start = std::time::Instant::now();
    let ids = tok.encode(&text, false);
    let encoded = start.elapsed();
    eprintln!(
        "llama3 vocab: GGUF parsed in {:.0} ms, tokenizer built by {:.0} ms, encode {} bytes -> {} tokens in {:.1} ms",
        parsed.as_secs_f64() * 1e3,
        loaded.as_secs_f64() * 1e3,
        text.len(),
        ids.len(),
        encoded.as_secs_f64() * 1e3
    );
    assert_eq!(tok.decode(&ids), text);
    // Generous bounds for a loaded CI machine; typical figures are far
    // below (see the printed line).
    assert!(loaded.as_secs_f64() < 5.0, "load took {loaded:?}");
    assert!(encoded.as_secs_f64() < 2.0, "encode took {encoded:?}");
}

#[test]
fn decode_round_trips_fixture_strings() {
    let tok = load(&common::fixture(VOCAB));
    for (text, _) in vocab_cases(VOCAB) {
        // U+2581 in the input would come back as a space; the fixture has
        // none, but guard so that the test keeps meaning the same thing.
        if text.contains('\u{2581}') {
            continue;
        }
        let ids = tok.encode(&text, false);
        assert_eq!(tok.decode(&ids), text, "round trip of {text:?} ({ids:?})");

        // llama.cpp strips the prefix space only from the first token; a
        // leading BOS renders as nothing but takes that position, so the
        // space survives.
        let with_bos = tok.encode(&text, true);
        let expected = if text.is_empty() {
            String::new()
        } else {
            format!(" {text}")
        };
        assert_eq!(tok.decode(&with_bos), expected, "with BOS: {text:?}");

        // Streaming pieces concatenate to the un-stripped text.
        let streamed: Vec<u8> = ids
            .iter()
            .flat_map(|&t| tok.token_piece(t).iter().copied())
            .collect();
        assert_eq!(String::from_utf8(streamed).unwrap(), expected);
    }
}

#[test]
fn vocab_special_tokens() {
    let tok = load(&common::fixture(VOCAB));
    assert_eq!(tok.vocab_size(), 32000);
    assert_eq!(
        (tok.unk(), tok.bos(), tok.eos()),
        (Some(0), Some(1), Some(2))
    );
    assert!(tok.add_bos_default());
    assert!(tok.token_piece(1).is_empty(), "BOS renders as nothing");
    assert_eq!(tok.token_piece(13), b"\n", "<0x0A>");
}

#[test]
fn long_input_round_trips() {
    // Long prompts must neither be slow (the merge loop is heap-based) nor
    // lose text at fragment or buffer boundaries.
    let tok = load(&common::fixture(VOCAB));
    let cases: Vec<String> = vocab_cases(VOCAB).into_iter().map(|c| c.0).collect();
    let text = cases.join(" ").repeat(20);
    let ids = tok.encode(&text, false);
    assert!(ids.len() > 5000);
    assert_eq!(tok.decode(&ids), text);
}

/// Models whose reference JSON was produced by llama.cpp.
fn reference_models() -> Vec<&'static str> {
    let mut names = common::SYNTH_MODELS.to_vec();
    names.push("llama-2-tiny-random");
    names
}

fn reference(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(common::fixture(&format!("reference/{name}.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn reference_prompts_tokenize_like_llama_cpp() {
    for name in reference_models() {
        let tok = load(&common::model(&format!("{name}.gguf")));
        let r = reference(name);
        let prompt = r["prompt"].as_str().unwrap();
        let expected = ids(&r["prompt_tokens"]);
        assert_eq!(tok.encode(prompt, true), expected, "{name}: {prompt:?}");
        assert_eq!(tok.decode(&expected[1..]), prompt, "{name}");
    }
}

#[test]
fn reference_greedy_text_is_the_concatenated_pieces() {
    for name in reference_models() {
        let tok = load(&common::model(&format!("{name}.gguf")));
        let r = reference(name);
        let bytes: Vec<u8> = ids(&r["greedy"])
            .iter()
            .flat_map(|&t| tok.token_piece(t).iter().copied())
            .collect();
        assert_eq!(
            String::from_utf8_lossy(&bytes),
            r["greedy_text"].as_str().unwrap(),
            "{name}"
        );
    }
}

// --- hand-built GGUF files for the error paths --------------------------

/// Metadata values the builder can write.
enum Kv {
    Str(&'static str),
    Strs(Vec<&'static str>),
    F32s(Vec<f32>),
    I32s(Vec<i32>),
}

const TYPE_I32: u32 = 5;
const TYPE_F32: u32 = 6;
const TYPE_STRING: u32 = 8;
const TYPE_ARRAY: u32 = 9;

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

/// A GGUF v3 file with no tensors and the given metadata.
fn gguf_bytes(kvs: &[(&str, Kv)]) -> Vec<u8> {
    let mut buf = Vec::new();
    buf.extend_from_slice(b"GGUF");
    buf.extend_from_slice(&3u32.to_le_bytes());
    buf.extend_from_slice(&0u64.to_le_bytes());
    buf.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
    for (key, value) in kvs {
        put_str(&mut buf, key);
        let array_header = |buf: &mut Vec<u8>, elem: u32, n: usize| {
            buf.extend_from_slice(&TYPE_ARRAY.to_le_bytes());
            buf.extend_from_slice(&elem.to_le_bytes());
            buf.extend_from_slice(&(n as u64).to_le_bytes());
        };
        match value {
            Kv::Str(s) => {
                buf.extend_from_slice(&TYPE_STRING.to_le_bytes());
                put_str(&mut buf, s);
            }
            Kv::Strs(v) => {
                array_header(&mut buf, TYPE_STRING, v.len());
                v.iter().for_each(|s| put_str(&mut buf, s));
            }
            Kv::F32s(v) => {
                array_header(&mut buf, TYPE_F32, v.len());
                v.iter()
                    .for_each(|x| buf.extend_from_slice(&x.to_le_bytes()));
            }
            Kv::I32s(v) => {
                array_header(&mut buf, TYPE_I32, v.len());
                v.iter()
                    .for_each(|x| buf.extend_from_slice(&x.to_le_bytes()));
            }
        }
    }
    buf
}

/// A temp file removed on drop, named per test so that parallel tests do
/// not collide.
struct TempGguf(PathBuf);

impl TempGguf {
    fn new(name: &str, kvs: &[(&str, Kv)]) -> TempGguf {
        let path =
            std::env::temp_dir().join(format!("flea-tokenizer-{}-{name}.gguf", std::process::id()));
        std::fs::write(&path, gguf_bytes(kvs)).unwrap();
        TempGguf(path)
    }

    fn tokenizer_error(&self) -> flea::Error {
        let file = GgufFile::open(&self.0).expect("hand-built GGUF parses");
        Tokenizer::from_gguf(&file).expect_err("tokenizer should be rejected")
    }
}

impl Drop for TempGguf {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn assert_mentions(err: &flea::Error, needles: &[&str]) {
    assert_eq!(err.kind, ErrorKind::Model);
    for needle in needles {
        assert!(
            err.message.contains(needle),
            "{needle:?} not in {:?}",
            err.message
        );
    }
}

#[test]
fn unknown_tokenizer_model_is_unsupported() {
    let f = TempGguf::new(
        "t5",
        &[
            ("tokenizer.ggml.model", Kv::Str("t5")),
            ("tokenizer.ggml.tokens", Kv::Strs(vec!["a", "b"])),
        ],
    );
    let path = f.0.display().to_string();
    // The message names the value and what is supported instead.
    assert_mentions(
        &f.tokenizer_error(),
        &[
            "unsupported tokenizer",
            "tokenizer.ggml.model",
            "\"t5\"",
            "\"llama\"",
            "\"gpt2\"",
            path.as_str(),
        ],
    );
}

#[test]
fn unknown_pre_tokenizer_is_named() {
    let f = TempGguf::new(
        "pre",
        &[
            ("tokenizer.ggml.model", Kv::Str("gpt2")),
            ("tokenizer.ggml.pre", Kv::Str("deepseek-coder")),
            ("tokenizer.ggml.tokens", Kv::Strs(vec!["a", "b", "ab"])),
            ("tokenizer.ggml.merges", Kv::Strs(vec!["a b"])),
        ],
    );
    assert_mentions(
        &f.tokenizer_error(),
        &[
            "tokenizer.ggml.pre",
            "unsupported pre-tokenizer",
            "\"deepseek-coder\"",
            "llama-bpe",
            "qwen2",
            "smollm",
            "gpt-2",
        ],
    );
}

#[test]
fn bpe_without_merges_is_named() {
    let f = TempGguf::new(
        "nomerges",
        &[
            ("tokenizer.ggml.model", Kv::Str("gpt2")),
            ("tokenizer.ggml.tokens", Kv::Strs(vec!["a", "b"])),
        ],
    );
    assert_mentions(&f.tokenizer_error(), &["tokenizer.ggml.merges"]);
}

#[test]
fn minimal_hand_built_bpe_vocab_works() {
    // Merges by rank: "b c" (rank 0) before "a b" (rank 1), so "abc" is
    // a + bc, not ab + c; "bc" has no rule with "a" and stays.
    let f = TempGguf::new(
        "minimal-bpe",
        &[
            ("tokenizer.ggml.model", Kv::Str("gpt2")),
            (
                "tokenizer.ggml.tokens",
                Kv::Strs(vec!["a", "b", "c", "ab", "bc", "Ġ", "Ġa", "<|end|>"]),
            ),
            (
                "tokenizer.ggml.token_type",
                Kv::I32s(vec![1, 1, 1, 1, 1, 1, 1, 3]),
            ),
            ("tokenizer.ggml.merges", Kv::Strs(vec!["b c", "a b", "Ġ a"])),
        ],
    );
    let file = GgufFile::open(&f.0).unwrap();
    let tok = Tokenizer::from_gguf(&file).unwrap();
    assert_eq!(tok.encode("abc", true), vec![0, 4], "no BOS in this vocab");
    assert_eq!(tok.encode("ab a", false), vec![3, 6]);
    assert!(!tok.add_bos_default(), "BPE defaults to no BOS");
    assert_eq!(tok.decode(&[3, 6, 7]), "ab a");
    assert_eq!(tok.encode_with_special("a<|end|>", false), vec![0, 7]);
    assert!(tok.is_end_of_generation(7));
}

#[test]
fn missing_tokens_key_is_named() {
    let f = TempGguf::new("notokens", &[("tokenizer.ggml.model", Kv::Str("llama"))]);
    let err = f.tokenizer_error();
    assert_eq!(err.kind, ErrorKind::Model);
    assert!(
        err.message.contains("tokenizer.ggml.tokens"),
        "{}",
        err.message
    );
    assert!(
        err.message.contains(&f.0.display().to_string()),
        "{}",
        err.message
    );
}

#[test]
fn mismatched_array_lengths_are_reported() {
    let f = TempGguf::new(
        "mismatch",
        &[
            ("tokenizer.ggml.model", Kv::Str("llama")),
            (
                "tokenizer.ggml.tokens",
                Kv::Strs(vec!["<unk>", "<s>", "</s>"]),
            ),
            ("tokenizer.ggml.scores", Kv::F32s(vec![0.0, 0.0])),
            ("tokenizer.ggml.token_type", Kv::I32s(vec![2, 3, 3])),
        ],
    );
    let err = f.tokenizer_error();
    assert_eq!(err.kind, ErrorKind::Model);
    for needle in ["tokenizer.ggml.scores", "expected 3", "found 2"] {
        assert!(err.message.contains(needle), "{}", err.message);
    }
}

#[test]
fn minimal_hand_built_vocab_works() {
    let f = TempGguf::new(
        "minimal",
        &[
            ("tokenizer.ggml.model", Kv::Str("llama")),
            (
                "tokenizer.ggml.tokens",
                Kv::Strs(vec!["<unk>", "<s>", "</s>", "▁", "h", "i", "▁hi"]),
            ),
            (
                "tokenizer.ggml.scores",
                Kv::F32s(vec![0.0, 0.0, 0.0, -1.0, -2.0, -2.0, -0.5]),
            ),
            (
                "tokenizer.ggml.token_type",
                Kv::I32s(vec![2, 3, 3, 1, 1, 1, 1]),
            ),
        ],
    );
    let file = GgufFile::open(&f.0).unwrap();
    let tok = Tokenizer::from_gguf(&file).unwrap();
    // "▁h" is not a piece, so "▁hi" can only form after "hi"... which is not
    // a piece either: the loop stops with ▁ h i.
    assert_eq!(tok.encode("hi", true), vec![1, 3, 4, 5]);
    assert_eq!(tok.decode(&[3, 4, 5]), "hi");
}
