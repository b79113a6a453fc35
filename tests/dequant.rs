//! Block-format dequantization against the shared reference values.
//!
//! `dequant/index.json` names one tensor per quantized format; its values were
//! dequantized to f32 by an independent implementation (the `gguf` Python
//! package). Dequantization is exact arithmetic up to f32 rounding, so every
//! value must match within 1e-6 relative. `legacy/dequant-index.json` does
//! the same for the 32-weight formats (Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL), whose
//! models live beside it.

mod common;

use flea::gguf::GgufFile;
use flea::quant::{dequantize_row, dot_row, GgmlType};
use serde::Deserialize;
use std::collections::BTreeSet;

#[derive(Deserialize)]
struct Entry {
    model: String,
    tensor: String,
    #[serde(rename = "type")]
    ty: String,
    shape_ggml: Vec<u64>,
    values: usize,
    file: String,
}

/// Relative tolerance from the fixtures' README.
const REL_TOL: f32 = 1e-6;
/// Floor on the magnitude the relative tolerance applies to. A reference
/// value of exactly zero (e.g. a zero quant times any scale) must then come
/// out as zero or within 1e-18: in practice exactly zero. 1e-12 sits far
/// below any nonzero weight these formats can produce from normal f16 scales
/// (the smallest is about 6e-8 times an integer), so it loosens nothing else.
const MAGNITUDE_FLOOR: f32 = 1e-12;

fn close(got: f32, want: f32) -> bool {
    (got - want).abs() <= REL_TOL * want.abs().max(MAGNITUDE_FLOOR)
}

/// Dequantize every row of a tensor, row by row, as the runtime does.
fn dequantize_tensor(file: &GgufFile, name: &str) -> (GgmlType, Vec<u64>, Vec<f32>) {
    let t = file
        .tensor(name)
        .unwrap_or_else(|| panic!("{}: no tensor {name}", file.path.display()));
    let row_len = t.dims[0] as usize;
    let row_bytes = t
        .ggml_type
        .row_bytes(row_len)
        .unwrap_or_else(|| panic!("{name}: {} rows of {row_len} do not split", t.ggml_type));
    let data = file.tensor_data(t);
    let n = t.n_elements() as usize;
    assert_eq!(data.len(), n / row_len * row_bytes, "{name}: data size");
    let mut out = vec![f32::NAN; n];
    for (row, dst) in data
        .chunks_exact(row_bytes)
        .zip(out.chunks_exact_mut(row_len))
    {
        dequantize_row(t.ggml_type, row, dst);
    }
    (t.ggml_type, t.dims.clone(), out)
}

/// An entry of `legacy/dequant-index.json` (its own field names; no value
/// count: the shape gives it).
#[derive(Deserialize)]
struct LegacyEntry {
    model: String,
    tensor: String,
    #[serde(rename = "type")]
    ty: String,
    shape: Vec<u64>,
    file: String,
}

fn legacy_index() -> Vec<Entry> {
    let index: Vec<LegacyEntry> = serde_json::from_slice(
        &std::fs::read(common::fixture("legacy/dequant-index.json"))
            .expect("read legacy/dequant-index.json"),
    )
    .expect("parse legacy/dequant-index.json");
    index
        .into_iter()
        .map(|e| Entry {
            model: format!("legacy/{}", e.model),
            tensor: e.tensor,
            ty: e.ty,
            values: e.shape.iter().product::<u64>() as usize,
            shape_ggml: e.shape,
            file: format!("legacy/{}", e.file),
        })
        .collect()
}

#[test]
fn dequantize_matches_reference_for_every_format() {
    let index: Vec<Entry> = serde_json::from_slice(
        &std::fs::read(common::fixture("dequant/index.json")).expect("read index.json"),
    )
    .expect("parse index.json");

    let formats: BTreeSet<&str> = index.iter().map(|e| e.ty.as_str()).collect();
    assert_eq!(
        formats,
        BTreeSet::from(["Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0"]),
        "index.json should cover all five quantized formats"
    );

    let index: Vec<Entry> = index
        .into_iter()
        .map(|e| Entry {
            model: format!("models/{}", e.model),
            file: format!("dequant/{}", e.file),
            ..e
        })
        .collect();
    check_against_reference(&index);
}

#[test]
fn legacy_formats_dequantize_exactly() {
    let index = legacy_index();
    let formats: BTreeSet<&str> = index.iter().map(|e| e.ty.as_str()).collect();
    assert_eq!(
        formats,
        BTreeSet::from(["IQ4_NL", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]),
        "legacy/dequant-index.json should cover the five 32-weight formats"
    );
    check_against_reference(&index);
}

