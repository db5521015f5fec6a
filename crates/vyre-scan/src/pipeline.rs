//! The scan pipeline: walk + read → batches → ring → megakernel (DFA_SCAN) → hits → sink.
//!
//! * Walk threads list files the way ripgrep does (the `ignore` crate's parallel walker) and
//!   read each file they find in segments of [`ScanOptions::segment`] bytes, prefixing every
//!   segment with the last `overlap` bytes of the file before it, where `overlap` is the
//!   longest match of any bounded rule group. Segments go back to back into 1 MiB packs of
//!   the backend's staging memory (`read.rs`), sent to the driver when full.
//! * The driver (its own thread, `driver.rs`) places each pack's segments into a batch,
//!   copying each run of them into the batch's pooled backend buffer with one write, and
//!   publishes the batch's slots in one go:
//!   - bounded groups: one DFA_SCAN per window of [`ScanOptions::window`] bytes. A window
//!     owns the match ends in its own bytes; its slot starts `L` bytes early (from the
//!     look-behind start state of the byte before that) and reports only from its own first
//!     byte on, so every match is reported by exactly one window, and windows are
//!     independent (a GPU runs thousands at once);
//!   - unbounded groups: with [`ScanOptions::speculate_unbounded`] (GPU backends), one
//!     DFA_SCAN per window like bounded groups, each from the start state
//!     [`SPECULATE_LOOK_BEHIND`] bytes early; at completion each window is checked in file
//!     order (the state where its own bytes start must be the one its predecessor ended in)
//!     and scanned again on the host from the right state where it is not. Otherwise one
//!     DFA_SCAN per segment, from the state the file's previous segment ended in (its r1),
//!     published once that segment has completed; or, with
//!     [`ScanOptions::unbounded_on_host`], scanned by the walk thread as it reads the file,
//!     its hits handed over with each segment.
//! * The last segment of a file (a short read, possibly empty) asks for the end-of-input
//!   transition, which reports matches that end at the end of the file (`$`, `\b`).
//! * Batches complete in FIFO order; a slot's hits are read back only when r2 > 0, from host
//!   memory where the backend has it, a batch's regions in one call. Regions that overflowed (r0 > r2) are rescanned
//!   together, each with a region of exactly r0 hits, so nothing is dropped. The driver runs
//!   on a thread of its own and sends each batch's segments, hits unsorted, to the calling
//!   thread, which sorts each segment's hits by (end, rule) (unless [`Sink::ordered`] is
//!   false) and hands them to the [`Sink`]:
//!   with thousands of rules, millions of matches cost the thread that handles them as much
//!   as everything else the driver does (bench/results/scan-h100.md), so the two overlap.
//!
//! Memory is bounded: `in_flight` batches, a bounded channel of packs, a bounded channel of
//! completed batches' reports, and per file in flight at most one carried state per
//! unbounded group.

use crate::compile::{Compiled, Group};
use crate::scan::check_table;
use ignore::WalkState;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use vyre_runtime::Megakernel;

mod counts;
mod driver;
mod read;

pub use counts::RuleCounts;

use read::{Pack, PackPool, Reader};

/// Bytes a speculative window of an unbounded rule group starts before its own
/// ([`ScanOptions::speculate_unbounded`]); segments overlap by this much where a batch
/// has room for it (`batch - segment` bytes).
pub const SPECULATE_LOOK_BEHIND: u32 = 256;

/// How paths are walked.
#[derive(Debug, Clone, Default)]
pub struct WalkOptions {
    /// Also walk hidden files and directories.
    pub hidden: bool,
    /// Ignore `.gitignore`, `.ignore` and similar files.
    pub no_ignore: bool,
    /// Follow symbolic links.
    pub follow: bool,
}

