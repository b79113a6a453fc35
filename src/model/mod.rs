//! A model as described by a GGUF file: hyperparameters, and every weight
//! tensor located, shape-checked and type-checked at load time, for any of
//! the architectures [`Arch`] describes.
//!
//! Weights are described by where they live in the file ([`TensorRef`]), not
//! held in memory: the engine asks a weight source for the bytes, which may
//! be the memory map (resident) or a streaming slot.

use crate::error::{Error, Result};
use crate::gguf::{GgufFile, TensorInfo};
use crate::quant::GgmlType;
use std::ops::Range;

mod arch;
pub use arch::{Arch, Presence, RopeStyle};

/// Hyperparameters of a model.
#[derive(Debug, Clone, PartialEq)]
pub struct Hparams {
    pub arch: Arch,
    pub n_layers: usize,
    /// Width of the residual stream.
    pub dim: usize,
    pub n_heads: usize,
    /// Key/value heads: `n_heads` for plain attention, fewer for GQA, 1 for MQA.
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Hidden width of the SwiGLU feed-forward block.
    pub ffn_dim: usize,
    pub vocab_size: usize,
    pub rope_base: f32,
    /// How many leading dimensions of each head RoPE rotates.
    pub rope_dims: usize,
    pub rms_eps: f32,
    /// The context length the model was trained for.
    pub context_length: usize,
    /// Per rotated pair, the divisor of its RoPE frequency (Llama 3.1+
    /// `rope_freqs.weight`); empty when the file has none.
    pub rope_factors: Vec<f32>,
    /// A position sees only the keys of the last `window` positions
    /// (itself included): `*.attention.sliding_window`.
    pub sliding_window: Option<usize>,
}

impl Hparams {
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Width of the query (and attention output): `n_heads * head_dim`,
    /// which need not be `dim` (Qwen 3).
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    /// A plain llama of the given shape (synthetic models, tests).
    #[allow(clippy::too_many_arguments)]
    pub fn llama(
        n_layers: usize,
        dim: usize,
        n_heads: usize,
        n_kv_heads: usize,
        ffn_dim: usize,
        vocab_size: usize,
        context_length: usize,
    ) -> Hparams {
        Hparams {
            arch: Arch::LLAMA,
            n_layers,
            dim,
            n_heads,
            n_kv_heads,
            head_dim: dim / n_heads,
            ffn_dim,
            vocab_size,
            rope_base: 10000.0,
            rope_dims: dim / n_heads,
            rms_eps: 1e-5,
            context_length,
            rope_factors: Vec::new(),
            sliding_window: None,
        }
    }

    /// The RoPE angle step of pair `i` (`< rope_dims / 2`):
    /// `base^(-2i / rope_dims) / factor_i`, in f64 so that the tables both
    /// backends build from it add no error beyond their final rounding.
    pub fn rope_frequency(&self, i: usize) -> f64 {
        let freq = (self.rope_base as f64).powf(-2.0 * i as f64 / self.rope_dims as f64);
        match self.rope_factors.get(i) {
            Some(&f) => freq / f as f64,
            None => freq,
        }
    }

    /// f32 values of one layer's vectors (norms, and biases and per-head
    /// norms where the architecture has them): what a backend that keeps
    /// them as f32 holds per layer. An upper bound for optional biases.
    pub fn layer_vector_floats(&self) -> usize {
        let bias = match self.arch.qkv_bias {
            Presence::Absent => 0,
            Presence::Optional | Presence::Required => self.q_dim() + 2 * self.kv_dim(),
        };
        let qk_norm = if self.arch.qk_norm {
            2 * self.head_dim
        } else {
            0
        };
        2 * self.dim + bias + qk_norm
    }

    /// The first position that a query at `pos` sees.
    pub fn first_visible(&self, pos: usize) -> usize {
        match self.sliding_window {
            Some(w) => (pos + 1).saturating_sub(w),
            None => 0,
        }
    }

