//! The host half of IO_READ: registered files, the [`IoService`] that reads them, and the
//! I/O thread that serves the ring's request queue (PROTOCOL.md, "I/O queue (WAIT_IO)").
//!
//! The thread polls the request records of the current ring with back-off (a short spin,
//! then yields, then sleeps of up to 1 ms, so an idle queue costs no CPU), hands every ready
//! request of a poll to the service as one batch, writes the bytes into the backend's buffer
//! and pushes one resume entry per request. The runtime knows no io_uring: the default
//! service reads with `pread` ([`PreadService`]); `vyre-ingest` provides an io_uring one.

use crate::backend::Backend;
use crate::io_queue::{HostQueue, Request};
use crate::protocol::control;
use crate::ring::RingMemory;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vyre_isa::io::IoRead;

/// Most files one megakernel registers.
pub const MAX_FILES: u32 = 1 << 16;
/// Most requests handed to the service in one batch.
const MAX_BATCH: usize = 64;
/// Most bytes requested by one batch (a single larger request still goes alone).
const MAX_BATCH_BYTES: u64 = 64 << 20;
/// `EBADF`: a request for a file id that is not registered (workers check ids, so only a
/// corrupt request record gets here).
const EBADF: i32 = 9;

/// One read of a batch: up to `dst.len()` bytes of `file` at `offset`.
#[derive(Debug)]
pub struct FileRead<'a> {
    /// The registered file.
    pub file: &'a File,
    /// Byte offset in the file.
    pub offset: u64,
    /// Where the bytes go; its length is the number asked for.
    pub dst: &'a mut [u8],
}

