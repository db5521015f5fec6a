//! The unsafe edge: raw CUDA driver allocations and copies. Everything the persistent kernel
//! touches is allocated here, outside cudarc's tracked slices: a tracked slice records an
//! event per launch, and an event recorded after a kernel that never ends would make every
//! later copy of that slice wait forever.

use cudarc::driver::{result, sys, CudaContext, CudaStream, DriverError};
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex};
use vyre_runtime::HostRegion;

/// Bytes of zeros copied per call when zeroing device memory.
const ZERO_CHUNK: usize = 4 << 20;

/// Device memory from `cuMemAlloc`, freed on drop.
#[derive(Debug)]
pub(crate) struct DeviceAlloc {
    ptr: sys::CUdeviceptr,
    bytes: usize,
    ctx: Arc<CudaContext>,
}

impl DeviceAlloc {
    /// `bytes` of device memory (at least 1), zeroed through `stream`.
    ///
    /// Zeroed by copying zeros from the host, not with `cuMemset`: a memset of more than a few
    /// KiB runs as a kernel, and while the persistent megakernel holds every SM no other kernel
    /// can be scheduled, so the memset (and the host waiting for it) would never finish. Copies
    /// run on the copy engines and proceed while the megakernel runs.
    pub(crate) fn zeroed(
        ctx: &Arc<CudaContext>,
        stream: &CudaStream,
        bytes: usize,
    ) -> Result<DeviceAlloc, DriverError> {
        ctx.bind_to_thread()?;
        // SAFETY: a plain allocation of a positive size; freed exactly once in Drop.
        let ptr = unsafe { result::malloc_sync(bytes.max(1))? };
        let alloc = DeviceAlloc {
            ptr,
            bytes: bytes.max(1),
            ctx: ctx.clone(),
        };
        let zeros = vec![0u8; alloc.bytes.min(ZERO_CHUNK)];
        let mut done = 0;
        while done < alloc.bytes {
            let n = (alloc.bytes - done).min(ZERO_CHUNK);
            alloc.write(stream, done, &zeros[..n])?;
            done += n;
        }
        Ok(alloc)
    }

    /// The device address.
    pub(crate) fn ptr(&self) -> u64 {
        self.ptr
    }

    /// Copies `src` to `offset` and waits for the copy.
    pub(crate) fn write(
        &self,
        stream: &CudaStream,
        offset: usize,
        src: &[u8],
    ) -> Result<(), DriverError> {
        // SAFETY: `src` outlives the copy because we synchronise the stream before returning.
        unsafe {
            self.write_async(stream, offset, src)?;
            result::stream::synchronize(stream.cu_stream())
        }
    }

    /// Starts copying `src` to `offset` on `stream` and returns without waiting.
    ///
    /// # Safety
    ///
    /// `src` must stay valid and unmodified until `stream` has been synchronised (for
    /// page-locked memory the copy engine reads it directly while the copy runs).
    pub(crate) unsafe fn write_async(
        &self,
        stream: &CudaStream,
        offset: usize,
        src: &[u8],
    ) -> Result<(), DriverError> {
        assert!(
            offset + src.len() <= self.bytes,
            "device write out of range"
        );
        if src.is_empty() {
            return Ok(());
        }
        self.ctx.bind_to_thread()?;
        // SAFETY: the destination range is inside the allocation (asserted); the caller keeps
        // `src` alive and unmodified until the stream is synchronised.
        unsafe { result::memcpy_htod_async(self.ptr + offset as u64, src, stream.cu_stream()) }
    }

    /// Copies `src` to `offset` through the page-locked `bounce` buffer and waits: the
    /// host copies into one half while the copy engine reads the other, instead of the
    /// driver's slower path for pageable memory.
    pub(crate) fn write_staged(
        &self,
        stream: &CudaStream,
        bounce: &mut Bounce,
        offset: usize,
        src: &[u8],
    ) -> Result<(), DriverError> {
        assert!(
            offset + src.len() <= self.bytes,
            "device write out of range"
        );
        self.ctx.bind_to_thread()?;
        for (i, chunk) in src.chunks(bounce.half).enumerate() {
            let h = i % 2;
            // SAFETY: the half is `bounce.half` bytes inside the pinned allocation; before it
            // is overwritten, the event recorded after the copy that last read it has
            // completed; the destination range is inside this allocation (asserted).
            unsafe {
                if bounce.recorded[h] {
                    result::event::synchronize(bounce.events[h])?;
                }
                let staged = bounce.host.add(h * bounce.half);
                std::ptr::copy_nonoverlapping(chunk.as_ptr(), staged, chunk.len());
                let staged = std::slice::from_raw_parts(staged as *const u8, chunk.len());
                let dst = self.ptr + (offset + i * bounce.half) as u64;
                result::memcpy_htod_async(dst, staged, stream.cu_stream())?;
                result::event::record(bounce.events[h], stream.cu_stream())?;
            }
            bounce.recorded[h] = true;
        }
        // SAFETY: waits for every copy issued above.
        unsafe { result::stream::synchronize(stream.cu_stream()) }
    }

