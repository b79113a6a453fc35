//! With the KV cache on disk the token loop still allocates nothing: its
//! buffers and tails are allocated at start (as tests/no_alloc.rs, the
//! cache offloaded).

mod common;

use flea::engine::{Engine, EngineConfig};
use flea::generate::sampler::{Sampler, SamplerConfig};
use flea::generate::{Flow, Generator};
use flea::gguf::GgufFile;
use flea::kv_disk::KvOffload;
use flea::model::Model;
use flea::residency::{Residency, ResidencyOptions};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn decode_allocations(threads: usize, sampling: SamplerConfig) -> Vec<usize> {
    let path = common::model("synth-256-Q4_K_M.gguf");
    let file = GgufFile::open(&path).unwrap();
    let model = Model::from_gguf(&file).unwrap();
    let (n_ctx, chunk) = (64, 8);
    let config = EngineConfig {
        n_ctx,
        max_chunk: chunk,
        n_seq: 1,
        threads,
        kv_offload: KvOffload::On,
        ..Default::default()
    };
    let plan = config.plan(&model, config.minimum_budget(&model)).unwrap();
    assert!(plan.is_streaming() && plan.kv_file_bytes > 0);
    let source = Residency::open(&path, &model, &plan, ResidencyOptions::default()).unwrap();
    let engine = Engine::new(&model, source, &config.resolved(&plan)).unwrap();
    let mut generator = Generator::new(engine, Sampler::new(sampling, model.hparams.vocab_size));
    let mut counts = Vec::with_capacity(96);
    let prompt = [1u32, 450, 4996, 17354, 1701];
    generator
        .generate(
            &prompt,
            48,
            &flea::generate::sequence::EndToken(None),
            |_| {
                counts.push(ALLOCATIONS.load(Ordering::Relaxed));
                Flow::Continue
            },
        )
        .unwrap();
    counts
}

fn assert_steady(counts: &[usize], what: &str) {
    // The first steps may warm up lazily created state; after that, none.
    let steady = &counts[4..];
    assert!(
        steady.windows(2).all(|w| w[0] == w[1]),
        "{what}: allocations during decode steps: {counts:?}"
    );
}

#[test]
fn decode_steps_with_kv_on_disk_allocate_nothing() {
    let greedy = SamplerConfig {
        temperature: 0.0,
        ..Default::default()
    };
    assert_steady(&decode_allocations(1, greedy.clone()), "greedy, 1 thread");
    assert_steady(
        &decode_allocations(1, SamplerConfig::default()),
        "sampling, 1 thread",
    );
}
