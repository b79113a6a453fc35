//! `flea synth`: random-weight llama GGUF files with the shapes of real
//! models (TinyLlama-1.1B, Llama-2-7B/13B/70B) and llama.cpp's per-tensor
//! quantization mixes, so that streaming, planning and speed can be tested
//! at full size without downloading weights.
//!
//! The file is laid out the way `llama-quantize` writes it (output head,
//! output norm and embeddings first, then each layer's tensors together in
//! name order), and its tensor data is generated while it is written, a few
//! MiB at a time, so a 40 GB model needs no more memory than a tiny one.
//! [`preset_model`] gives the same layout without writing anything.
//!
//! The weights are random but valid: every block has finite f16 factors and
//! random quants, scaled so that each weight has a standard deviation of
//! `1/sqrt(fan_in)`; activations then keep unit scale through the layers
//! and logits stay finite. The output head is scaled up so logits spread
//! (std about 3) as in the fixture models.

mod blocks;
mod vocab;

use crate::error::{Error, Result};
use crate::gguf::{GgufWriter, TensorInfo, Value};
use crate::model::{Hparams, LayerTensors, Model, TensorRef};
use crate::output_file::OutputFile;
use crate::quant::GgmlType;
use blocks::{tensor_seed, write_tensor, Rng};
use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;
use vocab::{copied_vocab, placeholder_vocab};

/// Vocabulary size of the placeholder tokenizer (Llama-2's).
pub const PLACEHOLDER_VOCAB: usize = 32000;

/// Bytes generated per write: large enough that writes run at disk speed,
/// small enough to stay in cache.
const CHUNK_BYTES: usize = 4 << 20;

/// Logit spread of the output head, relative to a unit-variance projection.
const OUTPUT_GAIN: f32 = 3.0;

/// Half-width of the uniform noise around 1.0 in norm weights.
const NORM_NOISE: f32 = 0.05;

/// A model shape to synthesize.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Preset {
    /// The fixture shape: dim 256, 4 layers, GQA; small enough for tests.
    Tiny,
    /// TinyLlama-1.1B.
    B1,
    /// Llama-2-7B.
    B7,
    /// Llama-2-13B.
    B13,
    /// Llama-2-70B (GQA, 8 KV heads).
    B70,
}

/// The numbers that make a llama shape.
struct Shape {
    dim: usize,
    n_layers: usize,
    n_heads: usize,
    n_kv_heads: usize,
    ffn_dim: usize,
    context_length: usize,
}

impl Preset {
    pub const ALL: [Preset; 5] = [
        Preset::Tiny,
        Preset::B1,
        Preset::B7,
        Preset::B13,
        Preset::B70,
    ];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Tiny => "tiny",
            Preset::B1 => "1b",
            Preset::B7 => "7b",
            Preset::B13 => "13b",
            Preset::B70 => "70b",
        }
    }

    fn shape(self) -> Shape {
        let (dim, n_layers, n_heads, n_kv_heads, ffn_dim, context_length) = match self {
            Preset::Tiny => (256, 4, 4, 2, 768, 2048),
            Preset::B1 => (2048, 22, 32, 4, 5632, 2048),
            Preset::B7 => (4096, 32, 32, 32, 11008, 4096),
            Preset::B13 => (5120, 40, 40, 40, 13824, 4096),
            Preset::B70 => (8192, 80, 64, 8, 28672, 4096),
        };
        Shape {
            dim,
            n_layers,
            n_heads,
            n_kv_heads,
            ffn_dim,
            context_length,
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Preset {
    type Err = Error;

    fn from_str(s: &str) -> Result<Preset> {
        Preset::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                Error::usage(format!(
                    "unknown model preset {s:?} (expected tiny, 1b, 7b, 13b or 70b)"
                ))
            })
    }
}

/// A llama.cpp quantization mix (`llama-quantize` file types).
///
/// The 32-weight formats (Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL) are written as
/// `llama-quantize --pure` writes them: every matrix in that one format,
/// the output head and token embedding included, so a file exercises the
/// format everywhere (llama.cpp's default mixes give those two Q6_K).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantMix {
    Q4KM,
    Q3KM,
    Q3KS,
    Q6K,
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    IQ4NL,
    F16,
}

