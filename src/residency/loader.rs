//! The loader thread: reads layers from storage into slots handed to it,
//! and hands them back. Ownership of a slot's buffer travels with the
//! messages, so the engine can never read a slot the loader is writing, and
//! the loader can never overwrite a slot the engine is reading.
//!
//! Reads go through [`ReadAt`], so tests can inject short reads, EINTR and
//! EIO. Transient failures are retried with exponential backoff.

use super::buffer::AlignedBuf;
use super::checksum::{mismatch, Expected, Hasher};
use crate::error::{Error, Result};
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The most one read asks for. Measured on this project's machines, 8 MiB
/// O_DIRECT requests stream 10-20% faster than one request per layer
/// (tens of MiB); the disk probe in `flea bench` reads the same way.
pub const MAX_REQUEST: usize = 8 << 20;

/// Positional reads; `read_at` may return fewer bytes than asked.
pub trait ReadAt: Send {
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
}

/// A model file opened for streaming: O_DIRECT when possible, so streamed
/// layers never fill the page cache; otherwise buffered reads followed by
/// `posix_fadvise(DONTNEED)` to drop what was read.
pub struct FileReader {
    file: File,
    direct: bool,
}

impl FileReader {
    pub fn open(path: &Path, want_direct: bool) -> Result<FileReader> {
        let open_err =
            |e: io::Error| Error::io(format!("{}: cannot open for reading: {e}", path.display()));
        if want_direct {
            match File::options()
                .read(true)
                .custom_flags(libc::O_DIRECT)
                .open(path)
            {
                Ok(file) => return Ok(FileReader { file, direct: true }),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    log::warn!(
                        "{}: O_DIRECT refused by the file system; using buffered reads and dropping them from the page cache",
                        path.display()
                    );
                }
                Err(e) => return Err(open_err(e)),
            }
        }
        let file = File::open(path).map_err(open_err)?;
        Ok(FileReader {
            file,
            direct: false,
        })
    }

    pub fn is_direct(&self) -> bool {
        self.direct
    }
}

impl ReadAt for FileReader {
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let n = self.file.read_at(buf, offset)?;
        if !self.direct && n > 0 {
            drop_from_page_cache(&self.file, offset, n);
        }
        Ok(n)
    }
}

/// Drop `len` bytes at `offset` of `file` from the page cache: what a
/// buffered read (where O_DIRECT was refused) leaves there would otherwise
/// grow outside the budget. Advice only; a failure changes nothing.
pub(crate) fn drop_from_page_cache(file: &File, offset: u64, len: usize) {
    // SAFETY: plain syscall on an open descriptor; advice only.
    unsafe {
        libc::posix_fadvise(
            file.as_raw_fd(),
            offset as libc::off_t,
            len as libc::off_t,
            libc::POSIX_FADV_DONTNEED,
        );
    }
}

/// How hard to try before a read fails the run.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub retries: u32,
    pub backoff: Duration,
}

/// Read `range` of the file into `buf[..range.len()]`, of which at least the
/// first `needed` bytes must arrive (an aligned range may run past the end
/// of the file). Short reads continue where they stopped; EINTR retries at
/// once; other errors retry after a backoff that doubles with each
/// consecutive failure, up to `policy.retries` in a row.
pub fn read_range(
    reader: &mut dyn ReadAt,
    buf: &mut [u8],
    range: Range<u64>,
    needed: u64,
    policy: RetryPolicy,
    what: &dyn std::fmt::Display,
    path: &Path,
) -> Result<()> {
    let len = (range.end - range.start) as usize;
    let mut done = 0usize;
    let mut failures = 0u32;
    let mut delay = policy.backoff;
    while (done as u64) < needed {
        let offset = range.start + done as u64;
        let end = (done + MAX_REQUEST).min(len);
        match reader.read_at(&mut buf[done..end], offset) {
            Ok(0) => {
                return Err(Error::io(format!(
                    "{}: {what}: unexpected end of file at offset {offset} (expected {} more bytes); was the file truncated?",
                    path.display(),
                    needed - done as u64
                )))
            }
            Ok(n) => {
                done += n;
                // Retries count consecutive failures: progress resets them.
                failures = 0;
                delay = policy.backoff;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                failures += 1;
                if failures > policy.retries {
                    return Err(Error::io(format!(
                        "{}: {what}: read at offset {offset} failed after {} retries: {e}",
                        path.display(),
                        policy.retries
                    )));
                }
                log::warn!(
                    "{}: {what}: read at offset {offset} failed ({e}); retry {failures} of {} in {} ms",
                    path.display(),
                    policy.retries,
                    delay.as_millis()
                );
                std::thread::sleep(delay);
                delay *= 2;
            }
        }
    }
    Ok(())
}

