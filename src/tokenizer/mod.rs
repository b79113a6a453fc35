//! Text <-> token ids, built from GGUF metadata: SentencePiece (SPM,
//! `tokenizer.ggml.model = "llama"`) in [`spm`], byte-level BPE (`"gpt2"`)
//! in [`bpe`]. What is common to both (special tokens, pieces, BOS) lives
//! here.
//!
//! The goal is to give exactly the ids llama.cpp gives, so that prompts fed
//! to the model match reference runs token for token. The rules followed
//! here for SPM (with llama.cpp's defaults when a key is absent):
//!
//! * encoding: user-defined tokens found in the text are split out first;
//!   each remaining text fragment gets one leading space if
//!   `add_space_prefix` is set and it is the first fragment or follows a
//!   user-defined token; spaces become U+2581; then the merge loop in
//!   [`spm`] runs. Control tokens written in the text (such as `<s>`) are
//!   *not* recognised: user text cannot inject BOS/EOS.
//! * decoding: the pieces of the tokens are concatenated; control, unknown,
//!   unused and undefined tokens contribute nothing, byte tokens their byte,
//!   normal tokens their text with U+2581 turned back into a space. If
//!   `add_space_prefix` is set, one leading space is stripped from the
//!   *first token only* — which undoes the prefix added by encoding when the
//!   sequence has no BOS. With a BOS first (which renders as nothing) the
//!   space is kept, exactly as in llama.cpp.
//!
//! Byte-level BPE follows the same outline (user-defined tokens split out
//! first, control tokens in the text not recognised by [`Tokenizer::encode`])
//! with no space prefix; see [`bpe`] for the rest.
//!
//! [`Tokenizer::encode_with_special`] additionally recognises control tokens
//! written in the text (`<|im_start|>`): prompts built from a chat template
//! need them, while user input must not be able to forge them.

mod bpe;
mod spm;

use crate::error::{Error, Result};
use crate::gguf::{GgufFile, Value};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

const KEY_MODEL: &str = "tokenizer.ggml.model";
const KEY_TOKENS: &str = "tokenizer.ggml.tokens";
const KEY_SCORES: &str = "tokenizer.ggml.scores";
const KEY_TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
const KEY_BOS: &str = "tokenizer.ggml.bos_token_id";
const KEY_EOS: &str = "tokenizer.ggml.eos_token_id";
const KEY_UNK: &str = "tokenizer.ggml.unknown_token_id";
const KEY_ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
const KEY_ADD_SPACE_PREFIX: &str = "tokenizer.ggml.add_space_prefix";
const KEY_EOT: &str = "tokenizer.ggml.eot_token_id";
const KEY_MERGES: &str = "tokenizer.ggml.merges";
const KEY_PRE: &str = "tokenizer.ggml.pre";

/// `tokenizer.ggml.model` of SentencePiece vocabularies.
const SPM_MODEL: &str = "llama";
/// `tokenizer.ggml.model` of byte-level BPE vocabularies.
const BPE_MODEL: &str = "gpt2";

/// Texts of control tokens that end a model's turn in the common chat
/// formats. Files often name only one of them as EOS/EOT (Qwen's EOS is
/// `<|im_end|>`, yet a base model may emit `<|endoftext|>`), so generation
/// must stop at any of them, as llama.cpp does.
const END_MARKERS: [&str; 8] = [
    "</s>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
];

/// SentencePiece's visible stand-in for a space.
const SPACE_MARK: char = '\u{2581}';

/// What a token is, from `tokenizer.ggml.token_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    /// 0 or any id outside 1..=6; llama.cpp treats these like unused.
    Undefined,
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl TokenType {
    pub fn from_id(id: i64) -> TokenType {
        match id {
            1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => TokenType::Undefined,
        }
    }
}

