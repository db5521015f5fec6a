//! The persistent worker loop: claim a batch, execute, complete, flush counters; when idle,
//! spin briefly, then yield, then park until the host rings the doorbell.

use crate::memory::{Buffers, Programs};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{fence, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use vyre_isa::{step_slot, Env, Fault, FaultCode, Program, Slot, SlotOp, Step};
use vyre_runtime::io_queue;
use vyre_runtime::protocol::control;
use vyre_runtime::ring::{self, BatchCounters, RingMemory};

/// How long an idle worker spins before it yields, and yields before it parks.
const SPIN_FOR: Duration = Duration::from_micros(50);
const YIELD_FOR: Duration = Duration::from_micros(500);

/// Where idle workers sleep.
#[derive(Debug, Default)]
pub struct Parking {
    lock: Mutex<()>,
    cv: Condvar,
    sleepers: AtomicUsize,
}

impl Parking {
    /// Wakes every parked worker if any is parked (cheap when none is).
    pub fn wake_all(&self) {
        fence(Ordering::SeqCst);
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.cv.notify_all();
        }
    }

    /// Parks until woken, unless `ready()` already holds once this worker counts as asleep.
    fn park(&self, ready: impl Fn() -> bool) {
        let mut g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        while !ready() {
            g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        self.sleepers.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What every worker shares.
#[derive(Debug)]
pub struct Shared {
    /// Buffers.
    pub buffers: Buffers,
    /// Programs.
    pub programs: Programs,
    /// Idle workers.
    pub parking: Parking,
    /// Why a worker died, if one did.
    pub failure: Mutex<Option<String>>,
}

struct WorkerEnv<'a> {
    shared: &'a Shared,
    ring: &'a dyn RingMemory,
    step_budget: u64,
}

impl Env for WorkerEnv<'_> {
    type Mem = Buffers;
    type Prog = Arc<Program>;
    fn mem(&self) -> &Buffers {
        &self.shared.buffers
    }
    fn program(&self, id: u32) -> Option<Arc<Program>> {
        self.shared.programs.get(id).cloned()
    }
    fn fence(&self) -> u32 {
        fence(Ordering::SeqCst);
        self.ring.control()[control::EPOCH]
            .fetch_add(1, Ordering::SeqCst)
            .wrapping_add(1)
    }
    fn debug_log(&self, position: u32, slot: &Slot, words: [u32; 4]) -> bool {
        ring::debug_append(self.ring, position, slot, words)
    }
    fn request_shutdown(&self) {
        self.ring.control()[control::SHUTDOWN].store(1, Ordering::Release);
        // Parked workers must see it too, so that health reports the stop.
        self.shared.parking.wake_all();
    }
    fn step_budget(&self) -> u64 {
        self.step_budget
    }
    fn io_files(&self) -> u32 {
        io_queue::files(self.ring)
    }
}

/// Runs a claimed slot's first phase; an IO_READ that passes its checks queues its request
/// and is left in WAIT_IO (`None`: not completed, not counted).
fn execute(env: &WorkerEnv<'_>, c: &ring::ClaimedSlot) -> Option<Result<[u32; 4], Fault>> {
    if !c.seq_ok {
        return Some(Err(Fault::new(FaultCode::Lost, c.position)));
    }
    match step_slot(env, &c.slot, c.tenant_reserved, c.position) {
        Ok(Step::Done(r)) => Some(Ok(r)),
        Err(f) => Some(Err(f)),
        Ok(Step::WaitIo(_)) if !io_queue::supported(env.ring) => Some(Err(Fault::new(
            FaultCode::Unsupported,
            SlotOp::IoRead as u32,
        ))),
        Ok(Step::WaitIo(req)) => {
            io_queue::request(env.ring, c.position, &req);
            None
        }
    }
}

/// Completes IO_READ slots whose reads the host finished (at most `max`); returns how many.
fn resume_waiting(env: &WorkerEnv<'_>, counters: &mut BatchCounters, max: u32) -> u32 {
    let mut n = 0;
    while n < max {
        let Some(r) = io_queue::take_resume(env.ring) else {
            break;
        };
        n += 1;
        let c = ring::read_claimed(env.ring, r.position);
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            if c.seq_ok && c.slot.op == SlotOp::IoRead as u16 {
                vyre_isa::io::resume(env, &c.slot.args, r.result)
            } else {
                Err(Fault::new(FaultCode::Lost, r.position))
            }
        }))
        .unwrap_or(Err(Fault::new(FaultCode::Lost, r.position)));
        counters.record(SlotOp::IoRead as u16, outcome.is_err());
        ring::complete(env.ring, r.position, outcome);
    }
    n
}