/// [`read_range`], checked against `expect` when given (`[io] verify`):
/// how every layer and global region is read.
#[allow(clippy::too_many_arguments)]
pub fn read_region(
    reader: &mut dyn ReadAt,
    buf: &mut [u8],
    range: Range<u64>,
    needed: u64,
    policy: RetryPolicy,
    what: &dyn std::fmt::Display,
    path: &Path,
    expect: Option<&Expected>,
) -> Result<()> {
    match expect {
        None => read_range(reader, buf, range, needed, policy, what, path),
        Some(e) => read_range_verified(reader, buf, range, needed, policy, what, path, e),
    }
}

/// As [`read_range`], and check the bytes of `expect.span` against its hash.
/// The hash runs on a second (scoped) thread fed one request-sized piece at
/// a time, so hashing piece k overlaps reading piece k+1: at disk speed the
/// check costs only the hash of the last piece, not a second pass over the
/// layer.
#[allow(clippy::too_many_arguments)]
pub fn read_range_verified(
    reader: &mut dyn ReadAt,
    buf: &mut [u8],
    range: Range<u64>,
    needed: u64,
    policy: RetryPolicy,
    what: &dyn std::fmt::Display,
    path: &Path,
    expect: &Expected,
) -> Result<()> {
    let len = (range.end - range.start) as usize;
    // The span relative to the buffer.
    let lo = (expect.span.start - range.start) as usize;
    let hi = (expect.span.end - range.start) as usize;
    let found = std::thread::scope(|scope| -> Result<u64> {
        let (pieces, arriving) = mpsc::sync_channel::<&[u8]>(4);
        let hasher = std::thread::Builder::new()
            .name("flea-verify".into())
            .spawn_scoped(scope, move || {
                let mut h = Hasher::new();
                for piece in arriving {
                    h.update(piece);
                }
                h.digest()
            })
            .map_err(|e| Error::io(format!("cannot start the checksum thread: {e}")))?;
        let mut at = 0usize;
        for piece in buf[..len].chunks_mut(MAX_REQUEST) {
            if at as u64 >= needed {
                break;
            }
            let piece_len = piece.len();
            let piece_needed = (needed - at as u64).min(piece_len as u64);
            let start = range.start + at as u64;
            read_range(
                reader,
                piece,
                start..start + piece_len as u64,
                piece_needed,
                policy,
                what,
                path,
            )?;
            let (a, b) = (lo.clamp(at, at + piece_len), hi.clamp(at, at + piece_len));
            if a < b {
                let piece: &[u8] = piece;
                // The hasher only stops early if it panicked; join says so.
                let _ = pieces.send(&piece[a - at..b - at]);
            }
            at += piece_len;
        }
        drop(pieces);
        hasher
            .join()
            .map_err(|_| Error::io("the checksum thread panicked"))
    })?;
    if found != expect.hash {
        return Err(mismatch(path, what, expect.hash, found));
    }
    Ok(())
}

/// Names a layer in error messages without allocating on the hot path.
struct LayerName(usize);

