//! Compute backends. The engine hands a backend a batch of positions, then
//! each layer's weight bytes in turn, then asks for logits; the backend owns
//! the activations and the KV cache and knows nothing of files or
//! streaming. The CPU forward pass is [`cpu::CpuForward`].

pub mod cpu;
pub mod cuda;

use crate::error::Result;
use crate::model::{LayerTensors, TensorRef};
use crate::quant::GgmlType;

/// A weight matrix as the backend sees it: `rows` rows of `cols` weights in
/// `ggml_type` blocks, contiguous, row-major.
#[derive(Debug, Clone, Copy)]
pub struct Weight<'a> {
    pub ggml_type: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
}

impl<'a> Weight<'a> {
    pub fn row_bytes(&self) -> usize {
        self.data.len() / self.rows
    }

    pub fn row(&self, r: usize) -> &'a [u8] {
        let n = self.row_bytes();
        &self.data[r * n..(r + 1) * n]
    }
}

/// Bytes that cover some range of the model file, starting at file offset
/// `base`: a whole memory map, a resident copy, or a streaming slot.
#[derive(Debug, Clone, Copy)]
pub struct FileBytes<'b> {
    pub base: u64,
    pub bytes: &'b [u8],
    /// The bytes stay where they are for the whole run (memory map,
    /// resident copy). False for a streaming slot, which is refilled with
    /// another layer once released: a backend may keep (upload, cache)
    /// resident bytes, but must be done with streamed ones when `layer`
    /// returns.
    pub resident: bool,
}

impl<'b> FileBytes<'b> {
    /// The backend's view of a tensor inside these bytes.
    pub fn weight(&self, t: &TensorRef) -> Weight<'b> {
        let start = (t.file_range.start - self.base) as usize;
        Weight {
            ggml_type: t.ggml_type,
            rows: t.rows,
            cols: t.cols,
            data: &self.bytes[start..start + t.bytes() as usize],
        }
    }
}

/// How streamed layers reach an accelerator's kernels (`[device] buffer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Feed {
    /// Copied into a device double buffer (discrete GPUs).
    Device,
    /// Read in place from the page-locked, device-mapped host slots, no
    /// copy (unified-memory boards such as Jetson).
    Mapped,
}

/// The host memory a streaming weight source refills, fixed for the whole
/// run, which an accelerator may page-lock (and map) once: the seam through
/// which a backend reaches the slots without knowing the residency.
pub trait HostSlots {
    /// `(address, bytes)` of each slot; empty when nothing streams.
    fn slot_regions(&self) -> Vec<(usize, usize)>;
    /// Keep `guard` (e.g. an unregistration) until the source is dropped,
    /// and drop it before the slots (and the resident bytes) are freed.
    fn hold_until_slots_freed(&mut self, guard: Box<dyn Send + Sync>);
    /// `(address, bytes)` of the host memory holding the resident weights
    /// (embeddings, output head, resident layers) for the whole run, which
    /// an accelerator sharing the host's memory may map and read in place
    /// rather than copy (an integrated GPU). Empty when there is none to
    /// offer (the default).
    fn resident_regions(&self) -> Vec<(usize, usize)> {
        Vec::new()
    }
}

/// Which positions of a chunk need logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Only the last position (generation).
    Last,
    /// Every position (teacher-forced evaluation, verifying draft tokens).
    All,
    /// None: a prompt chunk that is not the prompt's last.
    None,
}

/// One sequence's share of a forward pass: `tokens` at positions
/// `start_pos..`, in KV cache slot `seq`.
#[derive(Debug, Clone, Copy)]
pub struct SeqChunk<'t> {
    pub seq: usize,
    pub tokens: &'t [u32],
    pub start_pos: usize,
    pub logits: Logits,
}

/// A sequence's share of a pass as the backend sees it: its tokens are
/// `Batch::tokens[first..first + len]`.
#[derive(Debug, Clone, Copy)]
pub struct BatchEntry {
    pub seq: usize,
    pub first: usize,
    pub len: usize,
    pub start_pos: usize,
    pub logits: Logits,
}

/// A validated forward pass: entries over one flat token buffer (owned by
/// the engine and reused, so building a batch allocates nothing).
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    pub entries: &'a [BatchEntry],
    pub tokens: &'a [u32],
}

/// A forward pass in three steps. The engine has validated the batch
/// (token ids, positions, sizes) before `begin`.
pub trait Backend {
    /// Start a pass: embed every token of the batch.
    fn begin(&mut self, batch: Batch<'_>, token_embd: Weight<'_>) -> Result<()>;
    /// Apply layer `l` (its tensors located in `bytes`) to every position.
    fn layer(&mut self, l: usize, tensors: &LayerTensors, bytes: FileBytes<'_>) -> Result<()>;
    /// Final norm and output head: logits rows, in batch order, for the
    /// positions that want them.
    fn finish(&mut self, output_norm: Weight<'_>, output: Weight<'_>) -> Result<&[f32]>;
    /// What the KV cache read from disk so far (`[memory] kv_offload`);
    /// nothing for a cache in memory.
    fn kv_reads(&self) -> crate::kv_disk::KvReads {
        Default::default()
    }
}
