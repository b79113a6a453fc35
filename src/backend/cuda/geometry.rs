//! Launch geometry of the kernels in `kernels/*.cu`, and their names: small
//! pure functions, kept apart from the launches so they can be unit-tested
//! without a GPU. Each function restates the thread layout of the kernel it
//! serves; the kernel's comment is the source of truth.
//!
//! This file depends on nothing but `std` and the constants build.rs
//! generates: it is compiled and tested with or without the `cuda` feature.
//!
//! A shape the hardware cannot launch (a grid axis past its limit) is an
//! error naming the kernel, the count and the limit, never a panic: the
//! caps the CLI and the config enforce ([`crate::limits`]) keep every
//! launch inside the limits (tested below), but a library caller may pass
//! anything.

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

/// Why a launch cannot be made: the message names the kernel, the count
/// and the hardware limit it exceeds.
pub type GeometryResult<T> = Result<T, String>;

/// Largest grid x dimension the hardware takes (2^31 - 1).
pub const MAX_GRID_X: usize = (1 << 31) - 1;

/// Largest grid y (and z) dimension the hardware takes.
pub const MAX_GRID_Y: usize = 65535;

/// `n.div_ceil(d)` as a grid x dimension, or why not.
fn blocks_for(kernel: &str, what: &str, n: usize, d: usize) -> GeometryResult<u32> {
    dim_x(kernel, what, n.div_ceil(d))
}

/// A grid x dimension: at most [`MAX_GRID_X`].
fn dim_x(kernel: &str, what: &str, n: usize) -> GeometryResult<u32> {
    if n > MAX_GRID_X {
        return Err(format!(
            "{kernel}: {n} blocks for {what} exceed the grid's x limit of {MAX_GRID_X}"
        ));
    }
    Ok(n as u32)
}

/// A grid y dimension: at most [`MAX_GRID_Y`]. Positions per pass go on
/// this axis; the CLI caps them (`--chunk`, [`crate::limits::MAX_CHUNK`])
/// at this limit.
fn dim_y(kernel: &str, what: &str, n: usize) -> GeometryResult<u32> {
    if n > MAX_GRID_Y {
        return Err(format!(
            "{kernel}: {n} {what} exceed the grid's y limit of {MAX_GRID_Y} \
             (lower the positions per pass: --chunk / [pipeline] prefill_chunk)"
        ));
    }
    Ok(n as u32)
}

