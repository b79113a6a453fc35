//! The KV cache on disk, for contexts whose cache does not fit the budget
//! (`[memory] kv_offload`).
//!
//! One file, created in `[memory] kv_dir` and unlinked as soon as it is
//! open (so it is gone at exit, even after a crash), holds the cache in
//! the layout `[layer][seq][kv_head][position][head_dim]`, keys then
//! values, in the cache's element type; each `(layer, seq, kv_head)`
//! region (a *slot*) starts on an O_DIRECT boundary. Attention reads it
//! one kv head at a time, a block of positions at a time ([`KvBlocks`]),
//! into two fixed aligned buffers (one for keys, one for values), so the
//! RAM it needs does not grow with the context:
//! [`crate::backend::cpu::CpuBackend::attention_blocks`] computes from
//! those blocks the same bits as attention over the in-RAM cache.
//!
//! The file's part of each block is read ahead by a reader thread
//! ([`ReadAhead`]) into [`KV_READ_AHEAD`] more buffers of the same size:
//! the forward pass announces each layer's passes ([`DiskKv::schedule`],
//! in the order [`BlockPass`] gives, the order attention loads them)
//! before that layer's attention, the next layer's as soon as this
//! layer's attention is done, so the reads overlap the matmuls and the
//! weight loader's reads. A load that was not announced (or one whose
//! file part grew since) is read in the compute thread, as before.
//!
//! A pass's new rows are stored, rounded as
//! [`crate::kv_cache::KvCache::store`] rounds them, in a RAM buffer of one
//! chunk; at [`DiskKv::end`] they join the slot's RAM tail (the newest
//! rows past the last aligned block written, at most [`KV_TAIL`] bytes),
//! and when it fills, the completed blocks are written in aligned writes.
//! A decode step therefore reads the context once per layer (from the
//! window's first block, with a sliding window) and writes about
//! `KV_TAIL` bytes per slot every `KV_TAIL / row` tokens.

use crate::backend::cpu::BlockPass;
use crate::error::{Error, Result};
use crate::kv_cache::{KvBlocks, KvCache, KvPart, KvRows, KvShape, KvType};
use crate::residency::buffer::{align_down, align_up, AlignedBuf, IO_ALIGN};
use crate::residency::loader::{drop_from_page_cache, MAX_REQUEST};
use half::f16;
use half::slice::HalfFloatSliceExt;
use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

/// Where the KV cache lives (`[memory] kv_offload`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvOffload {
    /// In RAM when it fits the budget beside the minimum weights, else on
    /// disk.
    #[default]
    Auto,
    /// Always in RAM: a context whose cache does not fit is refused.
    Off,
    /// Always on disk (for tests and measurements).
    On,
}

/// Most bytes of the newest keys (and as many of values) of each slot kept
/// in RAM between writes: a multiple of the O_DIRECT block. Short contexts
/// get a smaller tail ([`DiskKv::tail_bytes`]).
pub const KV_TAIL: usize = 16 << 10;

/// Most bytes of one block of keys (or values) read for attention: large
/// enough that a read costs far more than its dispatch, small next to a
/// budget. Short contexts get smaller blocks ([`DiskKv::block_bytes`]).
pub const KV_BLOCK: usize = 256 << 10;

/// Block buffers beyond the two attention reads from: the reads in flight
/// ahead of it.
pub const KV_READ_AHEAD: usize = 4;

/// Reads from the KV file so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvReads {
    pub bytes: u64,
    /// Blocks attention loaded that the reader thread had read ahead.
    pub blocks_read_ahead: u64,
    /// Blocks it loaded in the compute thread (not announced, or the
    /// announcement did not match).
    pub blocks_read_in_place: u64,
}

/// Which block a read is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct BlockKey {
    layer: usize,
    seq: usize,
    part: KvPart,
    head: usize,
    first: usize,
    n: usize,
}

/// A read for the reader thread: `len` bytes (maybe none) at `at` into
/// `buf`.
struct BlockRead {
    key: BlockKey,
    at: u64,
    len: usize,
    buf: AlignedBuf,
}

/// A read done (or failed).
struct BlockDone {
    read: BlockRead,
    result: std::io::Result<()>,
}

/// A pass announced but not all read yet.
struct Scheduled {
    layer: usize,
    seq: usize,
    pass: BlockPass,
    /// Its next load to issue.
    next: usize,
}

