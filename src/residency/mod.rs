//! Transient residency: a weight source that keeps what the plan says
//! resident in owned memory and streams the other layers through a fixed
//! double buffer, reading layer i+1 while layer i computes.

pub mod buffer;
pub mod checksum;
pub mod loader;
pub mod plan;
pub mod stats;

use crate::backend::FileBytes;
use crate::backend::Weight;
use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::model::{Model, TensorRef};
use buffer::AlignedBuf;
use checksum::{sidecar_path, Expected, Sums};
use loader::{read_region, FileReader, Loader, ReadAt, RetryPolicy};
use plan::{global_reads, LayerRead, Placement, Plan, SLOTS};
use stats::IoStats;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where the engine gets weight bytes from. The memory map and a fully
/// resident copy always have every layer; a streaming source hands out the
/// slot that holds the layer, and the layer may only be read until
/// `release_layer`.
pub trait WeightSource {
    /// A tensor outside the layers (embeddings, output norm, output head),
    /// which stays resident for the whole run.
    fn global(&self, t: &TensorRef) -> Weight<'_>;
    /// Bytes holding layer `l`, waiting for them if they are still loading.
    fn acquire_layer(&mut self, l: usize) -> Result<FileBytes<'_>>;
    /// The engine is done with layer `l`: its slot may be refilled.
    fn release_layer(&mut self, l: usize);
}

/// The memory map as a weight source: every layer resident as far as the
/// engine can tell, with the operating system paging on demand.
impl WeightSource for &GgufFile {
    fn global(&self, t: &TensorRef) -> Weight<'_> {
        whole_map(self).weight(t)
    }
    fn acquire_layer(&mut self, _l: usize) -> Result<FileBytes<'_>> {
        Ok(whole_map(self))
    }
    fn release_layer(&mut self, _l: usize) {}
}

fn whole_map(file: &GgufFile) -> FileBytes<'_> {
    FileBytes {
        base: 0,
        bytes: file.bytes_at(0..file.file_len()),
        resident: true,
    }
}

/// How the source reads.
#[derive(Debug, Clone, Copy)]
pub struct ResidencyOptions {
    /// O_DIRECT (falls back to buffered reads + DONTNEED where refused).
    pub direct: bool,
    pub retry: RetryPolicy,
    /// Read the next streamed layer while the current one computes. Off,
    /// each layer is read only when needed (load, then compute).
    pub prefetch: bool,
    /// Check every read against the sidecar `M.gguf.sums` (see
    /// [`checksum`]); a mismatch is an I/O error naming the layer.
    pub verify: bool,
}

impl Default for ResidencyOptions {
    fn default() -> Self {
        ResidencyOptions {
            direct: true,
            retry: RetryPolicy {
                retries: 4,
                backoff: Duration::from_millis(10),
            },
            prefetch: true,
            verify: false,
        }
    }
}

/// Owned bytes of a file range.
struct Owned {
    read: LayerRead,
    buf: AlignedBuf,
}

impl Owned {
    fn bytes(&self) -> FileBytes<'_> {
        FileBytes {
            base: self.read.range.start,
            bytes: &self.buf,
            resident: true,
        }
    }
}

/// The streaming half: the loader, the two slots and the cyclic order.
struct Stream {
    loader: Loader,
    /// Streamed layers in compute order; a forward pass walks it once and
    /// the next pass starts over, so prefetching wraps around.
    order: Vec<usize>,
    /// Position in `order` of each layer (usize::MAX when resident).
    position: Vec<usize>,
    free: Vec<AlignedBuf>,
    in_flight: VecDeque<usize>,
    held: Option<(usize, AlignedBuf)>,
    last_requested: Option<usize>,
    prefetch: bool,
    /// Where the slots' memory lies, fixed at start (see [`SlotRegion`]).
    regions: Vec<SlotRegion>,
    /// Expected hashes, when reads are verified.
    sums: Option<Sums>,
}

impl Stream {
    fn issue(&mut self, layer: usize, reads: &[LayerRead]) -> Result<()> {
        let buf = self.free.pop().expect("a free slot to issue into");
        let r = &reads[layer];
        let expect = self.sums.as_ref().map(|s| s.layers[layer].clone());
        self.loader
            .request(layer, r.range.clone(), r.needed(), buf, expect)?;
        self.in_flight.push_back(layer);
        self.last_requested = Some(self.position[layer]);
        Ok(())
    }

    /// Keep both slots busy with the layers that come next in the cycle.
    fn prefetch_next(&mut self, reads: &[LayerRead]) -> Result<()> {
        while !self.free.is_empty() && self.in_flight.len() < SLOTS {
            let next = match self.last_requested {
                Some(p) => (p + 1) % self.order.len(),
                None => 0,
            };
            self.issue(self.order[next], reads)?;
        }
        Ok(())
    }