/// A block dimension from the constants of kernels/geometry.h (small by
/// construction: checked by `block_sizes_fit` below).
fn block(n: usize) -> u32 {
    n as u32
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
/// through the tiled kernel. Zero rows is an error (nothing to launch).
pub fn matmul_plan(n: usize) -> GeometryResult<MatmulPlan> {
    match n {
        0 => Err("matmul of zero rows".into()),
        n if n <= MATVEC_MAX_COLS => Ok(MatmulPlan::Matvec(n)),
        _ => Ok(MatmulPlan::Tiled),
    }
}

/// `matvec_<fmt>_<c>`: block (32, 4), one warp per weight row.
pub fn matvec(rows: usize) -> GeometryResult<Dims> {
    Ok(Dims::new(
        (
            blocks_for("matvec", "weight rows", rows, MATVEC_ROWS_PER_BLOCK)?,
            1,
            1,
        ),
        (32, block(MATVEC_ROWS_PER_BLOCK), 1),
    ))
}

/// `quantize_q8_32`, `quantize_q8_k`: blocks of 8 warps, each warp 256
/// of the `n_values` activations.
pub fn quantize(n_values: usize) -> GeometryResult<Dims> {
    Ok(Dims::new(
        (
            blocks_for(
                "quantize",
                "activations",
                n_values.max(1),
                256 * QUANTIZE_WARPS,
            )?,
            1,
            1,
        ),
        (32, block(QUANTIZE_WARPS), 1),
    ))
}

/// `matmul_<fmt>`: 256 threads per 64 x 64 tile of (rows, positions).
pub fn matmul(rows: usize, n: usize) -> GeometryResult<Dims> {
    Ok(Dims::new(
        (
            blocks_for("matmul", "weight rows", rows, MATMUL_TILE_ROWS)?,
            dim_y("matmul", "position tiles", n.div_ceil(MATMUL_TILE_POS))?,
            1,
        ),
        (block(MATMUL_THREADS), 1, 1),
    ))
}

/// One thread per element, 256 a block (swiglu, add_in_place, rope pairs,
/// kv_store elements).
pub fn elementwise(n: usize) -> GeometryResult<Dims> {
    Ok(Dims::new(
        (
            blocks_for("elementwise", "elements", n.max(1), ELEMENTWISE_THREADS)?,
            1,
            1,
        ),
        (block(ELEMENTWISE_THREADS), 1, 1),
    ))
}

/// `rope`: one thread per rotated pair of every head of every row.
pub fn rope(n_rows: usize, n_heads: usize, half_rot: usize) -> GeometryResult<Dims> {
    let pairs = n_rows
        .checked_mul(n_heads)
        .and_then(|p| p.checked_mul(half_rot))
        .ok_or_else(|| {
            format!("rope: {n_rows} rows x {n_heads} heads x {half_rot} pairs overflow")
        })?;
    elementwise(pairs)
}

/// `rmsnorm`, `rmsnorm_gather`, `argmax_rows`: one 256-thread block per row.
pub fn per_row(rows: usize) -> GeometryResult<Dims> {
    Ok(Dims::new(
        (dim_x("per-row kernel", "rows", rows)?, 1, 1),
        (block(ROW_THREADS), 1, 1),
    ))
}

/// `embed_<fmt>`: grid (ceil(cols / 1024), n), 128 threads of 8 weights.
pub fn embed(n: usize, cols: usize) -> GeometryResult<Dims> {
    Ok(Dims::new(
        (
            blocks_for(
                "embed",
                "columns",
                cols,
                EMBED_WEIGHTS_PER_THREAD * EMBED_THREADS,
            )?,
            dim_y("embed", "positions", n)?,
            1,
        ),
        (block(EMBED_THREADS), 1, 1),
    ))
}

/// `attention`: one block of 4 warps per (head, row).
pub fn attention(n_heads: usize, n_rows: usize) -> GeometryResult<Dims> {
    Ok(Dims::new(
        (
            dim_x("attention", "heads", n_heads)?,
            dim_y("attention", "query rows", n_rows)?,
            1,
        ),
        (block(32 * ATTENTION_WARPS), 1, 1),
    ))
}

/// `attention_split_*`: grid (heads, rows, splits), 4 warps a block;
/// `attention_merge` then runs on [`attention`]'s grid.
pub fn attention_split(n_heads: usize, n_rows: usize, splits: usize) -> GeometryResult<Dims> {
    let mut d = attention(n_heads, n_rows)?;
    d.grid.2 = dim_y("attention_split", "splits", splits)?;
    Ok(d)
}

/// `attention_tiled_*`: grid (heads, row tiles of 16), 4 warps a block.
pub fn attention_tiled(n_heads: usize, n_rows: usize) -> GeometryResult<Dims> {
    attention(n_heads, n_rows.div_ceil(ATTENTION_TILE_ROWS))
}

/// Splits of a row's visible positions the flash-decoding scratch is sized
/// for at a context of `n_ctx` positions: one per
/// `ATTENTION_SPLIT_POSITIONS`, at most `ATTENTION_MAX_SPLITS`.
pub fn attention_split_capacity(n_ctx: usize) -> usize {
    n_ctx
        .div_ceil(ATTENTION_SPLIT_POSITIONS)
        .clamp(1, ATTENTION_MAX_SPLITS)
}

/// Which attention kernel a pass takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionPlan {
    /// `attention_*`: one block per (head, row).
    PerRow,
    /// `attention_split_*` with `splits` splits of `split_len` positions
    /// (then `attention_merge` when `splits > 1`).
    Split { splits: usize, split_len: usize },
    /// `attention_tiled_*`.
    Tiled,
}

