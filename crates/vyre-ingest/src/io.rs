//! Reads: the io_uring submitter and the plain (pread) fallback. All unsafe submission
//! code is here. The engine gives each read a buffer it took from the pool and gets it
//! back only from that read's completion: the buffer belongs to the operation until then,
//! and the engine never drops the ring (or lets its thread end) with reads in flight.

use crate::region::Region;
use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::Arc;

/// One read into a staging buffer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ReadOp {
    /// The file.
    pub fd: RawFd,
    /// Its registered-file slot, if registered.
    pub fixed: Option<u32>,
    /// Staging buffer index.
    pub buf: u32,
    /// File offset.
    pub offset: u64,
    /// Bytes to read (at most the block size).
    pub len: u32,
    /// Returned with the completion.
    pub user_data: u64,
}

/// Which engine reads.
#[derive(Debug)]
pub(crate) enum Io {
    Uring(Box<UringIo>),
    Plain(PlainIo),
}

/// io_uring with registered buffers (and registered files where the kernel allows).
pub(crate) struct UringIo {
    ring: io_uring::IoUring,
    region: Arc<Region>,
    fixed_buffers: bool,
    /// Free registered-file slots (empty when file registration is unavailable).
    file_slots: Vec<u32>,
}

impl std::fmt::Debug for UringIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringIo")
            .field("fixed_buffers", &self.fixed_buffers)
            .field("file_slots", &self.file_slots.len())
            .finish()
    }
}

/// The fallback: synchronous `pread` into the same buffers, completions queued locally.
#[derive(Debug)]
pub(crate) struct PlainIo {
    region: Arc<Region>,
    done: VecDeque<(u64, i32)>,
}

impl UringIo {
    /// Sets up a ring of `depth` entries, registers every buffer of `region` and `files`
    /// sparse file slots. Fails when io_uring itself is unavailable; registration
    /// failures only turn the corresponding optimisation off.
    pub(crate) fn new(depth: u32, region: Arc<Region>, files: u32) -> std::io::Result<UringIo> {
        let ring = io_uring::IoUring::builder()
            .setup_cqsize(depth.saturating_mul(2).max(8))
            .build(depth.max(1))?;
        let iovecs = region.iovecs();
        // SAFETY: every iovec points into `region`'s mapping, which this struct keeps alive
        // (an Arc) for as long as the ring exists; the ring is dropped (unregistering them)
        // before the Arc.
        let fixed_buffers = match unsafe { ring.submitter().register_buffers(&iovecs) } {
            Ok(()) => true,
            Err(e) => {
                tracing::info!(error = %e, "io_uring: buffer registration refused (RLIMIT_MEMLOCK?); reading into unregistered buffers");
                false
            }
        };
        let file_slots = match ring.submitter().register_files_sparse(files) {
            Ok(()) => (0..files).rev().collect(),
            Err(e) => {
                tracing::info!(error = %e, "io_uring: file registration refused; using plain descriptors");
                Vec::new()
            }
        };
        Ok(UringIo {
            ring,
            region,
            fixed_buffers,
            file_slots,
        })
    }

    /// Whether buffers are registered (fixed).
    pub(crate) fn fixed_buffers(&self) -> bool {
        self.fixed_buffers
    }
}

impl Io {
    /// Registers an open file; returns its slot, if registration is available.
    pub(crate) fn register_file(&mut self, fd: RawFd) -> Option<u32> {
        let Io::Uring(u) = self else { return None };
        let slot = u.file_slots.pop()?;
        match u.ring.submitter().register_files_update(slot, &[fd]) {
            Ok(_) => Some(slot),
            Err(_) => {
                u.file_slots.push(slot);
                None
            }
        }
    }

    /// Releases a registered-file slot (no read on it may be in flight).
    pub(crate) fn unregister_file(&mut self, slot: u32) {
        if let Io::Uring(u) = self {
            if u.ring
                .submitter()
                .register_files_update(slot, &[-1])
                .is_ok()
            {
                u.file_slots.push(slot);
            }
        }
    }

