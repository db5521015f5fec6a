//! The scan pipeline: walker → reader → ring → megakernel (DFA_SCAN) → hits → sink.
//!
//! * A walker thread lists files the way ripgrep does (the `ignore` crate).
//! * A reader thread reads each file in windows of [`ScanOptions::window`] bytes and prefixes
//!   every window with the last `overlap` bytes of the file before it, where `overlap` is the
//!   longest match of any bounded group. A window owns the match ends in its own bytes.
//! * The driver (the calling thread) copies each window into a pooled backend buffer and
//!   publishes one DFA_SCAN slot per rule group. Bounded groups start `L` bytes early (from
//!   the look-behind state of the byte before that) and report only ends inside the window,
//!   so every match is reported by exactly one window. Unbounded groups scan only the
//!   window's own bytes, from the state the previous window of the file ended in (its r1);
//!   such a slot is published once that previous window has completed.
//! * The last window of a file (a short read, possibly empty) asks for the end-of-input
//!   transition, which reports matches that end at the end of the file (`$`, `\b`).
//! * Windows complete in FIFO order; a window's hits are read back only when r2 > 0, sorted
//!   by (end, rule) and handed to the [`Sink`]. A hit region that overflowed (r0 > r2) is
//!   rescanned with a region of exactly r0 hits, so nothing is dropped.
//!
//! Memory is bounded: `in_flight` windows, bounded channels between the threads, no
//! per-file state beyond one unbounded-group carry per file in flight.

use crate::compile::{Compiled, Group};
use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{self, Read};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use vyre_isa::dfa::{HIT_HEADER_BYTES, REPORT_EOI, START_LOOKBEHIND, START_TEXT};
use vyre_isa::{Slot, SlotOp};
use vyre_runtime::{Megakernel, Outcome, Ticket};

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
    /// Bytes of file data per window.
    pub window: usize,
    /// Windows in flight (each holds one backend data buffer and one hit buffer).
    pub in_flight: usize,
    /// Hits one group's region holds per window before a rescan is needed.
    pub hit_capacity: u32,
    /// How directories are walked.
    pub walk: WalkOptions,
}

impl Default for ScanOptions {
    fn default() -> Self {
        ScanOptions {
            window: 1 << 20,
            in_flight: 16,
            hit_capacity: 4096,
            walk: WalkOptions::default(),
        }
    }
}

