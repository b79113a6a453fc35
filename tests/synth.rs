//! `flea synth`: the files it writes load, run and match the layout that
//! `preset_model` predicts, with llama.cpp's type mixes.

mod common;

use flea::engine::{Engine, EngineConfig, Logits};
use flea::gguf::GgufFile;
use flea::model::{Model, TensorRef};
use flea::quant::GgmlType;
use flea::synth::{preset_model, synth, synth_model, Preset, QuantMix, SynthOptions};
use flea::tokenizer::Tokenizer;
use std::path::PathBuf;

/// A file under /tmp removed when dropped, so a failing test leaves
/// nothing behind.
struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str) -> TempFile {
        let name = format!("flea-synth-test-{}-{tag}.gguf", std::process::id());
        TempFile(std::env::temp_dir().join(name))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Every tensor of a model in a fixed order, for comparing layouts.
fn refs(m: &Model) -> Vec<&TensorRef> {
    let mut v = vec![&m.token_embd, &m.output_norm, &m.output];
    for l in &m.layers {
        v.extend(l.all());
    }
    v
}

fn assert_same_model(predicted: &Model, loaded: &Model, what: &str) {
    assert_eq!(predicted.hparams, loaded.hparams, "{what}: hparams");
    assert_eq!(refs(predicted), refs(loaded), "{what}: tensors");
}

/// Teacher-forced logits of `tokens` from the memory-mapped file.
fn logits(model: &Model, file: &GgufFile, tokens: &[u32]) -> Vec<f32> {
    let config = EngineConfig {
        n_ctx: 32,
        max_chunk: 32,
        n_seq: 1,
        threads: 2,
        ..Default::default()
    };
    let mut engine = Engine::new(model, file, &config).unwrap();
    engine.forward(tokens, 0, Logits::All).unwrap().to_vec()
}

fn std_dev(v: &[f32]) -> f32 {
    let n = v.len() as f32;
    let mean = v.iter().sum::<f32>() / n;
    (v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / n).sqrt()
}

#[test]
fn tiny_in_every_mix_loads_runs_and_matches_the_prediction() {
    for quant in QuantMix::ALL {
        let out = TempFile::new(&format!("tiny-{quant}"));
        let mut calls = 0;
        let mut last = (0, 0);
        let opts = SynthOptions::new(Preset::Tiny, quant);
        let report = synth(&opts, &out.0, |done, total| {
            assert!(
                done <= total && done >= last.0,
                "{quant}: progress {done}/{total}"
            );
            last = (done, total);
            calls += 1;
        })
        .unwrap();
        assert!(calls > 1, "{quant}: progress reported");
        assert_eq!(
            last,
            (report.bytes, report.bytes),
            "{quant}: progress ends at the total"
        );
        assert_eq!(std::fs::metadata(&out.0).unwrap().len(), report.bytes);
        assert_eq!(report.tensors, 3 + 4 * 9);

        let file = GgufFile::open(&out.0).unwrap();
        let model = Model::from_gguf(&file).unwrap();
        let tokenizer = Tokenizer::from_gguf(&file).unwrap();
        assert_same_model(&preset_model(Preset::Tiny, quant), &model, quant.name());
        assert_eq!(
            file.require_u64("general.file_type").unwrap(),
            u64::from(quant.file_type())
        );
        assert_eq!(file.require_u64("general.quantization_version").unwrap(), 2);
        assert_eq!(file.require_u64("llama.vocab_size").unwrap(), 32000);
        assert_eq!(tokenizer.vocab_size(), 32000);

        // Any text encodes (through byte tokens) and the model runs on it.
        let tokens = tokenizer.encode("Hello, wörld!", true);
        assert_eq!(tokens[0], 1);
        assert_eq!(tokenizer.decode(&tokens[1..]), "Hello, wörld!");
        let logits = logits(&model, &file, &tokens);
        assert_eq!(logits.len(), tokens.len() * 32000);
        assert!(
            logits.iter().all(|v| v.is_finite()),
            "{quant}: finite logits"
        );
        let spread = std_dev(&logits[logits.len() - 32000..]);
        assert!((0.5..20.0).contains(&spread), "{quant}: logit std {spread}");
    }
}

#[test]
fn same_seed_same_file() {
    let (a, b) = (TempFile::new("seed-a"), TempFile::new("seed-b"));
    let opts = SynthOptions::new(Preset::Tiny, QuantMix::Q3KM);
    synth(&opts, &a.0, |_, _| {}).unwrap();
    synth(&opts, &b.0, |_, _| {}).unwrap();
    assert!(std::fs::read(&a.0).unwrap() == std::fs::read(&b.0).unwrap());
    let other = SynthOptions { seed: 7, ..opts };
    synth(&other, &b.0, |_, _| {}).unwrap();
    assert!(std::fs::read(&a.0).unwrap() != std::fs::read(&b.0).unwrap());
}

/// The fixture models were made by llama-quantize from one set of weights:
/// the tiny preset gets the same type for every tensor, in the same order.
#[test]
fn tiny_types_match_the_llama_quantize_fixtures() {
    let mixes = [
        (QuantMix::Q3KM, "synth-256-Q3_K_M"),
        (QuantMix::Q3KS, "synth-256-Q3_K_S"),
        (QuantMix::Q4KM, "synth-256-Q4_K_M"),
        (QuantMix::Q6K, "synth-256-Q6_K"),
        (QuantMix::Q8_0, "synth-256-Q8_0"),
    ];
    for (quant, name) in mixes {
        let fixture = GgufFile::open(common::model(&format!("{name}.gguf"))).unwrap();
        let ours = preset_model(Preset::Tiny, quant);
        let mut ours: Vec<_> = refs(&ours)
            .into_iter()
            .map(|t| (t.file_range.start, t.name.clone(), t.ggml_type))
            .collect();
        ours.sort_by_key(|t| t.0);
        let ours: Vec<_> = ours.into_iter().map(|(_, n, t)| (n, t)).collect();
        let theirs: Vec<_> = fixture
            .tensors
            .iter()
            .map(|t| (t.name.clone(), t.ggml_type))
            .collect();
        assert_eq!(ours, theirs, "{name}");
    }
}

/// The 32-weight mixes are `llama-quantize --pure`: every tensor but the
/// norms in the one format, as in the legacy fixtures (which llama-quantize
/// made that way).
#[test]
fn legacy_mixes_are_pure_like_the_fixtures() {
    let mixes = [
        (QuantMix::Q4_0, GgmlType::Q4_0),
        (QuantMix::Q4_1, GgmlType::Q4_1),
        (QuantMix::Q5_0, GgmlType::Q5_0),
        (QuantMix::Q5_1, GgmlType::Q5_1),
        (QuantMix::IQ4NL, GgmlType::IQ4NL),
    ];
    let want = |name: &str, ty: GgmlType| {
        if name.ends_with("norm.weight") {
            GgmlType::F32
        } else {
            ty
        }
    };
    for ((quant, ty), name) in mixes.into_iter().zip(common::LEGACY_MODELS) {
        let fixture = GgufFile::open(common::fixture(&format!("legacy/{name}.gguf"))).unwrap();
        for t in &fixture.tensors {
            assert_eq!(t.ggml_type, want(&t.name, ty), "{name} {}", t.name);
        }
        let ours = preset_model(Preset::B7, quant);
        for t in refs(&ours) {
            assert_eq!(t.ggml_type, want(&t.name, ty), "{quant} {}", t.name);
        }
    }
}

#[test]
fn q4_k_m_mix_follows_llama_cpp() {
    use GgmlType::*;
    let m = preset_model(Preset::B7, QuantMix::Q4KM);
    assert_eq!(m.output.ggml_type, Q6K);
    assert_eq!(m.token_embd.ggml_type, Q4K);
    assert_eq!(m.output_norm.ggml_type, F32);
    // First and last 4 of 32 layers, and every third in between.
    let more_bits = [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31];
    for (i, l) in m.layers.iter().enumerate() {
        let wide = if more_bits.contains(&i) { Q6K } else { Q4K };
        assert_eq!(l.wv.ggml_type, wide, "layer {i} attn_v");
        assert_eq!(l.w_down.ggml_type, wide, "layer {i} ffn_down");
        for t in [&l.wq, &l.wk, &l.wo, &l.w_gate, &l.w_up] {
            assert_eq!(t.ggml_type, Q4K, "{}", t.name);
        }
        assert_eq!((l.attn_norm.ggml_type, l.ffn_norm.ggml_type), (F32, F32));
    }
    // 70B: attn_v never below Q5_K (8 heads share it).
    let m = preset_model(Preset::B70, QuantMix::Q4KM);
    assert!(m.layers.iter().all(|l| matches!(l.wv.ggml_type, Q5K | Q6K)));
    assert!(m.layers.iter().any(|l| l.wv.ggml_type == Q5K));
    let m = preset_model(Preset::B70, QuantMix::Q3KS);
    assert!(m
        .layers
        .iter()
        .all(|l| l.wv.ggml_type == Q5K && l.wq.ggml_type == Q3K));
    assert_eq!(m.output.ggml_type, Q6K);
    // Q8_0 keeps its output head; F16 is not quantized at all.
    assert_eq!(
        preset_model(Preset::B1, QuantMix::Q8_0).output.ggml_type,
        Q8_0
    );
    let m = preset_model(Preset::B1, QuantMix::F16);
    assert_eq!((m.output.ggml_type, m.layers[0].wv.ggml_type), (F16, F16));
}

#[test]
fn layers_are_contiguous_and_in_order() {
    for preset in Preset::ALL {
        let m = preset_model(preset, QuantMix::Q4KM);
        let mut end = 0;
        for (i, l) in m.layers.iter().enumerate() {
            let span = l.file_span();
            assert!(
                span.start >= end,
                "{preset} layer {i} overlaps the one before"
            );
            // Only alignment padding inside a layer's span.
            let slack = (span.end - span.start) - l.weight_bytes();
            assert!(slack < 9 * 32, "{preset} layer {i}: {slack} bytes of gaps");
            end = span.end;
        }
    }
}

/// File sizes against the llama.cpp Q4_K_M files of the real models
/// (TinyLlama-1.1B 669 MB, Llama-2 7B 4.08 GB, 13B 7.87 GB, 70B 41.42 GB).
#[test]
fn q4_k_m_sizes_match_real_models() {
    let real = [
        (Preset::B1, 668_788_096.0),
        (Preset::B7, 4.08e9),
        (Preset::B13, 7.87e9),
        (Preset::B70, 41.42e9),
    ];
    for (preset, bytes) in real {
        let m = preset_model(preset, QuantMix::Q4KM);
        let size = m
            .output
            .file_range
            .end
            .max(m.layers.last().unwrap().file_span().end);
        println!(
            "{preset} q4_k_m: {size} bytes ({:.2} GB)",
            size as f64 / 1e9
        );
        let ratio = size as f64 / bytes;
        assert!((0.99..1.01).contains(&ratio), "{preset}: {size} vs {bytes}");
    }
}

#[test]
fn vocab_is_copied_from_a_gguf() {
    let vocab_path = common::fixture("tokenizer/ggml-vocab-llama-spm.gguf");
    let out = TempFile::new("vocab");
    let opts = SynthOptions {
        vocab: Some(vocab_path.clone()),
        ..SynthOptions::new(Preset::Tiny, QuantMix::Q8_0)
    };
    synth(&opts, &out.0, |_, _| {}).unwrap();
    let vocab = GgufFile::open(&vocab_path).unwrap();
    let file = GgufFile::open(&out.0).unwrap();
    let tokenizer_keys = |f: &GgufFile| -> Vec<_> {
        f.metadata
            .iter()
            .filter(|(k, _)| k.starts_with("tokenizer.ggml."))
            .cloned()
            .collect()
    };
    assert_eq!(tokenizer_keys(&file), tokenizer_keys(&vocab));
    let model = Model::from_gguf(&file).unwrap();
    assert_same_model(&synth_model(&opts).unwrap(), &model, "with vocab");
    let (theirs, ours) = (
        Tokenizer::from_gguf(&vocab).unwrap(),
        Tokenizer::from_gguf(&file).unwrap(),
    );
    let text = "The quick brown fox jumps over the lazy dog.";
    let tokens = ours.encode(text, true);
    assert_eq!(tokens, theirs.encode(text, true));
    assert!(tokens.len() < 16, "real merges, not bytes: {tokens:?}");
    assert!(logits(&model, &file, &tokens).iter().all(|v| v.is_finite()));

    let missing = SynthOptions {
        vocab: Some(PathBuf::from("/nonexistent/vocab.gguf")),
        ..opts
    };
    let err = synth(&missing, &out.0, |_, _| {}).unwrap_err();
    assert_eq!(err.kind, flea::ErrorKind::Io);
    assert!(err.message.contains("/nonexistent/vocab.gguf"), "{err}");
}

/// The 1.1B model at full size (about 670 MB under /tmp, removed after):
/// the layout matches the prediction, it runs, and the write speed is
/// reported.
#[test]
fn one_b_file_matches_the_prediction() {
    let out = TempFile::new("1b");
    let opts = SynthOptions::new(Preset::B1, QuantMix::Q4KM);
    let report = synth(&opts, &out.0, |_, _| {}).unwrap();
    println!(
        "synth 1b q4_k_m: {} bytes in {:.2} s, {:.0} MB/s (including the final sync)",
        report.bytes,
        report.seconds,
        report.bytes_per_second() / 1e6
    );
    let file = GgufFile::open(&out.0).unwrap();
    let model = Model::from_gguf(&file).unwrap();
    assert_same_model(&preset_model(Preset::B1, QuantMix::Q4KM), &model, "1b");
    assert_eq!(file.file_len(), report.bytes);
    // 22 layers deep, activations still keep their scale.
    let logits = logits(&model, &file, &[1, 500, 9000]);
    assert!(logits.iter().all(|v| v.is_finite()));
    let spread = std_dev(&logits[logits.len() - 32000..]);
    assert!((0.5..20.0).contains(&spread), "1b: logit std {spread}");
}
