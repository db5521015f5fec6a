//! The host API: bootstrap a backend, register buffers, load programs, publish slots, wait
//! for completions, shut down.

use crate::backend::{Backend, Health, LaunchConfig};
use crate::error::{Error, ErrorKind, PublishRejection};
use crate::protocol::control;
use crate::ring::{self, Completion, DebugRecord, HostRing, RingMemory};
use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use vyre_isa::slot::{COUNTED_OPCODES, MAX_PRIORITY};
use vyre_isa::{Program, Slot};

/// Megakernel settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Ring capacity in slots (a power of two, 2..=2^20).
    pub capacity: u32,
    /// Debug log capacity in records (a power of two).
    pub debug_capacity: u32,
    /// Workers; `None` = the backend's default.
    pub workers: Option<usize>,
    /// Most instructions one EXEC slot may execute.
    pub step_budget: u64,
    /// Tenants: valid tenant ids are `0..tenants`.
    pub tenants: u16,
    /// Most slots a worker claims at once.
    pub claim_batch: u32,
    /// First ring position (tests use values near `u32::MAX` to cross the wrap).
    pub start_position: u32,
    /// How long shutdown waits for published work to finish before reporting it lost.
    pub drain_timeout: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            capacity: 4096,
            debug_capacity: 1024,
            workers: None,
            step_budget: 1 << 20,
            tenants: 1,
            claim_batch: 32,
            start_position: 0,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// A snapshot of the control block's counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stats {
    /// Slots completed (wrapping u32).
    pub done: u32,
    /// Slots completed with a fault.
    pub faults: u32,
    /// The epoch (bumped by FENCE).
    pub epoch: u32,
    /// The heartbeat.
    pub heartbeat: u32,
    /// Debug records dropped because the log was full.
    pub debug_dropped: u32,
    /// Per-opcode counts, indexed by opcode; the last entry counts all other opcodes.
    pub op_counts: Vec<u32>,
}

/// What shutdown found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Slots that finished while shutdown drained the ring.
    pub drained: usize,
    /// Positions of slots that were published but never finished, reported as `lost`.
    pub lost: Vec<u32>,
}

/// A published slot's ticket; tickets count up from 0 per megakernel.
pub type Ticket = u64;

#[derive(Debug)]
struct Host {
    ring: HostRing,
    next_ticket: Ticket,
    /// Completions of tickets `base..base + done.len()`, `None` once taken.
    done: VecDeque<Option<Completion>>,
    base: Ticket,
}

impl Host {
    fn reap(&mut self, mem: &dyn RingMemory) -> usize {
        let done = &mut self.done;
        self.ring.reap(mem, |c| done.push_back(Some(c)))
    }

    fn take(&mut self, ticket: Ticket) -> Option<Completion> {
        let idx = usize::try_from(ticket.checked_sub(self.base)?).ok()?;
        let c = self.done.get_mut(idx)?.take();
        while matches!(self.done.front(), Some(None)) {
            self.done.pop_front();
            self.base += 1;
        }
        c
    }
}

/// Host-side waiting: spin for the first 20 µs (a busy ring answers within that), yield
/// until 200 µs, then sleep in steps growing to 1 ms so that a long wait costs no CPU.
/// The clock is read once per 32 spins.
#[derive(Debug, Default)]
struct Backoff {
    since: Option<Instant>,
    spins: u32,
}

impl Backoff {
    fn snooze(&mut self) {
        self.spins += 1;
        let since = *self.since.get_or_insert_with(Instant::now);
        if self.spins < 32 {
            std::hint::spin_loop();
            return;
        }
        let waited = since.elapsed();
        if waited < Duration::from_micros(20) {
            self.spins = 0;
            std::hint::spin_loop();
        } else if waited < Duration::from_micros(200) {
            std::thread::yield_now();
        } else {
            std::thread::sleep((waited / 4).min(Duration::from_millis(1)));
        }
    }

    /// Whether the wait has gone on long enough to be worth a health check.
    fn slow(&self) -> bool {
        self.since
            .is_some_and(|s| self.spins >= 32 && s.elapsed() >= Duration::from_micros(20))
    }
}

