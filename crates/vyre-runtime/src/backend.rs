//! The backend trait: what every execution engine (cpu, cuda, wgpu) provides. Nothing
//! above this trait knows which engine or GPU API is in use.

use crate::ring::RingMemory;
use std::any::Any;
use std::fmt;
use std::ops::Range;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use vyre_isa::{Program, SlotOp};

/// How a backend runs the ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecutionModel {
    /// Long-lived workers claim slots while the host publishes (cpu threads, a CUDA
    /// persistent kernel).
    Persistent,
    /// Each dispatch drains the slots published since the last one (wgpu).
    Epoch,
}

/// Where a backend executes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum BackendKind {
    /// A GPU (preferred by routing).
    Gpu,
    /// The host CPU.
    Cpu,
}

/// What a backend can do, reported before it is launched.
#[derive(Clone, Debug)]
pub struct Capabilities {
    /// The device, in words ("cpu: 2 worker threads").
    pub device: String,
    /// GPU or CPU.
    pub kind: BackendKind,
    /// Persistent or epoch.
    pub model: ExecutionModel,
    /// Core slot opcodes it executes.
    pub ops: Vec<SlotOp>,
    /// Workers it runs when not told otherwise.
    pub default_workers: usize,
    /// Most workers (threads, resident blocks) it can run.
    pub max_workers: usize,
    /// Largest buffer, in bytes.
    pub max_buffer_bytes: u64,
    /// Most registered buffers.
    pub max_buffers: u32,
    /// Most loaded programs.
    pub max_programs: u32,
}

impl Capabilities {
    /// Whether every op in `ops` is supported.
    pub fn supports_all(&self, ops: &[SlotOp]) -> bool {
        ops.iter().all(|op| self.ops.contains(op))
    }
}

/// Settings for a launch.
#[derive(Clone, Debug)]
pub struct LaunchConfig {
    /// Workers to run.
    pub workers: usize,
    /// Most instructions one EXEC slot may execute.
    pub step_budget: u64,
    /// Most slots a worker claims at once.
    pub claim_batch: u32,
}

/// Liveness of a launched backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    /// Workers inside the claim loop now.
    pub workers_running: usize,
    /// The heartbeat word.
    pub heartbeat: u32,
    /// Whether the backend has stopped (after shutdown, or because it failed).
    pub stopped: bool,
    /// Why it failed, if it did.
    pub failure: Option<String>,
}

/// A backend operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The backend cannot run here.
    #[error("backend `{backend}` is unavailable: {reason}; {hint}")]
    Unavailable {
        /// Which backend.
        backend: &'static str,
        /// Why.
        reason: String,
        /// What to do about it.
        hint: String,
    },
    /// No buffer with this handle.
    #[error("no buffer with handle {handle}")]
    BadHandle {
        /// The handle.
        handle: u32,
    },
    /// A host read or write outside a buffer.
    #[error("range {offset}..{offset}+{len} is outside buffer {handle} of {size} bytes")]
    OutOfBounds {
        /// The handle.
        handle: u32,
        /// Start of the range.
        offset: u64,
        /// Its length.
        len: u64,
        /// The buffer's size.
        size: u64,
    },
    /// A request beyond a limit.
    #[error("{what}: {requested} requested, the limit is {limit}")]
    Limit {
        /// What was asked for.
        what: &'static str,
        /// How much.
        requested: u64,
        /// The limit.
        limit: u64,
    },
    /// Launching or stopping failed.
    #[error("{0}")]
    Launch(String),
}

impl BackendError {
    /// `Limit` when `requested` exceeds `limit` (a size, or a count including the new one).
    pub fn check_limit(what: &'static str, requested: u64, limit: u64) -> Result<(), BackendError> {
        if requested > limit {
            return Err(BackendError::Limit {
                what,
                requested,
                limit,
            });
        }
        Ok(())
    }

