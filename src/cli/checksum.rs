//! `flea checksum`: the per-layer hash sidecar that `--verify` checks.

use clap::Args;
use flea::gguf::GgufFile;
use flea::model::Model;
use flea::output_file::OutputFile;
use flea::{Error, Result};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct ChecksumArgs {
    /// Path to a GGUF model file; the hashes go to this path + ".sums".
    #[arg(long, short = 'm')]
    model: PathBuf,
}

pub fn checksum_cmd(args: ChecksumArgs) -> Result<u8> {
    use flea::residency::checksum::{sidecar_path, Sums};
    let file = GgufFile::open(&args.model)?;
    let model = Model::from_gguf(&file)?;
    let target = sidecar_path(&args.model);
    let start = Instant::now();
    let bytes = file.bytes_at(0..file.file_len());
    let sums = Sums::compute(&model, bytes, super::demo::progress_bar("checksum"));
    eprintln!();
    super::session::remove_partial_on_signal(&target)?;
    let mut out = OutputFile::create(&target)?;
    out.file()
        .write_all(sums.to_text().as_bytes())
        .map_err(|e| Error::io(format!("{}: {e}", out.partial().display())))?;
    out.commit()?;
    let seconds = start.elapsed().as_secs_f64();
    log::info!(
        "wrote {} ({} layers, {} global regions) in {:.2} s: {:.0} MB/s",
        target.display(),
        sums.layers.len(),
        sums.globals.len(),
        seconds,
        file.file_len() as f64 / seconds.max(1e-9) / 1e6
    );
    Ok(0)
}
