//! `flea tokenize`: text to token ids, as llama-tokenize prints them.

use clap::Args;
use flea::gguf::GgufFile;
use flea::{Error, Result};
use std::io::{BufWriter, Write};
use std::path::PathBuf;

#[derive(Args)]
pub struct TokenizeArgs {
    /// Path to a GGUF file (a vocab-only file is enough).
    #[arg(long, short = 'm')]
    model: PathBuf,
    /// Print only the ids, as one list: [1, 2, 3].
    #[arg(long)]
    ids: bool,
    /// Do not add BOS, even if the model asks for it.
    #[arg(long)]
    no_bos: bool,
    /// Turn control tokens written in the text (<|im_start|>, <s>) into those tokens.
    #[arg(long)]
    special: bool,
    /// The text [default: all of stdin].
    text: Option<String>,
}

pub fn tokenize(args: TokenizeArgs) -> Result<u8> {
    let file = GgufFile::open(&args.model)?;
    let tokenizer = flea::tokenizer::Tokenizer::from_gguf(&file)?;
    let text = match args.text {
        Some(text) => text,
        None => std::io::read_to_string(std::io::stdin().lock()).map_err(|e| {
            if e.kind() == std::io::ErrorKind::InvalidData {
                Error::usage("stdin: the text is not valid UTF-8")
            } else {
                Error::io(format!("stdin: {e}"))
            }
        })?,
    };
    let add_bos = tokenizer.add_bos_default() && !args.no_bos;
    let tokens = if args.special {
        tokenizer.encode_with_special(&text, add_bos)
    } else {
        tokenizer.encode(&text, add_bos)
    };

    let mut out = BufWriter::new(std::io::stdout().lock());
    let io = |e: std::io::Error| Error::io(format!("stdout: {e}"));
    if args.ids {
        let list: Vec<String> = tokens.iter().map(u32::to_string).collect();
        writeln!(out, "[{}]", list.join(", ")).map_err(io)?;
    } else {
        // llama-tokenize's layout. Pieces are written as raw bytes, as the
        // model produces them; tokens that print nothing (BOS, control
        // tokens) show their stored text so that they can be seen.
        for &t in &tokens {
            let piece = tokenizer.token_piece(t);
            let shown = if piece.is_empty() {
                tokenizer.token_text(t).unwrap_or_default().as_bytes()
            } else {
                piece
            };
            write!(out, "{t:6} -> '").map_err(io)?;
            out.write_all(shown).map_err(io)?;
            writeln!(out, "'").map_err(io)?;
        }
    }
    out.flush().map_err(io)?;
    Ok(0)
}
