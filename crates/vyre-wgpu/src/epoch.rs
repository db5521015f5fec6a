//! The epoch driver: one host thread per backend that plays the ring's worker.
//!
//! wgpu cannot share memory with a running dispatch, so the ring stays in host memory and the
//! driver moves it to the GPU in epochs. Each epoch it claims every published slot (up to
//! [`MAX_EPOCH_SLOTS`]) with the ring's own CAS on HEAD, stages their words into an `io`
//! buffer, and submits one dispatch in which every invocation claims slots from the staged
//! batch with an atomic counter (no invocation ever waits on another). The statuses and
//! results come back with one copy and are completed in the host ring with
//! `vyre_runtime::ring::complete`, with the control block's counters flushed once per epoch,
//! exactly as a cpu worker does per claimed batch.
//!
//! Two `io` sets alternate: while epoch N runs, the driver stages and submits epoch N+1 (queue
//! order makes N+1 see everything N wrote), then waits for N. The epoch size follows the load:
//! a sparse ring gives epochs of one slot (lowest latency), a busy one epochs of thousands.
//!
//! Worker-written control words that the shader changes (EPOCH, DEBUG_WRITE, DEBUG_DROPPED,
//! SHUTDOWN, the debug records) live in the device's state buffer and are mirrored into the
//! control block after each epoch, before its slots are completed, so the host never sees a
//! DONE slot before its effects on the control block. The shader sees the host's DEBUG_READ
//! as of the epoch's staging.
//!
//! IO_READ (PROTOCOL.md, "I/O queue"): the shader runs phase 1 on the staged copy of the slot
//! and, when the checks pass, hands it back with status WAIT_IO; the staged slot words are the
//! request, and the driver appends its record to the ring's I/O queue after the epoch
//! (`io_queue::request`, which also marks the ring slot WAIT_IO). Before claiming new slots,
//! the driver takes the resume entries the host's I/O thread pushed and stages those slots
//! again with status WAIT_IO and RES0 = the entry's result word; the shader runs phase 2 on
//! them in the next epoch, and they complete and are counted like any other slot. The
//! number of registered files reaches the shader in the epoch header.

use crate::heap::Heap;
use crate::shader::{io, st, IO_HEADER_WORDS, MAX_PAGES, WORKGROUP_SIZE};
use crate::WgpuShared;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vyre_isa::{io::IoRead, Fault, FaultCode, SlotOp};
use vyre_runtime::io_queue;
use vyre_runtime::protocol::{control, debug_record, slot_word, status, SLOT_WORDS};
use vyre_runtime::ring::{self, BatchCounters, RingMemory};
use vyre_runtime::BackendError;

/// Most slots one epoch carries.
pub const MAX_EPOCH_SLOTS: u32 = 65_536;
/// Words of the state block read back after every epoch.
const STATE_HEAD_WORDS: u64 = st::DEBUG_RECORDS as u64;
/// How often the driver beats while it waits for a long epoch.
const BEAT_EVERY: Duration = Duration::from_millis(250);
/// How long an idle driver spins (checking the tail) before it sleeps on the doorbell.
const SPIN_FOR: Duration = Duration::from_micros(50);

/// One staging set: the `io` binding and its readback buffer.
#[derive(Debug)]
struct IoSet {
    io: wgpu::Buffer,
    readback: wgpu::Buffer,
    slots: u64,
    bind: Option<(u64, wgpu::BindGroup)>,
}

/// An epoch on the GPU.
#[derive(Debug)]
struct InFlight {
    set: usize,
    /// (position, opcode, resumed: staged for IO_READ's phase 2) of every staged slot, in
    /// staging order.
    staged: Vec<(u32, u16, bool)>,
    debug: bool,
    index: wgpu::SubmissionIndex,
    rx: std::sync::mpsc::Receiver<Result<(), wgpu::BufferAsyncError>>,
    bytes: u64,
}

/// Settings of one launch.
#[derive(Debug, Clone, Copy)]
pub struct DriverConfig {
    /// Invocations that claim slots (the launch's worker count).
    pub active: u32,
    /// Most instructions one EXEC slot may execute.
    pub step_budget: u64,
}

