//! Streaming through the double buffer gives exactly the logits of a fully
//! resident run, at every budget, with and without prefetch, and survives
//! flaky storage.

mod common;

use flea::engine::{Engine, EngineConfig, WeightSource};
use flea::generate::teacher_forced;
use flea::gguf::GgufFile;
use flea::model::Model;
use flea::residency::loader::{FileReader, ReadAt, RetryPolicy};
use flea::residency::plan::Plan;
use flea::residency::{Residency, ResidencyOptions};
use std::io;
use std::time::Duration;

const N_CTX: usize = 64;
const CHUNK: usize = 8;

fn config() -> EngineConfig {
    EngineConfig {
        n_ctx: N_CTX,
        max_chunk: CHUNK,
        n_seq: 1,
        threads: 2,
        ..Default::default()
    }
}

fn logits<W: WeightSource>(model: &Model, source: W, tokens: &[u32]) -> Vec<f32> {
    let mut engine = Engine::new(model, source, &config()).unwrap();
    let mut out = Vec::new();
    // Two passes: the second starts while the loader has already wrapped
    // around to prefetch the first streamed layers.
    for _ in 0..2 {
        out.clear();
        teacher_forced(&mut engine, tokens, |row| {
            out.extend_from_slice(row);
            Ok(())
        })
        .unwrap();
    }
    out
}

fn tokens() -> Vec<u32> {
    (0..20).map(|i| 1 + (i * 7919) % 31999).collect()
}

#[test]
fn streamed_logits_equal_resident_for_every_fixture() {
    let mut models: Vec<String> = common::SYNTH_MODELS
        .iter()
        .map(|s| format!("models/{s}.gguf"))
        .collect();
    models.push("models/llama-2-tiny-random.gguf".into());
    models.extend(
        common::LEGACY_MODELS
            .iter()
            .map(|s| format!("legacy/{s}.gguf")),
    );
    for name in models {
        let path = common::fixture(&name);
        let file = GgufFile::open(&path).unwrap();
        let model = Model::from_gguf(&file).unwrap();
        let reference = logits(&model, &file, &tokens());
        let min = config().minimum_budget(&model);
        let all = config().plan(&model, u64::MAX).unwrap().total_bytes();
        let half = min + (all - min) / 2;
        for (label, budget) in [("minimum", min), ("half", half), ("everything", all)] {
            for prefetch in [true, false] {
                let plan = config().plan(&model, budget).unwrap();
                assert!(
                    plan.total_bytes() <= budget,
                    "{name} {label}: plan exceeds budget"
                );
                let opts = ResidencyOptions {
                    prefetch,
                    ..Default::default()
                };
                let source = Residency::open(&path, &model, &plan, opts).unwrap();
                let ours = logits(&model, source, &tokens());
                assert!(
                    ours == reference,
                    "{name}: budget {label} ({budget} bytes, {} layers streamed, prefetch {prefetch}) differs from resident",
                    plan.streamed_layers().count()
                );
            }
        }
        let min_plan = config().plan(&model, min).unwrap();
        if model.layers.len() > 2 {
            assert_eq!(
                min_plan.streamed_layers().count(),
                model.layers.len(),
                "{name}: the minimum budget streams every layer"
            );
        } else {
            // Two layers take no more than the two streaming slots, so the
            // smallest plan keeps them resident (the legacy fixtures). Their
            // formats must stream all the same: every layer through the
            // slots, by a plan made by hand.
            let plan = stream_everything(&model);
            for prefetch in [true, false] {
                let opts = ResidencyOptions {
                    prefetch,
                    ..Default::default()
                };
                let source = Residency::open(&path, &model, &plan, opts).unwrap();
                assert!(
                    logits(&model, source, &tokens()) == reference,
                    "{name}: every layer streamed (prefetch {prefetch}) differs from resident"
                );
            }
        }
    }
}

fn stream_everything(model: &Model) -> Plan {
    common::stream_everything(config().plan(model, u64::MAX).unwrap())
}

#[test]
fn budget_below_minimum_is_a_clear_error() {
    let file = GgufFile::open(common::model("synth-256-Q4_K_M.gguf")).unwrap();
    let model = Model::from_gguf(&file).unwrap();
    let min = config().minimum_budget(&model);
    let e = config().plan(&model, min - 1).unwrap_err();
    assert_eq!(e.kind, flea::ErrorKind::Config);
    for part in [
        "below the minimum",
        "embeddings and output head",
        "KV cache",
        "streaming slots",
    ] {
        assert!(e.message.contains(part), "missing {part:?}: {e}");
    }
    config().plan(&model, min).unwrap();
}