/// Where results go. Calls for one file arrive in order: its matches by increasing end,
/// then `file_done` (or `file_error` if reading failed part-way; matches in the part read
/// before the failure have been reported).
pub trait Sink {
    /// A match of rule `rule` (an index into [`Compiled::names`]) ending at byte `end`.
    fn matched(&mut self, path: &Path, end: u64, rule: u32);
    /// A file was scanned to its end.
    fn file_done(&mut self, path: &Path, bytes: u64);
    /// A file could not be (fully) read or scanned.
    fn file_error(&mut self, error: &FileError);
    /// Totals so far, after each window.
    fn progress(&mut self, _bytes: u64, _files: u64) {}
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
struct FileMeta {
    path: PathBuf,
    seq: u64,
}

#[derive(Debug)]
struct Chunk {
    file: Arc<FileMeta>,
    /// File offset of the window's own bytes (`data[prefix..]`).
    at: u64,
    /// `prefix` bytes of the file before `at`, then the window's bytes.
    data: Vec<u8>,
    prefix: usize,
    /// The byte before the prefix, if the prefix does not start the file.
    before: Option<u8>,
    last: bool,
}

#[derive(Debug)]
enum Item {
    Chunk(Chunk),
    Error(Arc<FileMeta>, String),
}

/// Scans `paths` with `rules` on `mk`'s backend, reporting to `sink`.
pub fn scan(
    mk: &Megakernel,
    rules: &Compiled,
    paths: &[PathBuf],
    opts: &ScanOptions,
    sink: &mut dyn Sink,
) -> Result<Summary, ScanError> {
    if opts.window == 0 || opts.window > (1 << 30) || opts.in_flight == 0 {
        return Err(ScanError::Options(format!(
            "window must be 1..=1 GiB and in_flight ≥ 1 (got window {} and in_flight {})",
            opts.window, opts.in_flight
        )));
    }
    let start = Instant::now();
    let overlap = rules
        .groups
        .iter()
        .filter_map(|g| g.max_len)
        .max()
        .unwrap_or(0) as usize;
    let (path_tx, path_rx) = sync_channel::<Result<PathBuf, FileError>>(1024);
    let (item_tx, item_rx) = sync_channel::<Item>(opts.in_flight.max(2));
    let walk = {
        let paths = paths.to_vec();
        let w = opts.walk.clone();
        thread::Builder::new()
            .name("vyre-scan-walk".into())
            .spawn(move || walk_paths(&paths, &w, &path_tx))
            .expect("spawn walker")
    };
    let read = {
        let window = opts.window;
        thread::Builder::new()
            .name("vyre-scan-read".into())
            .spawn(move || read_files(path_rx, item_tx, window, overlap))
            .expect("spawn reader")
    };
    let mut driver = Driver::new(mk, rules, opts, overlap)?;
    let result = driver.run(item_rx, sink);
    // On error the receivers are gone and the threads stop at their next send.
    let _ = read.join();
    let _ = walk.join();
    let mut summary = result?;
    summary.seconds = start.elapsed().as_secs_f64();
    Ok(summary)
}

fn walk_paths(paths: &[PathBuf], opts: &WalkOptions, tx: &SyncSender<Result<PathBuf, FileError>>) {
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
        .require_git(false)
        .follow_links(opts.follow)
        .sort_by_file_path(|a, b| a.cmp(b));
    for entry in b.build() {
        let item = match entry {
            Ok(e) if e.file_type().is_some_and(|t| t.is_file()) => Ok(e.into_path()),
            Ok(_) => continue,
            Err(e) => Err(walk_error(e)),
        };
        if tx.send(item).is_err() {
            return;
        }
    }
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

fn read_files(
    paths: Receiver<Result<PathBuf, FileError>>,
    tx: SyncSender<Item>,
    window: usize,
    overlap: usize,
) {
    for (seq, p) in paths.into_iter().enumerate() {
        let (path, r) = match p {
            Ok(path) => {
                let file = Arc::new(FileMeta {
                    path,
                    seq: seq as u64,
                });
                let r = read_one(&file, &tx, window, overlap);
                (file, r)
            }
            Err(e) => (
                Arc::new(FileMeta {
                    path: e.path,
                    seq: seq as u64,
                }),
                Err(io::Error::other(e.message)),
            ),
        };
        if let Err(e) = r {
            if tx.send(Item::Error(path, e.to_string())).is_err() {
                return;
            }
        }
    }
}

/// Reads one file as windows. A send failure (the driver stopped) ends quietly.
fn read_one(
    file: &Arc<FileMeta>,
    tx: &SyncSender<Item>,
    window: usize,
    overlap: usize,
) -> io::Result<()> {
    let mut f = File::open(&file.path)?;
    // The last `overlap + 1` bytes read so far.
    let mut tail: Vec<u8> = Vec::with_capacity(overlap + 1);
    let mut at = 0u64;
    loop {
        let prefix = tail.len().min(overlap);
        let before = (tail.len() > prefix).then(|| tail[tail.len() - prefix - 1]);
        let mut data = Vec::with_capacity(prefix + window);
        data.extend_from_slice(&tail[tail.len() - prefix..]);
        let n = read_full(&mut f, &mut data, window)?;
        let last = n < window;
        let keep = (overlap + 1).min(data.len());
        tail.clear();
        tail.extend_from_slice(&data[data.len() - keep..]);
        let chunk = Chunk {
            file: file.clone(),
            at,
            data,
            prefix,
            before,
            last,
        };
        if tx.send(Item::Chunk(chunk)).is_err() {
            return Ok(());
        }
        at += n as u64;
        if last {
            return Ok(());
        }
    }
}

/// Appends up to `want` bytes; fewer only at the end of the file.
fn read_full(f: &mut File, out: &mut Vec<u8>, want: usize) -> io::Result<usize> {
    let start = out.len();
    out.resize(start + want, 0);
    let mut got = 0;
    while got < want {
        match f.read(&mut out[start + got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                out.truncate(start + got);
                return Err(e);
            }
        }
    }
    out.truncate(start + got);
    Ok(got)
}

/// One pooled pair of backend buffers.
#[derive(Debug, Clone, Copy)]
struct Buffers {
    data: u32,
    hits: u32,
}

/// A window whose slots are in flight.
#[derive(Debug)]
struct Window {
    chunk: Chunk,
    bufs: Buffers,
    /// Per group: the slot as published (for a rescan) and its ticket; `None` while an
    /// unbounded group's slot waits for the previous window's state.
    slots: Vec<Option<(Slot, Ticket)>>,
}

/// The state an unbounded group's next window starts from, per file in flight.
#[derive(Debug)]
enum Carry {
    /// The previous window is in flight.
    Pending,
    /// The previous window ended in these rows (indexed like `Driver::unbounded`).
    Known(Vec<u32>),
}

struct Driver<'a> {
    mk: &'a Megakernel,
    rules: &'a Compiled,
    tables: Vec<u32>,
    /// Indices of the unbounded groups.
    unbounded: Vec<usize>,
    free: Vec<Buffers>,
    fifo: VecDeque<Window>,
    carry: HashMap<u64, Carry>,
    /// Files whose scan faulted: their later windows report nothing.
    failed: HashSet<u64>,
    region: u64,
    overflow: Option<(u32, u32)>,
    summary: Summary,
}

impl<'a> Driver<'a> {
    fn new(
        mk: &'a Megakernel,
        rules: &'a Compiled,
        opts: &ScanOptions,
        overlap: usize,
    ) -> Result<Driver<'a>, ScanError> {
        let mut tables = Vec::with_capacity(rules.groups.len());
        for g in &rules.groups {
            let bytes: Vec<u8> = g.table.iter().flat_map(|w| w.to_le_bytes()).collect();
            tables.push(mk.create_buffer_with(bytes.len() as u64, &bytes)?);
        }
        let region = HIT_HEADER_BYTES + 8 * u64::from(opts.hit_capacity);
        let mut header = Vec::with_capacity((region as usize) * rules.groups.len());
        for _ in &rules.groups {
            let mut r = vec![0u8; region as usize];
            r[..4].copy_from_slice(&opts.hit_capacity.to_le_bytes());
            header.extend_from_slice(&r);
        }
        let data_size = (overlap + opts.window).next_multiple_of(4) as u64;
        let mut free = Vec::with_capacity(opts.in_flight);
        for _ in 0..opts.in_flight {
            let data = mk.create_buffer(data_size)?;
            let hits = mk.create_buffer_with(header.len().max(4) as u64, &header)?;
            free.push(Buffers { data, hits });
        }
        let unbounded = (0..rules.groups.len())
            .filter(|&g| rules.groups[g].max_len.is_none())
            .collect();
        Ok(Driver {
            mk,
            rules,
            tables,
            unbounded,
            free,
            fifo: VecDeque::new(),
            carry: HashMap::new(),
            failed: HashSet::new(),
            region,
            overflow: None,
            summary: Summary::default(),
        })
    }