/// The driver thread's state.
pub struct Driver {
    shared: Arc<WgpuShared>,
    ring: Arc<dyn RingMemory>,
    config: DriverConfig,
    sets: Vec<IoSet>,
    counters: BatchCounters,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn slot_bytes(n: u64) -> u64 {
    4 * (IO_HEADER_WORDS as u64 + n * SLOT_WORDS as u64)
}

impl Driver {
    /// A driver for a launched ring.
    pub fn new(shared: Arc<WgpuShared>, ring: Arc<dyn RingMemory>, config: DriverConfig) -> Driver {
        Driver {
            shared,
            ring,
            config,
            sets: Vec::new(),
            counters: BatchCounters::default(),
        }
    }

    fn control(&self, word: usize) -> u32 {
        self.ring.control()[word].load(Ordering::Acquire)
    }

    /// The driver's life: runs until SHUTDOWN or ABORT, finishing every epoch it submitted.
    pub fn run(mut self) -> Result<(), BackendError> {
        let ring = self.ring.clone();
        let c = ring.control();
        c[control::WORKERS_RUNNING].fetch_add(1, Ordering::AcqRel);
        let result = self.run_loop();
        c[control::WORKERS_RUNNING].fetch_sub(1, Ordering::AcqRel);
        result
    }

    fn run_loop(&mut self) -> Result<(), BackendError> {
        let mut inflight: VecDeque<InFlight> = VecDeque::new();
        let mut idle_since: Option<Instant> = None;
        loop {
            let stop = self.control(control::SHUTDOWN) != 0 || self.control(control::ABORT) != 0;
            if !stop && inflight.len() < 2 {
                let free = (0..2)
                    .find(|s| inflight.iter().all(|e| e.set != *s))
                    .unwrap_or(0);
                if let Some(epoch) = self.stage(free)? {
                    inflight.push_back(epoch);
                    idle_since = None;
                    continue;
                }
            }
            if let Some(epoch) = inflight.pop_front() {
                self.finish(epoch)?;
                continue;
            }
            if stop {
                return Ok(());
            }
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() < SPIN_FOR {
                std::hint::spin_loop();
            } else {
                let ring = self.ring.clone();
                self.shared.doorbell.wait(|| {
                    ring::has_work(ring.as_ref())
                        || io_queue::has_resume(ring.as_ref())
                        || ring.control()[control::SHUTDOWN].load(Ordering::Acquire) != 0
                        || ring.control()[control::ABORT].load(Ordering::Acquire) != 0
                });
                idle_since = None;
            }
        }
    }

