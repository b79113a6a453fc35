//! Byte-level BPE (GGUF `tokenizer.ggml.model = "gpt2"`), as used by GPT-2,
//! Llama 3, Qwen2/3 and SmolLM.
//!
//! Encoding a text fragment takes three steps:
//!
//! 1. *Pre-tokenization* cuts the text into words with the rules of the
//!    model's regular expression (`tokenizer.ggml.pre` names which). The
//!    expressions are written here as hand-made scanners over characters:
//!    they need a lookahead (`\s+(?!\S)`) that Rust's `regex` lacks, and the
//!    scanners allocate nothing per match. Letters and numbers are Unicode
//!    general categories L* and N* (`char::is_alphabetic` would wrongly take
//!    combining marks such as Khmer vowel signs); `\s` is Unicode White_Space.
//! 2. Each word's UTF-8 bytes become one symbol per byte, each byte spelled as
//!    the printable character GPT-2 assigned it ([`byte_to_char`]), so every
//!    vocabulary entry is a string of such characters.
//! 3. Adjacent symbols are merged, lowest merge rank (earliest line of
//!    `tokenizer.ggml.merges`) first and leftmost on ties, until no adjacent
//!    pair has a merge; each remaining symbol is a token.
//!
//! Decoding maps each character of a token back to its byte, so a token's
//! piece is raw bytes that may end inside a UTF-8 character.

use super::{FastMap, TokenType};
use crate::error::{Error, Result};
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use unicode_general_category::{get_general_category, GeneralCategory};

/// The `tokenizer.ggml.pre` values understood, for error messages.
pub(super) const SUPPORTED_PRE: &str =
    "\"llama-bpe\" (also \"llama3\", \"llama-v3\"), \"qwen2\", \"smollm\", \"gpt-2\", \"default\" or none";

/// How text is cut into words before merging; one per family of
/// pre-tokenizer expressions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PreTokenizer {
    /// GPT-2: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
    Gpt2,
    /// Llama 3: contractions in any case, `[^\r\n\p{L}\p{N}]?\p{L}+`,
    /// `\p{N}{1,3}`, ` ?[^\s\p{L}\p{N}]+[\r\n]*`, `\s*[\r\n]+`, `\s+(?!\S)`,
    /// `\s+`.
    Llama3,
    /// Qwen2: Llama 3's rules with numbers one digit at a time (`\p{N}`).
    Qwen2,
    /// SmolLM (and StarCoder): every number character is first cut out as
    /// a word of its own; the text between is then split by the GPT-2 rules,
    /// each piece on its own (so a space before a digit stays a separate
    /// word and lookahead stops at the piece's end).
    SmolLm,
}

impl PreTokenizer {
    /// The pre-tokenizer for a `tokenizer.ggml.pre` value; `None` (key
    /// absent) and `"default"` mean GPT-2's rules, which is what vocabularies
    /// converted before the key existed were made with.
    pub fn from_name(name: Option<&str>) -> Option<PreTokenizer> {
        match name {
            None | Some("default" | "gpt-2") => Some(PreTokenizer::Gpt2),
            Some("llama-bpe" | "llama3" | "llama-v3") => Some(PreTokenizer::Llama3),
            Some("qwen2") => Some(PreTokenizer::Qwen2),
            Some("smollm") => Some(PreTokenizer::SmolLm),
            Some(_) => None,
        }
    }

    /// Cut `text` into words, appending them in order to `words`. The words
    /// cover `text` exactly.
    pub fn split<'a>(self, text: &'a str, words: &mut Vec<&'a str>) {
        let chars = Chars::new(text);
        match self {
            PreTokenizer::Gpt2 => chars.split(0, chars.len(), gpt2_word, words),
            PreTokenizer::Llama3 => {
                chars.split(0, chars.len(), |c, i, n| llama3_word(c, i, n, 3), words)
            }
            PreTokenizer::Qwen2 => {
                chars.split(0, chars.len(), |c, i, n| llama3_word(c, i, n, 1), words)
            }
            PreTokenizer::SmolLm => {
                let mut start = 0;
                for i in 0..chars.len() {
                    if chars.class[i] == Class::Number {
                        chars.split(start, i, gpt2_word, words);
                        words.push(chars.slice(i, i + 1));
                        start = i + 1;
                    }
                }
                chars.split(start, chars.len(), gpt2_word, words);
            }
        }
    }
}

