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
