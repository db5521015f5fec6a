//! vyre's cpu backend: persistent worker threads claim slots from the same ring layout the
//! GPU backends use and execute them with the reference interpreter. It is the embedded
//! default and the correctness oracle. It contains no `unsafe`.

#![forbid(unsafe_code)]

mod memory;
mod worker;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use vyre_isa::{Program, SlotOp};
use vyre_runtime::protocol::control;
use vyre_runtime::ring::{HeapRing, RingMemory};
use vyre_runtime::{
    Backend, BackendError, BackendKind, BackendProvider, Capabilities, ExecutionModel, Health,
    HostRegion, LaunchConfig,
};
use worker::{Parking, Shared};

/// Largest buffer: offsets are 32-bit, so 4 GiB.
const MAX_BUFFER_BYTES: u64 = 1 << 32;
const MAX_BUFFERS: u32 = 1 << 16;
const MAX_PROGRAMS: u32 = 1 << 12;
/// Most worker threads one cpu backend starts.
const MAX_WORKERS: usize = 256;

/// The cpu backend.
#[derive(Debug)]
pub struct CpuBackend {
    caps: Capabilities,
    shared: Arc<Shared>,
    ring: OnceLock<Arc<dyn RingMemory>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl Default for CpuBackend {
    fn default() -> Self {
        CpuBackend::new()
    }
}

impl CpuBackend {
    /// A cpu backend whose default worker count is the number of available cores.
    pub fn new() -> CpuBackend {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let default_workers = cores;
        CpuBackend {
            caps: Capabilities {
                device: format!("cpu: {cores} core(s), {default_workers} worker(s) by default"),
                kind: BackendKind::Cpu,
                model: ExecutionModel::Persistent,
                ops: SlotOp::ALL.to_vec(),
                default_workers,
                max_workers: MAX_WORKERS,
                max_buffer_bytes: MAX_BUFFER_BYTES,
                max_buffers: MAX_BUFFERS,
                max_programs: MAX_PROGRAMS,
            },
            shared: Arc::new(Shared {
                buffers: memory::Buffers::new(MAX_BUFFERS, "registered buffers"),
                programs: memory::Programs::new(MAX_PROGRAMS, "loaded programs"),
                parking: Parking::default(),
                failure: Mutex::new(None),
            }),
            ring: OnceLock::new(),
            workers: Mutex::new(Vec::new()),
        }
    }

    /// A failed launch must not leave threads behind: abort and join the ones started.
    fn abort_started(&self, ring: &dyn RingMemory) {
        ring.control()[control::ABORT].store(1, Ordering::Release);
        self.shared.parking.wake_all();
        for h in std::mem::take(&mut *self.workers.lock().unwrap_or_else(|e| e.into_inner())) {
            let _ = h.join();
        }
    }

    /// Sets the default worker count (tests run the suite with 1 and with many).
    pub fn with_workers(mut self, n: usize) -> CpuBackend {
        self.caps.default_workers = n.clamp(1, MAX_WORKERS);
        self
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }
    fn ring_memory(
        &self,
        capacity: u32,
        debug_capacity: u32,
    ) -> Result<Arc<dyn RingMemory>, BackendError> {
        Ok(Arc::new(HeapRing::new(capacity, debug_capacity)))
    }
    fn create_buffer(&self, size: u64) -> Result<u32, BackendError> {
        self.shared.buffers.create(size, MAX_BUFFER_BYTES)
    }
    /// Every buffer of this backend is host memory its workers write in place.
    fn create_host_buffer(&self, size: u64) -> Result<Option<u32>, BackendError> {
        self.create_buffer(size).map(Some)
    }
    fn write_buffer(&self, handle: u32, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        self.shared.buffers.host_write(handle, offset, data)
    }
    fn read_buffer(&self, handle: u32, offset: u64, len: u64) -> Result<Vec<u8>, BackendError> {
        self.shared.buffers.host_read(handle, offset, len)
    }
    fn load_program(&self, program: Program) -> Result<u32, BackendError> {
        self.shared.programs.insert(program)
    }
    fn launch(&self, ring: Arc<dyn RingMemory>, config: &LaunchConfig) -> Result<(), BackendError> {
        vyre_runtime::ring::check_header(ring.as_ref())?;
        if self.ring.set(ring.clone()).is_err() {
            return Err(BackendError::Launch(
                "this cpu backend is already launched; create a new one".into(),
            ));
        }
        let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        for i in 0..config.workers {
            let (shared, worker_ring) = (self.shared.clone(), ring.clone());
            let (budget, batch) = (config.step_budget, config.claim_batch);
            let handle = std::thread::Builder::new()
                .name(format!("vyre-cpu-{i}"))
                .spawn(move || worker::run(shared, worker_ring, budget, batch));
            match handle {
                Ok(h) => workers.push(h),
                Err(e) => {
                    drop(workers);
                    self.abort_started(ring.as_ref());
                    return Err(BackendError::Launch(format!(
                        "cannot start worker thread {i}: {e}"
                    )));
                }
            }
        }
        drop(workers);
        // Return only once every worker is inside its claim loop, so that health and the
        // first round trip see a running backend.
        let started = std::time::Instant::now();
        while (ring.control()[control::WORKERS_RUNNING].load(Ordering::Acquire) as usize)
            < config.workers
        {
            if started.elapsed() > std::time::Duration::from_secs(10) {
                let running = ring.control()[control::WORKERS_RUNNING].load(Ordering::Acquire);
                self.abort_started(ring.as_ref());
                return Err(BackendError::Launch(format!(
                    "only {running} of {} cpu workers started within 10 s",
                    config.workers
                )));
            }
            std::thread::yield_now();
        }
        Ok(())
    }
    fn doorbell(&self) {
        self.shared.parking.wake_all();
    }
    fn stop(&self) -> Result<(), BackendError> {
        self.shared.parking.wake_all();
        let handles = std::mem::take(&mut *self.workers.lock().unwrap_or_else(|e| e.into_inner()));
        for h in handles {
            // A worker that panicked has already recorded why in `failure`.
            let _ = h.join();
        }
        Ok(())
    }
    fn register_host_region(&self, region: Arc<dyn HostRegion>) -> Result<u32, BackendError> {
        // The workers read and write the region's words where they are: zero copy.
        self.shared
            .buffers
            .register_region(region, MAX_BUFFER_BYTES)
    }
    fn health(&self) -> Health {
        let failure = self
            .shared
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match self.ring.get() {
            None => Health {
                workers_running: 0,
                heartbeat: 0,
                stopped: false,
                failure,
            },
            Some(ring) => {
                let c = ring.control();
                let running = c[control::WORKERS_RUNNING].load(Ordering::Acquire) as usize;
                let launched = !self
                    .workers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_empty();
                Health {
                    workers_running: running,
                    heartbeat: c[control::HEARTBEAT].load(Ordering::Relaxed),
                    stopped: !launched
                        || (running == 0 && failure.is_some())
                        || c[control::SHUTDOWN].load(Ordering::Acquire) != 0 && running == 0,
                    failure,
                }
            }
        }
    }
}

/// Creates cpu backends for routing.
#[derive(Debug, Default)]
pub struct CpuProvider;

impl BackendProvider for CpuProvider {
    fn name(&self) -> &'static str {
        "cpu"
    }
    fn kind(&self) -> BackendKind {
        BackendKind::Cpu
    }
    fn probe(&self) -> Result<Capabilities, BackendError> {
        Ok(CpuBackend::new().caps)
    }
    fn create(&self) -> Result<Arc<dyn Backend>, BackendError> {
        Ok(Arc::new(CpuBackend::new()))
    }
}
