//! The free list of staging buffers. Bounded by construction: there are exactly as many
//! indices as buffers, and a reader that finds it empty waits (back-pressure).

use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// Free buffer indices.
#[derive(Debug)]
pub(crate) struct Pool {
    free: Mutex<Vec<u32>>,
    returned: Condvar,
}

impl Pool {
    /// A pool holding buffers `0..count`.
    pub(crate) fn new(count: u32) -> Pool {
        Pool {
            free: Mutex::new((0..count).rev().collect()),
            returned: Condvar::new(),
        }
    }

    /// Takes a free buffer, if any.
    pub(crate) fn try_take(&self) -> Option<u32> {
        self.free.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    /// Returns a buffer.
    pub(crate) fn put(&self, index: u32) {
        self.free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(index);
        self.returned.notify_all();
    }

    /// Waits at most `timeout` for a buffer to be free (the caller re-checks cancellation).
    pub(crate) fn wait_free(&self, timeout: Duration) {
        let free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        if free.is_empty() {
            let _ = self
                .returned
                .wait_timeout(free, timeout)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Free buffers now.
    pub(crate) fn available(&self) -> usize {
        self.free.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}