    /// Copies `dst.len()` bytes from `offset` and waits for the copy.
    pub(crate) fn read(
        &self,
        stream: &CudaStream,
        offset: usize,
        dst: &mut [u8],
    ) -> Result<(), DriverError> {
        assert!(offset + dst.len() <= self.bytes, "device read out of range");
        if dst.is_empty() {
            return Ok(());
        }
        self.ctx.bind_to_thread()?;
        // SAFETY: the source range is inside the allocation (asserted); `dst` is exclusively
        // borrowed until the stream is synchronised.
        unsafe {
            result::memcpy_dtoh_async(dst, self.ptr + offset as u64, stream.cu_stream())?;
            result::stream::synchronize(stream.cu_stream())
        }
    }
}

impl Drop for DeviceAlloc {
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
        // SAFETY: allocated by malloc_sync in `zeroed`, freed only here. The backend drops
        // allocations only after the kernel has stopped.
        let _ = unsafe { result::free_sync(self.ptr) };
    }
}

/// Page-locked host memory for staging large host-to-device copies: two halves, each with an
/// event recorded after the copy that reads it.
#[derive(Debug)]
pub(crate) struct Bounce {
    host: *mut u8,
    half: usize,
    events: [sys::CUevent; 2],
    recorded: [bool; 2],
    ctx: Arc<CudaContext>,
}

// SAFETY: the pinned memory and events are owned by this value and used under `&mut self`.
unsafe impl Send for Bounce {}

impl Bounce {
    /// Two halves of `half` bytes.
    pub(crate) fn new(ctx: &Arc<CudaContext>, half: usize) -> Result<Bounce, DriverError> {
        ctx.bind_to_thread()?;
        // SAFETY: a plain pinned allocation, freed exactly once in Drop.
        let host = unsafe { result::malloc_host(2 * half, 0)? } as *mut u8;
        let mut b = Bounce {
            host,
            half,
            events: [std::ptr::null_mut(); 2],
            recorded: [false; 2],
            ctx: ctx.clone(),
        };
        for e in &mut b.events {
            *e = result::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING)?;
        }
        Ok(b)
    }
}

impl Drop for Bounce {
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
        for (e, recorded) in self.events.iter().zip(self.recorded) {
            if !e.is_null() {
                // SAFETY: created in `new`, destroyed only here, after its copy completed.
                unsafe {
                    if recorded {
                        let _ = result::event::synchronize(*e);
                    }
                    let _ = result::event::destroy(*e);
                }
            }
        }
        // SAFETY: allocated by malloc_host in `new`, freed only here, with no copy reading it.
        let _ = unsafe { result::free_host(self.host.cast()) };
    }
}

/// Page-locked host memory mapped into the device's address space (`cuMemHostAlloc` with
/// DEVICEMAP | PORTABLE; not write-combined, because the host reads it back).
#[derive(Debug)]
pub(crate) struct MappedHost {
    host: *mut u8,
    dev: sys::CUdeviceptr,
    bytes: usize,
    ctx: Arc<CudaContext>,
}

// SAFETY: the memory is plain pinned host memory owned by this value; every concurrent
// access from the host goes through `words()` (atomics) or through explicit copies that
// callers order with the ring protocol.
unsafe impl Send for MappedHost {}
// SAFETY: see Send; shared access is through atomics.
unsafe impl Sync for MappedHost {}

impl MappedHost {
    /// `bytes` (rounded up to a multiple of 16) of zeroed mapped memory.
    pub(crate) fn zeroed(ctx: &Arc<CudaContext>, bytes: usize) -> Result<MappedHost, DriverError> {
        let bytes = bytes.max(16).next_multiple_of(16);
        ctx.bind_to_thread()?;
        // SAFETY: a plain allocation; freed exactly once in Drop.
        let host = unsafe {
            result::malloc_host(
                bytes,
                sys::CU_MEMHOSTALLOC_DEVICEMAP | sys::CU_MEMHOSTALLOC_PORTABLE,
            )?
        } as *mut u8;
        // SAFETY: `host` points to `bytes` writable bytes just allocated.
        unsafe { std::ptr::write_bytes(host, 0, bytes) };
        let mut dev: sys::CUdeviceptr = 0;
        // SAFETY: `host` came from cuMemHostAlloc with DEVICEMAP, so it has a device address.
        let r = unsafe { sys::cuMemHostGetDevicePointer_v2(&mut dev, host.cast(), 0).result() };
        let m = MappedHost {
            host,
            dev,
            bytes,
            ctx: ctx.clone(),
        };
        r?;
        Ok(m)
    }