    pub fn from_gguf(file: &GgufFile) -> Result<Hparams> {
        let path = file.path.display();
        let arch_name = file.require_str("general.architecture")?;
        let arch = Arch::by_name(arch_name).ok_or_else(|| {
            Error::model(format!(
                "{path}: key general.architecture: unsupported architecture {arch_name:?} (supported: {})",
                Arch::supported_list()
            ))
        })?;
        let key = |k: &str| format!("{}.{k}", arch.name);
        let usize_key = |k: &str| -> Result<usize> { Ok(file.require_u64(&key(k))? as usize) };

        let n_layers = usize_key("block_count")?;
        let dim = usize_key("embedding_length")?;
        let n_heads = usize_key("attention.head_count")?;
        let n_kv_heads = file
            .optional_u64(&key("attention.head_count_kv"))?
            .map_or(n_heads, |v| v as usize);
        let ffn_dim = usize_key("feed_forward_length")?;
        let context_length = usize_key("context_length")?;
        let rms_eps = file
            .optional_f32(&key("attention.layer_norm_rms_epsilon"))?
            .unwrap_or(1e-5);
        let rope_base = file
            .optional_f32(&key("rope.freq_base"))?
            .unwrap_or(10000.0);

        let positive = |name: &str, v: usize| -> Result<()> {
            if v == 0 {
                return Err(Error::model(format!(
                    "{path}: key {}: expected a positive value, found 0",
                    key(name)
                )));
            }
            Ok(())
        };
        positive("block_count", n_layers)?;
        // Each block has at least a known number of tensors, so the tensor
        // table bounds the block count; check before anything is sized by it.
        let per_block = arch.min_tensors_per_block();
        let most_layers = (file.tensors.len() / per_block).min(crate::limits::MAX_LAYERS);
        if n_layers > most_layers {
            return Err(Error::model(format!(
                "{path}: key {}: expected at most {most_layers} (the file has {} tensors, {per_block} per {arch} block; cap {}), found {n_layers}",
                key("block_count"),
                file.tensors.len(),
                crate::limits::MAX_LAYERS
            )));
        }
        positive("embedding_length", dim)?;
        positive("attention.head_count", n_heads)?;
        positive("attention.head_count_kv", n_kv_heads)?;
        positive("feed_forward_length", ffn_dim)?;
        positive("context_length", context_length)?;
        // The head width: `key_length` where the file says (Qwen 3's is
        // not dim / heads), else dim / heads.
        let head_dim = match file.optional_u64(&key("attention.key_length"))? {
            Some(k) => {
                let k = k as usize;
                positive("attention.key_length", k)?;
                if k > crate::limits::MAX_HEAD_DIM {
                    return Err(Error::model(format!(
                        "{path}: key {}: expected at most {}, found {k}",
                        key("attention.key_length"),
                        crate::limits::MAX_HEAD_DIM
                    )));
                }
                if let Some(v) = file.optional_u64(&key("attention.value_length"))? {
                    if v as usize != k {
                        return Err(Error::model(format!(
                            "{path}: key {}: expected {k} (equal to key_length), found {v}",
                            key("attention.value_length")
                        )));
                    }
                }
                k
            }
            None => {
                if dim % n_heads != 0 {
                    return Err(Error::model(format!(
                        "{path}: key {}: embedding_length {dim} is not divisible by head_count {n_heads}",
                        key("attention.head_count")
                    )));
                }
                dim / n_heads
            }
        };
        if n_heads % n_kv_heads != 0 {
            return Err(Error::model(format!(
                "{path}: key {}: head_count {n_heads} is not a multiple of head_count_kv {n_kv_heads}",
                key("attention.head_count_kv")
            )));
        }
        let rope_dims = file
            .optional_u64(&key("rope.dimension_count"))?
            .map_or(head_dim, |v| v as usize);
        if rope_dims > head_dim || rope_dims % 2 != 0 {
            return Err(Error::model(format!(
                "{path}: key {}: expected an even number <= head dim {head_dim}, found {rope_dims}",
                key("rope.dimension_count")
            )));
        }
        let positive_finite = |v: f32| v > 0.0 && v.is_finite();
        if !positive_finite(rms_eps) || !positive_finite(rope_base) {
            return Err(Error::model(format!(
                "{path}: rms epsilon {rms_eps} and rope base {rope_base} must be positive and finite"
            )));
        }
        // The vocabulary size comes from the embedding table (checked below
        // against the tokenizer by whoever builds both).
        let vocab_size = match file.tensor("token_embd.weight") {
            Some(t) if t.dims.len() == 2 => t.dims[1] as usize,
            Some(t) => {
                return Err(Error::model(format!(
                "{path}: tensor token_embd.weight: expected 2 dimensions [{dim}, vocab], found {}",
                t.shape_string()
            )))
            }
            None => {
                return Err(Error::model(format!(
                    "{path}: missing tensor token_embd.weight"
                )))
            }
        };
        let rope_factors = rope_factors(file, rope_dims / 2)?;
        let sliding_window = match file.optional_u64(&key("attention.sliding_window"))? {
            Some(0) | None => None,
            Some(w) => Some(w as usize),
        };
        Ok(Hparams {
            arch,
            n_layers,
            dim,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn_dim,
            vocab_size,
            rope_base,
            rope_dims,
            rms_eps,
            context_length,
            rope_factors,
            sliding_window,
        })
    }
}