    /// Claims what is published and submits it as one epoch on staging set `set`.
    fn stage(&mut self, set: usize) -> Result<Option<InFlight>, BackendError> {
        let mem = self.ring.clone();
        let mem = mem.as_ref();
        // Slots whose reads the host finished go first: they hold ring places already.
        let mut resumes = Vec::new();
        while resumes.len() < MAX_EPOCH_SLOTS as usize {
            match io_queue::take_resume(mem) {
                Some(r) => resumes.push(r),
                None => break,
            }
        }
        let room = MAX_EPOCH_SLOTS - resumes.len() as u32;
        let claim = if room > 0 {
            ring::claim(mem, room)
        } else {
            None
        };
        let claim = match claim {
            Some(c) => c,
            None if resumes.is_empty() => return Ok(None),
            None => ring::Claim { start: 0, count: 0 },
        };
        if claim.count > 0 && self.control(control::FAULT_INJECT) != 0 {
            // A simulated hang: hold the claim, beat no more, leave only on ABORT.
            for k in 0..claim.count {
                ring::read_claimed(mem, claim.start.wrapping_add(k));
            }
            while self.control(control::ABORT) == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
            return Err(BackendError::Launch(
                "aborted while simulating a hang".into(),
            ));
        }
        let mut words = vec![0u32; IO_HEADER_WORDS];
        let mut staged = Vec::with_capacity(claim.count as usize + resumes.len());
        let mut debug = false;
        for r in resumes {
            let s = ring::read_claimed(mem, r.position);
            if !s.seq_ok || s.slot.op != SlotOp::IoRead as u16 {
                // Not a waiting IO_READ of this lap: a corrupt entry, reported, never run.
                self.counters.record(SlotOp::IoRead as u16, true);
                ring::complete(
                    mem,
                    r.position,
                    Err(Fault::new(FaultCode::Lost, r.position)),
                );
                continue;
            }
            let mut w = [0u32; SLOT_WORDS];
            w[slot_word::SEQ] = r.position;
            w[slot_word::STATUS] = status::WAIT_IO;
            w[slot_word::OP] = s.slot.op_word();
            w[slot_word::TENANT] = s.slot.tenant_word() | s.tenant_reserved << 16;
            w[slot_word::ARG0..slot_word::RES0].copy_from_slice(&s.slot.args);
            w[slot_word::RES0] = r.result;
            words.extend_from_slice(&w);
            staged.push((r.position, s.slot.op, true));
        }
        for k in 0..claim.count {
            let p = claim.start.wrapping_add(k);
            let s = ring::read_claimed(mem, p);
            if s.finished {
                continue;
            }
            if !s.seq_ok {
                self.counters.record(s.slot.op, true);
                ring::complete(mem, p, Err(Fault::new(FaultCode::Lost, p)));
                continue;
            }
            debug |= s.slot.op == SlotOp::DebugLog as u16;
            let mut w = [0u32; SLOT_WORDS];
            w[slot_word::SEQ] = p;
            w[slot_word::STATUS] = status::CLAIMED;
            w[slot_word::OP] = s.slot.op_word();
            w[slot_word::TENANT] = s.slot.tenant_word() | s.tenant_reserved << 16;
            w[slot_word::ARG0..slot_word::RES0].copy_from_slice(&s.slot.args);
            words.extend_from_slice(&w);
            staged.push((p, s.slot.op, false));
        }
        if staged.is_empty() {
            self.counters.flush(mem);
            return Ok(None);
        }
        let n = staged.len() as u64;
        let shared = self.shared.clone();
        let gpu = &shared.gpu;
        let mut heap = shared.heap.lock().unwrap_or_else(|e| e.into_inner());
        heap.flush_meta(&gpu.device, &gpu.queue);
        let debug_cap = self.control(control::DEBUG_CAPACITY);
        words[io::COUNT] = n as u32;
        words[io::ACTIVE] = self.config.active;
        words[io::DEBUG_READ] = self.control(control::DEBUG_READ);
        words[io::DEBUG_CAP] = debug_cap;
        words[io::BUDGET_LO] = self.config.step_budget as u32;
        words[io::BUDGET_HI] = (self.config.step_budget >> 32) as u32;
        words[io::PAGE_SHIFT] = heap.page_shift();
        words[io::NBUFS] = heap.buffers();
        words[io::NPROGS] = heap.programs();
        words[io::PROG_BASE] = heap.prog_base;
        words[io::IO_FILES] = io_queue::files(mem);
        words[io::CLAIM] = 0;
        self.ensure_set(set, n, &heap);
        let io_set = &self.sets[set];
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        gpu.queue.write_buffer(&io_set.io, 0, &bytes);
        let invocations = u64::from(self.config.active).min(n);
        let groups = invocations.div_ceil(u64::from(WORKGROUP_SIZE)) as u32;
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            pass.set_pipeline(&gpu.megakernel()?.pipeline);
            pass.set_bind_group(0, &io_set.bind.as_ref().expect("bind group built").1, &[]);
            pass.dispatch_workgroups(groups, 1, 1);
        }
        let slot_area = slot_bytes(n);
        enc.copy_buffer_to_buffer(&io_set.io, 0, &io_set.readback, 0, slot_area);
        let mut total = slot_area;
        let state_bytes = if debug {
            heap.state.size()
        } else {
            4 * STATE_HEAD_WORDS
        };
        enc.copy_buffer_to_buffer(&heap.state, 0, &io_set.readback, total, state_bytes);
        total += state_bytes;
        let index = gpu.queue.submit([enc.finish()]);
        drop(heap);
        let (tx, rx) = std::sync::mpsc::channel();
        io_set
            .readback
            .map_async(wgpu::MapMode::Read, 0..total, move |r| {
                let _ = tx.send(r);
            });
        Ok(Some(InFlight {
            set,
            staged,
            debug,
            index,
            rx,
            bytes: total,
        }))
    }

