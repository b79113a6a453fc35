//! A bounded mutation run over every input path hostile data reaches (GGUF
//! header and tensor table, TOML config, JSONL request line, tokenizer
//! input), through the same entry points as the `cargo fuzz` targets in
//! `fuzz/` (`flea::fuzz`). Seeds come from the fixtures, read in place.
//!
//! It fails on any panic (caught and counted per mutant, with the seed to
//! replay it), and on any single allocation above [`ALLOCATION_CAP`]: the
//! allocator below refuses it, which aborts the test binary with a message.
//! `FLEA_FUZZ_MUTANTS` sets the mutants per seed file (default 2000; the
//! closing-note campaigns use 10000). It reports peak RSS at the end.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// No input here justifies more than this in one allocation: the largest
/// seed is 14 MB, and a parse may copy it once.
const ALLOCATION_CAP: usize = 256 << 20;

struct Capped;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOCATION_CAP {
            // No formatting here: this is the allocator.
            let msg = b"fuzz_smoke: an allocation above the 256 MiB cap was attempted\n";
            // SAFETY: write(2) of a static buffer to stderr.
            unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
            return std::ptr::null_mut();
        }
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > ALLOCATION_CAP {
            let msg = b"fuzz_smoke: a reallocation above the 256 MiB cap was attempted\n";
            // SAFETY: as above.
            unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
            return std::ptr::null_mut();
        }
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Capped = Capped;

/// SplitMix64: small, seedable, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Values that break size arithmetic when written over a count or offset.
const EXTREMES: [u64; 9] = [
    0,
    1,
    0x7f,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    1 << 62,
    u64::MAX,
];

/// One mutant of `seed`. Most mutations land in the first `hot` bytes (the
/// header and tensor table, where the parser's decisions are), the rest
/// anywhere.
fn mutate(seed: &[u8], hot: usize, rng: &mut Rng) -> Vec<u8> {
    let mut m = seed.to_vec();
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        if m.is_empty() {
            m.push(0);
        }
        let limit = if rng.below(10) < 9 {
            hot.min(m.len())
        } else {
            m.len()
        };
        let at = rng.below(limit);
        match rng.below(6) {
            0 => m[at] ^= 1 << rng.below(8),
            1 => m[at] = rng.next() as u8,
            2 => {
                let v = EXTREMES[rng.below(EXTREMES.len())];
                let width = [1usize, 2, 4, 8][rng.below(4)];
                let end = (at + width).min(m.len());
                m[at..end].copy_from_slice(&v.to_le_bytes()[..end - at]);
            }
            3 => m.truncate(at),
            4 => {
                let n = 1 + rng.below(16);
                m.drain(at..(at + n).min(m.len()));
            }
            _ => {
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                m.splice(at..at, bytes);
            }
        }
    }
    m
}

fn mutants_per_seed() -> usize {
    std::env::var("FLEA_FUZZ_MUTANTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

/// Run `check` on `count` mutants of `seed`; return the seeds that panicked.
fn campaign(name: &str, seed: &[u8], hot: usize, count: usize, check: &dyn Fn(&[u8])) -> usize {
    let mut panics = Vec::new();
    // Reported, not asserted (no timing assertions in tests): the slowest
    // mutant shows how far any input is from a hang.
    let mut slowest = std::time::Duration::ZERO;
    for i in 0..count {
        let mutant_seed = (i as u64) << 20 ^ seed.len() as u64;
        let mut rng = Rng(mutant_seed);
        let input = mutate(seed, hot, &mut rng);
        let start = std::time::Instant::now();
        if catch_unwind(AssertUnwindSafe(|| check(&input))).is_err() {
            panics.push(mutant_seed);
        }
        slowest = slowest.max(start.elapsed());
    }
    eprintln!(
        "{name}: {count} mutants, {} panics, slowest {:.1} ms",
        panics.len(),
        slowest.as_secs_f64() * 1e3
    );
    assert!(
        panics.is_empty(),
        "{name}: {} of {count} mutants panicked; replay with Rng({:#x}) (first of them)",
        panics.len(),
        panics[0]
    );
    count
}

fn quiet_panics() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| std::panic::set_hook(Box::new(|_| {})));
}