/// Pipeline settings.
#[derive(Debug, Clone)]
pub struct ScanOptions {
    /// Bytes of file data one DFA_SCAN slot of a bounded group owns. Small windows give a
    /// GPU many independent slots (one lane each); large ones cost the cpu backend less.
    pub window: usize,
    /// Bytes read from a file at a time (one segment).
    pub segment: usize,
    /// Bytes per batch: segments are packed into one backend buffer per batch, copied in
    /// once and scanned by all the batch's slots.
    pub batch: usize,
    /// Batches in flight per driver (each holds one data buffer and one hit buffer).
    pub in_flight: usize,
    /// Walk threads; each lists directories and reads whole files it finds, so several
    /// files are listed and read at once.
    pub readers: usize,
    /// Hits one slot's region holds before the slot is rescanned with a larger one: exactly
    /// this many in device memory; in host memory (where the backend has it) at least this
    /// many and one per 16 bytes the slot scans (with [`Self::fixed_hit_regions`]: the most
    /// any slot scans), thinned out when all batches' regions would pass 512 MiB of
    /// page-locked memory (many rule groups).
    pub hit_capacity: u32,
    /// Read files into the backend's staging memory (`Megakernel::create_staging`:
    /// page-locked on cuda, so a batch's copy to the device is a DMA with no host copy);
    /// false: plain memory.
    pub staging: bool,
    /// Scan rule groups whose matches can be unboundedly long on the walk threads, as they
    /// read each file (carrying the DFA state in the thread), instead of as one DFA_SCAN slot
    /// per segment chained after the file's previous one. On a GPU such a chain runs each
    /// segment on one lane, one after another (the bench's secret rules on an H100: 45 s for
    /// 1.4 GB); the cpu backend's workers are host threads anyway. On the walk threads the
    /// secret rules took 1.8 s, against 0.9-1.0 s speculated ([`Self::speculate_unbounded`],
    /// the GPU default).
    pub unbounded_on_host: bool,
    /// Scan rule groups whose matches can be unboundedly long in windows, like bounded
    /// ones, each from the start state [`SPECULATE_LOOK_BEHIND`] bytes early: a window
    /// whose state where its own bytes start (DFA_SCAN's hit header word 1) equals the state
    /// the window before it ended in is exact; any other is scanned again on the host from
    /// that state (rare: a partial match older than the look-behind). Takes precedence over
    /// `unbounded_on_host`.
    pub speculate_unbounded: bool,
    /// Hit regions in host memory all of one size, each at a fixed place with its capacity
    /// header written once per batch buffer (the GPU default), instead of sized by what
    /// each slot scans and laid out anew, headers and all, for every batch (the cpu
    /// default: its small-file slots would otherwise each take a region sized for a 1 MiB
    /// window). On an H100 host the per-batch headers cost about 0.5 µs per slot, 0.1 s
    /// of a 0.3 s pass at 1,000 words (bench/results/scan-h100.md, session 9).
    pub fixed_hit_regions: bool,
    /// Bounded rule groups run together, this many at most, as one DFA_SCAN per window
    /// over a table set (`vyre_isa::dfa`, `VDFS`) instead of one slot per group per
    /// window; 1: every group its own slots (the cpu default, where slots are 1 MiB
    /// windows and sets measured no different). Sets cut the slots the driver thread
    /// plans, publishes and completes, but a set's slot runs its members one after another
    /// on one GPU lane, so a window takes that many times as long. With the 20 secret
    /// regexes (7 bounded groups, 3 unbounded) on an H100, sets of 4 made the bench's pass
    /// about 13% faster than no sets (medians of 8 alternated passes 0.736 s against
    /// 0.844 s); one set of all 7 was no faster (the driver's wait for the device rose by
    /// 0.2 s), so 4 is the GPU default (bench/results/scan-h100.md, session 10).
    pub set_members: usize,
    /// Read files smaller than a segment through io_uring where the kernel allows it
    /// (`vyre_ingest::WholeFiles`: a batch of open, read and close chains per system call,
    /// on descriptors of the ring's own table), instead of with three system calls each.
    /// Open and close of a multi-threaded process share one descriptor table: on a 16-core
    /// H100 host, 78,575 files took 0.10-0.12 s to open, read and close with system calls
    /// on 8 or 16 threads, and 0.053-0.055 s with io_uring on 16 (bench/results/scan-h100.md,
    /// session 11). Where io_uring is unavailable (or `VYRE_INGEST_NO_URING=1`) files are
    /// read with system calls either way.
    pub io_uring: bool,
    /// Driver threads: each plans, publishes and completes its own batches (`in_flight` of
    /// them) of the files its share of the walk threads read, so that no one thread does
    /// all of that for the whole corpus. With small files read through io_uring, the one
    /// driver thread bounded the bench's 1,000-word pass on an H100 (its stages added up to
    /// the pass: planning 78,985 segments 0.05 s, hits 0.05-0.07 s; bench/results/
    /// scan-h100.md, session 11). More drivers make more batch buffers at once, which a
    /// scan that cannot reuse an earlier one's pays for: `vyre scan`, one scan per process,
    /// runs one driver unless told otherwise.
    pub drivers: usize,
    /// How directories are walked.
    pub walk: WalkOptions,
}

impl ScanOptions {
    /// Settings for a backend: small windows for GPUs, large ones for the cpu backend.
    pub fn for_backend(name: &str) -> ScanOptions {
        match name {
            "cpu" => ScanOptions {
                window: 1 << 20,
                readers: 2,
                ..ScanOptions::default()
            },
            // With data already on an H100, 16 KiB windows scan at 126-134 GB/s and 4 KiB
            // ones at 160-172 GB/s (bench/results/scan-resident-h100.md). Through files a
            // 16 MiB batch of 16 KiB windows is about 1,000 slots, so six batches in flight
            // kept a few thousand of the grid's 33,792 lanes busy and the driver waited for
            // the device; 8 KiB windows (with the driver's hits and set-up off its thread)
            // took 0.32-0.35 s against 0.40 s at 10,000 words and 0.21-0.22 s against
            // 0.28 s at 1,000 (bench/results/scan-h100.md); more batches in flight or
            // 32 MiB batches did less. 16 MiB batches pipelined better than 64 MiB ones
            // (3.4-3.8 against 2.4-2.5 GB/s on four large files, same run). Walk threads:
            // see `gpu_readers`.
            _ => ScanOptions {
                window: 8 << 10,
                batch: 16 << 20,
                in_flight: 6,
                readers: gpu_readers(2),
                hit_capacity: 256,
                speculate_unbounded: true,
                fixed_hit_regions: true,
                set_members: 4,
                drivers: 2,
                ..ScanOptions::default()
            },
        }
    }
}

/// Walk threads for a scan on a GPU with `drivers` driver threads: one per core the drivers
/// leave, 4 to 16. With small files read through io_uring, walking and reading the bench's
/// corpus alone took 0.080-0.098 s on 16 threads and 0.120-0.142 s on 8; but a driver
/// sharing its core with walk threads plans and copies slower: on a 16-core H100 host with
/// two drivers, 14 walk threads scanned 1,000 words in 0.093-0.113 s (six passes) against
/// 0.101-0.136 s with 16 (seven passes), same runs (bench/results/scan-h100.md, session 12).
pub fn gpu_readers(drivers: usize) -> usize {
    std::thread::available_parallelism()
        .map_or(8, |n| n.get().saturating_sub(drivers))
        .clamp(4, 16)
}