/// The raw vocabulary as stored in the metadata, before validation. `None`
/// means the key was absent; [`Tokenizer::from_parts`] then applies
/// llama.cpp's defaults.
#[derive(Debug, Clone, Default)]
pub struct TokenizerParts {
    /// `tokenizer.ggml.model`: `"llama"` (SPM) or `"gpt2"` (byte-level BPE).
    pub model: String,
    pub tokens: Vec<String>,
    /// SPM only; missing scores are all 0, as in llama.cpp.
    pub scores: Option<Vec<f32>>,
    /// Raw `token_type` ids; missing means every token is normal.
    pub token_types: Option<Vec<i64>>,
    /// BPE only, and required there: `"left right"` per rule, by rank.
    pub merges: Option<Vec<String>>,
    /// BPE only: `tokenizer.ggml.pre`, which pre-tokenizer rules to use.
    pub pre: Option<String>,
    pub bos: Option<u64>,
    pub eos: Option<u64>,
    /// End of turn (`<|eot_id|>`), where the file names one.
    pub eot: Option<u64>,
    pub unk: Option<u64>,
    pub add_bos: Option<bool>,
    /// SPM only.
    pub add_space_prefix: Option<bool>,
}

/// A vocabulary ready to encode and decode.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    texts: Vec<String>,
    types: Vec<TokenType>,
    /// What each token prints as (see the module docs), computed once so
    /// that streaming output is a lookup.
    pieces: Vec<Vec<u8>>,
    piece_to_id: FastMap<String, u32>,
    /// Tokens matched in the raw text before the model's own algorithm:
    /// user-defined, control and unknown tokens, longest text first. Which
    /// of them are honoured depends on the encode call.
    specials: Vec<u32>,
    /// EOS, EOT and control tokens spelled like an end marker, sorted.
    end_of_generation: Vec<u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    unk: Option<u32>,
    add_bos: bool,
    model: Model,
}

/// The part of a tokenizer that differs per `tokenizer.ggml.model`. Boxed:
/// both hold kilobytes of per-byte tables.
#[derive(Debug, Clone)]
enum Model {
    Spm(Box<Spm>),
    Bpe(Box<bpe::Bpe>),
}

#[derive(Debug, Clone)]
struct Spm {
    scores: Vec<f32>,
    byte_tokens: [Option<u32>; 256],
    add_space_prefix: bool,
}

/// A piece of the input after special tokens are split out.
enum Fragment<'a> {
    Text(&'a str),
    Token(u32),
}

