//! The key/value cache: for every layer and sequence, the keys and values
//! of every position seen so far, allocated once for the whole context.
//!
//! Stored as f16 by default (`[memory] kv_type`): half the bytes of f32,
//! which the planner turns into more resident layers, a longer context or
//! a larger batch. Keys and values are rounded to f16 once, when stored;
//! attention widens each row back to f32 (exactly) as it reads it, so every
//! product is still an f32 product and the result does not depend on the
//! instruction set or the thread count.

use crate::model::Hparams;
use half::f16;
use half::slice::HalfFloatSliceExt;
use std::fmt;
use std::str::FromStr;

/// The element type of the KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvType {
    /// IEEE half precision, as llama.cpp's default cache: 2 bytes a value.
    #[default]
    F16,
    /// Full precision: 4 bytes a value.
    F32,
}

impl KvType {
    pub fn bytes(self) -> usize {
        match self {
            KvType::F16 => 2,
            KvType::F32 => 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KvType::F16 => "f16",
            KvType::F32 => "f32",
        }
    }
}

impl fmt::Display for KvType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KvType {
    type Err = String;
    fn from_str(s: &str) -> Result<KvType, String> {
        match s.to_ascii_lowercase().as_str() {
            "f16" => Ok(KvType::F16),
            "f32" => Ok(KvType::F32),
            _ => Err(format!("expected \"f16\" or \"f32\", found {s:?}")),
        }
    }
}

