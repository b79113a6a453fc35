//! Launch geometry of the kernels in `kernels/*.cu`, and their names: small
//! pure functions, kept apart from the launches so they can be unit-tested
//! without a GPU. Each function restates the thread layout of the kernel it
//! serves; the kernel's comment is the source of truth.
//!
//! This file depends on nothing but `std` (no cudarc, no crate paths): it is
//! also compiled into `tests/gpu.rs` by `#[path]`, so its tests run in a
//! plain `cargo test` without the `cuda` feature.

/// Grid and block dimensions plus dynamic shared memory, as the driver's
/// launch call takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub shared_bytes: u32,
}

impl Dims {
    fn new(grid: (u32, u32, u32), block: (u32, u32, u32)) -> Dims {
        Dims {
            grid,
            block,
            shared_bytes: 0,
        }
    }

    /// Threads in one block.
    pub fn block_threads(&self) -> u32 {
        self.block.0 * self.block.1 * self.block.2
    }

    /// Blocks in the grid.
    pub fn blocks(&self) -> u64 {
        u64::from(self.grid.0) * u64::from(self.grid.1) * u64::from(self.grid.2)
    }
}

/// `n.div_ceil(d)` as a grid dimension. Panics if it does not fit in u32
/// (no tensor of a llama model comes near).
fn blocks_for(n: usize, d: usize) -> u32 {
    u32::try_from(n.div_ceil(d)).expect("grid dimension exceeds u32")
}

fn dim(n: usize) -> u32 {
    u32::try_from(n).expect("grid dimension exceeds u32")
}

/// Largest grid y (and z) dimension the hardware takes.
pub const MAX_GRID_Y: usize = 65535;

/// A grid y dimension; panics past the hardware limit (callers keep
/// batches of positions far below it).
fn dim_y(n: usize) -> u32 {
    assert!(n <= MAX_GRID_Y, "grid y dimension {n} exceeds {MAX_GRID_Y}");
    dim(n)
}

// The block sizes the kernels are written for (MATVEC_MAX_COLS,
// MATVEC_ROWS_PER_BLOCK, MATMUL_TILE_ROWS/POS/K, MATMUL_THREADS,
// ELEMENTWISE_THREADS, ROW_THREADS, EMBED_THREADS,
// EMBED_WEIGHTS_PER_THREAD, ATTENTION_WARPS, ATTENTION_MAX_PER_LANE): one
// source, kernels/geometry.h, which build.rs turns into these constants.
include!(concat!(env!("OUT_DIR"), "/geometry.rs"));

/// The widest attention head the attention kernel takes.
pub const ATTENTION_MAX_HEAD_DIM: usize = 32 * ATTENTION_MAX_PER_LANE;

/// How a matrix product over `n` activation rows is launched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatmulPlan {
    /// One `matvec_<fmt>_<n>` launch: every weight read once for all rows.
    Matvec(usize),
    /// One tiled `matmul_<fmt>` launch.
    Tiled,
}

/// Decode steps (up to 8 rows, one per sequence) go through the mat-vec
/// kernel, which streams each weight once; longer prefill chunks go
/// through the tiled kernel.
pub fn matmul_plan(n: usize) -> MatmulPlan {
    assert!(n > 0, "matmul of zero rows");
    if n <= MATVEC_MAX_COLS {
        MatmulPlan::Matvec(n)
    } else {
        MatmulPlan::Tiled
    }
}

/// `matvec_<fmt>_<c>`: block (32, 4), one warp per weight row.
pub fn matvec(rows: usize) -> Dims {
    Dims::new(
        (blocks_for(rows, MATVEC_ROWS_PER_BLOCK), 1, 1),
        (32, dim(MATVEC_ROWS_PER_BLOCK), 1),
    )
}

/// `matmul_<fmt>`: 256 threads per 64 x 64 tile of (rows, positions).
pub fn matmul(rows: usize, n: usize) -> Dims {
    Dims::new(
        (
            blocks_for(rows, MATMUL_TILE_ROWS),
            dim_y(n.div_ceil(MATMUL_TILE_POS)),
            1,
        ),
        (dim(MATMUL_THREADS), 1, 1),
    )
}