/// The reader thread and its buffers. Reads are served in order, so a
/// pass's blocks come back in the order attention loads them.
struct ReadAhead {
    requests: Option<SyncSender<BlockRead>>,
    done: Receiver<BlockDone>,
    thread: Option<JoinHandle<()>>,
    /// Buffers not in flight.
    free: Vec<AlignedBuf>,
    /// Reads issued and not yet taken.
    in_flight: usize,
    /// Passes announced, in load order; bounded by its capacity (two
    /// layers of passes), so pushing never allocates.
    scheduled: VecDeque<Scheduled>,
    /// Loads served by a read ahead, and loads read in the compute thread
    /// (none announced, or the announcement did not match).
    hits: u64,
    misses: u64,
}

impl ReadAhead {
    fn start(file: &File, direct: bool, block: usize, n_seq: usize) -> std::io::Result<Self> {
        let file = file.try_clone()?;
        let (req_tx, req_rx) = mpsc::sync_channel::<BlockRead>(KV_READ_AHEAD);
        let (done_tx, done_rx) = mpsc::sync_channel::<BlockDone>(KV_READ_AHEAD);
        let thread = std::thread::Builder::new()
            .name("flea-kv-reader".into())
            .spawn(move || {
                for mut read in req_rx {
                    let result = DiskKv::read_into(&file, &mut read.buf[..read.len], read.at);
                    if result.is_ok() && !direct && read.len > 0 {
                        drop_from_page_cache(&file, read.at, read.len);
                    }
                    if done_tx.send(BlockDone { read, result }).is_err() {
                        break;
                    }
                }
            })?;
        // A thread's first blocking receive allocates the channel's wait
        // context (once per thread): done here, on the thread that will
        // run the forward pass, so the token loop allocates nothing
        // (tests/no_alloc_kv_disk.rs). Nothing was sent, so this waits the
        // millisecond out.
        let _ = done_rx.recv_timeout(std::time::Duration::from_millis(1));
        Ok(ReadAhead {
            requests: Some(req_tx),
            done: done_rx,
            thread: Some(thread),
            free: (0..KV_READ_AHEAD).map(|_| AlignedBuf::new(block)).collect(),
            in_flight: 0,
            scheduled: VecDeque::with_capacity(2 * n_seq + 2),
            hits: 0,
            misses: 0,
        })
    }

