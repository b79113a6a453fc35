//! The vocabulary the text targets tokenize with: the Llama-2 SPM fixture,
//! from `$FLEA_FIXTURES` or `../shared/fixtures` (relative to the repo).
use flea::tokenizer::Tokenizer;
use std::sync::OnceLock;

pub fn tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let dir = std::env::var("FLEA_FIXTURES").unwrap_or_else(|_| {
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/fixtures").into()
        });
        let path = std::path::Path::new(&dir).join("tokenizer/ggml-vocab-llama-spm.gguf");
        let file = flea::gguf::GgufFile::open(&path)
            .unwrap_or_else(|e| panic!("fuzz setup: {e} (set FLEA_FIXTURES)"));
        Tokenizer::from_gguf(&file).expect("the fixture vocabulary loads")
    })
}