    /// The device address.
    pub(crate) fn dev_ptr(&self) -> u64 {
        self.dev
    }

    /// The memory as atomic words.
    pub(crate) fn words(&self) -> &[AtomicU32] {
        // SAFETY: cuMemHostAlloc returns page-aligned memory of `bytes` (a multiple of 16)
        // that lives as long as `self`; AtomicU32 has the size and alignment of u32 and any
        // bit pattern is valid; host accesses through this slice are atomic, except the
        // 16-byte stores that publish a slot (`MappedRing::write_slot_line`), which no other
        // host access to that line overlaps.
        unsafe { std::slice::from_raw_parts(self.host as *const AtomicU32, self.bytes / 4) }
    }

    /// Copies bytes in (the device may read them concurrently; callers publish after this).
    pub(crate) fn write(&self, offset: usize, src: &[u8]) {
        assert!(
            offset + src.len() <= self.bytes,
            "mapped write out of range"
        );
        // SAFETY: the range is inside the allocation (asserted) and `src` cannot overlap it
        // (it is a Rust borrow of other memory).
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.host.add(offset), src.len()) };
    }

    /// Copies bytes out.
    pub(crate) fn read(&self, offset: usize, dst: &mut [u8]) {
        assert!(offset + dst.len() <= self.bytes, "mapped read out of range");
        // SAFETY: the range is inside the allocation (asserted); `dst` is exclusively borrowed.
        unsafe {
            std::ptr::copy_nonoverlapping(self.host.add(offset), dst.as_mut_ptr(), dst.len())
        };
    }
}

impl Drop for MappedHost {
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
        // SAFETY: allocated by malloc_host in `zeroed`, freed only here, after the kernel
        // that used it has stopped.
        let _ = unsafe { result::free_host(self.host.cast()) };
    }
}

/// Page-locked blocks of staging memory that dropped [`Pinned`] values gave back, kept for
/// reuse and freed only when the pool goes, after the backend has stopped its kernel:
/// `cuMemFreeHost` waits for the device to go idle, which a persistent kernel never does
/// (a scan that freed its staging at the end hung there).
pub(crate) struct PinnedPool {
    free: Mutex<Vec<(usize, usize)>>,
    ctx: Arc<CudaContext>,
}

impl std::fmt::Debug for PinnedPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PinnedPool({} free)", lock(&self.free).len())
    }
}

impl PinnedPool {
    pub(crate) fn new(ctx: &Arc<CudaContext>) -> Arc<PinnedPool> {
        Arc::new(PinnedPool {
            free: Mutex::new(Vec::new()),
            ctx: ctx.clone(),
        })
    }

    /// `bytes` of page-locked memory: a block given back earlier, or a new zeroed one.
    pub(crate) fn take(self: &Arc<Self>, bytes: usize) -> Result<Pinned, DriverError> {
        let reused = {
            let mut free = lock(&self.free);
            let i = free.iter().position(|&(_, n)| n == bytes);
            i.map(|i| free.swap_remove(i))
        };
        let host = match reused {
            Some((host, _)) => host as *mut u8,
            None => {
                self.ctx.bind_to_thread()?;
                // SAFETY: a plain allocation of a positive size; freed exactly once, when the
                // pool goes.
                let host =
                    unsafe { result::malloc_host(bytes.max(1), sys::CU_MEMHOSTALLOC_PORTABLE)? }
                        as *mut u8;
                // SAFETY: `host` points to at least `bytes` writable bytes just allocated.
                unsafe { std::ptr::write_bytes(host, 0, bytes) };
                host
            }
        };
        Ok(Pinned {
            host,
            bytes,
            pool: self.clone(),
        })
    }
}

impl Drop for PinnedPool {
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
        for &(host, _) in lock(&self.free).iter() {
            // SAFETY: allocated by malloc_host in `take`, given back once, freed only here.
            let _ = unsafe { result::free_host(host as *mut std::ffi::c_void) };
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Page-locked host memory handed out as staging (`Backend::create_staging`): a copy from
/// it to the device is one DMA, with no bounce copy on the host. Portable, so a backend
/// restarted on a fresh context copies from it too. Dropping it gives it back to its pool.
pub(crate) struct Pinned {
    host: *mut u8,
    bytes: usize,
    pool: Arc<PinnedPool>,
}

impl std::fmt::Debug for Pinned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pinned({} bytes)", self.bytes)
    }
}