impl QuantMix {
    pub const ALL: [QuantMix; 11] = [
        QuantMix::Q4KM,
        QuantMix::Q3KM,
        QuantMix::Q3KS,
        QuantMix::Q6K,
        QuantMix::Q8_0,
        QuantMix::Q4_0,
        QuantMix::Q4_1,
        QuantMix::Q5_0,
        QuantMix::Q5_1,
        QuantMix::IQ4NL,
        QuantMix::F16,
    ];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            QuantMix::Q4KM => "q4_k_m",
            QuantMix::Q3KM => "q3_k_m",
            QuantMix::Q3KS => "q3_k_s",
            QuantMix::Q6K => "q6_k",
            QuantMix::Q8_0 => "q8_0",
            QuantMix::Q4_0 => "q4_0",
            QuantMix::Q4_1 => "q4_1",
            QuantMix::Q5_0 => "q5_0",
            QuantMix::Q5_1 => "q5_1",
            QuantMix::IQ4NL => "iq4_nl",
            QuantMix::F16 => "f16",
        }
    }

    /// llama.cpp's `llama_ftype` number, stored as `general.file_type`.
    pub fn file_type(self) -> u32 {
        match self {
            QuantMix::F16 => 1,
            QuantMix::Q4_0 => 2,
            QuantMix::Q4_1 => 3,
            QuantMix::Q8_0 => 7,
            QuantMix::Q5_0 => 8,
            QuantMix::Q5_1 => 9,
            QuantMix::IQ4NL => 25,
            QuantMix::Q3KS => 11,
            QuantMix::Q3KM => 12,
            QuantMix::Q4KM => 15,
            QuantMix::Q6K => 18,
        }
    }

    /// The type most tensors get; llama.cpp's `default_type`.
    fn base_type(self) -> GgmlType {
        match self {
            QuantMix::Q4KM => GgmlType::Q4K,
            QuantMix::Q3KM | QuantMix::Q3KS => GgmlType::Q3K,
            QuantMix::Q6K => GgmlType::Q6K,
            QuantMix::Q8_0 => GgmlType::Q8_0,
            QuantMix::Q4_0 => GgmlType::Q4_0,
            QuantMix::Q4_1 => GgmlType::Q4_1,
            QuantMix::Q5_0 => GgmlType::Q5_0,
            QuantMix::Q5_1 => GgmlType::Q5_1,
            QuantMix::IQ4NL => GgmlType::IQ4NL,
            QuantMix::F16 => GgmlType::F16,
        }
    }

    /// Whether every matrix gets the base type (see the type's notes).
    fn is_pure(self) -> bool {
        matches!(
            self,
            QuantMix::Q4_0 | QuantMix::Q4_1 | QuantMix::Q5_0 | QuantMix::Q5_1 | QuantMix::IQ4NL
        )
    }
}

impl fmt::Display for QuantMix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for QuantMix {
    type Err = Error;

    fn from_str(s: &str) -> Result<QuantMix> {
        QuantMix::ALL
            .into_iter()
            .find(|q| q.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let names: Vec<&str> = QuantMix::ALL.iter().map(|q| q.name()).collect();
                Error::usage(format!(
                    "unknown quantization {s:?} (expected one of {})",
                    names.join(", ")
                ))
            })
    }
}

#[derive(Debug, Clone)]
pub struct SynthOptions {
    pub preset: Preset,
    pub quant: QuantMix,
    /// A GGUF whose `tokenizer.ggml.*` keys are copied (its vocabulary size
    /// is used); `None` builds a placeholder SPM vocabulary of 32000.
    pub vocab: Option<PathBuf>,
    /// Same seed, same options: same bytes.
    pub seed: u64,
}

