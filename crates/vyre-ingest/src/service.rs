//! [`UringIoService`]: IO_READ's reads (the megakernel's host I/O thread,
//! [`vyre_runtime::IoService`]) on io_uring. Each batch is cut into pieces of at most one
//! bounce buffer, submitted together up to the queue depth and reaped together. A piece
//! at a 4 KiB-aligned offset of a file that takes O_DIRECT (reopened through
//! `/proc/self/fd`) is read O_DIRECT: straight into the destination when it is page-aligned
//! and at least a page is left, else into an aligned bounce buffer and copied. Other pieces
//! (unaligned offsets, files under a page, files or filesystems that refuse O_DIRECT) are
//! read buffered into the destination. Short reads are continued until the file ends (the
//! size seen by one `fstat` per file and batch, or a read of 0 bytes) or a read fails.
//!
//! The submission `unsafe` is in `io.rs` ([`crate::io::BatchRing`]); this module's only
//! `unsafe` lends a piece of the caller's destination to a read
//! ([`crate::io::BatchRing::push_into`]), a contract it keeps because a batch returns only
//! when no read is in flight (or the process aborts when the ring cannot be waited on).

use crate::io::{BatchDone, BatchRing};
use crate::Direct;
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use vyre_runtime::{FileRead, IoService, PreadService};

/// Alignment of O_DIRECT offsets, lengths and memory.
const ALIGN: usize = 4096;
/// Files smaller than this are read buffered (O_DIRECT buys nothing for one short read).
const TINY: u64 = ALIGN as u64;
/// Most files whose O_DIRECT descriptors are kept between batches.
const MAX_DIRECT_FILES: usize = 256;
/// Offsets from here on are past the end of every file (the OS takes signed offsets).
const MAX_OFFSET: u64 = i64::MAX as u64;

/// Settings of a [`UringIoService`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UringServiceConfig {
    /// Entries of the service's own ring: most reads in flight (and bounce buffers).
    pub queue_depth: u32,
    /// Bytes per piece and per bounce buffer (a non-zero multiple of 4096, at most 64 MiB).
    pub block_size: usize,
    /// O_DIRECT where alignment allows it, or never.
    pub direct: Direct,
}

impl Default for UringServiceConfig {
    fn default() -> UringServiceConfig {
        UringServiceConfig {
            queue_depth: 32,
            block_size: 1 << 20,
            direct: Direct::Auto,
        }
    }
}

/// What a [`UringIoService`] did so far (for tests and benchmarks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UringServiceStats {
    /// Batches served.
    pub batches: u64,
    /// O_DIRECT reads straight into the destination.
    pub direct_reads: u64,
    /// O_DIRECT reads through a bounce buffer (then copied).
    pub bounce_reads: u64,
    /// Buffered reads.
    pub buffered_reads: u64,
    /// Reads that came back short before the end of the file and were continued.
    pub continued_reads: u64,
    /// Files whose O_DIRECT reopen or O_DIRECT read was refused (read buffered since).
    pub direct_refused: u64,
}