/// `rope_freqs.weight`: one positive f32 per rotated pair, or nothing.
fn rope_factors(file: &GgufFile, pairs: usize) -> Result<Vec<f32>> {
    const NAME: &str = "rope_freqs.weight";
    let Some(t) = file.tensor(NAME) else {
        return Ok(Vec::new());
    };
    let path = file.path.display();
    if t.ggml_type != GgmlType::F32 || t.n_elements() != pairs as u64 {
        return Err(Error::model(format!(
            "{path}: tensor {NAME}: expected F32 [{pairs}] (one factor per rotated pair), found {} {}",
            t.ggml_type,
            t.shape_string()
        )));
    }
    let factors: Vec<f32> = file
        .tensor_data(t)
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    if let Some((i, f)) = factors
        .iter()
        .enumerate()
        .find(|(_, f)| !(f.is_finite() && **f > 0.0))
    {
        return Err(Error::model(format!(
            "{path}: tensor {NAME}: expected positive finite factors, found {f} at index {i}"
        )));
    }
    Ok(factors)
}

/// Where a weight tensor lives and what it is. A matrix has `rows` rows of
/// `cols` weights each (ggml dims `[cols, rows]`); a vector has one row.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    pub name: String,
    pub ggml_type: GgmlType,
    pub rows: usize,
    pub cols: usize,
    /// Absolute byte range in the file.
    pub file_range: Range<u64>,
}

impl TensorRef {
    pub fn bytes(&self) -> u64 {
        self.file_range.end - self.file_range.start
    }

    /// Rows `rows` of this matrix as a tensor of their own: a fused
    /// matrix (Phi-3's `attn_qkv`, `ffn_up`) is its parts stacked by rows,
    /// and rows are contiguous in every block format, so each part is a
    /// byte range of the file like any stored tensor.
    fn row_slice(&self, rows: Range<usize>, part: &str) -> TensorRef {
        let row_bytes = self.bytes() / self.rows as u64;
        TensorRef {
            name: format!("{} ({part})", self.name),
            ggml_type: self.ggml_type,
            rows: rows.len(),
            cols: self.cols,
            file_range: self.file_range.start + rows.start as u64 * row_bytes
                ..self.file_range.start + rows.end as u64 * row_bytes,
        }
    }
}