/// The megakernel settings a scan wants on a backend. On cpu a worker thread runs the slots
/// it claims one after another, so it claims one window at a time (a worker holding a batch
/// of long slots would leave the others idle). On a GPU a warp runs one claimed slot per
/// lane, so it claims a full batch (claiming one would leave 31 of 32 lanes idle), and the
/// ring holds 65,536 slots, enough windows in flight for every lane of a full grid.
pub fn megakernel_config(backend: &str) -> vyre_runtime::Config {
    let default = vyre_runtime::Config::default();
    if backend == "cpu" {
        vyre_runtime::Config {
            claim_batch: 1,
            ..default
        }
    } else {
        vyre_runtime::Config {
            capacity: 1 << 16,
            ..default
        }
    }
}

impl Default for ScanOptions {
    fn default() -> Self {
        ScanOptions {
            window: 64 << 10,
            segment: 1 << 20,
            batch: 8 << 20,
            in_flight: 4,
            readers: 4,
            hit_capacity: 64,
            staging: true,
            io_uring: true,
            drivers: 1,
            unbounded_on_host: false,
            speculate_unbounded: false,
            fixed_hit_regions: false,
            set_members: 1,
            walk: WalkOptions::default(),
        }
    }
}

/// The most table bytes [`with_table_sets`] puts in one set: a literal group's own limit
/// (`Limits::max_literal_table_bytes`' default), so a set is no larger than a group may be.
const SET_MAX_BYTES: usize = 256 << 20;

/// `rules` with its bounded groups gathered, in order, into table sets of at most
/// `members` groups ([`ScanOptions::set_members`]): each set is one group whose table is a
/// `VDFS` set of the members' tables, whose pattern ids are the members' one after another
/// (each member's pattern base is the number of patterns before it), and whose longest
/// match is the longest of theirs. Unbounded groups stay as they are, after the sets. `None`
/// where no set would hold two groups (the tables are copied into the sets: nothing to copy
/// then).
fn with_table_sets(rules: &Compiled, members: usize) -> Option<Compiled> {
    let members = members.clamp(1, vyre_isa::dfa::SET_MAX_MEMBERS as usize);
    let (bounded, unbounded): (Vec<&Group>, Vec<&Group>) =
        rules.groups.iter().partition(|g| g.max_len.is_some());
    if members < 2 || bounded.len() < 2 {
        return None;
    }
    // Consecutive groups, at most `members` and SET_MAX_BYTES of tables per set (a group
    // larger than that alone), so that a set fits every backend's largest buffer where its
    // groups do.
    let mut chunks: Vec<Vec<&Group>> = Vec::new();
    let mut bytes = 0usize;
    for &g in &bounded {
        let b = g.table.len() * 4;
        match chunks.last_mut() {
            Some(c) if c.len() < members && bytes + b <= SET_MAX_BYTES => {
                c.push(g);
                bytes += b;
            }
            _ => {
                chunks.push(vec![g]);
                bytes = b;
            }
        }
    }
    let mut groups = Vec::new();
    for chunk in &chunks {
        if let [g] = chunk.as_slice() {
            // One group: as it is.
            groups.push((*g).clone());
            continue;
        }
        let mut base = 0u32;
        let mut parts = Vec::with_capacity(chunk.len());
        for g in chunk {
            parts.push((g.table.as_slice(), base));
            base = base.saturating_add(g.rules.len() as u32);
        }
        // 2..=SET_MAX_MEMBERS members of at most SET_MAX_BYTES: always a valid set.
        let table = vyre_isa::dfa::table_set(&parts).expect("a set within the limits");
        groups.push(Group {
            table,
            rules: chunk.iter().flat_map(|g| g.rules.iter().copied()).collect(),
            max_len: chunk.iter().filter_map(|g| g.max_len).max(),
        });
    }
    groups.extend(unbounded.into_iter().cloned());
    Some(Compiled {
        groups,
        names: rules.names.clone(),
    })
}

/// Where results go. Calls for one file arrive in order: its matches by increasing end
/// (unless [`Sink::ordered`] says the sink does not need that), then `file_done` (or `file_error` if reading failed part-way; matches in the part read
/// before the failure have been reported). `file` identifies one visit of a file by the walk:
/// the same path reached twice (overlapping roots, or a link with `--follow`) is two files,
/// whose calls may interleave.
pub trait Sink {
    /// A match of rule `rule` (an index into [`Compiled::names`]) ending at byte `end`.
    fn matched(&mut self, file: u64, path: &Path, end: u64, rule: u32);
    /// Whether a file's matches must come by increasing end. A sink that only counts
    /// returns false: each segment's matches then come in no particular order (the file's
    /// segments still come in order), which saves sorting them (millions of matches at
    /// thousands of rules).
    fn ordered(&self) -> bool {
        true
    }
    /// A file was scanned to its end.
    fn file_done(&mut self, file: u64, path: &Path, bytes: u64);
    /// A file could not be (fully) read or scanned.
    fn file_error(&mut self, file: u64, error: &FileError);
    /// Totals so far, after each batch.
    fn progress(&mut self, _bytes: u64, _files: u64) {}
    /// True once whatever consumes the results is gone (e.g. stdout closed by `| head`): the
    /// scan then reads nothing more, finishes the work in flight and returns what it counted.
    fn stopped(&self) -> bool {
        false
    }
}

