//! `CudaBackend`: device discovery, buffers and programs by handle, the ring in mapped pinned
//! memory, launching and stopping the persistent kernel, health.

use crate::compile::{self, CompiledKernel};
use crate::driver::{self, Bounce, DeviceAlloc, MappedHost, Pinned, PinnedPool, RegisteredHost};
use crate::ds;
use cudarc::driver::{
    sys, CudaContext, CudaFunction, CudaStream, DeviceRepr, LaunchConfig as CuLaunch, PushKernelArg,
};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};
use vyre_isa::{Program, SlotOp};
use vyre_runtime::pipeline_cache::PipelineCache;
use vyre_runtime::protocol::{control, debug_record, IO_QUEUE_WORDS_PER_SLOT, SLOT_WORDS};
use vyre_runtime::ring::{slot_base, RingMemory};
use vyre_runtime::{
    Backend, BackendError, BackendKind, BackendProvider, Capabilities, ExecutionModel, Health,
    HostRegion, LaunchConfig, Staging,
};

const MAX_BUFFERS: u32 = 1 << 14;
const MAX_PROGRAMS: u32 = 1 << 12;
/// Largest buffer: offsets are 32-bit.
const MAX_BUFFER_BYTES: u64 = 1 << 32;
const BLOCK_THREADS: u32 = 128;
/// Knobs of the persistent kernel's polling, with measured defaults; each can be overridden
/// by an environment variable for experiments (`VYRE_CUDA_BLOCKS_PER_SM`,
/// `VYRE_CUDA_CTL_SLEEP_NS`, `VYRE_CUDA_WORKER_SLEEP_SHIFT`, `VYRE_CUDA_MIRROR_CYCLES`).
#[derive(Clone, Copy, Debug)]
pub struct Tuning {
    /// Blocks per SM, fewer than occupancy allows: with full occupancy (10 blocks of 128 on
    /// an H100, 5,279 worker warps) idle warps polling and CAS-ing the same two device words
    /// made a NOP round trip 43 us and capped NOP throughput at 9 M/s (bench/results).
    pub blocks_per_sm: u32,
    /// Control warp's sleep between polls of the host tail (0 = spin).
    pub ctl_sleep_ns: u32,
    /// Idle workers sleep at most 64 << this many nanoseconds.
    pub worker_sleep_shift: u32,
    /// Clock cycles between mirrors of device counters to the host control block.
    pub mirror_cycles: u32,
}

impl Tuning {
    fn from_env() -> Tuning {
        let var = |name: &str, default: u32| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        Tuning {
            blocks_per_sm: var("VYRE_CUDA_BLOCKS_PER_SM", 2).max(1),
            ctl_sleep_ns: var("VYRE_CUDA_CTL_SLEEP_NS", 100),
            worker_sleep_shift: var("VYRE_CUDA_WORKER_SLEEP_SHIFT", 6).clamp(1, 10),
            mirror_cycles: var("VYRE_CUDA_MIRROR_CYCLES", 20_000),
        }
    }
}
const WARPS_PER_BLOCK: u32 = BLOCK_THREADS / 32;
const TABLE_ENTRY_BYTES: usize = 16;

/// Where a buffer lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BufferPlacement {
    /// Device memory (HBM); host reads and writes are copies.
    Device,
    /// Pinned host memory mapped into the device (zero copy; every device access crosses PCIe).
    HostMapped,
}

/// What was found on GPU 0.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    /// The device's name.
    pub name: String,
    /// Compute capability.
    pub cc: (i32, i32),
    /// Multiprocessors.
    pub sms: u32,
    /// Driver CUDA version (13000 = 13.0).
    pub driver: i32,
    /// NVRTC version.
    pub nvrtc: String,
}

impl DeviceInfo {
    fn arch(&self) -> String {
        format!("sm_{}{}", self.cc.0, self.cc.1)
    }
    fn key(&self) -> String {
        format!("{} {} driver {}", self.name, self.arch(), self.driver)
    }
}

fn unavailable(reason: impl Into<String>, hint: &str) -> BackendError {
    BackendError::Unavailable {
        backend: "cuda",
        reason: reason.into(),
        hint: hint.into(),
    }
}

fn launch_err(what: &str, e: impl std::fmt::Debug) -> BackendError {
    BackendError::Launch(format!("cuda: {what}: {e:?}"))
}

/// Opens GPU 0's primary context, checking for the libraries first (cudarc panics without
/// them).
pub(crate) fn open_device() -> Result<(Arc<CudaContext>, DeviceInfo), BackendError> {
    open_device_in(false)
}

/// The primary context a probe opened, kept for the backend that routing creates next: the
/// probe's context was released as the probe returned (the primary context was destroyed)
/// and made again by `create`; probe and create took 0.41 + 0.11 s of a one-shot `vyre scan`
/// on an H100 host, both together 0.21 s since. Taken by the next [`open_device_in`] of the
/// primary context; later ones retain it anew, as before. A probe that no create follows
/// (`vyre info`, routing to another backend) keeps the context until the process ends.
static PROBED: std::sync::Mutex<Option<(Arc<CudaContext>, DeviceInfo)>> =
    std::sync::Mutex::new(None);