#[derive(Debug, Default)]
struct Counters {
    batches: AtomicU64,
    direct_reads: AtomicU64,
    bounce_reads: AtomicU64,
    buffered_reads: AtomicU64,
    continued_reads: AtomicU64,
    direct_refused: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// The service's mutable half (the I/O thread is its only user; the lock is uncontended).
#[derive(Debug)]
struct Inner {
    /// `None` once the ring failed: later batches read with `pread`.
    ring: Option<BatchRing>,
    /// O_DIRECT descriptors by (device, inode); `None`: that file refuses O_DIRECT.
    direct_files: HashMap<(u64, u64), Option<File>>,
}

/// IO_READ on io_uring (see the module docs). Build one with [`UringIoService::new`] and
/// hand it to [`vyre_runtime::Megakernel::set_io_service`], or take [`io_service`], which
/// falls back to positional reads where io_uring is unavailable.
#[derive(Debug)]
pub struct UringIoService {
    inner: Mutex<Inner>,
    config: UringServiceConfig,
    fixed_buffers: bool,
    counters: Counters,
}

impl UringIoService {
    /// Sets up the service's ring and bounce buffers. Fails when io_uring is unavailable
    /// (`io_uring_setup` refused: an old kernel, seccomp, `kernel.io_uring_disabled`) or
    /// the settings are out of range.
    pub fn new(config: UringServiceConfig) -> io::Result<UringIoService> {
        let c = &config;
        if c.queue_depth == 0 || c.queue_depth > 4096 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "io_uring service: queue_depth {} must be 1..=4096",
                    c.queue_depth
                ),
            ));
        }
        if c.block_size == 0 || c.block_size % ALIGN != 0 || c.block_size > 64 << 20 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "io_uring service: block_size {} must be a non-zero multiple of 4096, at most 64 MiB",
                    c.block_size
                ),
            ));
        }
        let ring = BatchRing::new(c.queue_depth, c.block_size)?;
        let fixed_buffers = ring.fixed_buffers();
        tracing::info!(
            queue_depth = c.queue_depth,
            block_size = c.block_size,
            fixed_buffers,
            direct = ?c.direct,
            "io_uring I/O service ready"
        );
        Ok(UringIoService {
            inner: Mutex::new(Inner {
                ring: Some(ring),
                direct_files: HashMap::new(),
            }),
            config,
            fixed_buffers,
            counters: Counters::default(),
        })
    }

    /// Its settings.
    pub fn config(&self) -> UringServiceConfig {
        self.config
    }

    /// Whether the bounce buffers are registered with the ring (fixed buffers).
    pub fn fixed_buffers(&self) -> bool {
        self.fixed_buffers
    }

    /// Counters so far.
    pub fn stats(&self) -> UringServiceStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let c = &self.counters;
        UringServiceStats {
            batches: g(&c.batches),
            direct_reads: g(&c.direct_reads),
            bounce_reads: g(&c.bounce_reads),
            buffered_reads: g(&c.buffered_reads),
            continued_reads: g(&c.continued_reads),
            direct_refused: g(&c.direct_refused),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic under the lock leaves no read in flight (a batch drains before it
        // returns or aborts), so the state is usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// IO_READ's service for this process: io_uring ([`UringIoService`] with default
/// settings) or, after one warning, positional reads ([`PreadService`]) where io_uring is
/// unavailable or `VYRE_INGEST_NO_URING=1` asks for that.
pub fn io_service() -> Arc<dyn IoService> {
    io_service_with(UringServiceConfig::default())
}

/// [`io_service`] with chosen settings.
pub fn io_service_with(config: UringServiceConfig) -> Arc<dyn IoService> {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if crate::no_uring_env() {
        if !WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!("VYRE_INGEST_NO_URING is set: IO_READ reads with pread");
        }
        return Arc::new(PreadService);
    }
    match UringIoService::new(config) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            if !WARNED.swap(true, Ordering::Relaxed) {
                tracing::warn!(error = %e, "io_uring is unavailable for IO_READ (io_uring_setup failed: disabled by kernel.io_uring_disabled, seccomp or an old kernel, or the settings are invalid); reading with pread");
            }
            Arc::new(PreadService)
        }
    }
}

/// One file of a batch.
#[derive(Debug)]
struct BatchFile {
    fd: RawFd,
    /// Its O_DIRECT descriptor, if it takes O_DIRECT.
    direct: Option<RawFd>,
    key: (u64, u64),
    /// Its size at the batch's `fstat`: reads stop there.
    size: u64,
}

/// A piece of one request: `dst` is its own part of the destination.
#[derive(Debug)]
struct Piece<'d> {
    read: usize,
    file: usize,
    offset: u64,
    dst: &'d mut [u8],
    done: usize,
    /// Whether the read in flight (or last completed) went to the O_DIRECT descriptor.
    direct: bool,
    /// Finished: complete, at the end of the file, or failed.
    over: bool,
    error: Option<io::Error>,
}

impl Piece<'_> {
    fn at(&self) -> u64 {
        self.offset + self.done as u64
    }
}

impl IoService for UringIoService {
    fn name(&self) -> &str {
        "io_uring"
    }

