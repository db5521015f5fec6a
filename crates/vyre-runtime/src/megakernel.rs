//! The host API: bootstrap a backend, register buffers, load programs, publish slots, wait
//! for completions, shut down.

use crate::backend::{Backend, Health, HostRegion, LaunchConfig, Staging};
use crate::error::{Error, ErrorKind, PublishRejection};
use crate::host_pool::{HostPool, Padded};
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
    /// Declare the device hung when published work is outstanding and the heartbeat has not
    /// moved for this long (`None`: no watchdog).
    pub watchdog: Option<Duration>,
    /// Host threads that share the slot writes and completion reads of large batches
    /// ([`ring::PARALLEL_MIN`] slots or more); 1 = the calling thread alone; `None` = half
    /// the machine's cores, 1 to 8, for a GPU backend, and a quarter, 1 to 4, for one whose
    /// workers run on the host's cores (measured on a 16-core H100 host: NOP 65,536 end to
    /// end 66 M/s with 1 thread, 89 with 4, 114 with 8).
    pub host_threads: Option<usize>,
    /// How long the host threads keep spinning after a large `run_batch`, waiting for the
    /// next, before they may go to sleep (`Duration::ZERO`: at once); `None` = 1 ms for a GPU
    /// backend, zero for one whose workers run on the host's cores (spinning would take cores
    /// from them). Waking a sleeping thread cost 20-60 µs on an H100 host, a third of the
    /// device's time for 65,536 NOP slots; the price is up to this much busy time on each
    /// host thread after a batch.
    pub host_spin: Option<Duration>,
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
            watchdog: Some(Duration::from_secs(10)),
            host_threads: None,
            host_spin: None,
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

/// Publishes (one tail store) the units of an overlapped batch of `n` slots written in order
/// from the first unpublished one on; true if there were any. A unit's lines are written before
/// its flag is set (release), and the flag is read (acquire) before the tail store covers it.
fn publish_written(
    ring: &mut HostRing,
    mem: &dyn RingMemory,
    written: &[Padded<AtomicBool>],
    n: usize,
    published: &mut usize,
) -> bool {
    let mut prefix = published.div_ceil(ring::PARALLEL_UNIT);
    while prefix < written.len() && written[prefix].load(Ordering::Acquire) {
        prefix += 1;
    }
    let upto = (prefix * ring::PARALLEL_UNIT).min(n);
    if upto <= *published {
        return false;
    }
    ring.advance_tail(mem, (upto - *published) as u32);
    *published = upto;
    true
}

/// Sets its flag when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// What `run_batch_overlapped` holds in a completion's place until it is read.
const UNREAD: Completion = Completion {
    position: 0,
    outcome: ring::Outcome::Done([0; 4]),
};

/// How long an overlapped `run_batch` waits without any progress before it hands over to the
/// general path (which reports a hang, a stop or lost work).
const OVERLAP_STALL: Duration = Duration::from_millis(50);

/// A published slot's ticket; tickets count up from 0 per megakernel.
pub type Ticket = u64;

/// Everything behind the host lock: the ring's host side, the backend and its ring memory
/// (both replaced by a restart), completions not yet taken, and what a restart must rebuild.
#[derive(Debug)]
pub(crate) struct Host {
    pub(crate) ring: HostRing,
    pub(crate) mem: Arc<dyn RingMemory>,
    pub(crate) backend: Arc<dyn Backend>,
    next_ticket: Ticket,
    /// Completions of tickets `base..base + done.len()`, `None` once taken.
    done: VecDeque<Option<Completion>>,
    base: Ticket,
    /// Sizes of the registered buffers, by handle - 1.
    pub(crate) buffers: Vec<u64>,
    /// Handles of the buffers made by `create_host_buffer`.
    pub(crate) host_buffers: Vec<u32>,
    /// Host regions registered in place, by handle (a restart registers them again).
    pub(crate) regions: Vec<(u32, Arc<dyn HostRegion>)>,
    /// The loaded programs, by id - 1.
    pub(crate) programs: Vec<Program>,
    /// Set by the watchdog; cleared by a restart.
    pub(crate) hung: Option<HangReport>,
    /// Backends replaced by a restart, kept until the current one has stopped: freeing GPU
    /// memory synchronises the device, which would wait forever on a running persistent
    /// kernel.
    pub(crate) retired: Vec<Arc<dyn Backend>>,
}

impl Host {
    fn reap(&mut self) -> usize {
        let Host {
            ring, mem, done, ..
        } = self;
        ring.reap(mem.as_ref(), |c| done.push_back(Some(c)))
    }

    /// Reaps the completions of tickets `next..end` straight into `out` when nothing older is
    /// buffered (so the ring's next completion is `next`'s), skipping the buffer that `take`
    /// serves. Returns how many; 0 also when the fast path does not apply.
    fn reap_direct(
        &mut self,
        next: Ticket,
        end: Ticket,
        out: &mut Vec<Completion>,
        pool: Option<&rayon::ThreadPool>,
        eager: bool,
    ) -> usize {
        if !self.direct(next) {
            return 0;
        }
        let Host { ring, mem, .. } = self;
        let count = (end - next).min(u64::from(u32::MAX)) as u32;
        let limit = ring.reap_position().wrapping_add(count);
        let n = ring.reap_into(mem.as_ref(), limit, out, pool, eager);
        self.base += n as u64;
        n
    }