/// A per-file problem; the scan goes on.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct FileError {
    /// The file (or the walk entry) at fault.
    pub path: PathBuf,
    /// What went wrong.
    pub message: String,
}

/// Totals of a scan.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Files scanned to their end.
    pub files: u64,
    /// Bytes scanned.
    pub bytes: u64,
    /// Matches reported.
    pub matches: u64,
    /// Files (or walk entries) that failed.
    pub file_errors: u64,
    /// Wall time.
    pub seconds: f64,
}

/// Why a scan stopped before the end.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The runtime failed (device lost, hung, stopped).
    #[error("the megakernel failed during the scan")]
    Runtime(#[from] vyre_runtime::Error),
    /// The options cannot work.
    #[error("bad scan options: {0}")]
    Options(String),
}

#[derive(Debug)]
pub(crate) struct FileMeta {
    pub(crate) path: PathBuf,
    pub(crate) seq: u64,
}

#[derive(Debug)]
pub(crate) enum Item {
    Pack(Pack),
    Error(Arc<FileMeta>, String),
}

/// What the driver sends the thread that owns the sink, in the order of the sink's calls.
#[derive(Debug)]
pub(crate) enum Report {
    /// A segment's matches, unsorted (the sink's thread decodes and sorts them), and for the
    /// last segment of a file the file's length.
    Segment {
        file: Arc<FileMeta>,
        /// Decoded already (found by a walk thread).
        hits: Vec<(u64, u32)>,
        /// Its runs among the delivery's runs (whose bytes are in the batch's hit bytes).
        runs: std::ops::Range<usize>,
        end: Option<u64>,
    },
    Error(u64, FileError),
    /// Bytes and files one driver completed since its last progress report (each driver
    /// counts its own; the sink's thread adds them up).
    Progress {
        bytes: u64,
        files: u64,
    },
}

/// One slot's hits in a completed batch's hit bytes: (end, pattern) pairs of `u32`, ends
/// relative to `origin`, patterns indexing `group`'s rules.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) origin: u64,
    pub(crate) group: u32,
    pub(crate) bytes: std::ops::Range<usize>,
}

/// One completed batch: its hit bytes, its segments' runs (pointing into the bytes) and its
/// reports (pointing into the runs). The runs of a batch are one allocation: a vector per
/// segment, allocated by a driver thread and freed by the sink's, cost the sink's thread
/// 0.04-0.07 s of a 0.12 s pass at 1,000 words on an H100 host (bench/results/
/// scan-h100.md, session 11).
type Delivery = (Vec<u8>, Vec<Run>, Vec<Report>);

/// Completed batches' reports that may wait for the sink's thread: the driver goes on with
/// the next batches while the sink handles these.
const REPORTS_IN_FLIGHT: usize = 2;

/// Deliveries the sink's thread has handled, emptied, for the drivers' next batches: vectors
/// allocated by a driver and freed by the sink's thread for every batch were fresh pages each
/// time (with mimalloc, which purges freed pages), a tenth of a driver thread's time in a
/// profile.
#[derive(Default)]
pub(crate) struct Recycled(std::sync::Mutex<Vec<Delivery>>);

impl Recycled {
    /// More than enough for every delivery in flight.
    const KEEP: usize = 16;

    fn take(&self) -> Delivery {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_default()
    }

    fn give(&self, (mut bytes, mut runs, mut reports): Delivery) {
        bytes.clear();
        runs.clear();
        reports.clear();
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() < Self::KEEP {
            kept.push((bytes, runs, reports));
        }
    }
}

/// The driver's end of the channel to the sink's thread: reports gathered per batch and sent
/// together.
pub(crate) struct Reports<'a> {
    pending: Vec<Report>,
    runs: Vec<Run>,
    /// An empty vector for the next batch's hit bytes.
    bytes: Vec<u8>,
    tx: SyncSender<Delivery>,
    stopped: &'a AtomicBool,
    recycled: &'a Recycled,
}

impl<'a> Reports<'a> {
    fn new(tx: SyncSender<Delivery>, stopped: &'a AtomicBool, recycled: &'a Recycled) -> Self {
        Reports {
            pending: Vec::new(),
            runs: Vec::new(),
            bytes: Vec::new(),
            tx,
            stopped,
            recycled,
        }
    }

    /// An empty vector to read a batch's hit bytes into (sent with its reports).
    pub(crate) fn hit_bytes(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.bytes)
    }

    pub(crate) fn push(&mut self, r: Report) {
        self.pending.push(r);
    }

    /// Moves `runs` into the runs sent with the next reports; where they are among them.
    pub(crate) fn push_runs(&mut self, runs: &mut Vec<Run>) -> std::ops::Range<usize> {
        let start = self.runs.len();
        self.runs.append(runs);
        start..self.runs.len()
    }

    /// Sends what was pushed (blocking while the sink's thread is `REPORTS_IN_FLIGHT`
    /// batches behind).
    pub(crate) fn send(&mut self) {
        self.send_with(Vec::new());
    }

    /// Sends what was pushed, whose runs point into `hit_bytes`.
    pub(crate) fn send_with(&mut self, hit_bytes: Vec<u8>) {
        if self.pending.is_empty() {
            return;
        }
        let (bytes, runs, pending) = self.recycled.take();
        if self.bytes.capacity() == 0 {
            self.bytes = bytes;
        }
        if self
            .tx
            .send((
                hit_bytes,
                std::mem::replace(&mut self.runs, runs),
                std::mem::replace(&mut self.pending, pending),
            ))
            .is_err()
        {
            // The sink's thread is gone (it panicked): nothing more can be reported.
            self.stopped.store(true, Ordering::Relaxed);
        }
    }

    /// [`Sink::stopped`], as of the last batch the sink's thread handled.
    pub(crate) fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }
}