/// Opens GPU 0 in its primary context or, with `fresh`, in a new context of its own: a
/// restart after a hang needs one, because loading a module into the hung kernel's context
/// waits for that kernel.
pub(crate) fn open_device_in(fresh: bool) -> Result<(Arc<CudaContext>, DeviceInfo), BackendError> {
    // SAFETY: checking for the library has no preconditions.
    if !unsafe { sys::is_culib_present() } {
        return Err(unavailable(
            "no CUDA driver (libcuda.so not found)",
            "install the NVIDIA driver, or use --backend cpu",
        ));
    }
    let nvrtc = compile::nvrtc_version().map_err(|e| {
        unavailable(
            e.to_string(),
            "install the CUDA toolkit's NVRTC (libnvrtc.so), or use --backend cpu",
        )
    })?;
    if !fresh {
        if let Some(probed) = PROBED.lock().unwrap_or_else(|e| e.into_inner()).take() {
            return Ok(probed);
        }
    }
    let ctx = if fresh {
        CudaContext::new_non_primary(0, 0)
    } else {
        CudaContext::new(0)
    }
    .map_err(|e| {
        unavailable(
            format!("cannot open GPU 0 ({e:?})"),
            "check nvidia-smi, or use --backend cpu",
        )
    })?;
    let info = DeviceInfo {
        name: ctx.name().unwrap_or_else(|_| "unknown NVIDIA GPU".into()),
        cc: ctx
            .compute_capability()
            .map_err(|e| launch_err("compute capability", e))?,
        sms: ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| launch_err("SM count", e))? as u32,
        driver: driver::driver_version().map_err(|e| launch_err("driver version", e))?,
        nvrtc,
    };
    Ok((ctx, info))
}

/// The ring in mapped pinned memory.
#[derive(Debug)]
pub(crate) struct MappedRing {
    control: MappedHost,
    slots: MappedHost,
    debug: MappedHost,
    io: MappedHost,
    capacity: u32,
    debug_capacity: u32,
    /// Slots published with 16-byte stores (`VYRE_CUDA_WIDE_STORES=0`: word by word, for
    /// comparison).
    wide_stores: bool,
    /// Long runs of slots published whole written with non-temporal stores, their stamps
    /// withheld (`VYRE_CUDA_STREAM_STORES=0`: off, for comparison). See [`STREAMED_MIN`].
    stream_stores: bool,
}

/// Runs of at least this many slots of a batch published whole (`write_slots_whole`: one tail
/// store once every slot is written, as `publish_whole` does, with or without the host pool) are
/// written, after their first slot, with non-temporal stores: a full line written that way needs
/// no read of the line first (an ordinary store has to fetch the line, which the GPU's completion
/// took out of the host's caches), and the device's later reads of it are served from memory,
/// not from a modified line in a host cache. Those stores keep no order within a line, so hot
/// slot polling must never take such a line: its publish stamp is withheld (RES3 = 0) and it runs
/// only once TAIL covers it (PROTOCOL.md, "Hot slot polling"); an `sfence` makes the run visible
/// before anything the writing thread stores next (the unit's flag, the tail). Measured on an
/// H100 host: the device drains 65,536 NOP slots published whole in 162-173 µs instead of
/// 167-278; but while the device runs slots published progressively (an overlapped `run_batch`,
/// `publish_batch`) ordinary stores were faster both to write (8 host threads) and for the device
/// (about 175 against 200 µs for 65,536 NOPs), so `write_slots` keeps ordinary stores.
const STREAMED_MIN: usize = 256;

impl MappedRing {
    /// Writes `slots` at positions `first, first + 1, …` with non-temporal stores and their
    /// publish stamps withheld, then fences them (see [`STREAMED_MIN`]).
    #[cfg(target_arch = "x86_64")]
    fn write_streamed(&self, capacity: u32, first: u32, slots: &[vyre_isa::Slot]) {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_sfence, _mm_stream_si128};
        let words = self.slots();
        for (k, slot) in slots.iter().enumerate() {
            let p = first.wrapping_add(k as u32);
            let dst = words[slot_base(capacity, p)..][..SLOT_WORDS].as_ptr() as *mut __m128i;
            let mut line = vyre_runtime::ring::slot_line(p, slot);
            line[SLOT_WORDS - 1] = 0; // the stamp, withheld: TAIL alone publishes this line
            let src = line.as_ptr() as *const __m128i;
            // SAFETY: as in `write_slots`: one 64-byte, 64-byte-aligned slot of the mapped ring
            // that no other host thread touches meanwhile, written through AtomicU32's
            // UnsafeCell; `_mm_stream_si128` needs the 16-byte alignment it has.
            unsafe {
                for c in 0..4 {
                    _mm_stream_si128(dst.add(c), _mm_loadu_si128(src.add(c)));
                }
            }
        }
        // SAFETY: a store fence has no memory operands; SSE is part of x86-64.
        unsafe { _mm_sfence() };
    }
}