/// The attention kernel for a pass of `n_rows` rows that form `runs`
/// maximal runs of consecutive rows of one sequence, the longest row
/// seeing `max_visible` positions, with scratch for `split_capacity`
/// splits (decode rows only: `ATTENTION_SPLIT_MAX_ROWS`).
///
/// Decode (a few rows) splits each row's positions so that a long context
/// fills the device; a prefill chunk (runs of many rows) takes the tiled
/// kernel, which reads the cache once per tile of rows; a wide batched
/// decode (mostly runs of one row, past the scratch's rows) has nothing to
/// share and takes one block per row, as does an odd head_dim (the split
/// and tiled kernels read element pairs).
pub fn attention_plan(
    n_rows: usize,
    runs: usize,
    head_dim: usize,
    max_visible: usize,
    split_capacity: usize,
) -> AttentionPlan {
    if !head_dim.is_multiple_of(2) {
        AttentionPlan::PerRow
    } else if n_rows <= ATTENTION_SPLIT_MAX_ROWS {
        let splits = max_visible
            .div_ceil(ATTENTION_SPLIT_POSITIONS)
            .clamp(1, split_capacity.max(1));
        AttentionPlan::Split {
            splits,
            split_len: max_visible.div_ceil(splits).max(1),
        }
    } else if runs.saturating_mul(2) > n_rows {
        AttentionPlan::PerRow
    } else {
        AttentionPlan::Tiled
    }
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

/// `matvec_<fmt>_<cols>`, for `cols` in `1..=MATVEC_MAX_COLS` (the kernels
/// that exist); `None` otherwise.
pub fn matvec_name(suffix: &str, cols: usize) -> Option<String> {
    (1..=MATVEC_MAX_COLS)
        .contains(&cols)
        .then(|| format!("matvec_{suffix}_{cols}"))
}

/// The 8-bit activations a weight format's integer mat-vec
/// (`matvec_q8_<fmt>_<c>`, kernels/matvec_q8.cu) takes: the partner the
/// CPU backend quantizes to for the same format. Float formats have none
/// (they keep `matvec_<fmt>_<c>` on f32 activations).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActQuant {
    /// Blocks of 32 (`quantize_q8_32`): the 32-weight formats.
    Q8_32,
    /// Blocks of 256 with 16-value sums (`quantize_q8_k`): the K-quants.
    Q8K,
}

impl ActQuant {
    /// The activation quantization of a format suffix, if it has an
    /// integer mat-vec.
    pub fn of(suffix: &str) -> Option<ActQuant> {
        match suffix {
            "q4_0" | "q4_1" | "q5_0" | "q5_1" | "q8_0" | "iq4_nl" => Some(ActQuant::Q8_32),
            "q3_k" | "q4_k" | "q5_k" | "q6_k" => Some(ActQuant::Q8K),
            _ => None,
        }
    }

    /// Activations per block (one scale each).
    pub fn block(self) -> usize {
        match self {
            ActQuant::Q8_32 => 32,
            ActQuant::Q8K => 256,
        }
    }

    /// The quantizer kernel's name.
    pub fn kernel_name(self) -> &'static str {
        match self {
            ActQuant::Q8_32 => "quantize_q8_32",
            ActQuant::Q8K => "quantize_q8_k",
        }
    }
}

