//! The watchdog and restart: a host thread declares the device hung when published work is
//! outstanding and the heartbeat stops; a restart moves the megakernel onto a fresh backend
//! with every unfinished slot requeued at its old position.

use crate::backend::Backend;
use crate::error::{Error, ErrorKind};
use crate::megakernel::{launch_config, HangReport, Inner, RestartReport};
use crate::protocol::{control, status};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The watchdog thread of one megakernel.
#[derive(Debug)]
pub(crate) struct Watchdog {
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Watchdog {
    pub(crate) fn start(inner: &Arc<Inner>, bound: Duration) -> Watchdog {
        let stop = Arc::new(AtomicBool::new(false));
        let weak: Weak<Inner> = Arc::downgrade(inner);
        let flag = stop.clone();
        let period = (bound / 8).clamp(Duration::from_millis(1), Duration::from_millis(100));
        let thread = std::thread::Builder::new()
            .name("vyre-watchdog".into())
            .spawn(move || watch(weak, flag, bound, period))
            .map_err(|e| tracing::warn!(error = %e, "cannot start the watchdog thread; hangs will not be detected"))
            .ok();
        Watchdog {
            stop,
            thread: Mutex::new(thread),
        }
    }

    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

fn watch(inner: Weak<Inner>, stop: Arc<AtomicBool>, bound: Duration, period: Duration) {
    let mut last_beat = None;
    let mut since = Instant::now();
    while !stop.load(Ordering::Acquire) {
        std::thread::park_timeout(period);
        let Some(inner) = inner.upgrade() else { return };
        let mut host = inner.host();
        if host.hung.is_some() {
            continue;
        }
        let beat = host.mem.control()[control::HEARTBEAT].load(Ordering::Acquire);
        let unfinished = host.ring.unfinished(host.mem.as_ref());
        // Slots waiting on the host's I/O thread are the host's work, not the device's,
        // unless their resume entries wait for a worker.
        let device_idle = unfinished.iter().all(|&(_, st)| st == status::WAIT_IO)
            && !crate::io_queue::has_resume(host.mem.as_ref());
        if device_idle || last_beat != Some(beat) {
            // Idle, or alive: restart the clock.
            last_beat = Some(beat);
            since = Instant::now();
            continue;
        }
        if since.elapsed() < bound {
            continue;
        }
        let (claimed, unclaimed): (Vec<_>, Vec<_>) = unfinished
            .iter()
            .partition(|(_, st)| *st == status::CLAIMED);
        let report = HangReport {
            silent_for: since.elapsed(),
            heartbeat: beat,
            claimed: claimed.iter().map(|(p, _)| *p).collect(),
            unclaimed: unclaimed.iter().map(|(p, _)| *p).collect(),
        };
        tracing::error!(backend = host.backend.name(), silent_for = ?report.silent_for, claimed = report.claimed.len(), unclaimed = report.unclaimed.len(), "device declared hung: heartbeat stopped with work outstanding");
        host.hung = Some(report);
    }
}

fn restart_err(what: String) -> Error {
    Error::new(ErrorKind::Backend(crate::backend::BackendError::Launch(
        format!("restart: {what}"),
    )))
}

/// See [`crate::Megakernel::restart`].
pub(crate) fn restart(inner: &Inner, new: Arc<dyn Backend>) -> Result<RestartReport, Error> {
    if inner.is_stopped() {
        return Err(Error::new(ErrorKind::Stopped));
    }
    let mut host = inner.host();
    let (old, old_mem) = (host.backend.clone(), host.mem.clone());
    // 1. Stop the old workers where they stand.
    old_mem.control()[control::ABORT].store(1, Ordering::Release);
    old.doorbell();
    if let Err(e) = old.stop() {
        tracing::warn!(error = %e, "restart: the old backend did not stop; continuing on the new one");
    }
    // 2. The ring, at the same positions, unfinished slots published again. Statuses are
    //    snapshotted before buffers are read back: an old worker that outlived a failed stop
    //    may still finish a slot, and its effects must then be in the buffers we copy (at worst
    //    it runs again: at least once), never DONE without them.
    let mut report = RestartReport::default();
    let config = &inner.config;
    let new_mem = new.ring_memory(config.capacity, config.debug_capacity)?;
    let requeued = host
        .ring
        .transplant(old_mem.as_ref(), new_mem.as_ref(), config.debug_capacity);
    report.requeued = requeued.iter().map(|(p, _)| *p).collect();
    // A WAIT_IO slot runs IO_READ again from its first phase: its read is repeated.
    report.possibly_partial = requeued
        .iter()
        .filter(|(_, st)| *st == status::CLAIMED || *st == status::WAIT_IO)
        .map(|(p, _)| *p)
        .collect();
    // 3. Buffers and programs, under the same handles and ids.
    for (i, &size) in host.buffers.iter().enumerate() {
        let h = i as u32 + 1;
        if let Some((_, region)) = host.regions.iter().find(|(rh, _)| *rh == h) {
            // Host memory used in place: the new backend uses the same memory.
            let nh = new.register_host_region(region.clone())?;
            if nh != h {
                return Err(restart_err(format!(
                    "the new backend gave handle {nh} for host region {h}; use a fresh backend"
                )));
            }
            report.buffers += 1;
            continue;
        }
        let data = old.read_buffer(h, 0, size).map_err(|e| restart_err(format!("buffer {h} cannot be read back from the old {} backend ({e}); its contents are lost, so its slots cannot be requeued", old.name())))?;
        let host_memory = if host.host_buffers.contains(&h) {
            new.create_host_buffer(size)?
        } else {
            None
        };
        let nh = match host_memory {
            Some(nh) => nh,
            None => new.create_buffer(size)?,
        };
        if nh != h {
            return Err(restart_err(format!(
                "the new backend gave handle {nh} for buffer {h}; use a fresh backend"
            )));
        }
        new.write_buffer(h, 0, &data)?;
        report.buffers += 1;
    }
    for (i, p) in host.programs.iter().enumerate() {
        let id = new.load_program(p.clone())?;
        if id as usize != i + 1 {
            return Err(restart_err(format!(
                "the new backend gave id {id} for program {}; use a fresh backend",
                i + 1
            )));
        }
        report.programs += 1;
    }
    // 4. The I/O thread drops the old ring's requests and serves the new one (its IO_FILES
    //    is set before any worker runs), then launch.
    inner.io.retarget(new_mem.clone(), new.clone());
    new.launch(new_mem.clone(), &launch_config(new.as_ref(), config))?;
    tracing::warn!(
        requeued = report.requeued.len(),
        possibly_partial = report.possibly_partial.len(),
        backend = new.name(),
        "megakernel restarted"
    );
    let old = std::mem::replace(&mut host.backend, new);
    host.retired.push(old);
    host.mem = new_mem;
    host.hung = None;
    Ok(report)
}
