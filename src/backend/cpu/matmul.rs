//! Matrix products: activations quantized once per call, row tiles spread
//! over the thread pool, positions processed in chunks of up to
//! [`MAX_POSITIONS`].
//!
//! Work layout. The rows of every weight matrix in a call are cut into tiles
//! of `tile_rows` consecutive rows, numbered across the matrices, and the
//! numbers split into one contiguous range per thread. A thread claims the
//! tiles of its own range in order, so it streams one contiguous stretch of
//! weights (which the prefetcher can run ahead in), then helps the others by
//! claiming from the fronts of their ranges, so a thread slowed by a noisy
//! neighbour does less rather than holding up the product. Within a tile
//! the loop is
//!
//! ```text
//! for each chunk of up to 8 positions:      (activations of the chunk stay in L1/L2)
//!     for each row of the tile:             (the tile's weights stay in L2)
//!         one kernel call: the row against the chunk's positions
//! ```
//!
//! so a weight block is read and unpacked once per chunk of positions, not
//! once per position, and a decode step (one position) streams each weight
//! row exactly once.
//!
//! Prefill on AVX-512 VNNI (K-quants, from [`kernels::TILE_MIN_POSITIONS`]
//! positions): tiles are whole sixteens of rows, and each sixteen goes to a
//! tile kernel, which puts the rows in the lanes of its vectors:
//!
//! ```text
//! for each chunk of up to 64 positions:
//!     for each super-block of the sixteen rows:  (unpacked once: 4 KiB + scales, in L1)
//!         for each position of the chunk:        (its Q8_K block broadcast 4 bytes at a time)
//!             16 rows x 256 weights of vpdpbusd, no horizontal sums
//! ```
//!
//! Rows left over (fewer than sixteen at the end of a matrix) take the row
//! kernel. The L2 blocking is the tile itself: at most 64 rows of the
//! widest input (FFN 5632: 64 x 4.6 KB of Q6_K) plus a chunk's activations.
//!
//! Every output element is produced by one kernel call whose arithmetic does
//! not depend on the tile, the chunk, the thread or the kind of kernel (see
//! [`super::kernels`]): results are bit-identical for any thread count and
//! any number of positions per call.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::kernels::{self, ActFormat, Acts, MAX_POSITIONS, TILE_POSITIONS, TILE_ROWS};
use super::CpuBackend;
use crate::backend::Weight;
use crate::quant::q8_32::BlockQ8_32;
use crate::quant::q8_k::BlockQ8K;

/// Below this many multiply-adds a product runs on the calling thread only:
/// waking the pool would cost more than it saves.
const PARALLEL_MIN_WORK: usize = 1 << 16;

/// How far ahead of the row being computed the weight stream is prefetched.
/// The hardware prefetcher alone kept a decode step well below the RAM
/// bandwidth (`examples/matmul_bench.rs`, 2 threads: 70 ms/token without
/// software prefetch, 41 ms prefetching 8 KiB ahead into L1, 33-35 ms into
/// L2, where 8, 16 and 32 KiB ahead did alike).
const PREFETCH_BYTES: usize = 16 * 1024;

/// Quantized activations of the current call. One buffer serves both 8-bit
/// formats (one at a time), so it costs at most 1.25 bytes per input value:
/// Q8_K blocks take 320 bytes per 256 values, Q8_32 blocks 36 per 32.
#[derive(Default)]
pub(crate) struct ActScratch {
    buf: Vec<BlockQ8K>,
}

impl ActScratch {
    /// Grow (never shrink) to hold `values` activations in either format.
    pub fn reserve(&mut self, values: usize) {
        let q8k = values.div_ceil(256);
        let q8_32 = (values.div_ceil(32) * std::mem::size_of::<BlockQ8_32>())
            .div_ceil(std::mem::size_of::<BlockQ8K>());
        let need = q8k.max(q8_32);
        if self.buf.len() < need {
            self.buf.resize(need, BlockQ8K::ZERO);
        }
    }

    pub fn bytes(&self) -> usize {
        self.buf.len() * std::mem::size_of::<BlockQ8K>()
    }

