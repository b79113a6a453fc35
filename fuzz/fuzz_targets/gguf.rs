//! GGUF header, metadata and tensor table, then model, tokenizer and plan.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| flea::fuzz::gguf(data));
