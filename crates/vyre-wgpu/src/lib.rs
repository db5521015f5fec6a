//! vyre's wgpu backend: a WGSL megakernel run in epochs (Vulkan, Metal, DX12; lavapipe in CI).
//!
//! wgpu cannot let the host write memory that a running dispatch reads, so this backend runs
//! the ring in *epochs* ([`vyre_runtime::ExecutionModel::Epoch`]): the ring lives in host
//! memory, one driver thread per backend claims what has been published, stages it into a GPU
//! buffer and drains it with one dispatch, double-buffered (`epoch.rs`). Buffers and programs
//! live on the GPU (`heap.rs`); the megakernel (`shaders/megakernel.wgsl`, constants generated
//! by `shader.rs`) implements every slot opcode and the EXEC machine with the cpu
//! interpreter's exact semantics. The device, the start-up canary and the pipeline are shared
//! by every backend of the process (`gpu.rs`).

#![deny(unsafe_op_in_unsafe_fn)]

pub mod bench;
mod epoch;
mod gpu;
mod heap;
pub mod shader;

pub use epoch::MAX_EPOCH_SLOTS;
pub use gpu::{
    canary_expected, judge_canary, Gpu, MegakernelPipeline, CANARY_ITERATIONS, LOOP_CAP_HINT,
};

use heap::Heap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;
use vyre_isa::{Program, SlotOp};
use vyre_runtime::protocol::control;
use vyre_runtime::ring::{HeapRing, RingMemory};
use vyre_runtime::{
    Backend, BackendError, BackendKind, BackendProvider, Capabilities, ExecutionModel, Health,
    LaunchConfig,
};

const MAX_BUFFERS: u32 = 1 << 16;
const MAX_PROGRAMS: u32 = 1 << 12;
/// Most invocations that claim slots in one dispatch.
const MAX_WORKERS: usize = 1 << 16;

/// Where the idle driver sleeps until the host publishes.
#[derive(Debug, Default)]
pub(crate) struct Doorbell {
    rung: Mutex<bool>,
    cv: Condvar,
}

impl Doorbell {
    fn ring(&self) {
        *self.rung.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cv.notify_all();
    }

    /// Sleeps until rung or `ready()`; wakes every 2 ms to look anyway.
    pub(crate) fn wait(&self, ready: impl Fn() -> bool) {
        let mut rung = self.rung.lock().unwrap_or_else(|e| e.into_inner());
        while !*rung && !ready() {
            rung = self
                .cv
                .wait_timeout(rung, Duration::from_millis(2))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *rung = false;
    }
}

/// What the backend and its driver thread share.
#[derive(Debug)]
pub(crate) struct WgpuShared {
    pub(crate) gpu: Arc<Gpu>,
    pub(crate) heap: Mutex<Heap>,
    pub(crate) doorbell: Doorbell,
}

/// The wgpu backend.
#[derive(Debug)]
pub struct WgpuMegakernelDispatcher {
    caps: Capabilities,
    shared: Arc<WgpuShared>,
    ring: OnceLock<Arc<dyn RingMemory>>,
    driver: Mutex<Option<JoinHandle<()>>>,
    failure: Arc<Mutex<Option<String>>>,
}

fn capabilities(gpu: &Gpu, page_bytes: u64, pipeline: &str) -> Capabilities {
    let default_workers = if gpu.is_cpu() { 256 } else { 8192 };
    let page = if page_bytes >= 1 << 20 {
        format!("{} MiB", page_bytes >> 20)
    } else {
        format!("{} KiB", page_bytes >> 10)
    };
    // A software adapter (lavapipe) is emulation on the host's cores: routing ranks it after
    // the native cpu backend.
    let kind = if gpu.is_cpu() {
        BackendKind::Cpu
    } else {
        BackendKind::Gpu
    };
    Capabilities {
        device: format!(
            "wgpu: {}; epochs of up to {MAX_EPOCH_SLOTS} slots; heap {} bindings of {page}; \
             pipeline: {pipeline}",
            gpu.describe(),
            shader::MAX_PAGES,
        ),
        kind,
        model: ExecutionModel::Epoch,
        ops: SlotOp::ALL.to_vec(),
        default_workers,
        max_workers: MAX_WORKERS,
        max_buffer_bytes: (shader::MAX_PAGES as u64 * page_bytes).min(1 << 32),
        max_buffers: MAX_BUFFERS,
        max_programs: MAX_PROGRAMS,
    }
}

impl WgpuMegakernelDispatcher {
    /// A backend on the process's wgpu device (created, with its canary, on first use).
    pub fn new() -> Result<WgpuMegakernelDispatcher, BackendError> {
        let gpu = gpu::shared()?;
        let page = gpu.page_bytes;
        Self::on(gpu, page)
    }

    /// A backend whose heap pages (one storage binding each) hold `page_bytes`, a power of two
    /// from 4 KiB up to the adapter's limit: tests use small pages to exercise buffers that
    /// span several bindings.
    pub fn with_page_bytes(page_bytes: u64) -> Result<WgpuMegakernelDispatcher, BackendError> {
        let gpu = gpu::shared()?;
        if !page_bytes.is_power_of_two() || !(4096..=gpu.page_bytes).contains(&page_bytes) {
            return Err(BackendError::Limit {
                what: "wgpu heap page bytes (a power of two from 4096)",
                requested: page_bytes,
                limit: gpu.page_bytes,
            });
        }
        Self::on(gpu, page_bytes)
    }

