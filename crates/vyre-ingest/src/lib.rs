//! vyre's file ingest: a dedicated thread reads files with io_uring (O_DIRECT, registered
//! buffers carved from one page-aligned mapping, registered files, a configurable queue
//! depth and block size) and delivers [`Event`]s: [`Chunk`]s in order per file, a
//! [`FileEnd`] per complete file, a [`FileError`] per file that failed. Files that refuse
//! O_DIRECT, unaligned tails and tiny files are read buffered into the same buffers; when
//! io_uring is unavailable (or `VYRE_INGEST_NO_URING=1`) a plain `pread` reader takes over
//! after one warning. [`GpuStream`] turns chunks into ring slots on a
//! [`vyre_runtime::Megakernel`] that read the staging memory in place.
//!
//! [`UringIoService`] serves the megakernel's IO_READ requests (its host I/O thread,
//! [`vyre_runtime::IoService`]) on io_uring: batches submitted and reaped together,
//! O_DIRECT where alignment allows it (through page-aligned bounce buffers when the
//! destination is not aligned), buffered otherwise. [`io_service`] gives it, or after one
//! warning positional reads where io_uring is unavailable or `VYRE_INGEST_NO_URING=1`.
//!
//! [`WholeFiles`] reads batches of small files whole, each opened, read and closed by one
//! io_uring chain on direct descriptors (`vyre scan`'s walk threads use it).
//!
//! Only this crate knows io_uring.

mod cpu_time;
mod engine;
mod io;
mod pool;
mod region;
mod service;
mod stream;
mod whole;

pub use cpu_time::CpuTimes;
pub use service::{
    io_service, io_service_with, UringIoService, UringServiceConfig, UringServiceStats,
};
pub use stream::{GpuStream, StreamEvent, StreamReport};
pub use whole::{WholeFiles, WholeRead, WholeReadDone};

use pool::Pool;
use region::Region;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use vyre_runtime::HostRegion;

/// Whether to ask for O_DIRECT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Direct {
    /// O_DIRECT for files of at least one page; buffered where refused.
    #[default]
    Auto,
    /// Always buffered.
    Off,
}

/// Which reader runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum EngineChoice {
    /// io_uring; the plain reader (with one warning) where io_uring is unavailable or
    /// `VYRE_INGEST_NO_URING=1`.
    #[default]
    Auto,
    /// io_uring or an error from [`Ingest::new`].
    Uring,
    /// The plain `pread` reader.
    Plain,
}

/// The reader that actually runs, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EngineKind {
    /// io_uring; whether buffers and files are registered.
    Uring {
        /// Buffers registered (READ_FIXED).
        fixed_buffers: bool,
    },
    /// The plain reader, with the reason.
    Plain {
        /// Why io_uring is not used.
        reason: String,
    },
}

/// Counters of one [`Ingest`] (what actually happened, for tests and benchmarks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IngestStats {
    /// Reads issued on O_DIRECT descriptors.
    pub direct_reads: u64,
    /// Reads issued buffered (tiny files, refused O_DIRECT, unaligned continuations,
    /// `Direct::Off`).
    pub buffered_reads: u64,
    /// Reads issued on registered (fixed) files.
    pub fixed_file_reads: u64,
    /// Reads that came back short and were continued.
    pub short_reads: u64,
    /// Files that fell back from O_DIRECT to buffered reads (refused at open or read).
    pub direct_refused: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) direct_reads: std::sync::atomic::AtomicU64,
    pub(crate) buffered_reads: std::sync::atomic::AtomicU64,
    pub(crate) fixed_file_reads: std::sync::atomic::AtomicU64,
    pub(crate) short_reads: std::sync::atomic::AtomicU64,
    pub(crate) direct_refused: std::sync::atomic::AtomicU64,
    /// Set when the `Ingest` is dropped: the reader stops even while it waits for a buffer
    /// that a chunk outliving the `Ingest` holds.
    pub(crate) cancel: std::sync::atomic::AtomicBool,
}

