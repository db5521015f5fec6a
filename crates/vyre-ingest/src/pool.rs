//! The free list of staging buffers. Bounded by construction: there are exactly as many
//! indices as buffers, and a reader that finds it empty waits (back-pressure).

use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// Free buffer indices.
#[derive(Debug)]
pub(crate) struct Pool {
    free: Mutex<Free>,
    returned: Condvar,
}

/// The free list and how many threads wait on it (a return wakes only when someone waits:
/// std's `Condvar::notify_all` makes a futex syscall every time, one per chunk dropped).
#[derive(Debug)]
struct Free {
    list: Vec<u32>,
    waiters: u32,
}

impl Pool {
    /// A pool holding buffers `0..count`.
    pub(crate) fn new(count: u32) -> Pool {
        Pool {
            free: Mutex::new(Free {
                list: (0..count).rev().collect(),
                waiters: 0,
            }),
            returned: Condvar::new(),
        }
    }

    /// Takes a free buffer, if any.
    pub(crate) fn try_take(&self) -> Option<u32> {
        self.free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .list
            .pop()
    }

    /// Returns a buffer.
    pub(crate) fn put(&self, index: u32) {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        free.list.push(index);
        if free.waiters > 0 {
            self.returned.notify_all();
        }
    }

    /// Waits at most `timeout` for a buffer to be free (the caller re-checks cancellation).
    pub(crate) fn wait_free(&self, timeout: Duration) {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        if free.list.is_empty() {
            free.waiters += 1;
            let (mut free, _) = self
                .returned
                .wait_timeout(free, timeout)
                .unwrap_or_else(|e| e.into_inner());
            free.waiters -= 1;
        }
    }

    /// Free buffers now.
    pub(crate) fn available(&self) -> usize {
        self.free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .list
            .len()
    }
}
