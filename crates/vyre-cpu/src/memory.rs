//! Buffers and the program table of the cpu backend.
//!
//! Buffers are arrays of atomic words: workers and the host touch them concurrently, and
//! atomics make that sound without `unsafe` (on x86-64 a relaxed load or store is a plain
//! move). Partial-word byte writes use a compare-and-swap loop so that a neighbour's bytes
//! are never clobbered.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use vyre_isa::{Memory, Program};
use vyre_runtime::{BackendError, HostRegion};

/// Where a buffer's words live.
#[derive(Debug)]
enum Words {
    /// Allocated by the backend.
    Owned(Box<[AtomicU32]>),
    /// Host memory registered in place (io_uring ingest buffers): read and written where
    /// it is, no copy.
    Region(Arc<dyn HostRegion>),
}

/// One registered buffer.
#[derive(Debug)]
pub struct CpuBuffer {
    words: Words,
    size: u64,
}

impl CpuBuffer {
    fn new(size: u64) -> CpuBuffer {
        let n = size.div_ceil(4) as usize;
        CpuBuffer {
            words: Words::Owned((0..n).map(|_| AtomicU32::new(0)).collect()),
            size,
        }
    }

    fn region(region: Arc<dyn HostRegion>) -> CpuBuffer {
        let size = region.words().len() as u64 * 4;
        CpuBuffer {
            words: Words::Region(region),
            size,
        }
    }

    #[inline]
    fn words(&self) -> &[AtomicU32] {
        match &self.words {
            Words::Owned(w) => w,
            Words::Region(r) => r.words(),
        }
    }

    fn read(&self, off: u64, dst: &mut [u8]) {
        let mut i = 0usize;
        let mut at = off;
        if at % 4 == 0 && dst.len() >= 4 {
            let first = (at / 4) as usize;
            let n = dst.len() / 4;
            let words = &self.words()[first..first + n];
            for (w, b) in words.iter().zip(dst.chunks_exact_mut(4)) {
                b.copy_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
            }
            i = n * 4;
            at += i as u64;
        }
        while i < dst.len() {
            let word = self.words()[(at / 4) as usize]
                .load(Ordering::Relaxed)
                .to_le_bytes();
            let shift = (at % 4) as usize;
            let n = (4 - shift).min(dst.len() - i);
            dst[i..i + n].copy_from_slice(&word[shift..shift + n]);
            i += n;
            at += n as u64;
        }
    }

    fn write(&self, off: u64, src: &[u8]) {
        let mut i = 0usize;
        let mut at = off;
        // Whole words in a tight loop (a scan copies every file byte in through here),
        // partial words at either end below.
        if at % 4 == 0 && src.len() >= 4 {
            let first = (at / 4) as usize;
            let words = &self.words()[first..first + src.len() / 4];
            for (w, b) in words.iter().zip(src.chunks_exact(4)) {
                w.store(
                    u32::from_le_bytes(b.try_into().expect("4 bytes")),
                    Ordering::Relaxed,
                );
            }
            i = src.len() / 4 * 4;
            at += i as u64;
        }
        while i < src.len() {
            let w = &self.words()[(at / 4) as usize];
            let shift = (at % 4) as usize;
            let n = (4 - shift).min(src.len() - i);
            if n == 4 {
                w.store(
                    u32::from_le_bytes(src[i..i + 4].try_into().expect("4 bytes")),
                    Ordering::Relaxed,
                );
            } else {
                let _ = w.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                    let mut b = old.to_le_bytes();
                    b[shift..shift + n].copy_from_slice(&src[i..i + n]);
                    Some(u32::from_le_bytes(b))
                });
            }
            i += n;
            at += n as u64;
        }
    }
}

/// Handles start at 1 so that a zero handle (an unset argument) is always a fault.
const FIRST_ID: u32 = 1;

/// An append-only table: lookups are lock-free, entries live until the backend is dropped.
#[derive(Debug)]
pub struct Table<T> {
    entries: Box<[OnceLock<Arc<T>>]>,
    next: AtomicU32,
    what: &'static str,
}