    /// Whether the ring's next completion is ticket `next`'s with nothing buffered before it,
    /// so completions can be reaped straight into a caller's vector.
    fn direct(&self, next: Ticket) -> bool {
        self.done.is_empty() && self.base == next
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

    /// Reports every unfinished slot as lost (only once no worker can touch the ring).
    fn fail_unfinished(&mut self) -> Vec<u32> {
        let Host {
            ring, mem, done, ..
        } = self;
        let mut lost = Vec::new();
        ring.fail_unfinished(mem.as_ref(), |c| {
            lost.push(c.position);
            done.push_back(Some(c));
        });
        lost
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

    /// Whether the wait has gone on for at least `d`.
    fn waited(&self, d: Duration) -> bool {
        self.since.is_some_and(|s| s.elapsed() >= d)
    }

    /// Whether the wait has gone on long enough to be worth a health check.
    fn slow(&self) -> bool {
        self.since
            .is_some_and(|s| self.spins >= 32 && s.elapsed() >= Duration::from_micros(20))
    }
}

pub(crate) struct Inner {
    pub(crate) host: Mutex<Host>,
    /// Held for a whole batch, so that a batch's tickets are contiguous even though the host
    /// lock is released while the ring is full (letting waiters and the watchdog in).
    publisher: Mutex<()>,
    pub(crate) config: Config,
    stopped: AtomicBool,
    /// Registered files and the I/O thread that serves IO_READ (PROTOCOL.md, "I/O queue").
    pub(crate) io: crate::io_service::IoHost,
    /// Threads that share large publishes and reaps (`Config::host_threads`); `None` when 1.
    pool: Option<HostPool>,
}

impl Inner {
    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// After shutdown (or a SHUTDOWN slot) no worker will claim anything new.
    fn no_new_work(&self, host: &Host) -> bool {
        self.is_stopped() || host.mem.control()[control::SHUTDOWN].load(Ordering::Acquire) != 0
    }

    pub(crate) fn host(&self) -> MutexGuard<'_, Host> {
        // A panic while holding the lock leaves the ring words consistent (every update is a
        // single store), so a poisoned lock is still usable.
        self.host.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running megakernel on one backend.
pub struct Megakernel {
    inner: Arc<Inner>,
    watchdog: Option<crate::watchdog::Watchdog>,
}

impl std::fmt::Debug for Megakernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Megakernel")
            .field("backend", &self.backend().name())
            .field("config", &self.inner.config)
            .finish()
    }
}

fn hung_error(report: &HangReport) -> Error {
    Error::new(ErrorKind::Hung(report.clone()))
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
        let mem = backend.ring_memory(config.capacity, config.debug_capacity)?;
        ring::initialize(
            mem.as_ref(),
            config.capacity,
            config.debug_capacity,
            config.start_position,
        );
        let launch = launch_config(backend.as_ref(), &config);
        backend.launch(mem.clone(), &launch)?;
        tracing::info!(
            backend = backend.name(),
            workers = launch.workers,
            capacity = config.capacity,
            "megakernel launched"
        );
        let host = Host {
            ring: HostRing::new(config.capacity, config.start_position),
            mem,
            backend,
            next_ticket: 0,
            done: VecDeque::new(),
            base: 0,
            buffers: Vec::new(),
            host_buffers: Vec::new(),
            regions: Vec::new(),
            programs: Vec::new(),
            hung: None,
            retired: Vec::new(),
        };
        let io = crate::io_service::IoHost::new(host.mem.clone(), host.backend.clone());
        let gpu = host.backend.capabilities().kind == crate::backend::BackendKind::Gpu;
        let threads = config.host_threads.unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            // A CPU backend's workers occupy the cores the host threads would use.
            if gpu {
                (cores / 2).clamp(1, 8)
            } else {
                (cores / 4).clamp(1, 4)
            }
        });
        let spin = config.host_spin.unwrap_or(if gpu {
            Duration::from_millis(1)
        } else {
            Duration::ZERO
        });
        let pool = (threads > 1)
            .then(|| HostPool::new(threads, spin))
            .transpose()
            .map_err(|e| {
                Error::new(ErrorKind::Config(format!(
                    "could not start {threads} host threads ({e}); set Config::host_threads to 1"
                )))
            })?;
        let inner = Arc::new(Inner {
            host: Mutex::new(host),
            publisher: Mutex::new(()),
            config,
            stopped: AtomicBool::new(false),
            io,
            pool,
        });
        let watchdog = inner
            .config
            .watchdog
            .map(|bound| crate::watchdog::Watchdog::start(&inner, bound));
        Ok(Megakernel { inner, watchdog })
    }

    /// The backend (the current one, after a restart).
    pub fn backend(&self) -> Arc<dyn Backend> {
        self.inner.host().backend.clone()
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    fn host(&self) -> MutexGuard<'_, Host> {
        self.inner.host()
    }

    /// Registers a zero-filled buffer.
    pub fn create_buffer(&self, size: u64) -> Result<u32, Error> {
        let mut host = self.host();
        let h = host.backend.create_buffer(size)?;
        next_buffer_handle(&host, h)?;
        host.buffers.push(size);
        Ok(h)
    }

    /// Registers a zero-filled buffer in host memory that the workers write in place, for
    /// results read back often in small pieces (see [`Backend::create_host_buffer`]);
    /// `Ok(None)` where the backend has no such memory. A restart recreates it the same way.
    pub fn create_host_buffer(&self, size: u64) -> Result<Option<u32>, Error> {
        let mut host = self.host();
        let Some(h) = host.backend.create_host_buffer(size)? else {
            return Ok(None);
        };
        next_buffer_handle(&host, h)?;
        host.buffers.push(size);
        host.host_buffers.push(h);
        Ok(Some(h))
    }

    /// Registers host memory as a buffer used in place (see [`HostRegion`]); fails with the
    /// backend's error where it cannot do that.
    pub fn register_host_region(&self, region: Arc<dyn HostRegion>) -> Result<u32, Error> {
        let mut host = self.host();
        let h = host.backend.register_host_region(region.clone())?;
        next_buffer_handle(&host, h)?;
        host.buffers.push(region.words().len() as u64 * 4);
        host.regions.push((h, region));
        Ok(h)
    }

    /// Registers a buffer holding `data`.
    pub fn create_buffer_with(&self, size: u64, data: &[u8]) -> Result<u32, Error> {
        let h = self.create_buffer(size)?;
        self.write_buffer(h, 0, data)?;
        Ok(h)
    }

    /// Copies bytes into a buffer.
    pub fn write_buffer(&self, handle: u32, offset: u64, data: &[u8]) -> Result<(), Error> {
        let backend = self.backend();
        Ok(backend.write_buffer(handle, offset, data)?)
    }

    /// Writes each `(offset, value)` into a buffer as a little-endian `u32` (see
    /// [`Backend::write_buffer_words`]).
    pub fn write_buffer_words(&self, handle: u32, words: &[(u64, u32)]) -> Result<(), Error> {
        let backend = self.backend();
        Ok(backend.write_buffer_words(handle, words)?)
    }

    /// `bytes` of host memory the backend copies from fastest (see
    /// [`Backend::create_staging`]; contents unspecified), or a zeroed `Vec` where it has
    /// none.
    pub fn create_staging(&self, bytes: usize) -> Result<Box<dyn Staging>, Error> {
        let backend = self.backend();
        Ok(backend
            .create_staging(bytes)?
            .unwrap_or_else(|| Box::new(vec![0u8; bytes])))
    }

    /// Copies `src[range]` into a buffer at `offset`; the copy may still be running when this
    /// returns. Call [`Megakernel::wait_copies`] before writing `src` again or publishing
    /// slots that read what it copied.
    pub fn write_from_staging(
        &self,
        handle: u32,
        offset: u64,
        src: &dyn Staging,
        range: std::ops::Range<usize>,
    ) -> Result<(), Error> {
        let backend = self.backend();
        Ok(backend.write_from_staging(handle, offset, src, range)?)
    }

    /// Waits for the copies [`Megakernel::write_from_staging`] left running.
    pub fn wait_copies(&self) -> Result<(), Error> {
        let backend = self.backend();
        Ok(backend.wait_copies()?)
    }

    /// Copies bytes out of a buffer.
    pub fn read_buffer(&self, handle: u32, offset: u64, len: u64) -> Result<Vec<u8>, Error> {
        let backend = self.backend();
        Ok(backend.read_buffer(handle, offset, len)?)
    }

    /// Appends several `(offset, len)` ranges of a buffer to `out`, back to back, in one call
    /// (see [`Backend::read_buffer_ranges`]).
    pub fn read_buffer_ranges(
        &self,
        handle: u32,
        ranges: &[(u64, u64)],
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        let backend = self.backend();
        Ok(backend.read_buffer_ranges(handle, ranges, out)?)
    }

    /// Opens a file for IO_READ and returns its id (ids count from 1). The first call starts
    /// the I/O thread that serves the ring's read requests. Fails with the path and the OS's
    /// reason if the file cannot be opened.
    pub fn register_file(&self, path: impl AsRef<std::path::Path>) -> Result<u32, Error> {
        use crate::io_service::{RegisterError, MAX_FILES};
        let path = path.as_ref();
        let host = self.host();
        self.inner
            .io
            .register(path, host.mem.as_ref())
            .map_err(|e| match e {
                RegisterError::Open(source) => Error::new(ErrorKind::File {
                    path: path.to_path_buf(),
                    source,
                }),
                RegisterError::Limit => Error::new(ErrorKind::Config(format!(
                    "cannot register {}: this megakernel already has {MAX_FILES} files, the most it serves",
                    path.display()
                ))),
                RegisterError::Thread(e) => Error::new(ErrorKind::Backend(
                    crate::backend::BackendError::Launch(format!(
                        "cannot start the I/O thread for IO_READ: {e}"
                    )),
                )),
            })
    }

    /// Files registered with [`Megakernel::register_file`].
    pub fn registered_files(&self) -> u32 {
        self.inner.io.files()
    }

    /// Replaces the service that performs IO_READ's reads (default: [`crate::PreadService`];
    /// `vyre-ingest` has an io_uring one). Only before the first
    /// [`Megakernel::register_file`], which starts the I/O thread.
    pub fn set_io_service(&self, service: Arc<dyn crate::IoService>) -> Result<(), Error> {
        let name = service.name().to_string();
        if self.inner.io.set_service(service) {
            Ok(())
        } else {
            Err(Error::new(ErrorKind::Config(format!(
                "the I/O service cannot change to `{name}` once files are registered (the `{}` service already runs); set it right after launch",
                self.inner.io.service_name()
            ))))
        }
    }

    /// Validates bytecode and loads it into the program table; returns its id for EXEC.
    pub fn load_program(&self, bytecode: &[u8]) -> Result<u32, Error> {
        let program = Program::decode(bytecode).map_err(|e| Error::new(ErrorKind::Program(e)))?;
        let mut host = self.host();
        let id = host.backend.load_program(program.clone())?;
        host.programs.push(program);
        Ok(id)
    }

    fn check_batch(&self, slots: &[Slot]) -> Result<(), Error> {
        match slots
            .iter()
            .enumerate()
            .find_map(|(index, s)| self.rejection(s).map(|reason| (index, reason)))
        {
            Some((index, reason)) => Err(Error::new(ErrorKind::Publish { index, reason })),
            None => Ok(()),
        }
    }

    /// Why `s` may not be published, if it may not.
    fn rejection(&self, s: &Slot) -> Option<PublishRejection> {
        let tenants = self.inner.config.tenants;
        if s.tenant >= tenants {
            return Some(PublishRejection::Tenant {
                tenant: s.tenant,
                tenants,
            });
        }
        if s.priority > MAX_PRIORITY {
            return Some(PublishRejection::Priority {
                priority: s.priority,
                max: MAX_PRIORITY,
            });
        }
        None
    }

    /// The host pool for a publish or reap of at most `n` slots: none below the size at which
    /// the ring shares work with it (`ring::PARALLEL_MIN`), so that a small publish or wait
    /// leaves the threads kept spinning after a large batch alone for the next one.
    fn pool_for(&self, n: usize) -> Option<&rayon::ThreadPool> {
        if n < crate::ring::PARALLEL_MIN {
            return None;
        }
        self.inner.pool.as_ref().map(HostPool::get)
    }

    /// Publishes one slot.
    pub fn publish(&self, slot: Slot) -> Result<Ticket, Error> {
        Ok(self.publish_batch(std::slice::from_ref(&slot))?.start)
    }

    /// Publishes a batch: every slot is checked first (a bad one rejects the whole batch),
    /// then slots are written and made visible with one tail store per 64 slots. Blocks,
    /// reaping, while the ring is full. If the megakernel stops or is declared hung while a
    /// batch larger than the free space waits, the part already published keeps its tickets
    /// (they follow the last ticket you hold) and runs or is reported like any other slot;
    /// the error returns without them.
    pub fn publish_batch(&self, slots: &[Slot]) -> Result<Range<Ticket>, Error> {
        self.publish_batch_as(slots, false)
    }

    /// As [`Megakernel::publish_batch`], but the whole batch becomes visible to workers with
    /// one tail store, once there is room for all of it (so it must fit in the ring). Workers
    /// then start on a batch that is already complete in memory, which is what a measurement
    /// of the device's own rate needs; `publish_batch` overlaps writing with executing.
    pub fn publish_batch_whole(&self, slots: &[Slot]) -> Result<Range<Ticket>, Error> {
        if slots.len() > self.inner.config.capacity as usize {
            return Err(Error::new(ErrorKind::Config(format!(
                "publish_batch_whole: {} slots do not fit in a ring of {}; use publish_batch",
                slots.len(),
                self.inner.config.capacity
            ))));
        }
        self.publish_batch_as(slots, true)
    }

    fn publish_batch_as(&self, slots: &[Slot], whole: bool) -> Result<Range<Ticket>, Error> {
        self.check_batch(slots)?;
        let _publisher = self
            .inner
            .publisher
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        self.publish_locked(slots, whole)
    }

    /// Publishes checked `slots`; the caller holds the publisher lock.
    fn publish_locked(&self, slots: &[Slot], whole: bool) -> Result<Range<Ticket>, Error> {
        let mut host = self.host();
        let first = host.next_ticket;
        let mut rest = slots;
        let mut backoff = Backoff::default();
        while !rest.is_empty() {
            if let Some(r) = &host.hung {
                return Err(hung_error(r));
            }
            if self.inner.no_new_work(&host) {
                return Err(Error::new(ErrorKind::Stopped));
            }
            let n = {
                let Host { ring, mem, .. } = &mut *host;
                let pool = self.pool_for(rest.len());
                if !whole {
                    ring.publish_on(mem.as_ref(), rest, pool)
                } else if ring.publish_whole_on(mem.as_ref(), rest, pool) {
                    rest.len()
                } else {
                    0
                }
            };
            if n > 0 {
                host.backend.doorbell();
                host.next_ticket += n as u64;
                rest = &rest[n..];
                backoff = Backoff::default();
            } else if host.reap() == 0 {
                check_alive(host.backend.as_ref())?;
                // Let other threads (and the watchdog) in while the ring is full.
                drop(host);
                backoff.snooze();
                host = self.host();
            }
        }
        Ok(first..host.next_ticket)
    }

    /// Returns the completion of `ticket` if it has finished, without blocking.
    pub fn poll(&self, ticket: Ticket) -> Option<Completion> {
        let mut host = self.host();
        host.reap();
        host.take(ticket)
    }

    /// Whether `ticket` has completed (its completion may still be taken by `poll` or
    /// `wait`). Never blocks and takes nothing.
    pub fn is_finished(&self, ticket: Ticket) -> bool {
        let mut host = self.host();
        host.reap();
        ticket < host.base + host.done.len() as u64
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
                host.reap();
                if let Some(c) = host.take(ticket) {
                    return Ok(c);
                }
                if ticket < host.base {
                    return Err(Error::new(ErrorKind::Config(format!(
                        "ticket {ticket} was already taken"
                    ))));
                }
                if let Some(r) = &host.hung {
                    return Err(hung_error(r));
                }
                if backoff.slow() && host.backend.health().stopped {
                    // Nothing will run any more: report what is left as lost, never drop it.
                    host.fail_unfinished();
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

    /// Waits for every ticket in `tickets` (any order, gaps allowed) and returns their
    /// completions in the order given. Completions are reaped in ticket order, so this waits
    /// for the highest one and takes the rest under one lock, instead of one lock per ticket.
    pub fn wait_all(&self, tickets: &[Ticket]) -> Result<Vec<Completion>, Error> {
        let Some(&max) = tickets.iter().max() else {
            return Ok(Vec::new());
        };
        let last = self.wait(max)?;
        let mut host = self.host();
        tickets
            .iter()
            .map(|&t| {
                if t == max {
                    return Ok(last);
                }
                host.take(t).ok_or_else(|| {
                    Error::new(ErrorKind::Config(format!(
                        "ticket {t} was already taken or never published"
                    )))
                })
            })
            .collect()
    }

    /// Waits for every ticket in a range; completions in ticket order. Takes whatever has
    /// finished under one lock per poll rather than one per ticket.
    pub fn wait_range(&self, tickets: Range<Ticket>) -> Result<Vec<Completion>, Error> {
        let mut out = Vec::with_capacity((tickets.end - tickets.start) as usize);
        let mut next = tickets.start;
        let mut backoff = Backoff::default();
        while next < tickets.end {
            {
                let mut host = self.host();
                let before = next;
                // A large range is read by the host pool once enough of it has finished;
                // until then (and for at most 100 µs) the device is left to finish more.
                let eager = self.inner.pool.is_none()
                    || !host.direct(next)
                    || backoff.waited(Duration::from_micros(100));
                let pool = self.pool_for(usize::try_from(tickets.end - next).unwrap_or(usize::MAX));
                next += host.reap_direct(next, tickets.end, &mut out, pool, eager) as u64;
                if next > before {
                    backoff = Backoff::default();
                    continue;
                }
                if !eager {
                    drop(host);
                    backoff.snooze();
                    continue;
                }
                host.reap();
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
    /// than the ring or large enough to split: the next part is written while the device
    /// runs the last, and reaped while it runs the next. Completions in batch order.
    pub fn run_batch(&self, slots: &[Slot]) -> Result<Vec<Completion>, Error> {
        let mut out = Vec::new();
        self.run_batch_into(slots, &mut out)?;
        Ok(out)
    }

    /// As [`Megakernel::run_batch`], into `out` (its contents are replaced; on an error they
    /// are unspecified). Reusing one vector for many batches saves allocating and initialising
    /// it each time: for 65,536 slots, 1.5 MB that one host thread took 65 µs to fill on an
    /// H100 host, a third of the device's time for as many NOP slots.
    pub fn run_batch_into(&self, slots: &[Slot], out: &mut Vec<Completion>) -> Result<(), Error> {
        if let Some(pool) = &self.inner.pool {
            if slots.len() >= 2 * ring::PARALLEL_MIN {
                return self.run_batch_overlapped(slots, pool, out);
            }
        }
        self.check_batch(slots)?;
        out.clear();
        out.reserve(slots.len());
        self.run_parts(slots, out, |part| self.publish_batch(part))
    }

    /// Publishes `slots` part by part with `publish`, collecting each part's completions into
    /// `out` after publishing the next (so the device runs one part while the host writes the
    /// next).
    fn run_parts(
        &self,
        slots: &[Slot],
        out: &mut Vec<Completion>,
        publish: impl Fn(&[Slot]) -> Result<Range<Ticket>, Error>,
    ) -> Result<(), Error> {
        let chunk = (self.inner.config.capacity as usize / 2)
            .min(slots.len().div_ceil(4).max(ring::PARALLEL_MIN))
            .max(1);
        let mut pending: VecDeque<Range<Ticket>> = VecDeque::new();
        for part in slots.chunks(chunk) {
            pending.push_back(publish(part)?);
            if pending.len() > 1 {
                out.extend(self.wait_range(pending.pop_front().expect("non-empty"))?);
            }
        }
        for r in pending {
            out.extend(self.wait_range(r)?);
        }
        Ok(())
    }

    /// `run_batch_into` for a large batch with a host pool. Under one hold of the host lock, in
    /// one hand-over ([`HostPool::run`]), the pool's threads and this one share the work a
    /// unit of [`ring::PARALLEL_UNIT`] slots at a time:
    /// - first they check the slots (a bad slot rejects the whole batch before any is written;
    ///   one thread's check of 65,536 slots took 125 µs on an H100 host, about what the device
    ///   takes to run them);
    /// - then the pool's threads write the units while this thread publishes each written
    ///   prefix (one tail store), writing units too when it has nothing to publish: writing a
    ///   64-byte line costs a host thread about as much as the device takes to run two NOP
    ///   slots;
    /// - when the batch fits in the ring, the pool's threads also read the completions, a unit
    ///   each, straight into their places in `out` (a thread reads the next unit as soon as its
    ///   last slot has finished, else writes the next one, else waits to read): reading a line
    ///   the device wrote costs a cache-line transfer, three NOP slots of device time. A larger
    ///   batch is read by this thread as it goes (its writers wait for room, which only
    ///   reading makes); writers stay a ring's capacity ahead of the reading at most.
    ///
    /// When something is unusual (another publisher's completions not yet taken, no progress
    /// for [`OVERLAP_STALL`], a hang, a stop) it finishes on the general path, which reports it.
    fn run_batch_overlapped(
        &self,
        slots: &[Slot],
        pool: &HostPool,
        out: &mut Vec<Completion>,
    ) -> Result<(), Error> {
        use std::sync::atomic::AtomicUsize;
        let n = slots.len();
        let _publisher = self
            .inner
            .publisher
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut host = self.host();
        let first = host.next_ticket;
        let quiet = host.direct(first) && host.ring.outstanding() == 0;
        let stopped = self.inner.no_new_work(&host);
        if !(quiet && !stopped && host.hung.is_none()) {
            drop(host);
            self.check_batch(slots)?;
            out.clear();
            return self.run_parts(slots, out, |part| self.publish_locked(part, false));
        }
        // The readers below write each completion into its place: `out` needs n elements. A
        // vector reused from a batch at least this large already has them; a shorter one is
        // filled out (by this thread: 65 µs for 65,536 on an H100 host).
        out.truncate(n);
        out.resize(n, UNREAD);
        let capacity = self.inner.config.capacity as usize;
        let units = n.div_ceil(ring::PARALLEL_UNIT);
        let unit = |u: usize| {
            (
                u * ring::PARALLEL_UNIT,
                ((u + 1) * ring::PARALLEL_UNIT).min(n),
            )
        };
        // Every word the threads share has a cache line (two: the adjacent-line prefetcher) of
        // its own: readers load `published_upto` and `abort` for every slot, and beside the
        // counters every thread bumps, or the flags of units being written, those loads missed.
        let flags = |n: usize| -> Vec<Padded<AtomicBool>> {
            (0..n).map(|_| Padded(AtomicBool::new(false))).collect()
        };
        let counter = || Padded(AtomicUsize::new(0));
        let (next_check, checked, bad) = (counter(), counter(), Padded(AtomicBool::new(false)));
        let next_unit = counter();
        let written = flags(units);
        let reaped = counter();
        let abort = Padded(AtomicBool::new(false));
        // Shared reading: only when no writer can wait for room (which only reading makes).
        let shared_reads = n <= capacity;
        let published_upto = counter();
        let next_read = counter();
        let read = flags(units);
        // Where completions go: unit by unit for the pool's readers, whole for this thread.
        let (dest, mut whole): (Vec<Mutex<&mut [Completion]>>, _) = if shared_reads {
            let dest = out.chunks_mut(ring::PARALLEL_UNIT).map(Mutex::new);
            (dest.collect(), None)
        } else {
            (Vec::new(), Some(&mut out[..]))
        };
        let (mut published, mut filled) = (0usize, 0usize);
        let Host {
            ring, mem, backend, ..
        } = &mut *host;
        let mem = mem.as_ref();
        let base = ring.tail();
        // Checks units until none is left, then waits for the other threads' checks: false if a
        // slot was bad or the batch was abandoned.
        let check = || {
            loop {
                let u = next_check.fetch_add(1, Ordering::Relaxed);
                if u >= units {
                    break;
                }
                let (from, to) = unit(u);
                let ok = slots[from..to].iter().all(|s| self.rejection(s).is_none());
                if !ok {
                    bad.store(true, Ordering::Relaxed);
                    abort.store(true, Ordering::Relaxed);
                }
                checked.fetch_add(1, Ordering::Release);
            }
            while checked.load(Ordering::Acquire) < units {
                if abort.load(Ordering::Relaxed) {
                    return false;
                }
                std::hint::spin_loop();
            }
            !abort.load(Ordering::Relaxed)
        };
        // Writes the next unit if one is left: Some(false) if the batch was abandoned.
        let write_next = || {
            if next_unit.load(Ordering::Relaxed) >= units {
                return None;
            }
            let u = next_unit.fetch_add(1, Ordering::Relaxed);
            if u >= units {
                return None;
            }
            let (from, to) = unit(u);
            // Room: position base + to - 1 may reuse a slot only once base + to - 1 -
            // capacity has been read.
            while to > reaped.load(Ordering::Acquire) + capacity {
                if abort.load(Ordering::Relaxed) {
                    return Some(false);
                }
                std::hint::spin_loop();
            }
            if abort.load(Ordering::Relaxed) {
                return Some(false);
            }
            mem.write_slots(
                capacity as u32,
                base.wrapping_add(from as u32),
                &slots[from..to],
            );
            written[u].store(true, Ordering::Release);
            Some(true)
        };
        // A position is read only once published: before that its line may still hold
        // the last lap's completion.
        let finished = |k: usize| {
            (k < published_upto.load(Ordering::Acquire))
                .then(|| {
                    ring::finished_completion(mem, capacity as u32, base.wrapping_add(k as u32))
                })
                .flatten()
        };
        // Reads unit u into its part of `out`, waiting for its slots; false if the batch was
        // abandoned.
        let read_unit = |u: usize| {
            let (from, to) = unit(u);
            let mut part = dest[u].lock().unwrap_or_else(|e| e.into_inner());
            let mut k = from;
            while k < to {
                if abort.load(Ordering::Relaxed) {
                    return false;
                }
                match finished(k) {
                    Some(c) => {
                        part[k - from] = c;
                        k += 1;
                    }
                    None => std::hint::spin_loop(),
                }
            }
            read[u].store(true, Ordering::Release);
            true
        };
        // A pool thread, once the batch is checked: reads the next unit once its last slot has
        // finished (while the lines are fresh), else writes the next unit, else waits to read.
        let work_checked = || loop {
            if abort.load(Ordering::Relaxed) {
                return;
            }
            if shared_reads {
                let r = next_read.load(Ordering::Relaxed);
                if r < units
                    && finished(unit(r).1 - 1).is_some()
                    && next_read
                        .compare_exchange(r, r + 1, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                {
                    if !read_unit(r) {
                        return;
                    }
                    continue;
                }
            }
            match write_next() {
                Some(true) => continue,
                Some(false) => return,
                None => {}
            }
            if !shared_reads {
                return;
            }
            let r = next_read.fetch_add(1, Ordering::Relaxed);
            if r >= units || !read_unit(r) {
                return;
            }
        };
        let work = || {
            if check() {
                work_checked();
            }
        };
        pool.run(work, || {
            // However this closure ends (a panic included), the pool's threads stop waiting.
            let _stop = StopOnDrop(&abort);
            if !check() {
                return;
            }
            let (mut progress, mut read_units) = (Instant::now(), 0);
            while filled < n {
                let moved = publish_written(ring, mem, &written, n, &mut published);
                if moved {
                    published_upto.store(published, Ordering::Release);
                    backend.doorbell();
                }
                let got = if let Some(whole) = whole.as_deref_mut() {
                    let at = base.wrapping_add(published as u32);
                    ring.reap_until(mem, at, |c| {
                        whole[filled] = c;
                        filled += 1;
                    })
                } else {
                    let from = filled;
                    while read_units < units && read[read_units].load(Ordering::Acquire) {
                        let (a, b) = unit(read_units);
                        ring.advance_reap((b - a) as u32);
                        filled = b;
                        read_units += 1;
                    }
                    filled - from
                };
                if got > 0 || moved {
                    reaped.store(filled, Ordering::Release);
                    progress = Instant::now();
                } else if progress.elapsed() > OVERLAP_STALL {
                    break;
                } else if !(shared_reads && write_next() == Some(true)) {
                    // Nothing to publish, collect or write (a unit this thread writes never
                    // waits for room when the batch fits in the ring: only then does it write).
                    std::hint::spin_loop();
                }
            }
        });
        // Units written after an abandonment were checked and have room; their lines carry
        // publish stamps, so hot slot polling may already run them: publish them properly.
        if publish_written(ring, mem, &written, n, &mut published) {
            backend.doorbell();
        }
        drop((dest, whole));
        out.truncate(filled);
        host.next_ticket += published as u64;
        host.base += filled as u64;
        drop(host);
        if bad.0.into_inner() {
            self.check_batch(slots)?; // nothing was written; this names the first bad slot
        }
        if filled == n {
            return Ok(());
        }
        let done = first + filled as u64;
        out.extend(self.wait_range(done..first + published as u64)?);
        self.run_parts(&slots[published..], out, |part| {
            self.publish_locked(part, false)
        })
    }

    /// The done count (wrapping).
    pub fn done_count(&self) -> u32 {
        self.host().mem.control()[control::DONE_COUNT].load(Ordering::Acquire)
    }

    /// A snapshot of the control block's counters.
    pub fn stats(&self) -> Stats {
        let host = self.host();
        let c = host.mem.control();
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
        let host = self.host();
        ring::debug_drain(host.mem.as_ref())
    }

    /// The backend's liveness.
    pub fn health(&self) -> Health {
        self.backend().health()
    }

    /// What the watchdog found, if it declared the device hung.
    pub fn hang_report(&self) -> Option<HangReport> {
        self.host().hung.clone()
    }

    /// Test hook: makes the workers behave as a hung device does (they stop beating and
    /// hold what they claimed) until a restart aborts them. Sets the control block's
    /// FAULT_INJECT word.
    pub fn inject_hang(&self) {
        self.host().mem.control()[control::FAULT_INJECT].store(1, Ordering::Release);
    }

    /// Moves the megakernel onto a fresh backend after a hang: aborts the old workers,
    /// copies every buffer and program across (handles and ids unchanged), transplants the
    /// ring at the same positions so tickets stay valid, requeues every unfinished slot and
    /// launches. Slots that were CLAIMED when the device hung may have run partly; the
    /// report lists them.
    pub fn restart(&self, backend: Arc<dyn Backend>) -> Result<RestartReport, Error> {
        crate::watchdog::restart(&self.inner, backend)
    }

    /// Drains published work (up to the drain timeout), stops the workers, and reports
    /// every slot that never finished. Completions not yet taken stay retrievable until the
    /// megakernel is dropped.
    pub fn shutdown(&self) -> Result<ShutdownReport, Error> {
        if self.inner.stopped.swap(true, Ordering::AcqRel) {
            return Ok(ShutdownReport::default());
        }
        if let Some(w) = &self.watchdog {
            w.stop();
        }
        let start = Instant::now();
        let mut report = ShutdownReport::default();
        let mut backoff = Backoff::default();
        loop {
            let mut host = self.host();
            report.drained += host.reap();
            let done = host.ring.outstanding() == 0 || host.hung.is_some();
            if done
                || start.elapsed() > self.inner.config.drain_timeout
                || host.backend.health().stopped
            {
                break;
            }
            drop(host);
            backoff.snooze();
        }
        let mut host = self.host();
        let control_words = host.mem.control();
        control_words[control::SHUTDOWN].store(1, Ordering::Release);
        if host.hung.is_some() {
            control_words[control::ABORT].store(1, Ordering::Release);
        }
        host.backend.doorbell();
        let stopped = host.backend.stop();
        // The workers are gone: nothing takes a resume entry any more.
        self.inner.io.stop(self.inner.config.drain_timeout);
        report.lost = host.fail_unfinished();
        if stopped.is_ok() {
            host.retired.clear();
        }
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

/// The launch settings a backend gets for a configuration.
pub(crate) fn launch_config(backend: &dyn Backend, config: &Config) -> LaunchConfig {
    let caps = backend.capabilities();
    let workers = config
        .workers
        .unwrap_or(caps.default_workers)
        .clamp(1, caps.max_workers.max(1));
    LaunchConfig {
        workers,
        step_budget: config.step_budget,
        claim_batch: config.claim_batch,
    }
}

fn check_alive(backend: &dyn Backend) -> Result<(), Error> {
    let h = backend.health();
    if h.stopped {
        return Err(Error::new(ErrorKind::Backend(
            crate::backend::BackendError::Launch(format!(
                "the {} backend stopped{}",
                backend.name(),
                h.failure.map(|f| format!(": {f}")).unwrap_or_default()
            )),
        )));
    }
    Ok(())
}

impl Drop for Megakernel {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!(error = %e, "megakernel shutdown on drop failed");
        }
    }
}

/// What the watchdog saw when it declared the device hung.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HangReport {
    /// How long the heartbeat had not moved.
    pub silent_for: Duration,
    /// The heartbeat value it was stuck at.
    pub heartbeat: u32,
    /// Positions a worker had started (STATUS = CLAIMED) and not finished.
    pub claimed: Vec<u32>,
    /// Positions not started (STATUS = PUBLISHED); some may sit in a claimed batch that a
    /// worker had not reached.
    pub unclaimed: Vec<u32>,
}

/// What a restart did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestartReport {
    /// Positions put back into the ring to run again.
    pub requeued: Vec<u32>,
    /// Of those, the ones a worker had claimed (they may have run partly before the hang) or
    /// that waited on I/O (WAIT_IO: their IO_READ runs again, and its read is repeated).
    pub possibly_partial: Vec<u32>,
    /// Buffers copied to the new backend.
    pub buffers: usize,
    /// Programs reloaded.
    pub programs: usize,
}

/// Handles count up from 1 in registration order; a backend that breaks that would make the
/// runtime's bookkeeping (sizes, restart) name the wrong buffers.
fn next_buffer_handle(host: &Host, h: u32) -> Result<(), Error> {
    if h as usize == host.buffers.len() + 1 {
        return Ok(());
    }
    Err(Error::new(ErrorKind::Config(format!(
        "backend {} returned handle {h}, expected {}",
        host.backend.name(),
        host.buffers.len() + 1
    ))))
}