/// The character classes the pre-tokenizer expressions distinguish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// `\p{L}`: general categories Lu, Ll, Lt, Lm, Lo.
    Letter,
    /// `\p{N}`: Nd, Nl, No.
    Number,
    /// `\s`: Unicode White_Space.
    Space,
    /// `[^\s\p{L}\p{N}]`: everything else (punctuation, symbols, marks).
    Other,
}

fn classify(c: char) -> Class {
    if c.is_ascii() {
        return match c {
            'a'..='z' | 'A'..='Z' => Class::Letter,
            '0'..='9' => Class::Number,
            ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c' => Class::Space,
            _ => Class::Other,
        };
    }
    if c.is_whitespace() {
        return Class::Space;
    }
    use GeneralCategory as G;
    match get_general_category(c) {
        G::UppercaseLetter
        | G::LowercaseLetter
        | G::TitlecaseLetter
        | G::ModifierLetter
        | G::OtherLetter => Class::Letter,
        G::DecimalNumber | G::LetterNumber | G::OtherNumber => Class::Number,
        _ => Class::Other,
    }
}

/// A text fragment as characters with their classes and byte offsets, so
/// the scanners can look ahead by index and hand back `&str` slices.
struct Chars<'a> {
    text: &'a str,
    chars: Vec<char>,
    class: Vec<Class>,
    /// Byte offset of each character, plus the text's length at the end.
    offsets: Vec<usize>,
}

impl<'a> Chars<'a> {
    fn new(text: &'a str) -> Chars<'a> {
        let mut chars = Vec::with_capacity(text.len());
        let mut offsets = Vec::with_capacity(text.len() + 1);
        for (at, c) in text.char_indices() {
            chars.push(c);
            offsets.push(at);
        }
        offsets.push(text.len());
        let class = chars.iter().map(|&c| classify(c)).collect();
        Chars {
            text,
            chars,
            class,
            offsets,
        }
    }

    fn len(&self) -> usize {
        self.chars.len()
    }

    fn slice(&self, start: usize, end: usize) -> &'a str {
        &self.text[self.offsets[start]..self.offsets[end]]
    }

    /// Split characters `start..end` into words with `word`, which returns
    /// where the word starting at `i` ends, given the characters of this
    /// piece only (`end` acts as the end of the text).
    fn split(
        &self,
        start: usize,
        end: usize,
        word: impl Fn(&View<'_>, usize, usize) -> usize,
        words: &mut Vec<&'a str>,
    ) {
        let view = View {
            chars: &self.chars[..end],
            class: &self.class[..end],
        };
        let mut i = start;
        while i < end {
            let next = word(&view, i, end).clamp(i + 1, end);
            words.push(self.slice(i, next));
            i = next;
        }
    }
}

/// The characters a scanner may look at (everything past the piece's end is
/// cut off, so lookahead cannot see it).
struct View<'a> {
    chars: &'a [char],
    class: &'a [Class],
}

