//! The f16 KV cache (the default) against f32: both within the reference
//! tolerances, and the memory it frees buys a batch that f32 cannot fit.

mod common;

use flea::engine::{Engine, EngineConfig};
use flea::generate::teacher_forced;
use flea::gguf::GgufFile;
use flea::kv_cache::KvType;
use flea::model::Model;

fn config(n_ctx: usize, kv_type: KvType) -> EngineConfig {
    EngineConfig {
        n_ctx,
        max_chunk: 8,
        n_seq: 1,
        threads: 2,
        kv_type,
        // In RAM: these tests are about what fits beside it.
        kv_offload: flea::kv_disk::KvOffload::Off,
        ..Default::default()
    }
}

#[test]
fn f16_and_f32_caches_both_match_the_references() {
    let mut failures = Vec::new();
    let fixtures = common::ARCH_MODELS
        .iter()
        .map(|n| format!("arch/{n}"))
        .chain(common::LEGACY_MODELS.iter().map(|n| format!("legacy/{n}")));
    for name in fixtures {
        let reference = common::Top40::read(&format!("{name}.json"));
        let file = GgufFile::open(common::fixture(&format!("{name}.gguf"))).unwrap();
        let model = Model::from_gguf(&file).unwrap();
        // The bounds: arch/ tight, legacy/ (8-bit activations) looser.
        let (mean, max, top1) = if name.starts_with("arch/") {
            (0.02, 0.15, 0.95)
        } else {
            (0.06, 0.4, 0.9)
        };
        let mut rows = Vec::new();
        for kv_type in [KvType::F16, KvType::F32] {
            let cfg = config(reference.sequence.len(), kv_type);
            let mut engine = Engine::new(&model, &file, &cfg).unwrap();
            let mut out = Vec::new();
            teacher_forced(&mut engine, &reference.sequence, |row| {
                out.extend_from_slice(row);
                Ok(())
            })
            .unwrap();
            let a = reference.compare(&out, model.hparams.vocab_size);
            eprintln!("{name} kv {kv_type}: {a}");
            if let Some(why) = a.check(mean, max, top1) {
                failures.push(format!("{name} kv {kv_type}: {why}"));
            }
            rows.push(out);
        }
        // Rounding the cache to f16 moves logits, but only a little.
        let d = rows[0]
            .iter()
            .zip(&rows[1])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        eprintln!("{name}: f16 vs f32 cache, max |diff| {d:.5}");
        assert!(d > 0.0, "{name}: the f16 cache must really be f16");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The acceptance: batch 16 at context 512 fits a budget where an
/// f32 cache does not.
#[test]
fn batch_16_at_context_512_fits_with_f16_where_f32_does_not() {
    let file = GgufFile::open(common::model("synth-256-Q4_K_M.gguf")).unwrap();
    let model = Model::from_gguf(&file).unwrap();
    let f16 = config(512, KvType::F16).with_batch(16);
    let f32 = config(512, KvType::F32).with_batch(16);
    let budget = f16.minimum_budget(&model);
    assert!(f16.plan(&model, budget).is_ok());
    let e = f32.plan(&model, budget).unwrap_err();
    assert!(e.to_string().contains("KV cache"), "{e}");
    assert!(f32.cpu_memory_bytes(&model.hparams) > f16.cpu_memory_bytes(&model.hparams));
}
