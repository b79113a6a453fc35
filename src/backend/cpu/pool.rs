//! A persistent pool of worker threads for data-parallel kernels.
//!
//! Thread layout: `threads - 1` workers are spawned once, at construction;
//! the calling thread is worker 0 and works too, so `threads = 1` spawns
//! nothing. A dispatch hands every worker the same job, a borrowed
//! `&dyn Fn(worker_index)`, and returns when all of them have run it. Jobs
//! split their own work (matmuls pull row tiles from an atomic counter).
//!
//! A dispatch allocates nothing and spawns nothing: it writes the job
//! pointer, bumps an epoch counter and (only if some worker has gone to
//! sleep) signals a condition variable. Workers spin on the epoch for a
//! while after each job, since the next matmul usually follows within
//! microseconds; after [`SPIN`] without work they sleep on the condition
//! variable so an idle runtime does not burn a core.

use std::cell::UnsafeCell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker polls for the next job before sleeping. Longer
/// than the gap between two matmuls of a decode step (norms, RoPE,
/// attention over a short context), shorter than anything a person would
/// notice as a busy core.
const SPIN: Duration = Duration::from_micros(200);

/// Polls of pure busy-waiting (a few microseconds) before a waiting thread
/// polls with `yield_now` instead: on a machine with more runnable threads
/// than cores, the thread it waits for may need its core.
const PURE_SPINS: u32 = 128;