impl View<'_> {
    /// End of the run of `class` characters starting at `i`.
    fn run_end(&self, i: usize, class: Class) -> usize {
        let mut j = i;
        while j < self.class.len() && self.class[j] == class {
            j += 1;
        }
        j
    }

    fn class_at(&self, i: usize) -> Option<Class> {
        self.class.get(i).copied()
    }

    fn is_newline(&self, i: usize) -> bool {
        matches!(self.chars.get(i), Some('\r' | '\n'))
    }

    /// Length of the English contraction (`'s 't 're 've 'm 'll 'd`) at `i`,
    /// if any; `any_case` also takes `'S`, `'Re`, ... (Llama 3, Qwen2).
    fn contraction(&self, i: usize, any_case: bool) -> Option<usize> {
        if self.chars[i] != '\'' {
            return None;
        }
        let at = |k: usize| {
            self.chars
                .get(i + k)
                .map(|&c| if any_case { c.to_ascii_lowercase() } else { c })
        };
        match (at(1), at(2)) {
            (Some('r'), Some('e')) | (Some('v'), Some('e')) | (Some('l'), Some('l')) => Some(3),
            (Some('s' | 't' | 'm' | 'd'), _) => Some(2),
            _ => None,
        }
    }

    /// The whitespace rules every family ends with: `\s+(?!\S)` takes the
    /// run but leaves its last character when a non-space follows (so that
    /// character can lead the next word), and `\s+` takes a lone one.
    fn trailing_space_rule(&self, i: usize, n: usize) -> usize {
        let j = self.run_end(i, Class::Space);
        if j == n || j - i == 1 {
            j
        } else {
            j - 1
        }
    }
}

/// End of the GPT-2 word starting at `i` (`n` = end of the piece).
fn gpt2_word(v: &View<'_>, i: usize, n: usize) -> usize {
    if let Some(len) = v.contraction(i, false) {
        return i + len;
    }
    // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`: one leading space joins
    // whatever non-space run follows it.
    let start = match v.class_at(i + 1) {
        Some(next) if v.chars[i] == ' ' && next != Class::Space => i + 1,
        _ => i,
    };
    match v.class[start] {
        Class::Space => v.trailing_space_rule(i, n),
        class => v.run_end(start, class),
    }
}

/// End of the Llama 3 word starting at `i`; `max_digits` is 3 for Llama 3
/// (`\p{N}{1,3}`) and 1 for Qwen2 (`\p{N}`).
fn llama3_word(v: &View<'_>, i: usize, n: usize, max_digits: usize) -> usize {
    if let Some(len) = v.contraction(i, true) {
        return i + len;
    }
    let class = v.class[i];
    // `[^\r\n\p{L}\p{N}]?\p{L}+`: a letter run, optionally led by one
    // character that is neither a newline nor a number (a space, a tab,
    // punctuation).
    if class == Class::Letter {
        return v.run_end(i, Class::Letter);
    }
    if class != Class::Number && !v.is_newline(i) && v.class_at(i + 1) == Some(Class::Letter) {
        return v.run_end(i + 1, Class::Letter);
    }
    // `\p{N}{1,3}`
    if class == Class::Number {
        return v.run_end(i, Class::Number).min(i + max_digits);
    }
    // ` ?[^\s\p{L}\p{N}]+[\r\n]*`: punctuation, with one leading space and
    // any newlines right after it.
    let start = if v.chars[i] == ' ' && v.class_at(i + 1) == Some(Class::Other) {
        i + 1
    } else {
        i
    };
    if v.class[start] == Class::Other {
        let mut j = v.run_end(start, Class::Other);
        while v.is_newline(j) {
            j += 1;
        }
        return j;
    }
    // `\s*[\r\n]+`: whitespace up to and including the run's last newline
    // (the greedy `\s*` backs off only as far as that newline).
    let run = v.run_end(i, Class::Space);
    if let Some(last) = (i..run).rev().find(|&p| v.is_newline(p)) {
        return last + 1;
    }
    v.trailing_space_rule(i, n)
}

/// GPT-2's reversible byte -> character map: printable Latin-1 bytes map to
/// themselves, the other 68 (controls, space, 0x7F-0xA0, 0xAD) to U+0100
/// onwards in byte order. It exists so that every vocabulary entry is
/// printable text with no spaces, hence `"a b"` can separate merge halves.
pub(super) fn byte_to_char() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut next = 256u32;
    for (b, slot) in map.iter_mut().enumerate() {
        let printable = matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
        let code = if printable {
            b as u32
        } else {
            next += 1;
            next - 1
        };
        *slot = char::from_u32(code).expect("code points below 0x144 are valid");
    }
    map
}

