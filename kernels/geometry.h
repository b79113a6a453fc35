// Launch geometry: the one place these numbers are written. The kernels
// (kernels/*.cu) size their blocks and shared memory with them, the Rust
// launches (src/backend/cuda/geometry.rs) get them as constants that
// build.rs generates from this file, and the host emulation
// (kernels/host/kernel_check.cpp) launches with them. Plain `#define NAME
// integer` lines only: build.rs reads them.
#pragma once

// Most activation rows one mat-vec launch handles (matvec_<fmt>_1..8).
#define FLEA_MATVEC_MAX_COLS 8
// Weight rows per mat-vec block: one warp each.
#define FLEA_MATVEC_ROWS_PER_BLOCK 4
// Warps per block of the activation quantizers (quantize_q8_32,
// quantize_q8_k); each warp quantizes 256 values.
#define FLEA_QUANTIZE_WARPS 8
// Output tile of the prefill mat-mat kernel (rows x positions), the depth
// of one shared-memory step, and its threads.
#define FLEA_MATMUL_TILE_ROWS 64
#define FLEA_MATMUL_TILE_POS 64
#define FLEA_MATMUL_TILE_K 32
#define FLEA_MATMUL_THREADS 256
// Threads per block of the element-wise kernels (SwiGLU, add, RoPE,
// KV store).
#define FLEA_ELEMENTWISE_THREADS 256
// Threads per block of the row-reduction kernels (RMSNorm, argmax).
#define FLEA_ROW_THREADS 256
// Threads per block of the embedding kernel, and weights each dequantizes.
#define FLEA_EMBED_THREADS 128
#define FLEA_EMBED_WEIGHTS_PER_THREAD 8
// Warps per attention block, and head-dimension elements per lane (the
// widest head is 32 x this).
#define FLEA_ATTENTION_WARPS 4
#define FLEA_ATTENTION_MAX_PER_LANE 8
// Flash-decoding (attention_split_*): cache positions per split of a
// row's visible range, the most splits the device scratch holds per (head,
// row), and the most rows a pass may have to take the split kernel (the
// scratch is sized for them).
#define FLEA_ATTENTION_SPLIT_POSITIONS 256
#define FLEA_ATTENTION_MAX_SPLITS 64
#define FLEA_ATTENTION_SPLIT_MAX_ROWS 8
// Tiled prefill attention (attention_tiled_*): query rows per block (a
// multiple of FLEA_ATTENTION_WARPS) and cache positions per shared-memory
// step. Shared memory: 2 x TILE_POSITIONS x 32 x MAX_PER_LANE floats
// (32 KiB at 16 x 256), under the 48 KiB of static shared memory.
#define FLEA_ATTENTION_TILE_ROWS 16
#define FLEA_ATTENTION_TILE_POSITIONS 16