fn spm_tokenizer() -> &'static flea::tokenizer::Tokenizer {
    static TOK: OnceLock<flea::tokenizer::Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let file =
            flea::gguf::GgufFile::open(common::fixture("tokenizer/ggml-vocab-llama-spm.gguf"))
                .unwrap();
        flea::tokenizer::Tokenizer::from_gguf(&file).unwrap()
    })
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

#[test]
fn gguf_mutants_never_panic_or_overallocate() {
    quiet_panics();
    // (seed, share of the mutants). Each mutant maps a copy of the whole
    // file: the 14 MB seed gets a quarter so the default run stays near
    // 30 s. Phi-3's vocabulary carries a chat template, so its mutants
    // reach the Jinja compiler and renderer; its tokenizer costs as much
    // as the SPM one's, so it gets a quarter too.
    let seeds = [
        ("models/llama-2-tiny-random.gguf", 1),
        ("models/synth-256-Q4_K_M.gguf", 4),
        ("real/stories260K-F32.gguf", 1),
        ("tokenizer/ggml-vocab-llama-spm.gguf", 1),
        ("tokenizer/ggml-vocab-phi-3.gguf", 4),
    ];
    let mut total = 0;
    for (name, share) in seeds {
        let bytes = std::fs::read(common::fixture(name)).unwrap();
        let file = flea::gguf::GgufFile::from_bytes(name, &bytes).unwrap();
        let hot = file.data_offset as usize;
        drop(file);
        let count = mutants_per_seed() / share;
        total += campaign(name, &bytes, hot, count, &flea::fuzz::gguf);
    }
    eprintln!(
        "gguf: {total} mutants, 0 panics; largest allocation {:.1} MiB; peak RSS {:.0} MiB",
        LARGEST.load(Ordering::Relaxed) as f64 / (1 << 20) as f64,
        peak_rss_mib()
    );
}

#[test]
fn config_mutants_never_panic() {
    quiet_panics();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut total = 0;
    for entry in std::fs::read_dir(root).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let name = path.display().to_string();
        total += campaign(
            &name,
            &bytes,
            bytes.len(),
            mutants_per_seed() / 4,
            &flea::fuzz::config,
        );
    }
    eprintln!("config: {total} mutants, 0 panics");
}

#[test]
fn request_and_tokenizer_mutants_never_panic() {
    quiet_panics();
    let tok = spm_tokenizer();
    let requests: [&[u8]; 4] = [
        br#"{"id": 7, "prompt": "Once upon a time", "max_tokens": 8, "temperature": 0.5, "top_k": 4, "top_p": 0.9, "min_p": 0.1, "repeat_penalty": 1.1, "seed": 3, "stop": ["\n", "END"]}"#,
        br#"{"prompt": "hi", "stop": "x"}"#,
        b"{\"prompt\": \"\\u00e9\\ud83e\\udd80 <s> </s>\", \"max_tokens\": 18446744073709551615}",
        br#"{"id": 1, "messages": [{"role": "system", "content": " <s>Be terse. "}, {"role": "user", "content": "Hi"}]}"#,
    ];
    let mut total = 0;
    for r in requests {
        total += campaign("request", r, r.len(), mutants_per_seed(), &|b: &[u8]| {
            flea::fuzz::request(tok, b)
        });
    }
    let text = std::fs::read(common::fixture("tokenizer/ggml-vocab-llama-spm.gguf.inp")).unwrap();
    total += campaign(
        "tokenizer",
        &text,
        text.len(),
        mutants_per_seed(),
        &|b: &[u8]| flea::fuzz::tokenizer_input(tok, b),
    );
    eprintln!("request/tokenizer: {total} mutants, 0 panics");
}