impl SynthOptions {
    pub fn new(preset: Preset, quant: QuantMix) -> SynthOptions {
        SynthOptions {
            preset,
            quant,
            vocab: None,
            seed: 42,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SynthReport {
    /// Size of the written file.
    pub bytes: u64,
    pub tensors: usize,
    /// Wall time, including the final sync to disk.
    pub seconds: f64,
}

impl SynthReport {
    pub fn bytes_per_second(&self) -> f64 {
        self.bytes as f64 / self.seconds.max(1e-9)
    }
}

/// Write a synthetic model to `out`. `progress(written, total)` is called
/// as the data goes out (every few MiB). The file appears under its name
/// only once complete (see [`OutputFile`]): a failure or a dropped call
/// leaves neither a partial file nor a truncated `out`.
pub fn synth(
    opts: &SynthOptions,
    out: &Path,
    mut progress: impl FnMut(u64, u64),
) -> Result<SynthReport> {
    let start = Instant::now();
    let plan = Plan::new(opts)?;
    let total = plan.writer.file_len();
    let mut output = OutputFile::create(out)?;
    let partial = output.partial().to_path_buf();
    write_file(&plan, output.file(), opts.seed, total, &mut progress)
        .map_err(|e| Error::io(format!("{}: cannot write: {e}", partial.display())))?;
    output.commit()?;
    progress(total, total);
    Ok(SynthReport {
        bytes: total,
        tensors: plan.fills.len(),
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// The model [`synth`] would write for `opts`, located as in the file,
/// without writing it. Reads the vocabulary file when one is given.
pub fn synth_model(opts: &SynthOptions) -> Result<Model> {
    let plan = Plan::new(opts)?;
    let (data_offset, table) = plan.writer.layout();
    Ok(model_from_layout(plan.hparams, data_offset, &table))
}

/// The model of a preset with the placeholder vocabulary, exactly as
/// [`synth`] lays it out, for planning at sizes not worth writing.
pub fn preset_model(preset: Preset, quant: QuantMix) -> Model {
    synth_model(&SynthOptions::new(preset, quant))
        .expect("a preset with the placeholder vocabulary always plans")
}

fn write_file(
    plan: &Plan,
    file: &mut File,
    seed: u64,
    total: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> io::Result<()> {
    let (data_offset, _) = plan.writer.layout();
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let mut buf = Vec::with_capacity(CHUNK_BYTES);
    plan.writer.write_streaming(&mut w, |index, t, sink| {
        let start = data_offset + t.offset;
        let mut report = |done: u64| progress(start + done, total);
        let rng = Rng::new(tensor_seed(seed, index as u64));
        write_tensor(t, plan.fills[index], rng, &mut buf, sink, &mut report)
    })?;
    w.flush()
}

/// What a tensor's values look like.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fill {
    /// RMS-norm weights: 1 plus a little noise.
    Norm,
    /// Zero-mean weights with this standard deviation.
    Weights { sigma: f32 },
}

/// The metadata and tensor table of a synthetic model, and how to fill
/// each tensor (in table order).
struct Plan {
    writer: GgufWriter<'static>,
    hparams: Hparams,
    fills: Vec<Fill>,
}

/// The role of a tensor, as llama.cpp's type rules see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    TokenEmbd,
    Output,
    Norm,
    AttnQ,
    AttnK,
    AttnV,
    AttnOutput,
    FfnGate,
    FfnUp,
    FfnDown,
}

impl Plan {
    fn new(opts: &SynthOptions) -> Result<Plan> {
        let s = opts.preset.shape();
        let (vocab_meta, n_vocab) = match &opts.vocab {
            Some(path) => copied_vocab(path)?,
            None => (placeholder_vocab(), PLACEHOLDER_VOCAB),
        };
        let head_dim = s.dim / s.n_heads;
        let hparams = Hparams::llama(
            s.n_layers,
            s.dim,
            s.n_heads,
            s.n_kv_heads,
            s.ffn_dim,
            n_vocab,
            s.context_length,
        );

        let mut w = GgufWriter::new();
        let u32v = |v: usize| Value::U32(v as u32);
        let name = format!("synth-{}-{}", opts.preset, opts.quant.name().to_uppercase());
        w.set("general.architecture", Value::String("llama".into()));
        w.set("general.name", Value::String(name));
        w.set("general.file_type", Value::U32(opts.quant.file_type()));
        w.set("general.quantization_version", Value::U32(2));
        w.set("general.alignment", Value::U32(32));
        w.set("llama.context_length", u32v(s.context_length));
        w.set("llama.embedding_length", u32v(s.dim));
        w.set("llama.block_count", u32v(s.n_layers));
        w.set("llama.feed_forward_length", u32v(s.ffn_dim));
        w.set("llama.rope.dimension_count", u32v(head_dim));
        w.set("llama.attention.head_count", u32v(s.n_heads));
        w.set("llama.attention.head_count_kv", u32v(s.n_kv_heads));
        w.set(
            "llama.attention.layer_norm_rms_epsilon",
            Value::F32(hparams.rms_eps),
        );
        w.set("llama.rope.freq_base", Value::F32(hparams.rope_base));
        w.set("llama.vocab_size", u32v(n_vocab));
        for (key, value) in vocab_meta {
            w.set(&key, value);
        }

        // llama.cpp gives 70B-class llamas (80 layers, GQA) more bits in
        // attn_v, which is 8x smaller than attn_q there.
        let is_70b = s.n_layers == 80 && s.n_kv_heads != s.n_heads;
        let q_dim = s.n_heads * head_dim;
        let kv_dim = s.n_kv_heads * head_dim;
        let mut fills = Vec::new();
        let mut add = |name: &str, role: Role, layer: usize, rows: usize, cols: usize| {
            let ty = tensor_type(opts.quant, role, layer, s.n_layers, is_70b);
            let (dims, fill) = if role == Role::Norm {
                (vec![cols as u64], Fill::Norm)
            } else {
                let gain = if role == Role::Output {
                    OUTPUT_GAIN
                } else {
                    1.0
                };
                let sigma = gain / (cols as f32).sqrt();
                (vec![cols as u64, rows as u64], Fill::Weights { sigma })
            };
            fills.push(fill);
            w.add_tensor_streamed(name, dims, ty)
        };
        // llama-quantize's order: tensors outside the layers first, by name,
        // then the layers in number order, each layer's tensors by name.
        add("output.weight", Role::Output, 0, n_vocab, s.dim)?;
        add("output_norm.weight", Role::Norm, 0, 1, s.dim)?;
        add("token_embd.weight", Role::TokenEmbd, 0, n_vocab, s.dim)?;
        let layer_tensors = [
            ("attn_k", Role::AttnK, kv_dim, s.dim),
            ("attn_norm", Role::Norm, 1, s.dim),
            ("attn_output", Role::AttnOutput, s.dim, q_dim),
            ("attn_q", Role::AttnQ, q_dim, s.dim),
            ("attn_v", Role::AttnV, kv_dim, s.dim),
            ("ffn_down", Role::FfnDown, s.dim, s.ffn_dim),
            ("ffn_gate", Role::FfnGate, s.ffn_dim, s.dim),
            ("ffn_norm", Role::Norm, 1, s.dim),
            ("ffn_up", Role::FfnUp, s.ffn_dim, s.dim),
        ];
        for layer in 0..s.n_layers {
            for (short, role, rows, cols) in layer_tensors {
                add(
                    &format!("blk.{layer}.{short}.weight"),
                    role,
                    layer,
                    rows,
                    cols,
                )?;
            }
        }
        Ok(Plan {
            writer: w,
            hparams,
            fills,
        })
    }
}

/// llama.cpp's "use more bits" layers: the first and last eighth, and every
/// third layer in between.
fn use_more_bits(layer: usize, n_layers: usize) -> bool {
    layer < n_layers / 8 || layer >= 7 * n_layers / 8 || (layer - n_layers / 8) % 3 == 2
}

/// The type `llama-quantize` picks for a llama tensor (its
/// `llama_tensor_get_type`, for the mixes offered here). Every row length
/// of the presets is a multiple of 256, so its fallbacks never apply.
fn tensor_type(
    quant: QuantMix,
    role: Role,
    layer: usize,
    n_layers: usize,
    is_70b: bool,
) -> GgmlType {
    use GgmlType::*;
    // Only matrices are quantized; f16 files are converted, not quantized,
    // so no rule applies to them either.
    if role == Role::Norm {
        return F32;
    }
    let base = quant.base_type();
    if quant == QuantMix::F16 || quant.is_pure() {
        return base;
    }
    match role {
        Role::Output => {
            if base == Q8_0 {
                Q8_0
            } else {
                Q6K
            }
        }
        Role::AttnV => {
            let ty = match quant {
                QuantMix::Q3KM if layer < 2 => Q5K,
                QuantMix::Q3KM => Q4K,
                QuantMix::Q4KM if use_more_bits(layer, n_layers) => Q6K,
                _ => base,
            };
            if is_70b && matches!(ty, Q3K | Q4K) {
                Q5K
            } else {
                ty
            }
        }
        Role::FfnDown => match quant {
            QuantMix::Q3KM if layer < n_layers / 16 => Q5K,
            QuantMix::Q3KM => Q4K,
            QuantMix::Q4KM if use_more_bits(layer, n_layers) => Q6K,
            _ => base,
        },
        Role::AttnOutput if quant == QuantMix::Q3KM => Q4K,
        _ => base,
    }
}

fn model_from_layout(hparams: Hparams, data_offset: u64, table: &[TensorInfo]) -> Model {
    let by_name: HashMap<&str, &TensorInfo> = table.iter().map(|t| (t.name.as_str(), t)).collect();
    let get = |name: &str| -> TensorRef {
        let t = by_name[name];
        let (rows, cols) = match t.dims[..] {
            [cols] => (1, cols as usize),
            [cols, rows] => (rows as usize, cols as usize),
            _ => unreachable!("synth tensors have one or two dimensions"),
        };
        let start = data_offset + t.offset;
        TensorRef {
            name: t.name.clone(),
            ggml_type: t.ggml_type,
            rows,
            cols,
            file_range: start..start + t.size_bytes,
        }
    };
    let layers = (0..hparams.n_layers)
        .map(|i| {
            let l = |t: &str| get(&format!("blk.{i}.{t}.weight"));
            LayerTensors {
                attn_norm: l("attn_norm"),
                wq: l("attn_q"),
                wk: l("attn_k"),
                wv: l("attn_v"),
                wo: l("attn_output"),
                ffn_norm: l("ffn_norm"),
                w_gate: l("ffn_gate"),
                w_up: l("ffn_up"),
                w_down: l("ffn_down"),
                qkv_bias: None,
                qk_norm: None,
            }
        })
        .collect();
    Model {
        token_embd: get("token_embd.weight"),
        output_norm: get("output_norm.weight"),
        output: get("output.weight"),
        layers,
        hparams,
    }
}

#[cfg(test)]
mod tests {
    use super::vocab::filler_word;
    use super::*;
    use crate::quant::dequantize_row;

    #[test]
    fn names_parse_back() {
        for p in Preset::ALL {
            assert_eq!(p.name().parse::<Preset>().unwrap(), p);
        }
        for q in QuantMix::ALL {
            assert_eq!(q.name().parse::<QuantMix>().unwrap(), q);
            assert_eq!(q.name().to_uppercase().parse::<QuantMix>().unwrap(), q);
        }
        let err = "q2_k".parse::<QuantMix>().unwrap_err();
        assert_eq!(err.kind, crate::ErrorKind::Usage);
        assert!("3b".parse::<Preset>().is_err());
    }

    #[test]
    fn more_bits_layers_follow_llama_cpp() {
        // 4 layers (the fixtures): layers 2 and 3.
        let pick = |n| (0..n).filter(|&i| use_more_bits(i, n)).collect::<Vec<_>>();
        assert_eq!(pick(4), [2, 3]);
        // 32 layers: first 4, last 4, and 6, 9, ..., 27.
        assert_eq!(
            pick(32),
            [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
        );
    }

    /// Every generated type has the intended weight statistics.
    #[test]
    fn weights_have_the_target_spread() {
        use GgmlType::*;
        let (rows, cols) = (64u64, 4096u64);
        let sigma = 1.0 / (cols as f32).sqrt();
        for ty in [Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4NL, Q3K, Q4K, Q5K, Q6K, F16] {
            let t = TensorInfo {
                name: "w".into(),
                dims: vec![cols, rows],
                ggml_type: ty,
                offset: 0,
                size_bytes: ty.row_bytes(cols as usize).unwrap() as u64 * rows,
            };
            let mut bytes = Vec::new();
            let fill = Fill::Weights { sigma };
            let mut buf = Vec::new();
            write_tensor(&t, fill, Rng::new(3), &mut buf, &mut bytes, &mut |_| {}).unwrap();
            assert_eq!(bytes.len() as u64, t.size_bytes);
            let mut w = vec![0.0f32; (rows * cols) as usize];
            let row_bytes = bytes.len() / rows as usize;
            for (r, o) in bytes.chunks(row_bytes).zip(w.chunks_mut(cols as usize)) {
                dequantize_row(ty, r, o);
            }
            assert!(w.iter().all(|v| v.is_finite()), "{ty}");
            let n = w.len() as f64;
            let mean = w.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
            let var = w
                .iter()
                .map(|&v| (f64::from(v) - mean).powi(2))
                .sum::<f64>()
                / n;
            let (mean, std) = (mean as f32, var.sqrt() as f32);
            assert!(
                (std / sigma - 1.0).abs() < 0.05,
                "{ty}: std {std} vs {sigma}"
            );
            assert!(mean.abs() < 0.02 * sigma, "{ty}: mean {mean}");
        }
    }

    /// Generation alone, without a disk: it should outrun any disk. The
    /// rate is printed, not asserted (machines differ).
    #[test]
    fn generation_rate() {
        let (rows, cols) = (4096u64, 8192u64);
        for ty in [GgmlType::Q4K, GgmlType::Q6K, GgmlType::F16] {
            let t = TensorInfo {
                name: "w".into(),
                dims: vec![cols, rows],
                ggml_type: ty,
                offset: 0,
                size_bytes: ty.row_bytes(cols as usize).unwrap() as u64 * rows,
            };
            let fill = Fill::Weights { sigma: 0.01 };
            let start = Instant::now();
            let mut sink = io::sink();
            write_tensor(
                &t,
                fill,
                Rng::new(1),
                &mut Vec::new(),
                &mut sink,
                &mut |_| {},
            )
            .unwrap();
            let rate = t.size_bytes as f64 / start.elapsed().as_secs_f64() / 1e6;
            println!(
                "{ty}: {} MB generated at {rate:.0} MB/s",
                t.size_bytes / 1_000_000
            );
        }
    }

    #[test]
    fn placeholder_words_are_distinct() {
        let words: std::collections::HashSet<String> =
            (0..PLACEHOLDER_VOCAB).map(filler_word).collect();
        assert_eq!(words.len(), PLACEHOLDER_VOCAB);
        assert_eq!(filler_word(0), "\u{2581}ba");
        assert_eq!(filler_word(70), "\u{2581}baba");
    }

    #[test]
    fn same_seed_same_bytes() {
        let t = TensorInfo {
            name: "w".into(),
            dims: vec![256, 8],
            ggml_type: GgmlType::Q4K,
            offset: 0,
            size_bytes: 8 * 144,
        };
        let fill = Fill::Weights { sigma: 0.1 };
        let gen = |seed| {
            let mut out = Vec::new();
            write_tensor(
                &t,
                fill,
                Rng::new(seed),
                &mut Vec::new(),
                &mut out,
                &mut |_| {},
            )
            .unwrap();
            out
        };
        assert_eq!(gen(1), gen(1));
        assert_ne!(gen(1), gen(2));
    }
}
