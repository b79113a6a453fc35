//! Block formats of GGUF tensors.
//!
//! One file per format. Each defines a `#[repr(C)]` block made only of byte
//! arrays (alignment 1, so any `&[u8]` of the right length can be viewed as
//! blocks), a compile-time size assertion, `dequantize` and `dot` (a scalar
//! dot product of a row of blocks against f32 activations).
//!
//! Activations stay f32 in this scalar reference: it is the oracle every fast
//! path (SIMD, CUDA) is held to, so it avoids the extra rounding that
//! llama.cpp's 8-bit activation quantization adds.

pub mod bf16;
mod blocks;
pub mod f16;
pub mod f32;
pub mod iq4_nl;
pub mod q3_k;
pub mod q4_0;
pub mod q4_1;
pub mod q4_k;
pub mod q5_0;
pub mod q5_1;
pub mod q5_k;
pub mod q6_k;
pub mod q8_0;
pub mod q8_32;
pub mod q8_k;

use std::fmt;

/// Viewing row bytes as blocks, for the backends' kernels.
pub(crate) use blocks::{as_blocks, f16_to_f32, ByteBlock};

/// Number of weights in one K-quant super-block.
pub const QK_K: usize = 256;

/// A ggml tensor type as stored in GGUF (the numeric ids are ggml's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    IQ4NL,
    BF16,
    /// A type id that ggml defines but this runtime cannot compute with
    /// (IQ formats, integer tensors...). Kept so the error can name it.
    Other(u32),
}

impl GgmlType {
    /// Map a GGUF type id. `None` means the id is not a ggml type at all.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            9 => GgmlType::Q8_1,
            10 => GgmlType::Q2K,
            11 => GgmlType::Q3K,
            12 => GgmlType::Q4K,
            13 => GgmlType::Q5K,
            14 => GgmlType::Q6K,
            15 => GgmlType::Q8K,
            20 => GgmlType::IQ4NL,
            30 => GgmlType::BF16,
            // Other IQ*, I8..I64, F64, TQ*, MXFP4: real ggml types we do not compute with.
            16..=19 | 21..=29 | 31..=39 => GgmlType::Other(id),
            _ => return None,
        })
    }

    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q8_1 => 9,
            GgmlType::Q2K => 10,
            GgmlType::Q3K => 11,
            GgmlType::Q4K => 12,
            GgmlType::Q5K => 13,
            GgmlType::Q6K => 14,
            GgmlType::Q8K => 15,
            GgmlType::IQ4NL => 20,
            GgmlType::BF16 => 30,
            GgmlType::Other(id) => id,
        }
    }

    /// (weights per block, bytes per block), or `None` for types we cannot size.
    pub fn block_layout(self) -> Option<(usize, usize)> {
        Some(match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::BF16 => (1, 2),
            GgmlType::Q4_0 => (32, q4_0::BLOCK_BYTES),
            GgmlType::Q4_1 => (32, q4_1::BLOCK_BYTES),
            GgmlType::Q5_0 => (32, q5_0::BLOCK_BYTES),
            GgmlType::Q5_1 => (32, q5_1::BLOCK_BYTES),
            GgmlType::Q8_0 => (32, q8_0::BLOCK_BYTES),
            GgmlType::Q8_1 => (32, 36),
            GgmlType::Q2K => (QK_K, 84),
            GgmlType::Q3K => (QK_K, q3_k::BLOCK_BYTES),
            GgmlType::Q4K => (QK_K, q4_k::BLOCK_BYTES),
            GgmlType::Q5K => (QK_K, q5_k::BLOCK_BYTES),
            GgmlType::Q6K => (QK_K, q6_k::BLOCK_BYTES),
            GgmlType::Q8K => (QK_K, 292),
            GgmlType::IQ4NL => (32, iq4_nl::BLOCK_BYTES),
            GgmlType::Other(_) => return None,
        })
    }

    /// The types this runtime can dequantize and compute with.
    pub const SUPPORTED: [GgmlType; 13] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::IQ4NL,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
    ];

    /// Whether this runtime can dequantize and compute with the type.
    pub fn is_supported(self) -> bool {
        GgmlType::SUPPORTED.contains(&self)
    }

    /// [`GgmlType::SUPPORTED`] as a list for error messages ("F32, F16, ...").
    pub fn supported_list() -> String {
        let names: Vec<String> = GgmlType::SUPPORTED.iter().map(|t| t.to_string()).collect();
        names.join(", ")
    }

    /// Bytes taken by a row of `n` weights, if `n` is a whole number of blocks.
    pub fn row_bytes(self, n: usize) -> Option<usize> {
        let (per_block, bytes) = self.block_layout()?;
        if !n.is_multiple_of(per_block) {
            return None;
        }
        Some(n / per_block * bytes)
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q8_1 => "Q8_1",
            GgmlType::Q2K => "Q2_K",
            GgmlType::Q3K => "Q3_K",
            GgmlType::Q4K => "Q4_K",
            GgmlType::Q5K => "Q5_K",
            GgmlType::Q6K => "Q6_K",
            GgmlType::Q8K => "Q8_K",
            GgmlType::IQ4NL => "IQ4_NL",
            GgmlType::BF16 => "BF16",
            GgmlType::Other(id) => {
                let known = match id {
                    16 => "IQ2_XXS",
                    17 => "IQ2_XS",
                    18 => "IQ3_XXS",
                    19 => "IQ1_S",
                    21 => "IQ3_S",
                    22 => "IQ2_S",
                    23 => "IQ4_XS",
                    24 => "I8",
                    25 => "I16",
                    26 => "I32",
                    27 => "I64",
                    28 => "F64",
                    29 => "IQ1_M",
                    34 => "TQ1_0",
                    35 => "TQ2_0",
                    39 => "MXFP4",
                    _ => "retired",
                };
                return write!(f, "ggml type {id} ({known})");
            }
        };
        f.write_str(name)
    }
}