/// Decrements the running-workers word however the worker exits (panics included).
struct RunningGuard<'a>(&'a dyn RingMemory);

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.0.control()[control::WORKERS_RUNNING].fetch_sub(1, Ordering::AcqRel);
    }
}

/// One worker's life.
pub fn run(shared: Arc<Shared>, ring: Arc<dyn RingMemory>, step_budget: u64, claim_batch: u32) {
    let mem = ring.as_ref();
    mem.control()[control::WORKERS_RUNNING].fetch_add(1, Ordering::AcqRel);
    let _guard = RunningGuard(mem);
    let env = WorkerEnv {
        shared: &shared,
        ring: mem,
        step_budget,
    };
    let mut counters = BatchCounters::default();
    let c = mem.control();
    let shutdown = || {
        c[control::SHUTDOWN].load(Ordering::Acquire) != 0
            || c[control::ABORT].load(Ordering::Acquire) != 0
    };
    let aborted = || c[control::ABORT].load(Ordering::Acquire) != 0;
    let mut idle_since: Option<Instant> = None;
    let mut idle_polls = 0u32;
    while !shutdown() {
        // Slots whose reads finished go first: they hold ring places already.
        if resume_waiting(&env, &mut counters, claim_batch) > 0 {
            counters.flush(mem);
            idle_since = None;
            idle_polls = 0;
        }
        let Some(claim) = ring::claim(mem, claim_batch) else {
            let since = *idle_since.get_or_insert_with(Instant::now);
            idle_polls = idle_polls.wrapping_add(1);
            // Read the clock once per 64 polls: it is not free.
            let idle = if idle_polls % 64 == 0 {
                since.elapsed()
            } else {
                Duration::ZERO
            };
            if idle < SPIN_FOR {
                std::hint::spin_loop();
            } else if idle < YIELD_FOR {
                std::thread::yield_now();
            } else {
                shared
                    .parking
                    .park(|| ring::has_work(mem) || io_queue::has_resume(mem) || shutdown());
                idle_since = None;
            }
            continue;
        };
        idle_since = None;
        idle_polls = 0;
        if c[control::FAULT_INJECT].load(Ordering::Acquire) != 0 {
            // A simulated hang: mark the claim taken, then hold it, beat no more, and leave
            // only on ABORT.
            for k in 0..claim.count {
                ring::read_claimed(mem, claim.start.wrapping_add(k));
            }
            while !aborted() {
                std::thread::sleep(Duration::from_millis(1));
            }
            return;
        }
        let mut next = 0u32; // the first claimed position not yet completed
        let result = catch_unwind(AssertUnwindSafe(|| {
            for k in 0..claim.count {
                next = k;
                let p = claim.start.wrapping_add(k);
                let c = ring::read_claimed(mem, p);
                if c.finished {
                    continue;
                }
                if let Some(outcome) = execute(&env, &c) {
                    counters.record(c.slot.op, outcome.is_err());
                    ring::complete(mem, p, outcome);
                }
            }
            next = claim.count;
        }));
        if result.is_err() {
            // The slot that panicked and the rest of the claim are reported, not abandoned:
            // reaping is in order, so one abandoned slot would block every later ticket.
            for k in next..claim.count {
                let p = claim.start.wrapping_add(k);
                counters.record(u16::MAX, true); // op unknown: counted under "other"
                ring::complete(mem, p, Err(Fault::new(FaultCode::Lost, p)));
            }
        }
        counters.flush(mem);
        if let Err(panic) = result {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(panic = %what, "cpu worker panicked; its claimed slots will be reported lost");
            *shared.failure.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(format!("a worker panicked: {what}"));
            return;
        }
    }
}