    /// Checks a host read or write of `len` bytes at `offset` against a buffer of `size` bytes.
    pub fn check_range(handle: u32, offset: u64, len: u64, size: u64) -> Result<(), BackendError> {
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(()),
            _ => Err(BackendError::OutOfBounds {
                handle,
                offset,
                len,
                size,
            }),
        }
    }
}

/// Host memory that a producer (io_uring ingest) owns and a backend may use in place as a
/// buffer, without a copy. The memory is seen as atomic words, so a backend touches it
/// without `unsafe`; whoever implements this trait guarantees the words stay valid and
/// unmoved for as long as any `Arc` to it lives.
pub trait HostRegion: Send + Sync + fmt::Debug {
    /// The region as little-endian words (its size in bytes is `4 * words().len()`).
    fn words(&self) -> &[AtomicU32];
}

/// Host memory that a producer fills and a backend copies into its buffers
/// ([`Backend::write_from_staging`]). A backend may hand out memory it copies from fastest
/// ([`Backend::create_staging`]: cuda gives page-locked memory, so a copy is one DMA with
/// no bounce copy on the host); anything else is a plain `Vec<u8>`.
pub trait Staging: Send + Sync + fmt::Debug + 'static {
    /// The bytes.
    fn bytes(&self) -> &[u8];
    /// The bytes, to fill.
    fn bytes_mut(&mut self) -> &mut [u8];
    /// For the backend that made it, to recognise its own memory.
    fn as_any(&self) -> &dyn Any;
}

impl Staging for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        self
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// An execution engine for the ring. Buffers and programs may be added before or after
/// launch; handles and ids are never reused while the backend lives.
pub trait Backend: Send + Sync + fmt::Debug {
    /// Its name (`cpu`, `cuda`, `wgpu`).
    fn name(&self) -> &'static str;
    /// What it can do.
    fn capabilities(&self) -> &Capabilities;
    /// Allocates ring memory where this backend's workers can reach it.
    fn ring_memory(
        &self,
        capacity: u32,
        debug_capacity: u32,
    ) -> Result<Arc<dyn RingMemory>, BackendError>;
    /// Registers a zero-filled buffer; returns its handle (never 0).
    fn create_buffer(&self, size: u64) -> Result<u32, BackendError>;
    /// Registers a zero-filled buffer in host memory that the workers write in place (cuda:
    /// mapped page-locked memory), for results the host reads back often and in small
    /// pieces: reading a few bytes of it costs no device copy. `Ok(None)` where the backend
    /// has no such memory (the default); the caller then uses [`Backend::create_buffer`].
    fn create_host_buffer(&self, size: u64) -> Result<Option<u32>, BackendError> {
        let _ = size;
        Ok(None)
    }
    /// Copies bytes into a buffer.
    fn write_buffer(&self, handle: u32, offset: u64, data: &[u8]) -> Result<(), BackendError>;
    /// Writes each `(offset, value)` of `words` into a buffer as a little-endian `u32`: many
    /// small writes in one call (a scan writes the capacity header of every hit region of
    /// a batch). The default calls [`Backend::write_buffer`] once per word, stopping at the
    /// first error; a backend whose buffer is host memory checks every offset first and
    /// writes them under one lock (on an H100 host, one locked 4-byte write per region
    /// cost about 0.5 µs, a third of a scan's driver thread at 1,000 rules).
    fn write_buffer_words(&self, handle: u32, words: &[(u64, u32)]) -> Result<(), BackendError> {
        write_words_each(self, handle, words)
    }
    /// `bytes` of host memory this backend copies from fastest (initialised, contents
    /// unspecified: a backend may hand out memory given back by an earlier value), or
    /// `Ok(None)` where plain memory is as good (the default). Dropping it never waits for
    /// the device.
    fn create_staging(&self, bytes: usize) -> Result<Option<Box<dyn Staging>>, BackendError> {
        let _ = bytes;
        Ok(None)
    }
    /// Copies `src[range]` into a buffer at `offset` (a backend recognises its own staging
    /// memory; the default is [`Backend::write_buffer`]). The copy may still be running when
    /// this returns (cuda: a DMA from page-locked staging): until [`Backend::wait_copies`]
    /// returns, the caller must neither write `src` nor publish slots that read the
    /// destination.
    fn write_from_staging(
        &self,
        handle: u32,
        offset: u64,
        src: &dyn Staging,
        range: Range<usize>,
    ) -> Result<(), BackendError> {
        self.write_buffer(handle, offset, &src.bytes()[range])
    }
    /// Waits for the copies [`Backend::write_from_staging`] left running (none by default).
    fn wait_copies(&self) -> Result<(), BackendError> {
        Ok(())
    }
    /// Copies bytes out of a buffer.
    fn read_buffer(&self, handle: u32, offset: u64, len: u64) -> Result<Vec<u8>, BackendError>;
    /// Appends several `(offset, len)` ranges of one buffer to `out`, back to back. The
    /// default reads them one by one; a backend whose buffer is host memory copies them in
    /// one call (a scan reads a batch's small hit regions this way).
    fn read_buffer_ranges(
        &self,
        handle: u32,
        ranges: &[(u64, u64)],
        out: &mut Vec<u8>,
    ) -> Result<(), BackendError> {
        read_ranges_each(self, handle, ranges, out)
    }
    /// Loads a validated program; returns its id.
    fn load_program(&self, program: Program) -> Result<u32, BackendError>;
    /// Starts the workers on an initialised ring.
    fn launch(&self, ring: Arc<dyn RingMemory>, config: &LaunchConfig) -> Result<(), BackendError>;
    /// Tells idle workers that slots were published.
    fn doorbell(&self);
    /// Waits for the workers to exit once the control block's SHUTDOWN word is set.
    fn stop(&self) -> Result<(), BackendError>;
    /// Liveness.
    fn health(&self) -> Health;
    /// Registers host memory as a buffer read and written in place (no copy); returns its
    /// handle, from the same sequence as [`Backend::create_buffer`]. The backend keeps the
    /// `Arc` for as long as it lives. Backends that cannot use host memory in place return
    /// [`BackendError::Unavailable`] (the default).
    fn register_host_region(&self, region: Arc<dyn HostRegion>) -> Result<u32, BackendError> {
        let _ = region;
        Err(BackendError::Unavailable {
            backend: self.name(),
            reason: "this backend cannot use a host memory region in place".into(),
            hint: "copy the bytes into a buffer with create_buffer and write_buffer instead".into(),
        })
    }
}

