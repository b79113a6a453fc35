//! The planner: from a memory budget and a model, decide what stays
//! resident and what streams through the double buffer.
//!
//! Everything that costs memory is charged here, once: the KV cache and
//! scratch (from the engine's own arithmetic), the embeddings and output
//! head (always resident), the two streaming slots, and as many layers as
//! still fit, spread evenly so the loader has compute time to hide behind.

use super::buffer::{align_down, align_up};
use crate::config::ByteSize;
use crate::error::{Error, Result};
use crate::model::{Model, TensorRef};
use std::fmt;
use std::ops::Range;

/// Number of streaming slots: one being computed, one being filled.
pub const SLOTS: usize = 2;

/// Where a layer's weights live during a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    Resident,
    Streamed,
}

/// The bytes read for one layer: its tensors' file span widened to
/// O_DIRECT alignment.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerRead {
    /// Aligned file range to read.
    pub range: Range<u64>,
    /// The tensors' own span inside it (what must actually arrive).
    pub span: Range<u64>,
}

impl LayerRead {
    /// The aligned read that covers `span`.
    pub fn covering(span: Range<u64>) -> LayerRead {
        LayerRead {
            range: align_down(span.start)..align_up(span.end),
            span,
        }
    }

    /// Bytes that must arrive: from the aligned start to the span's end
    /// (the aligned end may lie past the end of the file).
    pub fn needed(&self) -> u64 {
        self.span.end - self.range.start
    }