/// The tensors of one transformer block, by role. Fused matrices appear as
/// their parts ([`TensorRef::row_slice`]), which tile the stored tensor
/// exactly, so spans and byte counts over the roles are those of the file.
#[derive(Debug, Clone)]
pub struct LayerTensors {
    pub attn_norm: TensorRef, // (dim)
    pub wq: TensorRef,        // (n_heads * head_dim, dim)
    pub wk: TensorRef,        // (n_kv_heads * head_dim, dim)
    pub wv: TensorRef,        // (n_kv_heads * head_dim, dim)
    pub wo: TensorRef,        // (dim, n_heads * head_dim)
    pub ffn_norm: TensorRef,  // (dim)
    pub w_gate: TensorRef,    // (ffn_dim, dim)
    pub w_up: TensorRef,      // (ffn_dim, dim)
    pub w_down: TensorRef,    // (dim, ffn_dim)
    /// Biases of q, k, v: (q_dim), (kv_dim), (kv_dim).
    pub qkv_bias: Option<[TensorRef; 3]>,
    /// Per-head norms of q and k: (head_dim) each.
    pub qk_norm: Option<[TensorRef; 2]>,
}

impl LayerTensors {
    /// Every tensor of the block, by role.
    pub fn all(&self) -> Vec<&TensorRef> {
        let mut all = vec![
            &self.attn_norm,
            &self.wq,
            &self.wk,
            &self.wv,
            &self.wo,
            &self.ffn_norm,
            &self.w_gate,
            &self.w_up,
            &self.w_down,
        ];
        all.extend(self.qkv_bias.iter().flatten());
        all.extend(self.qk_norm.iter().flatten());
        all
    }

    /// The matrices, which the matmul kernels read.
    pub fn matrices(&self) -> [&TensorRef; 7] {
        [
            &self.wq,
            &self.wk,
            &self.wv,
            &self.wo,
            &self.w_gate,
            &self.w_up,
            &self.w_down,
        ]
    }

    /// The vectors (norms, biases), which backends use as f32.
    pub fn vectors(&self) -> Vec<&TensorRef> {
        let mut v = vec![&self.attn_norm, &self.ffn_norm];
        v.extend(self.qkv_bias.iter().flatten());
        v.extend(self.qk_norm.iter().flatten());
        v
    }

    /// The smallest file range covering every tensor of the layer. GGUF
    /// writers keep a block's tensors together, so this is what a streaming
    /// loader reads in one go.
    pub fn file_span(&self) -> Range<u64> {
        let all = self.all();
        let start = all.iter().map(|t| t.file_range.start).min().unwrap_or(0);
        let end = all.iter().map(|t| t.file_range.end).max().unwrap_or(0);
        start..end
    }

    /// Bytes of the tensors themselves (excluding alignment padding).
    pub fn weight_bytes(&self) -> u64 {
        self.all().iter().map(|t| t.bytes()).sum()
    }
}

/// A model: hyperparameters plus every tensor, validated.
#[derive(Debug, Clone)]
pub struct Model {
    pub hparams: Hparams,
    pub token_embd: TensorRef,  // (vocab, dim)
    pub output_norm: TensorRef, // (dim)
    /// (vocab, dim); the embedding table when the file ties them.
    pub output: TensorRef,
    pub layers: Vec<LayerTensors>,
}

