//! Per-position operations: norms, RoPE, softmax, attention, SwiGLU.
//!
//! They are small next to the matmuls except attention over a long context,
//! which [`CpuBackend::attention_batch`] spreads over the pool by
//! (position, kv head).

use std::sync::atomic::{AtomicUsize, Ordering};

use super::isa::Isa;
use super::kernels::FloatOps;
use super::CpuBackend;
use crate::backend::Weight;
use crate::error::Result;
use crate::kv_cache::{KvBlocks, KvPart, KvRows, F16_MAX_HEAD_DIM};
use crate::quant;

/// Dequantize a single-row weight (a norm vector) into `out`.
pub fn dequantize_vector(w: Weight<'_>, out: &mut [f32]) {
    quant::dequantize_row(w.ggml_type, w.data, out);
}

/// `out = x / rms(x) * weight`, one position.
pub fn rmsnorm(out: &mut [f32], x: &[f32], weight: &[f32], eps: f32) {
    let mean_sq = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let scale = 1.0 / (mean_sq + eps).sqrt();
    for ((o, &xi), &wi) in out.iter_mut().zip(x).zip(weight) {
        *o = xi * scale * wi;
    }
}

/// Rotate adjacent pairs `(x[2i], x[2i+1])` of every head by the angles for
/// one position. GGUF llama files store Q/K rows permuted so that RoPE pairs
/// adjacent elements (ggml's "normal" mode). `cos_sin` holds
/// `(cos, sin)` for each pair index `i < rope_dims / 2` at this position.
pub fn rope(x: &mut [f32], head_dim: usize, cos_sin: &[(f32, f32)]) {
    for head in x.chunks_exact_mut(head_dim) {
        for (pair, &(c, s)) in head.chunks_exact_mut(2).zip(cos_sin) {
            let (a, b) = (pair[0], pair[1]);
            pair[0] = a * c - b * s;
            pair[1] = a * s + b * c;
        }
    }
}

/// Rotate the halves `(x[i], x[i + rot/2])` of every head by the angles
/// for one position, `rot = 2 * cos_sin.len()` leading dimensions (GPT-NeoX
/// layout: Qwen, Phi-3). `cos_sin` is as for [`rope`].
pub fn rope_neox(x: &mut [f32], head_dim: usize, cos_sin: &[(f32, f32)]) {
    let half = cos_sin.len();
    for head in x.chunks_exact_mut(head_dim) {
        let (lo, hi) = head[..2 * half].split_at_mut(half);
        for ((a, b), &(c, s)) in lo.iter_mut().zip(hi.iter_mut()).zip(cos_sin) {
            let (x0, x1) = (*a, *b);
            *a = x0 * c - x1 * s;
            *b = x0 * s + x1 * c;
        }
    }
}

/// RMSNorm of each `weight.len()`-wide head of `x`, in place (Qwen 3's
/// q and k norms). `tmp` holds one head.
pub fn rmsnorm_heads(x: &mut [f32], weight: &[f32], eps: f32, tmp: &mut [f32]) {
    let width = weight.len();
    let tmp = &mut tmp[..width];
    for head in x.chunks_exact_mut(width) {
        tmp.copy_from_slice(head);
        rmsnorm(head, tmp, weight, eps);
    }
}

/// `x[row] += bias` for every `bias.len()`-wide row of `x`.
pub fn add_bias(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        add_in_place(row, bias);
    }
}

/// In-place softmax.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// A model's attention heads and sliding window: the same for every
/// layer and pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnHeads {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Cached positions a query sees at most, its own included (`None`:
    /// all before it).
    pub window: Option<usize>,
}

impl AttnHeads {
    /// The pass of `n` queries at positions `start_pos..start_pos + n`.
    pub fn pass(self, start_pos: usize, n: usize) -> AttnPass {
        AttnPass {
            heads: self,
            start_pos,
            n,
        }
    }
}

/// One attention pass of a sequence: `n` consecutive queries from
/// `start_pos`, each seeing its sequence's cache up to itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnPass {
    pub heads: AttnHeads,
    pub start_pos: usize,
    pub n: usize,
}

/// Where one query head reads the cache.
#[derive(Clone, Copy)]
struct HeadLayout {
    head_dim: usize,
    kv_dim: usize,
    /// Heads sharing one kv head.
    group: usize,
    scale: f32,
}

impl HeadLayout {
    fn new(n_heads: usize, n_kv_heads: usize, head_dim: usize) -> HeadLayout {
        assert!(
            n_kv_heads > 0 && n_heads.is_multiple_of(n_kv_heads),
            "attention: {n_heads} heads do not share {n_kv_heads} kv heads evenly"
        );
        HeadLayout {
            head_dim,
            kv_dim: n_kv_heads * head_dim,
            group: n_heads / n_kv_heads,
            scale: 1.0 / (head_dim as f32).sqrt(),
        }
    }
}

