//! The plannable half of streaming layers through a GPU: small pure types
//! and functions, kept apart from the driver calls so they can be
//! unit-tested without a GPU.
//!
//! - where a layer's bytes lie ([`layer_span`], [`host_range`]) and how big
//!   a device slot must be ([`device_slot_bytes`]);
//! - the double buffer's rotation ([`SlotRotation`]): which device slot a
//!   streamed layer is copied into, and which layer's kernels that copy
//!   must wait for;
//! - page-locking the host slots ([`check_regions`], [`locked_bytes`]) and
//!   finding a host address in the mapped ones ([`device_address`]);
//! - what the device holds ([`DevicePlan`]) and what a run measured
//!   ([`LayerTimes`]).
//!
//! Like `geometry.rs`, this file depends on nothing but `std`: it is also
//! compiled into `tests/gpu.rs` by `#[path]`, so its tests run in a plain
//! `cargo test` without the `cuda` feature.

use crate::backend::Feed;
use std::ops::Range;

/// Device slots: one being read by kernels, one being filled. The same
/// number as the host's streaming slots (`residency::plan::SLOTS`).
pub const SLOTS: usize = 2;

/// Device copies of a layer start at a file offset rounded down to this,
/// so a tensor's address modulo 256 is the same in a device slot, in a
/// resident layer's allocation and in a host slot (whose reads start at a
/// 4096-aligned file offset). Allocations are at least 256-aligned.
pub const DEVICE_ALIGN: u64 = 256;

/// Weight matrices must start 16-byte aligned: the K-quant kernels load 8
/// quant bytes at a time from offsets that are multiples of 8 within
/// 16-byte-aligned rows (kernels/dequant.cuh). GGUF aligns tensors to 32.
pub const WEIGHT_ALIGN: u64 = 16;

/// The file range the kernels need of a layer: from its first matrix,
/// rounded down to [`DEVICE_ALIGN`], to the end of its last. `None` when
/// there are no matrices.
pub fn layer_span(matrices: impl IntoIterator<Item = Range<u64>>) -> Option<Range<u64>> {
    let mut span: Option<Range<u64>> = None;
    for r in matrices {
        span = Some(match span {
            None => r,
            Some(s) => s.start.min(r.start)..s.end.max(r.end),
        });
    }
    span.map(|s| s.start / DEVICE_ALIGN * DEVICE_ALIGN..s.end)
}

/// Where the file range `span` lies in host bytes that hold the file from
/// offset `base` on and are `len` long; `None` if it does not lie inside.
pub fn host_range(span: &Range<u64>, base: u64, len: usize) -> Option<Range<usize>> {
    let start = span.start.checked_sub(base)?;
    let end = span.end.checked_sub(base)?;
    if start > end || end > len as u64 {
        return None;
    }
    Some(start as usize..end as usize)
}

/// Bytes of each device slot for host slots of `plan_slot_bytes`: every
/// span of a streamed layer fits, because it lies inside the layer's
/// aligned read, which the host slot holds.
pub fn device_slot_bytes(plan_slot_bytes: u64) -> u64 {
    plan_slot_bytes.div_ceil(DEVICE_ALIGN) * DEVICE_ALIGN
}

/// Bytes a device arena needs for layer spans of these lengths placed back
/// to back, each at a [`DEVICE_ALIGN`]-aligned offset. At most the sum of
/// the layers' aligned reads (the plan's `resident_layer_bytes`): each read
/// is a multiple of 4096 at least as long as the span inside it.
pub fn arena_bytes(span_lens: impl IntoIterator<Item = u64>) -> u64 {
    span_lens
        .into_iter()
        .map(|l| l.div_ceil(DEVICE_ALIGN) * DEVICE_ALIGN)
        .sum()
}

/// Where the next streamed layer goes: device slot `slot`; its copy must
/// first wait for the event recorded after the kernels of layer
/// `wait_for_layer`, the last that read the slot (none the first time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyTicket {
    pub slot: usize,
    pub wait_for_layer: Option<usize>,
}

/// The device double buffer's state machine. Streamed layers alternate
/// between the slots, so the copy of one layer overlaps the kernels of the
/// one before (which read the other slot). For each slot it remembers the
/// last layer whose kernels read it, since a copy into the slot must wait
/// for those kernels (their "read done" event).
///
/// Protocol, once per streamed layer: [`SlotRotation::begin`] (then copy
/// into the slot after waiting for the slot's event if the ticket says so,
/// then enqueue the layer's kernels), then [`SlotRotation::end`] after
/// recording the slot's event behind those kernels. `end` must follow
/// every `begin`, also when the copy or a launch failed (recording the
/// event then only covers what was enqueued, which is what a later copy
/// must wait for).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotRotation {
    next: usize,
    last_reader: [Option<usize>; SLOTS],
    open: Option<(usize, usize)>,
}

