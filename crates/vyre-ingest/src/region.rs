//! The staging region: one anonymous, page-aligned mapping carved into equal buffers.
//!
//! Ownership rule (the reason the `unsafe` below is sound): a buffer index is held by
//! exactly one owner at a time — the free pool, one in-flight read (the kernel or the
//! fallback reader writes into it), or one delivered [`crate::Chunk`] (which only reads).
//! The engine hands an index to a read only when it takes it from the pool, and a chunk
//! gets it only after that read's completion was observed. So bytes are never written and
//! read at the same time through two owners.

use std::sync::atomic::AtomicU32;
use vyre_runtime::HostRegion;

/// The mapping.
pub(crate) struct Region {
    base: *mut u8,
    len: usize,
    block: usize,
    count: usize,
}

// SAFETY: `Region` owns its mapping exclusively (nothing else maps or unmaps it) and
// exposes it only through methods whose callers follow the ownership rule in the module
// docs; the raw pointer is just an address, valid from any thread.
unsafe impl Send for Region {}
// SAFETY: as above; shared access is either atomic words (`HostRegion::words`) or byte
// views of buffers that no one writes while the view exists (the ownership rule).
unsafe impl Sync for Region {}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region")
            .field("len", &self.len)
            .field("block", &self.block)
            .field("count", &self.count)
            .finish()
    }
}

impl Region {
    /// Maps `count` buffers of `block` bytes (`block` a multiple of the page size).
    pub(crate) fn new(block: usize, count: usize) -> std::io::Result<Region> {
        let len = block
            .checked_mul(count)
            .filter(|&l| l > 0)
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: an anonymous private mapping at an address the kernel chooses aliases no
        // Rust object; the result is checked for MAP_FAILED before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        // Transparent huge pages make faulting in and pinning (buffer registration) the
        // region a few hundred 2 MiB pages instead of thousands of 4 KiB ones; a refusal
        // (THP disabled) only costs that optimisation.
        // SAFETY: advice on the mapping just created, over its exact range.
        let _ = unsafe { libc::madvise(p, len, libc::MADV_HUGEPAGE) };
        Ok(Region {
            base: p.cast(),
            len,
            block,
            count,
        })
    }

    /// Bytes per buffer.
    pub(crate) fn block(&self) -> usize {
        self.block
    }

    /// Address of buffer `index` (page-aligned, `block` bytes long).
    pub(crate) fn ptr(&self, index: u32) -> *mut u8 {
        assert!((index as usize) < self.count, "buffer index out of range");
        // SAFETY: index < count, so the offset stays inside the mapping of
        // `block * count` bytes.
        unsafe { self.base.add(index as usize * self.block) }
    }

    /// `(address, length)` of every buffer, for io_uring registration.
    pub(crate) fn iovecs(&self) -> Vec<libc::iovec> {
        (0..self.count as u32)
            .map(|i| libc::iovec {
                iov_base: self.ptr(i).cast(),
                iov_len: self.block,
            })
            .collect()
    }

    /// The first `len` bytes of buffer `index`.
    ///
    /// # Safety
    /// The caller owns buffer `index` as a reader (a delivered chunk): its read has
    /// completed and nothing writes it until the returned borrow ends.
    pub(crate) unsafe fn bytes(&self, index: u32, len: usize) -> &[u8] {
        assert!(len <= self.block, "length beyond the buffer");
        // SAFETY: the range is inside the mapping (index checked by `ptr`, len <= block),
        // the mapping lives as long as `self`, and the caller guarantees no writer.
        unsafe { std::slice::from_raw_parts(self.ptr(index), len) }
    }

    /// Buffer `index`, writable, for the fallback reader.
    ///
    /// # Safety
    /// The caller owns buffer `index` as its one writer (taken from the pool for a read
    /// that has not completed) and no other reference into it exists.
    #[allow(
        clippy::mut_from_ref,
        reason = "exclusive by the buffer ownership rule"
    )]
    pub(crate) unsafe fn bytes_mut(&self, index: u32) -> &mut [u8] {
        // SAFETY: in bounds as in `bytes`; exclusivity is the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr(index), self.block) }
    }
}

impl HostRegion for Region {
    fn words(&self) -> &[AtomicU32] {
        // SAFETY: the mapping is page-aligned (so 4-byte aligned), `len` is a multiple of
        // the page size (so of 4), and it stays mapped while `self` lives. AtomicU32 has the
        // size and alignment of u32 and every bit pattern is valid. Viewing the bytes as
        // atomics is sound because every access through this view is atomic; the only
        // non-atomic accesses are the in-flight read's write (by the kernel or the fallback
        // reader) and a delivered chunk's `bytes()`, and by the ownership rule a buffer is
        // handed to slots (through GpuStream) only while it is a delivered chunk, never
        // while a read is writing it. Slots must not store into the region (documented on
        // `GpuStream`): a store racing a chunk's `bytes()` would be a data race.
        unsafe { std::slice::from_raw_parts(self.base.cast::<AtomicU32>(), self.len / 4) }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` came from a successful mmap and are unmapped once, here;
        // the last `Arc<Region>` is gone, so no chunk, backend or in-flight read (the
        // engine joins its thread only after every completion arrived, and holds an Arc)
        // uses the memory any more.
        unsafe {
            libc::munmap(self.base.cast(), self.len);
        }
    }
}