    /// Queues a read. `op.buf` must have been taken from the pool for this read alone: it
    /// is not touched by anyone else until this read's completion is returned by `wait`.
    pub(crate) fn push(&mut self, op: ReadOp) -> std::io::Result<()> {
        match self {
            Io::Uring(u) => {
                assert!(op.len as usize <= u.region.block());
                let ptr = u.region.ptr(op.buf);
                let entry = match (u.fixed_buffers, op.fixed) {
                    (true, Some(slot)) => io_uring::opcode::ReadFixed::new(
                        io_uring::types::Fixed(slot),
                        ptr,
                        op.len,
                        op.buf as u16,
                    )
                    .offset(op.offset)
                    .build(),
                    (true, None) => io_uring::opcode::ReadFixed::new(
                        io_uring::types::Fd(op.fd),
                        ptr,
                        op.len,
                        op.buf as u16,
                    )
                    .offset(op.offset)
                    .build(),
                    (false, Some(slot)) => {
                        io_uring::opcode::Read::new(io_uring::types::Fixed(slot), ptr, op.len)
                            .offset(op.offset)
                            .build()
                    }
                    (false, None) => {
                        io_uring::opcode::Read::new(io_uring::types::Fd(op.fd), ptr, op.len)
                            .offset(op.offset)
                            .build()
                    }
                }
                .user_data(op.user_data);
                loop {
                    // SAFETY: the entry writes at most `op.len <= block` bytes into buffer
                    // `op.buf` of the region, which the ring's owner keeps mapped until
                    // every completion has arrived; the buffer is owned by this read alone
                    // (taken from the pool, returned only after its completion). The fd
                    // (or registered slot) stays open until the file's last completion.
                    // For ReadFixed, `op.buf` is the index the buffer was registered at.
                    let pushed = unsafe { u.ring.submission().push(&entry) };
                    if pushed.is_ok() {
                        return Ok(());
                    }
                    // Queue full: hand what is queued to the kernel and retry.
                    u.ring.submit()?;
                }
            }
            Io::Plain(p) => {
                let buf = {
                    // SAFETY: the buffer was taken from the pool for this read alone; no
                    // other reference into it exists until its completion is returned.
                    let b = unsafe { p.region.bytes_mut(op.buf) };
                    &mut b[..op.len as usize]
                };
                let res = loop {
                    // SAFETY: `buf` is a valid writable slice of `buf.len()` bytes.
                    let r = unsafe {
                        libc::pread(
                            op.fd,
                            buf.as_mut_ptr().cast(),
                            buf.len(),
                            op.offset as libc::off_t,
                        )
                    };
                    if r >= 0 {
                        break r as i32;
                    }
                    let e = std::io::Error::last_os_error();
                    if e.raw_os_error() != Some(libc::EINTR) {
                        break -e.raw_os_error().unwrap_or(libc::EIO);
                    }
                };
                p.done.push_back((op.user_data, res));
                Ok(())
            }
        }
    }

    /// Submits what is queued and waits for at least `min` completions (0: none); appends
    /// `(user_data, result)` pairs (result: bytes read or a negated errno).
    pub(crate) fn wait(&mut self, min: usize, out: &mut Vec<(u64, i32)>) -> std::io::Result<()> {
        match self {
            Io::Uring(u) => {
                loop {
                    match u.ring.submit_and_wait(min) {
                        Ok(_) => break,
                        Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                        // The completion queue is full: reap below, then submit again.
                        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => break,
                        Err(e) => return Err(e),
                    }
                }
                for cqe in u.ring.completion() {
                    out.push((cqe.user_data(), cqe.result()));
                }
                Ok(())
            }
            Io::Plain(p) => {
                out.extend(p.done.drain(..));
                Ok(())
            }
        }
    }
}

impl PlainIo {
    pub(crate) fn new(region: Arc<Region>) -> PlainIo {
        PlainIo {
            region,
            done: VecDeque::new(),
        }
    }
}

/// Turns O_DIRECT off on an open file (for unaligned reads or files that refuse it).
pub(crate) fn clear_direct(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor we own; F_GETFL/F_SETFL take and return plain ints.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_DIRECT) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