/// Query heads `heads` of one position, which all read kv head `kv`,
/// against `n_seen` cached positions. Per head: scores by the fixed-layout
/// f32 dot, softmax, then the values summed in position order with
/// `out += p * v` (identical on every instruction set). Heads of a group
/// are computed together so that each cached key and value row is read
/// once for all of them, not once per head.
///
/// `q` and `out` hold the group's heads (`heads.len() x head_dim`);
/// `scores` holds at least `heads.len() * n_seen` floats.
#[allow(clippy::too_many_arguments)]
fn attend_group(
    ops: FloatOps,
    l: HeadLayout,
    kv: usize,
    heads: usize,
    out: &mut [f32],
    q: &[f32],
    k_cache: KvRows<'_>,
    v_cache: KvRows<'_>,
    n_seen: usize,
    scores: &mut [f32],
) {
    let hd = l.head_dim;
    let kv_off = kv * hd;
    let scores = &mut scores[..heads * n_seen];
    // One widened row of an f16 cache (unused with an f32 cache, whose rows
    // are read in place).
    let mut row = [0.0f32; F16_MAX_HEAD_DIM];
    for t in 0..n_seen {
        let k = k_cache.values(t * l.kv_dim + kv_off, hd, &mut row);
        for (h, qh) in q.chunks_exact(hd).enumerate() {
            scores[h * n_seen + t] = ops.dot(qh, k) * l.scale;
        }
    }
    for s in scores.chunks_exact_mut(n_seen) {
        softmax(s);
    }
    out.fill(0.0);
    for t in 0..n_seen {
        let v = v_cache.values(t * l.kv_dim + kv_off, hd, &mut row);
        for (h, oh) in out.chunks_exact_mut(hd).enumerate() {
            ops.axpy(oh, scores[h * n_seen + t], v);
        }
    }
}

/// Causal attention for one query position over `n_ctx` cached positions.
///
/// `q` is `n_heads x head_dim`; `k_cache` and `v_cache` are
/// `n_ctx x (n_kv_heads * head_dim)`; query head `h` reads kv head
/// `h / (n_heads / n_kv_heads)` (GQA; MQA when there is one kv head).
/// `scores` is scratch of at least `n_ctx`; `out` is `n_heads x head_dim`.
/// Gives the same bits as [`CpuBackend::attention_batch`].
#[allow(clippy::too_many_arguments)]
pub fn attention(
    out: &mut [f32],
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    n_ctx: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    scores: &mut [f32],
) {
    let l = HeadLayout::new(n_heads, n_kv_heads, head_dim);
    let ops = FloatOps::new(Isa::best());
    // One head at a time: `scores` only promises room for one.
    for (h, (oh, qh)) in out
        .chunks_exact_mut(head_dim)
        .zip(q.chunks_exact(head_dim))
        .enumerate()
        .take(n_heads)
    {
        attend_group(
            ops,
            l,
            h / l.group,
            1,
            oh,
            qh,
            KvRows::F32(k_cache),
            KvRows::F32(v_cache),
            n_ctx,
            scores,
        );
    }
}

