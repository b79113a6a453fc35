//! Arbitrary text (and ids) through the tokenizer and back.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| flea::fuzz::tokenizer_input(common::tokenizer(), data));
