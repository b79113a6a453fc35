//! The CPU kernels: every instruction set against the scalar twin (bit for
//! bit), a position alone against the same position in a batch (bit for
//! bit), thread counts (bit for bit), and the f32 oracle `quant::dot_row`
//! (within the 8-bit activation rounding), on random blocks and on the
//! fixture models' tensors.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use flea::backend::cpu::{AttnHeads, CpuBackend, Isa};
use flea::backend::Weight;
use flea::gguf::GgufFile;
use flea::kv_cache::KvRows;
use flea::model::{Model, TensorRef};
use flea::quant::{self, GgmlType};

/// Counts heap allocations made by threads that opted in (`TRACKED`)
/// while `COUNTING` is set: the test thread and the backend's workers, not
/// the test harness spawning and reporting around them.
struct CountingAlloc;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static TRACKED: Cell<bool> = const { Cell::new(false) };
}

fn count_allocation() {
    if COUNTING.load(Ordering::Relaxed) && TRACKED.with(Cell::get) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: forwards to the system allocator unchanged.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_allocation();
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_allocation();
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// Tests here run one at a time, so that the allocation count of one is not
/// polluted by another running beside it.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// xorshift64, enough for test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next() >> 40) as f32 / (1u64 << 24) as f32)
    }

    fn floats(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.uniform(-1.0, 1.0)).collect()
    }
}

const ALL_TYPES: [GgmlType; 13] = [
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::IQ4NL,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::F32,
];

/// Byte offsets of the f16 scale fields in a block, which must stay finite.
fn scale_fields(ty: GgmlType) -> &'static [usize] {
    match ty {
        GgmlType::Q3K => &[108],
        GgmlType::Q4K | GgmlType::Q5K => &[0, 2],
        GgmlType::Q6K => &[208],
        GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::IQ4NL => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 => &[0, 2],
        _ => &[],
    }
}

/// A valid random matrix: random quant bytes, finite scales.
fn random_matrix(ty: GgmlType, rows: usize, cols: usize, rng: &mut Rng) -> Vec<u8> {
    let row_bytes = ty.row_bytes(cols).unwrap();
    let mut data = Vec::with_capacity(rows * row_bytes);
    match ty {
        GgmlType::F32 => {
            (0..rows * cols).for_each(|_| data.extend(rng.uniform(-1.0, 1.0).to_le_bytes()))
        }
        GgmlType::F16 => (0..rows * cols)
            .for_each(|_| data.extend(half::f16::from_f32(rng.uniform(-1.0, 1.0)).to_le_bytes())),
        GgmlType::BF16 => (0..rows * cols)
            .for_each(|_| data.extend(half::bf16::from_f32(rng.uniform(-1.0, 1.0)).to_le_bytes())),
        _ => {
            data.extend((0..rows * row_bytes).map(|_| rng.next() as u8));
            let (_, block) = ty.block_layout().unwrap();
            for b in data.chunks_exact_mut(block) {
                for &f in scale_fields(ty) {
                    b[f..f + 2].copy_from_slice(
                        &half::f16::from_f32(rng.uniform(0.001, 0.02)).to_le_bytes(),
                    );
                }
            }
        }
    }
    data
}

fn weight(ty: GgmlType, rows: usize, cols: usize, data: &[u8]) -> Weight<'_> {
    Weight {
        ggml_type: ty,
        rows,
        cols,
        data,
    }
}

/// Columns that exercise each family: several super-blocks, an odd number
/// of 32-weight blocks, and a float row with a tail shorter than 32.
fn cols_for(ty: GgmlType) -> usize {
    match ty {
        GgmlType::Q4_0
        | GgmlType::Q4_1
        | GgmlType::Q5_0
        | GgmlType::Q5_1
        | GgmlType::Q8_0
        | GgmlType::IQ4NL => 288,
        GgmlType::F16 | GgmlType::BF16 | GgmlType::F32 => 100,
        _ => 768,
    }
}