impl Counters {
    pub(crate) fn bump(c: &std::sync::atomic::AtomicU64) {
        c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    fn snapshot(&self) -> IngestStats {
        let g = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        IngestStats {
            direct_reads: g(&self.direct_reads),
            buffered_reads: g(&self.buffered_reads),
            fixed_file_reads: g(&self.fixed_file_reads),
            short_reads: g(&self.short_reads),
            direct_refused: g(&self.direct_refused),
        }
    }
}

/// Test hooks: make chosen reads fail or come back short (counted from 1 over all read
/// completions of one [`Ingest`]).
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// The nth read completes with EIO.
    pub eio_on_read: Option<u64>,
    /// The nth read completes short (a third of what it read).
    pub short_on_read: Option<u64>,
    /// The nth read on an O_DIRECT file completes with EINVAL (as from a filesystem that
    /// refuses O_DIRECT reads).
    pub einval_direct_read: Option<u64>,
    /// Opening with O_DIRECT fails with EINVAL (as on a filesystem without O_DIRECT).
    pub einval_direct_open: bool,
    /// `io_uring_setup` fails with ENOSYS (as under seccomp or `kernel.io_uring_disabled`).
    pub uring_setup_fails: bool,
}

/// Ingest settings.
#[derive(Clone, Debug)]
pub struct IngestConfig {
    /// Most reads in flight (the io_uring queue depth).
    pub queue_depth: u32,
    /// Bytes per read and per buffer (a multiple of 4096).
    pub block_size: usize,
    /// Staging buffers (at least `queue_depth`; more lets consumers hold chunks while reads
    /// go on).
    pub buffers: u32,
    /// Most files open at once (several small files are read concurrently).
    pub max_open_files: u32,
    /// O_DIRECT or not.
    pub direct: Direct,
    /// io_uring or the plain reader.
    pub engine: EngineChoice,
    /// Fault injection (tests).
    pub faults: Faults,
}

impl Default for IngestConfig {
    fn default() -> IngestConfig {
        IngestConfig {
            queue_depth: 32,
            block_size: 1 << 20,
            buffers: 64,
            max_open_files: 64,
            direct: Direct::Auto,
            engine: EngineChoice::Auto,
            faults: Faults::default(),
        }
    }
}

/// Why ingest could not start.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// A setting is out of range.
    #[error("invalid ingest config: {0}")]
    Config(String),
    /// The staging mapping could not be created.
    #[error("cannot map {bytes} bytes of staging buffers: {source}")]
    Map {
        /// Size asked for.
        bytes: usize,
        /// The OS error.
        source: std::io::Error,
    },
    /// io_uring was required and is unavailable.
    #[error(
        "io_uring is unavailable: {0}; use EngineChoice::Auto to fall back to the plain reader"
    )]
    Uring(std::io::Error),
    /// The reader thread could not start.
    #[error("cannot start the ingest thread: {0}")]
    Thread(std::io::Error),
    /// A runtime call failed (GpuStream).
    #[error("runtime: {0}")]
    Runtime(#[from] vyre_runtime::Error),
}

/// What went wrong with one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileErrorKind {
    /// The path does not exist (or vanished before it was opened).
    NotFound,
    /// Permission denied.
    PermissionDenied,
    /// Not a regular file (a directory, FIFO, socket, device).
    NotRegular,
    /// A read failed (EIO and other errors); bytes before `offset` were delivered.
    Read,
    /// Opening or inspecting it failed otherwise.
    Open,
}

/// One file failed; no [`FileEnd`] follows for it. Chunks delivered before the error are
/// valid bytes of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileError {
    /// The caller's id.
    pub file_id: u64,
    /// The path.
    pub path: PathBuf,
    /// What kind of failure.
    pub kind: FileErrorKind,
    /// The OS message.
    pub message: String,
    /// For read errors: the file offset of the failed read.
    pub offset: Option<u64>,
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {:?}: {}",
            self.path.display(),
            self.kind,
            self.message
        )?;
        if let Some(o) = self.offset {
            write!(f, " (at offset {o})")?;
        }
        Ok(())
    }
}

