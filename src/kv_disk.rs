//! The KV cache on disk, for contexts whose cache does not fit the budget
//! (`[memory] kv_offload`).
//!
//! One file, created in `[memory] kv_dir` and unlinked as soon as it is
//! open (so it is gone at exit, even after a crash), holds the cache in the
//! in-RAM layout `[layer][seq][position][kv_dim]`, keys then values, in the
//! cache's element type; each `(layer, seq)` region starts on an O_DIRECT
//! boundary. For each layer and sequence of a pass, positions `0..start`
//! are read into one fixed, aligned buffer (one layer of one sequence at
//! full context, K and V, allocated at start), the pass's new rows are
//! stored after them exactly as [`crate::kv_cache::KvCache::store`] stores
//! them, and attention runs over that buffer as [`KvRows`]: the same bits
//! and the same code path as the in-RAM cache, so the logits are identical.
//!
//! The newest rows of each layer and sequence (less than [`KV_TAIL`] bytes
//! past the last aligned block written) stay in a RAM tail; when it fills,
//! the completed blocks are written in one aligned write. A decode step
//! therefore reads the context once per layer and writes about
//! `KV_TAIL` bytes every `KV_TAIL / row` tokens.

use crate::error::{Error, Result};
use crate::kv_cache::{KvCache, KvRows, KvType};
use crate::residency::buffer::{align_down, align_up, AlignedBuf, IO_ALIGN};
use crate::residency::loader::MAX_REQUEST;
use half::f16;
use half::slice::HalfFloatSliceExt;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

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

/// Most bytes of the newest keys (and as many of values) of each layer and
/// sequence kept in RAM between writes: a multiple of the O_DIRECT block.
/// Short contexts get a smaller tail ([`DiskKv::tail_bytes`]).
pub const KV_TAIL: usize = 64 << 10;

/// A KV cache whose rows live in a file; see the module docs.
pub struct DiskKv {
    file: File,
    path: PathBuf,
    direct: bool,
    n_seq: usize,
    kv_type: KvType,
    /// Bytes of one position's keys (or values).
    row_bytes: usize,
    /// Bytes of one `(layer, seq)` region of keys (or values), aligned.
    region: u64,
    /// Offset of the values in the file.
    v_base: u64,
    k_buf: AlignedBuf,
    v_buf: AlignedBuf,
    /// Bytes of each tail.
    tail: usize,
    /// Per `(layer, seq)`: the newest rows past `committed`, `tail` each.
    k_tail: Vec<u8>,
    v_tail: Vec<u8>,
    /// Per `(layer, seq)`: bytes of its region written to the file.
    committed: Vec<u64>,
    /// The `(layer, seq)` whose rows are in the buffers.
    current: Option<(usize, usize)>,
    bytes_read: u64,
    bytes_written: u64,
}

impl DiskKv {
    /// Bytes of one region (one layer of one sequence, keys or values).
    fn region_bytes(n_ctx: usize, kv_dim: usize, kv_type: KvType) -> u64 {
        align_up((n_ctx as u64).saturating_mul((kv_dim * kv_type.bytes()) as u64))
    }

    /// Bytes of each tail for regions of `region` bytes: an eighth of the
    /// region, in whole O_DIRECT blocks, between one block and [`KV_TAIL`].
    fn tail_bytes(region: u64) -> usize {
        (align_down(region / 8) as usize).clamp(IO_ALIGN, KV_TAIL)
    }

    /// RAM the disk cache allocates: the two buffers and the tails.
    pub fn ram_bytes(
        n_layers: usize,
        n_seq: usize,
        n_ctx: usize,
        kv_dim: usize,
        kv_type: KvType,
    ) -> u64 {
        let region = Self::region_bytes(n_ctx, kv_dim, kv_type);
        let tails = (n_layers as u64)
            .saturating_mul(n_seq as u64)
            .saturating_mul(2 * Self::tail_bytes(region) as u64);
        region.saturating_mul(2).saturating_add(tails)
    }