impl Tokenizer {
    /// Build the tokenizer from a GGUF file's `tokenizer.ggml.*` keys.
    pub fn from_gguf(file: &GgufFile) -> Result<Tokenizer> {
        let source = file.path.display().to_string();
        // Check the model first so that an unsupported tokenizer is reported
        // as such rather than tripping over whichever key it lacks.
        let model = file.require_str(KEY_MODEL)?;
        check_model(model, &source)?;
        let is_spm = model == SPM_MODEL;

        let tokens = string_array(file, KEY_TOKENS, &source)?;
        // Scores drive only SPM merges; a BPE file's (if any) are unused.
        let scores = match file.get(KEY_SCORES) {
            Some(_) if is_spm => Some(
                file.require_array(KEY_SCORES)?
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        v.as_f32()
                            .ok_or_else(|| bad_element(&source, KEY_SCORES, i, "a float", v))
                    })
                    .collect::<Result<Vec<_>>>()?,
            ),
            _ => None,
        };
        let token_types = match file.get(KEY_TOKEN_TYPE) {
            None => None,
            Some(_) => Some(
                file.require_array(KEY_TOKEN_TYPE)?
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        v.as_i64()
                            .ok_or_else(|| bad_element(&source, KEY_TOKEN_TYPE, i, "an integer", v))
                    })
                    .collect::<Result<Vec<_>>>()?,
            ),
        };
        let merges = if is_spm {
            None
        } else {
            Some(string_array(file, KEY_MERGES, &source)?)
        };
        let pre = match file.get(KEY_PRE) {
            None => None,
            Some(_) => Some(file.require_str(KEY_PRE)?.to_owned()),
        };

        let parts = TokenizerParts {
            model: model.to_owned(),
            tokens,
            scores,
            token_types,
            merges,
            pre,
            bos: file.optional_u64(KEY_BOS)?,
            eos: file.optional_u64(KEY_EOS)?,
            eot: file.optional_u64(KEY_EOT)?,
            unk: file.optional_u64(KEY_UNK)?,
            add_bos: file.optional_bool(KEY_ADD_BOS)?,
            add_space_prefix: file.optional_bool(KEY_ADD_SPACE_PREFIX)?,
        };
        Self::from_parts(parts, &source)
    }

    /// Build the tokenizer from already-extracted metadata. `source` names
    /// where it came from (a file path) for error messages.
    pub fn from_parts(parts: TokenizerParts, source: &str) -> Result<Tokenizer> {
        check_model(&parts.model, source)?;
        let is_spm = parts.model == SPM_MODEL;
        // Fail on an unknown pre-tokenizer before the costly work below.
        let pre = if is_spm {
            None
        } else {
            Some(
                bpe::PreTokenizer::from_name(parts.pre.as_deref()).ok_or_else(|| {
                    Error::model(format!(
                        "{source}: key {KEY_PRE}: unsupported pre-tokenizer {:?} (supported: {})",
                        parts.pre.as_deref().unwrap_or_default(),
                        bpe::SUPPORTED_PRE
                    ))
                })?,
            )
        };
        let n = parts.tokens.len();
        if n == 0 {
            return Err(Error::model(format!(
                "{source}: key {KEY_TOKENS}: the vocabulary is empty"
            )));
        }
        if u32::try_from(n).is_err() {
            return Err(Error::model(format!(
                "{source}: key {KEY_TOKENS}: {n} tokens do not fit 32-bit token ids"
            )));
        }

        let types = match parts.token_types {
            None => vec![TokenType::Normal; n],
            Some(t) => {
                check_len(source, KEY_TOKEN_TYPE, n, t.len())?;
                t.into_iter().map(TokenType::from_id).collect()
            }
        };

        // llama.cpp renames empty texts so they cannot match anything, and
        // lets a later duplicate text win the lookup; both kept for parity.
        let texts: Vec<String> = parts
            .tokens
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                if t.is_empty() {
                    log::warn!("{source}: empty token at index {i}");
                    format!("[EMPTY_{i}]")
                } else {
                    t
                }
            })
            .collect();
        let mut piece_to_id = FastMap::with_capacity_and_hasher(n, Default::default());
        for (i, t) in texts.iter().enumerate() {
            piece_to_id.insert(t.clone(), i as u32);
        }

        let special = |value: Option<u64>, default: Option<u32>, key: &str| -> Option<u32> {
            let default = default.filter(|&d| d < n as u32);
            match value {
                Some(id) if id < n as u64 => Some(id as u32),
                Some(id) => {
                    log::warn!(
                        "{source}: key {key}: token id {id} is outside the vocabulary of {n}; using default {default:?}"
                    );
                    default
                }
                None => default,
            }
        };
        // llama.cpp's defaults for SPM vocabularies; a BPE vocabulary has
        // no conventional ids, so an absent key means no such token.
        let spm_default = |id: u32| is_spm.then_some(id);
        let bos = special(parts.bos, spm_default(1), KEY_BOS);
        let eos = special(parts.eos, spm_default(2), KEY_EOS);
        let unk = special(parts.unk, spm_default(0), KEY_UNK);
        let eot = special(parts.eot, None, KEY_EOT);

        let (model, pieces) = match pre {
            None => {
                let scores = match parts.scores {
                    None => vec![0.0; n],
                    Some(s) => {
                        check_len(source, KEY_SCORES, n, s.len())?;
                        // Adding 0.0 turns -0.0 into 0.0 so that the merge
                        // queue's total order ties them, as C++ `<` does.
                        s.into_iter().map(|x| x + 0.0).collect()
                    }
                };
                let mut byte_tokens = [None; 256];
                for (b, slot) in byte_tokens.iter_mut().enumerate() {
                    let hex = format!("<0x{b:02X}>");
                    // Vocabularies without byte tokens may still hold plain
                    // ASCII characters; anything else becomes UNK rather
                    // than vanishing.
                    let plain = (b < 0x80).then(|| piece_to_id.get(&(b as u8 as char).to_string()));
                    *slot = piece_to_id.get(&hex).or(plain.flatten()).copied().or(unk);
                }
                let pieces = texts
                    .iter()
                    .zip(&types)
                    .map(|(text, ty)| render_piece(text, *ty))
                    .collect();
                let spm = Spm {
                    scores,
                    byte_tokens,
                    add_space_prefix: parts.add_space_prefix.unwrap_or(true),
                };
                (Model::Spm(Box::new(spm)), pieces)
            }
            Some(pre) => {
                let merges = parts.merges.ok_or_else(|| {
                    Error::model(format!(
                        "{source}: missing required key {KEY_MERGES} (a BPE vocabulary needs its merge rules)"
                    ))
                })?;
                let bpe = bpe::Bpe::new(pre, &merges, &piece_to_id, source, KEY_MERGES)?;
                let table = bpe::char_to_byte_table();
                let pieces = texts
                    .iter()
                    .zip(&types)
                    .map(|(text, ty)| bpe::render_piece(text, *ty, &table))
                    .collect();
                (Model::Bpe(Box::new(bpe)), pieces)
            }
        };

        let mut specials: Vec<u32> = (0..n as u32)
            .filter(|&i| {
                matches!(
                    types[i as usize],
                    TokenType::UserDefined | TokenType::Control | TokenType::Unknown
                )
            })
            .collect();
        // Longest first so that `<|im_start|>` wins over a shorter token it
        // contains; stable, so equal lengths keep id order.
        specials.sort_by(|&a, &b| texts[b as usize].len().cmp(&texts[a as usize].len()));

        let mut end_of_generation: Vec<u32> = (0..n as u32)
            .filter(|&i| {
                matches!(
                    types[i as usize],
                    TokenType::Control | TokenType::UserDefined
                ) && END_MARKERS.contains(&texts[i as usize].as_str())
            })
            .chain(eos)
            .chain(eot)
            .collect();
        end_of_generation.sort_unstable();
        end_of_generation.dedup();

        Ok(Tokenizer {
            texts,
            types,
            pieces,
            piece_to_id,
            specials,
            end_of_generation,
            bos,
            eos,
            eot,
            unk,
            // SPM models want BOS unless told otherwise; BPE files that do
            // (Llama 3) say so with the key.
            add_bos: parts.add_bos.unwrap_or(is_spm),
            model,
        })
    }

    /// Token ids for `text`, with BOS first if `add_bos` (and the vocabulary
    /// has one). Control-token texts in `text` are treated as plain text, so
    /// user input cannot inject `<|im_start|>` or EOS.
    pub fn encode(&self, text: &str, add_bos: bool) -> Vec<u32> {
        self.encode_fragments(text, add_bos, false)
    }

    /// Like [`encode`](Self::encode), but control tokens written in `text`
    /// (`<|im_start|>`, `<|eot_id|>`, `<s>`) become those tokens: for
    /// prompts that a chat template built, never for raw user input.
    pub fn encode_with_special(&self, text: &str, add_bos: bool) -> Vec<u32> {
        self.encode_fragments(text, add_bos, true)
    }

    fn encode_fragments(&self, text: &str, add_bos: bool, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::new();
        if add_bos {
            out.extend(self.bos);
        }
        if text.is_empty() {
            return out;
        }
        let fragments = self.split_specials(text, parse_special);
        match &self.model {
            Model::Spm(spm) => {
                let vocab = spm::SpmVocab {
                    piece_to_id: &self.piece_to_id,
                    scores: &spm.scores,
                    byte_tokens: &spm.byte_tokens,
                };
                // The start of the text counts as "after a special token",
                // so the first fragment gets the prefix space; so does text
                // right after a special token, which is llama.cpp's rule.
                let mut after_special = true;
                let mut escaped = String::new();
                for fragment in fragments {
                    match fragment {
                        Fragment::Token(id) => {
                            out.push(id);
                            after_special = true;
                        }
                        Fragment::Text(s) => {
                            escaped.clear();
                            if spm.add_space_prefix && after_special {
                                escaped.push(SPACE_MARK);
                            }
                            escaped
                                .extend(s.chars().map(|c| if c == ' ' { SPACE_MARK } else { c }));
                            spm::tokenize(&vocab, &escaped, &mut out);
                            after_special = false;
                        }
                    }
                }
            }
            Model::Bpe(bpe) => {
                for fragment in fragments {
                    match fragment {
                        Fragment::Token(id) => out.push(id),
                        Fragment::Text(s) => bpe.encode(s, &self.piece_to_id, self.unk, &mut out),
                    }
                }
            }
        }
        out
    }

    /// Split out every occurrence of a special token, longest token first,
    /// scanning left to right; never yields empty text. User-defined tokens
    /// always count; control and unknown tokens only if `parse_special`.
    fn split_specials<'a>(&self, text: &'a str, parse_special: bool) -> Vec<Fragment<'a>> {
        let mut fragments = vec![Fragment::Text(text)];
        for &id in &self.specials {
            if !parse_special && self.types[id as usize] != TokenType::UserDefined {
                continue;
            }
            let needle = self.texts[id as usize].as_str();
            let mut next = Vec::with_capacity(fragments.len());
            for fragment in fragments {
                let Fragment::Text(mut rest) = fragment else {
                    next.push(fragment);
                    continue;
                };
                while let Some(at) = rest.find(needle) {
                    if at > 0 {
                        next.push(Fragment::Text(&rest[..at]));
                    }
                    next.push(Fragment::Token(id));
                    rest = &rest[at + needle.len()..];
                }
                if !rest.is_empty() {
                    next.push(Fragment::Text(rest));
                }
            }
            fragments = next;
        }
        fragments
    }

    /// The text of a whole token sequence. Bytes that do not form valid
    /// UTF-8 are replaced with U+FFFD. See the module docs for the
    /// leading-space rule (SPM only).
    pub fn decode(&self, tokens: &[u32]) -> String {
        let strip_first_space = matches!(&self.model, Model::Spm(s) if s.add_space_prefix);
        let mut bytes = Vec::new();
        for (i, &token) in tokens.iter().enumerate() {
            let piece = self.piece(token);
            let piece = match piece {
                [b' ', rest @ ..] if i == 0 && strip_first_space => rest,
                _ => piece,
            };
            bytes.extend_from_slice(piece);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The bytes one token prints as, for streaming output: no space
    /// stripping, so concatenating pieces gives the text as generated. May be
    /// part of a UTF-8 character (SPM byte tokens, most BPE tokens of
    /// non-Latin text): a streaming caller must buffer bytes, not convert
    /// each piece on its own.
    pub fn token_piece(&self, token: u32) -> &[u8] {
        self.piece(token)
    }

    fn piece(&self, token: u32) -> &[u8] {
        self.pieces.get(token as usize).map_or(&[], Vec::as_slice)
    }

    /// Whether generation should stop after `token`: EOS, EOT, or a control
    /// (or user-defined) token spelled like a common end-of-turn marker
    /// (`<|im_end|>`, `<|eot_id|>`, `<|end|>`, `<|endoftext|>`, `</s>`, ...),
    /// since a chat model may end its turn with a marker the file does not
    /// name as EOS.
    pub fn is_end_of_generation(&self, token: u32) -> bool {
        self.end_of_generation.binary_search(&token).is_ok()
    }

    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// End of turn (`tokenizer.ggml.eot_token_id`), if the file names one.
    pub fn eot(&self) -> Option<u32> {
        self.eot
    }

    pub fn unk(&self) -> Option<u32> {
        self.unk
    }

    /// Whether prompts should start with BOS (`tokenizer.ggml.add_bos_token`;
    /// when absent, true for SPM and false for BPE, as in llama.cpp).
    pub fn add_bos_default(&self) -> bool {
        self.add_bos
    }

    pub fn vocab_size(&self) -> usize {
        self.texts.len()
    }

    /// The stored text of a token (`▁the`, `<0x0A>`, `<s>`, `Ġthe`).
    pub fn token_text(&self, token: u32) -> Option<&str> {
        self.texts.get(token as usize).map(String::as_str)
    }

    pub fn token_type(&self, token: u32) -> Option<TokenType> {
        self.types.get(token as usize).copied()
    }
}

/// A hash map with a cheap hasher. Loading a large vocabulary hashes
/// about a million short strings and id pairs (the token index, then the
/// merge table); SipHash's protection against chosen keys buys nothing for
/// keys read from the model file, and costs a good part of the load time.
type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// The multiply-rotate hash of rustc's `FxHasher`, eight bytes at a time.
#[derive(Default, Clone, Copy)]
struct FastHasher(u64);

impl FastHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.add(u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(last));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    /// The multiply leaves the low bits, which pick the bucket, depending
    /// only on the input's low bits (a merge pair's right id alone); the
    /// rotate brings well-mixed high bits down, as rustc-hash 2 does.
    fn finish(&self) -> u64 {
        self.0.rotate_left(26)
    }
}