impl SlotRotation {
    pub fn new() -> SlotRotation {
        SlotRotation::default()
    }

    /// The slot streamed layer `layer` goes to. Panics if the previous
    /// ticket was not ended (a bug in the caller).
    pub fn begin(&mut self, layer: usize) -> CopyTicket {
        assert!(
            self.open.is_none(),
            "slot rotation: layer {layer} begins before {:?} ended",
            self.open
        );
        let slot = self.next;
        self.next = (self.next + 1) % SLOTS;
        self.open = Some((slot, layer));
        CopyTicket {
            slot,
            wait_for_layer: self.last_reader[slot],
        }
    }

    /// The kernels of the layer begun on `slot` are enqueued and the
    /// slot's read-done event is recorded behind them.
    pub fn end(&mut self, slot: usize) {
        let (open_slot, layer) = self.open.take().expect("slot rotation: end without begin");
        assert_eq!(open_slot, slot, "slot rotation: ended the wrong slot");
        self.last_reader[slot] = Some(layer);
    }

    /// The last layer read from each slot.
    pub fn last_readers(&self) -> [Option<usize>; SLOTS] {
        self.last_reader
    }
}

/// A host range to page-lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostRegion {
    pub addr: usize,
    pub len: usize,
}

/// The whole pages a region lies on: what page-locking it locks.
pub fn page_span(r: &HostRegion, page: usize) -> Range<usize> {
    r.addr / page * page..(r.addr + r.len).div_ceil(page) * page
}

/// Why a set of regions cannot each be registered once: an empty one, or
/// two that share a page (the second registration of a page fails, and
/// unregistering one would unlock the other's). Slots are aligned for
/// O_DIRECT (4096 bytes), so on a kernel with 16 or 64 KiB pages two
/// adjacent slots may share one; the driver's own refusals (older drivers
/// want page-aligned ranges) come back from the registration itself.
pub fn check_regions(regions: &[HostRegion], page: usize) -> Result<(), String> {
    for (i, r) in regions.iter().enumerate() {
        if r.len == 0 {
            return Err(format!("host slot {i} is empty"));
        }
        let pages = page_span(r, page);
        for (j, o) in regions[..i].iter().enumerate() {
            let other = page_span(o, page);
            if pages.start < other.end && other.start < pages.end {
                return Err(format!(
                    "host slots {j} and {i} share a {page}-byte page ({:#x}+{} and {:#x}+{})",
                    o.addr, o.len, r.addr, r.len
                ));
            }
        }
    }
    Ok(())
}

/// Bytes the registration locks: each region rounded out to whole pages.
pub fn locked_bytes(regions: &[HostRegion], page: usize) -> u64 {
    regions
        .iter()
        .map(|r| page_span(r, page).len() as u64)
        .sum()
}

/// A page-locked, device-mapped host region: host range and the device
/// address of its first byte (`cuMemHostGetDevicePointer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MappedRegion {
    pub host: usize,
    pub len: usize,
    pub device: u64,
}

/// The device address of host bytes `host..host + len`, if they lie inside
/// one mapped region.
pub fn device_address(regions: &[MappedRegion], host: usize, len: usize) -> Option<u64> {
    regions.iter().find_map(|r| {
        let end = host.checked_add(len)?;
        (host >= r.host && end <= r.host + r.len).then(|| r.device + (host - r.host) as u64)
    })
}

/// Device memory a streamed run allocates, from the planner's numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevicePlan {
    /// KV cache, activations, logits, RoPE table (the backend's own).
    pub engine_bytes: u64,
    /// Embedding table, output norm, output head.
    pub global_bytes: u64,
    /// Resident layers, uploaded once.
    pub resident_layer_bytes: u64,
    /// Each device slot (0 when nothing streams or slots are mapped).
    pub slot_bytes: u64,
}

impl DevicePlan {
    /// The plan for a feed: mapped slots cost no device memory.
    pub fn new(
        engine_bytes: u64,
        global_bytes: u64,
        resident_layer_bytes: u64,
        plan_slot_bytes: u64,
        feed: Feed,
    ) -> DevicePlan {
        DevicePlan {
            engine_bytes,
            global_bytes,
            resident_layer_bytes,
            slot_bytes: match feed {
                Feed::Device => device_slot_bytes(plan_slot_bytes),
                Feed::Mapped => 0,
            },
        }
    }

    pub fn total_bytes(&self) -> u64 {
        self.engine_bytes
            + self.global_bytes
            + self.resident_layer_bytes
            + SLOTS as u64 * self.slot_bytes
    }
}