    /// Size of the file on disk.
    pub fn file_bytes(
        n_layers: usize,
        n_seq: usize,
        n_ctx: usize,
        kv_dim: usize,
        kv_type: KvType,
    ) -> u64 {
        Self::region_bytes(n_ctx, kv_dim, kv_type)
            .saturating_mul(n_layers as u64)
            .saturating_mul(n_seq as u64)
            .saturating_mul(2)
    }

    /// A cache for this shape in a new file under `dir` (`kv_type` as
    /// [`KvCache::effective_type`] stores it).
    pub fn create(
        dir: &Path,
        n_layers: usize,
        n_seq: usize,
        n_ctx: usize,
        kv_dim: usize,
        head_dim: usize,
        kv_type: KvType,
    ) -> Result<DiskKv> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let kv_type = KvCache::effective_type(kv_type, head_dim);
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
        let region = Self::region_bytes(n_ctx, kv_dim, kv_type);
        let total = Self::file_bytes(n_layers, n_seq, n_ctx, kv_dim, kv_type);
        file.set_len(total).map_err(|e| {
            Error::io(format!(
                "{}: cannot size the KV file to {total} bytes: {e}",
                path.display()
            ))
        })?;
        log::info!(
            "KV cache on disk: {} ({} bytes, {} I/O; unlinked), {} bytes of buffers in RAM",
            path.display(),
            total,
            if direct { "O_DIRECT" } else { "buffered" },
            Self::ram_bytes(n_layers, n_seq, n_ctx, kv_dim, kv_type)
        );
        let slots = n_layers * n_seq;
        let tail = Self::tail_bytes(region);
        Ok(DiskKv {
            file,
            path,
            direct,
            n_seq,
            kv_type,
            row_bytes: kv_dim * kv_type.bytes(),
            region,
            v_base: region * slots as u64,
            k_buf: AlignedBuf::new(region as usize),
            v_buf: AlignedBuf::new(region as usize),
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

    fn io_err(&self, what: &str, at: u64, e: std::io::Error) -> Error {
        Error::io(format!(
            "{} (KV file): {what} at offset {at} failed: {e}",
            self.path.display()
        ))
    }

    /// Load positions `0..start` of `seq` in `layer` into the buffers,
    /// ready for [`DiskKv::store`] of the pass's rows from `start` on.
    pub fn begin(&mut self, layer: usize, seq: usize, start: usize) -> Result<()> {
        let idx = layer * self.n_seq + seq;
        let c = self.committed[idx];
        let a = (start * self.row_bytes) as u64;
        let from_file = c.min(align_up(a)) as usize;
        let k_at = self.region * idx as u64;
        let v_at = self.v_base + k_at;
        for (at, which) in [(k_at, 0), (v_at, 1)] {
            let mut done = 0;
            while done < from_file {
                let end = (done + MAX_REQUEST).min(from_file);
                let off = at + done as u64;
                let buf = if which == 0 {
                    &mut self.k_buf[done..end]
                } else {
                    &mut self.v_buf[done..end]
                };
                match self.file.read_at(buf, off) {
                    Ok(0) => {
                        return Err(self.io_err(
                            "read",
                            off,
                            std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
                        ))
                    }
                    Ok(n) => done += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(self.io_err("read", off, e)),
                }
            }
        }
        self.bytes_read += 2 * from_file as u64;
        if !self.direct && from_file > 0 {
            // Buffered: drop what was read from the page cache, as the
            // weight loader does, so the cache does not grow with it.
            for at in [k_at, v_at] {
                // SAFETY: plain syscall on an open descriptor; advice only.
                unsafe {
                    libc::posix_fadvise(
                        self.file.as_raw_fd(),
                        at as libc::off_t,
                        from_file as libc::off_t,
                        libc::POSIX_FADV_DONTNEED,
                    );
                }
            }
        }
        if a > c {
            // Rows past the last block written come from the tail.
            let n = ((a - c) as usize).min(self.tail);
            let (c, t) = (c as usize, idx * self.tail);
            self.k_buf[c..c + n].copy_from_slice(&self.k_tail[t..t + n]);
            self.v_buf[c..c + n].copy_from_slice(&self.v_tail[t..t + n]);
        }
        self.current = Some((layer, seq));
        Ok(())
    }

    /// Store the key and value of `pos` (of the `(layer, seq)` begun),
    /// rounded as the in-RAM cache rounds them.
    pub fn store(&mut self, layer: usize, seq: usize, pos: usize, k: &[f32], v: &[f32]) {
        debug_assert_eq!(self.current, Some((layer, seq)));
        let r = pos * self.row_bytes..(pos + 1) * self.row_bytes;
        match self.kv_type {
            KvType::F32 => {
                f32s_mut(&mut self.k_buf[r.clone()]).copy_from_slice(k);
                f32s_mut(&mut self.v_buf[r]).copy_from_slice(v);
            }
            KvType::F16 => {
                f16s_mut(&mut self.k_buf[r.clone()]).convert_from_f32_slice(k);
                f16s_mut(&mut self.v_buf[r]).convert_from_f32_slice(v);
            }
        }
    }

    /// Keys and values of positions `0..n` of the `(layer, seq)` begun.
    pub fn layer(&self, layer: usize, seq: usize, n: usize) -> (KvRows<'_>, KvRows<'_>) {
        debug_assert_eq!(self.current, Some((layer, seq)));
        let r = 0..n * self.row_bytes;
        match self.kv_type {
            KvType::F32 => (
                KvRows::F32(f32s(&self.k_buf[r.clone()])),
                KvRows::F32(f32s(&self.v_buf[r])),
            ),
            KvType::F16 => (
                KvRows::F16(f16s(&self.k_buf[r.clone()])),
                KvRows::F16(f16s(&self.v_buf[r])),
            ),
        }
    }

    /// Keep the rows `start..end` stored since [`DiskKv::begin`]: in the
    /// tail while it has room, else written out in whole aligned blocks.
    pub fn end(&mut self, layer: usize, seq: usize, start: usize, end: usize) -> Result<()> {
        debug_assert_eq!(self.current, Some((layer, seq)));
        let idx = layer * self.n_seq + seq;
        let c = self.committed[idx];
        let (a, b) = (
            (start * self.row_bytes) as u64,
            (end * self.row_bytes) as u64,
        );
        let t = idx * self.tail;
        if a >= c && b - c <= self.tail as u64 {
            let (ta, tb) = ((a - c) as usize, (b - c) as usize);
            let r = a as usize..b as usize;
            self.k_tail[t + ta..t + tb].copy_from_slice(&self.k_buf[r.clone()]);
            self.v_tail[t + ta..t + tb].copy_from_slice(&self.v_buf[r]);
            return Ok(());
        }
        // The buffer holds every byte from `w0` to `b`: read from the file
        // below `c`, from the tail from `c` on, stored from `a` on.
        let w0 = align_down(a).min(c);
        let nc = align_down(b);
        let k_at = self.region * idx as u64;
        let v_at = self.v_base + k_at;
        for (at, which) in [(k_at, 0), (v_at, 1)] {
            let mut done = w0 as usize;
            while done < nc as usize {
                let stop = (done + MAX_REQUEST).min(nc as usize);
                let off = at + done as u64;
                let buf = if which == 0 {
                    &self.k_buf[done..stop]
                } else {
                    &self.v_buf[done..stop]
                };
                match self.file.write_at(buf, off) {
                    Ok(0) => {
                        return Err(self.io_err(
                            "write",
                            off,
                            std::io::Error::from(std::io::ErrorKind::WriteZero),
                        ))
                    }
                    Ok(n) => done += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(self.io_err("write", off, e)),
                }
            }
        }
        self.bytes_written += 2 * nc.saturating_sub(w0);
        let n = (b - nc) as usize;
        let r = nc as usize..b as usize;
        self.k_tail[t..t + n].copy_from_slice(&self.k_buf[r.clone()]);
        self.v_tail[t..t + n].copy_from_slice(&self.v_buf[r]);
        self.committed[idx] = nc;
        Ok(())
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

/// The KV cache the forward pass uses: in RAM, or on disk through fixed
/// buffers. Per layer and sequence of a pass: [`KvStore::begin`], one
/// [`KvStore::store`] per new position, [`KvStore::layer`] for attention,
/// then [`KvStore::end`].
pub enum KvStore {
    Ram(KvCache),
    Disk(DiskKv),
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

    pub fn layer(&self, layer: usize, seq: usize, n: usize) -> (KvRows<'_>, KvRows<'_>) {
        match self {
            KvStore::Ram(c) => c.layer(layer, seq, n),
            KvStore::Disk(d) => d.layer(layer, seq, n),
        }
    }

    pub fn end(&mut self, layer: usize, seq: usize, start: usize, end: usize) -> Result<()> {
        match self {
            KvStore::Ram(_) => Ok(()),
            KvStore::Disk(d) => d.end(layer, seq, start, end),
        }
    }

    /// Bytes read from disk so far (0 in RAM).
    pub fn bytes_read(&self) -> u64 {
        match self {
            KvStore::Ram(_) => 0,
            KvStore::Disk(d) => d.bytes_read(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random-ish rows through both stores, with prefill chunks, decode
    /// steps past several tail flushes and a rewind: the same views.
    #[test]
    fn disk_matches_ram() {
        // /dev/shm (tmpfs) refuses O_DIRECT: the buffered fallback.
        let shm = Path::new("/dev/shm");
        let dirs: Vec<PathBuf> = std::iter::once(std::env::temp_dir())
            .chain(shm.is_dir().then(|| shm.to_path_buf()))
            .collect();
        for (kv_type, dir) in [KvType::F16, KvType::F32]
            .into_iter()
            .flat_map(|t| dirs.iter().map(move |d| (t, d)))
        {
            let (layers, seqs, ctx, dim) = (2, 2, 700, 256);
            let mut ram = KvStore::Ram(KvCache::new(layers, seqs, ctx, dim, dim, kv_type));
            let mut disk =
                KvStore::Disk(DiskKv::create(dir, layers, seqs, ctx, dim, dim, kv_type).unwrap());
            let mut x = 1u32;
            let mut row = || {
                (0..dim)
                    .map(|_| {
                        x = x.wrapping_mul(1664525).wrapping_add(1013904223);
                        (x >> 8) as f32 / (1u32 << 24) as f32 - 0.5
                    })
                    .collect::<Vec<f32>>()
            };
            // (start, len) passes: chunks, decode steps, a rewind to 300.
            let mut passes = vec![(0, 37), (37, 64), (101, 1)];
            passes.extend((102..420).map(|p| (p, 1)));
            passes.push((300, 5));
            passes.extend((305..330).map(|p| (p, 1)));
            for (start, len) in passes {
                for l in 0..layers {
                    for s in 0..seqs {
                        let rows: Vec<(Vec<f32>, Vec<f32>)> =
                            (0..len).map(|_| (row(), row())).collect();
                        for st in [&mut ram, &mut disk] {
                            st.begin(l, s, start).unwrap();
                            for (i, (k, v)) in rows.iter().enumerate() {
                                st.store(l, s, start + i, k, v);
                            }
                        }
                        let n = start + len;
                        let mut a = vec![0.0; n * dim];
                        let mut b = vec![0.0; n * dim];
                        for i in 0..2 {
                            let (ra, rb) = (ram.layer(l, s, n), disk.layer(l, s, n));
                            let (ra, rb) = if i == 0 { (ra.0, rb.0) } else { (ra.1, rb.1) };
                            let va = ra.values(0, n * dim, &mut a).to_vec();
                            let vb = rb.values(0, n * dim, &mut b).to_vec();
                            assert!(va == vb, "{kv_type} layer {l} seq {s} at {start}+{len}");
                        }
                        for st in [&mut ram, &mut disk] {
                            st.end(l, s, start, n).unwrap();
                        }
                    }
                }
            }
            assert!(disk.bytes_read() > 0);
        }
    }
}
