//! What the GPU variants of `vyre bench ingest` share (`--backend cuda` in
//! `bench_ingest_cuda.rs`, `--backend wgpu` in `bench_ingest_wgpu.rs`): the gated reader
//! that keeps setup out of the timed part, the disk pass (vyre ingest alone), HASH64 slots
//! over pieces of a chunk, the GPU's rate hashing a buffer it already holds, and the check
//! of every GPU hash against the host's xxh64 of the same file bytes.

use crate::bench_ingest::{drop_caches, Args, Measure};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use vyre_ingest::{CpuTimes, EngineKind, Event, Ingest, IngestConfig};
use vyre_isa::{Slot, SlotOp};
use vyre_runtime::{Megakernel, Outcome};

/// HASH64's seed in every slot.
pub(crate) const SEED: u32 = 0x5eed_1e55;
/// Slots per chunk measured in place.
pub(crate) const SPLITS: [u32; 4] = [1, 4, 16, 64];
/// Smallest slot: a HASH64 below a page is all overhead.
pub(crate) const MIN_SLOT: usize = 4096;
/// How long a gated reader waits for its go signal before it starts anyway (reached only
/// when a setup step failed and dropped the ingest before the go).
pub(crate) const GATE_TIMEOUT: Duration = Duration::from_secs(60);
/// The in-place rate must exceed min(disk, copy) by this factor for `--split auto`.
///
/// Not 1.25 (the first choice): end to end, the pipeline shares its time between reading
/// and hashing, and a slot hashing a whole chunk serially on one GPU lane holds the chunk's
/// staging buffer for its whole duration, so fewer buffers are free for reads than the
/// in-place measurement (every buffer hashed at once, no disk) suggests. On an H100, 1.25
/// picked 1 slot per chunk (2.58 GB/s in place against a 1.72 GB/s disk) and end to end
/// reached 0.77 of the disk rate; 16 slots per chunk (9.4 GB/s in place) reached 0.90.
pub(crate) const MARGIN: f64 = 4.0;

/// Files for an [`Ingest`] whose reader opens the first one only after the returned sender
/// says go (or is dropped), so setup stays out of the timed part.
pub(crate) fn gated(
    paths: &[PathBuf],
) -> (
    impl Iterator<Item = (u64, PathBuf)> + Send + 'static,
    mpsc::Sender<()>,
) {
    let (tx, rx) = mpsc::channel::<()>();
    let mut rx = Some(rx);
    // Owned: the reader thread pulls from this iterator after the caller's borrow ends.
    let owned: Vec<PathBuf> = paths.to_vec();
    let files = owned.into_iter().enumerate().map(move |(i, p)| {
        if let Some(r) = rx.take() {
            let _ = r.recv_timeout(GATE_TIMEOUT);
        }
        (i as u64, p)
    });
    (files, tx)
}

pub(crate) fn ingest_config(a: &Args) -> IngestConfig {
    IngestConfig {
        queue_depth: a.qd,
        block_size: a.bs_kib << 10,
        buffers: a.qd + a.in_flight,
        ..IngestConfig::default()
    }
}

/// Progress on stderr, at most once a second.
pub(crate) struct Progress {
    pub(crate) label: &'static str,
    pub(crate) total: u64,
    pub(crate) start: Instant,
    pub(crate) last: Instant,
}

impl Progress {
    pub(crate) fn new(label: &'static str, total: u64) -> Progress {
        let now = Instant::now();
        Progress {
            label,
            total,
            start: now,
            last: now,
        }
    }
    pub(crate) fn tick(&mut self, bytes: u64) {
        if self.last.elapsed() >= Duration::from_secs(1) {
            self.last = Instant::now();
            eprintln!(
                "    {}: {:.2} of {:.2} GiB, {:.2} GB/s",
                self.label,
                bytes as f64 / (1u64 << 30) as f64,
                self.total as f64 / (1u64 << 30) as f64,
                bytes as f64 / self.start.elapsed().as_secs_f64() / 1e9
            );
        }
    }
}

/// A timed pass: its measure, the setup time it excludes and what it noticed.
pub(crate) struct Pass {
    pub(crate) m: Measure,
    pub(crate) setup_secs: f64,
    pub(crate) notes: Vec<String>,
}