/// The sink's thread: makes the sink's calls for every report, in order, until the driver
/// hangs up; logs its time in them and waiting for the driver (`vyre_scan::stages`).
fn deliver(
    rx: Receiver<Delivery>,
    rules: &Compiled,
    sink: &mut dyn Sink,
    stopped: &AtomicBool,
    recycled: &Recycled,
) {
    let (mut busy, mut idle, mut matches) = (Duration::ZERO, Duration::ZERO, 0u64);
    let mut progress = (0u64, 0u64);
    let ordered = sink.ordered();
    let mut t = Instant::now();
    for (bytes, all_runs, mut reports) in rx {
        let now = Instant::now();
        idle += now - t;
        t = now;
        for r in reports.drain(..) {
            match r {
                Report::Segment {
                    file,
                    mut hits,
                    runs,
                    end,
                } => {
                    let decoded = all_runs[runs].iter().flat_map(|r| {
                        let rules = &rules.groups[r.group as usize].rules;
                        bytes[r.bytes.clone()].chunks_exact(8).map(move |pair| {
                            let word = |i: usize| {
                                u32::from_le_bytes(pair[i..i + 4].try_into().expect("4 bytes"))
                            };
                            (r.origin + u64::from(word(0)), rules[word(4) as usize])
                        })
                    });
                    if ordered {
                        hits.extend(decoded);
                        hits.sort_unstable();
                    } else {
                        for (at, rule) in decoded {
                            matches += 1;
                            sink.matched(file.seq, &file.path, at, rule);
                        }
                    }
                    matches += hits.len() as u64;
                    for (at, rule) in hits {
                        sink.matched(file.seq, &file.path, at, rule);
                    }
                    if let Some(bytes) = end {
                        sink.file_done(file.seq, &file.path, bytes);
                    }
                }
                Report::Error(file, e) => sink.file_error(file, &e),
                Report::Progress { bytes, files } => {
                    progress = (progress.0 + bytes, progress.1 + files);
                    sink.progress(progress.0, progress.1);
                }
            }
        }
        recycled.give((bytes, all_runs, reports));
        if sink.stopped() {
            stopped.store(true, Ordering::Relaxed);
        }
        let now = Instant::now();
        busy += now - t;
        t = now;
    }
    tracing::info!(
        target: "vyre_scan::stages",
        "sink's thread: {} {matches} matches and handing them to the sink {:.3} s, \
         waiting for the driver {:.3} s",
        if ordered { "sorting" } else { "(unordered)" },
        busy.as_secs_f64(),
        idle.as_secs_f64()
    );
}

/// The buffers one scan leaves for the next on the same backend ([`scan_reusing`]): its batch
/// buffer pairs (data and hit regions; reused when the next scan lays them out the same way),
/// its table buffers (reused for tables of the same size, the new tables uploaded into them)
/// and its overflow buffer. A scan makes `in_flight` pairs, on cuda 16 MiB of device memory
/// and up to 85 MB of page-locked hit regions each, and 170 MB of tables at 10,000 rules; the
/// runtime has no way to free a buffer, so a process that scans again and again (a service,
/// `vyre bench scan`'s passes) would otherwise take that memory anew every time, and making
/// it stalls the scan's own copies into the device (the driver's copy starts took 30-58 ms of
/// a 0.2 s pass with the set-up thread allocating beside it, 12-19 ms at the worst one, on an
/// H100 host; bench/results/scan-h100.md, session 10).
#[derive(Debug, Default)]
pub struct ScanBuffers {
    /// The backend the buffers belong to (a weak reference keeps its address from being
    /// reused by another backend while the buffers are kept).
    owner: Option<std::sync::Weak<dyn vyre_runtime::Backend>>,
    /// Batch buffer pairs, with their layout as asked for and as made.
    pairs: Option<(driver::Pairs, driver::Pairs, Vec<driver::Buffers>)>,
    /// Table buffers, by size in bytes.
    tables: Vec<(u64, u32)>,
    overflow: Vec<driver::Overflow>,
}

impl ScanBuffers {
    /// No buffers yet.
    pub fn new() -> ScanBuffers {
        ScanBuffers::default()
    }

    /// How many batch buffer pairs are kept.
    pub fn pairs(&self) -> usize {
        self.pairs.as_ref().map_or(0, |k| k.2.len())
    }

    /// How many table buffers are kept.
    pub fn tables(&self) -> usize {
        self.tables.len()
    }

    /// Forgets buffers of another backend than `mk`'s.
    fn claim(&mut self, mk: &Megakernel) {
        let backend = mk.backend();
        let same = self
            .owner
            .as_ref()
            .and_then(std::sync::Weak::upgrade)
            .is_some_and(|b| Arc::ptr_eq(&b, &backend));
        if !same {
            *self = ScanBuffers {
                owner: Some(Arc::downgrade(&backend)),
                ..ScanBuffers::default()
            };
        }
    }