fn matmul(backend: &CpuBackend, w: Weight<'_>, x: &[f32], n: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; n * w.rows];
    backend.matmul(w, x, &mut out, n);
    out
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

/// `sum |w * x|` per output element, from dequantized weights.
fn magnitudes(w: Weight<'_>, x: &[f32], n: usize) -> Vec<f32> {
    let mut row = vec![0.0; w.cols];
    let mut out = vec![0.0; n * w.rows];
    for r in 0..w.rows {
        quant::dequantize_row(w.ggml_type, w.row(r), &mut row);
        for p in 0..n {
            out[p * w.rows + r] = row
                .iter()
                .zip(&x[p * w.cols..(p + 1) * w.cols])
                .map(|(a, b)| (a * b).abs())
                .sum();
        }
    }
    out
}

/// Every instruction set against the scalar twin, and against the f32
/// oracle within `oracle_tol * sum|w*x|`.
fn check_against_scalar_and_oracle(
    label: &str,
    w: Weight<'_>,
    x: &[f32],
    n: usize,
    oracle_tol: f32,
) {
    let scalar = matmul(&CpuBackend::with_isa(1, Isa::SCALAR), w, x, n);
    let mags = magnitudes(w, x, n);
    for isa in Isa::available() {
        let got = matmul(&CpuBackend::with_isa(2, isa), w, x, n);
        // Bit-identical by construction (see backend::cpu::kernels); the
        // brief's bound of 1e-4 * sum|w*x| is implied.
        assert_eq!(
            bits(&got),
            bits(&scalar),
            "{label}: {isa} differs from the scalar twin"
        );
    }
    let mut worst = 0.0f32;
    for p in 0..n {
        for r in 0..w.rows {
            let oracle = quant::dot_row(w.ggml_type, w.row(r), &x[p * w.cols..(p + 1) * w.cols]);
            let i = p * w.rows + r;
            let err = (scalar[i] - oracle).abs() / mags[i].max(f32::MIN_POSITIVE);
            worst = worst.max(err);
        }
    }
    assert!(
        worst <= oracle_tol,
        "{label}: {worst} of sum|w*x| from the f32 oracle"
    );
}

/// The oracle keeps f32 activations; the kernels round them to 8 bits per
/// block (relative step 1/127 of the block maximum), floats stay f32.
fn oracle_tol(ty: GgmlType) -> f32 {
    match ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1e-5,
        _ => 1e-2,
    }
}

#[test]
fn every_isa_matches_the_scalar_twin_on_random_blocks() {
    let _serial = serial();
    eprintln!(
        "instruction sets here: {:?}",
        Isa::available()
            .iter()
            .map(|i| i.name())
            .collect::<Vec<_>>()
    );
    let mut rng = Rng(0x1234_5678);
    for ty in ALL_TYPES {
        let (rows, cols) = (37, cols_for(ty));
        let data = random_matrix(ty, rows, cols, &mut rng);
        let w = weight(ty, rows, cols, &data);
        // Row kernels (up to 8 positions per call) and, from a dozen
        // positions, sixteen-row tile kernels (AVX-512 VNNI) with position
        // tails and more than one call's worth (70 > 64).
        for n in [1, 2, 8, 13, 16, 21, 70] {
            let x = rng.floats(n * cols);
            check_against_scalar_and_oracle(&format!("{ty} n={n}"), w, &x, n, oracle_tol(ty));
        }
    }
}

#[test]
fn extreme_quants_and_activations_do_not_saturate() {
    let _serial = serial();
    // All quant bits set (largest unsigned quants, Q8_0 -1, IQ4_NL 113) or
    // all 0x80 (Q8_0 -128; Q4_0 and IQ4_NL mixing their extremes, -8 and 0,
    // -127 and 1), against activations at +-max, which quantize to +-127.
    let mut rng = Rng(0xe87);
    for ty in [
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::IQ4NL,
    ] {
        // Five rows at two positions (row kernels) and seventeen at
        // seventeen (sixteen-row tile kernels where the set has them).
        for (fill, (rows, n)) in [0xFFu8, 0x80, 0x00]
            .into_iter()
            .flat_map(|f| [(f, (5, 2)), (f, (17, 17))])
        {
            let cols = cols_for(ty);
            let mut data = vec![fill; ty.row_bytes(cols).unwrap() * rows];
            let (_, block) = ty.block_layout().unwrap();
            for b in data.chunks_exact_mut(block) {
                for &f in scale_fields(ty) {
                    b[f..f + 2].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
                }
            }
            let w = weight(ty, rows, cols, &data);
            let x: Vec<f32> = (0..n * cols)
                .map(|i| if (i / 3) % 2 == 0 { 1.0 } else { -1.0 })
                .collect();
            check_against_scalar_and_oracle(&format!("{ty} fill {fill:#x} n={n}"), w, &x, n, 1e-5);
            let x = rng.floats(n * cols);
            check_against_scalar_and_oracle(
                &format!("{ty} fill {fill:#x} n={n}, random x"),
                w,
                &x,
                n,
                oracle_tol(ty),
            );
        }
    }
}