impl RingMemory for MappedRing {
    fn control(&self) -> &[AtomicU32] {
        &self.control.words()[..control::WORDS]
    }
    fn slots(&self) -> &[AtomicU32] {
        &self.slots.words()[..self.capacity as usize * SLOT_WORDS]
    }
    fn debug_log(&self) -> &[AtomicU32] {
        &self.debug.words()[..self.debug_capacity as usize * debug_record::RECORD_WORDS]
    }
    fn io_queue(&self) -> &[AtomicU32] {
        &self.io.words()[..self.capacity as usize * IO_QUEUE_WORDS_PER_SLOT]
    }
    /// Four 16-byte stores per slot instead of sixteen 4-byte ones: each line the host
    /// publishes into costs a cache-line transfer (the GPU wrote its last status), and a store
    /// buffer holding a quarter of the entries per line overlaps four times as many of them.
    #[cfg(target_arch = "x86_64")]
    fn write_slots(&self, capacity: u32, first: u32, slots: &[vyre_isa::Slot]) {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_store_si128};
        use std::sync::atomic::{compiler_fence, Ordering};
        let words = self.slots();
        for (k, slot) in slots.iter().enumerate() {
            let p = first.wrapping_add(k as u32);
            let dst = &words[slot_base(capacity, p)..][..SLOT_WORDS];
            let line = vyre_runtime::ring::slot_line(p, slot);
            if !self.wide_stores {
                vyre_runtime::ring::write_line(dst, &line);
                continue;
            }
            let dst = dst.as_ptr() as *mut __m128i;
            let src = line.as_ptr() as *const __m128i;
            // SAFETY: `dst` is one 64-byte slot of the mapped ring (page-aligned allocation,
            // 64-byte slots), so all four 16-byte stores are in bounds and aligned; AtomicU32
            // is an UnsafeCell, so writing through its pointer is allowed. No other host thread
            // touches this line meanwhile: the host publishes a position only at its tail,
            // under the publish lock (a parallel publish gives each thread its own positions),
            // and readers (reaping, watchdog, restart) stay below the tail. x86 keeps stores in
            // program order and the compiler fence keeps the compiler from reordering them,
            // so chunk 0 (STATUS) lands after chunk 1, and chunk 3 (the stamp) after chunk 2.
            unsafe {
                _mm_store_si128(dst.add(1), _mm_loadu_si128(src.add(1)));
                _mm_store_si128(dst.add(2), _mm_loadu_si128(src.add(2)));
                compiler_fence(Ordering::Release);
                _mm_store_si128(dst.add(3), _mm_loadu_si128(src.add(3)));
                _mm_store_si128(dst, _mm_loadu_si128(src));
            }
        }
    }
    /// Long runs with non-temporal stores, their stamps withheld (see [`STREAMED_MIN`]).
    #[cfg(target_arch = "x86_64")]
    fn write_slots_whole(&self, capacity: u32, first: u32, slots: &[vyre_isa::Slot]) {
        if self.stream_stores && self.wide_stores && slots.len() >= STREAMED_MIN {
            self.write_slots(capacity, first, &slots[..1]);
            self.write_streamed(capacity, first.wrapping_add(1), &slots[1..]);
        } else {
            self.write_slots(capacity, first, slots);
        }
    }
}

/// Kernel parameters; the layout matches `struct Params` in `kernels/megakernel.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct Params {
    cb: u64,
    slots: u64,
    dbg: u64,
    ds: u64,
    bufs: u64,
    progs: u64,
    step_budget: u64,
    max_bufs: u32,
    max_progs: u32,
    capacity: u32,
    dbg_capacity: u32,
    claim_batch: u32,
    ctl_sleep_ns: u32,
    worker_sleep_shift: u32,
    mirror_cycles: u32,
    trace: u64,
    ioq: u64,
    workers: u32,
}

// SAFETY: plain old data of integers with the C layout the kernel declares.
unsafe impl DeviceRepr for Params {}

#[derive(Debug)]
enum Storage {
    Device(DeviceAlloc),
    Mapped(MappedHost),
    /// A host region used in place (`register_host_region`).
    Registered(RegisteredHost),
}

/// Copies bytes out of atomic words (host side of a registered region).
fn words_read(words: &[AtomicU32], off: usize, dst: &mut [u8]) {
    for (i, b) in dst.iter_mut().enumerate() {
        let at = off + i;
        *b = words[at / 4].load(Ordering::Relaxed).to_le_bytes()[at % 4];
    }
}

/// Copies bytes into atomic words without clobbering neighbouring bytes.
fn words_write(words: &[AtomicU32], off: usize, src: &[u8]) {
    for (i, &b) in src.iter().enumerate() {
        let at = off + i;
        let _ = words[at / 4].fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
            let mut x = w.to_le_bytes();
            x[at % 4] = b;
            Some(u32::from_le_bytes(x))
        });
    }
}

#[derive(Debug)]
struct Buffer {
    storage: Storage,
    size: u64,
}

#[derive(Debug)]
struct Running {
    ring: Arc<MappedRing>,
}

/// Writes to device buffers of at least this many bytes go through pinned staging (two
/// halves of this size) rather than the driver's path for pageable memory.
const STAGED_WRITE_BYTES: usize = 256 << 10;

/// Words of stage timestamps with `VYRE_CUDA_TRACE=1`.
const TRACE_WORDS: usize = 16;

/// The cuda backend.
#[derive(Debug)]
pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    copies: Arc<CudaStream>,
    kernel_stream: Arc<CudaStream>,
    function: CudaFunction,
    kernel: CompiledKernel,
    info: DeviceInfo,
    caps: Capabilities,
    max_blocks: u32,
    state: DeviceAlloc,
    buffer_table: DeviceAlloc,
    program_table: DeviceAlloc,
    buffers: Mutex<Vec<Buffer>>,
    programs: Mutex<Vec<DeviceAlloc>>,
    placement: BufferPlacement,
    tuning: Tuning,
    ring: Mutex<Option<Arc<MappedRing>>>,
    running: OnceLock<Running>,
    /// Pinned staging for large writes to device buffers (allocated before any launch:
    /// allocations are kept away from a running kernel).
    bounce: Mutex<Bounce>,
    /// Staging memory (`create_staging`), freed after the kernel has stopped.
    pinned: Arc<PinnedPool>,
    failure: Mutex<Option<String>>,
    /// Stage timestamps written by the kernel when `VYRE_CUDA_TRACE=1` (see
    /// [`CudaBackend::trace_words`]).
    trace: Option<MappedHost>,
}