    /// Take every read in flight back and forget what was announced.
    fn cancel(&mut self) {
        while self.in_flight > 0 {
            match self.done.recv() {
                Ok(done) => self.free.push(done.read.buf),
                Err(_) => break,
            }
            self.in_flight -= 1;
        }
        self.scheduled.clear();
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        // Closing the request channel ends the thread after its reads;
        // `done` holds room for all of them, so it never blocks on a send.
        self.requests = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A KV cache whose rows live in a file; see the module docs.
pub struct DiskKv {
    file: File,
    path: PathBuf,
    direct: bool,
    shape: KvShape,
    kv_type: KvType,
    /// Positions a pass stores at most.
    max_chunk: usize,
    /// Bytes of one position of one kv head (keys or values).
    row_bytes: usize,
    /// Bytes of one slot of keys (or values), aligned.
    region: u64,
    /// Offset of the values in the file.
    v_base: u64,
    /// Positions of one block (its bytes are a multiple of [`IO_ALIGN`]).
    block_positions: usize,
    /// The blocks attention reads (also staging for writes).
    k_block: AlignedBuf,
    v_block: AlignedBuf,
    ahead: ReadAhead,
    /// Positions in each block buffer.
    k_loaded: usize,
    v_loaded: usize,
    /// The pass's new rows: `[kv_head][max_chunk][head_dim]`.
    k_new: Vec<u8>,
    v_new: Vec<u8>,
    /// Bytes of each tail.
    tail: usize,
    /// Per slot: the newest rows past `committed`, `tail` bytes each.
    k_tail: Vec<u8>,
    v_tail: Vec<u8>,
    /// Per slot: bytes of its region written to the file.
    committed: Vec<u64>,
    /// The `(layer, seq, start)` of the pass begun.
    current: Option<(usize, usize, usize)>,
    bytes_read: u64,
    bytes_written: u64,
}

impl DiskKv {
    /// Bytes of one position of one kv head.
    fn row_bytes(shape: &KvShape, kv_type: KvType) -> usize {
        shape.head_dim * kv_type.bytes()
    }

    /// Bytes of one slot (one layer, sequence and kv head; keys or values).
    fn region_bytes(shape: &KvShape, kv_type: KvType) -> u64 {
        align_up((shape.n_ctx as u64).saturating_mul(Self::row_bytes(shape, kv_type) as u64))
    }

    fn slots(shape: &KvShape) -> u64 {
        (shape.n_layers as u64)
            .saturating_mul(shape.n_seq as u64)
            .saturating_mul(shape.n_kv_heads as u64)
    }

    /// Bytes of each tail: an eighth of a slot, in whole O_DIRECT blocks,
    /// between one block and [`KV_TAIL`].
    fn tail_bytes(shape: &KvShape, kv_type: KvType) -> usize {
        (align_down(Self::region_bytes(shape, kv_type) / 8) as usize).clamp(IO_ALIGN, KV_TAIL)
    }

    /// Bytes of each block buffer for blocks of at most `target` bytes: a
    /// quarter of a slot (so that even a short context spans several
    /// blocks), at most `target`, in whole positions and whole O_DIRECT
    /// blocks (at least one of each).
    fn block_bytes(shape: &KvShape, kv_type: KvType, target: usize) -> usize {
        let row = Self::row_bytes(shape, kv_type).max(1);
        // The fewest positions whose bytes are a multiple of IO_ALIGN.
        let unit = row * (IO_ALIGN / gcd(row, IO_ALIGN));
        let quarter = (Self::region_bytes(shape, kv_type) / 4).min(target as u64) as usize;
        (quarter / unit).max(1) * unit
    }

    /// RAM the disk cache allocates for passes of up to `max_chunk`
    /// positions: the block buffers (two, and [`KV_READ_AHEAD`] in
    /// flight), the new rows and the tails.
    pub fn ram_bytes(shape: KvShape, kv_type: KvType, max_chunk: usize) -> u64 {
        let kv_type = KvCache::effective_type(kv_type, shape.head_dim);
        let blocks =
            (2 + KV_READ_AHEAD as u64) * Self::block_bytes(&shape, kv_type, KV_BLOCK) as u64;
        let new_rows =
            (2 * max_chunk as u64).saturating_mul((shape.kv_dim() * kv_type.bytes()) as u64);
        let tails =
            Self::slots(&shape).saturating_mul(2 * Self::tail_bytes(&shape, kv_type) as u64);
        blocks.saturating_add(new_rows).saturating_add(tails)
    }

    /// Size of the file on disk.
    pub fn file_bytes(shape: KvShape, kv_type: KvType) -> u64 {
        let kv_type = KvCache::effective_type(kv_type, shape.head_dim);
        Self::region_bytes(&shape, kv_type)
            .saturating_mul(Self::slots(&shape))
            .saturating_mul(2)
    }

    /// A cache of this shape in a new file under `dir` (`kv_type` as
    /// [`KvCache::effective_type`] stores it), for passes of up to
    /// `max_chunk` positions, read in blocks of [`KV_BLOCK`] bytes at most.
    pub fn create(dir: &Path, shape: KvShape, kv_type: KvType, max_chunk: usize) -> Result<DiskKv> {
        Self::with_block(dir, shape, kv_type, max_chunk, KV_BLOCK)
    }

    /// As [`DiskKv::create`], with blocks of at most `block_target` bytes
    /// (tests use small ones to cross many block boundaries).
    pub fn with_block(
        dir: &Path,
        shape: KvShape,
        kv_type: KvType,
        max_chunk: usize,
        block_target: usize,
    ) -> Result<DiskKv> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let kv_type = KvCache::effective_type(kv_type, shape.head_dim);
        let path = dir.join(format!(
            "flea-kv-{}-{}.bin",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let open = |direct: bool| {
            let mut o = File::options();
            o.read(true).write(true).create_new(true);
            if direct {
                o.custom_flags(libc::O_DIRECT);
            }
            o.open(&path)
        };
        let open_err = |e: std::io::Error| {
            Error::io(format!(
                "{}: cannot create the KV file: {e}",
                path.display()
            ))
        };
        let (file, direct) = match open(true) {
            Ok(f) => (f, true),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                (open(false).map_err(open_err)?, false)
            }
            Err(e) => return Err(open_err(e)),
        };
        // Unlinked at once: the space is freed when the file closes, at
        // exit or on a crash.
        std::fs::remove_file(&path).map_err(|e| {
            Error::io(format!(
                "{}: cannot unlink the KV file: {e}",
                path.display()
            ))
        })?;
        let region = Self::region_bytes(&shape, kv_type);
        let total = Self::file_bytes(shape, kv_type);
        file.set_len(total).map_err(|e| {
            Error::io(format!(
                "{}: cannot size the KV file to {total} bytes: {e}",
                path.display()
            ))
        })?;
        let row_bytes = Self::row_bytes(&shape, kv_type);
        let block = Self::block_bytes(&shape, kv_type, block_target);
        let slots = Self::slots(&shape) as usize;
        let tail = Self::tail_bytes(&shape, kv_type);
        let new_rows = shape.n_kv_heads * max_chunk * row_bytes;
        let ahead = ReadAhead::start(&file, direct, block, shape.n_seq).map_err(|e| {
            Error::io(format!(
                "{}: cannot start the KV reader thread: {e}",
                path.display()
            ))
        })?;
        log::info!(
            "KV cache on disk: {} ({} bytes, {} I/O; unlinked), blocks of {} bytes, {} bytes of buffers in RAM",
            path.display(),
            total,
            if direct { "O_DIRECT" } else { "buffered" },
            block,
            (2 + KV_READ_AHEAD) * block + 2 * new_rows + 2 * slots * tail
        );
        Ok(DiskKv {
            file,
            path,
            direct,
            shape,
            kv_type,
            max_chunk,
            row_bytes,
            region,
            v_base: region * slots as u64,
            block_positions: block / row_bytes.max(1),
            k_block: AlignedBuf::new(block),
            v_block: AlignedBuf::new(block),
            ahead,
            k_loaded: 0,
            v_loaded: 0,
            k_new: vec![0; new_rows],
            v_new: vec![0; new_rows],
            tail,
            k_tail: vec![0; slots * tail],
            v_tail: vec![0; slots * tail],
            committed: vec![0; slots],
            current: None,
            bytes_read: 0,
            bytes_written: 0,
        })
    }

    pub fn kv_type(&self) -> KvType {
        self.kv_type
    }

    /// Whether the file was opened with O_DIRECT.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// Bytes read from and written to the file so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    pub fn reads(&self) -> KvReads {
        KvReads {
            bytes: self.bytes_read,
            blocks_read_ahead: self.ahead.hits,
            blocks_read_in_place: self.ahead.misses,
        }
    }

    /// Announce that attention over `(layer, seq)` will load `pass`'s
    /// blocks next (after the passes announced before): the reader thread
    /// starts on their file parts. Passes beyond two layers' worth are not
    /// read ahead.
    pub fn schedule(&mut self, layer: usize, seq: usize, pass: BlockPass) {
        let q = &mut self.ahead.scheduled;
        if pass.is_empty() || q.len() == q.capacity() {
            return;
        }
        q.push_back(Scheduled {
            layer,
            seq,
            pass,
            next: 0,
        });
        self.issue();
    }

    /// Bytes to read from the file for positions `first..first + n` of
    /// `slot` (keys and values alike), from the block's start (aligned),
    /// as the file holds them now: the rest comes from the tail and the
    /// new rows.
    fn file_part(&self, slot: usize, first: usize, n: usize) -> usize {
        let row = self.row_bytes as u64;
        let (lo, hi, c) = (
            first as u64 * row,
            (first + n) as u64 * row,
            self.committed[slot],
        );
        if lo < c {
            align_up(hi.min(c) - lo) as usize
        } else {
            0
        }
    }

    /// Hand the reader thread the next announced reads, one per free
    /// buffer.
    fn issue(&mut self) {
        while !self.ahead.free.is_empty() {
            let Some(s) = self.ahead.scheduled.front_mut() else {
                return;
            };
            let (part, head, first, n) = s.pass.load(s.next);
            let key = BlockKey {
                layer: s.layer,
                seq: s.seq,
                part,
                head,
                first,
                n,
            };
            s.next += 1;
            if s.next == s.pass.len() {
                self.ahead.scheduled.pop_front();
            }
            let slot = self.slot(key.layer, key.seq, head);
            let read = BlockRead {
                key,
                at: self.slot_offset(part, slot) + (first * self.row_bytes) as u64,
                len: self.file_part(slot, first, n),
                buf: self.ahead.free.pop().expect("a free buffer"),
            };
            let sent = self.ahead.requests.as_ref().map(|r| r.send(read));
            match sent {
                Some(Ok(())) => self.ahead.in_flight += 1,
                // The thread is gone: no more reading ahead (loads read
                // in the compute thread).
                Some(Err(mpsc::SendError(read))) => {
                    self.ahead.free.push(read.buf);
                    self.ahead.requests = None;
                    self.ahead.scheduled.clear();
                }
                None => unreachable!("requests are cleared with scheduled"),
            }
        }
    }

    /// The next read ahead, if it is the block `key` with every byte the
    /// file now holds for it: its buffer becomes the part's block buffer.
    /// Anything else cancels the reads ahead.
    fn take_read_ahead(&mut self, key: BlockKey, slot: usize) -> Result<bool> {
        if self.ahead.in_flight == 0 {
            return Ok(false);
        }
        let done = self.ahead.done.recv().map_err(|_| {
            Error::io(format!(
                "{} (KV file): the reader thread stopped unexpectedly",
                self.path.display()
            ))
        })?;
        self.ahead.in_flight -= 1;
        let BlockDone { read, result } = done;
        if read.key != key || read.len < self.file_part(slot, key.first, key.n) {
            self.ahead.free.push(read.buf);
            self.ahead.cancel();
            return Ok(false);
        }
        if let Err(e) = result {
            let at = read.at;
            self.ahead.free.push(read.buf);
            self.ahead.cancel();
            return Err(self.io_err("read", at, e));
        }
        self.bytes_read += read.len as u64;
        let old = match key.part {
            KvPart::Keys => std::mem::replace(&mut self.k_block, read.buf),
            KvPart::Values => std::mem::replace(&mut self.v_block, read.buf),
        };
        self.ahead.free.push(old);
        self.issue();
        Ok(true)
    }

    fn io_err(&self, what: &str, at: u64, e: std::io::Error) -> Error {
        Error::io(format!(
            "{} (KV file): {what} at offset {at} failed: {e}",
            self.path.display()
        ))
    }

    fn slot(&self, layer: usize, seq: usize, head: usize) -> usize {
        (layer * self.shape.n_seq + seq) * self.shape.n_kv_heads + head
    }

    /// File offset of `part` of `slot`.
    fn slot_offset(&self, part: KvPart, slot: usize) -> u64 {
        let k = self.region * slot as u64;
        match part {
            KvPart::Keys => k,
            KvPart::Values => self.v_base + k,
        }
    }

    /// Fill `buf` from the file at `at` (lengths and offsets aligned).
    fn read_into(file: &File, buf: &mut [u8], at: u64) -> std::io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let end = (done + MAX_REQUEST).min(buf.len());
            match file.read_at(&mut buf[done..end], at + done as u64) {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn write_from(file: &File, buf: &[u8], at: u64) -> std::io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            let end = (done + MAX_REQUEST).min(buf.len());
            match file.write_at(&buf[done..end], at + done as u64) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Read `len` bytes of `part` of `slot` from `from` (aligned) into the
    /// part's block buffer.
    fn read_block(&mut self, part: KvPart, slot: usize, from: u64, len: usize) -> Result<()> {
        let at = self.slot_offset(part, slot) + from;
        let buf = match part {
            KvPart::Keys => &mut self.k_block[..len],
            KvPart::Values => &mut self.v_block[..len],
        };
        Self::read_into(&self.file, buf, at).map_err(|e| self.io_err("read", at, e))?;
        self.bytes_read += len as u64;
        if !self.direct {
            // Buffered: drop what was read, as the weight loader does, so
            // the page cache does not grow with it.
            drop_from_page_cache(&self.file, at, len);
        }
        Ok(())
    }

    /// Start a pass over `(layer, seq)` whose new rows begin at position
    /// `start` (positions `0..start` stored before). Rewinding below what
    /// was written brings the partial block at `start` back into the tail.
    pub fn begin(&mut self, layer: usize, seq: usize, start: usize) -> Result<()> {
        let a = (start * self.row_bytes) as u64;
        for head in 0..self.shape.n_kv_heads {
            let slot = self.slot(layer, seq, head);
            if a >= self.committed[slot] {
                continue;
            }
            let c = align_down(a);
            let keep = (a - c) as usize;
            let t = slot * self.tail;
            for part in [KvPart::Keys, KvPart::Values] {
                if keep > 0 {
                    self.read_block(part, slot, c, IO_ALIGN)?;
                }
                let (block, tail) = match part {
                    KvPart::Keys => (&self.k_block, &mut self.k_tail),
                    KvPart::Values => (&self.v_block, &mut self.v_tail),
                };
                tail[t..t + keep].copy_from_slice(&block[..keep]);
            }
            self.committed[slot] = c;
        }
        self.current = Some((layer, seq, start));
        Ok(())
    }

    /// Store the key and value of `pos` (of the `(layer, seq)` begun),
    /// rounded as the in-RAM cache rounds them.
    pub fn store(&mut self, layer: usize, seq: usize, pos: usize, k: &[f32], v: &[f32]) {
        let (l, s, start) = self.current.expect("DiskKv::store before begin");
        debug_assert_eq!((l, s), (layer, seq));
        let i = pos - start;
        assert!(
            i < self.max_chunk,
            "DiskKv: more than {} rows in a pass",
            self.max_chunk
        );
        let hd = self.shape.head_dim;
        for head in 0..self.shape.n_kv_heads {
            let at = (head * self.max_chunk + i) * self.row_bytes;
            let r = at..at + self.row_bytes;
            let src = head * hd..(head + 1) * hd;
            match self.kv_type {
                KvType::F32 => {
                    f32s_mut(&mut self.k_new[r.clone()]).copy_from_slice(&k[src.clone()]);
                    f32s_mut(&mut self.v_new[r]).copy_from_slice(&v[src]);
                }
                KvType::F16 => {
                    f16s_mut(&mut self.k_new[r.clone()]).convert_from_f32_slice(&k[src.clone()]);
                    f16s_mut(&mut self.v_new[r]).convert_from_f32_slice(&v[src]);
                }
            }
        }
    }

    /// Keep the rows `start..end` stored since [`DiskKv::begin`]: in the
    /// tail while it has room, else written out in whole aligned blocks
    /// (through the block buffers) with the rest left in the tail.
    pub fn end(&mut self, layer: usize, seq: usize, start: usize, end: usize) -> Result<()> {
        debug_assert_eq!(self.current, Some((layer, seq, start)));
        let (a, b) = (
            (start * self.row_bytes) as u64,
            (end * self.row_bytes) as u64,
        );
        for head in 0..self.shape.n_kv_heads {
            let slot = self.slot(layer, seq, head);
            let c = self.committed[slot];
            let t = slot * self.tail;
            let new = head * self.max_chunk * self.row_bytes;
            let n_new = (b - a) as usize;
            if b - c <= self.tail as u64 {
                let ta = (a - c) as usize;
                for (tail, rows) in [
                    (&mut self.k_tail, &self.k_new),
                    (&mut self.v_tail, &self.v_new),
                ] {
                    tail[t + ta..t + ta + n_new].copy_from_slice(&rows[new..new + n_new]);
                }
                continue;
            }
            // Bytes `c..nc` go to the file: the tail's `c..a`, then new
            // rows. `nc >= a`: the tail holds at most `tail` bytes past
            // `c`, and `b - c` exceeds that.
            let nc = align_down(b);
            for part in [KvPart::Keys, KvPart::Values] {
                let at = self.slot_offset(part, slot);
                let (block, tail, rows) = match part {
                    KvPart::Keys => (&mut self.k_block, &mut self.k_tail, &self.k_new),
                    KvPart::Values => (&mut self.v_block, &mut self.v_tail, &self.v_new),
                };
                let mut w = c;
                while w < nc {
                    let e = (w + block.len() as u64).min(nc);
                    let out = &mut block[..(e - w) as usize];
                    // The tail's bytes before `a`, new rows from `a` on.
                    let split = (a.clamp(w, e) - w) as usize;
                    if split > 0 {
                        let from_tail = t + (w - c) as usize;
                        out[..split].copy_from_slice(&tail[from_tail..from_tail + split]);
                    }
                    let from_new = new + (w.max(a) - a) as usize;
                    let rest = out.len() - split;
                    out[split..].copy_from_slice(&rows[from_new..from_new + rest]);
                    Self::write_from(&self.file, out, at + w).map_err(|e| {
                        Error::io(format!(
                            "{} (KV file): write at offset {} failed: {e}",
                            self.path.display(),
                            at + w
                        ))
                    })?;
                    w = e;
                }
                let keep = (b - nc) as usize;
                let from_new = new + (nc - a) as usize;
                tail[t..t + keep].copy_from_slice(&rows[from_new..from_new + keep]);
            }
            self.bytes_written += 2 * (nc - c);
            self.committed[slot] = nc;
        }
        // The block buffers held staged writes: nothing loaded any more.
        self.k_loaded = 0;
        self.v_loaded = 0;
        Ok(())
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl KvBlocks for DiskKv {
    fn block_positions(&self) -> usize {
        self.block_positions
    }

    fn load(&mut self, part: KvPart, head: usize, first: usize, n: usize) -> Result<()> {
        let (layer, seq, start) = self.current.expect("DiskKv::load before begin");
        debug_assert!(first.is_multiple_of(self.block_positions) && n <= self.block_positions);
        let slot = self.slot(layer, seq, head);
        let row = self.row_bytes as u64;
        let (lo, hi) = (first as u64 * row, (first + n) as u64 * row);
        let (c, a) = (self.committed[slot], start as u64 * row);
        // From the file below `c` (`file_part`), the tail from `c` to `a`,
        // the new rows from `a` on. `lo` is aligned (a block boundary) and
        // so is `c`.
        let key = BlockKey {
            layer,
            seq,
            part,
            head,
            first,
            n,
        };
        if self.take_read_ahead(key, slot)? {
            self.ahead.hits += 1;
        } else {
            self.ahead.misses += 1;
            let len = self.file_part(slot, first, n);
            if len > 0 {
                self.read_block(part, slot, lo, len)?;
            }
        }
        let t = slot * self.tail;
        let new = head * self.max_chunk * self.row_bytes;
        let (block, tail, rows) = match part {
            KvPart::Keys => (&mut self.k_block, &self.k_tail, &self.k_new),
            KvPart::Values => (&mut self.v_block, &self.v_tail, &self.v_new),
        };
        let (t0, t1) = (lo.max(c), hi.min(a));
        if t0 < t1 {
            let (from, len) = ((t0 - c) as usize, (t1 - t0) as usize);
            let to = (t0 - lo) as usize;
            block[to..to + len].copy_from_slice(&tail[t + from..t + from + len]);
        }
        let n0 = lo.max(a);
        if n0 < hi {
            let (from, len) = ((n0 - a) as usize, (hi - n0) as usize);
            let to = (n0 - lo) as usize;
            block[to..to + len].copy_from_slice(&rows[new + from..new + from + len]);
        }
        match part {
            KvPart::Keys => self.k_loaded = n,
            KvPart::Values => self.v_loaded = n,
        }
        Ok(())
    }

    fn loaded(&self, part: KvPart) -> KvRows<'_> {
        let (block, n) = match part {
            KvPart::Keys => (&self.k_block, self.k_loaded),
            KvPart::Values => (&self.v_block, self.v_loaded),
        };
        let r = 0..n * self.row_bytes;
        match self.kv_type {
            KvType::F32 => KvRows::F32(f32s(&block[r])),
            KvType::F16 => KvRows::F16(f16s(&block[r])),
        }
    }
}

// The buffers are aligned to 4096 bytes and every bit pattern is a valid
// f16 or f32, so these views are sound.
fn f32s(b: &[u8]) -> &[f32] {
    debug_assert!((b.as_ptr() as usize).is_multiple_of(4) && b.len().is_multiple_of(4));
    // SAFETY: aligned (checked above, 4096-aligned buffer), length a
    // multiple of 4, any bits are a valid f32.
    unsafe { std::slice::from_raw_parts(b.as_ptr() as *const f32, b.len() / 4) }
}

fn f32s_mut(b: &mut [u8]) -> &mut [f32] {
    debug_assert!((b.as_ptr() as usize).is_multiple_of(4) && b.len().is_multiple_of(4));
    // SAFETY: as in `f32s`, and the borrow is exclusive.
    unsafe { std::slice::from_raw_parts_mut(b.as_mut_ptr() as *mut f32, b.len() / 4) }
}

fn f16s(b: &[u8]) -> &[f16] {
    debug_assert!((b.as_ptr() as usize).is_multiple_of(2) && b.len().is_multiple_of(2));
    // SAFETY: as in `f32s`, for the 2-byte f16.
    unsafe { std::slice::from_raw_parts(b.as_ptr() as *const f16, b.len() / 2) }
}

fn f16s_mut(b: &mut [u8]) -> &mut [f16] {
    debug_assert!((b.as_ptr() as usize).is_multiple_of(2) && b.len().is_multiple_of(2));
    // SAFETY: as in `f16s`, and the borrow is exclusive.
    unsafe { std::slice::from_raw_parts_mut(b.as_mut_ptr() as *mut f16, b.len() / 2) }
}

/// The KV cache the forward pass uses: in RAM, or on disk. Per layer and
/// sequence of a pass: [`KvStore::begin`], one [`KvStore::store`] per new
/// position, attention (over [`KvCache::layer`] or the [`KvBlocks`] of
/// the disk cache), then [`KvStore::end`].
pub enum KvStore {
    Ram(KvCache),
    /// Boxed: its fixed fields are several times the RAM cache's.
    Disk(Box<DiskKv>),
}

impl KvStore {
    pub fn kv_type(&self) -> KvType {
        match self {
            KvStore::Ram(c) => c.kv_type(),
            KvStore::Disk(d) => d.kv_type(),
        }
    }

    pub fn begin(&mut self, layer: usize, seq: usize, start: usize) -> Result<()> {
        match self {
            KvStore::Ram(_) => Ok(()),
            KvStore::Disk(d) => d.begin(layer, seq, start),
        }
    }

    pub fn store(&mut self, layer: usize, seq: usize, pos: usize, k: &[f32], v: &[f32]) {
        match self {
            KvStore::Ram(c) => c.store(layer, seq, pos, k, v),
            KvStore::Disk(d) => d.store(layer, seq, pos, k, v),
        }
    }

    pub fn end(&mut self, layer: usize, seq: usize, start: usize, end: usize) -> Result<()> {
        match self {
            KvStore::Ram(_) => Ok(()),
            KvStore::Disk(d) => d.end(layer, seq, start, end),
        }
    }

    /// What was read from disk so far (nothing in RAM).
    pub fn reads(&self) -> KvReads {
        match self {
            KvStore::Ram(_) => KvReads::default(),
            KvStore::Disk(d) => d.reads(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random-ish rows through both stores, with prefill chunks, decode
    /// steps past several tail flushes and a rewind: every block of every
    /// kv head holds the rows of the RAM cache.
    #[test]
    fn disk_blocks_match_ram() {
        // /dev/shm (tmpfs) refuses O_DIRECT: the buffered fallback.
        let shm = Path::new("/dev/shm");
        let dirs: Vec<PathBuf> = std::iter::once(std::env::temp_dir())
            .chain(shm.is_dir().then(|| shm.to_path_buf()))
            .collect();
        let shape = KvShape {
            n_layers: 2,
            n_seq: 2,
            n_ctx: 700,
            n_kv_heads: 2,
            head_dim: 64,
        };
        let (kv_dim, hd, max_chunk) = (shape.kv_dim(), shape.head_dim, 64);
        for (kv_type, dir, block) in [KvType::F16, KvType::F32]
            .into_iter()
            .flat_map(|t| dirs.iter().map(move |d| (t, d)))
            .flat_map(|(t, d)| [IO_ALIGN, 3 * IO_ALIGN].map(|b| (t, d, b)))
        {
            let mut ram = KvCache::new(shape, kv_type);
            let mut disk = DiskKv::with_block(dir, shape, kv_type, max_chunk, block).unwrap();
            let bp = disk.block_positions();
            assert_eq!(bp * hd * kv_type.bytes(), block);
            let mut x = 1u32;
            let mut row = || {
                (0..kv_dim)
                    .map(|_| {
                        x = x.wrapping_mul(1664525).wrapping_add(1013904223);
                        (x >> 8) as f32 / (1u32 << 24) as f32 - 0.5
                    })
                    .collect::<Vec<f32>>()
            };
            // (start, len) passes: chunks, decode steps, a rewind to 300
            // (mid-block), another to 256 (on a block boundary).
            let mut passes = vec![(0, 37), (37, 64), (101, 1)];
            passes.extend((102..420).map(|p| (p, 1)));
            passes.push((300, 5));
            passes.extend((305..330).map(|p| (p, 1)));
            passes.push((256, 64));
            passes.extend((320..340).map(|p| (p, 1)));
            let (mut a, mut b) = (vec![0.0; bp * hd], vec![0.0; bp * hd]);
            for (start, len) in passes {
                for l in 0..shape.n_layers {
                    for s in 0..shape.n_seq {
                        disk.begin(l, s, start).unwrap();
                        for i in 0..len {
                            let (k, v) = (row(), row());
                            ram.store(l, s, start + i, &k, &v);
                            disk.store(l, s, start + i, &k, &v);
                        }
                        let n = start + len;
                        let (rk, rv) = ram.layer(l, s, n);
                        for head in 0..shape.n_kv_heads {
                            for first in (0..n).step_by(bp) {
                                let m = bp.min(n - first);
                                for (part, rows) in [(KvPart::Keys, rk), (KvPart::Values, rv)] {
                                    disk.load(part, head, first, m).unwrap();
                                    let got = disk.loaded(part).values(0, m * hd, &mut b);
                                    for t in 0..m {
                                        let at = (first + t) * kv_dim + head * hd;
                                        let want = rows.values(at, hd, &mut a);
                                        assert!(
                                            want == &got[t * hd..(t + 1) * hd],
                                            "{kv_type} block {block} layer {l} seq {s} \
                                             head {head} {part:?} position {} at {start}+{len}",
                                            first + t
                                        );
                                    }
                                }
                            }
                        }
                        disk.end(l, s, start, n).unwrap();
                    }
                }
            }
            assert!(disk.bytes_read() > 0 && disk.bytes_written() > 0);
        }
    }
}
