//! The llama model as described by a GGUF file: hyperparameters, and every
//! weight tensor located, shape-checked and type-checked at load time.
//!
//! Weights are described by where they live in the file ([`TensorRef`]), not
//! held in memory: the engine asks a weight source for the bytes, which may
//! be the memory map (resident) or a streaming slot.

use crate::error::{Error, Result};
use crate::gguf::{GgufFile, TensorInfo};
use crate::quant::GgmlType;
use std::ops::Range;

/// Hyperparameters of a llama-architecture model.
#[derive(Debug, Clone, PartialEq)]
pub struct Hparams {
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
}

impl Hparams {
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    pub fn from_gguf(file: &GgufFile) -> Result<Hparams> {
        let path = file.path.display();
        let arch = file.require_str("general.architecture")?;
        if arch != "llama" {
            return Err(Error::model(format!(
                "{path}: key general.architecture: expected \"llama\", found {arch:?} (unsupported architecture)"
            )));
        }
        let key = |k: &str| format!("llama.{k}");
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
        // Each block has nine tensors, so the tensor table bounds the block
        // count; check before anything is sized by it.
        let most_layers = (file.tensors.len() / 9).min(crate::limits::MAX_LAYERS);
        if n_layers > most_layers {
            return Err(Error::model(format!(
                "{path}: key {}: expected at most {most_layers} (the file has {} tensors, nine per block; cap {}), found {n_layers}",
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
        if dim % n_heads != 0 {
            return Err(Error::model(format!(
                "{path}: key {}: embedding_length {dim} is not divisible by head_count {n_heads}",
                key("attention.head_count")
            )));
        }
        if n_heads % n_kv_heads != 0 {
            return Err(Error::model(format!(
                "{path}: key {}: head_count {n_heads} is not a multiple of head_count_kv {n_kv_heads}",
                key("attention.head_count_kv")
            )));
        }
        let head_dim = dim / n_heads;
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
        Ok(Hparams {
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
        })
    }
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
}

/// The nine tensors of one transformer block.
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
}

impl LayerTensors {
    pub fn all(&self) -> [&TensorRef; 9] {
        [
            &self.attn_norm,
            &self.wq,
            &self.wk,
            &self.wv,
            &self.wo,
            &self.ffn_norm,
            &self.w_gate,
            &self.w_up,
            &self.w_down,
        ]
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

/// A llama model: hyperparameters plus every tensor, validated.
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
    /// Locate and check every tensor against the hyperparameters.
    pub fn from_gguf(file: &GgufFile) -> Result<Model> {
        let hp = Hparams::from_gguf(file)?;
        let find = |name: &str, rows: usize, cols: usize| -> Result<TensorRef> {
            let t = file.tensor(name).ok_or_else(|| {
                Error::model(format!(
                    "{}: missing tensor {name} (expected shape [{cols}, {rows}])",
                    file.path.display()
                ))
            })?;
            tensor_ref(file, t, rows, cols)
        };
        let (dim, q_dim, kv_dim, ffn) = (hp.dim, hp.n_heads * hp.head_dim, hp.kv_dim(), hp.ffn_dim);
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
            layers.push(LayerTensors {
                attn_norm: find(&name("attn_norm"), 1, dim)?,
                wq: find(&name("attn_q"), q_dim, dim)?,
                wk: find(&name("attn_k"), kv_dim, dim)?,
                wv: find(&name("attn_v"), kv_dim, dim)?,
                wo: find(&name("attn_output"), dim, q_dim)?,
                ffn_norm: find(&name("ffn_norm"), 1, dim)?,
                w_gate: find(&name("ffn_gate"), ffn, dim)?,
                w_up: find(&name("ffn_up"), ffn, dim)?,
                w_down: find(&name("ffn_down"), dim, ffn)?,
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
