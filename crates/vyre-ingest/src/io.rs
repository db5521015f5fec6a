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

/// What the reader needs to know of an open file.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Stat {
    /// `st_mode & S_IFMT`.
    pub kind: libc::mode_t,
    /// Bytes.
    pub size: u64,
}

/// `fstat(2)` on an open descriptor (cheaper than std's `metadata`, a `statx` with an
/// empty path asking for more fields).
pub(crate) fn fstat(fd: RawFd) -> std::io::Result<Stat> {
    // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid, writable `stat`; fstat writes only into it.
    if unsafe { libc::fstat(fd, &mut st) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Stat {
        kind: st.st_mode & libc::S_IFMT,
        size: st.st_size as u64,
    })
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

/// Where a [`BatchRing`] read lands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Landing {
    /// Caller memory (given to [`BatchRing::push_into`]).
    Caller,
    /// One of the ring's own bounce buffers.
    Bounce(u32),
}

/// State of one bounce buffer: the ring hands out bytes only of a buffer whose read has
/// completed, and reuses only one given back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BounceState {
    Free,
    InFlight,
    Completed,
}

/// One completion of a [`BatchRing`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct BatchDone {
    /// The caller's tag.
    pub tag: u64,
    /// Bytes read, or a negated errno.
    pub result: i32,
    /// The bounce buffer the bytes are in (read them with [`BatchRing::bounce_bytes`], then
    /// give it back with [`BatchRing::put_bounce`]).
    pub bounce: Option<u32>,
}

/// The io_uring side of [`crate::UringIoService`]: a ring of `depth` entries with as many
/// page-aligned bounce buffers (registered where RLIMIT_MEMLOCK allows). Reads go either
/// into a bounce buffer (safe: the ring owns those and tracks each one's state) or into
/// caller memory ([`BatchRing::push_into`], whose contract makes the caller keep that
/// memory alive and untouched until the completion arrives).
pub(crate) struct BatchRing {
    // Declared before `bounce`: the ring (and with it the buffer registration) goes first.
    ring: io_uring::IoUring,
    bounce: Arc<Region>,
    fixed: bool,
    state: Vec<BounceState>,
    free: Vec<u32>,
    /// In flight, by ring user_data: (tag, landing).
    ops: Vec<Option<(u64, Landing)>>,
    free_ops: Vec<u32>,
    inflight: u32,
    caller_inflight: u32,
}

impl std::fmt::Debug for BatchRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchRing")
            .field("depth", &self.ops.len())
            .field("block", &self.bounce.block())
            .field("fixed", &self.fixed)
            .field("inflight", &self.inflight)
            .finish()
    }
}

impl BatchRing {
    /// A ring of `depth` entries and `depth` bounce buffers of `block` bytes (a multiple
    /// of 4096). Fails when io_uring or the mapping is unavailable; a refused buffer
    /// registration only turns fixed buffers off.
    pub(crate) fn new(depth: u32, block: usize) -> std::io::Result<BatchRing> {
        let depth = depth.max(1);
        let ring = io_uring::IoUring::builder()
            .setup_cqsize(depth.saturating_mul(2).max(8))
            .build(depth)?;
        let bounce = Arc::new(Region::new(block, depth as usize)?);
        let iovecs = bounce.iovecs();
        // SAFETY: every iovec points into `bounce`, which lives in this struct and is
        // dropped after `ring` (field order), so the registration never outlives it.
        let fixed = match unsafe { ring.submitter().register_buffers(&iovecs) } {
            Ok(()) => true,
            Err(e) => {
                tracing::info!(error = %e, "io_uring service: bounce buffer registration refused (RLIMIT_MEMLOCK?); reading into unregistered bounce buffers");
                false
            }
        };
        Ok(BatchRing {
            ring,
            bounce,
            fixed,
            state: vec![BounceState::Free; depth as usize],
            free: (0..depth).rev().collect(),
            ops: vec![None; depth as usize],
            free_ops: (0..depth).rev().collect(),
            inflight: 0,
            caller_inflight: 0,
        })
    }

    /// Bytes per bounce buffer.
    pub(crate) fn block(&self) -> usize {
        self.bounce.block()
    }

    /// Whether the bounce buffers are registered.
    pub(crate) fn fixed_buffers(&self) -> bool {
        self.fixed
    }

    /// Reads in flight.
    pub(crate) fn inflight(&self) -> u32 {
        self.inflight
    }

    /// Reads in flight into caller memory.
    pub(crate) fn caller_inflight(&self) -> u32 {
        self.caller_inflight
    }

    /// Whether another read can be queued now (an entry and a bounce buffer are free).
    pub(crate) fn has_room(&self) -> bool {
        !self.free_ops.is_empty() && !self.free.is_empty()
    }