    /// Up to `most` kept pairs made for layout `wanted` (the rest stay kept), and the
    /// layout they were made with; otherwise `wanted` and none.
    fn take_pairs(
        &mut self,
        wanted: &driver::Pairs,
        most: usize,
    ) -> (driver::Pairs, Vec<driver::Buffers>) {
        match &mut self.pairs {
            Some((asked, made, pairs)) if asked == wanted => {
                let at = pairs.len().saturating_sub(most);
                (made.clone(), pairs.split_off(at))
            }
            _ => (wanted.clone(), Vec::new()),
        }
    }

    /// Keeps `pairs` of layout `(asked, made)`, with those of the same layout already kept;
    /// kept pairs of another layout are forgotten (the runtime cannot free them).
    fn put_pairs(
        &mut self,
        layout: (driver::Pairs, driver::Pairs),
        mut pairs: Vec<driver::Buffers>,
    ) {
        match &mut self.pairs {
            Some((asked, _, kept)) if *asked == layout.0 => kept.append(&mut pairs),
            _ => self.pairs = Some((layout.0, layout.1, pairs)),
        }
    }

    /// A kept table buffer of exactly `bytes`.
    fn take_table(&mut self, bytes: u64) -> Option<u32> {
        let i = self.tables.iter().position(|&(b, _)| b == bytes)?;
        Some(self.tables.swap_remove(i).1)
    }
}

/// Scans `paths` with `rules` on `mk`'s backend, reporting to `sink`.
pub fn scan(
    mk: &Megakernel,
    rules: &Compiled,
    paths: &[PathBuf],
    opts: &ScanOptions,
    sink: &mut dyn Sink,
) -> Result<Summary, ScanError> {
    scan_reusing(mk, rules, paths, opts, sink, &mut ScanBuffers::new())
}

/// [`scan`], with the batch buffers an earlier scan on the same backend left in `buffers`
/// (where their layout is the one this scan needs), leaving this scan's there in turn when
/// it completes.
pub fn scan_reusing(
    mk: &Megakernel,
    rules: &Compiled,
    paths: &[PathBuf],
    opts: &ScanOptions,
    sink: &mut dyn Sink,
    buffers: &mut ScanBuffers,
) -> Result<Summary, ScanError> {
    let start = Instant::now();
    let sets = with_table_sets(rules, opts.set_members);
    let rules = sets.as_ref().unwrap_or(rules);
    // A driver without a walk thread would get no files.
    let drivers = opts.drivers.clamp(1, opts.readers.max(1));
    // The options are checked (and the walk started) before any buffer is made.
    let Walk {
        thread: walk,
        items,
        pool,
    } = start_walk(mk, rules, paths, opts, true, drivers)?;
    let tables = match driver::table_buffers(mk, rules, buffers) {
        Ok(t) => t,
        Err(e) => {
            // The walk stops at its next send.
            drop(items);
            let _ = walk.join();
            return Err(e);
        }
    };
    // The drivers run on threads of their own; this one owns the sink (which need not be
    // `Send`).
    let stopped = AtomicBool::new(sink.stopped());
    let (report_tx, report_rx) = sync_channel::<Delivery>(REPORTS_IN_FLIGHT);
    let gate = Arc::new(driver::Gate::default());
    let buffers = std::sync::Mutex::new(buffers);
    let recycled = Recycled::default();
    let result = thread::scope(|s| {
        let threads: Vec<_> = items
            .into_iter()
            .enumerate()
            .map(|(index, item_rx)| {
                let share = driver::Share {
                    index,
                    drivers,
                    tables: tables.clone(),
                    gate: gate.clone(),
                };
                let (report_tx, pool, stopped, buffers, recycled) = (
                    report_tx.clone(),
                    pool.clone(),
                    &stopped,
                    &buffers,
                    &recycled,
                );
                // The first driver's set-up thread uploads the tables; whatever ends that
                // driver first opens the gate for the others.
                let opener = (index == 0).then(|| driver::GateOpener::new(gate.clone()));
                thread::Builder::new()
                    .name(format!("vyre-scan-driver-{index}"))
                    .spawn_scoped(s, move || {
                        let mut reports = Reports::new(report_tx, stopped, recycled);
                        // On error the receiver of items is dropped here and the walk stops
                        // at its next send.
                        let (mut driver, set_up) =
                            driver::Driver::new(mk, rules, opts, pool, buffers, share, opener)?;
                        let set_up = thread::Builder::new()
                            .name(format!("vyre-scan-setup-{index}"))
                            .spawn_scoped(s, move || set_up.run())
                            .expect("spawn the scan set-up");
                        let result = driver.run(item_rx, &mut reports);
                        // The set-up thread ends after the pair it is making (at its next
                        // send, after an error: the driver is gone).
                        driver.stop_set_up();
                        let driver = result.is_ok().then_some(driver);
                        // A panic of the set-up thread is an error of this scan, not of the
                        // caller.
                        let joined = set_up.join().map_err(|_| {
                            ScanError::Options(
                                "the scan's set-up thread panicked (see the message above)".into(),
                            )
                        });
                        let summary = result?;
                        joined?;
                        if let Some(d) = driver {
                            d.finish(&mut buffers.lock().unwrap_or_else(|e| e.into_inner()));
                        }
                        Ok::<Summary, ScanError>(summary)
                    })
                    .expect("spawn a scan driver")
            })
            .collect();
        drop(report_tx);
        deliver(report_rx, rules, sink, &stopped, &recycled);
        let mut total = Ok(Summary::default());
        for t in threads {
            let r = t
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            total = match (total, r) {
                (Ok(a), Ok(b)) => Ok(Summary {
                    files: a.files + b.files,
                    bytes: a.bytes + b.bytes,
                    matches: a.matches + b.matches,
                    file_errors: a.file_errors + b.file_errors,
                    seconds: 0.0,
                }),
                (Err(e), _) | (Ok(_), Err(e)) => Err(e),
            };
        }
        total
    });
    let walked = walk.join();
    let mut summary = result?;
    if walked.is_err() {
        return Err(ScanError::Options(
            "a walk thread panicked (see the message above); the scan missed files".into(),
        ));
    }
    // Every driver finished: the tables' buffers are free for the next scan.
    let buffers = buffers.into_inner().unwrap_or_else(|e| e.into_inner());
    let sizes = rules.groups.iter().map(|g| g.table.len() as u64 * 4);
    buffers.tables.extend(sizes.zip(tables));
    summary.seconds = start.elapsed().as_secs_f64();
    Ok(summary)
}