    /// Makes staging set `set` large enough for `n` slots with a bind group of this heap
    /// generation.
    fn ensure_set(&mut self, set: usize, n: u64, heap: &Heap) {
        let device = &self.shared.gpu.device;
        while self.sets.len() <= set {
            self.sets.push(IoSet {
                io: device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("vyre io"),
                    size: slot_bytes(0),
                    usage: wgpu::BufferUsages::STORAGE,
                    mapped_at_creation: false,
                }),
                readback: device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("vyre io readback"),
                    size: 4,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                }),
                slots: 0,
                bind: None,
            });
        }
        let s = &mut self.sets[set];
        if s.slots < n {
            let slots = n.next_power_of_two().max(64);
            s.io = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("vyre io"),
                size: slot_bytes(slots),
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_DST
                    | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            s.readback = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("vyre io readback"),
                size: slot_bytes(slots) + heap.state.size(),
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            s.slots = slots;
            s.bind = None;
        }
        if s.bind.as_ref().is_none_or(|(g, _)| *g != heap.generation) {
            let bind = bind_group(device, &self.shared.gpu.layout, &s.io, heap);
            s.bind = Some((heap.generation, bind));
        }
    }

    /// Waits for an epoch and completes its slots in the host ring.
    fn finish(&mut self, epoch: InFlight) -> Result<(), BackendError> {
        let gpu = &self.shared.gpu;
        // Every loop of the megakernel is bounded (by a range length or the step budget), so a
        // dispatch still running is making progress: beat while it runs, so that a long epoch
        // is not mistaken for a hung device. A lost device ends the wait with an error.
        loop {
            match gpu.device.poll(wgpu::PollType::Wait {
                submission_index: Some(epoch.index.clone()),
                timeout: Some(BEAT_EVERY),
            }) {
                Ok(_) => break,
                Err(wgpu::PollError::Timeout) => {
                    self.ring.control()[control::HEARTBEAT].fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    return Err(BackendError::Launch(format!(
                        "wgpu device poll failed: {e}"
                    )))
                }
            }
        }
        epoch
            .rx
            .recv()
            .map_err(|_| BackendError::Launch("wgpu epoch readback was never mapped".into()))?
            .map_err(|e| BackendError::Launch(format!("wgpu epoch readback failed: {e}")))?;
        let readback = &self.sets[epoch.set].readback;
        let words: Vec<u32> = {
            let view = readback
                .get_mapped_range(0..epoch.bytes)
                .map_err(|e| BackendError::Launch(format!("wgpu readback mapping failed: {e}")))?;
            view.chunks_exact(4)
                .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
                .collect()
        };
        readback.unmap();
        let n = epoch.staged.len();
        let state = &words[IO_HEADER_WORDS + n * SLOT_WORDS..];
        self.mirror(state, epoch.debug);
        let mem = self.ring.clone();
        let mem = mem.as_ref();
        for (k, &(p, op, resumed)) in epoch.staged.iter().enumerate() {
            let w = &words[IO_HEADER_WORDS + k * SLOT_WORDS..][..SLOT_WORDS];
            let st_word = w[slot_word::STATUS];
            if st_word & 0xff == status::WAIT_IO && !resumed {
                // Phase 1 passed: queue the request; the slot is neither completed nor
                // counted until its resume entry comes back.
                if io_queue::supported(mem) {
                    let args: &[u32; 8] = w[slot_word::ARG0..slot_word::RES0]
                        .try_into()
                        .expect("8 argument words");
                    io_queue::request(mem, p, &IoRead::from_args(args));
                    continue;
                }
                self.counters.record(op, true);
                ring::complete(mem, p, Err(Fault::new(FaultCode::Unsupported, op.into())));
                continue;
            }
            let r: [u32; 4] = w[slot_word::RES0..].try_into().expect("4 result words");
            let outcome = match st_word & 0xff {
                status::DONE => Ok(r),
                status::FAULT => Err(Fault {
                    code: FaultCode::from_u8((st_word >> 8) as u8).unwrap_or(FaultCode::Lost),
                    detail: r[0],
                    at: r[1],
                }),
                // The shader never reached it (device lost or a cut-off dispatch): reported.
                _ => Err(Fault::new(FaultCode::Lost, p)),
            };
            self.counters.record(op, outcome.is_err());
            ring::complete(mem, p, outcome);
        }
        self.counters.flush(mem);
        Ok(())
    }

    /// Mirrors the device-written control words into the control block.
    fn mirror(&self, state: &[u32], debug: bool) {
        let c = self.ring.control();
        c[control::EPOCH].store(state[st::EPOCH], Ordering::Release);
        if state[st::SHUTDOWN] != 0 {
            c[control::SHUTDOWN].store(1, Ordering::Release);
        }
        c[control::DEBUG_DROPPED].store(state[st::DEBUG_DROPPED], Ordering::Release);
        let (old, new) = (
            c[control::DEBUG_WRITE].load(Ordering::Acquire),
            state[st::DEBUG_WRITE],
        );
        if debug && old != new {
            let cap = c[control::DEBUG_CAPACITY].load(Ordering::Relaxed);
            let log = self.ring.debug_log();
            let mut w = old;
            while w != new {
                let i = (w & (cap - 1)) as usize * debug_record::RECORD_WORDS;
                let src = &state[st::DEBUG_RECORDS + i..][..debug_record::RECORD_WORDS];
                let dst = &log[i..i + debug_record::RECORD_WORDS];
                for k in 1..debug_record::RECORD_WORDS {
                    dst[k].store(src[k], Ordering::Relaxed);
                }
                dst[debug_record::SEQ].store(src[debug_record::SEQ], Ordering::Release);
                w = w.wrapping_add(1);
            }
        }
        c[control::DEBUG_WRITE].store(new, Ordering::Release);
    }
}

