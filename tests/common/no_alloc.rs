//! The counting allocator the no_alloc tests install, and the streamed
//! decode run they watch. Each test binary declares it (a
//! `#[global_allocator]` is per binary):
//! `#[global_allocator] static GLOBAL: common::no_alloc::Counting = common::no_alloc::Counting;`

use flea::engine::{Engine, EngineConfig};
use flea::generate::sampler::{Sampler, SamplerConfig};
use flea::generate::{Flow, Generator};
use flea::gguf::GgufFile;
use flea::kv_disk::KvOffload;
use flea::model::Model;
use flea::residency::{Residency, ResidencyOptions};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The system allocator, counting every allocation.
pub struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

/// Allocations so far in this process (every thread).
pub fn allocations() -> usize {
    ALLOCATIONS.load(Ordering::Relaxed)
}

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

/// The allocation count after each of `tokens` decode steps of a streamed
/// run of synth-256 Q4_K_M at its minimum budget, with the KV cache where
/// `kv_offload` puts it.
pub fn decode_allocations(
    threads: usize,
    sampling: SamplerConfig,
    kv_offload: KvOffload,
    tokens: usize,
) -> Vec<usize> {
    let path = super::model("synth-256-Q4_K_M.gguf");
    let file = GgufFile::open(&path).unwrap();
    let model = Model::from_gguf(&file).unwrap();
    let (n_ctx, chunk) = (64, 8);
    let config = EngineConfig {
        n_ctx,
        max_chunk: chunk,
        n_seq: 1,
        threads,
        kv_offload,
        ..Default::default()
    };
    let plan = config.plan(&model, config.minimum_budget(&model)).unwrap();
    assert!(plan.is_streaming());
    assert_eq!(plan.kv_file_bytes > 0, kv_offload == KvOffload::On);
    let source = Residency::open(&path, &model, &plan, ResidencyOptions::default()).unwrap();
    let engine = Engine::new(&model, source, &config.resolved(&plan)).unwrap();
    let mut generator = Generator::new(engine, Sampler::new(sampling, model.hparams.vocab_size));
    let mut counts = Vec::with_capacity(2 * tokens);
    let prompt = [1u32, 450, 4996, 17354, 1701];
    generator
        .generate(
            &prompt,
            tokens,
            &flea::generate::sequence::EndToken(None),
            |_| {
                counts.push(allocations());
                Flow::Continue
            },
        )
        .unwrap();
    counts
}

/// Greedy and sampled decoding, one thread: no allocation after the first
/// steps (which may warm up lazily created state).
pub fn assert_decode_allocates_nothing(kv_offload: KvOffload, tokens: usize) {
    let greedy = SamplerConfig {
        temperature: 0.0,
        ..Default::default()
    };
    for (sampling, what) in [(greedy, "greedy"), (SamplerConfig::default(), "sampling")] {
        let counts = decode_allocations(1, sampling, kv_offload, tokens);
        let steady = &counts[4..];
        assert!(
            steady.windows(2).all(|w| w[0] == w[1]),
            "{what}, 1 thread, kv {kv_offload:?}: allocations during decode steps: {counts:?}"
        );
    }
}