    fn read_batch(&self, reads: &mut [FileRead<'_>]) -> Vec<io::Result<usize>> {
        let mut inner = self.lock();
        bump(&self.counters.batches);
        if inner.ring.is_none() {
            return PreadService.read_batch(reads);
        }
        if inner.direct_files.len() > MAX_DIRECT_FILES {
            // No read is in flight between batches, so the descriptors may close.
            inner.direct_files.clear();
        }
        let Inner { ring, direct_files } = &mut *inner;
        let ring = ring.as_mut().expect("checked above");
        let mut batch = Batch {
            ring,
            direct_files,
            config: self.config,
            counters: &self.counters,
            files: Vec::new(),
            by_fd: HashMap::new(),
            refused: Vec::new(),
        };
        let mut results: Vec<Option<io::Result<usize>>> = (0..reads.len()).map(|_| None).collect();
        let mut pieces: Vec<Piece<'_>> = Vec::new();
        for (i, r) in reads.iter_mut().enumerate() {
            let file = match batch.file(r.file) {
                Ok(f) => f,
                Err(e) => {
                    results[i] = Some(Err(e));
                    continue;
                }
            };
            // Only what lies before the size seen now is read (a read past the end is
            // short, never an error), and nothing at or past the largest offset.
            let size = batch.files[file].size.min(MAX_OFFSET);
            let want = size.saturating_sub(r.offset).min(r.dst.len() as u64) as usize;
            results[i] = Some(Ok(0));
            let mut rest = &mut r.dst[..want];
            let mut offset = r.offset;
            while !rest.is_empty() {
                let n = rest.len().min(self.config.block_size);
                let (dst, tail) = std::mem::take(&mut rest).split_at_mut(n);
                rest = tail;
                pieces.push(Piece {
                    read: i,
                    file,
                    offset,
                    dst,
                    done: 0,
                    direct: false,
                    over: false,
                    error: None,
                });
                offset += n as u64;
            }
        }
        let failure = batch.run(&mut pieces);
        let refused = std::mem::take(&mut batch.refused);
        // Each request's count is its prefix of complete pieces plus the first short one;
        // an error in that prefix fails the request.
        let mut stopped = vec![false; results.len()];
        for p in pieces {
            let i = p.read;
            if stopped[i] {
                continue;
            }
            let Some(Ok(n)) = results[i].as_mut() else {
                continue;
            };
            if let Some(e) = p.error {
                results[i] = Some(Err(e));
                stopped[i] = true;
                continue;
            }
            *n += p.done;
            if p.done < p.dst.len() {
                stopped[i] = true;
            }
        }
        if let Some(e) = failure {
            // The ring failed with no read in flight: serve from now on with pread.
            tracing::error!(error = %e, "io_uring service: the ring failed; reading with pread from now on");
            // Dropping the ring waits for its bounce reads still in flight.
            inner.ring = None;
        }
        // No read is in flight any more: descriptors that refused O_DIRECT may close.
        drop(refused);
        results
            .into_iter()
            .map(|r| r.expect("every request has a result"))
            .collect()
    }
}

/// One batch in progress.
struct Batch<'s> {
    ring: &'s mut BatchRing,
    direct_files: &'s mut HashMap<(u64, u64), Option<File>>,
    config: UringServiceConfig,
    counters: &'s Counters,
    files: Vec<BatchFile>,
    by_fd: HashMap<RawFd, usize>,
    /// O_DIRECT descriptors found to refuse O_DIRECT during this batch: closed only after
    /// it, since reads on them may still be in flight.
    refused: Vec<File>,
}