impl Model {
    /// Locate and check every tensor against the hyperparameters and the
    /// architecture's description.
    pub fn from_gguf(file: &GgufFile) -> Result<Model> {
        let hp = Hparams::from_gguf(file)?;
        let arch = hp.arch;
        let find = |name: &str, rows: usize, cols: usize| -> Result<TensorRef> {
            let t = file.tensor(name).ok_or_else(|| {
                Error::model(format!(
                    "{}: missing tensor {name} (expected shape [{cols}, {rows}] in a {arch} file)",
                    file.path.display()
                ))
            })?;
            tensor_ref(file, t, rows, cols)
        };
        let (dim, q_dim, kv_dim, ffn) = (hp.dim, hp.q_dim(), hp.kv_dim(), hp.ffn_dim);
        let token_embd = find("token_embd.weight", hp.vocab_size, dim)?;
        let output_norm = find("output_norm.weight", 1, dim)?;
        let output = if file.tensor("output.weight").is_some() {
            find("output.weight", hp.vocab_size, dim)?
        } else {
            token_embd.clone()
        };
        let mut layers = Vec::with_capacity(hp.n_layers);
        for i in 0..hp.n_layers {
            let name = |t: &str| format!("blk.{i}.{t}.weight");
            let (wq, wk, wv) = if arch.fused_qkv {
                let qkv = find(&name("attn_qkv"), q_dim + 2 * kv_dim, dim)?;
                (
                    qkv.row_slice(0..q_dim, "q rows"),
                    qkv.row_slice(q_dim..q_dim + kv_dim, "k rows"),
                    qkv.row_slice(q_dim + kv_dim..q_dim + 2 * kv_dim, "v rows"),
                )
            } else {
                (
                    find(&name("attn_q"), q_dim, dim)?,
                    find(&name("attn_k"), kv_dim, dim)?,
                    find(&name("attn_v"), kv_dim, dim)?,
                )
            };
            let (w_gate, w_up) = if arch.fused_gate_up {
                let gate_up = find(&name("ffn_up"), 2 * ffn, dim)?;
                (
                    gate_up.row_slice(0..ffn, "gate rows"),
                    gate_up.row_slice(ffn..2 * ffn, "up rows"),
                )
            } else {
                (
                    find(&name("ffn_gate"), ffn, dim)?,
                    find(&name("ffn_up"), ffn, dim)?,
                )
            };
            let bias = |t: &str, len: usize| find(&format!("blk.{i}.{t}.bias"), 1, len);
            let qkv_bias = match arch.qkv_bias {
                Presence::Absent => None,
                Presence::Optional if file.tensor(&format!("blk.{i}.attn_q.bias")).is_none() => {
                    None
                }
                Presence::Optional | Presence::Required => Some([
                    bias("attn_q", q_dim)?,
                    bias("attn_k", kv_dim)?,
                    bias("attn_v", kv_dim)?,
                ]),
            };
            let qk_norm = if arch.qk_norm {
                Some([
                    find(&name("attn_q_norm"), 1, hp.head_dim)?,
                    find(&name("attn_k_norm"), 1, hp.head_dim)?,
                ])
            } else {
                None
            };
            layers.push(LayerTensors {
                attn_norm: find(&name("attn_norm"), 1, dim)?,
                wq,
                wk,
                wv,
                wo: find(&name("attn_output"), dim, q_dim)?,
                ffn_norm: find(&name("ffn_norm"), 1, dim)?,
                w_gate,
                w_up,
                w_down: find(&name("ffn_down"), dim, ffn)?,
                qkv_bias,
                qk_norm,
            });
        }
        Ok(Model {
            hparams: hp,
            token_embd,
            output_norm,
            output,
            layers,
        })
    }
}

fn tensor_ref(file: &GgufFile, t: &TensorInfo, rows: usize, cols: usize) -> Result<TensorRef> {
    let expected_dims: Vec<u64> = if rows == 1 {
        vec![cols as u64]
    } else {
        vec![cols as u64, rows as u64]
    };
    // A vector may also be stored as [cols, 1].
    let dims_match = t.dims == expected_dims || (rows == 1 && t.dims == [cols as u64, 1]);
    if !dims_match {
        return Err(Error::model(format!(
            "{}: tensor {}: expected shape {:?}, found {} {} (the shape disagrees with the hyperparameters)",
            file.path.display(),
            t.name,
            expected_dims,
            t.ggml_type,
            t.shape_string()
        )));
    }
    if !t.ggml_type.is_supported() {
        return Err(Error::model(format!(
            "{}: tensor {}: unsupported type {} (supported: {})",
            file.path.display(),
            t.name,
            t.ggml_type,
            GgmlType::supported_list()
        )));
    }
    let start = file.tensor_file_offset(t);
    Ok(TensorRef {
        name: t.name.clone(),
        ggml_type: t.ggml_type,
        rows,
        cols,
        file_range: start..start + t.size_bytes,
    })
}
