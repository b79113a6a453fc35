//! Integrity of the bytes a run reads: a sidecar file of hashes
//! (`M.gguf.sums`, written by `flea checksum`) and the check of every read
//! against it.
//!
//! One XXH3-64 hash per region the residency reads as a unit: each global
//! tensor (embeddings, output norm, output head) and each layer's tensor
//! span. A streamed layer is hashed by the loader thread as it arrives, so
//! a file that changes under a run (or storage that returns bad data) is an
//! I/O error naming the layer, never wrong text.
//!
//! The sidecar is plain text, one region per line, so it can be read and
//! diffed by hand:
//!
//! ```text
//! flea-sums 1 xxh3-64
//! file_len 13946048
//! global 0 1234-567890 0123456789abcdef
//! layer 0 567936-1044480 fedcba9876543210
//! ```
//!
//! The regions are recomputed from the model when the sidecar is loaded; a
//! sidecar made for another file (or another layout of it) is refused.

use super::plan::{global_reads, LayerRead};
use crate::error::{Error, Result};
use crate::model::Model;
use std::fmt::Write as _;
use std::ops::Range;
use std::path::{Path, PathBuf};

const HEADER: &str = "flea-sums 1 xxh3-64";

/// The hash of the bytes of one file region.
pub fn hash(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// The streaming form of [`hash`], for data that arrives in pieces.
pub struct Hasher(xxhash_rust::xxh3::Xxh3);

impl Hasher {
    pub fn new() -> Hasher {
        Hasher(xxhash_rust::xxh3::Xxh3::new())
    }
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    pub fn digest(&self) -> u64 {
        self.0.digest()
    }
}

impl Default for Hasher {
    fn default() -> Self {
        Self::new()
    }
}

/// What one region must hash to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// The region in the file: a layer's or a global tensor's span.
    pub span: Range<u64>,
    pub hash: u64,
}

/// Every region's expected hash, for one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sums {
    pub file_len: u64,
    /// In the order of [`global_reads`].
    pub globals: Vec<Expected>,
    /// One per layer.
    pub layers: Vec<Expected>,
}

/// Where the sidecar of `model_path` lives: next to it, `.sums` appended.
pub fn sidecar_path(model_path: &Path) -> PathBuf {
    let mut name = model_path.as_os_str().to_owned();
    name.push(".sums");
    PathBuf::from(name)
}

/// The regions a run reads as units: globals, then layers.
fn regions(model: &Model) -> (Vec<Range<u64>>, Vec<Range<u64>>) {
    let globals = global_reads(model).iter().map(|r| r.span.clone()).collect();
    let layers = model
        .layers
        .iter()
        .map(|l| LayerRead::covering(l.file_span()).span)
        .collect();
    (globals, layers)
}

impl Sums {
    /// Hash every region of `model` in `bytes` (the whole file).
    pub fn compute(model: &Model, bytes: &[u8], mut progress: impl FnMut(u64, u64)) -> Sums {
        let (globals, layers) = regions(model);
        let total: u64 = globals.iter().chain(&layers).map(|r| r.end - r.start).sum();
        let mut done = 0;
        let mut one = |span: Range<u64>| {
            let h = hash(&bytes[span.start as usize..span.end as usize]);
            done += span.end - span.start;
            progress(done, total);
            Expected { span, hash: h }
        };
        let globals = globals.into_iter().map(&mut one).collect();
        let layers = layers.into_iter().map(&mut one).collect();
        Sums {
            file_len: bytes.len() as u64,
            globals,
            layers,
        }
    }