/// The walk threads of a scan, started: packs of segments (or per-file errors) arrive on
/// `items` (the walk threads take turns among them: each file's pieces all arrive on one),
/// in buffers of `pool`.
struct Walk {
    thread: thread::JoinHandle<()>,
    items: Vec<Receiver<Item>>,
    pool: Arc<PackPool>,
}

/// Checks `opts` against `rules` and starts the walk threads: each reads the files it finds
/// into packs of segments overlapping as `rules` need, and scans the unbounded groups as it
/// reads them where `opts` asks for that and `host_groups` allows it.
fn start_walk(
    mk: &Megakernel,
    rules: &Compiled,
    paths: &[PathBuf],
    opts: &ScanOptions,
    host_groups: bool,
    channels: usize,
) -> Result<Walk, ScanError> {
    let speculating = opts.speculate_unbounded && rules.groups.iter().any(|g| g.max_len.is_none());
    let overlap = rules
        .groups
        .iter()
        .filter_map(|g| g.max_len)
        // As far as a batch has room for it: a window's look-behind is cut at the start of
        // the bytes its segment has (speculation then fails more often, never silently).
        .chain(
            speculating
                .then(|| SPECULATE_LOOK_BEHIND.min(opts.batch.saturating_sub(opts.segment) as u32)),
        )
        .max()
        .unwrap_or(0) as usize;
    let limit = 1usize << 30;
    if opts.window == 0
        || opts.segment == 0
        || opts.in_flight == 0
        || opts.readers == 0
        || opts.batch > limit
        || opts.batch < opts.segment + overlap
    {
        return Err(ScanError::Options(format!(
            "need window ≥ 1, segment ≥ 1, in_flight ≥ 1 and segment + overlap ({} + {overlap}) \
             ≤ batch ≤ 1 GiB (got window {}, batch {}, in_flight {})",
            opts.segment, opts.window, opts.batch, opts.in_flight
        )));
    }
    // At most 64 packs (64 MiB of 1 MiB packs) wait for the drivers.
    let (item_txs, items): (Vec<_>, Vec<_>) = (0..channels)
        .map(|_| sync_channel::<Item>(64_usize.div_ceil(channels)))
        .unzip();
    let pool = Arc::new(PackPool::new(opts.staging.then(|| mk.backend())));
    let thread = {
        let (paths, w, readers, pool) = (
            paths.to_vec(),
            opts.walk.clone(),
            opts.readers,
            pool.clone(),
        );
        let (segment, io_uring) = (opts.segment, opts.io_uring);
        // Unbounded groups scanned by the walk threads as they read, if asked.
        let host: Arc<Vec<Group>> = Arc::new(
            if host_groups && opts.unbounded_on_host && !opts.speculate_unbounded {
                let unbounded = rules.groups.iter().filter(|g| g.max_len.is_none());
                unbounded.cloned().collect()
            } else {
                Vec::new()
            },
        );
        // A malformed table would panic the host scan; the device reports it as a fault.
        if let Some((g, e)) = host
            .iter()
            .enumerate()
            .find_map(|(g, t)| check_table(&t.table).err().map(|e| (g, e)))
        {
            return Err(ScanError::Options(format!(
                "unbounded rule group {g} has a malformed table ({e}); scan it on the device \
                 (unbounded_on_host: false) to see the fault"
            )));
        }
        thread::Builder::new()
            .name("vyre-scan-walk".into())
            .spawn(move || {
                let turn = AtomicU64::new(0);
                let reader = || {
                    let k = turn.fetch_add(1, Ordering::Relaxed) as usize % item_txs.len();
                    let (tx, pool) = (item_txs[k].clone(), pool.clone());
                    Reader::new(tx, pool, host.clone(), segment, overlap, io_uring)
                };
                walk_and_read(&paths, &w, readers, reader)
            })
            .expect("spawn walker")
    };
    Ok(Walk {
        thread,
        items,
        pool,
    })
}

/// Totals of [`walk_and_read_only`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReadOnly {
    /// Files read to their end.
    pub files: u64,
    /// Bytes read (each once: a segment's overlap with the one before it is not counted).
    pub bytes: u64,
    /// Files (or walk entries) that failed.
    pub file_errors: u64,
    /// Wall time.
    pub seconds: f64,
}

