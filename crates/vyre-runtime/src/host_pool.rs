//! The host pool: the threads that share the slot writes and completion reads of large batches
//! (`Config::host_threads`), a rayon pool kept awake between batches.
//!
//! Handing work to rayon threads that have gone to sleep costs a wake-up each, and on the H100
//! machine's host (a 16-core VM) those took 20-60 µs for a pool of 8: traced, the first thread
//! of an overlapped `run_batch` started 20 µs after the hand-over and the last 60 µs after,
//! while the device runs the whole 65,536-slot batch in about 170 µs. So after a batch each
//! thread spins for [`Config::host_spin`](crate::Config::host_spin) (or until the pool's next
//! use), instead of going to sleep within a few tens of microseconds as rayon's idle threads
//! do; and [`HostPool::run`] waits for the threads by spinning, never on a sleeping latch.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A rayon pool whose threads are kept spinning for a while after each batch.
#[derive(Debug)]
pub(crate) struct HostPool {
    pool: rayon::ThreadPool,
    /// Bumped by every use: a thread kept spinning returns to rayon's queue when it changes.
    uses: Arc<AtomicU64>,
    spin: Duration,
}

impl HostPool {
    /// A pool of `threads` threads named `vyre-host-N`, each kept spinning for `spin` after a
    /// batch.
    pub(crate) fn new(
        threads: usize,
        spin: Duration,
    ) -> Result<HostPool, rayon::ThreadPoolBuildError> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("vyre-host-{i}"))
            .build()?;
        Ok(HostPool {
            pool,
            uses: Arc::new(AtomicU64::new(0)),
            spin,
        })
    }

    /// The rayon pool, for one use: threads kept spinning return to its queue, where the use's
    /// jobs find them at once.
    pub(crate) fn get(&self) -> &rayon::ThreadPool {
        self.uses.fetch_add(1, Ordering::AcqRel);
        &self.pool
    }

    /// Runs `work` on every thread of the pool and `main` on the calling thread, and returns
    /// `main`'s result once all have finished. The calling thread waits by spinning (rayon's
    /// scope would put it to sleep on a latch, and waking it costs as much as waking a thread
    /// of the pool); `work` must return once `main` has (every caller's `work` watches a flag
    /// that `main` sets). Afterwards the threads are kept spinning (see the module).
    pub(crate) fn run<R>(&self, work: impl Fn() + Sync, main: impl FnOnce() -> R) -> R {
        let pool = self.get();
        let threads = pool.current_num_threads();
        let finished = AtomicUsize::new(0);
        let result = pool.in_place_scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|_| {
                    // Counted however `work` ends: a panic reaches the caller when the scope
                    // ends, not a wait that never does.
                    let _done = CountOnDrop(&finished);
                    work();
                });
            }
            let result = main();
            while finished.load(Ordering::Acquire) < threads {
                std::hint::spin_loop();
            }
            result
        });
        self.keep_spinning();
        result
    }

    /// Keeps every thread of the pool spinning for `spin`, or until the pool's next use.
    fn keep_spinning(&self) {
        if self.spin.is_zero() {
            return;
        }
        let generation = self.uses.load(Ordering::Acquire);
        let until = Instant::now() + self.spin;
        for _ in 0..self.pool.current_num_threads() {
            let uses = self.uses.clone();
            self.pool.spawn(move || {
                let mut spins = 0u32;
                while uses.load(Ordering::Acquire) == generation {
                    std::hint::spin_loop();
                    spins = spins.wrapping_add(1);
                    if spins % 256 == 0 && Instant::now() >= until {
                        return;
                    }
                }
            });
        }
    }
}

/// Counts one when dropped.
struct CountOnDrop<'a>(&'a AtomicUsize);

impl Drop for CountOnDrop<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Release);
    }
}

/// A value on cache lines of its own (128 bytes: Intel's adjacent-line prefetcher fetches lines
/// in pairs), for words that threads poll while others update words beside them.
#[repr(align(128))]
#[derive(Debug, Default)]
pub(crate) struct Padded<T>(pub(crate) T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}
