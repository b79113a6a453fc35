//! `flea synth`: a random-weight model with real shapes.

use clap::Args;
use flea::config::ByteSize;
use flea::Result;
use std::path::PathBuf;

#[derive(Args)]
pub struct SynthArgs {
    /// Shape: tiny, 1b, 7b, 13b or 70b.
    #[arg(long)]
    preset: flea::synth::Preset,
    /// Quantization mix: q4_k_m, q3_k_m, q3_k_s, q6_k, q8_0 or f16 (llama.cpp's
    /// mixes), or q4_0, q4_1, q5_0, q5_1, iq4_nl (every matrix in that format,
    /// like llama-quantize --pure).
    #[arg(long, default_value = "q4_k_m")]
    quant: flea::synth::QuantMix,
    /// Copy the tokenizer from this GGUF (e.g. a vocab-only file).
    #[arg(long)]
    vocab: Option<PathBuf>,
    /// Random seed: same seed and options, same bytes.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Output file.
    #[arg(long, short = 'o')]
    out: PathBuf,
}

pub fn synth_cmd(args: SynthArgs) -> Result<u8> {
    let opts = flea::synth::SynthOptions {
        preset: args.preset,
        quant: args.quant,
        vocab: args.vocab,
        seed: args.seed,
    };
    log::info!(
        "writing {} {} to {}",
        opts.preset,
        opts.quant,
        args.out.display()
    );
    super::session::remove_partial_on_signal(&args.out)?;
    let report = flea::synth::synth(&opts, &args.out, super::demo::progress_bar("synth"))?;
    eprintln!();
    log::info!(
        "wrote {} ({} tensors) in {:.1} s: {:.0} MB/s",
        ByteSize(report.bytes),
        report.tensors,
        report.seconds,
        report.bytes_per_second() / 1e6
    );
    Ok(0)
}