    pub fn len(&self) -> u64 {
        self.range.end - self.range.start
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The aligned read of one tensor (for the always-resident globals).
pub fn tensor_read(t: &TensorRef) -> LayerRead {
    LayerRead::covering(t.file_range.clone())
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub budget: u64,
    pub placement: Vec<Placement>,
    pub layer_reads: Vec<LayerRead>,
    /// Bytes of each streaming slot (0 when nothing streams).
    pub slot_bytes: u64,
    /// Embeddings, output norm and output head, aligned.
    pub global_bytes: u64,
    /// KV cache, activations and logits, as the engine allocates them.
    pub engine_bytes: u64,
    pub resident_layer_bytes: u64,
    /// Size of the KV file when the cache lives on disk (0: in RAM, inside
    /// `engine_bytes`). Set by the engine's planning, not by `make`.
    pub kv_file_bytes: u64,
}

impl Plan {
    /// Plan a run of `model` inside `budget` bytes, where the backend
    /// allocates `engine_bytes` for its KV cache, activations and scratch
    /// (each backend reports its own figure: the planner knows no backend).
    pub fn make(model: &Model, engine_bytes: u64, budget: u64) -> Result<Plan> {
        let layer_reads: Vec<LayerRead> = model
            .layers
            .iter()
            .map(|l| LayerRead::covering(l.file_span()))
            .collect();
        let global_bytes = global_reads(model).iter().map(LayerRead::len).sum();
        let n = layer_reads.len();
        let all_layers: u64 = layer_reads.iter().map(LayerRead::len).sum();
        let fixed = global_bytes + engine_bytes;

        let mut plan = Plan {
            budget,
            placement: vec![Placement::Resident; n],
            layer_reads,
            slot_bytes: 0,
            global_bytes,
            engine_bytes,
            resident_layer_bytes: all_layers,
            kv_file_bytes: 0,
        };
        if fixed + all_layers <= budget {
            return Ok(plan);
        }

        let slot = plan
            .layer_reads
            .iter()
            .map(LayerRead::len)
            .max()
            .unwrap_or(0);
        let minimum = fixed + SLOTS as u64 * slot;
        if budget < minimum {
            return Err(Error::config(format!(
                "memory budget {} is below the minimum {} for this model: \
                 embeddings and output head {}, KV cache and scratch {}, {SLOTS} streaming slots of {} \
                 (one layer each); raise the budget or shorten the context (or the batch)",
                ByteSize(budget),
                ByteSize(minimum),
                ByteSize(global_bytes),
                ByteSize(engine_bytes),
                ByteSize(slot)
            )));
        }
        // As many layers resident as fit, spread evenly; shrink the count
        // until the chosen set fits (layers differ a little in size).
        let room = budget - minimum;
        let mut k = n;
        loop {
            let chosen = spread(n, k);
            let bytes: u64 = chosen.iter().map(|&i| plan.layer_reads[i].len()).sum();
            if bytes <= room || k == 0 {
                for (i, p) in plan.placement.iter_mut().enumerate() {
                    *p = if chosen.contains(&i) {
                        Placement::Resident
                    } else {
                        Placement::Streamed
                    };
                }
                plan.resident_layer_bytes = bytes;
                break;
            }
            k -= 1;
        }
        plan.slot_bytes = slot;
        Ok(plan)
    }

    /// The smallest budget that can run this model: everything resident
    /// when that is smaller (tiny models), else one layer per slot.
    pub fn minimum_budget(model: &Model, engine_bytes: u64) -> u64 {
        let all = Plan::make(model, engine_bytes, u64::MAX).expect("an unbounded budget fits");
        let slot = all
            .layer_reads
            .iter()
            .map(LayerRead::len)
            .max()
            .unwrap_or(0);
        all.total_bytes()
            .min(all.global_bytes + all.engine_bytes + SLOTS as u64 * slot)
    }

    /// Everything the plan allocates.
    pub fn total_bytes(&self) -> u64 {
        self.global_bytes
            + self.engine_bytes
            + self.resident_layer_bytes
            + SLOTS as u64 * self.slot_bytes
    }

    pub fn streamed_layers(&self) -> impl Iterator<Item = usize> + '_ {
        self.placement
            .iter()
            .enumerate()
            .filter(|(_, p)| **p == Placement::Streamed)
            .map(|(i, _)| i)
    }

    pub fn is_streaming(&self) -> bool {
        self.slot_bytes > 0
    }

    /// Bytes read from storage per forward pass.
    pub fn streamed_bytes_per_pass(&self) -> u64 {
        self.streamed_layers()
            .map(|i| self.layer_reads[i].len())
            .sum()
    }

    /// Runs of consecutive layers with the same placement.
    pub fn ranges(&self) -> Vec<(Range<usize>, Placement, u64)> {
        let mut out: Vec<(Range<usize>, Placement, u64)> = Vec::new();
        for (i, &p) in self.placement.iter().enumerate() {
            let bytes = self.layer_reads[i].len();
            match out.last_mut() {
                Some((r, last, b)) if *last == p && r.end == i => {
                    r.end = i + 1;
                    *b += bytes;
                }
                _ => out.push((i..i + 1, p, bytes)),
            }
        }
        out
    }
}

impl fmt::Display for Plan {
    /// "resident layers 0-3, 8 (1.2 GiB); streamed layers 4-7, 9-39 (...)"
    /// plus the budget breakdown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        for (what, placement) in [
            ("resident", Placement::Resident),
            ("streamed", Placement::Streamed),
        ] {
            let runs: Vec<(Range<usize>, u64)> = self
                .ranges()
                .into_iter()
                .filter(|(_, p, _)| *p == placement)
                .map(|(r, _, b)| (r, b))
                .collect();
            if runs.is_empty() {
                continue;
            }
            let bytes: u64 = runs.iter().map(|(_, b)| b).sum();
            let list: Vec<String> = runs
                .iter()
                .map(|(r, _)| match r.len() {
                    1 => r.start.to_string(),
                    _ => format!("{}-{}", r.start, r.end - 1),
                })
                .collect();
            parts.push(format!(
                "{what} layers {} ({})",
                list.join(", "),
                ByteSize(bytes)
            ));
        }
        writeln!(f, "{}", parts.join("; "))?;
        writeln!(
            f,
            "budget {}: embeddings+output {}, KV {}+scratch {}, resident layers {}, streaming slots {} x {}; total {}",
            ByteSize(self.budget),
            ByteSize(self.global_bytes),
            if self.kv_file_bytes > 0 { "buffers" } else { "cache" },
            ByteSize(self.engine_bytes),
            ByteSize(self.resident_layer_bytes),
            if self.is_streaming() { SLOTS } else { 0 },
            ByteSize(self.slot_bytes),
            ByteSize(self.total_bytes())
        )?;
        if self.kv_file_bytes > 0 {
            writeln!(
                f,
                "KV cache on disk: {} file, read through the buffers counted above",
                ByteSize(self.kv_file_bytes)
            )?;
        }
        let streamed = self.streamed_layers().count();
        write!(
            f,
            "{} of {} layers streamed, {} read per forward pass",
            streamed,
            self.placement.len(),
            ByteSize(self.streamed_bytes_per_pass())
        )
    }
}

/// The tensors outside the layers, each read once (the output head is the
/// embedding table when the model ties them).
pub fn global_reads(model: &Model) -> Vec<LayerRead> {
    let mut tensors = vec![&model.token_embd, &model.output_norm];
    if model.output != model.token_embd {
        tensors.push(&model.output);
    }
    tensors.into_iter().map(tensor_read).collect()
}

/// `k` of `n` indices spread evenly: the middle of each of `k` equal runs.
fn spread(n: usize, k: usize) -> Vec<usize> {
    (0..k).map(|i| ((2 * i + 1) * n) / (2 * k)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_even_and_distinct() {
        assert_eq!(spread(4, 2), vec![1, 3]);
        assert_eq!(
            spread(22, 11),
            (0..11).map(|i| 2 * i + 1).collect::<Vec<_>>()
        );
        assert_eq!(spread(5, 5), vec![0, 1, 2, 3, 4]);
        assert!(spread(7, 0).is_empty());
        let s = spread(40, 13);
        assert!(s.windows(2).all(|w| w[0] < w[1]) && *s.last().unwrap() < 40);
    }
}
