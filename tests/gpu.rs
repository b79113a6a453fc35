//! The CUDA backend against the CPU reference.
//!
//! Three parts (the unit tests of `backend::cuda::geometry` and `slots`,
//! pure arithmetic compiled with or without the `cuda` feature, run with
//! the library's own tests):
//! - `residency_slots_are_fixed_regions_that_hold_every_streamed_layer`:
//!   the host side of streaming to a GPU (the slot regions the GPU
//!   page-locks), also in every `cargo test`.
//! - `cuda_kernels_run_on_the_host_match_the_cpu`: kernels/*.cu compiled by
//!   the host C++ compiler and run under a CPU emulation of CUDA threads
//!   (kernels/host/), checked against the Rust decoders and plain
//!   references, also in every `cargo test`.
//! - `gpu` (feature `cuda` only): every kernel against the CPU scalar path
//!   on random inputs and on the fixtures, then the whole forward pass
//!   against llama.cpp's reference logits and against the CPU's greedy
//!   tokens; streamed layers (device double buffer, mapped host slots,
//!   pageable copies) against resident ones, bit for bit, for every
//!   fixture at the minimum budget and at half the model. Without a usable
//!   GPU each of these prints
//!   "skipped: no CUDA device" (to stderr, past the test harness's capture)
//!   and passes.

use flea::backend::cuda::slots;

mod common;

use flea::quant::{dequantize_row, GgmlType};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One line to stderr in one write, past the harness's output capture.
fn say(line: &str) {
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// xorshift64: deterministic test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut s = self.0;
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        self.0 = s;
        s
    }
    fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next() >> 40) as f32 / (1u64 << 24) as f32)
    }
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    fn floats(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.uniform(-1.0, 1.0)).collect()
    }
    fn f16(&mut self, lo: f32, hi: f32) -> [u8; 2] {
        half::f16::from_f32(self.uniform(lo, hi)).to_le_bytes()
    }
}

/// Every block format the runtime computes with.
const FORMATS: [GgmlType; 13] = GgmlType::SUPPORTED;

/// A row width that exercises each format's edge: not a multiple of 8
/// for floats, not of 256 for 32-weight blocks, two super-blocks for
/// K-quants.
fn test_cols(ty: GgmlType) -> usize {
    match ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 77,
        GgmlType::Q4_0
        | GgmlType::Q4_1
        | GgmlType::Q5_0
        | GgmlType::Q5_1
        | GgmlType::Q8_0
        | GgmlType::IQ4NL => 96,
        _ => 512,
    }
}

/// Random but valid weights: random quants, sane f16 scales.
fn random_weights(ty: GgmlType, rows: usize, cols: usize, rng: &mut Rng) -> Vec<u8> {
    let row_bytes = ty.row_bytes(cols).expect("whole blocks");
    let mut data = vec![0u8; rows * row_bytes];
    match ty {
        GgmlType::F32 => {
            for c in data.chunks_exact_mut(4) {
                c.copy_from_slice(&rng.uniform(-1.0, 1.0).to_le_bytes());
            }
        }
        GgmlType::F16 => {
            for c in data.chunks_exact_mut(2) {
                c.copy_from_slice(&rng.f16(-1.0, 1.0));
            }
        }
        GgmlType::BF16 => {
            for c in data.chunks_exact_mut(2) {
                c.copy_from_slice(&half::bf16::from_f32(rng.uniform(-1.0, 1.0)).to_le_bytes());
            }
        }
        _ => {
            for b in data.iter_mut() {
                *b = rng.next() as u8;
            }
            let (_, block) = ty.block_layout().expect("sized");
            // Offsets of the f16 factors inside a block (src/quant/*.rs).
            let factors: &[usize] = match ty {
                GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 | GgmlType::IQ4NL => &[0],
                GgmlType::Q4_1 | GgmlType::Q5_1 => &[0, 2],
                GgmlType::Q3K => &[108],
                GgmlType::Q4K | GgmlType::Q5K => &[0, 2],
                GgmlType::Q6K => &[208],
                other => panic!("no test data for {other}"),
            };
            for b in data.chunks_exact_mut(block) {
                for &o in factors {
                    b[o..o + 2].copy_from_slice(&rng.f16(-0.05, 0.05));
                }
            }
        }
    }
    data
}

/// Whether the fixture files exist. They always must, except on a GPU
/// machine that was shipped a subset (scripts/gpu-check.sh sets
/// FLEA_GPU_PARTIAL_FIXTURES when the artifacts' fixtures are marked
/// PARTIAL): then a missing one is skipped, visibly. Without that variable
/// a missing fixture fails the test.
fn shipped(files: &[String]) -> bool {
    if std::env::var_os("FLEA_GPU_PARTIAL_FIXTURES").is_none() {
        return true;
    }
    let missing: Vec<&String> = files
        .iter()
        .filter(|f| !common::fixtures_dir().join(f).exists())
        .collect();
    if !missing.is_empty() {
        say(&format!("skipped: fixtures not shipped: {missing:?}\n"));
    }
    missing.is_empty()
}

/// The dequant fixtures of `dequant/index.json` and
/// `legacy/dequant-index.json`, as (model, tensor, expected values), the
/// paths relative to the fixtures folder. An index a GPU machine was not
/// shipped (the lite fixtures have no `legacy/`) is skipped, visibly.
fn dequant_fixtures() -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (dir, index, models) in [
        ("dequant", "dequant/index.json", "models"),
        ("legacy", "legacy/dequant-index.json", "legacy"),
    ] {
        if !shipped(&[index.to_string()]) {
            continue;
        }
        let entries: Vec<serde_json::Value> =
            serde_json::from_slice(&std::fs::read(common::fixture(index)).unwrap()).unwrap();
        for e in entries {
            let field = |k: &str| e[k].as_str().unwrap().to_string();
            out.push((
                format!("{models}/{}", field("model")),
                field("tensor"),
                format!("{dir}/{}", field("file")),
            ));
        }
    }
    out
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn model_files(name: &str, logits: bool) -> Vec<String> {
    let mut v = vec![
        format!("models/{name}.gguf"),
        format!("reference/{name}.json"),
    ];
    if logits {
        v.push(format!("reference/{name}.logits.bin"));
    }
    v
}