/// A running megakernel on one backend.
#[derive(Debug)]
pub struct Megakernel {
    backend: Arc<dyn Backend>,
    ring: Arc<dyn RingMemory>,
    host: Mutex<Host>,
    config: Config,
    stopped: AtomicBool,
}

impl Megakernel {
    /// Initialises a ring on `backend` and launches its workers.
    pub fn launch(backend: Arc<dyn Backend>, config: Config) -> Result<Megakernel, Error> {
        if !config.capacity.is_power_of_two() || !(2..=1 << 20).contains(&config.capacity) {
            return Err(Error::new(ErrorKind::Config(format!(
                "ring capacity {} must be a power of two in 2..=1048576",
                config.capacity
            ))));
        }
        if !config.debug_capacity.is_power_of_two() {
            return Err(Error::new(ErrorKind::Config(format!(
                "debug capacity {} must be a power of two",
                config.debug_capacity
            ))));
        }
        if config.tenants == 0 || config.claim_batch == 0 {
            return Err(Error::new(ErrorKind::Config(
                "tenants and claim_batch must be at least 1".into(),
            )));
        }
        let caps = backend.capabilities();
        let workers = config
            .workers
            .unwrap_or(caps.default_workers)
            .clamp(1, caps.max_workers.max(1));
        let ring = backend.ring_memory(config.capacity, config.debug_capacity)?;
        ring::initialize(
            ring.as_ref(),
            config.capacity,
            config.debug_capacity,
            config.start_position,
        );
        let launch = LaunchConfig {
            workers,
            step_budget: config.step_budget,
            claim_batch: config.claim_batch,
        };
        backend.launch(ring.clone(), &launch)?;
        tracing::info!(
            backend = backend.name(),
            workers,
            capacity = config.capacity,
            "megakernel launched"
        );
        Ok(Megakernel {
            host: Mutex::new(Host {
                ring: HostRing::new(config.capacity, config.start_position),
                next_ticket: 0,
                done: VecDeque::new(),
                base: 0,
            }),
            backend,
            ring,
            config,
            stopped: AtomicBool::new(false),
        })
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    fn host(&self) -> MutexGuard<'_, Host> {
        // A panic while holding the lock leaves the ring words consistent (every update is a
        // single store), so a poisoned lock is still usable.
        self.host.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a zero-filled buffer.
    pub fn create_buffer(&self, size: u64) -> Result<u32, Error> {
        Ok(self.backend.create_buffer(size)?)
    }

    /// Registers a buffer holding `data`.
    pub fn create_buffer_with(&self, size: u64, data: &[u8]) -> Result<u32, Error> {
        let h = self.backend.create_buffer(size)?;
        self.backend.write_buffer(h, 0, data)?;
        Ok(h)
    }

    /// Copies bytes into a buffer.
    pub fn write_buffer(&self, handle: u32, offset: u64, data: &[u8]) -> Result<(), Error> {
        Ok(self.backend.write_buffer(handle, offset, data)?)
    }

    /// Copies bytes out of a buffer.
    pub fn read_buffer(&self, handle: u32, offset: u64, len: u64) -> Result<Vec<u8>, Error> {
        Ok(self.backend.read_buffer(handle, offset, len)?)
    }

    /// Validates bytecode and loads it into the program table; returns its id for EXEC.
    pub fn load_program(&self, bytecode: &[u8]) -> Result<u32, Error> {
        let program = Program::decode(bytecode).map_err(|e| Error::new(ErrorKind::Program(e)))?;
        Ok(self.backend.load_program(program)?)
    }

    fn check_batch(&self, slots: &[Slot]) -> Result<(), Error> {
        for (index, s) in slots.iter().enumerate() {
            if s.tenant >= self.config.tenants {
                return Err(Error::new(ErrorKind::Publish {
                    index,
                    reason: PublishRejection::Tenant {
                        tenant: s.tenant,
                        tenants: self.config.tenants,
                    },
                }));
            }
            if s.priority > MAX_PRIORITY {
                return Err(Error::new(ErrorKind::Publish {
                    index,
                    reason: PublishRejection::Priority {
                        priority: s.priority,
                        max: MAX_PRIORITY,
                    },
                }));
            }
        }
        Ok(())
    }

    /// Publishes one slot.
    pub fn publish(&self, slot: Slot) -> Result<Ticket, Error> {
        Ok(self.publish_batch(std::slice::from_ref(&slot))?.start)
    }

    /// Publishes a batch: every slot is checked first (a bad one rejects the whole batch),
    /// then slots are written and made visible with one tail store per ring-full. Blocks,
    /// reaping, while the ring is full.
    pub fn publish_batch(&self, slots: &[Slot]) -> Result<Range<Ticket>, Error> {
        self.check_batch(slots)?;
        let mut host = self.host();
        let first = host.next_ticket;
        let mut rest = slots;
        let mut backoff = Backoff::default();
        while !rest.is_empty() {
            // After shutdown (or a SHUTDOWN slot) no worker will claim anything new.
            if self.stopped.load(Ordering::Acquire)
                || self.ring.control()[control::SHUTDOWN].load(Ordering::Acquire) != 0
            {
                return Err(Error::new(ErrorKind::Stopped));
            }
            let n = host.ring.publish(self.ring.as_ref(), rest);
            if n > 0 {
                self.backend.doorbell();
                host.next_ticket += n as u64;
                rest = &rest[n..];
                backoff = Backoff::default();
            } else if host.reap(self.ring.as_ref()) == 0 {
                self.check_alive()?;
                backoff.snooze();
            }
        }
        Ok(first..host.next_ticket)
    }

    fn check_alive(&self) -> Result<(), Error> {
        let h = self.backend.health();
        if h.stopped {
            return Err(Error::new(ErrorKind::Backend(
                crate::backend::BackendError::Launch(format!(
                    "the {} backend stopped{}",
                    self.backend.name(),
                    h.failure.map(|f| format!(": {f}")).unwrap_or_default()
                )),
            )));
        }
        Ok(())
    }

    /// Returns the completion of `ticket` if it has finished, without blocking.
    pub fn poll(&self, ticket: Ticket) -> Option<Completion> {
        let mut host = self.host();
        host.reap(self.ring.as_ref());
        host.take(ticket)
    }

    /// Waits for one ticket.
    pub fn wait(&self, ticket: Ticket) -> Result<Completion, Error> {
        self.wait_timeout(ticket, None)
    }

    /// Waits for one ticket, at most `timeout`.
    pub fn wait_timeout(
        &self,
        ticket: Ticket,
        timeout: Option<Duration>,
    ) -> Result<Completion, Error> {
        let start = Instant::now();
        let mut backoff = Backoff::default();
        loop {
            {
                let mut host = self.host();
                if ticket >= host.next_ticket {
                    return Err(Error::new(ErrorKind::Config(format!(
                        "ticket {ticket} was never published"
                    ))));
                }
                host.reap(self.ring.as_ref());
                if let Some(c) = host.take(ticket) {
                    return Ok(c);
                }
                if ticket < host.base {
                    return Err(Error::new(ErrorKind::Config(format!(
                        "ticket {ticket} was already taken"
                    ))));
                }
                if backoff.slow() && self.backend.health().stopped {
                    // Nothing will run any more: report what is left as lost, never drop it.
                    let Host { ring, done, .. } = &mut *host;
                    ring.fail_unfinished(self.ring.as_ref(), |c| done.push_back(Some(c)));
                    continue;
                }
            }
            if let Some(t) = timeout {
                if start.elapsed() > t {
                    return Err(Error::new(ErrorKind::Timeout {
                        ticket,
                        waited: start.elapsed(),
                    }));
                }
            }
            backoff.snooze();
        }
    }

    /// Waits for every ticket in a range; completions in ticket order. Takes whatever has
    /// finished under one lock per poll rather than one per ticket.
    pub fn wait_range(&self, tickets: Range<Ticket>) -> Result<Vec<Completion>, Error> {
        let mut out = Vec::with_capacity((tickets.end - tickets.start) as usize);
        let mut next = tickets.start;
        while next < tickets.end {
            {
                let mut host = self.host();
                host.reap(self.ring.as_ref());
                let before = next;
                while next < tickets.end {
                    match host.take(next) {
                        Some(c) => out.push(c),
                        None => break,
                    }
                    next += 1;
                }
                if next > before {
                    continue;
                }
            }
            // Nothing new: the slow path handles errors, lost work and timeouts.
            out.push(self.wait(next)?);
            next += 1;
        }
        Ok(out)
    }

    /// Publishes a batch of any size and waits for all of it, pipelining when it is larger
    /// than the ring. Completions in batch order.
    pub fn run_batch(&self, slots: &[Slot]) -> Result<Vec<Completion>, Error> {
        self.check_batch(slots)?;
        let mut out = Vec::with_capacity(slots.len());
        let chunk = (self.config.capacity as usize / 2).max(1);
        let mut pending: VecDeque<Range<Ticket>> = VecDeque::new();
        for part in slots.chunks(chunk) {
            pending.push_back(self.publish_batch(part)?);
            if pending.len() > 1 {
                out.extend(self.wait_range(pending.pop_front().expect("non-empty"))?);
            }
        }
        for r in pending {
            out.extend(self.wait_range(r)?);
        }
        Ok(out)
    }

    /// The done count (wrapping).
    pub fn done_count(&self) -> u32 {
        self.ring.control()[control::DONE_COUNT].load(Ordering::Acquire)
    }

    /// A snapshot of the control block's counters.
    pub fn stats(&self) -> Stats {
        let c = self.ring.control();
        let w = |i: usize| c[i].load(Ordering::Acquire);
        Stats {
            done: w(control::DONE_COUNT),
            faults: w(control::FAULT_COUNT),
            epoch: w(control::EPOCH),
            heartbeat: w(control::HEARTBEAT),
            debug_dropped: w(control::DEBUG_DROPPED),
            op_counts: (0..=COUNTED_OPCODES)
                .map(|i| w(control::OP_COUNTERS + i))
                .collect(),
        }
    }

    /// Reads and frees every complete debug record.
    pub fn drain_debug_log(&self) -> Vec<DebugRecord> {
        let _host = self.host();
        ring::debug_drain(self.ring.as_ref())
    }

    /// The backend's liveness.
    pub fn health(&self) -> Health {
        self.backend.health()
    }

    /// Drains published work (up to the drain timeout), stops the workers, and reports
    /// every slot that never finished. Completions not yet taken stay retrievable until the
    /// megakernel is dropped.
    pub fn shutdown(&self) -> Result<ShutdownReport, Error> {
        if self.stopped.swap(true, Ordering::AcqRel) {
            return Ok(ShutdownReport::default());
        }
        let start = Instant::now();
        let mut report = ShutdownReport::default();
        let mut backoff = Backoff::default();
        loop {
            let mut host = self.host();
            report.drained += host.reap(self.ring.as_ref());
            if host.ring.outstanding() == 0
                || start.elapsed() > self.config.drain_timeout
                || self.backend.health().stopped
            {
                break;
            }
            drop(host);
            backoff.snooze();
        }
        self.ring.control()[control::SHUTDOWN].store(1, Ordering::Release);
        self.backend.doorbell();
        let stopped = self.backend.stop();
        let mut host = self.host();
        let Host { ring, done, .. } = &mut *host;
        ring.fail_unfinished(self.ring.as_ref(), |c| {
            report.lost.push(c.position);
            done.push_back(Some(c));
        });
        if !report.lost.is_empty() {
            tracing::warn!(
                lost = report.lost.len(),
                "shutdown: published slots never finished; reported as lost"
            );
        }
        stopped?;
        Ok(report)
    }
}

impl Drop for Megakernel {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!(error = %e, "megakernel shutdown on drop failed");
        }
    }
}