#[test]
fn a_position_gives_the_same_bits_alone_or_in_any_batch() {
    let _serial = serial();
    let mut rng = Rng(0xba7c4);
    for ty in ALL_TYPES {
        let (rows, cols, n) = (29, cols_for(ty), 19);
        let data = random_matrix(ty, rows, cols, &mut rng);
        let w = weight(ty, rows, cols, &data);
        let x = rng.floats(n * cols);
        for isa in Isa::available() {
            let backend = CpuBackend::with_isa(2, isa);
            let alone: Vec<f32> = (0..n)
                .flat_map(|p| matmul(&backend, w, &x[p * cols..(p + 1) * cols], 1))
                .collect();
            // Every batch size from 1 to n, starting at every offset that
            // fits, so each position is seen at every slot of a tile.
            for m in 1..=n {
                for start in [0, n - m, (n - m) / 2] {
                    let batch = matmul(&backend, w, &x[start * cols..(start + m) * cols], m);
                    assert_eq!(
                        bits(&batch),
                        bits(&alone[start * rows..(start + m) * rows]),
                        "{ty} {isa}: batch of {m} from {start}"
                    );
                }
            }
        }
    }
}

#[test]
fn thread_count_does_not_change_results() {
    let _serial = serial();
    let mut rng = Rng(0x7417);
    for ty in ALL_TYPES {
        let (rows, cols, n) = (301, cols_for(ty), 11);
        let data = random_matrix(ty, rows, cols, &mut rng);
        let w = weight(ty, rows, cols, &data);
        let x = rng.floats(n * cols);
        let one = matmul(&CpuBackend::new(1), w, &x, n);
        for threads in [2, 3, 4, 7] {
            assert_eq!(
                bits(&matmul(&CpuBackend::new(threads), w, &x, n)),
                bits(&one),
                "{ty}, {threads} threads"
            );
        }
    }
}

#[test]
fn grouped_matmuls_equal_separate_ones() {
    let _serial = serial();
    // One input shared by matrices of every quantized family and a float one.
    let mut rng = Rng(0x9a0b);
    let (cols, n) = (256, 5);
    let types = [GgmlType::Q4K, GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::F16];
    let rows = [40, 8, 16, 3];
    let datas: Vec<Vec<u8>> = types
        .iter()
        .zip(rows)
        .map(|(&t, r)| random_matrix(t, r, cols, &mut rng))
        .collect();
    let ws: [Weight<'_>; 4] = std::array::from_fn(|k| weight(types[k], rows[k], cols, &datas[k]));
    let x = rng.floats(n * cols);
    let backend = CpuBackend::new(2);
    let mut outs: [Vec<f32>; 4] = std::array::from_fn(|k| vec![0.0; n * rows[k]]);
    {
        let [a, b, c, d] = &mut outs;
        backend.matmuls(&x, n, ws, [a, b, c, d]);
    }
    for k in 0..4 {
        assert_eq!(
            bits(&outs[k]),
            bits(&matmul(&backend, ws[k], &x, n)),
            "{}",
            types[k]
        );
    }
}

fn fixture_weight<'f>(file: &'f GgufFile, t: &TensorRef) -> Weight<'f> {
    let range = t.file_range.start as usize..t.file_range.end as usize;
    weight(
        t.ggml_type,
        t.rows,
        t.cols,
        &file.bytes_at(0..file.file_len())[range],
    )
}