/// A job with its lifetime erased; valid while the dispatch that set it runs.
type JobPtr = *const (dyn Fn(usize) + Sync + 'static);

struct Shared {
    /// Bumped once per job (and once to stop); workers run a job when they
    /// see it change.
    epoch: AtomicU64,
    /// The current job. Written only by the dispatcher while no worker is
    /// running (`pending == 0`), read by workers after they see the epoch
    /// that published it.
    job: UnsafeCell<Option<JobPtr>>,
    /// Workers that have not finished the current job.
    pending: AtomicUsize,
    /// Workers asleep (or about to sleep) on `wake`.
    sleepers: AtomicUsize,
    panicked: AtomicBool,
    stop: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is the only non-Sync field; the epoch/pending protocol above
// orders every write to it before the reads of the job it publishes, and
// every read before the next write.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

pub(crate) struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl Pool {
    /// A pool of `threads` participants: the caller plus `threads - 1`
    /// spawned workers.
    pub fn new(threads: usize) -> Pool {
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            job: UnsafeCell::new(None),
            pending: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        // A worker that cannot be started (a container's pid limit, memory
        // for its stack) leaves the pool smaller, not the run dead: results
        // do not depend on the thread count, only speed does.
        let mut workers = Vec::with_capacity(threads.saturating_sub(1));
        for index in 1..threads.max(1) {
            let worker_shared = Arc::clone(&shared);
            match std::thread::Builder::new()
                .name(format!("flea-cpu-{index}"))
                .spawn(move || worker(&worker_shared, index))
            {
                Ok(handle) => workers.push(handle),
                Err(e) => {
                    log::warn!(
                        "started {index} of {threads} CPU threads ({e}); running with {index}"
                    );
                    break;
                }
            }
        }
        Pool { shared, workers }
    }

    /// Participants, the caller included.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Run `job(i)` once for every participant `i` in `0..threads()`, the
    /// caller taking `i = 0`, and return when all are done. A panic in any
    /// participant is re-raised here after the others finish.
    pub fn run(&self, job: &(dyn Fn(usize) + Sync)) {
        if self.workers.is_empty() {
            job(0);
            return;
        }
        let s = &*self.shared;
        // SAFETY: only the lifetime is erased. The pointer is dereferenced
        // only by workers running this dispatch, and we do not return (or
        // unwind) before `pending` says they all finished.
        let ptr: JobPtr = unsafe { std::mem::transmute(job as *const (dyn Fn(usize) + Sync)) };
        // SAFETY: the previous dispatch waited for pending == 0, so no
        // worker is reading `job`.
        unsafe { *s.job.get() = Some(ptr) };
        s.pending.store(self.workers.len(), Ordering::Relaxed);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _guard = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        let mine = panic::catch_unwind(AssertUnwindSafe(|| job(0)));
        let mut spins = 0u32;
        while s.pending.load(Ordering::Acquire) != 0 {
            // Workers may have been descheduled by a busy machine: after a
            // short spin, give them the core.
            if spins < PURE_SPINS {
                spins += 1;
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        if let Err(payload) = mine {
            panic::resume_unwind(payload);
        }
        if s.panicked.swap(false, Ordering::Relaxed) {
            panic!("a CPU worker thread panicked");
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let s = &*self.shared;
        s.stop.store(true, Ordering::SeqCst);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        {
            let _guard = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn worker(s: &Shared, index: usize) {
    let mut seen = 0u64;
    loop {
        wait_for_epoch_change(s, seen);
        seen = s.epoch.load(Ordering::Acquire);
        if s.stop.load(Ordering::Acquire) {
            return;
        }
        // SAFETY: the dispatcher wrote `job` before bumping the epoch we
        // acquired, and keeps it alive until we decrement `pending`.
        let job = unsafe { (*s.job.get()).expect("job set before the epoch bump") };
        // SAFETY: see above; the pointee outlives this call.
        if panic::catch_unwind(AssertUnwindSafe(|| unsafe { (*job)(index) })).is_err() {
            s.panicked.store(true, Ordering::Relaxed);
        }
        s.pending.fetch_sub(1, Ordering::Release);
    }
}

/// Spin, then sleep, until the epoch differs from `seen`.
fn wait_for_epoch_change(s: &Shared, seen: u64) {
    let start = Instant::now();
    let mut spins = 0u32;
    while s.epoch.load(Ordering::Acquire) == seen {
        spins = spins.saturating_add(1);
        if spins < PURE_SPINS {
            std::hint::spin_loop();
            continue;
        }
        if start.elapsed() < SPIN {
            std::thread::yield_now();
            continue;
        }
        let mut guard = s.lock.lock().unwrap_or_else(|e| e.into_inner());
        // Announce the sleep before the final check: the dispatcher bumps
        // the epoch before reading `sleepers` (both SeqCst), so either it
        // sees us and notifies under the lock, or we see its epoch here.
        s.sleepers.fetch_add(1, Ordering::SeqCst);
        while s.epoch.load(Ordering::SeqCst) == seen {
            guard = s.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
        }
        s.sleepers.fetch_sub(1, Ordering::SeqCst);
        return;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_participant_runs_each_job_once() {
        for threads in 1..=4 {
            let pool = Pool::new(threads);
            assert_eq!(pool.threads(), threads);
            for round in 0..200 {
                let hits: Vec<AtomicUsize> = (0..threads).map(|_| AtomicUsize::new(0)).collect();
                pool.run(&|i| {
                    hits[i].fetch_add(round + 1, Ordering::Relaxed);
                });
                for h in &hits {
                    assert_eq!(h.load(Ordering::Relaxed), round + 1);
                }
            }
        }
    }

    #[test]
    fn wakes_sleeping_workers() {
        let pool = Pool::new(3);
        let count = AtomicUsize::new(0);
        for _ in 0..3 {
            std::thread::sleep(SPIN * 3);
            pool.run(&|_| {
                count.fetch_add(1, Ordering::Relaxed);
            });
        }
        assert_eq!(count.load(Ordering::Relaxed), 9);
    }

    #[test]
    fn worker_panic_is_reported_to_the_caller() {
        let pool = Pool::new(2);
        let r = panic::catch_unwind(AssertUnwindSafe(|| {
            pool.run(&|i| assert!(i == 0, "worker {i} fails"));
        }));
        assert!(r.is_err());
        // The pool still works afterwards.
        let count = AtomicUsize::new(0);
        pool.run(&|_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 2);
    }
}