/// The megakernel's bind group for an `io` buffer over a heap.
pub(crate) fn bind_group(
    device: &wgpu::Device,
    layout: &wgpu::BindGroupLayout,
    io: &wgpu::Buffer,
    heap: &Heap,
) -> wgpu::BindGroup {
    let mut entries = vec![
        wgpu::BindGroupEntry {
            binding: 0,
            resource: io.as_entire_binding(),
        },
        wgpu::BindGroupEntry {
            binding: 1,
            resource: heap.meta().as_entire_binding(),
        },
        wgpu::BindGroupEntry {
            binding: 2,
            resource: heap.state.as_entire_binding(),
        },
    ];
    for (i, page) in heap.page_bindings().iter().enumerate().take(MAX_PAGES) {
        entries.push(wgpu::BindGroupEntry {
            binding: 3 + i as u32,
            resource: page.as_entire_binding(),
        });
    }
    device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("vyre megakernel"),
        layout,
        entries: &entries,
    })
}

/// Seeds the device state from a freshly initialised control block.
pub fn seed_state(shared: &WgpuShared, mem: &dyn RingMemory) {
    let c = mem.control();
    let mut words = [0u32; STATE_HEAD_WORDS as usize];
    words[st::EPOCH] = c[control::EPOCH].load(Ordering::Acquire);
    words[st::DEBUG_WRITE] = c[control::DEBUG_WRITE].load(Ordering::Acquire);
    words[st::DEBUG_DROPPED] = c[control::DEBUG_DROPPED].load(Ordering::Acquire);
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    let heap = shared.heap.lock().unwrap_or_else(|e| e.into_inner());
    shared.gpu.queue.write_buffer(&heap.state, 0, &bytes);
}