/// Performs IO_READ's reads for the host's I/O thread. Implementations must read until
/// `dst` is full or the file ends (a short count means end of file, never a partial
/// transfer), and report OS errors as `io::Error`s that carry the errno. The thread never
/// asks for bytes at or past [`MAX_FILE_OFFSET`].
pub trait IoService: Send + Sync + fmt::Debug {
    /// A short name for logs (`pread`, `io_uring`).
    fn name(&self) -> &str;
    /// Reads every request of a batch; returns one result per request, in order: the bytes
    /// read, or the error.
    fn read_batch(&self, reads: &mut [FileRead<'_>]) -> Vec<io::Result<usize>>;
}

/// The default service: positional reads (`pread`), one request after the other.
#[derive(Clone, Copy, Debug, Default)]
pub struct PreadService;

/// Offsets from here on are past the end of every file (the OS takes signed 64-bit
/// offsets): a read there is short, like any read past the end, never an error.
pub const MAX_FILE_OFFSET: u64 = i64::MAX as u64;

/// Reads until `dst` is full or the file ends (`EINTR` retried); returns the bytes read.
/// Bytes at or past [`MAX_FILE_OFFSET`] read as the end of the file.
pub fn read_full_at(file: &File, offset: u64, dst: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < dst.len() {
        let at = offset.saturating_add(done as u64);
        if at >= MAX_FILE_OFFSET {
            break;
        }
        let room = usize::try_from(MAX_FILE_OFFSET - at).unwrap_or(usize::MAX);
        let end = dst.len().min(done.saturating_add(room));
        match file.read_at(&mut dst[done..end], at) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

impl IoService for PreadService {
    fn name(&self) -> &str {
        "pread"
    }
    fn read_batch(&self, reads: &mut [FileRead<'_>]) -> Vec<io::Result<usize>> {
        reads
            .iter_mut()
            .map(|r| read_full_at(r.file, r.offset, r.dst))
            .collect()
    }
}

/// A file registered for IO_READ.
#[derive(Debug)]
struct Registered {
    path: PathBuf,
    file: Arc<File>,
}

/// The ring the thread serves: replaced by a restart, which bumps the generation.
#[derive(Debug)]
struct Target {
    mem: Arc<dyn RingMemory>,
    backend: Arc<dyn Backend>,
    queue: HostQueue,
    generation: u64,
}

#[derive(Debug)]
struct Shared {
    service: Mutex<Arc<dyn IoService>>,
    files: Mutex<Vec<Registered>>,
    target: Mutex<Target>,
    stop: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update under these locks is a single assignment, so a poisoned lock is usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The I/O side of one megakernel: its files and its I/O thread (started by the first
/// [`IoHost::register`]).
#[derive(Debug)]
pub(crate) struct IoHost {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// Why a file could not be registered.
#[derive(Debug)]
pub(crate) enum RegisterError {
    Open(io::Error),
    Limit,
    Thread(io::Error),
}

impl IoHost {
    pub(crate) fn new(mem: Arc<dyn RingMemory>, backend: Arc<dyn Backend>) -> IoHost {
        IoHost {
            shared: Arc::new(Shared {
                service: Mutex::new(Arc::new(PreadService)),
                files: Mutex::new(Vec::new()),
                target: Mutex::new(Target {
                    mem,
                    backend,
                    queue: HostQueue::new(),
                    generation: 0,
                }),
                stop: AtomicBool::new(false),
            }),
            thread: Mutex::new(None),
        }
    }

    /// Replaces the service; refused (`false`) once the I/O thread runs.
    pub(crate) fn set_service(&self, service: Arc<dyn IoService>) -> bool {
        let thread = lock(&self.thread);
        if thread.is_some() {
            return false;
        }
        *lock(&self.shared.service) = service;
        true
    }

    /// The service's name.
    pub(crate) fn service_name(&self) -> String {
        lock(&self.shared.service).name().to_string()
    }

    /// Files registered so far.
    pub(crate) fn files(&self) -> u32 {
        lock(&self.shared.files).len() as u32
    }

    /// Opens `path`, gives it the next id, publishes the new count in `mem`'s IO_FILES and
    /// starts the I/O thread if it is not running.
    pub(crate) fn register(&self, path: &Path, mem: &dyn RingMemory) -> Result<u32, RegisterError> {
        let file = File::open(path).map_err(RegisterError::Open)?;
        let mut thread = lock(&self.thread);
        if thread.is_none() {
            let shared = self.shared.clone();
            let t = std::thread::Builder::new()
                .name("vyre-io".into())
                .spawn(move || serve(&shared))
                .map_err(RegisterError::Thread)?;
            tracing::info!(service = %self.service_name(), "I/O thread started");
            *thread = Some(t);
        }
        let mut files = lock(&self.shared.files);
        if files.len() as u32 >= MAX_FILES {
            return Err(RegisterError::Limit);
        }
        files.push(Registered {
            path: path.to_path_buf(),
            file: Arc::new(file),
        });
        let id = files.len() as u32;
        mem.control()[control::IO_FILES].store(id, Ordering::Release);
        Ok(id)
    }

    /// Points the thread at a new ring and backend (a restart), without waiting for a read
    /// in hand: that batch's results are dropped (their slots were requeued and read again),
    /// and the new ring is served from record 0. The new ring's IO_FILES is set here.
    pub(crate) fn retarget(&self, mem: Arc<dyn RingMemory>, backend: Arc<dyn Backend>) {
        let files = self.files();
        mem.control()[control::IO_FILES].store(files, Ordering::Release);
        let mut t = lock(&self.shared.target);
        let generation = t.generation + 1;
        *t = Target {
            mem,
            backend,
            queue: HostQueue::new(),
            generation,
        };
    }

    /// Stops the thread and joins it, waiting at most `timeout` for a read in hand to end (a
    /// thread stuck in the OS is left behind, detached, and reported).
    pub(crate) fn stop(&self, timeout: Duration) {
        self.shared.stop.store(true, Ordering::Release);
        let Some(t) = lock(&self.thread).take() else {
            return;
        };
        t.thread().unpark();
        let start = Instant::now();
        while !t.is_finished() && start.elapsed() < timeout {
            std::thread::sleep(Duration::from_millis(1));
        }
        if t.is_finished() {
            let _ = t.join();
        } else {
            tracing::warn!(waited = ?timeout, "the I/O thread is still inside a read; left detached");
        }
    }
}

/// The thread: serve batches, back off while the queue is empty.
fn serve(shared: &Shared) {
    let mut bufs: Vec<Vec<u8>> = Vec::new();
    let mut idle: Option<Instant> = None;
    let mut spins = 0u32;
    while !shared.stop.load(Ordering::Acquire) {
        if serve_batch(shared, &mut bufs) > 0 {
            idle = None;
            spins = 0;
            continue;
        }
        let since = *idle.get_or_insert_with(Instant::now);
        spins += 1;
        if spins < 64 {
            std::hint::spin_loop();
            continue;
        }
        let waited = since.elapsed();
        if waited < Duration::from_micros(20) {
            std::hint::spin_loop();
        } else if waited < Duration::from_micros(200) {
            std::thread::yield_now();
        } else {
            std::thread::park_timeout((waited / 4).min(Duration::from_millis(1)));
        }
    }
}

/// Serves every ready request (up to a batch); returns how many. The target lock is not
/// held during the reads, so a restart never waits on the OS.
fn serve_batch(shared: &Shared, bufs: &mut Vec<Vec<u8>>) -> usize {
    let mut reqs: Vec<Request> = Vec::new();
    let (backend, generation) = {
        let mut target = lock(&shared.target);
        let Target {
            mem,
            backend,
            queue,
            generation,
        } = &mut *target;
        let mut bytes = 0u64;
        while reqs.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            let Some(r) = queue.next_request(mem.as_ref()) else {
                break;
            };
            bytes += u64::from(r.len);
            reqs.push(r);
        }
        (backend.clone(), *generation)
    };
    if reqs.is_empty() {
        return 0;
    }
    let files: Vec<Option<(Arc<File>, PathBuf)>> = {
        let registered = lock(&shared.files);
        reqs.iter()
            .map(|r| {
                (r.file as usize)
                    .checked_sub(1)
                    .and_then(|i| registered.get(i))
                    .map(|f| (f.file.clone(), f.path.clone()))
            })
            .collect()
    };
    let service = lock(&shared.service).clone();
    if bufs.len() < reqs.len() {
        bufs.resize_with(reqs.len(), Vec::new);
    }
    let mut results: Vec<Option<io::Result<usize>>> = Vec::with_capacity(reqs.len());
    {
        let mut reads = Vec::with_capacity(reqs.len());
        let mut which = Vec::with_capacity(reqs.len());
        for (i, ((r, f), b)) in reqs.iter().zip(&files).zip(bufs.iter_mut()).enumerate() {
            results.push(None);
            let Some((f, _)) = f else {
                results[i] = Some(Err(io::Error::from_raw_os_error(EBADF)));
                continue;
            };
            // Nothing lies at or past the largest offset the OS takes: read only what is
            // below it (so services never see such offsets).
            let len = (r.len as u64).min(MAX_FILE_OFFSET.saturating_sub(r.offset)) as usize;
            b.resize(r.len as usize, 0);
            reads.push(FileRead {
                file: f,
                offset: r.offset.min(MAX_FILE_OFFSET),
                dst: &mut b[..len],
            });
            which.push(i);
        }
        let mut out = service.read_batch(&mut reads).into_iter();
        for i in which {
            results[i] = Some(out.next().unwrap_or_else(|| {
                Err(io::Error::other(format!(
                    "the {} I/O service returned fewer results than requests",
                    service.name()
                )))
            }));
        }
    }
    let mut target = lock(&shared.target);
    if target.generation != generation {
        tracing::debug!(
            requests = reqs.len(),
            "a restart replaced the ring during these reads; their slots were requeued"
        );
        return reqs.len();
    }
    let Target { mem, queue, .. } = &mut *target;
    for (((r, res), b), f) in reqs.iter().zip(results).zip(bufs.iter()).zip(&files) {
        let word = match res.expect("every request has a result") {
            Ok(n) => {
                let n = n.min(r.len as usize);
                match backend.write_buffer(r.buf, r.buf_off.into(), &b[..n]) {
                    Ok(()) => IoRead::ok_result(n as u32),
                    Err(e) => {
                        tracing::warn!(position = r.position, error = %e, "IO_READ: the bytes read could not be written into the buffer; the slot faults `io` with errno 0");
                        IoRead::error_result(0)
                    }
                }
            }
            Err(e) => {
                let path = f.as_ref().map(|(_, p)| p.display().to_string());
                tracing::debug!(position = r.position, file = r.file, path = ?path, error = %e, "IO_READ failed");
                IoRead::error_result(e.raw_os_error().unwrap_or(0))
            }
        };
        queue.push_resume(mem.as_ref(), r.position, word);
    }
    backend.doorbell();
    // Do not keep more than a batch's worth of memory around while idle.
    if bufs.iter().map(Vec::capacity).sum::<usize>() > 2 * MAX_BATCH_BYTES as usize {
        bufs.clear();
    }
    reqs.len()
}