/// Every entry's tensor (model and reference paths relative to the
/// fixtures) dequantized and compared value by value.
fn check_against_reference(index: &[Entry]) {
    let mut failures = Vec::new();
    for e in index {
        let file = GgufFile::open(common::fixture(&e.model)).expect("open model");
        let (ty, dims, got) = dequantize_tensor(&file, &e.tensor);
        assert_eq!(ty.to_string(), e.ty, "{}: type", e.tensor);
        assert_eq!(dims, e.shape_ggml, "{}: shape", e.tensor);
        let want = common::read_f32_file(&e.file);
        assert_eq!(want.len(), e.values, "{}: reference length", e.file);
        assert_eq!(got.len(), want.len(), "{}: value count", e.file);

        let bad: Vec<usize> = (0..want.len())
            .filter(|&i| !close(got[i], want[i]))
            .collect();
        let max_rel = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (g - w).abs() / w.abs().max(MAGNITUDE_FLOOR))
            .fold(0.0f32, f32::max);
        eprintln!(
            "{} {} ({}): {} values, max relative error {max_rel:e}, {} out of tolerance",
            e.ty,
            e.tensor,
            e.model,
            want.len(),
            bad.len()
        );
        if !bad.is_empty() {
            let shown: Vec<String> = bad
                .iter()
                .take(5)
                .map(|&i| format!("[{i}] got {} want {}", got[i], want[i]))
                .collect();
            failures.push(format!(
                "{} {}: {} of {} values differ, e.g. {}",
                e.ty,
                e.file,
                bad.len(),
                want.len(),
                shown.join(", ")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The scalar dot product must agree with dequantize-then-dot on real rows.
#[test]
fn dot_row_matches_dequantized_rows() {
    let index: Vec<Entry> = serde_json::from_slice(
        &std::fs::read(common::fixture("dequant/index.json")).expect("read index.json"),
    )
    .expect("parse index.json");
    let index = index.into_iter().map(|e| Entry {
        model: format!("models/{}", e.model),
        ..e
    });
    for e in index.chain(legacy_index()) {
        let file = GgufFile::open(common::fixture(&e.model)).expect("open model");
        let t = file.tensor(&e.tensor).expect("tensor");
        let row_len = t.dims[0] as usize;
        let row_bytes = t.ggml_type.row_bytes(row_len).unwrap();
        // Deterministic activations in [-1, 1).
        let x: Vec<f32> = (0..row_len)
            .map(|i| ((i * 7919 % 2003) as f32 / 2003.0) * 2.0 - 1.0)
            .collect();
        let mut w = vec![0.0f32; row_len];
        for row in file.tensor_data(t).chunks_exact(row_bytes).take(16) {
            dequantize_row(t.ggml_type, row, &mut w);
            let want = w.iter().zip(&x).fold(0.0f32, |acc, (a, b)| acc + a * b);
            let magnitude: f32 = w.iter().zip(&x).map(|(a, b)| (a * b).abs()).sum();
            let got = dot_row(t.ggml_type, row, &x);
            assert!(
                (got - want).abs() <= 1e-5 * magnitude.max(f32::MIN_POSITIVE),
                "{} {}: dot {got} vs {want}",
                e.ty,
                e.tensor
            );
        }
    }
}

/// F16 tensors decode to exactly `half::f16` of their raw bytes.
#[test]
fn f16_tensor_matches_half_conversion() {
    let file = GgufFile::open(common::model("llama-2-tiny-random.gguf")).expect("open model");
    let t = file
        .tensors
        .iter()
        .find(|t| t.ggml_type == GgmlType::F16 && t.dims.len() == 2)
        .expect("an F16 matrix in the tiny model");
    let (ty, _, got) = dequantize_tensor(&file, &t.name);
    assert_eq!(ty, GgmlType::F16);
    let raw = file.tensor_data(t);
    assert_eq!(got.len() * 2, raw.len());
    for (i, (v, b)) in got.iter().zip(raw.chunks_exact(2)).enumerate() {
        assert!(v.is_finite(), "{}[{i}] = {v}", t.name);
        let want = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
        assert_eq!(v.to_bits(), want.to_bits(), "{}[{i}]", t.name);
    }
    assert!(got.iter().any(|&v| v != 0.0), "{} is all zeros", t.name);
}