/// The inverse of [`byte_to_char`]: index by code point (all below 0x144).
pub(super) fn char_to_byte_table() -> Vec<Option<u8>> {
    let mut table = vec![None; 0x144];
    for (b, c) in byte_to_char().iter().enumerate() {
        table[*c as usize] = Some(b as u8);
    }
    table
}

/// What a token prints as. Normal tokens map back through the byte map;
/// user-defined tokens are stored as plain text; control and unused tokens
/// print nothing (llama.cpp's `token_to_piece` without special rendering).
pub(super) fn render_piece(text: &str, ty: TokenType, table: &[Option<u8>]) -> Vec<u8> {
    match ty {
        TokenType::Normal | TokenType::Byte => {
            let mut out = Vec::with_capacity(text.len());
            for c in text.chars() {
                match table.get(c as usize).copied().flatten() {
                    Some(b) => out.push(b),
                    // Not a mapped character: a malformed entry; its own
                    // UTF-8 is the most useful thing to show.
                    None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                }
            }
            out
        }
        TokenType::UserDefined => text.as_bytes().to_vec(),
        TokenType::Control | TokenType::Unknown | TokenType::Unused | TokenType::Undefined => {
            Vec::new()
        }
    }
}

/// One merge rule, found by the pair of token ids it joins.
#[derive(Debug, Clone, Copy)]
struct Merge {
    rank: u32,
    merged: u32,
}

/// The merge tables of a byte-level BPE vocabulary.
#[derive(Debug, Clone)]
pub(super) struct Bpe {
    pre: PreTokenizer,
    /// `(left id << 32) | right id` -> rule. Keyed by ids rather than
    /// strings so that the merge loop compares integers and allocates
    /// nothing.
    merges: FastMap<u64, Merge>,
    /// The token of each byte's character, the starting symbols.
    byte_tokens: [Option<u32>; 256],
    byte_chars: [char; 256],
    /// Llama 3's tokenizer takes a word that is itself a token as that token
    /// without merging (Hugging Face's `ignore_merges`); the merge path can
    /// end elsewhere for a few words.
    ignore_merges: bool,
}

impl Bpe {
    /// Build the merge tables. `merges` are `tokenizer.ggml.merges` lines,
    /// `"left right"`; a rule whose halves or result are not tokens can
    /// never fire on token ids and is skipped (with a warning).
    pub fn new(
        pre: PreTokenizer,
        merges: &[String],
        piece_to_id: &FastMap<String, u32>,
        source: &str,
        merges_key: &str,
    ) -> Result<Bpe> {
        let byte_chars = byte_to_char();
        let mut byte_tokens = [None; 256];
        for (slot, c) in byte_tokens.iter_mut().zip(byte_chars) {
            *slot = piece_to_id.get(c.encode_utf8(&mut [0; 4]) as &str).copied();
        }
        let mut table = FastMap::with_capacity_and_hasher(merges.len(), Default::default());
        let mut skipped = 0usize;
        let mut joined = String::new();
        for (rank, line) in merges.iter().enumerate() {
            // The split is at the first space after the first character, as
            // in llama.cpp, so that a left half starting with a literal
            // space still parses.
            let split = line
                .char_indices()
                .skip(1)
                .find(|&(_, c)| c == ' ')
                .map(|(at, _)| at);
            let Some(at) = split else {
                return Err(Error::model(format!(
                    "{source}: key {merges_key}: entry {rank} {line:?} is not two tokens separated by a space"
                )));
            };
            let (left, right) = (&line[..at], &line[at + 1..]);
            joined.clear();
            joined.push_str(left);
            joined.push_str(right);
            match (
                piece_to_id.get(left),
                piece_to_id.get(right),
                piece_to_id.get(joined.as_str()),
            ) {
                (Some(&l), Some(&r), Some(&m)) => {
                    // A repeated pair keeps its first (lowest) rank.
                    table.entry(pair_key(l, r)).or_insert(Merge {
                        rank: rank as u32,
                        merged: m,
                    });
                }
                _ => skipped += 1,
            }
        }
        if skipped > 0 {
            log::warn!(
                "{source}: key {merges_key}: {skipped} merges name strings that are not tokens; ignored"
            );
        }
        Ok(Bpe {
            pre,
            merges: table,
            byte_tokens,
            byte_chars,
            ignore_merges: pre == PreTokenizer::Llama3,
        })
    }