/// One thread per element, 256 a block (swiglu, add_in_place, rope pairs,
/// kv_store elements).
pub fn elementwise(n: usize) -> Dims {
    Dims::new(
        (blocks_for(n.max(1), ELEMENTWISE_THREADS), 1, 1),
        (dim(ELEMENTWISE_THREADS), 1, 1),
    )
}

/// `rope`: one thread per rotated pair of every head of every row.
pub fn rope(n_rows: usize, n_heads: usize, half_rot: usize) -> Dims {
    elementwise(n_rows * n_heads * half_rot)
}

/// `rmsnorm`, `rmsnorm_gather`, `argmax_rows`: one 256-thread block per row.
pub fn per_row(rows: usize) -> Dims {
    Dims::new((dim(rows), 1, 1), (dim(ROW_THREADS), 1, 1))
}

/// `embed_<fmt>`: grid (ceil(cols / 1024), n), 128 threads of 8 weights.
pub fn embed(n: usize, cols: usize) -> Dims {
    Dims::new(
        (
            blocks_for(cols, EMBED_WEIGHTS_PER_THREAD * EMBED_THREADS),
            dim_y(n),
            1,
        ),
        (dim(EMBED_THREADS), 1, 1),
    )
}

/// `attention`: one block of 4 warps per (head, row).
pub fn attention(n_heads: usize, n_rows: usize) -> Dims {
    Dims::new(
        (dim(n_heads), dim_y(n_rows), 1),
        (dim(32 * ATTENTION_WARPS), 1, 1),
    )
}

/// The weight formats the kernels are instantiated for, by the suffix of
/// their kernel names (`FLEA_FOR_EACH_FORMAT` in kernels/dequant.cuh).
pub const FORMAT_SUFFIXES: [&str; 13] = [
    "f32", "f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "iq4_nl", "q3_k", "q4_k", "q5_k",
    "q6_k",
];

/// Kernel-name suffix of a ggml type name as GGUF spells it ("Q4_K" ->
/// "q4_k"), or `None` for a type without kernels.
pub fn format_suffix(ggml_name: &str) -> Option<&'static str> {
    let lower = ggml_name.to_ascii_lowercase();
    FORMAT_SUFFIXES.iter().copied().find(|s| *s == lower)
}

/// `matvec_<fmt>_<cols>`.
pub fn matvec_name(suffix: &str, cols: usize) -> String {
    assert!(
        (1..=MATVEC_MAX_COLS).contains(&cols),
        "matvec of {cols} rows"
    );
    format!("matvec_{suffix}_{cols}")
}

/// `matmul_<fmt>`.
pub fn matmul_name(suffix: &str) -> String {
    format!("matmul_{suffix}")
}

/// `embed_<fmt>`.
pub fn embed_name(suffix: &str) -> String {
    format!("embed_{suffix}")
}

