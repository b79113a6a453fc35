//! Bad GGUF input gets a clear error naming the file and what was expected,
//! never a panic.

mod common;

use flea::gguf::{GgufFile, GgufWriter, Value};
use flea::model::Model;
use flea::quant::GgmlType;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A unique temporary file path for this test process.
fn temp_path(tag: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("flea-test-{}-{tag}-{n}.gguf", std::process::id()))
}

/// Write bytes to a temp file, run `f` on its path, then remove it.
fn with_file<T>(tag: &str, bytes: &[u8], f: impl FnOnce(&PathBuf) -> T) -> T {
    let path = temp_path(tag);
    std::fs::write(&path, bytes).unwrap();
    let out = f(&path);
    let _ = std::fs::remove_file(&path);
    out
}

fn open_err(tag: &str, bytes: &[u8]) -> String {
    with_file(tag, bytes, |p| match GgufFile::open(p) {
        Ok(_) => panic!("{tag}: expected an error"),
        Err(e) => {
            assert_eq!(e.kind, flea::ErrorKind::Model, "{tag}: {e}");
            assert!(
                e.message.contains(&p.display().to_string()),
                "{tag}: no file name in {e}"
            );
            e.message
        }
    })
}

fn model_err(tag: &str, edit: impl FnOnce(&mut GgufWriter)) -> String {
    let src = GgufFile::open(common::model("synth-256-Q4_K_M.gguf")).unwrap();
    let mut w = GgufWriter::from_file(&src);
    edit(&mut w);
    with_file(tag, &w.to_bytes(), |p| {
        let result = GgufFile::open(p).and_then(|f| Model::from_gguf(&f).map(|_| ()));
        match result {
            Ok(()) => panic!("{tag}: expected an error"),
            Err(e) => {
                assert!(
                    e.message.contains(&p.display().to_string()),
                    "{tag}: no file name in {e}"
                );
                e.message
            }
        }
    })
}

fn fixture_bytes() -> Vec<u8> {
    std::fs::read(common::model("synth-256-Q4_K_M.gguf")).unwrap()
}

#[test]
fn writer_round_trip_loads() {
    let src = GgufFile::open(common::model("synth-256-Q4_K_M.gguf")).unwrap();
    let bytes = GgufWriter::from_file(&src).to_bytes();
    with_file("roundtrip", &bytes, |p| {
        let f = GgufFile::open(p).unwrap();
        assert_eq!(f.tensors.len(), src.tensors.len());
        assert_eq!(f.metadata, src.metadata);
        for t in &src.tensors {
            assert_eq!(
                f.tensor_data(f.tensor(&t.name).unwrap()),
                src.tensor_data(t)
            );
        }
        Model::from_gguf(&f).unwrap();
    });
}

#[test]
fn bad_magic() {
    let mut b = fixture_bytes();
    b[..4].copy_from_slice(b"GGML");
    let msg = open_err("magic", &b);
    assert!(msg.contains("bad magic") && msg.contains("GGUF"), "{msg}");
}

#[test]
fn unsupported_version() {
    for v in [1u32, 4, 0xFFFF_FFFF] {
        let mut b = fixture_bytes();
        b[4..8].copy_from_slice(&v.to_le_bytes());
        let msg = open_err("version", &b);
        assert!(
            msg.contains(&format!("unsupported GGUF version {v}")),
            "{msg}"
        );
    }
}

#[test]
fn truncated_header() {
    let b = fixture_bytes();
    for cut in [0, 3, 7, 20, 100, 5000, 300_000] {
        let msg = open_err("trunc", &b[..cut]);
        assert!(
            msg.contains("truncated") || msg.contains("bad magic"),
            "cut {cut}: {msg}"
        );
        assert!(msg.contains("offset"), "cut {cut}: {msg}");
    }
}

#[test]
fn tensor_past_end_of_file() {
    let b = fixture_bytes();
    let msg = open_err("pastend", &b[..b.len() - 1000]);
    assert!(msg.contains("runs past the end of the file"), "{msg}");
    assert!(msg.contains("tensor \""), "names the tensor: {msg}");
}

#[test]
fn unknown_ggml_type() {
    let src = GgufFile::open(common::model("synth-256-Q4_K_M.gguf")).unwrap();
    let mut w = GgufWriter::from_file(&src);
    w.retype_tensor("blk.0.attn_q.weight", vec![256, 256], GgmlType::Other(99));
    let msg = open_err("unknowntype", &w.to_bytes());
    assert!(
        msg.contains("unknown ggml type 99") && msg.contains("blk.0.attn_q.weight"),
        "{msg}"
    );
}