    fn q8k(&mut self, blocks: usize) -> &mut [BlockQ8K] {
        self.reserve(blocks * 256);
        &mut self.buf[..blocks]
    }

    fn q8_32(&mut self, blocks: usize) -> &mut [BlockQ8_32] {
        self.reserve(blocks * 32);
        let bytes = self.buf.len() * std::mem::size_of::<BlockQ8K>();
        assert!(blocks * std::mem::size_of::<BlockQ8_32>() <= bytes);
        // SAFETY: the buffer is initialized plain data (BlockQ8K has no
        // implicit padding), at least as aligned as BlockQ8_32 (32 >= 4),
        // and long enough (checked above); every bit pattern is a valid
        // BlockQ8_32 (i8s and an f32). The borrow of `self` covers it.
        unsafe {
            std::slice::from_raw_parts_mut(self.buf.as_mut_ptr().cast::<BlockQ8_32>(), blocks)
        }
    }
}

/// The output of one matrix, written by threads at disjoint elements.
#[derive(Clone, Copy)]
struct OutPtr {
    ptr: *mut f32,
    len: usize,
}
// SAFETY: each element is written by exactly one tile (tiles partition the
// rows), and the dispatch joins all writers before the slice is used again.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// One matrix of a call.
#[derive(Clone, Copy)]
struct Job<'w> {
    w: Weight<'w>,
    out: OutPtr,
    /// First global tile index of this matrix.
    first_tile: usize,
}

impl CpuBackend {
    /// `out[p][r] = dot(w[r], x[p])` for `n` positions.
    /// `x` is `n x w.cols`, `out` is `n x w.rows`, both row-major.
    pub fn matmul(&self, w: Weight<'_>, x: &[f32], out: &mut [f32], n: usize) {
        self.matmuls(x, n, [w], [out]);
    }