    /// Wait out every read in flight and take their slots back. Used when
    /// the engine asks for a layer out of the expected order.
    fn drain(&mut self, stats: &mut IoStats) {
        while self.in_flight.pop_front().is_some() {
            match self.loader.wait() {
                Ok(done) => {
                    stats.read_time += done.read_time;
                    self.free.push(done.buf);
                }
                Err(_) => break,
            }
        }
    }
}

pub struct Residency {
    path: PathBuf,
    reads: Vec<LayerRead>,
    globals: Vec<Owned>,
    resident: Vec<Option<AlignedBuf>>,
    stream: Option<Stream>,
    stats: IoStats,
    direct: bool,
    /// Dropped before the slots are freed (see [`Residency::hold_until_slots_freed`]).
    slot_guards: Vec<Box<dyn Send + Sync>>,
}

impl Residency {
    /// Load the resident part of `plan` from `path` and start streaming.
    pub fn open(
        path: &Path,
        model: &Model,
        plan: &Plan,
        options: ResidencyOptions,
    ) -> Result<Residency> {
        let reader = FileReader::open(path, options.direct)?;
        let direct = reader.is_direct();
        let mut r = Self::with_reader(Box::new(reader), path, model, plan, options)?;
        r.direct = direct;
        Ok(r)
    }

    /// As [`Residency::open`], reading through `reader` (tests inject faults here).
    pub fn with_reader(
        mut reader: Box<dyn ReadAt>,
        path: &Path,
        model: &Model,
        plan: &Plan,
        options: ResidencyOptions,
    ) -> Result<Residency> {
        let start = Instant::now();
        let sums = if options.verify {
            let file_len = std::fs::metadata(path)
                .map_err(|e| Error::io(format!("{}: {e}", path.display())))?
                .len();
            Some(Sums::load(&sidecar_path(path), model, file_len)?)
        } else {
            None
        };
        let mut stats = IoStats::default();
        let mut load = |read: &LayerRead,
                        what: &dyn std::fmt::Display,
                        expect: Option<&Expected>|
         -> Result<AlignedBuf> {
            let mut buf = AlignedBuf::new(read.len() as usize);
            read_region(
                reader.as_mut(),
                &mut buf,
                read.range.clone(),
                read.needed(),
                options.retry,
                what,
                path,
                expect,
            )?;
            stats.resident_bytes += read.len();
            Ok(buf)
        };
        let mut globals = Vec::new();
        for (g, read) in global_reads(model).into_iter().enumerate() {
            let expect = sums.as_ref().map(|s| &s.globals[g]);
            let buf = load(&read, &"embeddings/output", expect)?;
            globals.push(Owned { read, buf });
        }
        let mut resident = Vec::with_capacity(plan.placement.len());
        for (i, p) in plan.placement.iter().enumerate() {
            resident.push(match p {
                Placement::Resident => {
                    let expect = sums.as_ref().map(|s| &s.layers[i]);
                    Some(load(
                        &plan.layer_reads[i],
                        &format_args!("layer {i}"),
                        expect,
                    )?)
                }
                Placement::Streamed => None,
            });
        }
        stats.resident_load_time = start.elapsed();

        let order: Vec<usize> = plan.streamed_layers().collect();
        let stream = if order.is_empty() {
            None
        } else {
            let mut position = vec![usize::MAX; plan.placement.len()];
            for (p, &l) in order.iter().enumerate() {
                position[l] = p;
            }
            let free: Vec<AlignedBuf> = (0..SLOTS)
                .map(|_| AlignedBuf::new(plan.slot_bytes as usize))
                .collect();
            let regions = free.iter().map(SlotRegion::of).collect();
            let loader = Loader::start(reader, path.to_path_buf(), options.retry, SLOTS)?;
            Some(Stream {
                loader,
                order,
                position,
                free,
                in_flight: VecDeque::with_capacity(SLOTS),
                held: None,
                last_requested: None,
                prefetch: options.prefetch,
                regions,
                sums,
            })
        };
        Ok(Residency {
            path: path.to_path_buf(),
            reads: plan.layer_reads.clone(),
            globals,
            resident,
            stream,
            stats,
            direct: false,
            slot_guards: Vec::new(),
        })
    }

    pub fn stats(&self) -> &IoStats {
        &self.stats
    }

    pub fn reset_stats(&mut self) {
        let keep = (self.stats.resident_bytes, self.stats.resident_load_time);
        self.stats = IoStats::default();
        (self.stats.resident_bytes, self.stats.resident_load_time) = keep;
    }

    /// Whether streamed reads bypass the page cache.
    pub fn is_direct(&self) -> bool {
        self.direct
    }
}