#[test]
fn unsupported_ggml_type() {
    // IQ4_XS (id 23) is a real ggml type this runtime does not compute with.
    let msg = model_err("iq4xs", |w| {
        w.retype_tensor("blk.0.attn_q.weight", vec![256, 256], GgmlType::Other(23))
    });
    assert!(msg.contains("blk.0.attn_q.weight"), "{msg}");
    assert!(msg.contains("unsupported ggml type 23 (IQ4_XS)"), "{msg}");
}

#[test]
fn unsupported_known_type_at_model_load() {
    // Q8_1 is a type the reader can size (llama.cpp's activation format)
    // but the runtime does not compute with as weights. The tensor gets
    // bytes of the right size, so the file stays consistent and only the
    // model load objects.
    let msg = model_err("q8_1", |w| {
        w.remove_tensor("blk.0.attn_q.weight");
        let bytes = GgmlType::Q8_1.row_bytes(256).unwrap() * 256;
        w.add_tensor(
            "blk.0.attn_q.weight",
            vec![256, 256],
            GgmlType::Q8_1,
            vec![0u8; bytes],
        );
    });
    assert!(
        msg.contains("blk.0.attn_q.weight") && msg.contains("unsupported type Q8_1"),
        "{msg}"
    );
    assert!(
        msg.contains("Q4_0") && msg.contains("IQ4_NL"),
        "lists the supported types: {msg}"
    );
}

#[test]
fn missing_required_key() {
    let msg = model_err("nokey", |w| w.remove("llama.embedding_length"));
    assert!(
        msg.contains("missing required key llama.embedding_length"),
        "{msg}"
    );
}

#[test]
fn wrong_key_type() {
    let msg = model_err("keytype", |w| {
        w.set("llama.block_count", Value::String("four".into()))
    });
    assert!(
        msg.contains("llama.block_count") && msg.contains("expected an unsigned integer"),
        "{msg}"
    );
}

#[test]
fn shape_disagrees_with_hyperparameters() {
    let msg = model_err("shape", |w| {
        w.set("llama.feed_forward_length", Value::U32(512))
    });
    assert!(
        msg.contains("blk.0.ffn_down.weight") || msg.contains("blk.0.ffn_gate.weight"),
        "{msg}"
    );
    assert!(
        msg.contains("expected shape") && msg.contains("disagrees"),
        "{msg}"
    );

    let msg = model_err("heads", |w| {
        w.set("llama.attention.head_count_kv", Value::U32(3))
    });
    assert!(msg.contains("head_count_kv"), "{msg}");
}

#[test]
fn missing_tensor() {
    let msg = model_err("notensor", |w| w.remove_tensor("blk.2.ffn_up.weight"));
    assert!(msg.contains("missing tensor blk.2.ffn_up.weight"), "{msg}");
}

#[test]
fn unsupported_architecture() {
    let msg = model_err("arch", |w| {
        w.set("general.architecture", Value::String("mamba".into()))
    });
    assert!(
        msg.contains("unsupported architecture") && msg.contains("mamba"),
        "{msg}"
    );
}

/// Truncated and bit-flipped copies of a real model give errors or load,
/// but never panic or hang.
#[test]
fn fuzz_truncations_and_bit_flips() {
    let src = std::fs::read(common::model("llama-2-tiny-random.gguf")).unwrap();
    let header_len = GgufFile::open(common::model("llama-2-tiny-random.gguf"))
        .unwrap()
        .data_offset as usize;
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let try_load = |bytes: &[u8]| {
        with_file("fuzz", bytes, |p| {
            if let Ok(f) = GgufFile::open(p) {
                if let Ok(m) = Model::from_gguf(&f) {
                    // Touch every tensor's bytes through the bounds-checked map.
                    for t in &f.tensors {
                        let _ = f.tensor_data(t).first();
                    }
                    let _ = m.layers.len();
                }
                let _ = flea::tokenizer::Tokenizer::from_gguf(&f);
            }
        })
    };
    for i in 0..60 {
        let cut = (next() as usize) % src.len();
        try_load(&src[..cut]);
        let mut b = src.clone();
        // Flips mostly land in the header, where the structure is.
        for _ in 0..=(i % 4) {
            let at = (next() as usize) % header_len.min(b.len());
            b[at] ^= 1 << (next() % 8);
        }
        try_load(&b);
        // Overwrite a length or count field with a huge value.
        let mut b = src.clone();
        let at = 8 + (next() as usize) % 64;
        b[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        try_load(&b);
    }
}