/// Output rows written by threads at disjoint heads.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: every (position, head) slice is written by exactly one work item,
// and the dispatch joins all threads before `out` is used again.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// Through a method, so closures capture the wrapper (which is Sync)
    /// rather than the raw pointer field.
    fn at(self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

impl CpuBackend {
    /// Causal attention for `n` consecutive positions `start_pos..start_pos
    /// + n`, spread over the pool by (position, kv head). Position `p` sees
    /// cache entries `0..=start_pos + p`, or with a sliding `window` only
    /// the last `window` of them.
    ///
    /// `q` and `out` are `n x (n_heads * head_dim)`; `k_cache` and `v_cache`
    /// hold at least `start_pos + n` positions of `n_kv_heads * head_dim`.
    /// `scores` is scratch of at least `threads() * (start_pos + n)` floats,
    /// split evenly between threads; allocate it once for the longest
    /// context. With `threads() * (n_heads / n_kv_heads) * n_ctx` floats,
    /// all query heads of a kv head run together and each cached row is
    /// read once per kv head instead of once per query head (GQA: several
    /// times less cache traffic at long contexts). Each output equals what
    /// [`attention`] computes for that position, whatever the thread count
    /// or scratch size.
    pub fn attention_batch(
        &self,
        out: &mut [f32],
        q: &[f32],
        k_cache: KvRows<'_>,
        v_cache: KvRows<'_>,
        pass: AttnPass,
        scores: &mut [f32],
    ) {
        let AttnPass {
            heads:
                AttnHeads {
                    n_heads,
                    n_kv_heads,
                    head_dim,
                    window,
                },
            start_pos,
            n,
        } = pass;
        let l = HeadLayout::new(n_heads, n_kv_heads, head_dim);
        let q_dim = n_heads * head_dim;
        let n_ctx = start_pos + n;
        assert_eq!(q.len(), n * q_dim, "attention_batch: query length");
        assert_eq!(out.len(), n * q_dim, "attention_batch: output length");
        assert!(
            k_cache.len() >= n_ctx * l.kv_dim && v_cache.len() >= n_ctx * l.kv_dim,
            "attention_batch: cache shorter than {n_ctx} positions"
        );
        let stride = scores.len() / self.threads;
        assert!(
            stride >= n_ctx,
            "attention_batch: scores hold {} floats, need {} threads x {n_ctx}",
            scores.len(),
            self.threads
        );
        // Work items are (position, kv head), each taking up to `per_item`
        // query heads of the group at a time, as many as the scratch holds.
        let n_kv = n_kv_heads;
        let per_item = (stride / n_ctx).clamp(1, l.group);
        let ops = FloatOps::new(self.isa);
        let items = n * n_kv;
        let next = AtomicUsize::new(0);
        let out_ptr = SharedMut(out.as_mut_ptr());
        let scores_ptr = SharedMut(scores.as_mut_ptr());
        let work = |worker: usize| {
            // SAFETY: worker `i` alone uses scores[i * stride..][..stride],
            // inside `scores` since i < threads and stride * threads <= len.
            let scores =
                unsafe { std::slice::from_raw_parts_mut(scores_ptr.at(worker * stride), stride) };
            loop {
                let item = next.fetch_add(1, Ordering::Relaxed);
                if item >= items {
                    return;
                }
                let (p, kv) = (item / n_kv, item % n_kv);
                let n_seen = start_pos + p + 1;
                // The window's first visible position: the scores of the
                // positions it hides are not computed at all.
                let first = window.map_or(0, |w| n_seen.saturating_sub(w));
                let (k_cache, v_cache) = (
                    k_cache.from_position(first, l.kv_dim),
                    v_cache.from_position(first, l.kv_dim),
                );
                let n_seen = n_seen - first;
                for h0 in (kv * l.group..(kv + 1) * l.group).step_by(per_item) {
                    let heads = per_item.min((kv + 1) * l.group - h0);
                    let at = p * q_dim + h0 * head_dim;
                    let len = heads * head_dim;
                    // SAFETY: `at + len <= n * q_dim = out.len()`, and these
                    // heads of position p belong to this item only.
                    let out = unsafe { std::slice::from_raw_parts_mut(out_ptr.at(at), len) };
                    let q = &q[at..at + len];
                    attend_group(ops, l, kv, heads, out, q, k_cache, v_cache, n_seen, scores);
                }
            }
        };
        // Dot products plus value sums per item, roughly.
        let work_size = n * n_heads * n_ctx * head_dim * 2;
        if self.threads == 1 || work_size < 1 << 15 {
            work(0);
        } else {
            self.pool.run(&work);
        }
    }
}

/// The positions query `p` of a pass sees: `first..seen` (a sliding
/// window hides those before `first`).
#[derive(Clone, Copy)]
struct Visible {
    start_pos: usize,
    window: Option<usize>,
}

impl Visible {
    fn seen(self, p: usize) -> usize {
        self.start_pos + p + 1
    }

    fn first(self, p: usize) -> usize {
        self.window.map_or(0, |w| self.seen(p).saturating_sub(w))
    }

    /// Positions of `lo..hi` that query `p` sees.
    fn clip(self, p: usize, lo: usize, hi: usize) -> std::ops::Range<usize> {
        lo.max(self.first(p))..hi.min(self.seen(p))
    }
}

/// The blocks one pass of [`CpuBackend::attention_blocks`] loads, in the
/// order it loads them: what the cache on disk reads ahead
/// ([`crate::kv_disk::DiskKv::schedule`]). `attention_blocks` takes its
/// geometry from here too, so the two cannot disagree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockPass {
    n_kv_heads: usize,
    /// Positions per block.
    block_positions: usize,
    /// Positions the pass's keys span (`start_pos + n`).
    n_ctx: usize,
    /// Blocks `first_block..end_block` hold a visible position.
    first_block: usize,
    end_block: usize,
    /// Scores of the row that sees the most positions (the last query's,
    /// or the window).
    row_len: usize,
    /// Every score of a kv head's rows fits the scratch: keys then values
    /// once each. Otherwise keys twice, then keys and values together.
    all_scores: bool,
}