impl<'de> serde::Deserialize<'de> for KvType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The widest row attention widens from f16 at a time: a head (on the stack
/// of each attention worker, so that decoding allocates nothing). Models
/// with wider heads keep an f32 cache.
pub const F16_MAX_HEAD_DIM: usize = 512;

/// Cached keys or values of some positions, `kv_dim` values each.
#[derive(Debug, Clone, Copy)]
pub enum KvRows<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

impl<'a> KvRows<'a> {
    pub fn len(&self) -> usize {
        match self {
            KvRows::F32(s) => s.len(),
            KvRows::F16(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Values `at..at + len` as f32: the stored slice itself, or widened
    /// into `buf` (exact: every f16 is an f32).
    pub fn values<'b>(&self, at: usize, len: usize, buf: &'b mut [f32]) -> &'b [f32]
    where
        'a: 'b,
    {
        match *self {
            KvRows::F32(s) => &s[at..at + len],
            KvRows::F16(s) => {
                let out = &mut buf[..len];
                s[at..at + len].convert_to_f32_slice(out);
                out
            }
        }
    }

    /// Rows from position `first` on (`kv_dim` values a position).
    pub fn from_position(self, first: usize, kv_dim: usize) -> KvRows<'a> {
        match self {
            KvRows::F32(s) => KvRows::F32(&s[first * kv_dim..]),
            KvRows::F16(s) => KvRows::F16(&s[first * kv_dim..]),
        }
    }
}

/// What a KV cache holds: keys and values of `n_ctx` positions for each
/// of `n_layers` layers and `n_seq` sequences, `n_kv_heads` heads of
/// `head_dim` values each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvShape {
    pub n_layers: usize,
    pub n_seq: usize,
    pub n_ctx: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl KvShape {
    /// The cache of `model` for `n_seq` sequences of `n_ctx` positions.
    pub fn of(model: &Hparams, n_seq: usize, n_ctx: usize) -> KvShape {
        KvShape {
            n_layers: model.n_layers,
            n_seq,
            n_ctx,
            n_kv_heads: model.n_kv_heads,
            head_dim: model.head_dim,
        }
    }

    /// Values of one position of one layer: every kv head.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}

/// Keys or values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvPart {
    Keys,
    Values,
}

/// A cache read a block of positions of one kv head at a time (the cache
/// on disk): what [`crate::backend::cpu::CpuBackend::attention_blocks`]
/// reads, for the `(layer, sequence)` of the current pass.
pub trait KvBlocks {
    /// Positions per block; blocks start at multiples of it.
    fn block_positions(&self) -> usize;

    /// Make `part` of kv head `head` at positions `first..first + n`
    /// ([`KvBlocks::loaded`]): `first` a multiple of
    /// [`KvBlocks::block_positions`], `n` at most that. Keys and values
    /// have a buffer each, so one block of each can be loaded at once.
    fn load(
        &mut self,
        part: KvPart,
        head: usize,
        first: usize,
        n: usize,
    ) -> crate::error::Result<()>;

    /// The positions last loaded for `part`, `head_dim` values each.
    fn loaded(&self, part: KvPart) -> KvRows<'_>;
}

enum Store {
    F32 { k: Vec<f32>, v: Vec<f32> },
    F16 { k: Vec<f16>, v: Vec<f16> },
}

/// Layout: `[layer][seq][position][kv_dim]`, for keys and values alike, so
/// one sequence's positions of one layer are contiguous for attention.
pub struct KvCache {
    n_seq: usize,
    n_ctx: usize,
    kv_dim: usize,
    store: Store,
}

impl KvCache {
    /// A zeroed cache. `kv_type` f16 with heads wider than
    /// [`F16_MAX_HEAD_DIM`] is kept as f32 ([`KvCache::effective_type`]).
    pub fn new(shape: KvShape, kv_type: KvType) -> KvCache {
        let len = shape.n_layers * shape.n_seq * shape.n_ctx * shape.kv_dim();
        let store = match Self::effective_type(kv_type, shape.head_dim) {
            KvType::F32 => Store::F32 {
                k: vec![0.0; len],
                v: vec![0.0; len],
            },
            KvType::F16 => Store::F16 {
                k: vec![f16::ZERO; len],
                v: vec![f16::ZERO; len],
            },
        };
        KvCache {
            n_seq: shape.n_seq,
            n_ctx: shape.n_ctx,
            kv_dim: shape.kv_dim(),
            store,
        }
    }

    /// The type a cache asked to be `kv_type` is stored as.
    pub fn effective_type(kv_type: KvType, head_dim: usize) -> KvType {
        if head_dim > F16_MAX_HEAD_DIM {
            KvType::F32
        } else {
            kv_type
        }
    }

    /// Bytes a cache of this shape takes.
    pub fn bytes_for(
        n_layers: usize,
        n_seq: usize,
        n_ctx: usize,
        kv_dim: usize,
        kv_type: KvType,
    ) -> u64 {
        // Saturating: a hostile shape must come out as "too large for the
        // budget", never wrap around to a small number.
        [n_layers, n_seq, n_ctx, kv_dim, kv_type.bytes()]
            .iter()
            .fold(2u64, |acc, &n| acc.saturating_mul(n as u64))
    }

    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    pub fn n_seq(&self) -> usize {
        self.n_seq
    }

    pub fn kv_type(&self) -> KvType {
        match self.store {
            Store::F32 { .. } => KvType::F32,
            Store::F16 { .. } => KvType::F16,
        }
    }

    fn start(&self, layer: usize, seq: usize) -> usize {
        ((layer * self.n_seq + seq) * self.n_ctx) * self.kv_dim
    }

    /// Store the key and value of `pos` of sequence `seq` in `layer`
    /// (rounded to nearest even when the cache is f16).
    pub fn store(&mut self, layer: usize, seq: usize, pos: usize, k: &[f32], v: &[f32]) {
        let at = self.start(layer, seq) + pos * self.kv_dim;
        let r = at..at + self.kv_dim;
        match &mut self.store {
            Store::F32 { k: kc, v: vc } => {
                kc[r.clone()].copy_from_slice(k);
                vc[r].copy_from_slice(v);
            }
            Store::F16 { k: kc, v: vc } => {
                kc[r.clone()].convert_from_f32_slice(k);
                vc[r].convert_from_f32_slice(v);
            }
        }
    }

    /// Keys and values of positions `0..n` of sequence `seq` in `layer`.
    pub fn layer(&self, layer: usize, seq: usize, n: usize) -> (KvRows<'_>, KvRows<'_>) {
        let start = self.start(layer, seq);
        let r = start..start + n * self.kv_dim;
        match &self.store {
            Store::F32 { k, v } => (KvRows::F32(&k[r.clone()]), KvRows::F32(&v[r])),
            Store::F16 { k, v } => (KvRows::F16(&k[r.clone()]), KvRows::F16(&v[r])),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_rows_round_once_and_widen_exactly() {
        let shape = KvShape {
            n_layers: 2,
            n_seq: 1,
            n_ctx: 4,
            n_kv_heads: 1,
            head_dim: 3,
        };
        let mut c = KvCache::new(shape, KvType::F16);
        let k = [1.0f32 / 3.0, -2.5, 65504.0];
        c.store(1, 0, 2, &k, &[0.1, 0.2, 0.3]);
        let (kr, _) = c.layer(1, 0, 3);
        let mut buf = [0.0; 3];
        let got = kr.values(2 * 3, 3, &mut buf);
        for (g, w) in got.iter().zip(k) {
            assert_eq!(*g, f16::from_f32(w).to_f32());
        }
        assert_eq!(
            KvCache::bytes_for(2, 1, 4, 3, KvType::F16) * 2,
            KvCache::bytes_for(2, 1, 4, 3, KvType::F32)
        );
    }

    #[test]
    fn wide_heads_keep_f32() {
        assert_eq!(KvCache::effective_type(KvType::F16, 1024), KvType::F32);
        assert_eq!(
            KvCache::new(
                KvShape {
                    n_layers: 1,
                    n_seq: 1,
                    n_ctx: 1,
                    n_kv_heads: 1,
                    head_dim: 1024
                },
                KvType::F16
            )
            .kv_type(),
            KvType::F32
        );
        assert_eq!("F16".parse::<KvType>(), Ok(KvType::F16));
        assert!("q8_0".parse::<KvType>().unwrap_err().contains("\"q8_0\""));
    }
}