/// A C++ compiler for the host runs of the kernels, or `None` (the tests
/// then say they were skipped).
fn host_cxx() -> Option<String> {
    std::env::var("CXX")
        .ok()
        .into_iter()
        .chain(["c++", "g++", "clang++"].map(String::from))
        .find(|c| {
            Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

/// kernels/host/kernel_check.cpp compiled into `dir`: every kernel of
/// kernels/*.cu, built for the CPU with the emulator in kernels/host/shim.h.
fn build_kernel_check(cxx: &str, dir: &Path) -> PathBuf {
    let exe = dir.join("kernel_check");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels/host/kernel_check.cpp");
    let out = Command::new(cxx)
        .args([
            "-std=c++20",
            "-O1",
            "-ffp-contract=off",
            "-fno-strict-aliasing",
            "-pthread",
            // Warnings are errors (but for CUDA's `#pragma unroll`, which a
            // host compiler does not know), and every run is checked for
            // memory errors and undefined behaviour.
            "-Wall",
            "-Wextra",
            "-Werror",
            "-Wno-unknown-pragmas",
            "-fsanitize=address,undefined",
            "-fno-sanitize-recover=undefined",
            "-o",
        ])
        .arg(&exe)
        .arg(&src)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cxx} {}: {}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

fn run_checked(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The CUDA kernels run on the CPU: kernels/*.cu compiled by the host C++
/// compiler against an emulation of CUDA's threads, warps and shared memory
/// (kernels/host/shim.h). Holds their block decoders to the Rust ones (bit
/// for bit on random blocks of every format, 1e-6 on the dequant fixtures)
/// and every kernel (mat-vec, tiled mat-mat, embedding, RMSNorm, RoPE, KV
/// append, attention, SwiGLU, add, argmax) to a double-precision
/// reference. So the kernel code is exercised in every `cargo test`, on
/// machines without a GPU; skipped (visibly) without a C++ compiler.
#[test]
fn cuda_kernels_run_on_the_host_match_the_cpu() {
    let Some(cxx) = host_cxx() else {
        say("cuda_kernels_run_on_the_host: skipped: no C++ compiler\n");
        return;
    };
    let dir = std::env::temp_dir().join(format!("flea-kernel-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let exe = build_kernel_check(&cxx, &dir);
    let dequant = |fmt: &str, rows: usize, cols: usize, weights: &Path, want: &Path, tol: &str| {
        run_checked(
            Command::new(&exe)
                .arg("dequant")
                .args([fmt, &rows.to_string(), &cols.to_string()])
                .arg(weights)
                .arg(want)
                .arg(tol),
            &format!("{fmt} [{rows} x {cols}]"),
        );
    };

    // Random blocks of every format: bit-identical to the Rust decoders.
    let mut rng = Rng(0x00de_c0de);
    for ty in FORMATS {
        let (rows, cols) = (9, test_cols(ty));
        let w = random_weights(ty, rows, cols, &mut rng);
        let row_bytes = w.len() / rows;
        let mut want = vec![0.0f32; rows * cols];
        for (row, dst) in w.chunks_exact(row_bytes).zip(want.chunks_exact_mut(cols)) {
            dequantize_row(ty, row, dst);
        }
        let (wp, xp) = (dir.join("w.bin"), dir.join("want.f32"));
        std::fs::write(&wp, &w).unwrap();
        let bytes: Vec<u8> = want.iter().flat_map(|x| x.to_le_bytes()).collect();
        std::fs::write(&xp, bytes).unwrap();
        dequant(
            &ty.to_string().to_ascii_lowercase(),
            rows,
            cols,
            &wp,
            &xp,
            "0",
        );
    }

    // The dequant fixtures, within their documented 1e-6 relative.
    for (model, tensor, file) in dequant_fixtures() {
        if !shipped(&[model.clone(), file.clone()]) {
            continue;
        }
        let gguf = flea::gguf::GgufFile::open(common::fixture(&model)).unwrap();
        let t = gguf.tensor(&tensor).unwrap();
        let cols = t.dims[0] as usize;
        let rows = t.n_elements() as usize / cols;
        let wp = dir.join("fixture.bin");
        std::fs::write(&wp, gguf.tensor_data(t)).unwrap();
        let want = common::fixture(&file);
        let fmt = t.ggml_type.to_string().to_ascii_lowercase();
        dequant(&fmt, rows, cols, &wp, &want, "1e-6");
    }

    // Every kernel under the emulator.
    run_checked(Command::new(&exe).arg("kernels"), "kernel_check kernels");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The host side of streaming to a GPU, which needs no GPU: a
/// `Residency`'s two slots are fixed regions of the plan's slot size,
/// page-aligned and disjoint (what `cuMemHostRegister` is given), every
/// streamed layer is handed over inside one of them with its matrices'
/// span inside the slot (what the device slot copies), and a guard given to
/// the source lives exactly as long as the source.
#[test]
fn residency_slots_are_fixed_regions_that_hold_every_streamed_layer() {
    use flea::engine::{EngineConfig, WeightSource};
    use flea::residency::{Residency, ResidencyOptions};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    struct Guard(Arc<AtomicBool>);
    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    let config = EngineConfig {
        n_ctx: 64,
        max_chunk: 8,
        n_seq: 1,
        threads: 1,
        ..Default::default()
    };
    let mut streamed_somewhere = false;
    for name in common::SYNTH_MODELS
        .iter()
        .map(|s| s.to_string())
        .chain(["llama-2-tiny-random".to_string()])
    {
        if !shipped(&[format!("models/{name}.gguf")]) {
            continue;
        }
        let path = common::model(&format!("{name}.gguf"));
        let file = flea::gguf::GgufFile::open(&path).unwrap();
        let model = flea::model::Model::from_gguf(&file).unwrap();
        // The resident layers of any plan fit the device arena sized from
        // the plan (`CudaForwardConfig::resident_bytes`).
        let spans = |l: usize| {
            let m = &model.layers[l];
            let span = slots::layer_span(
                [&m.wq, &m.wk, &m.wv, &m.wo, &m.w_gate, &m.w_up, &m.w_down]
                    .iter()
                    .map(|t| t.file_range.clone()),
            )
            .unwrap();
            span.end - span.start
        };
        let min = config.minimum_budget(&model);
        let all = config.plan(&model, u64::MAX).unwrap().total_bytes();
        for budget in [min, min + (all - min) / 2, all] {
            let plan = config.plan(&model, budget).unwrap();
            let resident =
                (0..model.layers.len()).filter(|l| !plan.streamed_layers().any(|s| s == *l));
            assert!(
                slots::arena_bytes(resident.map(spans)) <= plan.resident_layer_bytes,
                "{name}: resident spans overflow the arena"
            );
        }
        let plan = config.plan(&model, min).unwrap();
        let mut source =
            Residency::open(&path, &model, &plan, ResidencyOptions::default()).unwrap();
        let regions = source.slot_regions();
        if !plan.is_streaming() {
            assert!(regions.is_empty(), "{name}: slots without streaming");
            continue;
        }
        streamed_somewhere = true;
        assert_eq!(regions.len(), slots::SLOTS, "{name}");
        let host: Vec<slots::HostRegion> = regions
            .iter()
            .map(|r| slots::HostRegion {
                addr: r.addr,
                len: r.len,
            })
            .collect();
        for r in &host {
            assert_eq!(r.len as u64, plan.slot_bytes, "{name}: slot size");
            assert_eq!(r.addr % 4096, 0, "{name}: slot alignment");
        }
        assert_eq!(slots::check_regions(&host, 4096), Ok(()), "{name}");
        assert_eq!(
            slots::locked_bytes(&host, 4096),
            2 * plan.slot_bytes,
            "{name}"
        );
        // Two passes over the streamed layers: each lies in a slot, its
        // span fits a device slot, and the slots never move.
        let streamed: Vec<usize> = plan.streamed_layers().collect();
        let mut used = [false; slots::SLOTS];
        for _ in 0..2 {
            for &l in &streamed {
                let layer = &model.layers[l];
                let bytes = source.acquire_layer(l).unwrap();
                assert!(!bytes.resident, "{name}: layer {l} is streamed");
                let at = regions
                    .iter()
                    .position(|r| r.contains(bytes.bytes))
                    .unwrap_or_else(|| panic!("{name}: layer {l} outside the slots"));
                used[at] = true;
                let span = slots::layer_span(
                    [
                        &layer.wq,
                        &layer.wk,
                        &layer.wv,
                        &layer.wo,
                        &layer.w_gate,
                        &layer.w_up,
                        &layer.w_down,
                    ]
                    .iter()
                    .map(|t| t.file_range.clone()),
                )
                .unwrap();
                let range = slots::host_range(&span, bytes.base, bytes.bytes.len())
                    .unwrap_or_else(|| panic!("{name}: layer {l}'s span is outside its slot"));
                assert!(range.len() as u64 <= slots::device_slot_bytes(plan.slot_bytes));
                for t in [&layer.wq, &layer.w_down] {
                    assert_eq!(
                        t.file_range.start % slots::WEIGHT_ALIGN,
                        0,
                        "{name}: kernels need aligned matrices"
                    );
                }
                source.release_layer(l);
            }
        }
        assert!(used.iter().all(|&u| u), "{name}: both slots carry layers");
        assert_eq!(source.slot_regions(), regions, "{name}: slots moved");
        let dropped = Arc::new(AtomicBool::new(false));
        source.hold_until_slots_freed(Box::new(Guard(dropped.clone())));
        assert!(!dropped.load(Ordering::SeqCst));
        drop(source);
        assert!(
            dropped.load(Ordering::SeqCst),
            "{name}: guard outlived the source"
        );
    }
    assert!(
        streamed_somewhere || std::env::var_os("FLEA_GPU_PARTIAL_FIXTURES").is_some(),
        "no fixture streamed at its minimum budget"
    );
}

#[cfg(feature = "cuda")]
mod gpu {
    use super::{
        common, dequant_fixtures, model_files, random_weights, say, shipped, test_cols, Rng,
        FORMATS,
    };
    use flea::backend::cpu;
    use flea::backend::cuda::device::KvElem;
    use flea::backend::cuda::geometry::ActQuant;
    use flea::backend::cuda::{
        self, cuda_available, AttentionShape, CudaForward, CudaForwardConfig, DevWeight, Format,
        Gpu, Q8Scratch, QuantInput,
    };
    use flea::engine::{Engine, EngineConfig, Logits, SeqChunk};
    use flea::gguf::GgufFile;
    use flea::model::{Model, RopeStyle};
    use flea::quant::{dequantize_row, dot_row, GgmlType};
    use flea::ErrorKind;
    use serde_json::Value;

    /// Whether `name` is among the fixtures this run covers: all of them,
    /// unless FLEA_GPU_ONLY_MODELS (colon-separated names) narrows the set;
    /// scripts/emulated-gpu-check.sh does that for its second and later
    /// scheduling policies, which test orders, not models.
    fn wanted(name: &str) -> bool {
        match std::env::var("FLEA_GPU_ONLY_MODELS") {
            Ok(only) if !only.is_empty() => only.split(':').any(|m| m == name),
            _ => true,
        }
    }

    /// Whether `item` is in the colon-separated list `var`, or `var` is
    /// unset or empty: how the removed-wait check narrows the streamed test
    /// to the budgets and feeds a wait matters for.
    fn only(var: &str, item: &str) -> bool {
        match std::env::var(var) {
            Ok(list) if !list.is_empty() => list.split(':').any(|x| x == item),
            _ => true,
        }
    }

    /// The device, or `None` after saying so where the harness cannot hide
    /// it (unless FLEA_REQUIRE_GPU is set: then no device fails the test).
    fn gpu(test: &str) -> Option<Gpu> {
        if !cuda_available() {
            // On the GPU machine (scripts/gpu-check.sh) a skip would hide
            // a broken driver setup: fail instead.
            assert!(
                std::env::var_os("FLEA_REQUIRE_GPU").is_none(),
                "FLEA_REQUIRE_GPU is set but no CUDA device is usable"
            );
            say(&format!("{test}: skipped: no CUDA device\n"));
            return None;
        }
        Some(cuda::open(0).expect("a CUDA device is present but cannot be opened"))
    }

    fn close(got: f32, want: f32, magnitude: f32, rel: f32) -> bool {
        (got - want).abs() <= rel * magnitude + 1e-6
    }

    /// y (n x rows) from the GPU against `dot_row` per element.
    #[allow(clippy::too_many_arguments)]
    fn check_products(
        what: &str,
        ty: GgmlType,
        w: &[u8],
        rows: usize,
        cols: usize,
        x: &[f32],
        y: &[f32],
        n: usize,
    ) {
        let row_bytes = w.len() / rows;
        let mut deq = vec![0.0f32; cols];
        for r in 0..rows {
            let row = &w[r * row_bytes..(r + 1) * row_bytes];
            dequantize_row(ty, row, &mut deq);
            for p in 0..n {
                let xp = &x[p * cols..(p + 1) * cols];
                let want = dot_row(ty, row, xp);
                let magnitude: f32 = deq.iter().zip(xp).map(|(a, b)| (a * b).abs()).sum();
                let got = y[p * rows + r];
                assert!(
                    close(got, want, magnitude, 1e-5),
                    "{what} {ty} row {r} position {p}: GPU {got} vs CPU {want} (magnitude {magnitude})"
                );
            }
        }
    }

    #[test]
    fn open_reports_a_bad_device_as_a_config_error() {
        // Runs everywhere: without a driver it names the missing library,
        // with one device 999 does not exist. Either way an error, no panic.
        let err = cuda::open(999).err().expect("device 999 must not open");
        assert_eq!(err.kind, ErrorKind::Config);
        assert!(
            err.message.contains("CUDA requested but no driver/device"),
            "{}",
            err.message
        );
    }

    #[test]
    fn matvec_and_tiled_matmul_match_dot_row_for_every_format() {
        let Some(gpu) = gpu("matvec_and_tiled_matmul") else {
            return;
        };
        let mut rng = Rng(0x5eed_1234);
        let rows = 67; // not a multiple of a warp group or a tile
        for ty in FORMATS {
            let cols = test_cols(ty);
            let w = random_weights(ty, rows, cols, &mut rng);
            let dw = gpu.upload(&w).unwrap();
            let weight = DevWeight::new(Format::of(ty).unwrap(), rows, cols, dw.slice(..));
            for n in [1, 2, 3, 5, 8, 9, 70] {
                let x = rng.floats(n * cols);
                let dx = gpu.upload(&x).unwrap();
                if n <= 8 {
                    let mut dy = gpu.zeros::<f32>(n * rows).unwrap();
                    gpu.matvec(&weight, &dx.slice(..), &mut dy.slice_mut(..), n)
                        .unwrap();
                    let y = gpu.download(&dy.slice(..)).unwrap();
                    check_products("matvec", ty, &w, rows, cols, &x, &y, n);
                }
                let mut dy = gpu.zeros::<f32>(n * rows).unwrap();
                gpu.matmul_tiled(&weight, &dx.slice(..), &mut dy.slice_mut(..), n)
                    .unwrap();
                let y = gpu.download(&dy.slice(..)).unwrap();
                check_products("tiled", ty, &w, rows, cols, &x, &y, n);
            }
        }
    }

    /// The integer mat-vec (8-bit activations, `matvec_q8_<fmt>_<n>`)
    /// against the CPU backend's matmul, which quantizes the activations
    /// to the same values and sums the same integers: only the order of
    /// the float sums differs. Rows span more than one warp step.
    #[test]
    fn integer_matvec_matches_the_cpu_matmul_for_every_quantized_format() {
        let Some(gpu) = gpu("integer matvec") else {
            return;
        };
        let cpu = cpu::CpuBackend::new(1);
        let mut rng = Rng(0xd4a0_0008);
        let rows = 6; // a partial block of mat-vec warps
        let mut scratch = Q8Scratch::new(&gpu, 8 * 1280).unwrap();
        for ty in FORMATS {
            let Some(kind) = ActQuant::of(Format::of(ty).unwrap().suffix()) else {
                continue;
            };
            let cols = kind.block() * if kind == ActQuant::Q8K { 5 } else { 20 };
            let w = random_weights(ty, rows, cols, &mut rng);
            let dw = gpu.upload(&w).unwrap();
            let weight = DevWeight::new(Format::of(ty).unwrap(), rows, cols, dw.slice(..));
            let host = flea::backend::Weight {
                ggml_type: ty,
                rows,
                cols,
                data: &w,
            };
            let mut deq = vec![0.0f32; rows * cols];
            for (r, d) in deq.chunks_exact_mut(cols).enumerate() {
                dequantize_row(ty, &w[r * host.row_bytes()..(r + 1) * host.row_bytes()], d);
            }
            for n in 1..=8 {
                let x = rng.floats(n * cols);
                let dx = gpu.upload(&x).unwrap();
                let mut dy = gpu.zeros::<f32>(n * rows).unwrap();
                let mut input = QuantInput::new(dx.slice(..), n, &mut scratch);
                gpu.matmul_quant(&weight, &mut input, &mut dy.slice_mut(..))
                    .unwrap();
                let got = gpu.download(&dy.slice(..)).unwrap();
                let mut want = vec![0.0f32; n * rows];
                cpu.matmul(host, &x, &mut want, n);
                for p in 0..n {
                    for r in 0..rows {
                        let magnitude: f32 = deq[r * cols..(r + 1) * cols]
                            .iter()
                            .zip(&x[p * cols..(p + 1) * cols])
                            .map(|(a, b)| (a * b).abs())
                            .sum();
                        let (g, c) = (got[p * rows + r], want[p * rows + r]);
                        assert!(
                            close(g, c, magnitude, 2e-6),
                            "{ty} n {n} row {r} position {p}: GPU {g} vs CPU {c} (magnitude {magnitude})"
                        );
                    }
                }
            }
            // Activations of another quantization or width are an error.
            let (other, width) = match kind {
                ActQuant::Q8K => (ActQuant::Q8_32, cols),
                ActQuant::Q8_32 => (ActQuant::Q8_32, cols - 32),
            };
            let x = gpu.upload(&rng.floats(width)).unwrap();
            gpu.quantize_activations(other, &x.slice(..), 1, width, &mut scratch)
                .unwrap();
            let mut dy = gpu.zeros::<f32>(rows).unwrap();
            let err = gpu
                .matvec_q8(&weight, &scratch, &mut dy.slice_mut(..), 1)
                .expect_err("activations of another quantization or width");
            assert_eq!(err.kind, ErrorKind::Config, "{}", err.message);
        }
    }

    #[test]
    fn embed_matches_dequantize_row_for_every_format() {
        let Some(gpu) = gpu("embed") else {
            return;
        };
        let mut rng = Rng(0xe4be_d000);
        let rows = 40;
        for ty in FORMATS {
            let cols = test_cols(ty);
            let w = random_weights(ty, rows, cols, &mut rng);
            let dw = gpu.upload(&w).unwrap();
            let weight = DevWeight::new(Format::of(ty).unwrap(), rows, cols, dw.slice(..));
            let tokens: Vec<i32> = vec![39, 0, 7, 7, 12];
            let dt = gpu.upload(&tokens).unwrap();
            let mut out = gpu.zeros::<f32>(tokens.len() * cols).unwrap();
            gpu.embed(&weight, &dt.slice(..), &mut out.slice_mut(..), tokens.len())
                .unwrap();
            let got = gpu.download(&out.slice(..)).unwrap();
            let row_bytes = w.len() / rows;
            let mut want = vec![0.0f32; cols];
            for (p, &t) in tokens.iter().enumerate() {
                let t = t as usize;
                dequantize_row(ty, &w[t * row_bytes..(t + 1) * row_bytes], &mut want);
                // Bit-identical: the kernels keep the CPU's rounding.
                assert_eq!(&got[p * cols..(p + 1) * cols], &want[..], "{ty} token {t}");
            }
        }
    }

    #[test]
    fn dequantization_matches_the_fixture_values() {
        let Some(gpu) = gpu("dequant fixtures") else {
            return;
        };
        for (model, tensor, file) in dequant_fixtures() {
            if !shipped(&[model.clone(), file.clone()]) {
                continue;
            }
            let gguf = GgufFile::open(common::fixture(&model)).unwrap();
            let t = gguf.tensor(&tensor).unwrap();
            let cols = t.dims[0] as usize;
            let rows = t.n_elements() as usize / cols;
            let bytes = gguf.tensor_data(t);
            let dw = gpu.upload(bytes).unwrap();
            let weight = DevWeight::new(Format::of(t.ggml_type).unwrap(), rows, cols, dw.slice(..));
            let tokens: Vec<i32> = (0..rows as i32).collect();
            let dt = gpu.upload(&tokens).unwrap();
            let mut out = gpu.zeros::<f32>(rows * cols).unwrap();
            gpu.embed(&weight, &dt.slice(..), &mut out.slice_mut(..), rows)
                .unwrap();
            let got = gpu.download(&out.slice(..)).unwrap();
            let want = common::read_f32_file(&file);
            assert_eq!(got.len(), want.len(), "{file}");
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-6 * w.abs().max(1e-12),
                    "{file} value {i}: GPU {g} vs reference {w}"
                );
            }
        }
    }

    #[test]
    fn fixture_matrices_multiply_like_the_cpu() {
        let Some(gpu) = gpu("fixture matmul") else {
            return;
        };
        let mut rng = Rng(0xf17);
        let models = common::SYNTH_MODELS
            .iter()
            .map(|name| format!("models/{name}.gguf"))
            .chain(
                common::LEGACY_MODELS
                    .iter()
                    .map(|name| format!("legacy/{name}.gguf")),
            );
        for name in models {
            if !shipped(std::slice::from_ref(&name)) {
                continue;
            }
            let file = GgufFile::open(common::fixture(&name)).unwrap();
            let model = Model::from_gguf(&file).unwrap();
            let l = &model.layers[1];
            for t in [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down] {
                let bytes = file.bytes_at(t.file_range.clone());
                let dw = gpu.upload(bytes).unwrap();
                let weight = DevWeight::new(
                    Format::of(t.ggml_type).unwrap(),
                    t.rows,
                    t.cols,
                    dw.slice(..),
                );
                for n in [1, 4, 20] {
                    let x = rng.floats(n * t.cols);
                    let dx = gpu.upload(&x).unwrap();
                    let mut dy = gpu.zeros::<f32>(n * t.rows).unwrap();
                    gpu.matmul(&weight, &dx.slice(..), &mut dy.slice_mut(..), n)
                        .unwrap();
                    let y = gpu.download(&dy.slice(..)).unwrap();
                    check_products(
                        &format!("{name} {}", t.name),
                        t.ggml_type,
                        bytes,
                        t.rows,
                        t.cols,
                        &x,
                        &y,
                        n,
                    );
                }
            }
        }
    }

    #[test]
    fn rmsnorm_swiglu_add_and_argmax_match_the_cpu() {
        let Some(gpu) = gpu("small ops") else {
            return;
        };
        let mut rng = Rng(0x00a1_10b5);
        let (n, dim) = (5, 300);
        let x = rng.floats(n * dim);
        let w = rng.floats(dim);
        let (dx, dw) = (gpu.upload(&x).unwrap(), gpu.upload(&w).unwrap());
        let mut dout = gpu.zeros::<f32>(n * dim).unwrap();
        gpu.rmsnorm(
            &mut dout.slice_mut(..),
            &dx.slice(..),
            &dw.slice(..),
            n,
            dim,
            1e-5,
        )
        .unwrap();
        let got = gpu.download(&dout.slice(..)).unwrap();
        let mut want = vec![0.0; dim];
        for p in 0..n {
            cpu::rmsnorm(&mut want, &x[p * dim..(p + 1) * dim], &w, 1e-5);
            for (g, w) in got[p * dim..(p + 1) * dim].iter().zip(&want) {
                assert!(
                    (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                    "rmsnorm {g} vs {w}"
                );
            }
        }

        // Gather rows 4 and 1, in that order.
        let src = gpu.upload(&[4i32, 1]).unwrap();
        let mut dg = gpu.zeros::<f32>(2 * dim).unwrap();
        gpu.rmsnorm_gather(
            &mut dg.slice_mut(..),
            &dx.slice(..),
            &dw.slice(..),
            &src.slice(..),
            2,
            dim,
            1e-5,
        )
        .unwrap();
        let g = gpu.download(&dg.slice(..)).unwrap();
        assert_eq!(&g[..dim], &got[4 * dim..5 * dim]);
        assert_eq!(&g[dim..], &got[dim..2 * dim]);

        let gate = rng.floats(1000);
        let up = rng.floats(1000);
        let mut dgate = gpu.upload(&gate).unwrap();
        let dup = gpu.upload(&up).unwrap();
        gpu.swiglu(&mut dgate.slice_mut(..), &dup.slice(..), 1000)
            .unwrap();
        let got = gpu.download(&dgate.slice(..)).unwrap();
        let mut want = gate.clone();
        cpu::swiglu(&mut want, &up);
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() <= 1e-6 * w.abs().max(1.0),
                "swiglu {g} vs {w}"
            );
        }

        let mut dsum = gpu.upload(&gate).unwrap();
        gpu.add_in_place(&mut dsum.slice_mut(..), &dup.slice(..), 1000)
            .unwrap();
        let got = gpu.download(&dsum.slice(..)).unwrap();
        let mut want = gate.clone();
        cpu::add_in_place(&mut want, &up);
        assert_eq!(got, want, "add is exact");

        // argmax with ties (lowest index wins) and a row of equal values.
        let vocab = 3001;
        let mut logits = rng.floats(3 * vocab);
        logits[vocab + 17] = 5.0;
        logits[vocab + 2999] = 5.0;
        for v in &mut logits[2 * vocab..] {
            *v = -1.0;
        }
        let dl = gpu.upload(&logits).unwrap();
        let mut da = gpu.zeros::<u32>(3).unwrap();
        gpu.argmax_rows(&mut da.slice_mut(..), &dl.slice(..), 3, vocab)
            .unwrap();
        let got = gpu.download(&da.slice(..)).unwrap();
        let want: Vec<u32> = logits
            .chunks(vocab)
            .map(flea::generate::sampler::argmax)
            .collect();
        assert_eq!(got, want);
        assert_eq!(got[1], 17);
        assert_eq!(got[2], 0);
    }

    /// `(cos, sin)` table as the forward passes build it.
    fn rope_table(rope_dims: usize, n_ctx: usize, base: f32) -> Vec<(f32, f32)> {
        let half = rope_dims / 2;
        let mut t = Vec::new();
        for pos in 0..n_ctx {
            for i in 0..half {
                let a = pos as f64 * (base as f64).powf(-2.0 * i as f64 / rope_dims as f64);
                t.push((a.cos() as f32, a.sin() as f32));
            }
        }
        t
    }

    #[test]
    fn rope_matches_the_cpu_with_full_and_partial_rotation_in_both_layouts() {
        let Some(gpu) = gpu("rope") else {
            return;
        };
        let mut rng = Rng(0x0203);
        let (n_heads, head_dim, n_ctx) = (4, 64, 50);
        for (style, cpu_rope) in [
            (
                RopeStyle::Interleaved,
                cpu::rope as fn(&mut [f32], usize, &[(f32, f32)]),
            ),
            (RopeStyle::Neox, cpu::rope_neox),
        ] {
            for rope_dims in [64, 32] {
                let half = rope_dims / 2;
                let table = rope_table(rope_dims, n_ctx, 10000.0);
                let flat: Vec<f32> = table.iter().flat_map(|&(c, s)| [c, s]).collect();
                let pos = [0i32, 1, 49, 7];
                let x = rng.floats(pos.len() * n_heads * head_dim);
                let (dt, dp) = (gpu.upload(&flat).unwrap(), gpu.upload(&pos).unwrap());
                let mut dx = gpu.upload(&x).unwrap();
                gpu.rope(
                    &mut dx.slice_mut(..),
                    &dt.slice(..),
                    &dp.slice(..),
                    pos.len(),
                    n_heads,
                    head_dim,
                    half,
                    style,
                )
                .unwrap();
                let got = gpu.download(&dx.slice(..)).unwrap();
                let mut want = x.clone();
                let row = n_heads * head_dim;
                for (r, &p) in pos.iter().enumerate() {
                    let p = p as usize;
                    cpu_rope(
                        &mut want[r * row..(r + 1) * row],
                        head_dim,
                        &table[p * half..(p + 1) * half],
                    );
                }
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - w).abs() <= 1e-6,
                        "rope {style:?} dims {rope_dims} element {i}: {g} vs {w}"
                    );
                }
            }
        }
    }

    #[test]
    fn bias_and_head_norms_match_the_cpu() {
        let Some(gpu) = gpu("bias and head norms") else {
            return;
        };
        let mut rng = Rng(0xb1a5);
        let (rows, heads, head_dim) = (3, 4, 32);
        let width = heads * head_dim;
        let x = rng.floats(rows * width);
        let bias = rng.floats(width);
        let weight = rng.floats(head_dim);
        let (db, dw) = (gpu.upload(&bias).unwrap(), gpu.upload(&weight).unwrap());
        let mut dx = gpu.upload(&x).unwrap();
        gpu.add_bias(&mut dx.slice_mut(..), &db.slice(..), rows * width)
            .unwrap();
        gpu.rmsnorm_heads(&mut dx.slice_mut(..), &dw.slice(..), rows * heads, 1e-6)
            .unwrap();
        let got = gpu.download(&dx.slice(..)).unwrap();
        let mut want = x.clone();
        cpu::add_bias(&mut want, &bias);
        cpu::rmsnorm_heads(&mut want, &weight, 1e-6, &mut vec![0.0; head_dim]);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                "element {i}: {g} vs {w}"
            );
        }
    }

    #[test]
    fn kv_store_and_attention_match_the_cpu() {
        let Some(gpu) = gpu("attention") else {
            return;
        };
        let mut rng = Rng(0xa77e);
        let (n_heads, n_kv, head_dim, n_ctx, n_seq) = (8, 2, 64, 40, 2);
        let kv_dim = n_kv * head_dim;
        // Caches with random history, then rows: a decode step of sequence
        // 0 at position 12 and a prefill of sequence 1 at positions 30..35.
        let mut k = rng.floats(n_seq * n_ctx * kv_dim);
        let mut v = rng.floats(n_seq * n_ctx * kv_dim);
        let seq = [0i32, 1, 1, 1, 1, 1];
        let pos = [12i32, 30, 31, 32, 33, 34];
        let n = seq.len();
        let new_k = rng.floats(n * kv_dim);
        let new_v = rng.floats(n * kv_dim);
        let q = rng.floats(n * n_heads * head_dim);

        let mut dk = gpu.upload(&k).unwrap();
        let mut dv = gpu.upload(&v).unwrap();
        let (ds, dp) = (gpu.upload(&seq).unwrap(), gpu.upload(&pos).unwrap());
        let (dnk, dnv) = (gpu.upload(&new_k).unwrap(), gpu.upload(&new_v).unwrap());
        gpu.kv_store(
            &mut dk.slice_mut(..),
            &mut dv.slice_mut(..),
            &dnk.slice(..),
            &dnv.slice(..),
            &ds.slice(..),
            &dp.slice(..),
            n,
            kv_dim,
            n_ctx,
        )
        .unwrap();
        for r in 0..n {
            let at = (seq[r] as usize * n_ctx + pos[r] as usize) * kv_dim;
            k[at..at + kv_dim].copy_from_slice(&new_k[r * kv_dim..(r + 1) * kv_dim]);
            v[at..at + kv_dim].copy_from_slice(&new_v[r * kv_dim..(r + 1) * kv_dim]);
        }
        assert_eq!(gpu.download(&dk.slice(..)).unwrap(), k, "kv_store keys");
        assert_eq!(gpu.download(&dv.slice(..)).unwrap(), v, "kv_store values");

        let dq = gpu.upload(&q).unwrap();
        let q_dim = n_heads * head_dim;
        let mut dout = gpu.zeros::<f32>(n * q_dim).unwrap();
        let shape = |window| AttentionShape {
            n_heads,
            n_kv_heads: n_kv,
            head_dim,
            n_ctx,
            window,
        };
        // No window, and a sliding window shorter than some positions.
        for window in [None, Some(5)] {
            gpu.attention(
                &mut dout.slice_mut(..),
                &dq.slice(..),
                &dk.slice(..),
                &dv.slice(..),
                &ds.slice(..),
                &dp.slice(..),
                n,
                shape(window),
            )
            .unwrap();
            let got = gpu.download(&dout.slice(..)).unwrap();
            let want = cpu_attention_rows(&q, &k, &v, &seq, &pos, shape(window));
            assert_attention_close(&got, &want, &format!("attention, window {window:?}"));
        }
    }

    /// The rows' attention on the CPU: row r over positions 0..=pos[r] (the
    /// last `window` of them) of sequence seq[r] in `[seq][n_ctx][kv_dim]`
    /// caches.
    fn cpu_attention_rows(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        seq: &[i32],
        pos: &[i32],
        shape: AttentionShape,
    ) -> Vec<f32> {
        let (q_dim, kv_dim) = (
            shape.n_heads * shape.head_dim,
            shape.n_kv_heads * shape.head_dim,
        );
        let mut want = vec![0.0; seq.len() * q_dim];
        let mut scores = vec![0.0; shape.n_ctx];
        for (r, out) in want.chunks_exact_mut(q_dim).enumerate() {
            let end = pos[r] as usize + 1;
            let first = shape.window.map_or(0, |w| end.saturating_sub(w));
            let base = seq[r] as usize * shape.n_ctx * kv_dim;
            let cache = base + first * kv_dim..base + end * kv_dim;
            cpu::attention(
                out,
                &q[r * q_dim..(r + 1) * q_dim],
                &k[cache.clone()],
                &v[cache],
                end - first,
                shape.n_heads,
                shape.n_kv_heads,
                shape.head_dim,
                &mut scores,
            );
        }
        want
    }

    fn assert_attention_close(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                "{what} [{i}]: {g} vs {w}"
            );
        }
    }

    /// Which of the split and tiled attention launches to run.
    #[derive(Debug, Clone, Copy)]
    enum AttentionKernel {
        /// `(splits, split_len)`.
        Split(usize, usize),
        Tiled,
    }

    /// One attention launch of `kernel` over caches `k`, `v` of element
    /// type `T`, downloaded.
    #[allow(clippy::too_many_arguments)]
    fn gpu_attention<T: KvElem>(
        gpu: &Gpu,
        kernel: AttentionKernel,
        k: &[T],
        v: &[T],
        q: &[f32],
        seq: &[i32],
        pos: &[i32],
        shape: AttentionShape,
    ) -> Vec<f32> {
        let n = seq.len();
        let (dk, dv, dq) = (
            gpu.upload(k).unwrap(),
            gpu.upload(v).unwrap(),
            gpu.upload(q).unwrap(),
        );
        let (ds, dp) = (gpu.upload(seq).unwrap(), gpu.upload(pos).unwrap());
        let mut dout = gpu
            .zeros::<f32>(n * shape.n_heads * shape.head_dim)
            .unwrap();
        let (k, v, q, seq, pos) = (
            dk.slice(..),
            dv.slice(..),
            dq.slice(..),
            ds.slice(..),
            dp.slice(..),
        );
        let out = &mut dout.slice_mut(..);
        match kernel {
            AttentionKernel::Split(splits, split_len) => {
                let mut part = gpu
                    .zeros::<f32>(n * shape.n_heads * splits * (shape.head_dim + 2))
                    .unwrap();
                gpu.attention_split(
                    out,
                    &mut part.slice_mut(..),
                    &q,
                    &k,
                    &v,
                    &seq,
                    &pos,
                    n,
                    shape,
                    (splits, split_len),
                )
                .unwrap()
            }
            AttentionKernel::Tiled => gpu
                .attention_tiled(out, &q, &k, &v, &seq, &pos, n, shape)
                .unwrap(),
        }
        gpu.download(&dout.slice(..)).unwrap()
    }

    /// The flash-decoding (split) and tiled prefill kernels against the CPU,
    /// over f32 caches and f16 ones (compared with the CPU on the values the
    /// f16 bits hold): one split and several (the shorter row's later splits
    /// empty), a full tile, a partial one straddling two sequences, GQA,
    /// with and without a sliding window. `Gpu::attention_split` and
    /// `attention_tiled` take any split lengths and rows, so a small
    /// context exercises them all.
    #[test]
    fn split_and_tiled_attention_match_the_cpu() {
        let Some(gpu) = gpu("split and tiled attention") else {
            return;
        };
        let mut rng = Rng(0x5917);
        let (n_heads, n_kv, head_dim, n_ctx, n_seq) = (4, 2, 64, 40, 2);
        let kv_dim = n_kv * head_dim;
        let k = rng.floats(n_seq * n_ctx * kv_dim);
        let v = rng.floats(n_seq * n_ctx * kv_dim);
        let bits = |x: &[f32]| -> Vec<u16> {
            x.iter()
                .map(|&x| half::f16::from_f32(x).to_bits())
                .collect()
        };
        let (k16, v16) = (bits(&k), bits(&v));
        let widen = |x: &[u16]| -> Vec<f32> {
            x.iter()
                .map(|&b| half::f16::from_bits(b).to_f32())
                .collect()
        };
        let (k16_values, v16_values) = (widen(&k16), widen(&v16));

        // Decode: two sequences at the end of the context and near its start.
        let decode = ([0i32, 1], [39i32, 12]);
        // Prefill: 20 positions of sequence 1 (a tile of 16 and a partial
        // one), then a row of sequence 0 in that partial tile.
        let mut seq = vec![1i32; 20];
        let mut pos: Vec<i32> = (0..20).collect();
        seq.push(0);
        pos.push(30);
        let prefill = (seq, pos);

        for window in [None, Some(9)] {
            let shape = AttentionShape {
                n_heads,
                n_kv_heads: n_kv,
                head_dim,
                n_ctx,
                window,
            };
            let runs = [
                (AttentionKernel::Split(1, 40), &decode.0[..], &decode.1[..]),
                (AttentionKernel::Split(6, 7), &decode.0[..], &decode.1[..]),
                (AttentionKernel::Tiled, &prefill.0[..], &prefill.1[..]),
            ];
            for (kernel, seq, pos) in runs {
                let q = rng.floats(seq.len() * n_heads * head_dim);
                let what = format!("{kernel:?}, window {window:?}");
                let got = gpu_attention(&gpu, kernel, &k, &v, &q, seq, pos, shape);
                let want = cpu_attention_rows(&q, &k, &v, seq, pos, shape);
                assert_attention_close(&got, &want, &format!("{what}, f32 cache"));
                let got = gpu_attention(&gpu, kernel, &k16, &v16, &q, seq, pos, shape);
                let want = cpu_attention_rows(&q, &k16_values, &v16_values, seq, pos, shape);
                assert_attention_close(&got, &want, &format!("{what}, f16 cache"));
            }
        }
    }

    // ------------------------------------------------------------ whole model

    /// `sequence`, `prompt_tokens` and the logits of a reference.
    fn reference(name: &str) -> (Vec<u32>, Vec<u32>, Vec<f32>) {
        let (sequence, prompt) = reference_tokens(name);
        let logits = common::read_f32_file(&format!("reference/{name}.logits.bin"));
        (sequence, prompt, logits)
    }

    fn reference_tokens(name: &str) -> (Vec<u32>, Vec<u32>) {
        let json: Value = serde_json::from_slice(
            &std::fs::read(common::fixture(&format!("reference/{name}.json"))).unwrap(),
        )
        .unwrap();
        let ids = |key: &str| -> Vec<u32> {
            json[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect()
        };
        (ids("sequence"), ids("prompt_tokens"))
    }

    fn engine_config(n_ctx: usize, max_chunk: usize, n_seq: usize) -> EngineConfig {
        EngineConfig {
            n_ctx,
            max_chunk,
            n_seq,
            threads: 1,
            ..Default::default()
        }
    }

    /// Teacher-forced logits of `tokens` through the CUDA backend.
    fn gpu_logits(
        file: &GgufFile,
        model: &Model,
        tokens: &[u32],
        chunk: usize,
        cache: u64,
    ) -> Vec<f32> {
        let mut cfg = CudaForwardConfig::new(tokens.len(), chunk, 1);
        cfg.weight_cache_bytes = cache;
        let backend = CudaForward::new(&model.hparams, cfg).unwrap();
        let mut engine =
            Engine::with_backend(model, file, backend, &engine_config(tokens.len(), chunk, 1))
                .unwrap();
        let mut out = Vec::new();
        for (i, piece) in tokens.chunks(chunk).enumerate() {
            out.extend_from_slice(engine.forward(piece, i * chunk, Logits::All).unwrap());
        }
        out
    }

    struct Agreement {
        mean_abs: f32,
        max_abs: f32,
        top1: f32,
    }

    fn compare(ours: &[f32], theirs: &[f32], vocab: usize) -> Agreement {
        assert_eq!(ours.len(), theirs.len());
        let diffs: Vec<f32> = ours
            .iter()
            .zip(theirs)
            .map(|(a, b)| (a - b).abs())
            .collect();
        let rows = ours.len() / vocab;
        let agree = ours
            .chunks(vocab)
            .zip(theirs.chunks(vocab))
            .filter(|(a, b)| {
                flea::generate::sampler::argmax(a) == flea::generate::sampler::argmax(b)
            })
            .count();
        Agreement {
            mean_abs: diffs.iter().sum::<f32>() / diffs.len() as f32,
            max_abs: diffs.iter().copied().fold(0.0, f32::max),
            top1: agree as f32 / rows as f32,
        }
    }

    #[test]
    fn gpu_logits_match_llama_cpp_reference() {
        if gpu("reference logits").is_none() {
            return;
        }
        for name in common::SYNTH_MODELS {
            if !shipped(&model_files(name, true)) || !wanted(name) {
                continue;
            }
            let (sequence, _, reference) = reference(name);
            let file = GgufFile::open(common::model(&format!("{name}.gguf"))).unwrap();
            let model = Model::from_gguf(&file).unwrap();
            let ours = gpu_logits(&file, &model, &sequence, 16, u64::MAX);
            let a = compare(&ours, &reference, model.hparams.vocab_size);
            say(&format!(
                "GPU {name}: mean |diff| {:.4}, max |diff| {:.4}, top-1 {:.1}%\n",
                a.mean_abs,
                a.max_abs,
                a.top1 * 100.0
            ));
            assert!(a.mean_abs <= 0.1, "{name}: mean |diff| {}", a.mean_abs);
            assert!(a.max_abs <= 0.75, "{name}: max |diff| {}", a.max_abs);
            assert!(a.top1 >= 0.85, "{name}: top-1 agreement {}", a.top1);
        }
        let name = "llama-2-tiny-random";
        if !shipped(&model_files(name, true)) {
            return;
        }
        let (sequence, _, reference) = reference(name);
        let file = GgufFile::open(common::model(&format!("{name}.gguf"))).unwrap();
        let model = Model::from_gguf(&file).unwrap();
        let ours = gpu_logits(&file, &model, &sequence, 16, u64::MAX);
        let a = compare(&ours, &reference, model.hparams.vocab_size);
        assert!(a.max_abs <= 0.02, "{name}: max |diff| {}", a.max_abs);
    }

    /// The architectures (Llama 3.1 rope factors and tied output, Qwen 2
    /// biases, Qwen 3 q/k norms, Phi-3 fused matrices and NEOX rope) on the
    /// device against their reference top-40, within the bounds.
    #[test]
    fn gpu_architectures_match_the_reference_top40() {
        if gpu("architectures").is_none() {
            return;
        }
        let mut failures = Vec::new();
        for name in common::ARCH_MODELS {
            // Not narrowed by FLEA_GPU_ONLY_MODELS: two-layer files, a few
            // seconds each even on the emulated device.
            if !shipped(&[format!("arch/{name}.gguf"), format!("arch/{name}.json")]) {
                continue;
            }
            let reference = common::Top40::read(&format!("arch/{name}.json"));
            let file = GgufFile::open(common::fixture(&format!("arch/{name}.gguf"))).unwrap();
            let model = Model::from_gguf(&file).unwrap();
            let ours = gpu_logits(&file, &model, &reference.sequence, 16, u64::MAX);
            let a = reference.compare(&ours, model.hparams.vocab_size);
            say(&format!("GPU {name}: {a}\n"));
            if let Some(why) = a.check(0.02, 0.15, 0.95) {
                failures.push(format!("{name}: {why}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn staged_layers_and_chunk_sizes_agree() {
        if gpu("staged layers").is_none() {
            return;
        }
        let name = "synth-256-Q4_K_M";
        if !shipped(&model_files(name, false)) {
            return;
        }
        let (sequence, _) = reference_tokens(name);
        let tokens = &sequence[..20];
        let file = GgufFile::open(common::model(&format!("{name}.gguf"))).unwrap();
        let model = Model::from_gguf(&file).unwrap();
        let cached = gpu_logits(&file, &model, tokens, 16, u64::MAX);
        // No cache budget: every layer is copied into the staging buffer
        // each pass. Same kernels on the same bytes: the same bits.
        let staged = gpu_logits(&file, &model, tokens, 16, 0);
        assert_eq!(cached, staged, "staged layers must give identical logits");
        // Chunk 1 runs every product through the integer mat-vec on 8-bit
        // activations, the CPU's own activation values: the CPU at chunk 1
        // agrees but for the order of float sums. Chunk 16 runs the tiled
        // kernel on f32 activations: a different rounding of the same
        // model, held to the llama.cpp reference's tolerance.
        let one = gpu_logits(&file, &model, tokens, 1, u64::MAX);
        let mut cpu = Engine::new(&model, &file, &engine_config(tokens.len(), 1, 1)).unwrap();
        let mut cpu_one = Vec::new();
        for (i, t) in tokens.iter().enumerate() {
            cpu_one.extend_from_slice(cpu.forward(&[*t], i, Logits::All).unwrap());
        }
        let vocab = one.len() / tokens.len();
        let vs_cpu = compare(&one, &cpu_one, vocab);
        assert!(
            vs_cpu.max_abs <= 1e-3,
            "chunk 1 vs the CPU: max |diff| {}",
            vs_cpu.max_abs
        );
        let vs_tiled = compare(&one, &cached, vocab);
        assert!(
            vs_tiled.mean_abs <= 0.1 && vs_tiled.max_abs <= 0.75,
            "chunk 1 vs 16: mean |diff| {}, max |diff| {}",
            vs_tiled.mean_abs,
            vs_tiled.max_abs
        );
    }

    /// Greedy decode: the prompt in one pass, then `steps` single tokens.
    fn greedy(engine: &mut Engine<'_, &GgufFile>, prompt: &[u32], steps: usize) -> Vec<u32> {
        let mut out = Vec::new();
        let mut next =
            flea::generate::sampler::argmax(engine.forward(prompt, 0, Logits::Last).unwrap());
        for i in 0..steps {
            out.push(next);
            if i + 1 < steps {
                let logits = engine
                    .forward(&[next], prompt.len() + i, Logits::Last)
                    .unwrap();
                next = flea::generate::sampler::argmax(logits);
            }
        }
        out
    }

    /// Greedy decode on the GPU against the CPU, by logits rather than by
    /// exact tokens: FMA contraction and the device's `expf` may round
    /// differently from the CPU, which may flip a near-tie and then send the
    /// two decodes down different paths. So the CPU's greedy tokens are fed
    /// to both, step by step, and at every step the GPU's logits must be
    /// within the reference tolerances of the CPU's and pick the same top-1
    /// token, unless the CPU's best two are closer than the largest
    /// difference seen (a near-tie either may break either way).
    #[test]
    fn greedy_decode_agrees_with_the_cpu_on_q8_0() {
        if gpu("greedy tokens").is_none() {
            return;
        }
        let name = "synth-256-Q8_0";
        if !shipped(&model_files(name, false)) {
            return;
        }
        let (_, prompt) = reference_tokens(name);
        let file = GgufFile::open(common::model(&format!("{name}.gguf"))).unwrap();
        let model = Model::from_gguf(&file).unwrap();
        let cfg = engine_config(64, 32, 1);
        let mut cpu_engine = Engine::new(&model, &file, &cfg).unwrap();
        let tokens = greedy(&mut cpu_engine, &prompt, 8);
        let backend = CudaForward::new(&model.hparams, CudaForwardConfig::new(64, 32, 1)).unwrap();
        let mut gpu_engine = Engine::with_backend(&model, &file, backend, &cfg).unwrap();
        let mut cpu_engine = Engine::new(&model, &file, &cfg).unwrap();
        let mut input = prompt.clone();
        let mut pos = 0;
        let (mut max_abs, mut sum_abs, mut n, mut ties, mut agree) = (0f32, 0f64, 0usize, 0, 0);
        for &next in &tokens {
            let want = cpu_engine
                .forward(&input, pos, Logits::Last)
                .unwrap()
                .to_vec();
            let got = gpu_engine
                .forward(&input, pos, Logits::Last)
                .unwrap()
                .to_vec();
            let diff = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            max_abs = max_abs.max(diff);
            sum_abs += got
                .iter()
                .zip(&want)
                .map(|(a, b)| f64::from((a - b).abs()))
                .sum::<f64>();
            n += got.len();
            let (top, gpu_top) = (
                flea::generate::sampler::argmax(&want),
                flea::generate::sampler::argmax(&got),
            );
            assert_eq!(top, next, "the CPU's greedy token");
            if gpu_top == top {
                agree += 1;
            } else {
                let second = want
                    .iter()
                    .enumerate()
                    .filter(|&(i, _)| i as u32 != top)
                    .map(|(_, &v)| v)
                    .fold(f32::MIN, f32::max);
                let gap = want[top as usize] - second;
                assert!(
                    gap <= 2.0 * diff,
                    "GPU picked {gpu_top}, CPU {top} with a margin of {gap} (> 2 x max |diff| {diff})"
                );
                ties += 1;
            }
            pos += input.len();
            input = vec![next];
        }
        let mean = (sum_abs / n as f64) as f32;
        say(&format!(
            "greedy {name}: {agree} of {} steps agree on top-1 ({ties} near-ties), \
             max |diff| {max_abs:.5}, mean {mean:.6}\n",
            tokens.len()
        ));
        assert!(mean <= 0.1, "mean |diff| {mean}");
        assert!(max_abs <= 0.75, "max |diff| {max_abs}");
    }

    #[test]
    fn batched_decode_agrees_with_single_sequences() {
        if gpu("batched decode").is_none() {
            return;
        }
        let name = "synth-256-Q4_K_M";
        if !shipped(&model_files(name, false)) {
            return;
        }
        let (sequence, _) = reference_tokens(name);
        let file = GgufFile::open(common::model(&format!("{name}.gguf"))).unwrap();
        let model = Model::from_gguf(&file).unwrap();
        let vocab = model.hparams.vocab_size;
        let prompts: [&[u32]; 3] = [&sequence[..5], &sequence[3..12], &sequence[1..3]];
        let step: [u32; 3] = [sequence[20], sequence[21], sequence[22]];

        // Each sequence alone (slot 0 of its own engine): prompt, one step.
        let mut alone = Vec::new();
        for (p, &t) in prompts.iter().zip(&step) {
            let backend =
                CudaForward::new(&model.hparams, CudaForwardConfig::new(32, 16, 1)).unwrap();
            let mut e =
                Engine::with_backend(&model, &file, backend, &engine_config(32, 16, 1)).unwrap();
            e.forward(p, 0, Logits::None).unwrap();
            alone.extend_from_slice(e.forward(&[t], p.len(), Logits::Last).unwrap());
        }

        // All three in one engine: prompts one by one, then one batched step.
        let backend = CudaForward::new(&model.hparams, CudaForwardConfig::new(32, 16, 3)).unwrap();
        let mut e =
            Engine::with_backend(&model, &file, backend, &engine_config(32, 16, 3)).unwrap();
        for (s, p) in prompts.iter().enumerate() {
            e.forward_batch(&[SeqChunk {
                seq: s,
                tokens: p,
                start_pos: 0,
                logits: Logits::None,
            }])
            .unwrap();
        }
        let chunks: Vec<SeqChunk<'_>> = (0..3)
            .map(|s| SeqChunk {
                seq: s,
                tokens: &step[s..s + 1],
                start_pos: prompts[s].len(),
                logits: Logits::Last,
            })
            .collect();
        let batched = e.forward_batch(&chunks).unwrap().to_vec();
        assert_eq!(batched.len(), 3 * vocab);
        let max = batched
            .iter()
            .zip(&alone)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(max <= 1e-4, "batched vs alone: max |diff| {max}");
    }

    #[test]
    fn backend_driven_directly_and_device_argmax() {
        use flea::backend::{Backend, Batch, BatchEntry, FileBytes};
        if gpu("device argmax").is_none() {
            return;
        }
        let name = "synth-256-Q4_K_M";
        if !shipped(&model_files(name, false)) {
            return;
        }
        let (sequence, _) = reference_tokens(name);
        let tokens = &sequence[..12];
        let file = GgufFile::open(common::model(&format!("{name}.gguf"))).unwrap();
        let model = Model::from_gguf(&file).unwrap();
        let vocab = model.hparams.vocab_size;
        let mut b = CudaForward::new(&model.hparams, CudaForwardConfig::new(16, 16, 1)).unwrap();
        let whole = FileBytes {
            base: 0,
            bytes: file.bytes_at(0..file.file_len()),
            resident: true,
        };
        let entries = [BatchEntry {
            seq: 0,
            first: 0,
            len: tokens.len(),
            start_pos: 0,
            logits: Logits::All,
        }];
        b.begin(
            Batch {
                entries: &entries,
                tokens,
            },
            whole.weight(&model.token_embd),
        )
        .unwrap();
        for (l, layer) in model.layers.iter().enumerate() {
            b.layer(l, layer, whole).unwrap();
        }
        let logits = b
            .finish(
                whole.weight(&model.output_norm),
                whole.weight(&model.output),
            )
            .unwrap()
            .to_vec();
        assert_eq!(logits.len(), tokens.len() * vocab);
        let host: Vec<u32> = logits
            .chunks(vocab)
            .map(flea::generate::sampler::argmax)
            .collect();
        assert_eq!(b.argmax_last().unwrap(), &host[..]);
        assert!(b.cached_weight_bytes() > 0);
    }

    // ------------------------------------------------------------ streaming

    use flea::backend::Feed;
    use flea::engine::WeightSource;
    use flea::residency::plan::Plan;
    use flea::residency::{Residency, ResidencyOptions};

    const STREAM_CTX: usize = 64;
    const STREAM_CHUNK: usize = 8;

    fn stream_config() -> EngineConfig {
        engine_config(STREAM_CTX, STREAM_CHUNK, 1)
    }

    fn stream_tokens(vocab: usize) -> Vec<u32> {
        (0..20u64)
            .map(|i| (1 + (i * 7919) % (vocab as u64 - 1)) as u32)
            .collect()
    }

    /// Teacher-forced logits of `tokens` in chunks of 8, then 4 greedy
    /// single-token steps, twice over (the second round starts while the
    /// loader has wrapped around to the first streamed layers, and with an
    /// odd number of streamed layers on the other device slot).
    fn engine_logits<W: WeightSource>(engine: &mut Engine<'_, W>, tokens: &[u32]) -> Vec<f32> {
        let mut out = Vec::new();
        for _ in 0..2 {
            out.clear();
            flea::generate::teacher_forced(engine, tokens, |row| {
                out.extend_from_slice(row);
                Ok(())
            })
            .unwrap();
            let vocab = engine.hparams().vocab_size;
            let mut next = flea::generate::sampler::argmax(&out[out.len() - vocab..]);
            for i in 0..4 {
                let logits = engine
                    .forward(&[next], tokens.len() + i, Logits::Last)
                    .unwrap();
                out.extend_from_slice(logits);
                next = flea::generate::sampler::argmax(logits);
            }
        }
        out
    }

    /// How a streamed run feeds the GPU in these tests.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Mode {
        /// Page-locked host slots, device double buffer.
        Device,
        /// Page-locked, mapped host slots read in place.
        Mapped,
        /// No registration: device double buffer sized at the first
        /// streamed layer, copies from pageable memory.
        Pageable,
    }

    /// A streaming engine for `plan` in `mode`, checked to feed as asked.
    fn streamed_engine<'m>(
        path: &std::path::Path,
        model: &'m Model,
        plan: &Plan,
        mode: Mode,
        profile: bool,
    ) -> Engine<'m, Residency> {
        let mut source = Residency::open(path, model, plan, ResidencyOptions::default()).unwrap();
        let buffer = match mode {
            Mode::Mapped => Feed::Mapped,
            Mode::Device | Mode::Pageable => Feed::Device,
        };
        let mut cfg = CudaForwardConfig::for_plan(&stream_config(), plan, buffer);
        cfg.profile = profile;
        if mode == Mode::Pageable {
            cfg.stream_slot_bytes = 0;
        }
        let mut backend = CudaForward::new(&model.hparams, cfg).unwrap();
        if mode != Mode::Pageable {
            backend.pin_host_slots(&mut source).unwrap();
        }
        if plan.is_streaming() {
            let want = if mode == Mode::Mapped {
                cuda::Feed::Mapped
            } else {
                cuda::Feed::Device
            };
            assert_eq!(
                backend.feed(),
                want,
                "{mode:?}: streamed layers are not fed as asked (see the log line on pinning)"
            );
            match mode {
                Mode::Device | Mode::Mapped => assert_eq!(
                    backend.locked_host_bytes(),
                    2 * plan.slot_bytes,
                    "{mode:?}: host slots not page-locked"
                ),
                Mode::Pageable => assert_eq!(backend.locked_host_bytes(), 0),
            }
            let device_slots = if mode == Mode::Device {
                plan.slot_bytes as usize
            } else {
                0
            };
            assert_eq!(backend.device_slot_bytes(), device_slots, "{mode:?}");
        }
        Engine::with_backend(model, source, backend, &stream_config()).unwrap()
    }

    /// Streamed layers run the same kernels on the same bytes as resident
    /// ones: identical logits, bit for bit, for every fixture, at the
    /// minimum budget (every layer streamed), with one layer resident (an
    /// odd number streamed, so passes alternate the first device slot) and
    /// at half the model, through the device double buffer, the mapped
    /// host slots and pageable copies. Also for the GGUFs listed in
    /// `FLEA_GPU_EXTRA_MODELS` (colon-separated).
    #[test]
    fn streamed_logits_equal_resident_logits_on_the_gpu() {
        if gpu("streamed vs resident").is_none() {
            return;
        }
        let mut models: Vec<(String, std::path::PathBuf)> = Vec::new();
        for name in common::SYNTH_MODELS
            .iter()
            .copied()
            .chain(["llama-2-tiny-random"])
        {
            if shipped(&[format!("models/{name}.gguf")]) {
                models.push((name.to_string(), common::model(&format!("{name}.gguf"))));
            }
        }
        for name in common::LEGACY_MODELS {
            if shipped(&[format!("legacy/{name}.gguf")]) {
                models.push((
                    name.to_string(),
                    common::fixture(&format!("legacy/{name}.gguf")),
                ));
            }
        }
        for name in common::ARCH_MODELS {
            if shipped(&[format!("arch/{name}.gguf")]) {
                models.push((
                    name.to_string(),
                    common::fixture(&format!("arch/{name}.gguf")),
                ));
            }
        }
        // Stand-ins for fixtures a GPU machine was not shipped (made there
        // with `flea synth`, see scripts/gpu-check.sh).
        for path in std::env::var("FLEA_GPU_EXTRA_MODELS")
            .unwrap_or_default()
            .split(':')
            .filter(|p| !p.is_empty())
        {
            models.push((path.to_string(), std::path::PathBuf::from(path)));
        }
        models.retain(|(name, _)| wanted(name));
        let mut streamed_runs = 0;
        for (name, path) in models {
            let file = GgufFile::open(&path).unwrap();
            let model = Model::from_gguf(&file).unwrap();
            let tokens = stream_tokens(model.hparams.vocab_size);
            let reference = {
                let backend = CudaForward::new(
                    &model.hparams,
                    CudaForwardConfig::new(STREAM_CTX, STREAM_CHUNK, 1),
                )
                .unwrap();
                let mut e = Engine::with_backend(&model, &file, backend, &stream_config()).unwrap();
                engine_logits(&mut e, &tokens)
            };
            let min = stream_config().minimum_budget(&model);
            let all = stream_config()
                .plan(&model, u64::MAX)
                .unwrap()
                .total_bytes();
            let one_layer = stream_config().plan(&model, u64::MAX).unwrap().layer_reads[0].len();
            let half = min + (all - min) / 2;
            let mut tried: Vec<Plan> = Vec::new();
            let mut plans: Vec<(&str, Plan)> = [
                ("minimum", min),
                ("one resident", (min + one_layer).min(all)),
                ("half", half),
            ]
            .into_iter()
            .map(|(label, budget)| (label, stream_config().plan(&model, budget).unwrap()))
            .collect();
            // Two-layer files (arch/) keep both resident at every budget:
            // stream them through the slots anyway.
            if !plans.iter().any(|(_, p)| p.is_streaming()) {
                let everything =
                    common::stream_everything(stream_config().plan(&model, all).unwrap());
                plans.push(("minimum", everything)); // two slots: what a streamed run needs at least
            }
            for (label, plan) in plans {
                if !only("FLEA_GPU_STREAM_BUDGETS", label) {
                    continue;
                }
                // A budget whose plan is one already run (the planner may
                // keep nothing more at the minimum plus one layer) would
                // only repeat it.
                if tried.contains(&plan) {
                    say(&format!(
                        "{name}: budget {label}: same plan as a smaller one\n"
                    ));
                    continue;
                }
                tried.push(plan.clone());
                let streamed = plan.streamed_layers().count();
                if streamed > 0 {
                    streamed_runs += 1;
                }
                for mode in [Mode::Device, Mode::Mapped, Mode::Pageable] {
                    if !only("FLEA_GPU_STREAM_MODES", &format!("{mode:?}")) {
                        continue;
                    }
                    let mut e = streamed_engine(&path, &model, &plan, mode, false);
                    let ours = engine_logits(&mut e, &tokens);
                    assert_eq!(ours.len(), reference.len());
                    let differ = ours
                        .iter()
                        .zip(&reference)
                        .filter(|(a, b)| a.to_bits() != b.to_bits())
                        .count();
                    assert_eq!(
                        differ,
                        0,
                        "{name}: budget {label} ({} bytes, {streamed} of {} layers \
                         streamed), {mode:?}: {differ} logits differ from resident",
                        plan.budget,
                        model.layers.len()
                    );
                }
            }
            say(&format!(
                "streamed == resident on the GPU: {name} (device, mapped, pageable)\n"
            ));
        }
        assert!(
            streamed_runs > 0 || std::env::var_os("FLEA_GPU_PARTIAL_FIXTURES").is_some(),
            "no fixture streamed"
        );
    }

    /// One pass of the engine's loop (`Engine::run_batch` without the
    /// checks), keeping the backend in hand to read its counters.
    fn pass(
        model: &Model,
        source: &mut Residency,
        backend: &mut CudaForward,
        tokens: &[u32],
        start_pos: usize,
    ) -> Vec<f32> {
        use flea::backend::{Backend, Batch, BatchEntry};
        let entries = [BatchEntry {
            seq: 0,
            first: 0,
            len: tokens.len(),
            start_pos,
            logits: Logits::Last,
        }];
        backend
            .begin(
                Batch {
                    entries: &entries,
                    tokens,
                },
                source.global(&model.token_embd),
            )
            .unwrap();
        for (l, layer) in model.layers.iter().enumerate() {
            let bytes = source.acquire_layer(l).unwrap();
            let r = backend.layer(l, layer, bytes);
            source.release_layer(l);
            r.unwrap();
        }
        backend
            .finish(
                source.global(&model.output_norm),
                source.global(&model.output),
            )
            .unwrap()
            .to_vec()
    }

    /// The counters and event times the benchmark reads: every streamed
    /// layer copied (device) or read in place (mapped) once per pass, the
    /// bytes copied, and nonzero copy and kernel times.
    #[test]
    fn layer_times_count_every_streamed_layer() {
        if gpu("layer times").is_none() {
            return;
        }
        let name = "synth-256-Q4_K_M";
        if !shipped(&[format!("models/{name}.gguf")]) {
            return;
        }
        let path = common::model(&format!("{name}.gguf"));
        let file = GgufFile::open(&path).unwrap();
        let model = Model::from_gguf(&file).unwrap();
        // The smallest budget, in steps of one layer above the minimum,
        // whose plan keeps a layer resident and still streams: the minimum
        // plus one layer is not it (the planner keeps nothing resident
        // there, so a resident-time assertion there failed everywhere).
        let min = stream_config().minimum_budget(&model);
        let one_layer = stream_config().plan(&model, u64::MAX).unwrap().layer_reads[0].len();
        let plan = (1..=model.layers.len() as u64)
            .map(|k| stream_config().plan(&model, min + k * one_layer).unwrap())
            .find(|p| {
                let streamed = p.streamed_layers().count();
                streamed > 0 && streamed < model.layers.len()
            })
            .expect("a budget that keeps some layers resident and streams the rest");
        let streamed = plan.streamed_layers().count() as u64;
        let resident = model.layers.len() as u64 - streamed;
        assert!(streamed > 0 && resident > 0);
        let tokens = stream_tokens(model.hparams.vocab_size);
        for mode in [Mode::Device, Mode::Mapped] {
            let mut source =
                Residency::open(&path, &model, &plan, ResidencyOptions::default()).unwrap();
            let buffer = match mode {
                Mode::Mapped => Feed::Mapped,
                _ => Feed::Device,
            };
            let mut cfg = CudaForwardConfig::for_plan(&stream_config(), &plan, buffer);
            cfg.profile = true;
            let mut backend = CudaForward::new(&model.hparams, cfg).unwrap();
            backend.pin_host_slots(&mut source).unwrap();
            let a = pass(&model, &mut source, &mut backend, &tokens[..8], 0);
            backend.reset_layer_times();
            let b = pass(&model, &mut source, &mut backend, &tokens[8..9], 8);
            let c = pass(&model, &mut source, &mut backend, &tokens[9..10], 9);
            assert!(!a.is_empty() && !b.is_empty() && !c.is_empty());
            let t = backend.layer_times();
            assert_eq!(t.passes, 2, "{mode:?}");
            assert_eq!(t.resident_layers, 2 * resident, "{mode:?}");
            assert!(t.resident_compute_ms > 0.0, "{mode:?}: {t:?}");
            assert!(t.streamed_compute_ms > 0.0, "{mode:?}: {t:?}");
            assert!(t.host_wait_ms >= 0.0, "{mode:?}: {t:?}");
            let per_pass: u64 = plan
                .streamed_layers()
                .map(|l| {
                    let m = &model.layers[l];
                    let span = super::slots::layer_span(
                        [&m.wq, &m.wk, &m.wv, &m.wo, &m.w_gate, &m.w_up, &m.w_down]
                            .iter()
                            .map(|t| t.file_range.clone()),
                    )
                    .unwrap();
                    span.end - span.start
                })
                .sum();
            match mode {
                Mode::Device => {
                    assert_eq!(t.copied_layers, 2 * streamed, "{t:?}");
                    assert_eq!(t.mapped_layers, 0, "{t:?}");
                    assert_eq!(t.copy_bytes, 2 * per_pass, "{t:?}");
                    assert!(t.copy_ms > 0.0 && t.copy_bytes_per_s().is_some(), "{t:?}");
                }
                _ => {
                    assert_eq!(t.mapped_layers, 2 * streamed, "{t:?}");
                    assert_eq!(t.copied_layers, 0, "{t:?}");
                    assert_eq!(t.copy_bytes, 0, "{t:?}");
                }
            }
            say(&format!("layer times {mode:?}: {t:?}\n"));
        }
    }

    /// The registration is undone with the source, whichever of source and
    /// backend goes first, and a backend can be given another source.
    #[test]
    fn host_slot_registration_follows_the_source() {
        let Some(gpu) = gpu("host slot registration") else {
            return;
        };
        let bw = cuda::measure_h2d_bandwidth(&gpu, 64 << 20, 3).unwrap();
        assert!(bw.bytes_per_s.is_finite() && bw.bytes_per_s > 0.0);
        say(&format!(
            "pinned H2D: {:.1} GB/s (64 MiB x 3)\n",
            bw.bytes_per_s / 1e9
        ));
        drop(gpu);
        let name = "synth-256-Q8_0";
        if !shipped(&[format!("models/{name}.gguf")]) {
            return;
        }
        let path = common::model(&format!("{name}.gguf"));
        let file = GgufFile::open(&path).unwrap();
        let model = Model::from_gguf(&file).unwrap();
        let plan = stream_config()
            .plan(&model, stream_config().minimum_budget(&model))
            .unwrap();
        assert!(plan.is_streaming());
        let tokens = stream_tokens(model.hparams.vocab_size);
        let open = || Residency::open(&path, &model, &plan, ResidencyOptions::default()).unwrap();
        let cfg = CudaForwardConfig::for_plan(&stream_config(), &plan, Feed::Mapped);
        let mut backend = CudaForward::new(&model.hparams, cfg).unwrap();

        // Source dropped first: the backend stops using the mapping.
        let mut source = open();
        backend.pin_host_slots(&mut source).unwrap();
        assert_eq!(backend.feed(), cuda::Feed::Mapped);
        let first = pass(&model, &mut source, &mut backend, &tokens[..8], 0);
        drop(source);
        assert_eq!(backend.locked_host_bytes(), 0);
        assert_eq!(backend.feed(), cuda::Feed::Device);

        // A new source, registered again on the same backend.
        let mut source = open();
        backend.pin_host_slots(&mut source).unwrap();
        assert_eq!(backend.feed(), cuda::Feed::Mapped);
        let again = pass(&model, &mut source, &mut backend, &tokens[..8], 0);
        assert_eq!(first, again, "same pass, same logits");

        // Backend dropped first: the source's guard still unregisters.
        drop(backend);
        let more = source.acquire_layer(0).unwrap().bytes.len();
        source.release_layer(0);
        assert!(more > 0);
        drop(source);
    }

    /// The emulated tier's own check (scripts/emulated-gpu-check.sh): with
    /// one of the waits the streaming code relies on removed, the
    /// streamed == resident test must fail, so a tier that passes is one
    /// that would notice such a bug. The fake driver drops the wait
    /// (FAKE_CUDA_DROP_WAIT): the copy stream's wait for the slot's readers,
    /// the compute stream's wait for the copy, or the host's sync before a
    /// mapped slot is reused. Each runs the real test in a child process of
    /// this binary, on one fixture at the minimum budget (every layer
    /// streamed) in the feed the wait belongs to, under the scheduling
    /// policies that can make a missing wait visible (lazy, then slowcopy;
    /// eager never does). A control run without a mutation must pass. Only
    /// on the emulated device (FLEA_EMULATED_GPU), the one with the knob.
    #[test]
    fn emulated_tier_catches_a_removed_wait() {
        if std::env::var_os("FLEA_EMULATED_GPU").is_none()
            || std::env::var_os("FLEA_EMU_CHILD").is_some()
        {
            say("removed wait: skipped: not on the emulated device\n");
            return;
        }
        let run = |drop: &str, policy: &str, modes: &str| -> bool {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "gpu::streamed_logits_equal_resident_logits_on_the_gpu",
                    "--test-threads=1",
                ])
                .env("FLEA_EMU_CHILD", "1")
                .env("FLEA_GPU_ONLY_MODELS", "synth-256-Q4_K_M")
                .env("FLEA_GPU_STREAM_BUDGETS", "minimum")
                .env("FLEA_GPU_STREAM_MODES", modes)
                .env("FAKE_CUDA_DROP_WAIT", drop)
                .env("FAKE_CUDA_POLICY", policy)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                text.contains("1 passed") || text.contains("1 failed") || !out.status.success(),
                "the child ran no test: {text}"
            );
            out.status.success()
        };
        assert!(
            run("", "lazy", "Device:Mapped"),
            "control run (no wait removed) failed"
        );
        for (drop, modes) in [
            ("copy_reader", "Device"),
            ("compute_copy", "Device"),
            ("mapped_sync", "Mapped"),
        ] {
            let caught = ["lazy", "slowcopy"]
                .into_iter()
                .find(|policy| !run(drop, policy, modes));
            say(&format!("removed wait {drop}: caught under {caught:?}\n"));
            assert!(
                caught.is_some(),
                "removing the {drop} wait went unnoticed under lazy and slowcopy"
            );
        }
    }
}