/// Walks and reads `paths` as [`scan`] would with these rules and options (the same walk
/// threads, segments and overlaps, and pack buffers of the backend's staging memory) and
/// drops every pack as it arrives: nothing is copied, scanned or reported. No scan of the
/// same paths finishes sooner on this host; `vyre bench scan` reports it beside each pass.
pub fn walk_and_read_only(
    mk: &Megakernel,
    rules: &Compiled,
    paths: &[PathBuf],
    opts: &ScanOptions,
) -> Result<ReadOnly, ScanError> {
    let start = Instant::now();
    let walk = start_walk(mk, rules, paths, opts, false, 1)?;
    let mut totals = ReadOnly::default();
    for item in walk.items.into_iter().flatten() {
        match item {
            Item::Pack(pack) => {
                for p in &pack.pieces {
                    totals.bytes += (p.len - p.prefix) as u64;
                    totals.files += u64::from(p.last);
                }
                walk.pool.give(pack.buf);
            }
            Item::Error(..) => totals.file_errors += 1,
        }
    }
    let _ = walk.thread.join();
    totals.seconds = start.elapsed().as_secs_f64();
    Ok(totals)
}

/// Walks `paths` on `threads` threads (ignore's parallel walker, as ripgrep does); each
/// thread reads the files it finds and sends their segments, so listing and reading both
/// scale with the threads. File ids count walk entries in the order the threads reach
/// them.
fn walk_and_read(
    paths: &[PathBuf],
    opts: &WalkOptions,
    threads: usize,
    reader: impl Fn() -> Reader + Sync,
) {
    let Some((first, rest)) = paths.split_first() else {
        return;
    };
    let mut b = ignore::WalkBuilder::new(first);
    for p in rest {
        b.add(p);
    }
    b.hidden(!opts.hidden)
        .ignore(!opts.no_ignore)
        .git_ignore(!opts.no_ignore)
        .git_global(!opts.no_ignore)
        .git_exclude(!opts.no_ignore)
        .parents(!opts.no_ignore)
        .follow_links(opts.follow)
        .threads(threads);
    let next = AtomicU64::new(0);
    b.build_parallel().run(|| {
        let (mut reader, next) = (reader(), &next);
        Box::new(move |entry| {
            let path = match entry {
                Ok(e) if e.file_type().is_some_and(|t| t.is_file()) => Ok(e.into_path()),
                Ok(_) => return WalkState::Continue,
                Err(e) => Err(walk_error(e)),
            };
            let seq = next.fetch_add(1, Ordering::Relaxed);
            let going = match path {
                Ok(path) => reader.file(FileMeta { path, seq }),
                Err(e) => reader.error(Arc::new(FileMeta { path: e.path, seq }), e.message),
            };
            if going {
                WalkState::Continue
            } else {
                WalkState::Quit
            }
        })
    });
}

/// A walk error as a per-file error, without the path twice.
fn walk_error(e: ignore::Error) -> FileError {
    match e {
        ignore::Error::WithPath { path, err } => FileError {
            path,
            message: walk_error(*err).message,
        },
        ignore::Error::WithDepth { err, .. } | ignore::Error::WithLineNumber { err, .. } => {
            walk_error(*err)
        }
        ignore::Error::Io(e) => FileError {
            path: PathBuf::new(),
            message: e.to_string(),
        },
        other => FileError {
            path: PathBuf::new(),
            message: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{compile, Limits, RuleSet};

    #[test]
    fn bounded_groups_go_into_table_sets_in_order_with_their_pattern_bases() {
        let rules = RuleSet::parse_toml(
            r#"
[[rule]]
name = "a"
regex = "ab+c"
[[rule]]
name = "b"
regex = "x[0-9]{2}"
[[rule]]
name = "c"
literal = "needle"
[[rule]]
name = "d"
regex = "<[a-z]*>"
[[rule]]
name = "e"
regex = "q{3}"
"#,
            "test",
        )
        .expect("rules");
        let limits = Limits {
            max_group_rules: 1,
            ..Limits::default()
        };
        let c = compile(&rules, &limits).expect("compiles");
        let bounded: Vec<&Group> = c.groups.iter().filter(|g| g.max_len.is_some()).collect();
        let unbounded: Vec<&Group> = c.groups.iter().filter(|g| g.max_len.is_none()).collect();
        // "ab+c" and "<[a-z]*>" have no longest match.
        assert_eq!((bounded.len(), unbounded.len()), (3, 2));
        assert!(with_table_sets(&c, 1).is_none(), "1: no sets");
        let two = with_table_sets(&c, 2).expect("sets of two");
        assert_eq!(two.groups.len(), 2 + 2);
        for (set, members) in two.groups.iter().zip(bounded.chunks(2)) {
            let rules: Vec<u32> = members.iter().flat_map(|g| g.rules.clone()).collect();
            assert_eq!(set.rules, rules);
            assert_eq!(set.max_len, members.iter().filter_map(|g| g.max_len).max());
            if members.len() > 1 {
                // The directory: each member's pattern base counts the patterns before it.
                assert_eq!(set.table[0], vyre_isa::dfa::SET_MAGIC);
                assert_eq!(set.table[2], members.len() as u32);
                assert_eq!(set.table[5], 0);
                assert_eq!(set.table[7], members[0].rules.len() as u32);
            } else {
                assert_eq!(set.table, members[0].table);
            }
        }
        let after: Vec<&Group> = two.groups[2..].iter().collect();
        assert_eq!(
            after, unbounded,
            "unbounded groups stay as they are, after the sets"
        );
        // More members than a set may hold: capped, still one set.
        let all = with_table_sets(&c, 100_000).expect("one set");
        assert_eq!(all.groups.len(), 1 + 2);
        assert_eq!(all.groups[0].table[2], bounded.len() as u32);
    }
}
