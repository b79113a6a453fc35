//! The key/value cache: for every layer and sequence, the keys and values
//! of every position seen so far, allocated once for the whole context.

/// Layout: `[layer][seq][position][kv_dim]`, f32, for keys and values alike,
/// so one sequence's positions of one layer are contiguous for attention.
pub struct KvCache {
    n_seq: usize,
    n_ctx: usize,
    kv_dim: usize,
    k: Vec<f32>,
    v: Vec<f32>,
}

impl KvCache {
    pub fn new(n_layers: usize, n_seq: usize, n_ctx: usize, kv_dim: usize) -> KvCache {
        let len = n_layers * n_seq * n_ctx * kv_dim;
        KvCache {
            n_seq,
            n_ctx,
            kv_dim,
            k: vec![0.0; len],
            v: vec![0.0; len],
        }
    }

    /// Bytes a cache of this shape takes.
    pub fn bytes_for(n_layers: usize, n_seq: usize, n_ctx: usize, kv_dim: usize) -> u64 {
        // Saturating: a hostile shape must come out as "too large for the
        // budget", never wrap around to a small number.
        [n_layers, n_seq, n_ctx, kv_dim, std::mem::size_of::<f32>()]
            .iter()
            .fold(2u64, |acc, &n| acc.saturating_mul(n as u64))
    }

    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    pub fn n_seq(&self) -> usize {
        self.n_seq
    }

    fn start(&self, layer: usize, seq: usize) -> usize {
        ((layer * self.n_seq + seq) * self.n_ctx) * self.kv_dim
    }

    /// Store the key and value of `pos` of sequence `seq` in `layer`.
    pub fn store(&mut self, layer: usize, seq: usize, pos: usize, k: &[f32], v: &[f32]) {
        let at = self.start(layer, seq) + pos * self.kv_dim;
        self.k[at..at + self.kv_dim].copy_from_slice(k);
        self.v[at..at + self.kv_dim].copy_from_slice(v);
    }

    /// Keys and values of positions `0..n` of sequence `seq` in `layer`.
    pub fn layer(&self, layer: usize, seq: usize, n: usize) -> (&[f32], &[f32]) {
        let start = self.start(layer, seq);
        let end = start + n * self.kv_dim;
        (&self.k[start..end], &self.v[start..end])
    }
}
