//! The SentencePiece merge loop, matching llama.cpp's `llm_tokenizer_spm`.
//!
//! The input is one already-escaped fragment (spaces replaced by U+2581, the
//! optional leading space already added). It starts as one symbol per UTF-8
//! character; the adjacent pair whose concatenation is a vocabulary piece
//! with the highest score is merged, again and again, until no pair is in the
//! vocabulary. A priority queue keeps this O(n log n): a merge only creates
//! two new candidate pairs (with its left and right neighbours), and pairs
//! made stale by earlier merges are detected and dropped when popped.

use super::FastMap;
use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// Marks "no neighbour" in the symbol list.
const NONE: usize = usize::MAX;

/// One symbol: a byte range of the fragment, in a doubly linked list so that
/// merging is O(1). A symbol absorbed into its left neighbour gets `len` 0.
#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: usize,
    next: usize,
}

/// A candidate merge of two adjacent symbols.
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    /// Byte length of the merged piece when the pair was queued; if either
    /// side has changed since, the sum no longer matches and the entry is
    /// stale.
    size: usize,
}

impl Ord for Bigram {
    /// Max-heap order: higher score first, and on equal scores the pair
    /// further left first, as llama.cpp's comparator does. `total_cmp` gives
    /// a total order; scores are normalised at load so that -0.0 and 0.0
    /// tie, as they do with C++ `<`.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Bigram {}

/// What the merge loop needs from the vocabulary.
pub(super) struct SpmVocab<'a> {
    pub piece_to_id: &'a FastMap<String, u32>,
    pub scores: &'a [f32],
    /// Token for each byte value when a symbol has no piece of its own.
    pub byte_tokens: &'a [Option<u32>; 256],
}

/// Tokenize one escaped fragment, appending token ids to `out`.
pub(super) fn tokenize(vocab: &SpmVocab<'_>, text: &str, out: &mut Vec<u32>) {
    if text.is_empty() {
        return;
    }
    let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
    for (start, ch) in text.char_indices() {
        let index = symbols.len();
        let len = ch.len_utf8();
        symbols.push(Symbol {
            start,
            len,
            prev: if index == 0 { NONE } else { index - 1 },
            next: if start + len == text.len() {
                NONE
            } else {
                index + 1
            },
        });
    }

    let mut queue = BinaryHeap::with_capacity(symbols.len());
    for right in 1..symbols.len() {
        push_bigram(vocab, text, &symbols, right - 1, right, &mut queue);
    }

    while let Some(bigram) = queue.pop() {
        let left = symbols[bigram.left];
        let right = symbols[bigram.right];
        // Either side already absorbed elsewhere, or grown since this pair
        // was queued: a fresher entry (if any) covers the current pair.
        if left.len == 0 || right.len == 0 || left.len + right.len != bigram.size {
            continue;
        }
        symbols[bigram.left].len += right.len;
        symbols[bigram.right].len = 0;
        symbols[bigram.left].next = right.next;
        if right.next != NONE {
            symbols[right.next].prev = bigram.left;
        }
        let merged = symbols[bigram.left];
        push_bigram(vocab, text, &symbols, merged.prev, bigram.left, &mut queue);
        push_bigram(vocab, text, &symbols, bigram.left, merged.next, &mut queue);
    }

    // Symbol 0 is never absorbed (merges fold right into left), so the
    // surviving chain starts there.
    let mut i = 0;
    while i != NONE {
        let sym = symbols[i];
        let piece = &text[sym.start..sym.start + sym.len];
        match vocab.piece_to_id.get(piece) {
            Some(&id) => out.push(id),
            // Every merged symbol is a vocabulary piece by construction, so
            // only single characters get here. llama.cpp's `rev_merge`
            // re-segmentation therefore never applies; the character falls
            // back to one token per UTF-8 byte.
            None => out.extend(piece.bytes().filter_map(|b| vocab.byte_tokens[b as usize])),
        }
        i = sym.next;
    }
}

/// Queue the pair (`left`, `right`) if their concatenation is a piece.
fn push_bigram(
    vocab: &SpmVocab<'_>,
    text: &str,
    symbols: &[Symbol],
    left: usize,
    right: usize,
    queue: &mut BinaryHeap<Bigram>,
) {
    if left == NONE || right == NONE {
        return;
    }
    // Live neighbours are contiguous in the fragment, so the concatenation
    // is a slice of it and the lookup allocates nothing.
    let start = symbols[left].start;
    let size = symbols[left].len + symbols[right].len;
    if let Some(&id) = vocab.piece_to_id.get(&text[start..start + size]) {
        queue.push(Bigram {
            score: vocab.scores[id as usize],
            left,
            right,
            size,
        });
    }
}
