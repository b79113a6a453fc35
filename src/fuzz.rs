//! Entry points for the fuzz harness: each takes arbitrary bytes through one
//! of the paths hostile input reaches, and must return (an `Err` is fine)
//! without panicking, aborting, hanging or allocating beyond what the input
//! justifies. Used by the `cargo fuzz` targets under `fuzz/` and by the
//! bounded mutation run in `tests/fuzz_smoke.rs`, so both exercise the same
//! code.

use crate::chat::{ChatTemplate, Message};
use crate::config::Config;
use crate::engine::EngineConfig;
use crate::generate::pipeline::{check_line, ChatOptions, Format, RunOptions};
use crate::generate::sampler::SamplerConfig;
use crate::gguf::GgufFile;
use crate::model::Model;
use crate::tokenizer::Tokenizer;

/// A GGUF image: header, metadata, tensor table, then (when those parse)
/// the model description, the tokenizer, a plan at a small budget and the
/// chat template (compiled, and rendered once), as `flea inspect` and
/// `flea run` would.
pub fn gguf(bytes: &[u8]) {
    let Ok(file) = GgufFile::from_bytes("fuzz.gguf", bytes) else {
        return;
    };
    let model = Model::from_gguf(&file);
    let tokenizer = Tokenizer::from_gguf(&file);
    if let (Ok(model), Ok(tokenizer)) = (&model, &tokenizer) {
        let engine = EngineConfig {
            n_ctx: model.hparams.context_length.min(256),
            max_chunk: 16,
            n_seq: 1,
            threads: 1,
            ..Default::default()
        };
        let _ = engine.plan(model, 64 << 20);
        let ids = tokenizer.encode("Once upon a time, ünïcödé 🦀", true);
        let _ = tokenizer.decode(&ids);
    }
    // The template needs only the tokenizer (a vocab-only file has one).
    if let Ok(tokenizer) = &tokenizer {
        if let Ok(Some(template)) = ChatTemplate::from_gguf(&file, tokenizer) {
            if let Ok(text) = template.render(&[Message::user("Hello!")], true) {
                let _ = crate::chat::prompt_tokens(tokenizer, &text);
            }
        }
    }
}

/// A ChatML template with the constructs real ones use (a refusal,
/// Python string methods, slices, `tojson`), for the request path.
const FUZZ_TEMPLATE: &str = "{% if messages[0].role == 'bad' %}{{ raise_exception('bad role') }}{% endif %}\
{% for m in messages[::-1] %}{% if m.content.startswith('<') %}{{ m | tojson }}{% endif %}{% endfor %}\
{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content.strip() }}<|im_end|>\n{% endfor %}\
{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// A TOML config file.
pub fn config(bytes: &[u8]) {
    if let Ok(text) = std::str::from_utf8(bytes) {
        let _ = Config::parse(text, "fuzz.toml");
    }
}

/// One `flea run --jsonl` input line, checked as the pipeline admits it.
pub fn request(tokenizer: &Tokenizer, bytes: &[u8]) {
    let Ok(line) = std::str::from_utf8(bytes) else {
        return;
    };
    let options = RunOptions {
        format: Format::Jsonl,
        max_tokens: 16,
        sampling: SamplerConfig::default(),
        chat: ChatOptions {
            template: ChatTemplate::new(FUZZ_TEMPLATE, Some("<s>"), Some("</s>"), "fuzz")
                .map(std::sync::Arc::new)
                .map_err(|e| e.message),
            wrap_prompts: false,
        },
        special: true,
    };
    let _ = check_line(line, &options, tokenizer, 64);
}

/// Text through a tokenizer and back; ids decoded as given.
pub fn tokenizer_input(tokenizer: &Tokenizer, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let ids = tokenizer.encode(&text, true);
    let _ = tokenizer.decode(&ids);
    let raw: Vec<u32> = bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let _ = tokenizer.decode(&raw);
    for &id in raw.iter().take(64) {
        let _ = tokenizer.token_piece(id);
    }
}