    fn run(&mut self, items: Receiver<Item>, sink: &mut dyn Sink) -> Result<Summary, ScanError> {
        loop {
            // Finish windows that are done, and the oldest when no buffer is free.
            while let Some(w) = self.fifo.front() {
                let done = self.free.is_empty() || self.finished(w);
                if !done {
                    break;
                }
                self.complete_oldest(sink)?;
            }
            let item = if self.fifo.is_empty() {
                match items.recv() {
                    Ok(i) => i,
                    Err(_) => break,
                }
            } else {
                match items.recv_timeout(Duration::from_micros(200)) {
                    Ok(i) => i,
                    Err(RecvTimeoutError::Timeout) => {
                        self.complete_oldest(sink)?;
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            };
            match item {
                Item::Chunk(c) => self.start(c)?,
                Item::Error(file, message) => {
                    // Earlier windows of this file are ahead in the FIFO: finish them first
                    // so the file's matches come before its error.
                    while self.fifo.iter().any(|w| w.chunk.file.seq == file.seq) {
                        self.complete_oldest(sink)?;
                    }
                    self.carry.remove(&file.seq);
                    self.summary.file_errors += 1;
                    sink.file_error(&FileError {
                        path: file.path.clone(),
                        message,
                    });
                }
            }
        }
        while !self.fifo.is_empty() {
            self.complete_oldest(sink)?;
        }
        Ok(self.summary.clone())
    }

    fn finished(&self, w: &Window) -> bool {
        w.slots.iter().all(|s| match s {
            Some((_, t)) => self.mk.is_finished(*t),
            None => false,
        })
    }

    /// Publishes a window's slots.
    fn start(&mut self, c: Chunk) -> Result<(), ScanError> {
        let bufs = self
            .free
            .pop()
            .expect("a free buffer (the FIFO drains first)");
        self.mk.write_buffer(bufs.data, 0, &c.data)?;
        let n = (c.data.len() - c.prefix) as u32;
        let eoi = if c.last { REPORT_EOI } else { 0 };
        let seq = c.file.seq;
        let first = c.at == 0;
        let mut slots: Vec<Option<Slot>> = Vec::with_capacity(self.rules.groups.len());
        for (g, group) in self.rules.groups.iter().enumerate() {
            let hits_off = (g as u64 * self.region) as u32;
            let slot = match group.max_len {
                Some(l) => {
                    let t = (l as usize).min(c.prefix);
                    let p = c.prefix - t;
                    let code = if c.at - t as u64 == 0 {
                        START_TEXT as u32
                    } else if p > 0 {
                        u32::from(c.data[p - 1])
                    } else {
                        u32::from(c.before.expect("a byte before a prefix that is not at 0"))
                    };
                    Some(scan_slot(
                        self.tables[g],
                        bufs,
                        p as u32,
                        t as u32 + n,
                        t as u32 | eoi,
                        START_LOOKBEHIND | code,
                        hits_off,
                    ))
                }
                None => {
                    let start = if first {
                        Some(START_LOOKBEHIND | START_TEXT as u32)
                    } else {
                        match self.carry.get(&seq) {
                            Some(Carry::Known(rows)) => {
                                let k = self.unbounded.iter().position(|&u| u == g).unwrap();
                                Some(rows[k])
                            }
                            _ => None,
                        }
                    };
                    start.map(|s| {
                        scan_slot(self.tables[g], bufs, c.prefix as u32, n, eoi, s, hits_off)
                    })
                }
            };
            slots.push(slot);
        }
        if !self.unbounded.is_empty() {
            if c.last {
                self.carry.remove(&seq);
            } else {
                self.carry.insert(seq, Carry::Pending);
            }
        }
        let ready: Vec<Slot> = slots.iter().flatten().copied().collect();
        let tickets = self.mk.publish_batch(&ready)?;
        let mut t = tickets.start;
        let slots = slots
            .into_iter()
            .map(|s| {
                s.map(|s| {
                    t += 1;
                    (s, t - 1)
                })
            })
            .collect();
        self.fifo.push_back(Window {
            chunk: c,
            bufs,
            slots,
        });
        Ok(())
    }

    /// Waits for the oldest window, reports its hits and frees its buffers.
    fn complete_oldest(&mut self, sink: &mut dyn Sink) -> Result<(), ScanError> {
        let Some(w) = self.fifo.pop_front() else {
            return Ok(());
        };
        let mut hits: Vec<(u64, u32)> = Vec::new();
        let mut rows = Vec::with_capacity(self.unbounded.len());
        let mut fault = None;
        for (g, s) in w.slots.iter().enumerate() {
            let (slot, ticket) = s.expect("published when its predecessor completed");
            let group = &self.rules.groups[g];
            let r = match self.mk.wait(ticket)?.outcome {
                Outcome::Done(r) => r,
                Outcome::Fault(f) => {
                    fault = Some(format!(
                        "DFA_SCAN of rule group {g} faulted with {} (detail {}); this is a \
                         bug in vyre, please report it with the rule file",
                        f.code.name(),
                        f.detail
                    ));
                    continue;
                }
            };
            if group.max_len.is_none() {
                rows.push(r[1]);
            }
            let base = w.chunk.at - (w.chunk.prefix as u64 - u64::from(slot.args[2]));
            if r[0] > r[2] {
                self.rescan(slot, r[0], group, base, &mut hits)?;
            } else if r[2] > 0 {
                let off = u64::from(slot.args[7]) + HIT_HEADER_BYTES;
                let bytes = self.mk.read_buffer(w.bufs.hits, off, 8 * u64::from(r[2]))?;
                push_hits(&bytes, group, base, &mut hits);
            }
        }
        // Let the file's next window start its unbounded groups from where this one ended.
        if !self.unbounded.is_empty() && !w.chunk.last {
            let seq = w.chunk.file.seq;
            if let Some(next) = self
                .fifo
                .iter_mut()
                .find(|n| n.chunk.file.seq == seq && n.slots.iter().any(Option::is_none))
            {
                let mut ready = Vec::new();
                for (k, &g) in self.unbounded.iter().enumerate() {
                    let mut s = scan_slot(
                        self.tables[g],
                        next.bufs,
                        next.chunk.prefix as u32,
                        (next.chunk.data.len() - next.chunk.prefix) as u32,
                        if next.chunk.last { REPORT_EOI } else { 0 },
                        rows.get(k).copied().unwrap_or(0),
                        (g as u64 * self.region) as u32,
                    );
                    if rows.len() != self.unbounded.len() {
                        // The state is unknown after a fault; scanning on would be wrong.
                        s = Slot::new(SlotOp::Nop, &[]);
                    }
                    ready.push((g, s));
                }
                let slots: Vec<Slot> = ready.iter().map(|(_, s)| *s).collect();
                let tickets: Range<Ticket> = self.mk.publish_batch(&slots)?;
                for ((g, s), t) in ready.into_iter().zip(tickets) {
                    next.slots[g] = Some((s, t));
                }
            } else {
                self.carry.insert(seq, Carry::Known(rows));
            }
        }
        let seq = w.chunk.file.seq;
        if self.failed.contains(&seq) {
            hits.clear();
        }
        hits.sort_unstable();
        let path = &w.chunk.file.path;
        for &(end, rule) in &hits {
            sink.matched(path, end, rule);
        }
        self.summary.matches += hits.len() as u64;
        self.summary.bytes += (w.chunk.data.len() - w.chunk.prefix) as u64;
        if let Some(message) = fault {
            self.failed.insert(seq);
            self.summary.file_errors += 1;
            sink.file_error(&FileError {
                path: path.clone(),
                message,
            });
        } else if w.chunk.last && !self.failed.contains(&seq) {
            self.summary.files += 1;
            sink.file_done(
                path,
                w.chunk.at + (w.chunk.data.len() - w.chunk.prefix) as u64,
            );
        }
        if w.chunk.last {
            self.failed.remove(&seq);
        }
        sink.progress(self.summary.bytes, self.summary.files);
        self.free.push(w.bufs);
        Ok(())
    }

    /// Runs a slot again with a hit region of exactly `found` hits.
    fn rescan(
        &mut self,
        slot: Slot,
        found: u32,
        group: &Group,
        base: u64,
        hits: &mut Vec<(u64, u32)>,
    ) -> Result<(), ScanError> {
        let need = HIT_HEADER_BYTES + 8 * u64::from(found);
        let handle = match self.overflow {
            Some((h, cap)) if cap >= found => h,
            _ => {
                // Grows geometrically; the runtime has no way to free a buffer.
                let cap = found.max(self.overflow.map_or(0, |o| o.1 * 2));
                let h = self
                    .mk
                    .create_buffer(HIT_HEADER_BYTES + 8 * u64::from(cap))?;
                self.overflow = Some((h, cap));
                h
            }
        };
        self.mk.write_buffer(handle, 0, &found.to_le_bytes())?;
        let mut again = slot;
        again.args[6] = handle;
        again.args[7] = 0;
        let c = self.mk.wait(self.mk.publish(again)?)?;
        match c.outcome {
            Outcome::Done(r) if r[2] == found => {
                let bytes =
                    self.mk
                        .read_buffer(handle, HIT_HEADER_BYTES, need - HIT_HEADER_BYTES)?;
                push_hits(&bytes, group, base, hits);
                Ok(())
            }
            other => Err(ScanError::Options(format!(
                "a rescan with room for {found} hits did not store them all ({other:?})"
            ))),
        }
    }
}

fn scan_slot(
    table: u32,
    bufs: Buffers,
    off: u32,
    len: u32,
    report: u32,
    start: u32,
    hits_off: u32,
) -> Slot {
    Slot::new(
        SlotOp::DfaScan,
        &[
            table, bufs.data, off, len, report, start, bufs.hits, hits_off,
        ],
    )
}

fn push_hits(bytes: &[u8], group: &Group, base: u64, out: &mut Vec<(u64, u32)>) {
    for pair in bytes.chunks_exact(8) {
        let end = u32::from_le_bytes(pair[..4].try_into().unwrap());
        let pattern = u32::from_le_bytes(pair[4..].try_into().unwrap());
        out.push((base + u64::from(end), group.rules[pattern as usize]));
    }
}