/// Dequantize one row (`row.len()` bytes holding `out.len()` weights).
///
/// Panics if the type is unsupported or the lengths disagree: callers check
/// types and shapes once at model load, so reaching here with bad input is a
/// bug, not bad user data.
pub fn dequantize_row(ty: GgmlType, row: &[u8], out: &mut [f32]) {
    debug_assert_eq!(ty.row_bytes(out.len()), Some(row.len()));
    match ty {
        GgmlType::F32 => f32::dequantize(row, out),
        GgmlType::F16 => f16::dequantize(row, out),
        GgmlType::BF16 => bf16::dequantize(row, out),
        GgmlType::Q4_0 => q4_0::dequantize(row, out),
        GgmlType::Q4_1 => q4_1::dequantize(row, out),
        GgmlType::Q5_0 => q5_0::dequantize(row, out),
        GgmlType::Q5_1 => q5_1::dequantize(row, out),
        GgmlType::Q8_0 => q8_0::dequantize(row, out),
        GgmlType::IQ4NL => iq4_nl::dequantize(row, out),
        GgmlType::Q3K => q3_k::dequantize(row, out),
        GgmlType::Q4K => q4_k::dequantize(row, out),
        GgmlType::Q5K => q5_k::dequantize(row, out),
        GgmlType::Q6K => q6_k::dequantize(row, out),
        other => panic!("dequantize_row: unsupported type {other}"),
    }
}

/// Dot product of one row of weights (`row` bytes) with f32 activations `x`.
pub fn dot_row(ty: GgmlType, row: &[u8], x: &[f32]) -> f32 {
    debug_assert_eq!(ty.row_bytes(x.len()), Some(row.len()));
    match ty {
        GgmlType::F32 => f32::dot(row, x),
        GgmlType::F16 => f16::dot(row, x),
        GgmlType::BF16 => bf16::dot(row, x),
        GgmlType::Q4_0 => q4_0::dot(row, x),
        GgmlType::Q4_1 => q4_1::dot(row, x),
        GgmlType::Q5_0 => q5_0::dot(row, x),
        GgmlType::Q5_1 => q5_1::dot(row, x),
        GgmlType::Q8_0 => q8_0::dot(row, x),
        GgmlType::IQ4NL => iq4_nl::dot(row, x),
        GgmlType::Q3K => q3_k::dot(row, x),
        GgmlType::Q4K => q4_k::dot(row, x),
        GgmlType::Q5K => q5_k::dot(row, x),
        GgmlType::Q6K => q6_k::dot(row, x),
        other => panic!("dot_row: unsupported type {other}"),
    }
}
