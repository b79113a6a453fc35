//! One `flea run --jsonl` request line, as the pipeline admits it.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| flea::fuzz::request(common::tokenizer(), data));