// SAFETY: cudarc's context, streams and function are usable from any thread once the
// context is bound (every entry point binds it); the rest is behind mutexes or immutable.
unsafe impl Send for CudaBackend {}
// SAFETY: see Send.
unsafe impl Sync for CudaBackend {}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl CudaBackend {
    /// Opens GPU 0, gets the megakernel from the pipeline cache (compiling it on a miss) and
    /// prepares the tables. Buffers go to device memory.
    pub fn new() -> Result<CudaBackend, BackendError> {
        CudaBackend::with_cache(&PipelineCache::open_default())
    }

    /// As [`CudaBackend::new`], with a given pipeline cache.
    pub fn with_cache(cache: &PipelineCache) -> Result<CudaBackend, BackendError> {
        CudaBackend::build(cache, false)
    }

    /// A backend in a CUDA context of its own, for [`vyre_runtime::Megakernel::restart`]
    /// after a hang (the hung kernel's context cannot load a module until it ends).
    pub fn in_fresh_context(cache: &PipelineCache) -> Result<CudaBackend, BackendError> {
        CudaBackend::build(cache, true)
    }

    fn build(cache: &PipelineCache, fresh: bool) -> Result<CudaBackend, BackendError> {
        let (ctx, info) = open_device_in(fresh)?;
        let pinned = PinnedPool::new(&ctx);
        let kernel = compile::megakernel(cache, &info.arch(), &info.key())
            .map_err(|e| launch_err("compiling the megakernel", e.to_string()))?;
        let module = ctx
            .load_module(cudarc::nvrtc::Ptx::from_binary(kernel.cubin.to_vec()))
            .map_err(|e| launch_err("loading the megakernel", e))?;
        let function = module
            .load_function("vyre_megakernel")
            .map_err(|e| launch_err("finding vyre_megakernel", e))?;
        let per_sm = function
            .occupancy_max_active_blocks_per_multiprocessor(BLOCK_THREADS, 0, None)
            .map_err(|e| launch_err("occupancy query", e))?;
        if per_sm == 0 {
            return Err(launch_err(
                "occupancy",
                "the megakernel cannot run a single block of 128 threads per SM",
            ));
        }
        let tuning = Tuning::from_env();
        let max_blocks = per_sm.min(tuning.blocks_per_sm) * info.sms;
        let copies = ctx
            .new_stream()
            .map_err(|e| launch_err("creating the copy stream", e))?;
        let kernel_stream = ctx
            .new_stream()
            .map_err(|e| launch_err("creating the kernel stream", e))?;
        let alloc = |bytes: usize| {
            DeviceAlloc::zeroed(&ctx, &copies, bytes)
                .map_err(|e| launch_err("allocating device memory", e))
        };
        let state = alloc(ds::WORDS * 4)?;
        let bounce = Bounce::new(&ctx, STAGED_WRITE_BYTES)
            .map_err(|e| launch_err("allocating pinned staging memory", e))?;
        let buffer_table = alloc(MAX_BUFFERS as usize * TABLE_ENTRY_BYTES)?;
        let trace = if std::env::var("VYRE_CUDA_TRACE").is_ok_and(|v| v == "1") {
            Some(
                MappedHost::zeroed(&ctx, TRACE_WORDS * 4)
                    .map_err(|e| launch_err("allocating the trace words", e))?,
            )
        } else {
            None
        };
        let program_table = alloc(MAX_PROGRAMS as usize * TABLE_ENTRY_BYTES)?;
        let workers = (max_blocks * WARPS_PER_BLOCK - 1) as usize;
        let caps = Capabilities {
            device: format!(
                "{} ({}, {} SMs, CUDA driver {}.{}, NVRTC {}); megakernel {}",
                info.name,
                info.arch(),
                info.sms,
                info.driver / 1000,
                info.driver % 1000 / 10,
                info.nvrtc,
                kernel.how
            ),
            kind: BackendKind::Gpu,
            model: ExecutionModel::Persistent,
            ops: SlotOp::ALL.to_vec(),
            default_workers: workers,
            max_workers: workers,
            max_buffer_bytes: MAX_BUFFER_BYTES,
            max_buffers: MAX_BUFFERS,
            max_programs: MAX_PROGRAMS,
        };
        tracing::info!(device = %caps.device, max_blocks, per_sm, ?tuning, "cuda backend ready");
        Ok(CudaBackend {
            ctx,
            copies,
            kernel_stream,
            function,
            kernel,
            info,
            caps,
            max_blocks,
            state,
            buffer_table,
            program_table,
            buffers: Mutex::new(Vec::new()),
            programs: Mutex::new(Vec::new()),
            placement: BufferPlacement::Device,
            tuning,
            ring: Mutex::new(None),
            running: OnceLock::new(),
            bounce: Mutex::new(bounce),
            pinned,
            failure: Mutex::new(None),
            trace,
        })
    }