// SAFETY: plain page-locked host memory owned by this value; shared access is read-only
// (`bytes`), mutable access needs `&mut self`.
unsafe impl Send for Pinned {}
// SAFETY: see Send.
unsafe impl Sync for Pinned {}

impl vyre_runtime::Staging for Pinned {
    fn bytes(&self) -> &[u8] {
        // SAFETY: `bytes` initialised bytes (zeroed when allocated) owned by `self`.
        unsafe { std::slice::from_raw_parts(self.host, self.bytes) }
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, borrowed exclusively through `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.host, self.bytes) }
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        // Copies from it are synchronous, so none is in flight.
        lock(&self.pool.free).push((self.host as usize, self.bytes));
    }
}

/// Host memory owned elsewhere (io_uring ingest's staging region), page-locked and mapped
/// into the device's address space in place with `cuMemHostRegister` (no copy); unregistered
/// on drop. Holding the `Arc` keeps the memory alive and unmoved while it is registered.
#[derive(Debug)]
pub(crate) struct RegisteredHost {
    region: Arc<dyn HostRegion>,
    dev: sys::CUdeviceptr,
    ctx: Arc<CudaContext>,
    registered: bool,
}

// SAFETY: the memory belongs to `region` (Send + Sync, accessed through atomics on the host);
// the device pointer is just an address.
unsafe impl Send for RegisteredHost {}
// SAFETY: see Send.
unsafe impl Sync for RegisteredHost {}

impl RegisteredHost {
    /// Page-locks and maps `region` (it must be page-aligned, as ingest's mapping is).
    pub(crate) fn register(
        ctx: &Arc<CudaContext>,
        region: Arc<dyn HostRegion>,
    ) -> Result<RegisteredHost, DriverError> {
        ctx.bind_to_thread()?;
        let words = region.words();
        let (ptr, bytes) = (words.as_ptr() as *mut std::ffi::c_void, words.len() * 4);
        let mut me = RegisteredHost {
            region: region.clone(),
            dev: 0,
            ctx: ctx.clone(),
            registered: false,
        };
        // SAFETY: `ptr..ptr+bytes` is live memory owned by `region`, which `me` keeps alive
        // until Drop unregisters it; registering only pins and maps it, the contents are not
        // touched.
        unsafe {
            sys::cuMemHostRegister_v2(
                ptr,
                bytes,
                sys::CU_MEMHOSTREGISTER_DEVICEMAP | sys::CU_MEMHOSTREGISTER_PORTABLE,
            )
            .result()?
        };
        me.registered = true;
        // SAFETY: `ptr` was just registered with DEVICEMAP, so it has a device address.
        unsafe { sys::cuMemHostGetDevicePointer_v2(&mut me.dev, ptr, 0).result()? };
        Ok(me)
    }

    /// The device address.
    pub(crate) fn dev_ptr(&self) -> u64 {
        self.dev
    }

    /// The memory as atomic words (host reads and writes).
    pub(crate) fn words(&self) -> &[AtomicU32] {
        self.region.words()
    }
}

impl Drop for RegisteredHost {
    fn drop(&mut self) {
        if !self.registered {
            return;
        }
        let _ = self.ctx.bind_to_thread();
        let ptr = self.region.words().as_ptr() as *mut std::ffi::c_void;
        // SAFETY: registered in `register`, unregistered only here, after the kernel that
        // used it has stopped (backends are dropped only then).
        let _ = unsafe { sys::cuMemHostUnregister(ptr).result() };
    }
}

/// Whether the kernel's stream has finished (`Ok(true)`), is still running (`Ok(false)`), or
/// failed.
pub(crate) fn stream_done(stream: &CudaStream) -> Result<bool, DriverError> {
    stream.context().bind_to_thread()?;
    // SAFETY: querying a live stream handle has no preconditions.
    match unsafe { sys::cuStreamQuery(stream.cu_stream()) } {
        sys::CUresult::CUDA_SUCCESS => Ok(true),
        sys::CUresult::CUDA_ERROR_NOT_READY => Ok(false),
        e => Err(DriverError(e)),
    }
}

/// The driver's CUDA version (e.g. 13000).
pub(crate) fn driver_version() -> Result<i32, DriverError> {
    let mut v = 0;
    // SAFETY: writes one int.
    unsafe { sys::cuDriverGetVersion(&mut v).result()? };
    Ok(v)
}