/// A file was delivered completely: `len` bytes in chunks covering `0..len` exactly once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEnd {
    /// The caller's id.
    pub file_id: u64,
    /// The path.
    pub path: PathBuf,
    /// Bytes delivered.
    pub len: u64,
    /// Its size when opened (what was read: bytes appended later are not).
    pub size_at_open: u64,
    /// Its size when finished: as seen by the file's last read (which asks for a page
    /// beyond the end and comes back short), or by an fstat where that read came back full
    /// (the file grew by a page or more) or the file shrank.
    pub size_at_end: u64,
}

impl FileEnd {
    /// Whether the file changed size while it was read (it shrank: `len` is what was there;
    /// it grew: the bytes after `size_at_open` were not read).
    pub fn changed(&self) -> bool {
        self.size_at_end != self.size_at_open || self.len != self.size_at_open
    }
}

/// Bytes of one file in a staging buffer. The buffer goes back to the pool when the chunk
/// is dropped.
pub struct Chunk {
    /// The caller's id.
    pub file_id: u64,
    /// Where these bytes are in the file.
    pub file_offset: u64,
    /// How many.
    pub len: usize,
    /// The staging buffer (its bytes start at `buffer as usize * block_size` in the region).
    pub buffer: u32,
    region: Arc<Region>,
    pool: Arc<Pool>,
}

impl std::fmt::Debug for Chunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunk")
            .field("file_id", &self.file_id)
            .field("file_offset", &self.file_offset)
            .field("len", &self.len)
            .field("buffer", &self.buffer)
            .finish()
    }
}

impl Chunk {
    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: this chunk owns its buffer as the only reader: the read that filled it
        // has completed (the engine delivers a chunk only after its completion), the pool
        // hands the index out again only after this chunk is dropped, and slots published
        // by GpuStream only read the region.
        unsafe { self.region.bytes(self.buffer, self.len) }
    }

    /// Byte offset of this chunk in the region (for slots that read it in place).
    pub fn region_offset(&self) -> u64 {
        self.buffer as u64 * self.region.block() as u64
    }

    /// Returns the buffer to the pool (same as dropping the chunk).
    pub fn release(self) {}
}

impl Drop for Chunk {
    fn drop(&mut self) {
        self.pool.put(self.buffer);
    }
}

/// One item of the stream.
#[derive(Debug)]
pub enum Event {
    /// Bytes, in order per file.
    Chunk(Chunk),
    /// A file is complete.
    End(FileEnd),
    /// A file failed.
    Error(FileError),
}

/// The ingest: a reader thread and its staging buffers.
#[derive(Debug)]
pub struct Ingest {
    events: Option<Receiver<Vec<Event>>>,
    ready: VecDeque<Event>,
    thread: Option<JoinHandle<()>>,
    region: Arc<Region>,
    pool: Arc<Pool>,
    engine: EngineKind,
    block_size: usize,
    counters: Arc<Counters>,
}

/// Whether `VYRE_INGEST_NO_URING` asks for the plain reader.
fn no_uring_env() -> bool {
    std::env::var_os("VYRE_INGEST_NO_URING").is_some_and(|v| !v.is_empty() && v != "0")
}