    /// With `VYRE_CUDA_TRACE=1`: the kernel's latest stage timestamps (low 32 bits of the
    /// GPU's nanosecond timer), written by the worker that ran the last slot: 2 it found its
    /// slot published (or claimed it, with CAS claims), 0 it entered `run_lanes`, 3 it had the
    /// slot's words, 1 it entered `exec_slot`, 4 it wrote the results, 5 it stored the status;
    /// 8..11 two (timer, SM clock cycle) samples of the control warp one mirror apart. `None`
    /// without tracing.
    pub fn trace_words(&self) -> Option<[u32; 12]> {
        let t = self.trace.as_ref()?;
        Some(std::array::from_fn(|i| {
            t.words()[i].load(Ordering::Acquire)
        }))
    }

    /// As [`CudaBackend::trace_words`], once stamp 5 (the last a worker writes for a slot, after
    /// its status) differs from `last`, waiting at most 1 ms for it: the host can see a slot's
    /// status before the stamps written around it. `None` without tracing, or if stamp 5 did
    /// not change.
    pub fn trace_words_after(&self, last: u32) -> Option<[u32; 12]> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(1);
        loop {
            let w = self.trace_words()?;
            if w[5] != last {
                return Some(w);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::hint::spin_loop();
        }
    }

    /// Where `create_buffer` puts buffers from now on.
    pub fn with_placement(mut self, placement: BufferPlacement) -> CudaBackend {
        self.placement = placement;
        self
    }

    /// The device.
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// How the megakernel was obtained and how long it took.
    pub fn kernel(&self) -> &CompiledKernel {
        &self.kernel
    }

    /// The most blocks that can be co-resident (the grid never exceeds this).
    pub fn max_blocks(&self) -> u32 {
        self.max_blocks
    }

    /// Registers a zero-filled buffer with an explicit placement.
    pub fn create_buffer_in(
        &self,
        size: u64,
        placement: BufferPlacement,
    ) -> Result<u32, BackendError> {
        BackendError::check_limit("buffer size in bytes", size, MAX_BUFFER_BYTES)?;
        self.check_buffer_count(&lock(&self.buffers))?;
        // Allocated and zeroed without the buffer lock: a scan's set-up thread makes its
        // batch buffers (85 MB of page-locked hit regions each) while the driver thread
        // copies into and reads from others, which takes that lock; on an H100 host the
        // set-up took 0.2-0.3 s and the driver's copy starts stalled behind it.
        let (storage, ptr) = match placement {
            BufferPlacement::Device => {
                let d = DeviceAlloc::zeroed(&self.ctx, &self.copies, size as usize)
                    .map_err(|e| launch_err("allocating a device buffer", e))?;
                let p = d.ptr();
                (Storage::Device(d), p)
            }
            BufferPlacement::HostMapped => {
                let m = MappedHost::zeroed(&self.ctx, size as usize)
                    .map_err(|e| launch_err("allocating a mapped buffer", e))?;
                let p = m.dev_ptr();
                (Storage::Mapped(m), p)
            }
        };
        let mut buffers = lock(&self.buffers);
        // Another thread may have taken the last handle meanwhile. The memory is then kept,
        // not freed: freeing waits for the device to go idle, which the running megakernel
        // never does.
        if let Err(e) = self.check_buffer_count(&buffers) {
            std::mem::forget(storage);
            return Err(e);
        }
        self.push_buffer(&mut buffers, storage, ptr, size)
    }

    fn check_buffer_count(&self, buffers: &[Buffer]) -> Result<(), BackendError> {
        BackendError::check_limit(
            "registered buffers",
            buffers.len() as u64 + 1,
            u64::from(MAX_BUFFERS),
        )
    }

    /// Writes the buffer table entry and records the buffer; returns its handle.
    fn push_buffer(
        &self,
        buffers: &mut Vec<Buffer>,
        storage: Storage,
        ptr: u64,
        size: u64,
    ) -> Result<u32, BackendError> {
        let handle = buffers.len() as u32 + 1;
        let mut entry = [0u8; TABLE_ENTRY_BYTES];
        entry[..8].copy_from_slice(&ptr.to_le_bytes());
        entry[8..].copy_from_slice(&size.to_le_bytes());
        self.buffer_table
            .write(
                &self.copies,
                (handle as usize - 1) * TABLE_ENTRY_BYTES,
                &entry,
            )
            .map_err(|e| launch_err("writing the buffer table", e))?;
        buffers.push(Buffer { storage, size });
        Ok(handle)
    }

    fn with_buffer<R>(
        &self,
        handle: u32,
        offset: u64,
        len: u64,
        f: impl FnOnce(&Buffer) -> Result<R, BackendError>,
    ) -> Result<R, BackendError> {
        let buffers = lock(&self.buffers);
        let b = handle
            .checked_sub(1)
            .and_then(|i| buffers.get(i as usize))
            .ok_or(BackendError::BadHandle { handle })?;
        BackendError::check_range(handle, offset, len, b.size)?;
        f(b)
    }