impl BlockPass {
    /// `pass` over blocks of `block_positions`, with `scores_len` floats of
    /// score scratch.
    pub fn new(pass: AttnPass, scores_len: usize, block_positions: usize) -> BlockPass {
        let AttnPass {
            heads: h,
            start_pos,
            n,
        } = pass;
        let (n_kv_heads, window) = (h.n_kv_heads, h.window);
        let group = h.n_heads / n_kv_heads.max(1);
        let vis = Visible { start_pos, window };
        let n_ctx = start_pos + n;
        let row_len = n_ctx - vis.first(n.saturating_sub(1));
        let bp = block_positions.max(1);
        BlockPass {
            n_kv_heads,
            block_positions: bp,
            n_ctx,
            first_block: vis.first(0) / bp,
            end_block: n_ctx.div_ceil(bp),
            row_len,
            all_scores: n * group * row_len <= scores_len,
        }
    }

    fn blocks(&self) -> usize {
        self.end_block - self.first_block
    }

    /// `(first position, positions)` of block `b`.
    fn block(&self, b: usize) -> (usize, usize) {
        let first = b * self.block_positions;
        (first, self.block_positions.min(self.n_ctx - first))
    }

    /// Loads per kv head.
    fn per_head(&self) -> usize {
        // All scores: keys, values. Otherwise: keys (max), keys (sum),
        // keys and values (output).
        self.blocks() * if self.all_scores { 2 } else { 4 }
    }

    /// Loads in the pass.
    pub fn len(&self) -> usize {
        self.n_kv_heads * self.per_head()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Load `i` (below [`BlockPass::len`]): `(part, kv head, first
    /// position, positions)`, as [`KvBlocks::load`] takes them.
    pub fn load(&self, i: usize) -> (KvPart, usize, usize, usize) {
        let (head, j) = (i / self.per_head(), i % self.per_head());
        let nb = self.blocks();
        let (part, b) = if self.all_scores {
            match j < nb {
                true => (KvPart::Keys, j),
                false => (KvPart::Values, j - nb),
            }
        } else if j < 2 * nb {
            (KvPart::Keys, j % nb)
        } else {
            let k = j - 2 * nb;
            match k % 2 {
                0 => (KvPart::Keys, k / 2),
                _ => (KvPart::Values, k / 2),
            }
        };
        let (first, n) = self.block(self.first_block + b);
        (part, head, first, n)
    }
}

/// The query heads of kv head `kv` in a pass of `n` positions over a
/// blocked cache: rows `p * group + g` (position `p`, head `kv * group +
/// g`), as [`CpuBackend::attention_blocks`] walks them.
#[derive(Clone, Copy)]
struct BlockedGroup<'a> {
    l: HeadLayout,
    ops: FloatOps,
    kv: usize,
    q: &'a [f32],
    q_dim: usize,
    out: SharedMut,
    scores: SharedMut,
    /// Floats of each row's scores (mode "all scores" only).
    row_len: usize,
}

impl BlockedGroup<'_> {
    fn q(&self, p: usize, g: usize) -> &[f32] {
        let at = p * self.q_dim + (self.kv * self.l.group + g) * self.l.head_dim;
        &self.q[at..at + self.l.head_dim]
    }

    /// SAFETY (callers): each `(p, g)` row is used by one work item at a time.
    #[allow(clippy::mut_from_ref)]
    unsafe fn out(&self, p: usize, g: usize) -> &mut [f32] {
        let at = p * self.q_dim + (self.kv * self.l.group + g) * self.l.head_dim;
        // SAFETY: inside `out` (n * q_dim floats), row owned by the caller.
        unsafe { std::slice::from_raw_parts_mut(self.out.at(at), self.l.head_dim) }
    }

    /// The scores of row `(p, g)`, `row_len` floats.
    #[allow(clippy::mut_from_ref)]
    unsafe fn scores(&self, p: usize, g: usize) -> &mut [f32] {
        let at = (p * self.l.group + g) * self.row_len;
        // SAFETY: inside `scores` (checked by the caller), row owned.
        unsafe { std::slice::from_raw_parts_mut(self.scores.at(at), self.row_len) }
    }

    /// The running (max, sum or 1 / sum) pair of row `(p, g)`.
    #[allow(clippy::mut_from_ref)]
    unsafe fn stats(&self, p: usize, g: usize) -> &mut [f32] {
        let at = (p * self.l.group + g) * 2;
        // SAFETY: as in `scores`.
        unsafe { std::slice::from_raw_parts_mut(self.scores.at(at), 2) }
    }

    fn score(&self, p: usize, g: usize, k: &[f32]) -> f32 {
        self.ops.dot(self.q(p, g), k) * self.l.scale
    }
}

/// One pass over a blocked cache when not every score fits the scratch:
/// each pass reads the keys again and recomputes the scores (the same
/// bits), carrying what [`softmax`] computes in one go.
#[derive(Clone, Copy, PartialEq)]
enum StatsPass {
    /// The running maximum, folded as `softmax` folds it.
    Max,
    /// The running sum of `exp(score - max)`, in position order.
    Sum,
    /// `out += exp(score - max) * (1 / sum) * value`, in position order.
    Output,
}