/// Where time went, summed over the layers of the passes since the last
/// reset. Event times (`*_ms` other than `host_wait_ms`) are only measured
/// when the backend profiles.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LayerTimes {
    pub passes: u64,
    /// Streamed layers copied through the device double buffer.
    pub copied_layers: u64,
    /// Streamed layers read in place from mapped host memory.
    pub mapped_layers: u64,
    pub resident_layers: u64,
    /// Bytes copied host to device for streamed layers.
    pub copy_bytes: u64,
    /// Copy stream busy copying (events around each copy).
    pub copy_ms: f64,
    /// Compute stream idle, waiting for a streamed layer's copy.
    pub copy_wait_ms: f64,
    /// Kernels of streamed layers (copied or mapped).
    pub streamed_compute_ms: f64,
    /// Kernels of resident layers.
    pub resident_compute_ms: f64,
    /// Wall time `layer()` spent waiting before it could hand the host slot
    /// back: for the copy (device feed) or for the kernels (mapped feed).
    pub host_wait_ms: f64,
}

impl LayerTimes {
    pub fn streamed_layers(&self) -> u64 {
        self.copied_layers + self.mapped_layers
    }

    /// Bytes per second of the copies, from the copy stream's events.
    pub fn copy_bytes_per_s(&self) -> Option<f64> {
        (self.copy_ms > 0.0).then(|| self.copy_bytes as f64 / (self.copy_ms / 1e3))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_starts_aligned_and_covers_every_matrix() {
        let mats = [4196..5000, 5000..9000, 9024..9100];
        assert_eq!(layer_span(mats.iter().cloned()), Some(4096..9100));
        assert_eq!(layer_span(std::iter::once(300u64..700)), Some(256..700));
        assert_eq!(layer_span(std::iter::empty()), None);
        // Order does not matter.
        assert_eq!(layer_span([9024u64..9100, 4196..5000]), Some(4096..9100));
    }

    #[test]
    fn host_range_is_relative_to_the_slot_and_bounded_by_it() {
        // A host slot holding the file from 8192 on, 4096 bytes long.
        assert_eq!(host_range(&(8448..12000), 8192, 4096), Some(256..3808));
        assert_eq!(host_range(&(8192..12288), 8192, 4096), Some(0..4096));
        assert_eq!(host_range(&(8192..12289), 8192, 4096), None);
        assert_eq!(host_range(&(4096..9000), 8192, 4096), None);
    }

    #[test]
    fn device_slots_hold_every_span_of_a_host_slot() {
        assert_eq!(device_slot_bytes(0), 0);
        assert_eq!(device_slot_bytes(4096 * 37), 4096 * 37);
        assert_eq!(device_slot_bytes(1000), 1024);
        // A layer read is 4096-aligned at both ends and holds the span: a
        // span of any layer whose read fits the host slot fits the device
        // slot, wherever the matrices start inside the read.
        let slot = 3 * 4096u64;
        for first in (0..4096).step_by(32) {
            let read_start = 40960;
            let mat = read_start + first..read_start + 2 * 4096 + 100;
            let span = layer_span(std::iter::once(mat.clone())).unwrap();
            let host = host_range(&span, read_start, slot as usize).unwrap();
            assert!(host.len() as u64 <= device_slot_bytes(slot));
            // Alignment modulo 256 is kept between host and device copies.
            assert_eq!(
                (mat.start - span.start) % DEVICE_ALIGN,
                mat.start % DEVICE_ALIGN
            );
        }
    }

    #[test]
    fn arena_places_spans_at_aligned_offsets_within_their_reads() {
        assert_eq!(arena_bytes([]), 0);
        assert_eq!(arena_bytes([1, 256, 257]), 256 + 256 + 512);
        // A span inside a 4096-aligned read never needs more than the read.
        for (start, end) in [
            (4096u64 + 32, 3 * 4096 + 1),
            (8192, 8192 + 4096),
            (300, 4000),
        ] {
            let span = layer_span(std::iter::once(start..end)).unwrap();
            let read = start / 4096 * 4096..end.div_ceil(4096) * 4096;
            assert!(arena_bytes([span.end - span.start]) <= read.end - read.start);
        }
    }

    #[test]
    fn rotation_alternates_slots_and_waits_for_the_last_reader() {
        let mut r = SlotRotation::new();
        // Streamed layers 1, 3, 5 of a model, two passes (odd count, so
        // the second pass starts on the other slot).
        let layers = [1, 3, 5, 1, 3, 5];
        let mut got = Vec::new();
        for l in layers {
            let t = r.begin(l);
            got.push((t.slot, t.wait_for_layer));
            r.end(t.slot);
        }
        assert_eq!(
            got,
            vec![
                (0, None),
                (1, None),
                (0, Some(1)),
                (1, Some(3)),
                (0, Some(5)),
                (1, Some(1)),
            ]
        );
        assert_eq!(r.last_readers(), [Some(3), Some(5)]);
    }

    #[test]
    fn consecutive_layers_never_share_a_slot() {
        // The property the overlap rests on: the copy of layer k+1 never
        // targets the slot layer k's kernels read, and it always waits
        // for the layer that read its slot last (k-1), never for k.
        let mut r = SlotRotation::new();
        let mut prev: Option<(usize, usize)> = None;
        let mut before_prev: Option<usize> = None;
        for l in 0..101 {
            let t = r.begin(l);
            if let Some((slot, layer)) = prev {
                assert_ne!(t.slot, slot);
                assert_ne!(t.wait_for_layer, Some(layer));
            }
            assert_eq!(t.wait_for_layer, before_prev);
            r.end(t.slot);
            before_prev = prev.map(|(_, layer)| layer);
            prev = Some((t.slot, l));
        }
    }

    #[test]
    #[should_panic(expected = "begins before")]
    fn a_ticket_must_end_before_the_next_begins() {
        let mut r = SlotRotation::new();
        r.begin(0);
        r.begin(1);
    }

    #[test]
    #[should_panic(expected = "wrong slot")]
    fn ending_another_slot_is_a_bug() {
        let mut r = SlotRotation::new();
        let t = r.begin(0);
        r.end(1 - t.slot);
    }

    #[test]
    fn regions_register_when_they_share_no_page() {
        let a = HostRegion {
            addr: 0x10_0000,
            len: 3 * 4096,
        };
        let b = HostRegion {
            addr: 0x10_3000,
            len: 4096,
        };
        assert_eq!(check_regions(&[a, b], 4096), Ok(()));
        assert_eq!(locked_bytes(&[a, b], 4096), 4 * 4096);
        let overlapping = HostRegion {
            addr: 0x10_2000,
            len: 8192,
        };
        assert!(check_regions(&[a, overlapping], 4096)
            .unwrap_err()
            .contains("share"));
        let empty = HostRegion { addr: 0, len: 0 };
        assert!(check_regions(&[empty], 4096).is_err());
        // The same two adjacent 4096-aligned slots on a 64 KiB-page
        // kernel share a page: refused up front (the caller falls back to
        // pageable copies), and the pages are counted whole.
        assert!(check_regions(&[a, b], 65536)
            .unwrap_err()
            .contains("65536-byte page"));
        assert_eq!(page_span(&a, 65536), 0x10_0000..0x11_0000);
        assert_eq!(locked_bytes(&[a], 65536), 65536);
        let straddling = HostRegion {
            addr: 0x1_F000,
            len: 8192,
        };
        assert_eq!(locked_bytes(&[straddling], 65536), 2 * 65536);
        // Far apart, they do not.
        let far = HostRegion {
            addr: 0x40_0000,
            len: 4096,
        };
        assert_eq!(check_regions(&[a, far], 65536), Ok(()));
    }

    #[test]
    fn host_addresses_translate_inside_one_mapped_region() {
        let regions = [
            MappedRegion {
                host: 0x7000_0000,
                len: 0x1000,
                device: 0x2_0000_0000,
            },
            MappedRegion {
                host: 0x7100_0000,
                len: 0x2000,
                device: 0x3_0000_0000,
            },
        ];
        assert_eq!(
            device_address(&regions, 0x7000_0010, 0x100),
            Some(0x2_0000_0010)
        );
        assert_eq!(
            device_address(&regions, 0x7100_1000, 0x1000),
            Some(0x3_0000_1000)
        );
        // Past the end, straddling, before, overflowing: not mapped.
        assert_eq!(device_address(&regions, 0x7000_0f00, 0x200), None);
        assert_eq!(device_address(&regions, 0x6fff_ffff, 2), None);
        assert_eq!(device_address(&regions, usize::MAX, 2), None);
    }

    #[test]
    fn device_plan_charges_slots_only_when_copied() {
        let d = DevicePlan::new(100, 1000, 10_000, 4096, Feed::Device);
        assert_eq!(d.total_bytes(), 100 + 1000 + 10_000 + 2 * 4096);
        let m = DevicePlan::new(100, 1000, 10_000, 4096, Feed::Mapped);
        assert_eq!(m.total_bytes(), 11_100);
        let none = DevicePlan::new(100, 1000, 10_000, 0, Feed::Device);
        assert_eq!(none.total_bytes(), 11_100);
    }

    #[test]
    fn copy_rate_from_event_times() {
        let t = LayerTimes {
            copy_bytes: 2_000_000_000,
            copy_ms: 100.0,
            copied_layers: 3,
            mapped_layers: 1,
            ..Default::default()
        };
        assert_eq!(t.copy_bytes_per_s(), Some(2e10));
        assert_eq!(t.streamed_layers(), 4);
        assert_eq!(LayerTimes::default().copy_bytes_per_s(), None);
    }
}