#[test]
fn plan_spreads_resident_layers_and_prints_ranges() {
    let file = GgufFile::open(common::model("synth-256-Q8_0.gguf")).unwrap();
    let model = Model::from_gguf(&file).unwrap();
    let min = config().minimum_budget(&model);
    let layer = config().plan(&model, u64::MAX).unwrap().layer_reads[0].len();
    // Room for one layer beyond the minimum: it goes in the middle.
    let plan = config().plan(&model, min + layer).unwrap();
    let text = plan.to_string();
    assert_eq!(
        plan.streamed_layers().collect::<Vec<_>>(),
        vec![0, 1, 3],
        "{text}"
    );
    assert!(text.contains("resident layers 2 ("), "{text}");
    assert!(text.contains("streamed layers 0-1, 3 ("), "{text}");
}

/// A reader that fails with EIO on some calls and returns short reads.
struct Flaky {
    inner: FileReader,
    calls: usize,
    fail_every: usize,
}

impl ReadAt for Flaky {
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.calls += 1;
        if self.calls.is_multiple_of(self.fail_every) {
            return Err(io::Error::from_raw_os_error(5)); // EIO
        }
        if self.calls.is_multiple_of(3) {
            return Err(io::Error::from(io::ErrorKind::Interrupted));
        }
        // Short reads, in whole 4 KiB pages so O_DIRECT offsets stay aligned.
        let n = buf.len().min(8192);
        self.inner.read_at(&mut buf[..n], offset)
    }
}

#[test]
fn flaky_storage_is_retried_and_results_unchanged() {
    let path = common::model("synth-256-Q6_K.gguf");
    let file = GgufFile::open(&path).unwrap();
    let model = Model::from_gguf(&file).unwrap();
    let reference = logits(&model, &file, &tokens());
    let plan = config()
        .plan(&model, config().minimum_budget(&model))
        .unwrap();
    let reader = Flaky {
        inner: FileReader::open(&path, true).unwrap(),
        calls: 0,
        fail_every: 7,
    };
    let opts = ResidencyOptions {
        retry: RetryPolicy {
            retries: 3,
            backoff: Duration::from_millis(1),
        },
        ..Default::default()
    };
    let source = Residency::with_reader(Box::new(reader), &path, &model, &plan, opts).unwrap();
    assert!(logits(&model, source, &tokens()) == reference);
}

/// A reader that starts failing for good after some calls.
struct Dying {
    inner: FileReader,
    calls: usize,
    good_calls: usize,
}

impl ReadAt for Dying {
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.calls += 1;
        if self.calls > self.good_calls {
            return Err(io::Error::from_raw_os_error(5));
        }
        self.inner.read_at(buf, offset)
    }
}

#[test]
fn dead_storage_fails_with_layer_and_offset() {
    let path = common::model("synth-256-Q4_K_M.gguf");
    let file = GgufFile::open(&path).unwrap();
    let model = Model::from_gguf(&file).unwrap();
    let plan = config()
        .plan(&model, config().minimum_budget(&model))
        .unwrap();
    let reader = Dying {
        inner: FileReader::open(&path, true).unwrap(),
        calls: 0,
        good_calls: 6,
    };
    let opts = ResidencyOptions {
        retry: RetryPolicy {
            retries: 2,
            backoff: Duration::from_millis(1),
        },
        ..Default::default()
    };
    let source = Residency::with_reader(Box::new(reader), &path, &model, &plan, opts).unwrap();
    let mut engine = Engine::new(&model, source, &config()).unwrap();
    let mut result = Ok(());
    for _ in 0..3 {
        result = teacher_forced(&mut engine, &tokens(), |_| Ok(()));
        if result.is_err() {
            break;
        }
    }
    let e = result.unwrap_err();
    assert_eq!(e.kind, flea::ErrorKind::Io);
    assert!(
        e.message.contains("layer") && e.message.contains("offset"),
        "{e}"
    );
    assert!(e.message.contains("after 2 retries"), "{e}");
}