impl CpuBackend {
    /// Run `work(item)` for `items` items over the pool (in the calling
    /// thread when there is one thread or little work).
    fn for_each_item(&self, items: usize, work_size: usize, work: &(dyn Fn(usize) + Sync)) {
        if self.threads == 1 || work_size < 1 << 15 {
            (0..items).for_each(work);
            return;
        }
        let next = AtomicUsize::new(0);
        self.pool.run(&|_| loop {
            let item = next.fetch_add(1, Ordering::Relaxed);
            if item >= items {
                return;
            }
            work(item);
        });
    }

    /// Causal attention exactly as [`CpuBackend::attention_batch`]
    /// computes it, bit for bit, over a cache read a block of positions of
    /// one kv head at a time (the cache on disk): the RAM it needs does
    /// not grow with the context.
    ///
    /// Per kv head, when `scores` holds every score of its query heads
    /// (`n * group` rows of up to `min(start_pos + n, window)`; always for
    /// a decode step, with `group * n_ctx` floats): the key blocks fill
    /// the scores, each row gets [`softmax`], and the value blocks are
    /// summed into the output in position order, as `attend_group` does
    /// with the whole cache. Otherwise (a long prefill chunk) `scores`
    /// keeps only a (max, sum) pair per row and the keys are read three
    /// times: for the maximum, for the sum, and with the values for the
    /// output, each pass recomputing the same scores. `scores` must hold
    /// at least `2 * n * group` floats.
    pub fn attention_blocks(
        &self,
        out: &mut [f32],
        q: &[f32],
        cache: &mut dyn KvBlocks,
        pass: AttnPass,
        scores: &mut [f32],
    ) -> Result<()> {
        let AttnPass {
            heads:
                AttnHeads {
                    n_heads,
                    n_kv_heads,
                    head_dim,
                    window,
                },
            start_pos,
            n,
        } = pass;
        let l = HeadLayout::new(n_heads, n_kv_heads, head_dim);
        let q_dim = n_heads * head_dim;
        assert_eq!(q.len(), n * q_dim, "attention_blocks: query length");
        assert_eq!(out.len(), n * q_dim, "attention_blocks: output length");
        let rows = n * l.group;
        assert!(
            scores.len() >= 2 * rows,
            "attention_blocks: scores hold {} floats, need 2 x {rows}",
            scores.len()
        );
        let vis = Visible { start_pos, window };
        let plan = BlockPass::new(pass, scores.len(), cache.block_positions());
        let (row_len, all_scores) = (plan.row_len, plan.all_scores);
        let blocks = plan.first_block..plan.end_block;
        let block = |b: usize| plan.block(b);
        let ops = FloatOps::new(self.isa);
        // Work items split a block's positions (keys: each score is
        // independent) or a group's heads (values: each output row sums in
        // position order), enough of them to occupy the pool in a decode
        // step; how they are split changes no bit.
        let pieces = self.threads.div_ceil(n).max(1);
        let head_parts = pieces.min(l.group);
        let per_part = l.group.div_ceil(head_parts);
        let heads_of = |part: usize| part * per_part..((part + 1) * per_part).min(l.group);
        let work_size = |len: usize| n * l.group * len * head_dim;
        for kv in 0..n_kv_heads {
            let grp = BlockedGroup {
                l,
                ops,
                kv,
                q,
                q_dim,
                out: SharedMut(out.as_mut_ptr()),
                scores: SharedMut(scores.as_mut_ptr()),
                row_len,
            };
            for p in 0..n {
                for g in 0..l.group {
                    // SAFETY: single-threaded here.
                    unsafe { grp.out(p, g) }.fill(0.0);
                }
            }
            if all_scores {
                for b in blocks.clone() {
                    let (b0, len) = block(b);
                    cache.load(KvPart::Keys, kv, b0, len)?;
                    let keys = cache.loaded(KvPart::Keys);
                    let piece_len = len.div_ceil(pieces);
                    self.for_each_item(n * pieces, work_size(len), &|item| {
                        let (p, piece) = (item / pieces, item % pieces);
                        let lo = b0 + piece * piece_len;
                        let mut row = [0.0f32; F16_MAX_HEAD_DIM];
                        let first = vis.first(p);
                        for t in vis.clip(p, lo, (lo + piece_len).min(b0 + len)) {
                            let k = keys.values((t - b0) * head_dim, head_dim, &mut row);
                            for g in 0..l.group {
                                // SAFETY: item (p, piece) alone writes
                                // these positions of p's rows.
                                let scores = unsafe { grp.scores(p, g) };
                                scores[t - first] = grp.score(p, g, k);
                            }
                        }
                    });
                }
                self.for_each_item(rows, work_size(row_len), &|r| {
                    let (p, g) = (r / l.group, r % l.group);
                    let seen = vis.seen(p) - vis.first(p);
                    // SAFETY: row r belongs to this item.
                    softmax(&mut unsafe { grp.scores(p, g) }[..seen]);
                });
                for b in blocks.clone() {
                    let (b0, len) = block(b);
                    cache.load(KvPart::Values, kv, b0, len)?;
                    let values = cache.loaded(KvPart::Values);
                    self.for_each_item(n * head_parts, work_size(len), &|item| {
                        let (p, part) = (item / head_parts, item % head_parts);
                        let mut row = [0.0f32; F16_MAX_HEAD_DIM];
                        let first = vis.first(p);
                        for t in vis.clip(p, b0, b0 + len) {
                            let v = values.values((t - b0) * head_dim, head_dim, &mut row);
                            for g in heads_of(part) {
                                // SAFETY: item (p, part) alone owns these rows.
                                let w = unsafe { grp.scores(p, g) }[t - first];
                                ops.axpy(unsafe { grp.out(p, g) }, w, v);
                            }
                        }
                    });
                }
            } else {
                for p in 0..n {
                    for g in 0..l.group {
                        // SAFETY: single-threaded here.
                        unsafe { grp.stats(p, g) }.copy_from_slice(&[f32::NEG_INFINITY, 0.0]);
                    }
                }
                for stats in [StatsPass::Max, StatsPass::Sum, StatsPass::Output] {
                    if stats == StatsPass::Output {
                        for p in 0..n {
                            for g in 0..l.group {
                                // SAFETY: single-threaded here.
                                let st = unsafe { grp.stats(p, g) };
                                st[1] = 1.0 / st[1];
                            }
                        }
                    }
                    for b in blocks.clone() {
                        let (b0, len) = block(b);
                        cache.load(KvPart::Keys, kv, b0, len)?;
                        if stats == StatsPass::Output {
                            cache.load(KvPart::Values, kv, b0, len)?;
                        }
                        let keys = cache.loaded(KvPart::Keys);
                        let values = cache.loaded(KvPart::Values);
                        self.for_each_item(n * head_parts, work_size(len), &|item| {
                            let (p, part) = (item / head_parts, item % head_parts);
                            let mut k_row = [0.0f32; F16_MAX_HEAD_DIM];
                            let mut v_row = [0.0f32; F16_MAX_HEAD_DIM];
                            for t in vis.clip(p, b0, b0 + len) {
                                let k = keys.values((t - b0) * head_dim, head_dim, &mut k_row);
                                let v = if stats == StatsPass::Output {
                                    values.values((t - b0) * head_dim, head_dim, &mut v_row)
                                } else {
                                    &[]
                                };
                                for g in heads_of(part) {
                                    let s = grp.score(p, g, k);
                                    // SAFETY: item (p, part) alone owns
                                    // these rows' stats and outputs.
                                    let st = unsafe { grp.stats(p, g) };
                                    match stats {
                                        // As `softmax`: fold(-inf, f32::max).
                                        StatsPass::Max => st[0] = f32::max(st[0], s),
                                        StatsPass::Sum => st[1] += (s - st[0]).exp(),
                                        StatsPass::Output => {
                                            let w = (s - st[0]).exp() * st[1];
                                            ops.axpy(unsafe { grp.out(p, g) }, w, v);
                                        }
                                    }
                                }
                            }
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

/// SwiGLU: `gate = silu(gate) * up`, in place.
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// `x += y`.
pub fn add_in_place(x: &mut [f32], y: &[f32]) {
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_rotates_adjacent_pairs() {
        let mut x = vec![1.0, 0.0, 0.0, 1.0];
        let angle = std::f32::consts::FRAC_PI_2;
        rope(&mut x, 4, &[(angle.cos(), angle.sin()), (1.0, 0.0)]);
        assert!((x[0]).abs() < 1e-6 && (x[1] - 1.0).abs() < 1e-6);
        assert_eq!(&x[2..], &[0.0, 1.0]);
    }

    #[test]
    fn attention_with_one_position_returns_its_value() {
        // Two query heads sharing one kv head (GQA).
        let q = [1.0, 2.0, 3.0, 4.0];
        let k = [0.5, 0.5];
        let v = [7.0, -1.0];
        let mut out = [0.0; 4];
        let mut scores = [0.0; 1];
        attention(&mut out, &q, &k, &v, 1, 2, 1, 2, &mut scores);
        assert_eq!(out, [7.0, -1.0, 7.0, -1.0]);
    }

    #[test]
    fn softmax_sums_to_one() {
        let mut x = [1.0, 2.0, 3.0, 1000.0];
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(x[3] > 0.99);
    }

    #[test]
    fn batched_attention_matches_per_position_attention() {
        let (n_heads, n_kv, hd, start, n) = (8, 2, 68, 37, 9);
        let kv_dim = n_kv * hd;
        let val = |i: usize, m: usize| ((i * m) % 1013) as f32 / 1013.0 - 0.5;
        let k: Vec<f32> = (0..(start + n) * kv_dim).map(|i| val(i, 7919)).collect();
        let v: Vec<f32> = (0..(start + n) * kv_dim).map(|i| val(i, 104_729)).collect();
        let q: Vec<f32> = (0..n * n_heads * hd).map(|i| val(i, 31)).collect();
        let mut want = vec![0.0; q.len()];
        let mut scores = vec![0.0; start + n];
        for p in 0..n {
            let r = p * n_heads * hd..(p + 1) * n_heads * hd;
            attention(
                &mut want[r.clone()],
                &q[r],
                &k,
                &v,
                start + p + 1,
                n_heads,
                n_kv,
                hd,
                &mut scores,
            );
        }
        // Scratch for one head, three heads (groups split unevenly), and a
        // whole group per thread.
        for (threads, heads) in [(1, 1), (2, 1), (3, 1), (2, 3), (1, 4), (3, 4)] {
            for isa in Isa::available() {
                let backend = CpuBackend::with_isa(threads, isa);
                let mut got = vec![0.0; q.len()];
                let mut scores = vec![0.0; threads * heads * (start + n)];
                backend.attention_batch(
                    &mut got,
                    &q,
                    KvRows::F32(&k),
                    KvRows::F32(&v),
                    AttnHeads {
                        n_heads,
                        n_kv_heads: n_kv,
                        head_dim: hd,
                        window: None,
                    }
                    .pass(start, n),
                    &mut scores,
                );
                assert_eq!(got, want, "{threads} threads, {heads} heads, {isa}");
            }
        }
    }

    #[test]
    fn sliding_window_hides_older_positions() {
        // Position p with window w sees exactly what an unwindowed query
        // sees over a cache that starts at p + 1 - w.
        let (n_heads, n_kv, hd) = (4, 2, 8);
        let (start, n, w) = (9, 3, 4);
        let kv_dim = n_kv * hd;
        let val = |i: usize| ((i * 7919 % 97) as f32 - 48.0) / 32.0;
        let q: Vec<f32> = (0..n * n_heads * hd).map(val).collect();
        let k: Vec<f32> = (0..(start + n) * kv_dim).map(|i| val(i + 5)).collect();
        let v: Vec<f32> = (0..(start + n) * kv_dim).map(|i| val(i + 11)).collect();
        let backend = CpuBackend::with_isa(2, Isa::best());
        let mut scores = vec![0.0; 2 * 2 * (start + n)];
        let mut got = vec![0.0; q.len()];
        backend.attention_batch(
            &mut got,
            &q,
            KvRows::F32(&k),
            KvRows::F32(&v),
            AttnHeads {
                n_heads,
                n_kv_heads: n_kv,
                head_dim: hd,
                window: Some(w),
            }
            .pass(start, n),
            &mut scores,
        );
        let q_dim = n_heads * hd;
        for p in 0..n {
            let first = start + p + 1 - w;
            let mut want = vec![0.0; q_dim];
            attention(
                &mut want,
                &q[p * q_dim..(p + 1) * q_dim],
                &k[first * kv_dim..],
                &v[first * kv_dim..],
                w,
                n_heads,
                n_kv,
                hd,
                &mut scores,
            );
            assert_eq!(&got[p * q_dim..(p + 1) * q_dim], &want[..], "position {p}");
        }
    }

    /// A cache of position-major rows read back through blocks, one kv
    /// head at a time, as the disk cache serves them.
    struct Blocks<'a> {
        k: KvRows<'a>,
        v: KvRows<'a>,
        kv_dim: usize,
        head_dim: usize,
        block: usize,
        loaded: [(Vec<f32>, Vec<half::f16>); 2],
        f16: bool,
        /// Every load, in order.
        log: Vec<(KvPart, usize, usize, usize)>,
    }

    impl KvBlocks for Blocks<'_> {
        fn block_positions(&self) -> usize {
            self.block
        }

        fn load(&mut self, part: KvPart, head: usize, first: usize, n: usize) -> Result<()> {
            assert!(first.is_multiple_of(self.block) && n <= self.block);
            self.log.push((part, head, first, n));
            let (rows, i) = match part {
                KvPart::Keys => (self.k, 0),
                KvPart::Values => (self.v, 1),
            };
            let mut buf = vec![0.0; self.head_dim];
            let (f, h) = &mut self.loaded[i];
            f.clear();
            h.clear();
            for t in first..first + n {
                let row = rows.values(
                    t * self.kv_dim + head * self.head_dim,
                    self.head_dim,
                    &mut buf,
                );
                f.extend_from_slice(row);
                h.extend(row.iter().map(|&x| half::f16::from_f32(x)));
            }
            Ok(())
        }

        fn loaded(&self, part: KvPart) -> KvRows<'_> {
            let (f, h) = &self.loaded[(part == KvPart::Values) as usize];
            if self.f16 {
                KvRows::F16(h)
            } else {
                KvRows::F32(f)
            }
        }
    }

    /// Bit for bit the in-RAM attention, in every mode, loading blocks in
    /// the order [`BlockPass`] gives.
    #[test]
    fn blocked_attention_matches_batched_attention() {
        let (n_heads, n_kv, hd) = (8, 2, 20);
        let (kv_dim, q_dim, group) = (n_kv * hd, n_heads * hd, n_heads / n_kv);
        let val = |i: usize, m: usize| ((i * m) % 1013) as f32 / 1013.0 - 0.5;
        // Decode steps, prefill chunks, a window, blocks of 1 to 512
        // positions (the larger ones spread over the pool); scratch for
        // every score and for (max, sum) only.
        for (start, n) in [
            (0, 1),
            (40, 1),
            (63, 1),
            (0, 9),
            (37, 9),
            (70, 5),
            (600, 1),
            (200, 16),
        ] {
            let n_ctx = start + n;
            let k: Vec<f32> = (0..n_ctx * kv_dim).map(|i| val(i, 7919)).collect();
            let v: Vec<f32> = (0..n_ctx * kv_dim).map(|i| val(i, 104_729)).collect();
            let q: Vec<f32> = (0..n * q_dim).map(|i| val(i, 31)).collect();
            let k16: Vec<half::f16> = k.iter().map(|&x| half::f16::from_f32(x)).collect();
            let v16: Vec<half::f16> = v.iter().map(|&x| half::f16::from_f32(x)).collect();
            for f16 in [false, true] {
                let (kr, vr) = if f16 {
                    (KvRows::F16(&k16), KvRows::F16(&v16))
                } else {
                    (KvRows::F32(&k), KvRows::F32(&v))
                };
                for window in [None, Some(6)] {
                    let pass = AttnHeads {
                        n_heads,
                        n_kv_heads: n_kv,
                        head_dim: hd,
                        window,
                    }
                    .pass(start, n);
                    let ram = CpuBackend::with_isa(2, Isa::best());
                    let mut want = vec![0.0; q.len()];
                    let mut scores = vec![0.0; 2 * group * n_ctx];
                    ram.attention_batch(&mut want, &q, kr, vr, pass, &mut scores);
                    for (threads, block) in [(1, 1), (2, 7), (3, 64), (2, 512)] {
                        for all_scores in [true, false] {
                            let backend = CpuBackend::with_isa(threads, Isa::best());
                            let mut cache = Blocks {
                                k: kr,
                                v: vr,
                                kv_dim,
                                head_dim: hd,
                                block,
                                loaded: Default::default(),
                                f16,
                                log: Vec::new(),
                            };
                            let len = if all_scores { n * group * n_ctx } else { 0 };
                            let len = len.max(2 * n * group);
                            let mut scores = vec![0.0; len];
                            let mut got = vec![f32::NAN; q.len()];
                            backend
                                .attention_blocks(&mut got, &q, &mut cache, pass, &mut scores)
                                .unwrap();
                            let same = got
                                .iter()
                                .zip(&want)
                                .all(|(a, b)| a.to_bits() == b.to_bits());
                            assert!(
                                same,
                                "{start}+{n} f16 {f16} window {window:?} {threads} threads, \
                                 block {block}, all scores {all_scores}"
                            );
                            // The order the disk cache reads ahead in.
                            let plan = BlockPass::new(pass, scores.len(), block);
                            let planned: Vec<_> = (0..plan.len()).map(|i| plan.load(i)).collect();
                            assert_eq!(cache.log, planned, "{start}+{n} block {block}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn rope_neox_rotates_halves() {
        // head_dim 6, 2 rotated pairs: (x0, x2) and (x1, x3); x4, x5 kept.
        let mut x = vec![1.0, 2.0, 0.0, 0.0, 5.0, 6.0];
        let angle = std::f32::consts::FRAC_PI_2;
        rope_neox(&mut x, 6, &[(angle.cos(), angle.sin()), (1.0, 0.0)]);
        assert!(x[0].abs() < 1e-6 && (x[2] - 1.0).abs() < 1e-6);
        assert_eq!((x[1], x[3]), (2.0, 0.0));
        assert_eq!(&x[4..], &[5.0, 6.0]);
    }
}