    fn queue(&mut self, entry: io_uring::squeue::Entry, tag: u64, landing: Landing) {
        let slot = self.free_ops.pop().expect("has_room checked by the caller");
        self.ops[slot as usize] = Some((tag, landing));
        let entry = entry.user_data(slot as u64);
        self.inflight += 1;
        if landing == Landing::Caller {
            self.caller_inflight += 1;
        }
        loop {
            // SAFETY: the entry's target memory is either a bounce buffer marked InFlight
            // (not handed out again until its completion is reaped: `bounce_bytes` and
            // `put_bounce` check the state) or caller memory under `push_into`'s contract;
            // the descriptor stays open until the completion (callers keep the `File`).
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return;
            }
            // The submission queue is full of unsubmitted entries: hand them over. Errors
            // surface from the next `wait`.
            if self.ring.submit().is_err() {
                std::thread::yield_now();
            }
        }
    }

    /// Queues a read of `len` bytes (at most [`BatchRing::block`]) at `offset` of `fd` into
    /// a free bounce buffer; returns it. Panics without room ([`BatchRing::has_room`]).
    pub(crate) fn push_bounce(&mut self, fd: RawFd, offset: u64, len: u32, tag: u64) -> u32 {
        assert!(
            len as usize <= self.bounce.block(),
            "read beyond a bounce buffer"
        );
        let buf = self.free.pop().expect("has_room checked by the caller");
        self.state[buf as usize] = BounceState::InFlight;
        let ptr = self.bounce.ptr(buf);
        let entry = if self.fixed {
            io_uring::opcode::ReadFixed::new(io_uring::types::Fd(fd), ptr, len, buf as u16)
                .offset(offset)
                .build()
        } else {
            io_uring::opcode::Read::new(io_uring::types::Fd(fd), ptr, len)
                .offset(offset)
                .build()
        };
        self.queue(entry, tag, Landing::Bounce(buf));
        buf
    }

    /// Queues a read of `len` bytes at `offset` of `fd` straight into `dst`.
    ///
    /// # Safety
    /// `dst..dst + len` must be valid for writes, and neither read, written, moved nor freed
    /// by anyone until this read's completion has been returned by [`BatchRing::wait`]: the
    /// kernel writes it until then. `fd` must stay open until then.
    pub(crate) unsafe fn push_into(
        &mut self,
        fd: RawFd,
        offset: u64,
        dst: *mut u8,
        len: u32,
        tag: u64,
    ) {
        assert!(!self.free_ops.is_empty(), "has_room checked by the caller");
        let entry = io_uring::opcode::Read::new(io_uring::types::Fd(fd), dst, len)
            .offset(offset)
            .build();
        self.queue(entry, tag, Landing::Caller);
    }

    /// Submits what is queued and waits for at least one completion (none when nothing is
    /// in flight); appends every completion there is. An error leaves the reads in flight.
    pub(crate) fn wait(&mut self, out: &mut Vec<BatchDone>) -> std::io::Result<()> {
        if self.inflight == 0 {
            return Ok(());
        }
        let mut transient = 0u32;
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => break,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                // Completion queue full or the kernel short of memory for a moment: reap
                // what is there (if anything), else back off briefly and retry.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY) | Some(libc::EAGAIN)) => {
                    if !self.ring.completion().is_empty() {
                        break;
                    }
                    transient += 1;
                    if transient > 10_000 {
                        return Err(e);
                    }
                    std::thread::sleep(std::time::Duration::from_micros(100));
                }
                Err(e) => return Err(e),
            }
        }
        let cqes: Vec<io_uring::cqueue::Entry> = self.ring.completion().collect();
        for cqe in cqes {
            let slot = cqe.user_data() as usize;
            let Some((tag, landing)) = self.ops.get_mut(slot).and_then(Option::take) else {
                tracing::error!(
                    user_data = slot,
                    "io_uring service: completion of an unknown read; ignored"
                );
                continue;
            };
            self.free_ops.push(slot as u32);
            self.inflight -= 1;
            let bounce = match landing {
                Landing::Caller => {
                    self.caller_inflight -= 1;
                    None
                }
                Landing::Bounce(b) => {
                    self.state[b as usize] = BounceState::Completed;
                    Some(b)
                }
            };
            out.push(BatchDone {
                tag,
                result: cqe.result(),
                bounce,
            });
        }
        Ok(())
    }

    /// The first `len` bytes of bounce buffer `buf`, whose read has completed.
    pub(crate) fn bounce_bytes(&self, buf: u32, len: usize) -> &[u8] {
        assert_eq!(
            self.state[buf as usize],
            BounceState::Completed,
            "bounce buffer read before its completion"
        );
        // SAFETY: the buffer's read has completed (state Completed) and it is not queued
        // again until `put_bounce` (which needs `&mut self`, so this borrow has ended).
        unsafe { self.bounce.bytes(buf, len) }
    }

    /// Gives a completed bounce buffer back.
    pub(crate) fn put_bounce(&mut self, buf: u32) {
        assert_eq!(self.state[buf as usize], BounceState::Completed);
        self.state[buf as usize] = BounceState::Free;
        self.free.push(buf);
    }
}

impl Drop for BatchRing {
    fn drop(&mut self) {
        // Bounce buffers belong to their reads until the completions arrive: wait for them
        // (caller memory is the caller's to wait for, by `push_into`'s contract). If the
        // ring cannot be waited on, the mapping is leaked rather than unmapped under a read.
        let mut sink = Vec::new();
        while self.inflight > 0 {
            sink.clear();
            if let Err(e) = self.wait(&mut sink) {
                tracing::error!(error = %e, inflight = self.inflight, "io_uring service: cannot wait for reads in flight; leaking the bounce buffers");
                std::mem::forget(self.bounce.clone());
                return;
            }
        }
    }
}