impl WeightSource for Residency {
    fn global(&self, t: &TensorRef) -> Weight<'_> {
        let owned = self
            .globals
            .iter()
            .find(|g| {
                g.read.span.start <= t.file_range.start && t.file_range.end <= g.read.span.end
            })
            .expect("globals cover every tensor outside the layers");
        owned.bytes().weight(t)
    }

    fn acquire_layer(&mut self, l: usize) -> Result<FileBytes<'_>> {
        let base = self.reads[l].range.start;
        if let Some(buf) = &self.resident[l] {
            return Ok(FileBytes {
                base,
                bytes: buf,
                resident: true,
            });
        }
        let stream = self
            .stream
            .as_mut()
            .expect("a streamed layer implies a stream");
        if let Some((held, buf)) = stream.held.take() {
            // The engine never acquires twice without releasing; if an
            // error cut a pass short, take the slot back.
            debug_assert_ne!(held, l);
            stream.free.push(buf);
        }
        if stream.in_flight.front() != Some(&l) {
            stream.drain(&mut self.stats);
            stream.issue(l, &self.reads)?;
        }
        let wait_start = Instant::now();
        let done = stream.loader.wait()?;
        self.stats.stall_time += wait_start.elapsed();
        self.stats.read_time += done.read_time;
        stream.in_flight.pop_front();
        if let Err(e) = done.result {
            stream.free.push(done.buf);
            return Err(e);
        }
        if done.layer != l {
            stream.free.push(done.buf);
            return Err(Error::io(format!(
                "{}: loader returned layer {} while layer {l} was expected",
                self.path.display(),
                done.layer
            )));
        }
        self.stats.streamed_bytes += self.reads[l].len();
        self.stats.streamed_layers += 1;
        stream.held = Some((l, done.buf));
        if stream.prefetch {
            stream.prefetch_next(&self.reads)?;
        }
        let (_, buf) = stream.held.as_ref().expect("just stored");
        Ok(FileBytes {
            base,
            bytes: buf,
            resident: false,
        })
    }

    fn release_layer(&mut self, l: usize) {
        let Some(stream) = self.stream.as_mut() else {
            return;
        };
        if matches!(stream.held, Some((held, _)) if held == l) {
            let (_, buf) = stream.held.take().expect("checked");
            stream.free.push(buf);
            if stream.prefetch {
                // A failed request surfaces at the next acquire, which
                // re-issues the layer it needs.
                let _ = stream.prefetch_next(&self.reads);
            }
        }
    }
}

// ---------------------------------------------------------------- slot memory for accelerators

/// Where one streaming slot's host memory lies. The slots are allocated
/// once, at open, and never move or grow: only their ownership travels
/// between the engine and the loader thread. So an accelerator may
/// page-lock (register) them once for the whole run, e.g. with CUDA's
/// `cuMemHostRegister`, and copy from them or map them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotRegion {
    /// Address of the first byte (aligned to [`buffer::IO_ALIGN`]).
    pub addr: usize,
    /// Bytes (a multiple of [`buffer::IO_ALIGN`]).
    pub len: usize,
}

impl SlotRegion {
    fn of(buf: &AlignedBuf) -> SlotRegion {
        SlotRegion {
            addr: buf.as_ptr() as usize,
            len: buf.len(),
        }
    }

    /// Whether `bytes` lie inside this region.
    pub fn contains(&self, bytes: &[u8]) -> bool {
        let a = bytes.as_ptr() as usize;
        a >= self.addr && a + bytes.len() <= self.addr + self.len
    }
}

impl Residency {
    /// The streaming slots' memory, one region per slot (none when nothing
    /// streams). Valid until this source is dropped.
    pub fn slot_regions(&self) -> Vec<SlotRegion> {
        self.stream
            .as_ref()
            .map_or_else(Vec::new, |s| s.regions.clone())
    }

    /// The host memory of the resident weights: one region per buffer of
    /// the embeddings and output head, and per resident layer. Allocated
    /// at open and never moved, like the slots. Valid until this source is
    /// dropped.
    pub fn resident_regions(&self) -> Vec<SlotRegion> {
        self.globals
            .iter()
            .map(|g| &g.buf)
            .chain(self.resident.iter().flatten())
            .map(SlotRegion::of)
            .collect()
    }

    /// Keep `guard` until this source is dropped, and drop it before the
    /// slots and the resident buffers are freed: for a registration of
    /// [`Residency::slot_regions`] or [`Residency::resident_regions`]
    /// (page-locking) that must be undone while the memory still exists.
    pub fn hold_until_slots_freed(&mut self, guard: Box<dyn Send + Sync>) {
        self.slot_guards.push(guard);
    }
}

impl crate::backend::HostSlots for Residency {
    fn slot_regions(&self) -> Vec<(usize, usize)> {
        Residency::slot_regions(self)
            .iter()
            .map(|r| (r.addr, r.len))
            .collect()
    }
    fn hold_until_slots_freed(&mut self, guard: Box<dyn Send + Sync>) {
        Residency::hold_until_slots_freed(self, guard);
    }
    fn resident_regions(&self) -> Vec<(usize, usize)> {
        Residency::resident_regions(self)
            .iter()
            .map(|r| (r.addr, r.len))
            .collect()
    }
}

impl Drop for Residency {
    fn drop(&mut self) {
        // Before `stream` (and with it the slots) and the resident buffers go.
        self.slot_guards.clear();
    }
}