impl Ingest {
    /// Starts reading `files` (`(file_id, path)` pairs, pulled lazily by the reader
    /// thread). Events come from [`Ingest::next`] (or iteration).
    pub fn new<I>(config: IngestConfig, files: I) -> Result<Ingest, IngestError>
    where
        I: IntoIterator<Item = (u64, PathBuf)>,
        I::IntoIter: Send + 'static,
    {
        let c = &config;
        if c.block_size == 0 || c.block_size % 4096 != 0 || c.block_size > 1 << 30 {
            return Err(IngestError::Config(format!(
                "block_size {} must be a non-zero multiple of 4096, at most 1 GiB",
                c.block_size
            )));
        }
        if c.queue_depth == 0 || c.queue_depth > 4096 {
            return Err(IngestError::Config(format!(
                "queue_depth {} must be 1..=4096",
                c.queue_depth
            )));
        }
        if c.buffers < c.queue_depth || c.buffers > u16::MAX as u32 {
            return Err(IngestError::Config(format!(
                "buffers {} must be at least queue_depth ({}) and at most 65535",
                c.buffers, c.queue_depth
            )));
        }
        if c.max_open_files == 0 {
            return Err(IngestError::Config(
                "max_open_files must be at least 1".into(),
            ));
        }
        let region = Arc::new(
            Region::new(c.block_size, c.buffers as usize).map_err(|source| IngestError::Map {
                bytes: c.block_size * c.buffers as usize,
                source,
            })?,
        );
        let pool = Arc::new(Pool::new(c.buffers));
        let (io, engine) = engine::choose_io(&config, region.clone())?;
        // Bounded: batches of at most `engine::BATCH` events (chunks hold buffers, so at most
        // `buffers` of them exist; ends and errors come one per file).
        let cap = 4;
        let (tx, rx) = std::sync::mpsc::sync_channel(cap);
        let counters = Arc::new(Counters::default());
        let eng = engine::Engine::new(
            config.clone(),
            io,
            region.clone(),
            pool.clone(),
            tx,
            counters.clone(),
        );
        let files = Box::new(files.into_iter());
        let thread = std::thread::Builder::new()
            .name("vyre-ingest".into())
            .spawn(move || eng.run(files))
            .map_err(IngestError::Thread)?;
        Ok(Ingest {
            events: Some(rx),
            ready: VecDeque::new(),
            thread: Some(thread),
            region,
            pool,
            engine,
            block_size: config.block_size,
            counters,
        })
    }

    /// Reads `paths`, with their index as the file id.
    pub fn paths(config: IngestConfig, paths: Vec<PathBuf>) -> Result<Ingest, IngestError> {
        Ingest::new(
            config,
            paths.into_iter().enumerate().map(|(i, p)| (i as u64, p)),
        )
    }

    /// The next event; `None` once every file has ended or failed. Blocks.
    pub fn next_event(&mut self) -> Option<Event> {
        if self.ready.is_empty() {
            self.ready.extend(self.events.as_ref()?.recv().ok()?);
        }
        self.ready.pop_front()
    }

    /// The next event if one is ready: `Ok(None)` when none is ready yet, `Err(())` when
    /// the stream is over.
    #[allow(
        clippy::result_unit_err,
        reason = "the only failure is the end of the stream"
    )]
    pub fn try_next_event(&mut self) -> Result<Option<Event>, ()> {
        if let Some(e) = self.ready.pop_front() {
            return Ok(Some(e));
        }
        match self.events.as_ref().ok_or(())?.try_recv() {
            Ok(batch) => {
                self.ready.extend(batch);
                Ok(self.ready.pop_front())
            }
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => Err(()),
        }
    }

    /// The reader in use.
    pub fn engine(&self) -> &EngineKind {
        &self.engine
    }

    /// Counters so far.
    pub fn stats(&self) -> IngestStats {
        self.counters.snapshot()
    }

    /// Bytes per staging buffer.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Staging buffers free now.
    pub fn free_buffers(&self) -> usize {
        self.pool.available()
    }

    /// The staging region as host memory a backend can use in place
    /// ([`vyre_runtime::Backend::register_host_region`]).
    pub fn host_region(&self) -> Arc<dyn HostRegion> {
        self.region.clone()
    }
}

impl Iterator for Ingest {
    type Item = Event;
    fn next(&mut self) -> Option<Event> {
        self.next_event()
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        // Closing the channel cancels the reader; it stops submitting, waits for every read
        // in flight to complete (their buffers belong to the kernel until then) and exits.
        self.counters
            .cancel
            .store(true, std::sync::atomic::Ordering::Release);
        drop(self.events.take());
        self.ready.clear();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