    /// The sidecar text.
    pub fn to_text(&self) -> String {
        let mut s = format!("{HEADER}\nfile_len {}\n", self.file_len);
        for (kind, list) in [("global", &self.globals), ("layer", &self.layers)] {
            for (i, e) in list.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "{kind} {i} {}-{} {:016x}",
                    e.span.start, e.span.end, e.hash
                );
            }
        }
        s
    }

    /// Read the sidecar `path` and check that it describes `model` in a
    /// file of `file_len` bytes.
    pub fn load(path: &Path, model: &Model, file_len: u64) -> Result<Sums> {
        let shown = path.display();
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::config(format!(
                "{shown}: cannot read the checksum file ({e}); write it with `flea checksum`"
            ))
        })?;
        let sums = Sums::parse(&text).map_err(|m| Error::config(format!("{shown}: {m}")))?;
        let (globals, layers) = regions(model);
        let spans = |list: &[Expected]| -> Vec<Range<u64>> {
            list.iter().map(|e| e.span.clone()).collect()
        };
        if sums.file_len != file_len
            || spans(&sums.globals) != globals
            || spans(&sums.layers) != layers
        {
            return Err(Error::config(format!(
                "{shown}: made for another file (it describes {} bytes, {} layers; the model has {file_len} bytes, {} layers, or a different layout); write it again with `flea checksum`",
                sums.file_len,
                sums.layers.len(),
                layers.len()
            )));
        }
        Ok(sums)
    }

    fn parse(text: &str) -> std::result::Result<Sums, String> {
        let mut lines = text.lines().enumerate();
        match lines.next() {
            Some((_, l)) if l.trim() == HEADER => {}
            other => {
                return Err(format!(
                    "line 1: expected {HEADER:?}, found {:?}",
                    other.map_or("", |(_, l)| l)
                ))
            }
        }
        let mut sums = Sums {
            file_len: 0,
            globals: Vec::new(),
            layers: Vec::new(),
        };
        let mut seen_len = false;
        for (n, line) in lines {
            let bad = |what: &str| format!("line {}: {what}: {line:?}", n + 1);
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                [] => continue,
                ["file_len", v] => {
                    sums.file_len = v.parse().map_err(|_| bad("expected a byte count"))?;
                    seen_len = true;
                }
                [kind @ ("global" | "layer"), index, span, hash] => {
                    let list = if *kind == "global" {
                        &mut sums.globals
                    } else {
                        &mut sums.layers
                    };
                    if index.parse::<usize>().ok() != Some(list.len()) {
                        return Err(bad(&format!("expected {kind} {}", list.len())));
                    }
                    let (a, b) = span
                        .split_once('-')
                        .ok_or_else(|| bad("expected START-END"))?;
                    let start = a.parse().map_err(|_| bad("expected START-END"))?;
                    let end = b.parse().map_err(|_| bad("expected START-END"))?;
                    let hash =
                        u64::from_str_radix(hash, 16).map_err(|_| bad("expected a hex hash"))?;
                    list.push(Expected {
                        span: start..end,
                        hash,
                    });
                }
                _ => return Err(bad("expected `global|layer INDEX START-END HASH`")),
            }
        }
        if !seen_len {
            return Err("no file_len line".into());
        }
        Ok(sums)
    }
}

/// The error for a region whose bytes do not hash as the sidecar says.
pub fn mismatch(path: &Path, what: &dyn std::fmt::Display, expected: u64, found: u64) -> Error {
    Error::io(format!(
        "{}: {what}: checksum mismatch (expected xxh3 {expected:016x}, found {found:016x}): \
         the bytes read differ from {}; the file changed or the storage returned corrupt data",
        path.display(),
        sidecar_path(path).display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips_and_rejects_garbage() {
        let sums = Sums {
            file_len: 100,
            globals: vec![Expected {
                span: 0..10,
                hash: 0xabc,
            }],
            layers: vec![
                Expected {
                    span: 10..50,
                    hash: 1,
                },
                Expected {
                    span: 50..100,
                    hash: u64::MAX,
                },
            ],
        };
        assert_eq!(Sums::parse(&sums.to_text()).unwrap(), sums);
        assert!(Sums::parse("nonsense").unwrap_err().contains("line 1"));
        let e = Sums::parse(&format!("{HEADER}\nfile_len 1\nlayer 3 0-1 00\n")).unwrap_err();
        assert!(e.contains("expected layer 0"), "{e}");
    }

    #[test]
    fn streaming_hash_equals_one_shot() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 + 3) as u8).collect();
        let mut h = Hasher::new();
        for piece in data.chunks(4099) {
            h.update(piece);
        }
        assert_eq!(h.digest(), hash(&data));
    }
}