/// Something that can say whether a backend can run here and create it.
pub trait BackendProvider: Send + Sync {
    /// The backend's name.
    fn name(&self) -> &'static str;
    /// GPU or CPU.
    fn kind(&self) -> BackendKind;
    /// Its capabilities here, or why it cannot run.
    fn probe(&self) -> Result<Capabilities, BackendError>;
    /// Creates it.
    fn create(&self) -> Result<Arc<dyn Backend>, BackendError>;
}

/// [`Backend::write_buffer_words`] done with one [`Backend::write_buffer`] per word (the
/// default, and a backend's fallback for memory it cannot write directly).
pub fn write_words_each<B: Backend + ?Sized>(
    backend: &B,
    handle: u32,
    words: &[(u64, u32)],
) -> Result<(), BackendError> {
    for &(offset, value) in words {
        backend.write_buffer(handle, offset, &value.to_le_bytes())?;
    }
    Ok(())
}

/// [`Backend::read_buffer_ranges`] done with one [`Backend::read_buffer`] per range (the
/// default, and a backend's fallback for memory it cannot copy from directly).
pub fn read_ranges_each<B: Backend + ?Sized>(
    backend: &B,
    handle: u32,
    ranges: &[(u64, u64)],
    out: &mut Vec<u8>,
) -> Result<(), BackendError> {
    for &(offset, len) in ranges {
        out.extend(backend.read_buffer(handle, offset, len)?);
    }
    Ok(())
}