    /// Several products of the same input, e.g. Q, K and V, or FFN gate and
    /// up: `outs[k] = x * ws[k]^T` as in [`CpuBackend::matmul`]. The input
    /// is quantized once and all matrices share one dispatch, which also
    /// balances the small ones (K, V) across threads. Results are identical
    /// to separate `matmul` calls.
    pub fn matmuls<const K: usize>(
        &self,
        x: &[f32],
        n: usize,
        ws: [Weight<'_>; K],
        outs: [&mut [f32]; K],
    ) {
        let Some(cols) = ws.first().map(|w| w.cols) else {
            return;
        };
        assert_eq!(
            x.len(),
            n * cols,
            "matmul: input length for {} positions of {cols}",
            n
        );
        for (w, out) in ws.iter().zip(&outs) {
            assert_eq!(w.cols, cols, "matmuls: matrices must share the input width");
            assert_eq!(
                out.len(),
                n * w.rows,
                "matmul {}x{}: output length",
                w.rows,
                w.cols
            );
            assert_eq!(
                w.ggml_type.row_bytes(w.cols).map(|b| b * w.rows),
                Some(w.data.len()),
                "matmul {}x{} {}: weight bytes",
                w.rows,
                w.cols,
                w.ggml_type
            );
        }
        if n == 0 {
            return;
        }
        let outs = outs.map(|o| OutPtr {
            ptr: o.as_mut_ptr(),
            len: o.len(),
        });
        // One pass per activation format, in a fixed order; most calls need
        // only one.
        for format in [ActFormat::Q8K, ActFormat::Q8_32, ActFormat::F32] {
            let mut jobs = [None; K];
            for (k, w) in ws.iter().enumerate() {
                if ActFormat::of(w.ggml_type) == format {
                    jobs[k] = Some((*w, outs[k]));
                }
            }
            if jobs.iter().any(Option::is_some) {
                self.run_format(format, x, n, cols, &jobs);
            }
        }
    }

    fn run_format(
        &self,
        format: ActFormat,
        x: &[f32],
        n: usize,
        cols: usize,
        jobs: &[Option<(Weight<'_>, OutPtr)>],
    ) {
        assert!(
            cols.is_multiple_of(format.block_len()),
            "matmul: input width {cols} is not a whole number of {}-value blocks",
            format.block_len()
        );
        let per_pos = cols / format.block_len();
        let mut scratch = self.acts.borrow_mut();
        match format {
            ActFormat::Q8K => kernels::quantize_q8k(self.isa, x, scratch.q8k(n * per_pos)),
            ActFormat::Q8_32 => kernels::quantize_q8_32(self.isa, x, scratch.q8_32(n * per_pos)),
            ActFormat::F32 => {}
        }
        let acts = match format {
            ActFormat::Q8K => Acts::Q8K {
                blocks: &scratch.q8k(n * per_pos)[..],
                per_pos,
            },
            ActFormat::Q8_32 => Acts::Q8_32 {
                blocks: &scratch.q8_32(n * per_pos)[..],
                per_pos,
            },
            ActFormat::F32 => Acts::F32 { x, cols },
        };

        let total_rows: usize = jobs.iter().flatten().map(|(w, _)| w.rows).sum();
        // Tile kernels take sixteen rows at a time: tiles of whole sixteens
        // keep every row of a tile on them (the last rows of a matrix aside).
        let tiled = jobs
            .iter()
            .flatten()
            .any(|(w, _)| kernels::select_tile(self.isa, w.ggml_type, n).is_some());
        let tile_rows = if tiled {
            tile_rows(total_rows, self.threads).next_multiple_of(TILE_ROWS)
        } else {
            tile_rows(total_rows, self.threads)
        };
        let mut tiles = 0;
        let mut list = [None::<Job<'_>>; 8];
        assert!(
            jobs.len() <= list.len(),
            "matmuls: at most {} matrices per call",
            list.len()
        );
        for (slot, (w, out)) in list.iter_mut().zip(jobs.iter().flatten()) {
            *slot = Some(Job {
                w: *w,
                out: *out,
                first_tile: tiles,
            });
            tiles += w.rows.div_ceil(tile_rows);
        }
        let list = &list[..jobs.iter().flatten().count()];
        let isa = self.isa;
        let claims = &self.tile_claims;
        claims.reset(tiles);
        let work = |worker: usize| {
            while let Some(t) = claims.claim(worker) {
                let job = list
                    .iter()
                    .flatten()
                    .rev()
                    .find(|j| j.first_tile <= t)
                    .expect("tile 0 starts the first job");
                let r0 = (t - job.first_tile) * tile_rows;
                let rows = r0..(r0 + tile_rows).min(job.w.rows);
                run_tile(isa, &job.w, rows, acts, n, job.out);
            }
        };
        if total_rows * cols * n < PARALLEL_MIN_WORK || self.threads == 1 {
            work(0);
        } else {
            self.pool.run(&work);
        }
    }
}

/// A claim counter on its own cache line (two, for the adjacent-line
/// prefetcher), so that threads claiming from their own ranges do not
/// contend.
#[repr(align(128))]
struct Counter(AtomicUsize);

/// Per-thread tile ranges of the current call: thread `i` owns tiles
/// `i * tiles / threads..(i + 1) * tiles / threads`, and `next[i]` is the
/// first of them not yet claimed (by `i` or by a helper).
pub(crate) struct TileClaims {
    next: Box<[Counter]>,
    tiles: AtomicUsize,
}

impl TileClaims {
    pub fn new(threads: usize) -> TileClaims {
        TileClaims {
            next: (0..threads).map(|_| Counter(AtomicUsize::new(0))).collect(),
            tiles: AtomicUsize::new(0),
        }
    }

    fn range_end(&self, i: usize, tiles: usize) -> usize {
        (i + 1) * tiles / self.next.len()
    }

    /// Start a call of `tiles` tiles. The dispatch that follows publishes
    /// these stores to the workers.
    fn reset(&self, tiles: usize) {
        let threads = self.next.len();
        self.tiles.store(tiles, Ordering::Relaxed);
        for (i, c) in self.next.iter().enumerate() {
            c.0.store(i * tiles / threads, Ordering::Relaxed);
        }
    }

    /// The next tile for `worker`: from its own range while any is left,
    /// then from the others' in turn. `None` when every tile is claimed.
    fn claim(&self, worker: usize) -> Option<usize> {
        let threads = self.next.len();
        let tiles = self.tiles.load(Ordering::Relaxed);
        for k in 0..threads {
            let i = (worker + k) % threads;
            let end = self.range_end(i, tiles);
            // Skip exhausted ranges without bumping their counters further.
            if self.next[i].0.load(Ordering::Relaxed) >= end {
                continue;
            }
            let t = self.next[i].0.fetch_add(1, Ordering::Relaxed);
            if t < end {
                return Some(t);
            }
        }
        None
    }
}

/// Rows per tile: about eight tiles per thread so that uneven progress
/// evens out, at least 4 rows so a tile amortizes the counter, and at most
/// 64 so that a tile of the widest rows stays within L2 while all position
/// chunks pass over it.
fn tile_rows(total_rows: usize, threads: usize) -> usize {
    total_rows.div_ceil(threads * 8).clamp(4, 64)
}

/// Rows `rows` of `w` against all `n` positions, written into `out`: by
/// sixteens with the tile kernel where there is one, the other rows with
/// the row kernel (the two give the same bits).
fn run_tile(
    isa: super::Isa,
    w: &Weight<'_>,
    mut rows: Range<usize>,
    acts: Acts<'_>,
    n: usize,
    out: OutPtr,
) {
    let row_bytes = w.row_bytes();
    if let Some(kernel) = kernels::select_tile(isa, w.ggml_type, n) {
        let mut res = [[0.0f32; TILE_ROWS]; TILE_POSITIONS];
        while rows.len() >= TILE_ROWS {
            let r0 = rows.start;
            let data = &w.data[r0 * row_bytes..(r0 + TILE_ROWS) * row_bytes];
            for p0 in (0..n).step_by(TILE_POSITIONS) {
                let np = (n - p0).min(TILE_POSITIONS);
                // SAFETY: as for the row kernel below, with `p0 + np <= n`.
                unsafe { kernel(data, acts, p0, np, &mut res) };
                for (p, vals) in res[..np].iter().enumerate() {
                    let at = (p0 + p) * w.rows + r0;
                    assert!(at + TILE_ROWS <= out.len);
                    // SAFETY: in bounds (checked); these rows belong to
                    // this tile only, so no other thread writes them.
                    unsafe {
                        std::ptr::copy_nonoverlapping(vals.as_ptr(), out.ptr.add(at), TILE_ROWS)
                    };
                }
            }
            rows.start += TILE_ROWS;
        }
    }
    let mut res = [0.0f32; MAX_POSITIONS];
    for p0 in (0..n).step_by(MAX_POSITIONS) {
        let np = (n - p0).min(MAX_POSITIONS);
        let kernel = kernels::select(isa, w.ggml_type, np);
        for r in rows.clone() {
            let row = &w.data[r * row_bytes..(r + 1) * row_bytes];
            // The first chunk streams the tile's rows from memory: ask now
            // for the bytes a row's worth further on, so that their loads
            // overlap this row's arithmetic. Later chunks find the tile in
            // cache.
            if p0 == 0 {
                // Past the tile too: this thread's next tile is usually the
                // adjacent one.
                let start = r * row_bytes + PREFETCH_BYTES;
                let end = (start + row_bytes).min(w.data.len());
                if start < end {
                    kernels::prefetch(&w.data[start..end]);
                }
            }
            // SAFETY: `isa` was detected, `acts` is in the format of this
            // weight type (chosen by `ActFormat::of` in the caller), and
            // `p0 + np <= n`, the positions in `acts`.
            unsafe { kernel(row, acts, p0, &mut res) };
            for (i, &v) in res[..np].iter().enumerate() {
                let at = (p0 + i) * w.rows + r;
                assert!(at < out.len);
                // SAFETY: in bounds (checked); row `r` belongs to this tile
                // only, so no other thread writes this element.
                unsafe { *out.ptr.add(at) = v };
            }
        }
    }
}