/// The disk alone: vyre ingest with O_DIRECT, every byte touched once.
pub(crate) fn disk_vyre(a: &Args, paths: &[PathBuf], total: u64) -> Result<Pass, String> {
    let (files, go) = gated(paths);
    let setup = Instant::now();
    let mut ing = Ingest::new(ingest_config(a), files).map_err(|e| format!("vyre ingest: {e}"))?;
    let mut notes = Vec::new();
    match ing.engine() {
        EngineKind::Plain { reason } => {
            return Err(format!(
                "vyre ingest is not on io_uring here ({reason}); the disk rate needs it (unset VYRE_INGEST_NO_URING, or allow io_uring_setup)"
            ));
        }
        EngineKind::Uring {
            fixed_buffers: false,
        } => notes.push(
            "io_uring refused to register the staging buffers (RLIMIT_MEMLOCK: run `ulimit -l unlimited` as root); reads went into unregistered buffers".to_string(),
        ),
        EngineKind::Uring { .. } => {}
    }
    let setup_secs = setup.elapsed().as_secs_f64();
    let cpu0 = CpuTimes::now();
    let t = Instant::now();
    drop(go);
    let mut bytes = 0u64;
    let mut check = 0u8;
    let mut progress = Progress::new("disk (vyre ingest)", total);
    while let Some(e) = ing.next_event() {
        match e {
            Event::Chunk(c) => {
                bytes += c.len as u64;
                check ^= c.bytes()[c.len - 1];
                progress.tick(bytes);
            }
            Event::End(_) => {}
            Event::Error(e) => return Err(format!("vyre ingest: {e}")),
        }
    }
    let stats = ing.stats();
    drop(ing);
    let secs = t.elapsed().as_secs_f64();
    let cpu = CpuTimes::now().since(cpu0);
    std::hint::black_box(check);
    if stats.direct_reads == 0 {
        notes.push(format!(
            "the disk pass read without O_DIRECT ({stats:?}): the filesystem refused it, so the rate may be the page cache's"
        ));
    }
    Ok(Pass {
        m: Measure {
            bytes,
            secs,
            user: cpu.user.as_secs_f64(),
            sys: cpu.system.as_secs_f64(),
            setup_cpu: 0.0,
        },
        setup_secs,
        notes,
    })
}

/// `(offset, len)` of each of up to `split` slots over a chunk of `len` bytes.
pub(crate) fn pieces(len: usize, split: u32) -> impl Iterator<Item = (usize, usize)> {
    let step = len.div_ceil(split as usize).max(1);
    (0..len).step_by(step).map(move |o| (o, step.min(len - o)))
}

pub(crate) fn hash_of(outcome: Outcome) -> Result<u64, String> {
    match outcome {
        Outcome::Done(r) => Ok(u64::from(r[0]) | u64::from(r[1]) << 32),
        Outcome::Fault(f) => Err(format!("slot faulted: {f}")),
    }
}

/// One chunk hashed on the GPU: the hashes of its pieces, in order.
pub(crate) struct Hashed {
    pub(crate) file: u64,
    pub(crate) offset: u64,
    pub(crate) len: usize,
    pub(crate) hashes: Vec<u64>,
}