/// Whether the mat-vec and tiled kernels can take a matrix of this shape
/// in this format: block formats need whole blocks per row (checked at
/// model load), float formats take any width. The activations of block
/// formats are read as float4, so their widths must keep rows 16-byte
/// aligned: whole 32-weight blocks do.
pub fn supports_width(suffix: &str, cols: usize) -> bool {
    match suffix {
        "f32" | "f16" | "bf16" => cols > 0,
        "q4_0" | "q4_1" | "q5_0" | "q5_1" | "q8_0" | "iq4_nl" => {
            cols > 0 && cols.is_multiple_of(32)
        }
        "q3_k" | "q4_k" | "q5_k" | "q6_k" => cols > 0 && cols.is_multiple_of(256),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matvec_covers_every_row_with_one_warp() {
        for rows in [1, 3, 4, 5, 4096, 11008, 32000] {
            let d = matvec(rows);
            assert_eq!(d.block, (32, 4, 1));
            let covered = d.grid.0 as usize * MATVEC_ROWS_PER_BLOCK;
            assert!(
                covered >= rows && covered - rows < MATVEC_ROWS_PER_BLOCK,
                "{rows}"
            );
        }
    }

    #[test]
    fn matmul_tiles_cover_the_output_exactly_once() {
        for (rows, n) in [(1, 9), (64, 64), (65, 9), (4096, 512), (32000, 17)] {
            let d = matmul(rows, n);
            assert_eq!(d.block_threads() as usize, MATMUL_THREADS);
            // 16 x 16 threads, each 4 x 4 outputs: the 64 x 64 tile.
            assert_eq!(16 * 4, MATMUL_TILE_ROWS);
            assert_eq!(16 * 4, MATMUL_TILE_POS);
            let (gr, gp) = (d.grid.0 as usize, d.grid.1 as usize);
            assert!(gr * MATMUL_TILE_ROWS >= rows && (gr - 1) * MATMUL_TILE_ROWS < rows);
            assert!(gp * MATMUL_TILE_POS >= n && (gp - 1) * MATMUL_TILE_POS < n);
        }
        // Each thread loads 8 weights of one tile row per K step of 32:
        // 4 threads a row, 64 rows.
        assert_eq!(MATMUL_THREADS / 4, MATMUL_TILE_ROWS);
    }

    #[test]
    fn matmul_plan_switches_after_eight_rows() {
        assert_eq!(matmul_plan(1), MatmulPlan::Matvec(1));
        assert_eq!(matmul_plan(8), MatmulPlan::Matvec(8));
        assert_eq!(matmul_plan(9), MatmulPlan::Tiled);
        assert_eq!(matmul_plan(512), MatmulPlan::Tiled);
    }

    #[test]
    #[should_panic(expected = "zero rows")]
    fn matmul_plan_rejects_empty() {
        matmul_plan(0);
    }

    #[test]
    fn elementwise_and_rope_cover_their_elements() {
        for n in [1, 255, 256, 257, 11008 * 7] {
            let d = elementwise(n);
            let threads = d.blocks() as usize * d.block_threads() as usize;
            assert!(threads >= n && threads - n < ELEMENTWISE_THREADS);
        }
        let d = rope(3, 32, 64);
        assert!(d.blocks() as usize * 256 >= 3 * 32 * 64);
        // An empty launch still has one block (the kernels bound-check).
        assert_eq!(elementwise(0).grid.0, 1);
    }

    #[test]
    fn embed_covers_a_row_in_groups_of_eight() {
        for cols in [8, 256, 1000, 1024, 1025, 4096, 8192] {
            let d = embed(5, cols);
            assert_eq!(d.grid.1, 5);
            let weights = d.grid.0 as usize * EMBED_THREADS * 8;
            assert!(weights >= cols && weights - cols < EMBED_THREADS * 8);
        }
    }

    #[test]
    fn attention_is_one_block_per_head_and_row() {
        let d = attention(32, 7);
        assert_eq!(d.grid, (32, 7, 1));
        assert_eq!(d.block_threads() as usize, 32 * ATTENTION_WARPS);
        assert_eq!(ATTENTION_MAX_HEAD_DIM, 256);
    }

    #[test]
    #[should_panic(expected = "grid y dimension")]
    fn grid_y_limit_is_enforced() {
        attention(32, MAX_GRID_Y + 1);
    }

    #[test]
    fn per_row_kernels_get_a_block_each() {
        assert_eq!(per_row(9).grid, (9, 1, 1));
        assert_eq!(per_row(9).block, (ROW_THREADS as u32, 1, 1));
    }

    #[test]
    fn kernel_names() {
        assert_eq!(format_suffix("Q4_K"), Some("q4_k"));
        assert_eq!(format_suffix("Q8_0"), Some("q8_0"));
        assert_eq!(format_suffix("IQ4_NL"), Some("iq4_nl"));
        assert_eq!(format_suffix("Q5_1"), Some("q5_1"));
        assert_eq!(format_suffix("BF16"), Some("bf16"));
        assert_eq!(format_suffix("Q2_K"), None);
        assert_eq!(matvec_name("q6_k", 3), "matvec_q6_k_3");
        assert_eq!(matmul_name("f16"), "matmul_f16");
        assert_eq!(embed_name("q3_k"), "embed_q3_k");
    }

    #[test]
    #[should_panic(expected = "matvec of 9 rows")]
    fn matvec_name_rejects_wide_batches() {
        matvec_name("q4_k", 9);
    }

    #[test]
    fn widths() {
        assert!(supports_width("q4_k", 4096));
        assert!(!supports_width("q4_k", 4000));
        assert!(supports_width("q8_0", 288));
        assert!(supports_width("q4_1", 192));
        assert!(!supports_width("iq4_nl", 200));
        assert!(supports_width("f32", 7));
        assert!(!supports_width("q2_k", 256));
    }
}