    /// Tokenize one text fragment (no special tokens in it), appending ids
    /// to `out`. Bytes whose character is not a token become `unk`, or are
    /// dropped if the vocabulary has none.
    pub fn encode(
        &self,
        text: &str,
        piece_to_id: &FastMap<String, u32>,
        unk: Option<u32>,
        out: &mut Vec<u32>,
    ) {
        let mut words = Vec::new();
        self.pre.split(text, &mut words);
        let mut mapped = String::new();
        let mut symbols = Vec::new();
        let mut queue = BinaryHeap::new();
        for word in words {
            if word.is_empty() {
                continue;
            }
            if self.ignore_merges {
                mapped.clear();
                mapped.extend(word.bytes().map(|b| self.byte_chars[b as usize]));
                if let Some(&id) = piece_to_id.get(&mapped) {
                    out.push(id);
                    continue;
                }
            }
            self.merge_word(word.as_bytes(), &mut symbols, &mut queue);
            let mut i = 0;
            while i != NONE {
                match symbols[i].id {
                    Some(id) => out.push(id),
                    None => out.extend(unk),
                }
                i = symbols[i].next;
            }
        }
    }

    /// The merge loop over one word, leaving the surviving symbols as a
    /// linked list from index 0. A heap keeps it O(n log n) in the word's
    /// length: a merge creates only two new candidate pairs (with its
    /// neighbours), and pairs made stale by earlier merges are skipped when
    /// popped.
    fn merge_word(
        &self,
        bytes: &[u8],
        symbols: &mut Vec<Symbol>,
        queue: &mut BinaryHeap<Candidate>,
    ) {
        symbols.clear();
        queue.clear();
        let n = bytes.len();
        symbols.extend(bytes.iter().enumerate().map(|(i, &b)| Symbol {
            id: self.byte_tokens[b as usize],
            prev: if i == 0 { NONE } else { i - 1 },
            next: if i + 1 == n { NONE } else { i + 1 },
        }));
        for right in 1..n {
            self.push_pair(symbols, right - 1, right, queue);
        }
        while let Some(c) = queue.pop() {
            let (left, right) = (symbols[c.left], symbols[c.right]);
            // Stale if either side has merged since (its id changed or it
            // was absorbed, which unlinks it from `left`).
            if left.next != c.right || left.id != Some(c.left_id) || right.id != Some(c.right_id) {
                continue;
            }
            symbols[c.left].id = Some(c.merged);
            symbols[c.left].next = right.next;
            symbols[c.right].id = None;
            symbols[c.right].next = NONE;
            symbols[c.right].prev = NONE;
            if right.next != NONE {
                symbols[right.next].prev = c.left;
            }
            self.push_pair(symbols, left.prev, c.left, queue);
            self.push_pair(symbols, c.left, right.next, queue);
        }
    }

    fn push_pair(
        &self,
        symbols: &[Symbol],
        left: usize,
        right: usize,
        queue: &mut BinaryHeap<Candidate>,
    ) {
        if left == NONE || right == NONE {
            return;
        }
        let (Some(l), Some(r)) = (symbols[left].id, symbols[right].id) else {
            return;
        };
        if let Some(m) = self.merges.get(&pair_key(l, r)) {
            queue.push(Candidate {
                rank: m.rank,
                left,
                right,
                left_id: l,
                right_id: r,
                merged: m.merged,
            });
        }
    }
}

fn pair_key(left: u32, right: u32) -> u64 {
    (u64::from(left) << 32) | u64::from(right)
}

/// Marks "no neighbour" in the symbol list.
const NONE: usize = usize::MAX;

/// One symbol of a word being merged; `id` is `None` for a byte with no
/// token (never merges) and for symbols absorbed into their left neighbour
/// (unlinked, so never reached).
#[derive(Debug, Clone, Copy)]
struct Symbol {
    id: Option<u32>,
    prev: usize,
    next: usize,
}