impl Batch<'_> {
    /// The batch's entry for `file` (one `fstat`, and the O_DIRECT reopen the first time
    /// a file is seen).
    fn file(&mut self, file: &File) -> io::Result<usize> {
        let fd = file.as_raw_fd();
        if let Some(&k) = self.by_fd.get(&fd) {
            return Ok(k);
        }
        let meta = file.metadata()?;
        let key = (meta.dev(), meta.ino());
        let direct = if self.config.direct == Direct::Auto && meta.is_file() && meta.len() >= TINY {
            self.direct_files
                .entry(key)
                .or_insert_with(|| reopen_direct(fd, &self.counters.direct_refused))
                .as_ref()
                .map(File::as_raw_fd)
        } else {
            None
        };
        self.files.push(BatchFile {
            fd,
            direct,
            key,
            size: meta.len(),
        });
        self.by_fd.insert(fd, self.files.len() - 1);
        Ok(self.files.len() - 1)
    }

    /// Reads every piece to its end; returns the ring's error if it failed (then every
    /// unfinished piece carries that error and nothing is in flight).
    fn run(&mut self, pieces: &mut [Piece<'_>]) -> Option<io::Error> {
        let mut todo: VecDeque<usize> = (0..pieces.len()).collect();
        let mut done: Vec<BatchDone> = Vec::new();
        loop {
            while self.ring.has_room() {
                let Some(k) = todo.pop_front() else { break };
                self.submit(k, &mut pieces[k]);
            }
            if self.ring.inflight() == 0 {
                return None;
            }
            done.clear();
            if let Err(e) = self.ring.wait(&mut done) {
                return Some(self.ring_failed(e, pieces));
            }
            for d in &done {
                let k = d.tag as usize;
                self.complete(&mut pieces[k], d);
                if let Some(b) = d.bounce {
                    self.ring.put_bounce(b);
                }
                if !pieces[k].over {
                    todo.push_back(k);
                }
            }
        }
    }

    /// Queues the next read of piece `k`.
    fn submit(&mut self, k: usize, p: &mut Piece<'_>) {
        let f = &self.files[p.file];
        let at = p.at();
        let rest = &mut p.dst[p.done..];
        let cap = rest.len().min(self.ring.block());
        p.direct = f.direct.is_some() && at % ALIGN as u64 == 0;
        match f.direct {
            Some(dfd) if at % ALIGN as u64 == 0 => {
                let dst = rest.as_mut_ptr();
                if dst as usize % ALIGN == 0 && rest.len() >= ALIGN {
                    bump(&self.counters.direct_reads);
                    let len = (cap - cap % ALIGN) as u32;
                    // SAFETY: `dst..dst + len` lies inside this piece's own part of the
                    // caller's destination, borrowed (`&mut`) for the whole batch; nothing
                    // touches the piece while its read is in flight (one read per piece at
                    // a time, and the piece is accessed again only after its completion),
                    // and `run` returns only when nothing is in flight (or the process
                    // aborts, `ring_failed`). The O_DIRECT descriptor lives in the cache or
                    // `refused` until the batch ends.
                    unsafe { self.ring.push_into(dfd, at, dst, len, k as u64) };
                } else {
                    bump(&self.counters.bounce_reads);
                    let len = cap.next_multiple_of(ALIGN).min(self.ring.block()) as u32;
                    self.ring.push_bounce(dfd, at, len, k as u64);
                }
            }
            _ => {
                bump(&self.counters.buffered_reads);
                let len = cap as u32;
                // SAFETY: as above, for a buffered read into the piece's own range; the
                // caller's `File` outlives the batch.
                unsafe {
                    self.ring
                        .push_into(f.fd, at, rest.as_mut_ptr(), len, k as u64)
                };
            }
        }
    }

    /// Handles the completion of piece `p`'s read.
    fn complete(&mut self, p: &mut Piece<'_>, d: &BatchDone) {
        let left = p.dst.len() - p.done;
        if d.result < 0 {
            let errno = -d.result;
            let f = &mut self.files[p.file];
            if errno == libc::EINVAL && p.direct {
                // Read again from the same place, buffered.
                if f.direct.take().is_some() {
                    // The filesystem refuses this O_DIRECT read: the file goes on buffered.
                    bump(&self.counters.direct_refused);
                    tracing::debug!(
                        device = f.key.0,
                        inode = f.key.1,
                        "O_DIRECT read refused; reading the file buffered"
                    );
                    if let Some(Some(file)) = self.direct_files.insert(f.key, None) {
                        self.refused.push(file);
                    }
                }
                return;
            }
            if errno == libc::EINTR || errno == libc::EAGAIN {
                return;
            }
            p.error = Some(io::Error::from_raw_os_error(errno));
            p.over = true;
            return;
        }
        let got = (d.result as usize).min(left);
        if let Some(b) = d.bounce {
            let bytes = self.ring.bounce_bytes(b, got);
            p.dst[p.done..p.done + got].copy_from_slice(bytes);
        }
        p.done += got;
        let size = self.files[p.file].size;
        if p.done == p.dst.len() || got == 0 || p.at() >= size {
            // Complete, or the file ended (a read of 0 bytes: it shrank).
            p.over = true;
        } else {
            // Short before the end: read the rest.
            bump(&self.counters.continued_reads);
        }
    }

    /// The ring cannot be waited on. Reads into caller memory still in flight would write
    /// it after the batch returned it, so the process stops; otherwise every unfinished
    /// piece fails with the error.
    fn ring_failed(&mut self, e: io::Error, pieces: &mut [Piece<'_>]) -> io::Error {
        if self.ring.caller_inflight() > 0 {
            tracing::error!(error = %e, inflight = self.ring.caller_inflight(), "io_uring service: the ring failed with reads into caller memory in flight; aborting (returning that memory would let the kernel write into freed buffers)");
            eprintln!("vyre-ingest: io_uring failed with reads in flight ({e}); aborting");
            std::process::abort();
        }
        for p in pieces.iter_mut().filter(|p| !p.over) {
            p.error = Some(io::Error::new(e.kind(), format!("io_uring: {e}")));
            p.over = true;
        }
        e
    }
}

/// Opens the file behind `fd` again with O_DIRECT (through `/proc/self/fd`); `None` where
/// that is refused (no procfs, a filesystem without O_DIRECT).
fn reopen_direct(fd: RawFd, refused: &AtomicU64) -> Option<File> {
    let path = format!("/proc/self/fd/{fd}");
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC)
        .open(&path)
    {
        Ok(f) => Some(f),
        Err(e) => {
            bump(refused);
            tracing::debug!(fd, error = %e, "cannot reopen with O_DIRECT; reading this file buffered");
            None
        }
    }
}