/// Checks every hash of a pass against the host's xxh64 of the same file bytes, and that the
/// chunks cover every file exactly; returns the problems (empty: all good).
pub(crate) fn verify(paths: &[PathBuf], chunks: &[Hashed], split: u32) -> Vec<String> {
    let mut by_file: Vec<Vec<&Hashed>> = vec![Vec::new(); paths.len()];
    let mut problems = Vec::new();
    for c in chunks {
        match by_file.get_mut(c.file as usize) {
            Some(v) => v.push(c),
            None => problems.push(format!("a chunk of unknown file {}", c.file)),
        }
    }
    let threads = std::thread::available_parallelism().map_or(4, |n| n.get());
    let work: Vec<(usize, Vec<&Hashed>)> = by_file.into_iter().enumerate().collect();
    let per = work.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = work
            .chunks(per)
            .map(|part| {
                s.spawn(move || {
                    let mut bad = Vec::new();
                    let mut buf = Vec::new();
                    for (k, list) in part {
                        let path = &paths[*k];
                        let file = match std::fs::File::open(path) {
                            Ok(f) => f,
                            Err(e) => {
                                bad.push(format!("{}: {e}", path.display()));
                                continue;
                            }
                        };
                        let size = file.metadata().map_or(0, |m| m.len());
                        let mut next = 0u64;
                        for c in list {
                            if c.offset != next {
                                bad.push(format!(
                                    "{}: chunk at {} where {next} was expected",
                                    path.display(),
                                    c.offset
                                ));
                            }
                            next = c.offset + c.len as u64;
                            buf.resize(c.len, 0);
                            if let Err(e) = file.read_exact_at(&mut buf, c.offset) {
                                bad.push(format!("{}: reading back: {e}", path.display()));
                                continue;
                            }
                            for ((o, n), &h) in pieces(c.len, split).zip(&c.hashes) {
                                let want = vyre_isa::hash::xxh64(&buf[o..o + n], u64::from(SEED));
                                if want != h {
                                    bad.push(format!(
                                        "{} at {}+{n}: GPU hash {h:#018x}, host xxh64 {want:#018x}",
                                        path.display(),
                                        c.offset + o as u64
                                    ));
                                }
                            }
                        }
                        if next != size {
                            bad.push(format!(
                                "{}: chunks cover {next} of {size} bytes",
                                path.display()
                            ));
                        }
                    }
                    bad
                })
            })
            .collect();
        for h in handles {
            match h.join() {
                Ok(bad) => problems.extend(bad),
                Err(_) => problems.push("a verification thread panicked".into()),
            }
        }
    });
    problems
}

/// The GPU reading the registered region in place (no disk): HASH64 over every staging
/// buffer in `split` slots each, published at once, rounds until about half a second has
/// passed. Every round's hashes must equal the host's xxh64 of the region's bytes.
pub(crate) fn in_place(
    mk: &Megakernel,
    handle: u32,
    region: &[u8],
    block: usize,
    split: u32,
) -> Result<Measure, String> {
    let mut slots = Vec::new();
    let mut want = Vec::new();
    for (b, bytes) in region.chunks(block).enumerate() {
        for (o, n) in pieces(bytes.len(), split) {
            let off = (b * block + o) as u32;
            slots.push(Slot::new(SlotOp::Hash64, &[handle, off, n as u32, SEED]));
            want.push(vyre_isa::hash::xxh64(&bytes[o..o + n], u64::from(SEED)));
        }
    }
    let round = || -> Result<(), String> {
        let tickets = mk
            .publish_batch(&slots)
            .map_err(|e| format!("in place, split {split}: publish: {e}"))?;
        for (t, w) in tickets.zip(&want) {
            let c = mk
                .wait(t)
                .map_err(|e| format!("in place, split {split}: wait: {e}"))?;
            let h = hash_of(c.outcome).map_err(|e| format!("in place, split {split}: {e}"))?;
            if h != *w {
                return Err(format!(
                    "in place, split {split}: slot {t}: GPU hash {h:#018x}, host xxh64 {w:#018x}"
                ));
            }
        }
        Ok(())
    };
    round()?;
    let cpu0 = CpuTimes::now();
    let t = Instant::now();
    let mut rounds = 0u64;
    while rounds < 3 || (t.elapsed() < Duration::from_millis(500) && rounds < 50) {
        round()?;
        rounds += 1;
    }
    let cpu = CpuTimes::now().since(cpu0);
    Ok(Measure {
        bytes: rounds * region.len() as u64,
        secs: t.elapsed().as_secs_f64(),
        user: cpu.user.as_secs_f64(),
        sys: cpu.system.as_secs_f64(),
        setup_cpu: 0.0,
    })
}

/// Drops the page cache before `what`, or notes that it could not.
pub(crate) fn cold(what: &str, notes: &mut Vec<String>) {
    if !drop_caches() {
        notes.push(format!(
            "{what}: the page cache could not be dropped (not permitted); O_DIRECT reads bypass it anyway"
        ));
    }
}

pub(crate) fn cpu_cell(m: &Measure) -> String {
    let (u, s) = (m.user / m.gib(), m.sys / m.gib());
    format!("{:.3} ({u:.3} + {s:.3})", u + s)
}

pub(crate) fn size_name(bytes: usize) -> String {
    if bytes >= 1 << 20 && bytes % (1 << 20) == 0 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{} KiB", bytes.div_ceil(1024))
    }
}
