//! What the GPU variants of `vyre bench ingest` share (`--backend cuda` in
//! `bench_ingest_cuda.rs`, `--backend wgpu` in `bench_ingest_wgpu.rs`): the gated reader
//! that keeps setup out of the timed part, the disk pass (vyre ingest alone), HASH64 slots
//! over pieces of a chunk, the GPU's rate hashing a buffer it already holds, and the check
//! of every GPU hash against the host's xxh64 of the same file bytes.

use crate::bench_ingest::{drop_caches, run_fio, Args, Measure, Set};
use crate::bench_ring::machine;
use std::fmt::Write as _;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use vyre_ingest::{CpuTimes, EngineKind, Event, Ingest, IngestConfig};
use vyre_isa::{Slot, SlotOp};
use vyre_runtime::{Completion, Megakernel, Outcome, ShutdownReport};

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
        m: Measure::timed(bytes, secs, cpu),
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
    Ok(Measure::timed(
        rounds * region.len() as u64,
        t.elapsed().as_secs_f64(),
        cpu,
    ))
}

/// Drops the page cache before `what` where `enabled`, or notes that it could not.
pub(crate) fn cold(enabled: bool, what: &str, notes: &mut Vec<String>) {
    if enabled && !drop_caches() {
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

/// The bytes of all `paths` (a file that cannot be read counts 0; the check reports it).
pub(crate) fn total_bytes(paths: &[PathBuf]) -> u64 {
    paths
        .iter()
        .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .sum()
}

/// Most slots per chunk of `block` bytes (each at least [`MIN_SLOT`]).
pub(crate) fn max_split(block: usize) -> u32 {
    (block / MIN_SLOT).max(1) as u32
}

/// `--split`: `None` for `auto`, else the slots per chunk, checked against the block size.
pub(crate) fn fixed_split(a: &Args) -> Result<Option<u32>, String> {
    let block = a.bs_kib << 10;
    let max_split = max_split(block);
    match a.split.as_str() {
        "auto" => Ok(None),
        s => match s.parse::<u32>() {
            Ok(n) if (1..=max_split).contains(&n) => Ok(Some(n)),
            _ => Err(format!(
                "--split {s}: expected `auto` or 1..={max_split} (slots of at least 4 KiB of a {} block)",
                size_name(block)
            )),
        },
    }
}

impl Hashed {
    /// A chunk from its slots' completions; a faulted slot hashes to 0 and its fault goes
    /// to `errors`.
    pub(crate) fn new(
        file: u64,
        offset: u64,
        len: usize,
        completions: Vec<Completion>,
        errors: &mut Vec<String>,
    ) -> Hashed {
        let mut hashes = Vec::with_capacity(completions.len());
        for c in completions {
            match hash_of(c.outcome) {
                Ok(h) => hashes.push(h),
                Err(e) => {
                    errors.push(format!("file {file} at {offset}: {e}"));
                    hashes.push(0);
                }
            }
        }
        Hashed {
            file,
            offset,
            len,
            hashes,
        }
    }
}

/// Steps 1 and 2 of both variants: the disk rate through vyre ingest and through fio (cold
/// where `drop_caches`); `show_fio` also reports the fio pass on stderr. What they noticed
/// goes to `notes`.
pub(crate) fn disk_passes(
    a: &Args,
    set: &Set,
    total: u64,
    step: &str,
    drop_caches: bool,
    show_fio: bool,
    notes: &mut Vec<String>,
) -> Result<(Pass, Option<(Measure, String)>), String> {
    eprintln!(
        "{step} disk read rate: vyre ingest alone (io_uring, O_DIRECT, {} KiB blocks, queue depth {}) ...",
        a.bs_kib, a.qd
    );
    cold(drop_caches, "disk (vyre ingest)", notes);
    let disk = disk_vyre(a, &set.paths, total)?;
    notes.extend(disk.notes.iter().cloned());
    eprintln!("    {:.2} GB/s", disk.m.gbps());
    cold(drop_caches, "disk (fio)", notes);
    if show_fio {
        eprintln!("{step} disk read rate: fio with the same parameters ...");
    }
    let fio = match run_fio(a, set) {
        Ok((m, shown)) => {
            if show_fio {
                eprintln!("    {:.2} GB/s", m.gbps());
            }
            Some((m, shown))
        }
        Err(e) => {
            if show_fio {
                eprintln!("    skipped: {e}");
            }
            notes.push(format!("fio: {e}"));
            None
        }
    };
    Ok((disk, fio))
}

/// The faster of the two disk passes, in GB/s.
pub(crate) fn disk_rate(disk: &Measure, fio: Option<&(Measure, String)>) -> f64 {
    disk.gbps().max(fio.map_or(0.0, |(m, _)| m.gbps()))
}

/// [`in_place`] for every slot count of [`SPLITS`] that fits a block; `per` names what a
/// block is in the progress lines ("chunk", "block").
pub(crate) fn in_place_rows(
    mk: &Megakernel,
    handle: u32,
    region: &[u8],
    block: usize,
    per: &str,
) -> Result<Vec<(u32, Measure)>, String> {
    let mut rows = Vec::new();
    for split in SPLITS.into_iter().filter(|&s| s <= max_split(block)) {
        let m = in_place(mk, handle, region, block, split)?;
        eprintln!(
            "    {split} slots per {per} ({} each): {:.2} GB/s",
            size_name(block / split as usize),
            m.gbps()
        );
        rows.push((split, m));
    }
    Ok(rows)
}

/// The fastest of the in-place rows.
pub(crate) fn fastest(rows: &[(u32, Measure)]) -> &(u32, Measure) {
    rows.iter()
        .max_by(|x, y| x.1.gbps().total_cmp(&y.1.gbps()))
        .expect("at least one split is measured")
}

/// Adds to `problems` what the end-to-end pass got wrong: hashes that differ from the
/// host's, bytes not delivered, slots lost at shutdown.
pub(crate) fn check_end_to_end(
    problems: &mut Vec<String>,
    paths: &[PathBuf],
    chunks: &[Hashed],
    split: u32,
    delivered: u64,
    shutdown: Result<ShutdownReport, vyre_runtime::Error>,
) {
    let total = total_bytes(paths);
    problems.extend(verify(paths, chunks, split));
    if delivered != total {
        problems.push(format!("end to end delivered {delivered} of {total} bytes"));
    }
    match shutdown {
        Ok(r) if !r.lost.is_empty() => {
            problems.push(format!("{} slots lost at shutdown", r.lost.len()))
        }
        Ok(_) => {}
        Err(e) => problems.push(format!("shutdown: {e}")),
    }
}

/// The markdown report both variants print (and write to `--out`).
pub(crate) struct Report {
    pub(crate) t: String,
    /// Decimals of the table's seconds column.
    secs_digits: usize,
}

impl Report {
    /// The title, GPU, host, command, the files and parameters (`params` ends that line) and
    /// the table's header.
    pub(crate) fn new(
        backend: &str,
        device: &str,
        a: &Args,
        total: u64,
        params: &str,
        secs_digits: usize,
    ) -> Result<Report, std::fmt::Error> {
        let command = std::env::args().collect::<Vec<_>>().join(" ");
        let mut t = String::new();
        writeln!(t, "# vyre bench ingest --backend {backend}\n")?;
        writeln!(t, "GPU: {device}\n\nhost: {}\n", machine())?;
        writeln!(t, "command: `{command}`\n")?;
        writeln!(
            t,
            "{} files x {} MiB ({:.2} GiB) under {}; block size {} KiB, queue depth {}{params}\n",
            a.large_files(),
            a.large_mib(),
            total as f64 / (1u64 << 30) as f64,
            a.dir.display(),
            a.bs_kib,
            a.qd,
        )?;
        writeln!(t, "| measure | GiB | s | GB/s | CPU s/GiB (user + sys) |")?;
        writeln!(t, "|---|---|---|---|---|")?;
        Ok(Report { t, secs_digits })
    }

    pub(crate) fn row(&mut self, what: &str, m: &Measure) -> std::fmt::Result {
        writeln!(
            self.t,
            "| {what} | {:.2} | {:.*} | {:.2} | {} |",
            m.gib(),
            self.secs_digits,
            m.secs,
            m.gbps(),
            cpu_cell(m)
        )
    }

    /// The rows of the disk passes.
    pub(crate) fn disk_rows(
        &mut self,
        disk: &Measure,
        fio: Option<&(Measure, String)>,
    ) -> std::fmt::Result {
        self.row(
            "disk: vyre ingest alone (io_uring, O_DIRECT, registered buffers)",
            disk,
        )?;
        if let Some((m, _)) = fio {
            self.row("disk: fio, same block size and queue depth", m)?;
        }
        Ok(())
    }

    /// The line on the checks; `also` names what else was checked.
    pub(crate) fn checks(
        &mut self,
        chunks: usize,
        slots: u64,
        also: &str,
        problems: &[String],
    ) -> std::fmt::Result {
        writeln!(
            self.t,
            "- checks: {chunks} chunks and {slots} slots end to end ({also}); every HASH64 result compared with the host's xxh64 (vyre_isa::hash) of the same file bytes: {}",
            if problems.is_empty() {
                "all equal, every byte of every file covered once".to_string()
            } else {
                format!("{} PROBLEMS (below)", problems.len())
            }
        )
    }

    /// The notes, fio's command and the problems; prints the report, writes it to `--out`,
    /// and fails where there are problems.
    pub(crate) fn finish(
        mut self,
        a: &Args,
        mut notes: Vec<String>,
        fio: Option<&(Measure, String)>,
        problems: &[String],
    ) -> Result<ExitCode, Box<dyn std::error::Error>> {
        let t = &mut self.t;
        notes.sort();
        notes.dedup();
        for n in &notes {
            writeln!(t, "- note: {n}")?;
        }
        if let Some((_, shown)) = fio {
            writeln!(t, "\nfio command:\n\n    {shown}")?;
        }
        if !problems.is_empty() {
            writeln!(t, "\nproblems (first 20):\n")?;
            for p in problems.iter().take(20) {
                writeln!(t, "- {p}")?;
            }
        }
        print!("{t}");
        if let Some(out) = &a.out {
            std::fs::write(out, t.as_str())
                .map_err(|e| format!("writing {}: {e}", out.display()))?;
            eprintln!("written to {}", out.display());
        }
        Ok(if problems.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }
}

/// `Args` from the words after `vyre bench ingest`, for the tests.
#[cfg(test)]
pub(crate) fn parse_args(words: &[&str]) -> Args {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }
    Cli::parse_from(std::iter::once("vyre").chain(words.iter().copied())).args
}