/// What an SPM token prints as, following llama.cpp's `token_to_piece`
/// with special tokens not rendered.
fn render_piece(text: &str, ty: TokenType) -> Vec<u8> {
    match ty {
        TokenType::Normal => text.replace(SPACE_MARK, " ").into_bytes(),
        TokenType::UserDefined => text.as_bytes().to_vec(),
        TokenType::Byte => match parse_byte_token(text) {
            Some(b) => vec![b],
            // A "byte" token not spelled <0xNN> has no byte to give; its
            // text is the most useful thing to show.
            None => text.as_bytes().to_vec(),
        },
        TokenType::Control | TokenType::Unknown | TokenType::Unused | TokenType::Undefined => {
            Vec::new()
        }
    }
}

/// `<0xNN>` -> NN.
fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

fn check_model(model: &str, source: &str) -> Result<()> {
    if model == SPM_MODEL || model == BPE_MODEL {
        return Ok(());
    }
    Err(Error::model(format!(
        "{source}: key {KEY_MODEL}: unsupported tokenizer {model:?} (supported: {SPM_MODEL:?}, SentencePiece, and {BPE_MODEL:?}, byte-level BPE)"
    )))
}

/// An array of strings, checked element by element.
fn string_array(file: &GgufFile, key: &str, source: &str) -> Result<Vec<String>> {
    file.require_array(key)?
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_str()
                .map(str::to_owned)
                .ok_or_else(|| bad_element(source, key, i, "a string", v))
        })
        .collect()
}

