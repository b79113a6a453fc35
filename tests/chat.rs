//! Chat templates: the GGUF's `tokenizer.chat_template` rendered byte for
//! byte as Hugging Face (jinja2) renders it, the rendered prompt tokenized
//! with control tokens and one BOS, and generation ending at end-of-turn.

mod common;

use flea::chat::{prompt_tokens, ChatTemplate, Message, KEY_CHAT_TEMPLATE};
use flea::generate::sampler::{Sampler, SamplerConfig};
use flea::generate::sequence::{Limits, Sequence};
use flea::generate::FinishReason;
use flea::gguf::GgufFile;
use flea::tokenizer::Tokenizer;
use flea::ErrorKind;

const LLAMA3_VOCAB: &str = "tokenizer/ggml-vocab-llama3-bpe.gguf";
const QWEN2_VOCAB: &str = "tokenizer/ggml-vocab-qwen2.gguf";

fn open(relative: &str) -> (GgufFile, Tokenizer) {
    let file = GgufFile::open(common::fixture(relative)).expect("open gguf");
    let tokenizer = Tokenizer::from_gguf(&file).expect("tokenizer");
    (file, tokenizer)
}

fn load_template(relative: &str) -> (ChatTemplate, Tokenizer) {
    let (file, tokenizer) = open(relative);
    let template = ChatTemplate::from_gguf(&file, &tokenizer)
        .expect("template compiles")
        .unwrap_or_else(|| panic!("{relative} has no {KEY_CHAT_TEMPLATE}"));
    (template, tokenizer)
}

/// The fixture's conversations for one vocabulary: messages, whether to
/// add the generation prompt, and what jinja2 rendered.
fn cases(vocab: &str) -> Vec<(Vec<Message>, bool, String)> {
    let path = common::fixture("tokenizer/chat-templates.json");
    let all: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let list = all[vocab]
        .as_array()
        .unwrap_or_else(|| panic!("chat-templates.json has no {vocab}"));
    assert!(!list.is_empty());
    list.iter()
        .map(|case| {
            let messages = serde_json::from_value(case["messages"].clone()).unwrap();
            let add = case["add_generation_prompt"].as_bool().unwrap();
            let rendered = case["rendered"].as_str().unwrap().to_owned();
            (messages, add, rendered)
        })
        .collect()
}

#[test]
fn templates_render_byte_exact_as_jinja2() {
    for (key, vocab) in [("llama3-bpe", LLAMA3_VOCAB), ("qwen2", QWEN2_VOCAB)] {
        let (template, _) = load_template(vocab);
        let cases = cases(key);
        assert_eq!(cases.len(), 2, "{key}");
        for (messages, add, expected) in cases {
            let ours = template.render(&messages, add).unwrap();
            assert_eq!(ours, expected, "{key}: {messages:?}");
        }
    }
}

#[test]
fn arch_models_carry_the_same_templates() {
    // The small runnable models have their vocabulary's template.
    for (key, model) in [
        ("llama3-bpe", "arch/synth-llama3.gguf"),
        ("qwen2", "arch/synth-qwen2.gguf"),
        ("qwen2", "arch/synth-qwen3.gguf"),
    ] {
        let (template, _) = load_template(model);
        for (messages, add, expected) in cases(key) {
            assert_eq!(
                template.render(&messages, add).unwrap(),
                expected,
                "{model}"
            );
        }
    }
    // Phi-3's template writes BOS as text and opens the assistant turn itself.
    let (template, tok) = load_template("tokenizer/ggml-vocab-phi-3.gguf");
    let text = template.render(&[Message::user("Hello!")], true).unwrap();
    assert_eq!(text, "<s><|user|>\nHello!<|end|>\n<|assistant|>\n");
    let ids = prompt_tokens(&tok, &text);
    assert_eq!(ids.iter().filter(|&&t| t == 1).count(), 1, "{ids:?}");
    assert_eq!(ids[0], 1);
}

#[test]
fn rendered_prompts_tokenize_with_control_tokens_and_one_bos() {
    // Llama 3: the template writes <|begin_of_text|>; the model asks for
    // BOS, which must not come twice.
    let (template, tok) = load_template(LLAMA3_VOCAB);
    assert!(tok.add_bos_default());
    for (messages, _, _) in cases("llama3-bpe") {
        let text = template.render(&messages, true).unwrap();
        let ids = prompt_tokens(&tok, &text);
        assert_eq!(&ids[..2], &[128000, 128006], "{ids:?}");
        assert_eq!(ids.iter().filter(|&&t| t == 128000).count(), 1);
        // Every <|eot_id|> of the text is the one token.
        assert_eq!(ids.iter().filter(|&&t| t == 128009).count(), messages.len());
        // The generation prompt is the prompt's end.
        assert!(ids.ends_with(
            &tok.encode_with_special("<|start_header_id|>assistant<|end_header_id|>\n\n", false)
        ));
    }
    // A template that does not write BOS gets one, as the model asks.
    let bare = ChatTemplate::new(
        "{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>{% endfor %}",
        Some("<|begin_of_text|>"),
        None,
        "test",
    )
    .unwrap();
    let ids = prompt_tokens(&tok, &bare.render(&[Message::user("x")], true).unwrap());
    assert_eq!(ids[0], 128000);
    assert_eq!(ids[1], 128006);

    // Qwen: no BOS; the markers are single tokens.
    let (template, tok) = load_template(QWEN2_VOCAB);
    assert!(!tok.add_bos_default());
    let text = template.render(&[Message::user("Hello!")], true).unwrap();
    let ids = prompt_tokens(&tok, &text);
    assert_eq!(ids[0], 151644, "{ids:?}");
    assert_eq!(ids.iter().filter(|&&t| t == 151644).count(), 2);
    assert_eq!(ids.iter().filter(|&&t| t == 151645).count(), 1);
    assert_eq!(tok.decode(&ids), "user\nHello!\nassistant\n");
}

#[test]
fn models_without_a_template_say_so() {
    let (file, tok) = open("models/synth-256-Q8_0.gguf");
    assert!(ChatTemplate::from_gguf(&file, &tok).unwrap().is_none());
    let e = ChatTemplate::require(&file, &tok).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Model);
    assert!(e.message.contains(KEY_CHAT_TEMPLATE), "{}", e.message);
    assert!(
        e.message.contains(&file.path.display().to_string()),
        "{}",
        e.message
    );
}

#[test]
fn generation_stops_at_end_of_turn() {
    // A chat model ends its turn with <|eot_id|> (Llama 3) or <|im_end|>
    // (Qwen): the sequence finishes there and the token is not output.
    for (vocab, end_of_turn, text) in [
        (LLAMA3_VOCAB, 128009, "<|eot_id|>"),
        (QWEN2_VOCAB, 151645, "<|im_end|>"),
    ] {
        let (_, tok) = open(vocab);
        assert_eq!(tok.encode_with_special(text, false), vec![end_of_turn]);
        let prompt = tok.encode("Hello", true);
        let limits = Limits {
            max_tokens: 8,
            stops: Vec::new(),
        };
        let sampler = Sampler::new(SamplerConfig::default(), tok.vocab_size());
        let mut seq = Sequence::new(&prompt, limits, 64, sampler).unwrap();
        let word = tok.encode(" world", false)[0];
        let mut pos = prompt.len();
        assert_eq!(seq.accept(word, pos, &tok), None);
        pos += 1;
        assert_eq!(seq.accept(end_of_turn, pos, &tok), Some(FinishReason::Stop));
        assert_eq!(seq.generated(), &[word], "{vocab}");
        assert_eq!(seq.text(&tok), " world");
    }
}