impl<T> Table<T> {
    /// A table of at most `limit` entries.
    pub fn new(limit: u32, what: &'static str) -> Table<T> {
        Table {
            entries: (0..limit).map(|_| OnceLock::new()).collect(),
            next: AtomicU32::new(FIRST_ID),
            what,
        }
    }

    /// Adds an entry; returns its id.
    pub fn insert(&self, value: T) -> Result<u32, BackendError> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let index = (id - FIRST_ID) as usize;
        match self.entries.get(index) {
            Some(cell) => {
                // Ids are unique, so this cell is empty.
                let _ = cell.set(Arc::new(value));
                Ok(id)
            }
            None => {
                self.next.fetch_sub(1, Ordering::Relaxed);
                Err(BackendError::Limit {
                    what: self.what,
                    requested: u64::from(id - FIRST_ID) + 1,
                    limit: self.entries.len() as u64,
                })
            }
        }
    }

    /// The entry with this id.
    pub fn get(&self, id: u32) -> Option<&Arc<T>> {
        self.entries.get(id.checked_sub(FIRST_ID)? as usize)?.get()
    }
}

/// The registered buffers.
pub type Buffers = Table<CpuBuffer>;
/// The loaded programs.
pub type Programs = Table<Program>;

impl Buffers {
    /// Registers a zero-filled buffer.
    pub fn create(&self, size: u64, max: u64) -> Result<u32, BackendError> {
        BackendError::check_limit("buffer size in bytes", size, max)?;
        self.insert(CpuBuffer::new(size))
    }

    /// Registers host memory used in place.
    pub fn register_region(
        &self,
        region: Arc<dyn HostRegion>,
        max: u64,
    ) -> Result<u32, BackendError> {
        let size = region.words().len() as u64 * 4;
        BackendError::check_limit("host region size in bytes", size, max)?;
        self.insert(CpuBuffer::region(region))
    }

    fn checked(&self, handle: u32, offset: u64, len: u64) -> Result<&CpuBuffer, BackendError> {
        let b = self.get(handle).ok_or(BackendError::BadHandle { handle })?;
        BackendError::check_range(handle, offset, len, b.size)?;
        Ok(b)
    }

    /// Host write.
    pub fn host_write(&self, handle: u32, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        self.checked(handle, offset, data.len() as u64)?
            .write(offset, data);
        Ok(())
    }

    /// Host read.
    pub fn host_read(&self, handle: u32, offset: u64, len: u64) -> Result<Vec<u8>, BackendError> {
        let b = self.checked(handle, offset, len)?;
        let mut out = vec![0u8; len as usize];
        b.read(offset, &mut out);
        Ok(out)
    }

    fn buf(&self, handle: u32) -> &CpuBuffer {
        self.get(handle)
            .expect("the interpreter checks handles before access")
    }
}

impl Memory for Buffers {
    fn size(&self, handle: u32) -> Option<u64> {
        self.get(handle).map(|b| b.size)
    }
    fn load_u32(&self, handle: u32, off: u64) -> u32 {
        self.buf(handle).words()[(off / 4) as usize].load(Ordering::Relaxed)
    }
    fn store_u32(&self, handle: u32, off: u64, value: u32) {
        self.buf(handle).words()[(off / 4) as usize].store(value, Ordering::Relaxed)
    }
    fn fetch_add_u32(&self, handle: u32, off: u64, value: u32) -> u32 {
        self.buf(handle).words()[(off / 4) as usize].fetch_add(value, Ordering::Relaxed)
    }
    fn cas_u32(&self, handle: u32, off: u64, expected: u32, new: u32) -> u32 {
        match self.buf(handle).words()[(off / 4) as usize].compare_exchange(
            expected,
            new,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(v) | Err(v) => v,
        }
    }
    fn read(&self, handle: u32, off: u64, dst: &mut [u8]) {
        self.buf(handle).read(off, dst)
    }
    fn write(&self, handle: u32, off: u64, src: &[u8]) {
        self.buf(handle).write(off, src)
    }
    fn words(&self, handle: u32) -> Option<&[AtomicU32]> {
        self.get(handle).map(|b| b.words())
    }
}