    fn word(&self, i: usize) -> Option<u32> {
        self.running
            .get()
            .map(|r| r.ring.control()[i].load(Ordering::Acquire))
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn ring_memory(
        &self,
        capacity: u32,
        debug_capacity: u32,
    ) -> Result<Arc<dyn RingMemory>, BackendError> {
        let alloc = |bytes: usize| {
            MappedHost::zeroed(&self.ctx, bytes)
                .map_err(|e| launch_err("allocating mapped ring memory", e))
        };
        let ring = Arc::new(MappedRing {
            control: alloc(control::WORDS * 4)?,
            slots: alloc(capacity as usize * SLOT_WORDS * 4)?,
            debug: alloc(debug_capacity as usize * debug_record::RECORD_WORDS * 4)?,
            io: alloc(capacity as usize * IO_QUEUE_WORDS_PER_SLOT * 4)?,
            capacity,
            debug_capacity,
            wide_stores: std::env::var("VYRE_CUDA_WIDE_STORES").map_or(true, |v| v != "0"),
            stream_stores: std::env::var("VYRE_CUDA_STREAM_STORES").map_or(true, |v| v != "0"),
        });
        *lock(&self.ring) = Some(ring.clone());
        Ok(ring)
    }

    fn create_buffer(&self, size: u64) -> Result<u32, BackendError> {
        self.create_buffer_in(size, self.placement)
    }

    /// Mapped page-locked host memory: the kernel's writes reach it over the bus, and the
    /// host reads what it needs with no device copy.
    fn create_host_buffer(&self, size: u64) -> Result<Option<u32>, BackendError> {
        self.create_buffer_in(size, BufferPlacement::HostMapped)
            .map(Some)
    }

    fn write_buffer(&self, handle: u32, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        self.with_buffer(handle, offset, data.len() as u64, |b| match &b.storage {
            Storage::Device(d) if data.len() >= STAGED_WRITE_BYTES => {
                let mut bounce = self.bounce.lock().unwrap_or_else(|e| e.into_inner());
                d.write_staged(&self.copies, &mut bounce, offset as usize, data)
                    .map_err(|e| launch_err("copying to the device", e))
            }
            Storage::Device(d) => d
                .write(&self.copies, offset as usize, data)
                .map_err(|e| launch_err("copying to the device", e)),
            Storage::Mapped(m) => {
                m.write(offset as usize, data);
                Ok(())
            }
            Storage::Registered(r) => {
                words_write(r.words(), offset as usize, data);
                Ok(())
            }
        })
    }

    /// Every offset checked first; then mapped and registered memory written under one hold
    /// of the buffer lock, device memory word by word.
    fn write_buffer_words(&self, handle: u32, words: &[(u64, u32)]) -> Result<(), BackendError> {
        let written = self.with_buffer(handle, 0, 0, |b| {
            for &(offset, _) in words {
                BackendError::check_range(handle, offset, 4, b.size)?;
            }
            let write: &dyn Fn(usize, &[u8]) = match &b.storage {
                Storage::Mapped(m) => &|at, bytes| m.write(at, bytes),
                Storage::Registered(r) => &|at, bytes| words_write(r.words(), at, bytes),
                // Word by word through `write_buffer`, below.
                Storage::Device(_) => return Ok(false),
            };
            for &(offset, value) in words {
                write(offset as usize, &value.to_le_bytes());
            }
            Ok(true)
        })?;
        if written {
            return Ok(());
        }
        vyre_runtime::backend::write_words_each(self, handle, words)
    }

    fn create_staging(&self, bytes: usize) -> Result<Option<Box<dyn Staging>>, BackendError> {
        let p = self
            .pinned
            .take(bytes)
            .map_err(|e| launch_err("allocating page-locked staging memory", e))?;
        Ok(Some(Box::new(p)))
    }

    fn write_from_staging(
        &self,
        handle: u32,
        offset: u64,
        src: &dyn Staging,
        range: std::ops::Range<usize>,
    ) -> Result<(), BackendError> {
        let data = &src.bytes()[range];
        if src.as_any().downcast_ref::<Pinned>().is_none() {
            return self.write_buffer(handle, offset, data);
        }
        // Page-locked: the copy engine reads it directly while the caller goes on; the
        // caller waits with `wait_copies` before writing the staging memory again or
        // publishing slots that read the destination (the `Backend` contract). Host-side
        // buffers take a memcpy.
        let started =
            self.with_buffer(handle, offset, data.len() as u64, |b| match &b.storage {
                // SAFETY: `data` is page-locked staging memory that, by the contract of
                // `write_from_staging`, is neither written nor freed before `wait_copies`
                // synchronises this stream (a dropped `Pinned` goes back to a pool that frees
                // nothing while the backend lives).
                Storage::Device(d) => unsafe { d.write_async(&self.copies, offset as usize, data) }
                    .map(|()| true)
                    .map_err(|e| launch_err("copying to the device", e)),
                _ => Ok(false),
            })?;
        if started {
            Ok(())
        } else {
            self.write_buffer(handle, offset, data)
        }
    }

    fn wait_copies(&self) -> Result<(), BackendError> {
        self.ctx
            .bind_to_thread()
            .and_then(|()| self.copies.synchronize())
            .map_err(|e| launch_err("waiting for copies to the device", e))
    }

    fn read_buffer(&self, handle: u32, offset: u64, len: u64) -> Result<Vec<u8>, BackendError> {
        self.with_buffer(handle, offset, len, |b| {
            let mut out = vec![0u8; len as usize];
            match &b.storage {
                Storage::Device(d) => d
                    .read(&self.copies, offset as usize, &mut out)
                    .map_err(|e| launch_err("copying from the device", e))?,
                Storage::Mapped(m) => m.read(offset as usize, &mut out),
                Storage::Registered(r) => words_read(r.words(), offset as usize, &mut out),
            }
            Ok(out)
        })
    }

    /// Mapped memory: every range copied under one hold of the buffer lock.
    fn read_buffer_ranges(
        &self,
        handle: u32,
        spans: &[(u64, u64)],
        dst: &mut Vec<u8>,
    ) -> Result<(), BackendError> {
        let copied = self.with_buffer(handle, 0, 0, |b| {
            let Storage::Mapped(m) = &b.storage else {
                return Ok(false);
            };
            for &(offset, len) in spans {
                BackendError::check_range(handle, offset, len, b.size)?;
            }
            dst.reserve(spans.iter().map(|r| r.1 as usize).sum());
            for &(offset, len) in spans {
                let at = dst.len();
                dst.resize(at + len as usize, 0);
                m.read(offset as usize, &mut dst[at..]);
            }
            Ok(true)
        })?;
        if copied {
            return Ok(());
        }
        vyre_runtime::backend::read_ranges_each(self, handle, spans, dst)
    }

    fn register_host_region(&self, region: Arc<dyn HostRegion>) -> Result<u32, BackendError> {
        // The kernel reads the region through its mapped device address: zero copy.
        let size = region.words().len() as u64 * 4;
        BackendError::check_limit("host region size in bytes", size, MAX_BUFFER_BYTES)?;
        let mut buffers = lock(&self.buffers);
        self.check_buffer_count(&buffers)?;
        let r = RegisteredHost::register(&self.ctx, region)
            .map_err(|e| launch_err("registering a host region (cuMemHostRegister)", e))?;
        let ptr = r.dev_ptr();
        self.push_buffer(&mut buffers, Storage::Registered(r), ptr, size)
    }

    fn load_program(&self, program: Program) -> Result<u32, BackendError> {
        let bytes = program.encode();
        let mut programs = lock(&self.programs);
        BackendError::check_limit(
            "loaded programs",
            programs.len() as u64 + 1,
            u64::from(MAX_PROGRAMS),
        )?;
        let d = DeviceAlloc::zeroed(&self.ctx, &self.copies, bytes.len())
            .map_err(|e| launch_err("allocating a program", e))?;
        d.write(&self.copies, 0, &bytes)
            .map_err(|e| launch_err("copying a program", e))?;
        let id = programs.len() as u32 + 1;
        let mut entry = [0u8; TABLE_ENTRY_BYTES];
        entry[..8].copy_from_slice(&d.ptr().to_le_bytes());
        entry[8..].copy_from_slice(&((bytes.len() / 8) as u64).to_le_bytes());
        self.program_table
            .write(&self.copies, (id as usize - 1) * TABLE_ENTRY_BYTES, &entry)
            .map_err(|e| launch_err("writing the program table", e))?;
        programs.push(d);
        Ok(id)
    }

    fn launch(&self, ring: Arc<dyn RingMemory>, config: &LaunchConfig) -> Result<(), BackendError> {
        let ours = lock(&self.ring).clone().ok_or_else(|| {
            BackendError::Launch(
                "cuda: launch needs ring memory from this backend's ring_memory()".into(),
            )
        })?;
        if !std::ptr::eq(ours.control().as_ptr(), ring.control().as_ptr()) {
            return Err(BackendError::Launch(
                "cuda: this ring was not allocated by this backend's ring_memory()".into(),
            ));
        }
        let cb = ours.control();
        vyre_runtime::ring::check_header(ours.as_ref())?;
        if self.running.get().is_some() {
            return Err(BackendError::Launch(
                "cuda: this backend is already launched; create a new one".into(),
            ));
        }
        // Device state: head and tail where the control block's are; counters at zero.
        let mut state = vec![0u8; ds::WORDS * 4];
        // The head comes from the control block too: after a restart it sits at the reap
        // position, behind the tail, so that requeued slots are claimed again.
        let head = cb[control::HEAD].load(Ordering::Acquire).to_le_bytes();
        let tail = cb[control::TAIL].load(Ordering::Acquire).to_le_bytes();
        state[ds::HEAD * 4..ds::HEAD * 4 + 4].copy_from_slice(&head);
        state[ds::TAIL * 4..ds::TAIL * 4 + 4].copy_from_slice(&tail);
        // The I/O queue's worker-written cursors continue where the ring's control block has
        // them (a restart initialises a fresh ring, so they start at zero there).
        for (d, c) in [
            (ds::IO_REQ_WRITE, control::IO_REQ_WRITE),
            (ds::RESUME_HEAD, control::RESUME_HEAD),
            (ds::RESUME_TAIL, control::RESUME_TAIL),
        ] {
            let v = cb[c].load(Ordering::Acquire).to_le_bytes();
            state[d * 4..d * 4 + 4].copy_from_slice(&v);
        }
        self.state
            .write(&self.copies, 0, &state)
            .map_err(|e| launch_err("initialising device state", e))?;
        // Grid: the control warp plus `workers` worker warps, never more than co-resident.
        let blocks =
            ((config.workers as u32 + 1).div_ceil(WARPS_PER_BLOCK)).clamp(1, self.max_blocks);
        let workers = (blocks * WARPS_PER_BLOCK - 1).min(config.workers.max(1) as u32);
        let params = Params {
            cb: ours.control.dev_ptr(),
            slots: ours.slots.dev_ptr(),
            dbg: ours.debug.dev_ptr(),
            ds: self.state.ptr(),
            bufs: self.buffer_table.ptr(),
            progs: self.program_table.ptr(),
            step_budget: config.step_budget,
            max_bufs: MAX_BUFFERS,
            max_progs: MAX_PROGRAMS,
            capacity: ours.capacity,
            dbg_capacity: ours.debug_capacity,
            claim_batch: config.claim_batch.min(32),
            ctl_sleep_ns: self.tuning.ctl_sleep_ns,
            worker_sleep_shift: self.tuning.worker_sleep_shift,
            mirror_cycles: self.tuning.mirror_cycles,
            trace: self.trace.as_ref().map_or(0, |t| t.dev_ptr()),
            ioq: ours.io.dev_ptr(),
            workers,
        };
        let cfg = CuLaunch {
            grid_dim: (blocks, 1, 1),
            block_dim: (BLOCK_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.kernel_stream.launch_builder(&self.function);
        b.arg(&params);
        // SAFETY: the parameters match the kernel's signature; every pointer in them stays
        // valid until the kernel has stopped (the backend outlives it and frees nothing while
        // it runs); a cooperative launch refuses a grid that cannot be co-resident.
        unsafe { b.launch_cooperative(cfg) }
            .map_err(|e| launch_err("cooperative launch of the megakernel", e))?;
        let _ = self.running.set(Running { ring: ours.clone() });
        // Return once every worker warp is in its claim loop (the control warp mirrors the count).
        let started = Instant::now();
        loop {
            if cb[control::WORKERS_RUNNING].load(Ordering::Acquire) == workers {
                tracing::info!(blocks, workers, "cuda megakernel running");
                return Ok(());
            }
            if let Err(e) = driver::stream_done(&self.kernel_stream) {
                return Err(launch_err("the megakernel failed at start", e));
            }
            if started.elapsed() > Duration::from_secs(10) {
                return Err(BackendError::Launch(format!(
                    "cuda: only {} of {workers} worker warps started within 10 s",
                    cb[control::WORKERS_RUNNING].load(Ordering::Acquire)
                )));
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    fn doorbell(&self) {
        // The control warp polls the tail; nothing to ring.
    }

    fn stop(&self) -> Result<(), BackendError> {
        let Some(r) = self.running.get() else {
            return Ok(());
        };
        r.ring.control()[control::SHUTDOWN].store(1, Ordering::Release);
        let started = Instant::now();
        loop {
            match driver::stream_done(&self.kernel_stream) {
                Ok(true) => return Ok(()),
                Ok(false) if started.elapsed() < Duration::from_secs(10) => {
                    std::thread::sleep(Duration::from_micros(100))
                }
                Ok(false) => {
                    let msg = "the megakernel did not stop within 10 s of SHUTDOWN; the device may be hung".to_string();
                    *lock(&self.failure) = Some(msg.clone());
                    return Err(BackendError::Launch(format!("cuda: {msg}")));
                }
                Err(e) => {
                    *lock(&self.failure) = Some(format!("{e:?}"));
                    return Err(launch_err("the megakernel failed", e));
                }
            }
        }
    }

    fn health(&self) -> Health {
        if self.running.get().is_none() {
            return Health {
                workers_running: 0,
                heartbeat: 0,
                stopped: false,
                failure: None,
            };
        }
        let done = driver::stream_done(&self.kernel_stream);
        if let Err(e) = &done {
            lock(&self.failure).get_or_insert_with(|| format!("the megakernel failed: {e:?}"));
        }
        Health {
            workers_running: self.word(control::WORKERS_RUNNING).unwrap_or(0) as usize,
            heartbeat: self.word(control::HEARTBEAT).unwrap_or(0),
            stopped: !matches!(done, Ok(false)),
            failure: lock(&self.failure).clone(),
        }
    }
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        if self.running.get().is_some() && self.stop().is_err() {
            // Freeing memory under a kernel that still runs would be worse than leaking it.
            tracing::error!("cuda megakernel still running at drop; leaking its memory");
            let bufs = std::mem::take(&mut *lock(&self.buffers));
            let progs = std::mem::take(&mut *lock(&self.programs));
            std::mem::forget(bufs);
            std::mem::forget(progs);
            if let Some(r) = self.running.take() {
                std::mem::forget(r);
            }
            std::mem::forget(lock(&self.ring).take());
            std::mem::forget(self.pinned.clone());
        }
    }
}

/// Creates cuda backends for routing.
#[derive(Debug, Default)]
pub struct CudaProvider;

impl BackendProvider for CudaProvider {
    fn name(&self) -> &'static str {
        "cuda"
    }
    fn kind(&self) -> BackendKind {
        BackendKind::Gpu
    }
    fn probe(&self) -> Result<Capabilities, BackendError> {
        let (ctx, info) = open_device()?;
        *PROBED.lock().unwrap_or_else(|e| e.into_inner()) = Some((ctx, info.clone()));
        Ok(Capabilities {
            device: format!(
                "{} ({}, {} SMs, CUDA driver {}.{}, NVRTC {})",
                info.name,
                info.arch(),
                info.sms,
                info.driver / 1000,
                info.driver % 1000 / 10,
                info.nvrtc
            ),
            kind: BackendKind::Gpu,
            model: ExecutionModel::Persistent,
            ops: SlotOp::ALL.to_vec(),
            default_workers: (info.sms * Tuning::from_env().blocks_per_sm * WARPS_PER_BLOCK - 1)
                as usize,
            max_workers: (info.sms * Tuning::from_env().blocks_per_sm * WARPS_PER_BLOCK - 1)
                as usize,
            max_buffer_bytes: MAX_BUFFER_BYTES,
            max_buffers: MAX_BUFFERS,
            max_programs: MAX_PROGRAMS,
        })
    }
    fn create(&self) -> Result<Arc<dyn Backend>, BackendError> {
        Ok(Arc::new(CudaBackend::new()?))
    }
}