fn check_len(source: &str, key: &str, expected: usize, found: usize) -> Result<()> {
    if expected == found {
        return Ok(());
    }
    Err(Error::model(format!(
        "{source}: key {key}: expected {expected} entries (one per token in {KEY_TOKENS}), found {found}"
    )))
}

fn bad_element(source: &str, key: &str, index: usize, expected: &str, found: &Value) -> Error {
    Error::model(format!(
        "{source}: key {key}: element {index}: expected {expected}, found {} {found}",
        found.type_name()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    /// A tiny vocabulary: UNK, BOS, EOS, all 256 byte tokens, then pieces.
    fn parts(pieces: &[(&str, f32)]) -> TokenizerParts {
        let mut tokens = vec!["<unk>".to_owned(), "<s>".to_owned(), "</s>".to_owned()];
        let mut scores = vec![0.0, 0.0, 0.0];
        let mut types = vec![2, 3, 3];
        for b in 0..=255u8 {
            tokens.push(format!("<0x{b:02X}>"));
            scores.push(0.0);
            types.push(6);
        }
        for &(p, s) in pieces {
            tokens.push(p.to_owned());
            scores.push(s);
            types.push(1);
        }
        TokenizerParts {
            model: "llama".to_owned(),
            tokens,
            scores: Some(scores),
            token_types: Some(types),
            ..Default::default()
        }
    }

    fn id(t: &Tokenizer, piece: &str) -> u32 {
        t.piece_to_id[piece]
    }

    #[test]
    fn rejects_other_tokenizer_models() {
        let mut p = parts(&[]);
        p.model = "bert".to_owned();
        let err = Tokenizer::from_parts(p, "x.gguf").unwrap_err();
        assert_eq!(err.kind, ErrorKind::Model);
        for needle in [
            "unsupported tokenizer",
            "x.gguf",
            KEY_MODEL,
            "bert",
            "llama",
            "gpt2",
        ] {
            assert!(err.message.contains(needle), "{}", err.message);
        }
    }

    #[test]
    fn rejects_mismatched_lengths() {
        let mut p = parts(&[]);
        p.scores.as_mut().unwrap().pop();
        let err = Tokenizer::from_parts(p, "x.gguf").unwrap_err();
        assert!(err.message.contains(KEY_SCORES), "{}", err.message);
        assert!(
            err.message.contains("expected 259") && err.message.contains("found 258"),
            "{}",
            err.message
        );

        let mut p = parts(&[]);
        p.token_types.as_mut().unwrap().push(1);
        let err = Tokenizer::from_parts(p, "x.gguf").unwrap_err();
        assert!(err.message.contains(KEY_TOKEN_TYPE), "{}", err.message);
    }

    #[test]
    fn defaults_follow_llama_cpp() {
        let t = Tokenizer::from_parts(parts(&[]), "x").unwrap();
        assert_eq!((t.unk(), t.bos(), t.eos()), (Some(0), Some(1), Some(2)));
        assert!(t.add_bos_default());
        let mut p = parts(&[]);
        p.bos = Some(100_000); // out of range: keep the default
        p.eos = Some(5);
        p.add_bos = Some(false);
        let t = Tokenizer::from_parts(p, "x").unwrap();
        assert_eq!((t.bos(), t.eos()), (Some(1), Some(5)));
        assert!(!t.add_bos_default());
    }

    #[test]
    fn highest_score_merges_first() {
        // "▁ab" could merge as (▁a)(b) or (▁)(ab); "ab" scores higher, so
        // the first merge is a+b, then ▁+ab is not a piece.
        let t = Tokenizer::from_parts(
            parts(&[("▁a", -1.0), ("ab", -0.5), ("▁", -2.0), ("b", -3.0)]),
            "x",
        )
        .unwrap();
        assert_eq!(t.encode("ab", false), vec![id(&t, "▁"), id(&t, "ab")]);
    }

    #[test]
    fn equal_scores_merge_leftmost_first() {
        // "aaa": both (a,a) pairs score the same; the left one wins, leaving
        // "aa" + "a".
        let mut p = parts(&[("a", -1.0), ("aa", -1.0)]);
        p.add_space_prefix = Some(false);
        let t = Tokenizer::from_parts(p, "x").unwrap();
        assert_eq!(t.encode("aaa", false), vec![id(&t, "aa"), id(&t, "a")]);
    }

    #[test]
    fn unknown_characters_fall_back_to_bytes() {
        let mut p = parts(&[("▁", -1.0)]);
        p.add_space_prefix = Some(true);
        let t = Tokenizer::from_parts(p, "x").unwrap();
        // é is C3 A9.
        assert_eq!(
            t.encode("é", true),
            vec![1, id(&t, "▁"), id(&t, "<0xC3>"), id(&t, "<0xA9>")]
        );
        assert_eq!(t.decode(&t.encode("é", false)), "é");
        assert_eq!(t.token_piece(id(&t, "<0xC3>")), vec![0xC3]);
        assert_eq!(t.token_piece(1), Vec::<u8>::new());
        assert_eq!(t.token_piece(id(&t, "▁")), b" ".to_vec());
    }

    #[test]
    fn missing_byte_tokens_become_unk() {
        let p = TokenizerParts {
            model: "llama".to_owned(),
            tokens: vec!["<unk>".into(), "<s>".into(), "</s>".into(), "▁".into()],
            token_types: Some(vec![2, 3, 3, 1]),
            ..Default::default()
        };
        let t = Tokenizer::from_parts(p, "x").unwrap();
        assert_eq!(t.encode("é", false), vec![3, 0, 0]);
    }

    #[test]
    fn user_defined_tokens_are_split_out() {
        let mut p = parts(&[("▁a", -1.0), ("<tag>", 0.0)]);
        let last = p.token_types.as_ref().unwrap().len() - 1;
        p.token_types.as_mut().unwrap()[last] = 4;
        let t = Tokenizer::from_parts(p, "x").unwrap();
        let tag = id(&t, "<tag>");
        // Text after a user-defined token gets the prefix space again.
        assert_eq!(t.encode("<tag>a", false), vec![tag, id(&t, "▁a")]);
        assert_eq!(t.encode("a<tag>", false), vec![id(&t, "▁a"), tag]);
        assert_eq!(t.token_piece(tag), b"<tag>".to_vec());
    }

    #[test]
    fn empty_text_gives_only_bos() {
        let t = Tokenizer::from_parts(parts(&[]), "x").unwrap();
        assert_eq!(t.encode("", true), vec![1]);
        assert!(t.encode("", false).is_empty());
    }

    #[test]
    fn decode_strips_only_the_first_tokens_space() {
        let t = Tokenizer::from_parts(parts(&[("▁a", -1.0)]), "x").unwrap();
        let a = id(&t, "▁a");
        assert_eq!(t.decode(&[a, a]), "a a");
        // BOS renders as nothing but still occupies the first position.
        assert_eq!(t.decode(&[1, a]), " a");
    }
}