/// `matvec_q8_<fmt>_<cols>` for a format with an integer mat-vec and
/// `cols` in `1..=MATVEC_MAX_COLS`; `None` otherwise.
pub fn matvec_q8_name(suffix: &str, cols: usize) -> Option<String> {
    ActQuant::of(suffix)?;
    matvec_name(&format!("q8_{suffix}"), cols)
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
            let d = matvec(rows).unwrap();
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
            let d = matmul(rows, n).unwrap();
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
        assert_eq!(matmul_plan(1), Ok(MatmulPlan::Matvec(1)));
        assert_eq!(matmul_plan(8), Ok(MatmulPlan::Matvec(8)));
        assert_eq!(matmul_plan(9), Ok(MatmulPlan::Tiled));
        assert_eq!(matmul_plan(512), Ok(MatmulPlan::Tiled));
    }

    #[test]
    fn matmul_plan_rejects_empty() {
        assert!(matmul_plan(0).unwrap_err().contains("zero rows"));
    }

    #[test]
    fn elementwise_and_rope_cover_their_elements() {
        for n in [1, 255, 256, 257, 11008 * 7] {
            let d = elementwise(n).unwrap();
            let threads = d.blocks() as usize * d.block_threads() as usize;
            assert!(threads >= n && threads - n < ELEMENTWISE_THREADS);
        }
        let d = rope(3, 32, 64).unwrap();
        assert!(d.blocks() as usize * 256 >= 3 * 32 * 64);
        // An empty launch still has one block (the kernels bound-check).
        assert_eq!(elementwise(0).unwrap().grid.0, 1);
    }

    #[test]
    fn embed_covers_a_row_in_groups_of_eight() {
        for cols in [8, 256, 1000, 1024, 1025, 4096, 8192] {
            let d = embed(5, cols).unwrap();
            assert_eq!(d.grid.1, 5);
            let weights = d.grid.0 as usize * EMBED_THREADS * 8;
            assert!(weights >= cols && weights - cols < EMBED_THREADS * 8);
        }
    }

    #[test]
    fn attention_is_one_block_per_head_and_row() {
        let d = attention(32, 7).unwrap();
        assert_eq!(d.grid, (32, 7, 1));
        assert_eq!(d.block_threads() as usize, 32 * ATTENTION_WARPS);
        assert_eq!(ATTENTION_MAX_HEAD_DIM, 256);
    }

    #[test]
    fn attention_split_and_tiled_grids() {
        assert_eq!(attention_split(32, 3, 16).unwrap().grid, (32, 3, 16));
        assert_eq!(attention_tiled(32, 16).unwrap().grid, (32, 1, 1));
        assert_eq!(attention_tiled(32, 17).unwrap().grid, (32, 2, 1));
        assert_eq!(
            attention_tiled(8, 1).unwrap().block_threads() as usize,
            32 * ATTENTION_WARPS
        );
        // Shared memory of the tiled kernel: keys and values of one step,
        // as f32, under the 48 KiB of static shared memory.
        const { assert!(2 * ATTENTION_TILE_POSITIONS * ATTENTION_MAX_HEAD_DIM * 4 <= 48 << 10) };
        const { assert!(ATTENTION_TILE_ROWS.is_multiple_of(ATTENTION_WARPS)) };
    }

    #[test]
    fn attention_split_capacity_follows_the_context() {
        assert_eq!(attention_split_capacity(1), 1);
        assert_eq!(attention_split_capacity(256), 1);
        assert_eq!(attention_split_capacity(4096), 16);
        assert_eq!(attention_split_capacity(1 << 20), ATTENTION_MAX_SPLITS);
    }

    #[test]
    fn attention_plan_splits_decode_and_tiles_prefill() {
        let cap = attention_split_capacity(32768);
        // A 4K-context decode step on 32 heads: 16 splits, 512 blocks.
        assert_eq!(
            attention_plan(1, 1, 128, 4096, cap),
            AttentionPlan::Split {
                splits: 16,
                split_len: 256
            }
        );
        // Short contexts: one split, the output written directly.
        assert_eq!(
            attention_plan(8, 8, 128, 100, cap),
            AttentionPlan::Split {
                splits: 1,
                split_len: 100
            }
        );
        // Every visible position lands in a split, also when capped.
        for (visible, cap) in [(257, 64), (4095, 64), (100_000, 64), (5000, 3)] {
            let AttentionPlan::Split { splits, split_len } = attention_plan(1, 1, 64, visible, cap)
            else {
                panic!("decode plan")
            };
            assert!(splits <= cap && splits * split_len >= visible, "{visible}");
            assert!(
                (splits - 1) * split_len < visible,
                "{visible}: an empty split"
            );
        }
        assert_eq!(attention_plan(512, 1, 128, 512, cap), AttentionPlan::Tiled);
        assert_eq!(attention_plan(20, 3, 128, 512, cap), AttentionPlan::Tiled);
        // A wide batched decode: one row per sequence.
        assert_eq!(attention_plan(32, 32, 128, 512, cap), AttentionPlan::PerRow);
        // Odd heads: only the per-row kernel reads single elements.
        assert_eq!(attention_plan(1, 1, 81, 512, cap), AttentionPlan::PerRow);
        assert_eq!(attention_plan(512, 1, 81, 512, cap), AttentionPlan::PerRow);
    }

    /// Past the grid's y limit a launch is an error naming the kernel, the
    /// count and the limit (and the setting to lower), not a panic.
    #[test]
    fn grid_limits_are_errors_that_say_what_to_lower() {
        let e = attention(32, MAX_GRID_Y + 1).unwrap_err();
        assert!(
            e.contains("attention") && e.contains("65536") && e.contains("65535"),
            "{e}"
        );
        assert!(e.contains("--chunk"), "{e}");
        let e = embed(MAX_GRID_Y + 1, 4096).unwrap_err();
        assert!(e.contains("embed") && e.contains("65536"), "{e}");
        assert!(matmul(64, MAX_GRID_Y * MATMUL_TILE_POS + 1).is_err());
        assert!(per_row(MAX_GRID_X + 1).is_err());
        assert!(rope(usize::MAX, 2, 2).unwrap_err().contains("overflow"));
        assert!(attention(32, MAX_GRID_Y).is_ok());
    }

    /// Why the grid limits are never reached from the CLI or a config:
    /// positions per pass (`--chunk`, `[pipeline] prefill_chunk`, and the
    /// batch, which the chunk is raised to) are capped before anything is
    /// allocated, and at the cap every launch still fits.
    #[test]
    fn the_caps_keep_every_launch_inside_the_grid() {
        use crate::limits::{MAX_BATCH, MAX_CHUNK};
        let n = MAX_CHUNK.max(MAX_BATCH);
        assert!(n <= MAX_GRID_Y);
        assert!(attention(1024, n).is_ok());
        assert!(attention_split(1024, ATTENTION_SPLIT_MAX_ROWS, ATTENTION_MAX_SPLITS).is_ok());
        assert!(attention_tiled(1024, n).is_ok());
        assert!(embed(n, 1 << 20).is_ok());
        assert!(matmul(1 << 20, n).is_ok());
        assert!(matmul_plan(n).is_ok());
        assert!(per_row(n).is_ok());
        assert!(rope(n, 128, 128).is_ok());
        assert!(elementwise(n * (1 << 16)).is_ok());
    }

    /// The block sizes from kernels/geometry.h fit a block (1024 threads).
    #[test]
    fn block_sizes_fit() {
        for d in [
            matvec(1).unwrap(),
            matmul(1, 9).unwrap(),
            elementwise(1).unwrap(),
            per_row(1).unwrap(),
            embed(1, 8).unwrap(),
            attention(1, 1).unwrap(),
            attention_split(1, 1, 2).unwrap(),
            attention_tiled(1, 1).unwrap(),
        ] {
            assert!((1..=1024).contains(&d.block_threads()), "{d:?}");
        }
    }

    #[test]
    fn per_row_kernels_get_a_block_each() {
        assert_eq!(per_row(9).unwrap().grid, (9, 1, 1));
        assert_eq!(per_row(9).unwrap().block, (ROW_THREADS as u32, 1, 1));
    }

    #[test]
    fn kernel_names() {
        assert_eq!(format_suffix("Q4_K"), Some("q4_k"));
        assert_eq!(format_suffix("Q8_0"), Some("q8_0"));
        assert_eq!(format_suffix("IQ4_NL"), Some("iq4_nl"));
        assert_eq!(format_suffix("Q5_1"), Some("q5_1"));
        assert_eq!(format_suffix("BF16"), Some("bf16"));
        assert_eq!(format_suffix("Q2_K"), None);
        assert_eq!(matvec_name("q6_k", 3).as_deref(), Some("matvec_q6_k_3"));
        assert_eq!(matmul_name("f16"), "matmul_f16");
        assert_eq!(embed_name("q3_k"), "embed_q3_k");
    }

    #[test]
    fn integer_matvec_names_and_activation_blocks() {
        assert_eq!(
            matvec_q8_name("q4_k", 8).as_deref(),
            Some("matvec_q8_q4_k_8")
        );
        assert_eq!(
            matvec_q8_name("iq4_nl", 1).as_deref(),
            Some("matvec_q8_iq4_nl_1")
        );
        assert_eq!(matvec_q8_name("f16", 1), None);
        assert_eq!(matvec_q8_name("q8_0", 9), None);
        let quantized = FORMAT_SUFFIXES
            .iter()
            .filter(|s| ActQuant::of(s).is_some())
            .count();
        assert_eq!(quantized, 10);
        for s in FORMAT_SUFFIXES {
            if let Some(a) = ActQuant::of(s) {
                // A whole row of weights is whole activation blocks.
                assert!(supports_width(s, a.block()) && !supports_width(s, a.block() / 2));
            }
        }
        let d = quantize(8 * 4096).unwrap();
        assert_eq!(d.block, (32, QUANTIZE_WARPS as u32, 1));
        assert!(d.grid.0 as usize * 256 * QUANTIZE_WARPS >= 8 * 4096);
    }

    #[test]
    fn matvec_name_has_no_kernel_for_wide_batches() {
        assert_eq!(matvec_name("q4_k", 9), None);
        assert_eq!(matvec_name("q4_k", 0), None);
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
