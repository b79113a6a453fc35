//! The CPU backend: SIMD matrix kernels over 8-bit activations, a persistent
//! thread pool, and the small per-position operations (norms, RoPE,
//! attention).
//!
//! Layout of the module:
//! - [`isa`]: which kernels this CPU runs (AVX-512 VNNI, AVX-VNNI,
//!   AVX2+FMA+F16C, NEON, NEON with `sdot`, or scalar), detected once and
//!   overridable with `FLEA_CPU_ISA`.
//! - `kernels`: what all kernels share, the canonical K-quant block form,
//!   and why every instruction set gives bit-identical results.
//! - `scalar`, `avx2`, `vnni`, `neon`: the kernels, one file per family of
//!   instruction sets; the scalar ones are the twins the others are tested
//!   against.
//! - `matmul`: activation quantization, row tiles, position chunks.
//! - `pool`: the worker threads.
//! - `ops`: norms, RoPE, softmax, attention, SwiGLU.
//! - `forward`: the forward pass over these, behind the engine's `Backend`
//!   seam ([`CpuForward`]).
//!
//! Numerics: weights in K-quant or 32-weight block formats meet activations rounded to
//! 8 bits per block (as llama.cpp does); F32/F16/BF16 weights meet f32
//! activations. The f32 `quant::dot_row` stays the oracle of what a row
//! product means; these kernels differ from it only by the activation
//! rounding.

mod forward;
pub mod isa;
mod kernels;
mod matmul;
mod ops;
mod pool;
mod scalar;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "aarch64")]
mod neon;
#[cfg(target_arch = "x86_64")]
mod vnni;

use std::cell::RefCell;

pub use forward::{CpuForward, CpuForwardConfig};
pub use isa::Isa;
pub use ops::{
    add_bias, add_in_place, attention, dequantize_vector, rmsnorm, rmsnorm_heads, rope, rope_neox,
    softmax, swiglu, AttnHeads, AttnPass, BlockPass,
};

use matmul::{ActScratch, TileClaims};
use pool::Pool;

pub struct CpuBackend {
    threads: usize,
    isa: Isa,
    pool: Pool,
    /// Quantized activations of the current matmul; grown on demand (or up
    /// front by [`CpuBackend::reserve`]) and reused, so a warm backend
    /// allocates nothing per call.
    acts: RefCell<ActScratch>,
    /// Which matmul tiles are taken, reused by every call.
    tile_claims: TileClaims,
}

impl CpuBackend {
    /// A backend with `threads` participants (the caller and `threads - 1`
    /// workers, spawned now) and the best kernels for this CPU.
    pub fn new(threads: usize) -> CpuBackend {
        let isa = Isa::best();
        log::debug!("CPU kernels: {isa} ({threads} threads)");
        CpuBackend::with_isa(threads, isa)
    }

    /// As [`CpuBackend::new`], with the given kernels (tests and benchmarks
    /// compare instruction sets; results are identical by design).
    pub fn with_isa(threads: usize, isa: Isa) -> CpuBackend {
        let threads = threads.max(1);
        CpuBackend {
            threads,
            isa,
            pool: Pool::new(threads),
            acts: RefCell::new(ActScratch::default()),
            tile_claims: TileClaims::new(threads),
        }
    }

    pub fn threads(&self) -> usize {
        debug_assert_eq!(self.threads, self.pool.threads());
        self.threads
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Allocate now the activation scratch that matmuls of up to
    /// `max_positions` positions of inputs up to `max_cols` wide will need,
    /// so that no later call allocates. Costs at most 1.25 bytes per value.
    pub fn reserve(&self, max_positions: usize, max_cols: usize) {
        self.acts.borrow_mut().reserve(max_positions * max_cols);
    }

    /// Run `job(worker)` once on every participant (`worker` in
    /// `0..threads()`, the caller being 0) and wait for all: for work the
    /// kernels here do not cover, split by the caller. Allocates nothing.
    pub fn run_on_all(&self, job: &(dyn Fn(usize) + Sync)) {
        self.pool.run(job);
    }

    /// Hand an empty job to every thread and wait for all: the pool's
    /// fixed cost per matmul (and a way to wake sleeping workers early).
    pub fn empty_dispatch(&self) {
        self.pool.run(&|_| {});
    }

    /// Bytes held as activation scratch.
    pub fn scratch_bytes(&self) -> usize {
        self.acts.borrow().bytes()
    }
}