#[test]
fn fixture_tensors_agree_across_isas_and_with_the_oracle() {
    let _serial = serial();
    let mut rng = Rng(0xf1a7);
    let models = common::SYNTH_MODELS
        .iter()
        .chain(&["llama-2-tiny-random"])
        .map(|name| format!("models/{name}.gguf"))
        .chain(
            common::LEGACY_MODELS
                .iter()
                .map(|name| format!("legacy/{name}.gguf")),
        );
    for name in models {
        let file = GgufFile::open(common::fixture(&name)).unwrap();
        let model = Model::from_gguf(&file).unwrap();
        let layer = &model.layers[0];
        for t in [
            &layer.wq,
            &layer.wk,
            &layer.wv,
            &layer.wo,
            &layer.w_gate,
            &layer.w_down,
            &model.output,
        ] {
            let w = fixture_weight(&file, t);
            let n = 3;
            let x = rng.floats(n * w.cols);
            check_against_scalar_and_oracle(
                &format!("{name} {} {}", t.name, t.ggml_type),
                w,
                &x,
                n,
                oracle_tol(t.ggml_type),
            );
        }
    }
}

#[test]
fn a_warm_backend_allocates_nothing_per_call() {
    let _serial = serial();
    let mut rng = Rng(0xa110c);
    let types = [
        GgmlType::Q4K,
        GgmlType::Q6K,
        GgmlType::Q3K,
        GgmlType::Q5K,
        GgmlType::Q8_0,
        GgmlType::Q5_1,
        GgmlType::F16,
    ];
    let (rows, cols) = (96, 512);
    let datas: Vec<Vec<u8>> = types
        .iter()
        .map(|&t| random_matrix(t, rows, cols, &mut rng))
        .collect();
    let x = rng.floats(8 * cols);
    let mut out = vec![0.0; 8 * rows];
    let (n_heads, n_kv, hd, n_ctx) = (8, 2, 64, 64);
    // An f16 cache, as runs use by default: widening its rows must not
    // allocate either.
    let f16s = |x: Vec<f32>| -> Vec<half::f16> { x.into_iter().map(half::f16::from_f32).collect() };
    let k = f16s(rng.floats(n_ctx * n_kv * hd));
    let v = f16s(rng.floats(n_ctx * n_kv * hd));
    let q = rng.floats(4 * n_heads * hd);
    let mut att = vec![0.0; 4 * n_heads * hd];
    let backend = CpuBackend::new(2);
    let mut scores = vec![0.0; backend.threads() * n_ctx];
    backend.reserve(8, cols);
    let step = |out: &mut [f32], att: &mut [f32], scores: &mut [f32]| {
        for (t, d) in types.iter().zip(&datas) {
            for n in [1, 4, 8] {
                backend.matmul(
                    weight(*t, rows, cols, d),
                    &x[..n * cols],
                    &mut out[..n * rows],
                    n,
                );
            }
        }
        let (a, b) = out.split_at_mut(rows);
        backend.matmuls(
            &x[..cols],
            1,
            [
                weight(types[0], rows, cols, &datas[0]),
                weight(types[4], rows, cols, &datas[4]),
            ],
            [a, &mut b[..rows]],
        );
        backend.attention_batch(
            att,
            &q,
            KvRows::F16(&k),
            KvRows::F16(&v),
            AttnHeads {
                n_heads,
                n_kv_heads: n_kv,
                head_dim: hd,
                window: None,
            }
            .pass(n_ctx - 4, 4),
            scores,
        );
    };
    // Warm-up: the first calls may size scratch and wake threads.
    step(&mut out, &mut att, &mut scores);
    backend.run_on_all(&|_| TRACKED.with(|t| t.set(true)));
    ALLOCATIONS.store(0, Ordering::Relaxed);
    COUNTING.store(true, Ordering::Relaxed);
    for _ in 0..3 {
        step(&mut out, &mut att, &mut scores);
    }
    COUNTING.store(false, Ordering::Relaxed);
    backend.run_on_all(&|_| TRACKED.with(|t| t.set(false)));
    assert_eq!(
        ALLOCATIONS.load(Ordering::Relaxed),
        0,
        "heap allocations after warm-up"
    );
}
