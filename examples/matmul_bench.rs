//! Matmul throughput on a 1B-shaped llama (TinyLlama layout: dim 2048,
//! 22 layers, 32 heads, 4 KV heads of 64, FFN 5632, vocab 32000) in
//! llama.cpp's Q4_K_M mix, held in memory, next to the RAM read bandwidth
//! measured by the same program.
//!
//! ```sh
//! cargo run --release --example matmul_bench -- [--threads 1,2] [--iters 5] [--prefill-layers 2] [--scalar | --isa NAME] [--only decode|prefill]
//! ```
//!
//! `--isa` takes a name `FLEA_CPU_ISA` takes (`scalar`, `avx2`, `avx512vnni`, ...).
//! Beside wall time, prefill reports the process CPU time, which a machine
//! shared with other jobs disturbs much less.
//!
//! - decode: one token's matmuls (every layer, then the output head), as the
//!   engine groups them: QKV in one call, O, gate+up in one call, down.
//! - prefill: a 512-position chunk through `--prefill-layers` layers, scaled
//!   to all 22, plus the output head for the last position (what a prompt
//!   costs in matmuls).
//!
//! Attention, norms and RoPE are not included: this bounds the engine from
//! above. Weights are random but valid blocks (finite scales).

use std::time::Instant;

use flea::backend::cpu::{CpuBackend, Isa};
use flea::backend::Weight;
use flea::quant::GgmlType;

const DIM: usize = 2048;
const LAYERS: usize = 22;
const KV_DIM: usize = 4 * 64;
const FFN: usize = 5632;
const VOCAB: usize = 32000;
const PROMPT: usize = 512;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A random matrix of valid blocks.
struct Matrix {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    data: Vec<u8>,
}

impl Matrix {
    fn random(ty: GgmlType, rows: usize, cols: usize, rng: &mut Rng) -> Matrix {
        let bytes = ty.row_bytes(cols).expect("whole blocks") * rows;
        let mut data = vec![0u8; bytes];
        for c in data.chunks_mut(8) {
            let v = rng.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
        // Keep the f16 super-block scales finite and small.
        let (fields, block): (&[usize], usize) = match ty {
            GgmlType::Q4K => (&[0, 2], 144),
            GgmlType::Q6K => (&[208], 210),
            _ => unreachable!("the mix uses Q4_K and Q6_K"),
        };
        let scale = half::f16::from_f32(0.002).to_le_bytes();
        for b in data.chunks_exact_mut(block) {
            for &f in fields {
                b[f..f + 2].copy_from_slice(&scale);
            }
        }
        Matrix {
            ty,
            rows,
            cols,
            data,
        }
    }

    fn weight(&self) -> Weight<'_> {
        Weight {
            ggml_type: self.ty,
            rows: self.rows,
            cols: self.cols,
            data: &self.data,
        }
    }
}

struct Layer {
    wq: Matrix,
    wk: Matrix,
    wv: Matrix,
    wo: Matrix,
    gate: Matrix,
    up: Matrix,
    down: Matrix,
}

impl Layer {
    fn bytes(&self) -> usize {
        [
            &self.wq, &self.wk, &self.wv, &self.wo, &self.gate, &self.up, &self.down,
        ]
        .iter()
        .map(|m| m.data.len())
        .sum()
    }
}

