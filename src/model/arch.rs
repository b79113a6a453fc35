//! The architectures flea runs, each described once: which tensors a block
//! stores, how RoPE pairs dimensions, which norms and biases apply. The
//! model loader ([`super::Model::from_gguf`]), both backends and the
//! planner read these descriptions; nothing else branches on the
//! architecture's name.
//!
//! All of them are the llama block (RMSNorm, GQA attention with RoPE,
//! SwiGLU feed-forward); they differ only in the points below. The
//! shortest statement of each one's math is `np_ref.py` in the shared
//! tools.

use std::fmt;

/// How RoPE pairs the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs `(x[2i], x[2i+1])`: llama GGUFs store Q and K rows
    /// permuted for it (ggml's "normal" mode).
    Interleaved,
    /// Halves `(x[i], x[i + rope_dims/2])`: GPT-NeoX's layout, which Qwen
    /// and Phi-3 keep.
    Neox,
}

/// Whether a block's optional part is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// Never read (a file that has it anyway is read without it, as
    /// llama.cpp does).
    Absent,
    /// Used when the file has it.
    Optional,
    /// The file must have it.
    Required,
}

/// One architecture's description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arch {
    /// `general.architecture`, also the prefix of its hyperparameter keys.
    pub name: &'static str,
    pub rope: RopeStyle,
    /// Q, K and V stored as one matrix `attn_qkv` (rows q, then k, then v).
    pub fused_qkv: bool,
    /// Gate and up stored as one matrix `ffn_up` (rows gate, then up), no
    /// `ffn_gate`.
    pub fused_gate_up: bool,
    /// `attn_{q,k,v}.bias`, added after the projections.
    pub qkv_bias: Presence,
    /// `attn_{q,k}_norm`: RMSNorm over each head of q and k (head_dim
    /// weights) before RoPE.
    pub qk_norm: bool,
}

impl Arch {
    /// Llama 1-3 and Mistral (Llama 3.1+ add `rope_freqs.weight`, which
    /// any architecture may carry; Mistral may set a sliding window).
    pub const LLAMA: Arch = Arch {
        name: "llama",
        rope: RopeStyle::Interleaved,
        fused_qkv: false,
        fused_gate_up: false,
        qkv_bias: Presence::Optional,
        qk_norm: false,
    };
    /// Qwen 2 and 2.5: biases on Q, K, V.
    pub const QWEN2: Arch = Arch {
        name: "qwen2",
        rope: RopeStyle::Neox,
        fused_qkv: false,
        fused_gate_up: false,
        qkv_bias: Presence::Required,
        qk_norm: false,
    };
    /// Qwen 3: per-head norms on Q and K, head dim from `key_length`.
    pub const QWEN3: Arch = Arch {
        name: "qwen3",
        rope: RopeStyle::Neox,
        fused_qkv: false,
        fused_gate_up: false,
        qkv_bias: Presence::Absent,
        qk_norm: true,
    };
    /// Phi-3 (mini, medium): fused QKV and gate/up, a sliding window.
    pub const PHI3: Arch = Arch {
        name: "phi3",
        rope: RopeStyle::Neox,
        fused_qkv: true,
        fused_gate_up: true,
        qkv_bias: Presence::Absent,
        qk_norm: false,
    };

    pub const ALL: [Arch; 4] = [Arch::LLAMA, Arch::QWEN2, Arch::QWEN3, Arch::PHI3];

    pub fn by_name(name: &str) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.name == name)
    }

    /// "llama, qwen2, qwen3, phi3", for error messages.
    pub fn supported_list() -> String {
        let names: Vec<&str> = Arch::ALL.iter().map(|a| a.name).collect();
        names.join(", ")
    }

    /// The fewest tensors one block of this architecture stores; bounds
    /// the block count a file can claim by its tensor table.
    pub fn min_tensors_per_block(&self) -> usize {
        let attention = if self.fused_qkv { 2 } else { 4 }; // qkv (or q, k, v) + output
        let ffn = if self.fused_gate_up { 2 } else { 3 };
        let bias = if self.qkv_bias == Presence::Required {
            3
        } else {
            0
        };
        let qk_norm = if self.qk_norm { 2 } else { 0 };
        2 + attention + ffn + bias + qk_norm // + the two norms
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_found() {
        for a in Arch::ALL {
            assert_eq!(Arch::by_name(a.name), Some(a));
        }
        assert_eq!(Arch::by_name("gemma"), None);
        assert_eq!(Arch::supported_list(), "llama, qwen2, qwen3, phi3");
    }

    #[test]
    fn block_tensor_counts() {
        assert_eq!(Arch::LLAMA.min_tensors_per_block(), 9);
        assert_eq!(Arch::QWEN2.min_tensors_per_block(), 12);
        assert_eq!(Arch::QWEN3.min_tensors_per_block(), 11);
        assert_eq!(Arch::PHI3.min_tensors_per_block(), 6);
    }
}