/// A candidate merge of two adjacent symbols, with the ids they had when
/// queued so that stale entries can be recognised.
#[derive(Debug)]
struct Candidate {
    rank: u32,
    left: usize,
    right: usize,
    left_id: u32,
    right_id: u32,
    merged: u32,
}

impl Ord for Candidate {
    /// Max-heap order, so "greater" pops first: the lowest rank, and on
    /// equal ranks the pair further left.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .rank
            .cmp(&self.rank)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Candidate {}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(pre: PreTokenizer, text: &str) -> Vec<&str> {
        let mut out = Vec::new();
        pre.split(text, &mut out);
        assert_eq!(out.concat(), text, "words must cover the text");
        out
    }

    #[test]
    fn pre_tokenizer_names() {
        use PreTokenizer::*;
        for (name, pre) in [
            (None, Gpt2),
            (Some("default"), Gpt2),
            (Some("gpt-2"), Gpt2),
            (Some("llama-bpe"), Llama3),
            (Some("llama3"), Llama3),
            (Some("qwen2"), Qwen2),
            (Some("smollm"), SmolLm),
        ] {
            assert_eq!(PreTokenizer::from_name(name), Some(pre), "{name:?}");
        }
        assert_eq!(PreTokenizer::from_name(Some("deepseek-llm")), None);
    }

    #[test]
    fn byte_map_is_gpt2s() {
        let map = byte_to_char();
        assert_eq!(map[b'!' as usize], '!');
        assert_eq!(map[b' ' as usize], 'Ġ');
        assert_eq!(map[b'\n' as usize], 'Ċ');
        assert_eq!(map[0], '\u{100}');
        assert_eq!(map[0xAD], '\u{143}');
        let table = char_to_byte_table();
        for (b, c) in map.iter().enumerate() {
            assert_eq!(table[*c as usize], Some(b as u8));
        }
    }

    #[test]
    fn gpt2_rules() {
        use PreTokenizer::Gpt2;
        assert_eq!(
            words(Gpt2, "Hello, world! It's 2024"),
            ["Hello", ",", " world", "!", " It", "'s", " 2024"]
        );
        // A space run keeps its last space for the next word; a run at
        // the end stays whole.
        assert_eq!(words(Gpt2, "a   b  "), ["a", "  ", " b", "  "]);
        assert_eq!(words(Gpt2, "\n\nx"), ["\n", "\n", "x"]);
        assert_eq!(words(Gpt2, "'S"), ["'", "S"]);
    }

    #[test]
    fn llama3_rules() {
        use PreTokenizer::Llama3;
        assert_eq!(
            words(Llama3, "Hello, world! It'S 12345"),
            ["Hello", ",", " world", "!", " It", "'S", " ", "123", "45"]
        );
        assert_eq!(words(Llama3, "\tfoo;bar"), ["\tfoo", ";bar"]);
        assert_eq!(words(Llama3, "x.\n\ny"), ["x", ".\n\n", "y"]);
        assert_eq!(words(Llama3, "a \n \n  b"), ["a", " \n \n", " ", " b"]);
        assert_eq!(words(PreTokenizer::Qwen2, "123"), ["1", "2", "3"]);
    }

    #[test]
    fn combining_marks_are_not_letters() {
        // U+17B6 KHMER VOWEL SIGN AA is Mc: alphabetic, but not \p{L}.
        assert_eq!(classify('\u{17B6}'), Class::Other);
        assert_eq!(classify('ក'), Class::Letter);
        assert_eq!(classify('½'), Class::Number);
        assert_eq!(classify('\u{3000}'), Class::Space);
    }

    #[test]
    fn smollm_cuts_digits_first() {
        use PreTokenizer::SmolLm;
        // GPT-2 alone would give " 12"; here the space is left alone and
        // each digit is a word.
        assert_eq!(words(SmolLm, "a  12b"), ["a", "  ", "1", "2", "b"]);
        assert_eq!(words(SmolLm, "x 1"), ["x", " ", "1"]);
    }
}