/// llama.cpp's Q4_K_M rule for attn_v and ffn_down: Q6_K for the first and
/// last eighth of the layers and every third layer in between.
fn more_bits(i: usize, n: usize) -> bool {
    // The subtraction cannot underflow: the first test took i < n / 8.
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// Buffers of one pass over `n` positions.
struct Acts {
    x: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    o: Vec<f32>,
    g: Vec<f32>,
    u: Vec<f32>,
    logits: Vec<f32>,
}

impl Acts {
    fn new(n: usize, rng: &mut Rng) -> Acts {
        let x = (0..n * FFN)
            .map(|_| (rng.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
            .collect();
        Acts {
            x,
            q: vec![0.0; n * DIM],
            k: vec![0.0; n * KV_DIM],
            v: vec![0.0; n * KV_DIM],
            o: vec![0.0; n * DIM],
            g: vec![0.0; n * FFN],
            u: vec![0.0; n * FFN],
            logits: vec![0.0; VOCAB],
        }
    }
}

fn layer_pass(b: &CpuBackend, l: &Layer, a: &mut Acts, n: usize) {
    let x = &a.x[..n * DIM];
    let (q, k, v) = (
        &mut a.q[..n * DIM],
        &mut a.k[..n * KV_DIM],
        &mut a.v[..n * KV_DIM],
    );
    b.matmuls(
        x,
        n,
        [l.wq.weight(), l.wk.weight(), l.wv.weight()],
        [q, k, v],
    );
    b.matmul(l.wo.weight(), &a.q[..n * DIM], &mut a.o[..n * DIM], n);
    b.matmuls(
        x,
        n,
        [l.gate.weight(), l.up.weight()],
        [&mut a.g[..n * FFN], &mut a.u[..n * FFN]],
    );
    b.matmul(l.down.weight(), &a.x[..n * FFN], &mut a.o[..n * DIM], n);
}

/// Sum 8-byte words of `buf` on `threads` threads; returns GB/s.
fn read_bandwidth(buf: &[u64], threads: usize) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t = Instant::now();
        let total: u64 = std::thread::scope(|s| {
            let handles: Vec<_> = buf
                .chunks(buf.len().div_ceil(threads))
                .map(|part| s.spawn(move || part.iter().fold(0u64, |a, &v| a.wrapping_add(v))))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .fold(0, u64::wrapping_add)
        });
        std::hint::black_box(total);
        best = best.min(t.elapsed().as_secs_f64());
    }
    (buf.len() * 8) as f64 / best / 1e9
}

fn main() {
    let mut threads_list = vec![1, 2];
    let mut iters = 5;
    let mut prefill_layers = 2;
    let mut isa = Isa::best();
    let mut only = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--threads" => {
                threads_list = args
                    .next()
                    .expect("--threads N,M")
                    .split(',')
                    .map(|t| t.parse().expect("thread count"))
                    .collect()
            }
            "--iters" => {
                iters = args
                    .next()
                    .expect("--iters N")
                    .parse()
                    .expect("iteration count")
            }
            "--prefill-layers" => {
                prefill_layers = args
                    .next()
                    .expect("--prefill-layers N")
                    .parse()
                    .expect("layer count")
            }
            "--scalar" => isa = Isa::SCALAR,
            "--isa" => {
                isa = Isa::from_name(&args.next().expect("--isa NAME"))
                    .unwrap_or_else(|e| panic!("{e}"))
            }
            "--only" => only = Some(args.next().expect("--only decode|prefill")),
            other => panic!("unknown argument {other}"),
        }
    }
    let prefill_layers = prefill_layers.clamp(1, LAYERS);

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let t = Instant::now();
    let layers: Vec<Layer> = (0..LAYERS)
        .map(|i| {
            let hi = if more_bits(i, LAYERS) {
                GgmlType::Q6K
            } else {
                GgmlType::Q4K
            };
            Layer {
                wq: Matrix::random(GgmlType::Q4K, DIM, DIM, &mut rng),
                wk: Matrix::random(GgmlType::Q4K, KV_DIM, DIM, &mut rng),
                wv: Matrix::random(hi, KV_DIM, DIM, &mut rng),
                wo: Matrix::random(GgmlType::Q4K, DIM, DIM, &mut rng),
                gate: Matrix::random(GgmlType::Q4K, FFN, DIM, &mut rng),
                up: Matrix::random(GgmlType::Q4K, FFN, DIM, &mut rng),
                down: Matrix::random(hi, DIM, FFN, &mut rng),
            }
        })
        .collect();
    let output = Matrix::random(GgmlType::Q6K, VOCAB, DIM, &mut rng);
    let layer_bytes: usize = layers.iter().map(Layer::bytes).sum();
    let token_bytes = layer_bytes + output.data.len();
    eprintln!(
        "built {} layers ({:.1} MB) + output ({:.1} MB) in {:.1}s; kernels: {isa}",
        LAYERS,
        layer_bytes as f64 / 1e6,
        output.data.len() as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );

    if only.is_none() {
        let words: Vec<u64> = (0..(1usize << 31) / 8).map(|i| i as u64).collect();
        for threads in &threads_list {
            println!(
                "RAM sequential read, {threads} thread(s): {:.1} GB/s (2 GiB buffer)",
                read_bandwidth(&words, *threads)
            );
        }
    }
    let (do_decode, do_prefill) = match only.as_deref() {
        None => (true, true),
        Some("decode") => (true, false),
        Some("prefill") => (false, true),
        Some(other) => panic!("--only {other}: expected decode or prefill"),
    };

    for &threads in &threads_list {
        let b = CpuBackend::with_isa(threads, isa);
        b.reserve(PROMPT, FFN);

        let t = Instant::now();
        let rounds = 10_000;
        for _ in 0..rounds {
            b.empty_dispatch();
        }
        let dispatch_us = t.elapsed().as_secs_f64() / rounds as f64 * 1e6;

        let mut a = Acts::new(PROMPT, &mut rng);
        if do_decode {
            let mut decode = f64::INFINITY;
            for _ in 0..iters + 1 {
                let t = Instant::now();
                for l in &layers {
                    layer_pass(&b, l, &mut a, 1);
                }
                b.matmul(output.weight(), &a.x[..DIM], &mut a.logits, 1);
                decode = decode.min(t.elapsed().as_secs_f64());
            }
            println!(
                "{threads} thread(s): empty dispatch {dispatch_us:.2} us; decode matmuls {:.2} ms/token = {:.1} tok/s, {:.1} GB/s of weights",
                decode * 1e3,
                1.0 / decode,
                token_bytes as f64 / decode / 1e9
            );
        }

        if do_prefill {
            let t = Instant::now();
            let cpu = cpu_seconds();
            for l in &layers[..prefill_layers] {
                layer_pass(&b, l, &mut a, PROMPT);
            }
            let per_layer = t.elapsed().as_secs_f64() / prefill_layers as f64;
            let cpu_per_layer = (cpu_seconds() - cpu) / prefill_layers as f64;
            let t = Instant::now();
            b.matmul(output.weight(), &a.x[..DIM], &mut a.logits, 1);
            let head = t.elapsed().as_secs_f64();
            let prompt = per_layer * LAYERS as f64 + head;
            let macs = per_layer_macs() * PROMPT as f64;
            println!(
                "{threads} thread(s): prefill matmuls {PROMPT} positions: {:.0} ms/layer, {:.2} s/prompt = {:.1} tok/s ({:.1} GMAC/s); CPU {:.0} ms/layer ({:.1} GMAC per CPU-second)",
                per_layer * 1e3,
                prompt,
                PROMPT as f64 / prompt,
                macs / per_layer / 1e9,
                cpu_per_layer * 1e3,
                macs / cpu_per_layer / 1e9
            );
        }
    }
}

/// CPU time of the whole process so far (all threads), in seconds.
fn cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Multiply-adds of one layer for one position.
fn per_layer_macs() -> f64 {
    (DIM * (DIM + 2 * KV_DIM + DIM) + 3 * DIM * FFN) as f64
}
