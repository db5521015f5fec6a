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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    /// Runs `pool.run` with a `work` that waits for `main`, which waits (at most 10 s) until
    /// every thread's `work` has started: returns how many had started, how many `work`
    /// calls there were, and `main`'s result.
    fn run_all(pool: &HostPool) -> (usize, usize, u32) {
        let (started, calls, go) = (
            AtomicUsize::new(0),
            AtomicUsize::new(0),
            AtomicBool::new(false),
        );
        let threads = pool.pool.current_num_threads();
        let result = pool.run(
            || {
                calls.fetch_add(1, Ordering::AcqRel);
                started.fetch_add(1, Ordering::AcqRel);
                while !go.load(Ordering::Acquire) {
                    std::hint::spin_loop();
                }
            },
            || {
                let deadline = Instant::now() + Duration::from_secs(10);
                while started.load(Ordering::Acquire) < threads && Instant::now() < deadline {
                    std::hint::spin_loop();
                }
                let seen = started.load(Ordering::Acquire);
                go.store(true, Ordering::Release);
                (seen, 7u32)
            },
        );
        // Every `work` has returned by now: none may still be counting.
        (result.0, calls.load(Ordering::Acquire), result.1)
    }

    #[test]
    fn run_gives_work_to_every_thread_at_once_and_returns_after_all_of_it() {
        for spin in [Duration::ZERO, Duration::from_millis(5)] {
            let pool = HostPool::new(4, spin).unwrap();
            for _ in 0..3 {
                // All four `work` calls were running at the same time (each waits for `main`,
                // which waited for all four): four threads, not one after another.
                assert_eq!(run_all(&pool), (4, 4, 7), "spin {spin:?}");
            }
        }
    }

    #[test]
    fn the_next_use_stops_threads_kept_spinning() {
        // Kept spinning for a minute, the threads would hold the next use's jobs that long if
        // the use did not stop them.
        let pool = HostPool::new(3, Duration::from_secs(60)).unwrap();
        assert_eq!(run_all(&pool), (3, 3, 7));
        let t = Instant::now();
        assert_eq!(run_all(&pool), (3, 3, 7));
        assert_eq!(pool.get().install(|| 5), 5);
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the second use waited {:?} for spinning threads",
            t.elapsed()
        );
    }

    #[test]
    fn a_panic_in_work_reaches_the_caller_and_the_pool_still_works() {
        let pool = HostPool::new(2, Duration::from_millis(1)).unwrap();
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.run(|| panic!("work failed"), || 1)
        }));
        assert!(caught.is_err(), "the panic was lost");
        assert_eq!(run_all(&pool), (2, 2, 7));
    }
}