impl std::fmt::Display for LayerName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "layer {}", self.0)
    }
}

/// A request to fill `buf` with layer `layer`.
struct Request {
    layer: usize,
    range: Range<u64>,
    needed: u64,
    buf: AlignedBuf,
    /// Check the read against this hash (`[io] verify`).
    expect: Option<Expected>,
}

/// A filled (or failed) slot coming back.
pub struct Done {
    pub layer: usize,
    pub buf: AlignedBuf,
    pub result: Result<()>,
    /// Time the loader spent reading.
    pub read_time: Duration,
}

/// The loader thread and its two channels. Requests are served in order.
pub struct Loader {
    requests: Option<SyncSender<Request>>,
    done: Receiver<Done>,
    thread: Option<JoinHandle<()>>,
}

impl Loader {
    /// Start the thread. `capacity` bounds the requests in flight (the
    /// number of slots), so channel sends never allocate.
    pub fn start(
        mut reader: Box<dyn ReadAt>,
        path: PathBuf,
        policy: RetryPolicy,
        capacity: usize,
    ) -> Result<Loader> {
        let (req_tx, req_rx) = mpsc::sync_channel::<Request>(capacity);
        let (done_tx, done_rx) = mpsc::sync_channel::<Done>(capacity);
        let thread = std::thread::Builder::new()
            .name("flea-loader".into())
            .spawn(move || {
                for mut req in req_rx {
                    let start = Instant::now();
                    let result = read_region(
                        reader.as_mut(),
                        &mut req.buf,
                        req.range.clone(),
                        req.needed,
                        policy,
                        &LayerName(req.layer),
                        &path,
                        req.expect.as_ref(),
                    );
                    let done = Done {
                        layer: req.layer,
                        buf: req.buf,
                        result,
                        read_time: start.elapsed(),
                    };
                    if done_tx.send(done).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| Error::io(format!("cannot start the loader thread: {e}")))?;
        Ok(Loader {
            requests: Some(req_tx),
            done: done_rx,
            thread: Some(thread),
        })
    }

    /// Queue a read of `range` (of which `needed` bytes must arrive) into
    /// `buf`, checked against `expect` when given.
    pub fn request(
        &self,
        layer: usize,
        range: Range<u64>,
        needed: u64,
        buf: AlignedBuf,
        expect: Option<Expected>,
    ) -> Result<()> {
        self.requests
            .as_ref()
            .expect("requests open until drop")
            .send(Request {
                layer,
                range,
                needed,
                buf,
                expect,
            })
            .map_err(|_| Error::io("the loader thread stopped unexpectedly"))
    }

    /// Wait for the next finished request.
    pub fn wait(&self) -> Result<Done> {
        self.done
            .recv()
            .map_err(|_| Error::io("the loader thread stopped unexpectedly"))
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Closing the request channel ends the thread after its current read.
        self.requests = None;
        while self.done.try_recv().is_ok() {}
        if let Some(t) = self.thread.take() {
            // Unblock a thread waiting to send a result, then join.
            let done = &self.done;
            while !t.is_finished() {
                let _ = done.recv_timeout(Duration::from_millis(1));
            }
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves bytes `i as u8` at offset i, failing as scripted.
    struct Scripted {
        len: u64,
        /// Errors to return before succeeding, in order.
        errors: Vec<io::ErrorKind>,
        /// Cap on bytes per successful read (short reads).
        max_read: usize,
        calls: usize,
    }

    impl ReadAt for Scripted {
        fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
            self.calls += 1;
            if !self.errors.is_empty() {
                return Err(io::Error::from(self.errors.remove(0)));
            }
            let n = buf
                .len()
                .min(self.max_read)
                .min(self.len.saturating_sub(offset) as usize);
            for (i, b) in buf[..n].iter_mut().enumerate() {
                *b = (offset as usize + i) as u8;
            }
            Ok(n)
        }
    }

    fn policy(retries: u32) -> RetryPolicy {
        RetryPolicy {
            retries,
            backoff: Duration::from_millis(1),
        }
    }

    fn check(buf: &[u8], start: u64, n: usize) {
        for (i, &b) in buf[..n].iter().enumerate() {
            assert_eq!(b, (start as usize + i) as u8, "byte {i}");
        }
    }

    #[test]
    fn short_reads_are_continued() {
        let mut r = Scripted {
            len: 100_000,
            errors: vec![],
            max_read: 1000,
            calls: 0,
        };
        let mut buf = vec![0u8; 8192];
        read_range(
            &mut r,
            &mut buf,
            4096..12288,
            8192,
            policy(0),
            &"layer 1",
            Path::new("m.gguf"),
        )
        .unwrap();
        check(&buf, 4096, 8192);
        assert_eq!(r.calls, 9);
    }

    #[test]
    fn eintr_and_eio_are_retried_with_backoff() {
        let mut r = Scripted {
            len: 100_000,
            errors: vec![
                io::ErrorKind::Interrupted,
                io::ErrorKind::Other,
                io::ErrorKind::Interrupted,
                io::ErrorKind::Other,
            ],
            max_read: usize::MAX,
            calls: 0,
        };
        let mut buf = vec![0u8; 4096];
        read_range(
            &mut r,
            &mut buf,
            0..4096,
            4096,
            policy(2),
            &"layer 0",
            Path::new("m.gguf"),
        )
        .unwrap();
        check(&buf, 0, 4096);
    }

    #[test]
    fn persistent_failure_names_layer_and_offset() {
        let mut r = Scripted {
            len: 100_000,
            errors: vec![io::ErrorKind::Other; 10],
            max_read: usize::MAX,
            calls: 0,
        };
        let mut buf = vec![0u8; 4096];
        let e = read_range(
            &mut r,
            &mut buf,
            8192..12288,
            4096,
            policy(3),
            &"layer 7",
            Path::new("m.gguf"),
        )
        .unwrap_err();
        assert_eq!(e.kind, crate::ErrorKind::Io);
        assert!(
            e.message.contains("layer 7") && e.message.contains("offset 8192"),
            "{e}"
        );
        assert!(e.message.contains("after 3 retries"), "{e}");
        assert_eq!(r.calls, 4);
    }

    #[test]
    fn truncated_file_is_an_error_not_a_hang() {
        let mut r = Scripted {
            len: 5000,
            errors: vec![],
            max_read: usize::MAX,
            calls: 0,
        };
        let mut buf = vec![0u8; 8192];
        let e = read_range(
            &mut r,
            &mut buf,
            0..8192,
            6000,
            policy(3),
            &"layer 2",
            Path::new("m.gguf"),
        )
        .unwrap_err();
        assert!(e.message.contains("unexpected end of file"), "{e}");
        // An aligned range past EOF is fine when the needed bytes arrived.
        read_range(
            &mut r,
            &mut buf,
            0..8192,
            5000,
            policy(0),
            &"layer 2",
            Path::new("m.gguf"),
        )
        .unwrap();
    }

    #[test]
    fn loader_thread_round_trip() {
        let r = Scripted {
            len: 1 << 20,
            errors: vec![],
            max_read: 3000,
            calls: 0,
        };
        let loader = Loader::start(Box::new(r), "m.gguf".into(), policy(0), 2).unwrap();
        loader
            .request(3, 4096..12288, 8192, AlignedBuf::new(8192), None)
            .unwrap();
        loader
            .request(4, 12288..16384, 4096, AlignedBuf::new(8192), None)
            .unwrap();
        let a = loader.wait().unwrap();
        assert_eq!(a.layer, 3);
        a.result.unwrap();
        check(&a.buf, 4096, 8192);
        let b = loader.wait().unwrap();
        assert_eq!(b.layer, 4);
        check(&b.buf, 12288, 4096);
    }
}