    fn on(gpu: Arc<Gpu>, page_bytes: u64) -> Result<WgpuMegakernelDispatcher, BackendError> {
        let caps = capabilities(&gpu, page_bytes, &gpu.megakernel()?.how);
        let heap = Heap::new(&gpu.device, page_bytes);
        Ok(WgpuMegakernelDispatcher {
            caps,
            shared: Arc::new(WgpuShared {
                gpu,
                heap: Mutex::new(heap),
                doorbell: Doorbell::default(),
            }),
            ring: OnceLock::new(),
            driver: Mutex::new(None),
            failure: Arc::new(Mutex::new(None)),
        })
    }

    /// The device this backend runs on.
    pub fn gpu(&self) -> &Gpu {
        &self.shared.gpu
    }

    fn heap(&self) -> std::sync::MutexGuard<'_, Heap> {
        self.shared.heap.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Backend for WgpuMegakernelDispatcher {
    fn name(&self) -> &'static str {
        "wgpu"
    }
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }
    fn ring_memory(
        &self,
        capacity: u32,
        debug_capacity: u32,
    ) -> Result<Arc<dyn RingMemory>, BackendError> {
        self.heap()
            .set_debug_capacity(&self.shared.gpu.device, debug_capacity);
        Ok(Arc::new(HeapRing::new(capacity, debug_capacity)))
    }
    fn create_buffer(&self, size: u64) -> Result<u32, BackendError> {
        let gpu = &self.shared.gpu;
        self.heap()
            .create(&gpu.device, &gpu.queue, size, MAX_BUFFERS)
    }
    fn write_buffer(&self, handle: u32, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        let gpu = &self.shared.gpu;
        self.heap()
            .write(&gpu.device, &gpu.queue, handle, offset, data)
    }
    fn read_buffer(&self, handle: u32, offset: u64, len: u64) -> Result<Vec<u8>, BackendError> {
        let gpu = &self.shared.gpu;
        self.heap()
            .read(&gpu.device, &gpu.queue, handle, offset, len)
    }
    fn load_program(&self, program: Program) -> Result<u32, BackendError> {
        self.heap().load_program(&program, MAX_PROGRAMS)
    }
    fn launch(&self, ring: Arc<dyn RingMemory>, config: &LaunchConfig) -> Result<(), BackendError> {
        vyre_runtime::ring::check_header(ring.as_ref())?;
        if self.ring.set(ring.clone()).is_err() {
            return Err(BackendError::Launch(
                "this wgpu backend is already launched; create a new one".into(),
            ));
        }
        epoch::seed_state(&self.shared, ring.as_ref());
        let driver = epoch::Driver::new(
            self.shared.clone(),
            ring.clone(),
            epoch::DriverConfig {
                active: config.workers.clamp(1, MAX_WORKERS) as u32,
                step_budget: config.step_budget,
            },
        );
        let failure = self.failure.clone();
        let handle = std::thread::Builder::new()
            .name("vyre-wgpu-epochs".into())
            .spawn(move || {
                let outcome =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| driver.run()));
                let why = match outcome {
                    Ok(Ok(())) => return,
                    Ok(Err(e)) => e.to_string(),
                    Err(p) => p
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "panic".into()),
                };
                tracing::error!(%why, "wgpu epoch driver stopped");
                *failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
            })
            .map_err(|e| {
                BackendError::Launch(format!("cannot start the wgpu epoch thread: {e}"))
            })?;
        *self.driver.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        // Return once the driver is in its loop, so that health sees a running backend.
        let started = std::time::Instant::now();
        while ring.control()[control::WORKERS_RUNNING].load(Ordering::Acquire) == 0 {
            if self
                .failure
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some()
                || started.elapsed() > Duration::from_secs(10)
            {
                return Err(BackendError::Launch(
                    "the wgpu epoch thread did not start".into(),
                ));
            }
            std::thread::yield_now();
        }
        Ok(())
    }
    fn doorbell(&self) {
        self.shared.doorbell.ring();
    }
    fn stop(&self) -> Result<(), BackendError> {
        self.shared.doorbell.ring();
        let handle = self.driver.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
        match self
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            Some(why) if !why.starts_with("aborted") => Err(BackendError::Launch(why)),
            _ => Ok(()),
        }
    }
    fn health(&self) -> Health {
        let failure = self
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(ring) = self.ring.get() else {
            return Health {
                workers_running: 0,
                heartbeat: 0,
                stopped: false,
                failure,
            };
        };
        let c = ring.control();
        let running = c[control::WORKERS_RUNNING].load(Ordering::Acquire) as usize;
        let finished = self
            .driver
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_none_or(|h| h.is_finished());
        Health {
            workers_running: running,
            heartbeat: c[control::HEARTBEAT].load(Ordering::Relaxed),
            stopped: finished || failure.is_some(),
            failure,
        }
    }
}

/// Creates wgpu backends for routing.
#[derive(Debug, Default)]
pub struct WgpuProvider;

impl BackendProvider for WgpuProvider {
    fn name(&self) -> &'static str {
        "wgpu"
    }
    fn kind(&self) -> BackendKind {
        BackendKind::Gpu
    }
    fn probe(&self) -> Result<Capabilities, BackendError> {
        let gpu = gpu::shared()?;
        let pipeline = match gpu.megakernel.get() {
            Some(Ok(m)) => m.how.as_str(),
            _ => "built on first use",
        };
        Ok(capabilities(&gpu, gpu.page_bytes, pipeline))
    }
    fn create(&self) -> Result<Arc<dyn Backend>, BackendError> {
        Ok(Arc::new(WgpuMegakernelDispatcher::new()?))
    }
}

/// The process's wgpu device, opening it (adapter, canary, pipeline) on first use.
pub fn device() -> Result<Arc<Gpu>, BackendError> {
    gpu::shared()
}
