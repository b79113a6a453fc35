//! `flea inspect`: a GGUF file's header, tensor table and per-layer bytes.

use clap::Args;
use flea::gguf::GgufFile;
use flea::model::{Model, RopeStyle};
use flea::{Error, Result};
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct InspectArgs {
    /// Path to a GGUF file.
    #[arg(long, short = 'm')]
    model: PathBuf,
}

pub fn inspect(args: InspectArgs) -> Result<u8> {
    let start = Instant::now();
    let file = GgufFile::open(&args.model)?;
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let io = Error::stdout;
    writeln!(
        out,
        "file: {}\nGGUF version {}, {} metadata keys, {} tensors, alignment {}, data at offset {}, {} bytes",
        file.path.display(),
        file.version,
        file.metadata.len(),
        file.tensors.len(),
        file.alignment,
        file.data_offset,
        file.file_len()
    )
    .map_err(io)?;
    writeln!(out, "\nmetadata:").map_err(io)?;
    for (key, value) in &file.metadata {
        writeln!(out, "  {key} = {value}").map_err(io)?;
    }
    writeln!(out, "\ntensors:").map_err(io)?;
    for t in &file.tensors {
        writeln!(
            out,
            "  {:<32} {:<5} {:<16} offset {:>12}  {:>12} bytes",
            t.name,
            t.ggml_type.to_string(),
            t.shape_string(),
            file.tensor_file_offset(t),
            t.size_bytes
        )
        .map_err(io)?;
    }
    match Model::from_gguf(&file) {
        Ok(model) => {
            let hp = &model.hparams;
            writeln!(
                out,
                "\nmodel: {}, {} layers, dim {}, {} heads ({} kv, head dim {}), ffn {}, vocab {}, context {}, rope base {} over {} dims, rms eps {}",
                hp.arch, hp.n_layers, hp.dim, hp.n_heads, hp.n_kv_heads, hp.head_dim, hp.ffn_dim,
                hp.vocab_size, hp.context_length, hp.rope_base, hp.rope_dims, hp.rms_eps
            )
            .map_err(io)?;
            writeln!(out, "architecture: {}", describe(&model)).map_err(io)?;
            writeln!(out, "bytes per layer:").map_err(io)?;
            for (i, layer) in model.layers.iter().enumerate() {
                let span = layer.file_span();
                writeln!(
                    out,
                    "  layer {i:>3}: {:>12} bytes (file {}..{})",
                    layer.weight_bytes(),
                    span.start,
                    span.end
                )
                .map_err(io)?;
            }
            let embd = model.token_embd.bytes();
            let head = if model.output == model.token_embd {
                0
            } else {
                model.output.bytes()
            };
            writeln!(
                out,
                "  embeddings {embd} bytes, output head {head} bytes, output norm {} bytes",
                model.output_norm.bytes()
            )
            .map_err(io)?;
        }
        Err(e) => {
            // The header and tensor table above are still worth reading;
            // the error goes to stderr with its exit code.
            out.flush().map_err(io)?;
            return Err(e);
        }
    }
    out.flush().map_err(io)?;
    log::info!("inspected in {:.1} ms", start.elapsed().as_secs_f64() * 1e3);
    Ok(0)
}

/// What this file's architecture does beyond the plain llama block, in the
/// words of its description ([`flea::model::Arch`]).
fn describe(model: &Model) -> String {
    let hp = &model.hparams;
    let arch = hp.arch;
    let mut parts = vec![match arch.rope {
        RopeStyle::Interleaved => "rope on adjacent pairs".to_string(),
        RopeStyle::Neox => "rope on halves (NEOX)".to_string(),
    }];
    if !hp.rope_factors.is_empty() {
        parts.push(format!("rope_freqs factors ({})", hp.rope_factors.len()));
    }
    if arch.fused_qkv {
        parts.push("fused attn_qkv".into());
    }
    if arch.fused_gate_up {
        parts.push("fused gate/up in ffn_up".into());
    }
    if model.layers.first().is_some_and(|l| l.qkv_bias.is_some()) {
        parts.push("q/k/v biases".into());
    }
    if arch.qk_norm {
        parts.push("per-head q/k norms".into());
    }
    if let Some(w) = hp.sliding_window {
        parts.push(format!("sliding window {w}"));
    }
    if model.output == model.token_embd {
        parts.push("output tied to the embeddings".into());
    }
    parts.join(", ")
}
