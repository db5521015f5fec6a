//! The driver: packs segments into batches, publishes their DFA_SCAN slots, completes
//! batches in FIFO order and sends their hits to the sink's thread. See the module docs of
//! `pipeline`.

use super::read::{Pack, PackPool, Piece};
use super::{
    FileError, FileMeta, Item, Report, Reports, Run, ScanError, ScanOptions, Summary,
    SPECULATE_LOOK_BEHIND,
};
use crate::compile::Compiled;
use crate::scan::{scan_slice, Start};
use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use vyre_isa::dfa::{HIT_HEADER_BYTES, REPORT_EOI, START_LOOKBEHIND, START_TEXT};
use vyre_isa::{Slot, SlotOp};
use vyre_runtime::{Megakernel, Outcome, Staging, Ticket};

/// Extra windows a batch may hold beyond `batch / window`: each small file adds one.
const SMALL_FILE_WINDOWS: usize = 1024;

/// Hit regions in host memory hold one hit per this many bytes a slot scans (at least
/// `hit_capacity`), unless that would take more than [`HOST_HITS_MAX_BYTES`]: a region too
/// small for its slot's hits costs a rescan of the slot.
const HIT_BYTES: u64 = 16;

/// All batches' hit regions in host memory together stay under this, which bounds the
/// page-locked memory a scan takes on cuda: where one hit per [`HIT_BYTES`] would need more
/// (many rule groups: one slot per group per window), regions get proportionally fewer hits
/// per byte (see [`HostHits`]). Hit regions in device memory are read back whole, up to the
/// last with hits: the 20 secret regexes (10 groups) went there at 8 KiB windows and their
/// batches read 60 MB each, 1.7 s of a 2.4 s pass on an H100 (bench/results/scan-h100.md).
const HOST_HITS_MAX_BYTES: u64 = 512 << 20;

/// The sizing of a batch's hit regions in host memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HostHits {
    /// One hit per this many bytes a slot scans,
    bytes_per_hit: u64,
    /// and at least this many hits per region (with `fixed`, exactly this many).
    min_hits: u32,
    /// Bytes of one batch's hit buffer.
    bytes: u64,
    /// Every region has `min_hits` hits at a fixed place (the slot's index times
    /// [`HostHits::region`]) and its capacity header is written once, when the buffer is
    /// made ([`ScanOptions::fixed_hit_regions`]). Otherwise regions are sized by what each
    /// slot scans and laid out back to back, and every batch writes their headers.
    fixed: bool,
}

impl HostHits {
    /// Regions of one hit count for every slot (see `fixed`): as many hits as a slot that
    /// scans `scan_max` bytes needs at one hit per [`HIT_BYTES`], or fewer where `slots`
    /// such regions in each of `in_flight` buffers would pass `budget`; `None` if that
    /// leaves fewer than 8 hits per region.
    fn fixed(
        slots: u64,
        scan_max: u64,
        hit_capacity: u32,
        in_flight: u64,
        budget: u64,
    ) -> Option<HostHits> {
        let natural = scan_max
            .div_ceil(HIT_BYTES)
            .max(u64::from(hit_capacity.max(1)));
        let room = budget / in_flight.max(1) / slots.max(1);
        let hits = (room.saturating_sub(HIT_HEADER_BYTES) / 8).min(natural);
        (hits >= 8).then(|| HostHits {
            bytes_per_hit: HIT_BYTES,
            min_hits: hits as u32,
            bytes: slots * (HIT_HEADER_BYTES + 8 * hits),
            fixed: true,
        })
    }

    /// Bytes of one region of a fixed layout.
    fn region(&self) -> u64 {
        HIT_HEADER_BYTES + 8 * u64::from(self.min_hits)
    }

    /// Whether every batch writes its regions' capacity headers (`hits`: the driver's
    /// sizing; `None`: device regions, whose headers are written once).
    fn per_batch_headers(hits: Option<HostHits>) -> bool {
        hits.is_some_and(|h| !h.fixed)
    }

    /// The densest sizing (from one hit per [`HIT_BYTES`] and `hit_capacity`, halving both)
    /// whose `in_flight` buffers fit in `budget`, for batches of at most `slots` slots that
    /// scan at most `scanned` bytes together; `None` if even one hit per 4 KiB (and
    /// `hit_capacity` halved as often, to no fewer than 8 hits per region) does not.
    fn fit(
        slots: u64,
        scanned: u64,
        hit_capacity: u32,
        in_flight: u64,
        budget: u64,
    ) -> Option<HostHits> {
        let (mut bytes_per_hit, mut min_hits) = (HIT_BYTES, u64::from(hit_capacity.max(1)));
        loop {
            let bytes =
                slots * (HIT_HEADER_BYTES + 8 * min_hits + 8) + 8 * (scanned / bytes_per_hit + 1);
            if bytes * in_flight <= budget {
                return Some(HostHits {
                    bytes_per_hit,
                    min_hits: min_hits as u32,
                    bytes,
                    fixed: false,
                });
            }
            if bytes_per_hit >= 4096 {
                return None;
            }
            bytes_per_hit *= 2;
            min_hits = (min_hits / 2).max(8);
        }
    }
}

/// One pooled pair of backend buffers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Buffers {
    data: u32,
    hits: u32,
}

/// A segment of a file placed in a batch.
#[derive(Debug)]
struct Segment {
    file: Arc<FileMeta>,
    /// `file.seq` ([`Piece::seq`]): planning and completing a segment neither read the
    /// `FileMeta` a walk thread made nor count references to it (it moves from the piece to
    /// the segment to the report; only a file's error reads its path);
    /// reading it for every completed segment and cloning it were a cache miss each, the
    /// largest part of the driver's completion time in a profile.
    seq: u64,
    /// File offset of the segment's own bytes.
    at: u64,
    prefix: usize,
    /// Own bytes.
    len: usize,
    last: bool,
    /// Batch offset of the segment's first (prefix) byte.
    base: usize,
    /// Hits found by the walk thread (unbounded groups scanned on the host).
    hits: Vec<(u64, u32)>,
    /// Hits in the completed batch's hit bytes, decoded by the sink's thread.
    runs: Vec<Run>,
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// An unbounded group's slot waiting for the state the previous segment ended in.
    Waiting,
    /// Complete, to be published when the batch is.
    Ready,
    Published(Ticket),
}

#[derive(Debug)]
struct Planned {
    slot: Slot,
    /// Its hit region's capacity (written into the region's header when it is published,
    /// for regions in host memory).
    hit_cap: u32,
    group: usize,
    segment: usize,
    state: State,
    /// A window of a speculated unbounded group that starts from the start state after
    /// the file's first byte: checked against the state its predecessor ended in.
    speculative: bool,
}

/// Bytes of the pack being placed that are not yet copied into the batch: consecutive
/// pieces of a pack lie back to back in both, so they go in with one write.
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// Pack offset.
    from: usize,
    /// Batch offset.
    to: usize,
    len: usize,
}

#[derive(Debug)]
struct Batch {
    bufs: Buffers,
    /// Bytes of the data buffer used so far.
    used: usize,
    /// Bytes of the hit buffer given to slots so far (regions in host memory).
    hit_used: u64,
    pending: Option<Pending>,
    segments: Vec<Segment>,
    slots: Vec<Planned>,
    /// How many of `slots` are published, and the highest ticket among them (completions
    /// are reaped in ticket order, so the batch is done when that one is).
    published: usize,
    last: Option<Ticket>,
    flushed: bool,
}

/// Where an unbounded group's next segment starts, per file in flight.
#[derive(Debug)]
enum Carry {
    /// The previous segment is in flight.
    Pending,
    /// The previous segment ended in these rows (indexed like `Driver::unbounded`).
    Known(Vec<u32>),
    /// A scan of the file faulted: its later segments run no unbounded slots.
    Failed,
}

pub(crate) struct Driver<'a> {
    mk: &'a Megakernel,
    rules: &'a Compiled,
    opts: ScanOptions,
    tables: Vec<u32>,
    unbounded: Vec<usize>,
    bounded: Vec<usize>,
    /// Unbounded groups scanned in speculative windows (`ScanOptions::speculate_unbounded`).
    spec: Vec<usize>,
    /// Per (file, speculated group): the state the file's last checked window ended in.
    spec_state: HashMap<(u64, usize), u32>,
    free: Vec<Buffers>,
    /// Completed batches' slot and segment vectors, emptied, for the next batches: a batch
    /// holds a few thousand slots, and growing new vectors for each batch (fresh pages from
    /// the allocator) took a tenth of the driver thread's time in a profile.
    vectors: Vec<(Vec<Planned>, Vec<Segment>)>,
    /// What the set-up thread sends (None once it is done).
    ready: Option<Receiver<Result<Ready, ScanError>>>,
    /// The tables' contents are uploaded: slots may be published.
    tables_ready: bool,
    /// Batch buffer pairs the set-up thread has still to send.
    spare: usize,
    packs: Arc<PackPool>,
    /// Packs whose copies into the device may still be running: given back to the pool at
    /// the next flush, after `wait_copies`.
    held: Vec<Box<dyn Staging>>,
    fifo: VecDeque<Batch>,
    current: Option<Batch>,
    carry: HashMap<u64, Carry>,
    /// Files whose scan faulted: the rest of them reports nothing.
    failed: HashSet<u64>,
    max_slots: usize,
    overflow: Option<Overflow>,
    summary: Summary,
    /// Bytes and files of `summary` already in progress reports.
    progressed: (u64, u64),
    stages: Stages,
    /// Tells the set-up thread to make no more pairs (the scan is over).
    set_up_stop: Arc<AtomicBool>,
    /// This driver's place among the scan's drivers: (index, how many).
    place: (usize, usize),
    /// The batch buffers' layout as asked for, and as made (hit regions in device memory
    /// where the backend refused host memory): what [`Driver::finish`] leaves for reuse.
    /// The made layout's `host` says where hit regions are: in host memory
    /// (`create_host_buffer`), a batch's regions with hits are read in one call; otherwise
    /// in device memory, `region` bytes each, and one read covers every region up to the
    /// last with hits.
    layout: (Pairs, Pairs),
}

/// Where the driver thread's time went (logged at the end of a scan, at `info` level of
/// target `vyre_scan::stages`): the numbers that say whether the walk, the copies, the
/// device or the hits bound a scan.
#[derive(Debug, Default)]
struct Stages {
    /// Creating the tables' buffers and the first batch's (`Driver::new`).
    setup: Duration,
    /// Waiting for the set-up thread (tables uploaded, more batch buffers).
    setup_wait: Duration,
    /// Waiting for segments from the walk threads.
    recv: Duration,
    /// Planning slots and copying segments in (less flushes and completions it waits for).
    add: Duration,
    /// Of `add`: starting the copies of segments into batch buffers, and how many.
    copy: Duration,
    copies: u64,
    /// Copying gathered segments in and publishing slots.
    flush: Duration,
    /// Of `flush`: waiting for the copies to land.
    copy_wait: Duration,
    /// Publishing slots: writing hit regions' headers, and the ring (`publish_ready`).
    headers: Duration,
    ring: Duration,
    /// Waiting for batches to complete.
    wait: Duration,
    /// Reading hits back and sending them to the sink's thread.
    hits: Duration,
    segments: u64,
    batches: u64,
    /// Slots run again because their hit regions overflowed.
    rescans: u64,
    /// Of `hits`: running them again.
    rescan: Duration,
    /// Of `hits`: reading hits back.
    read: Duration,
    /// Speculative windows of unbounded groups checked, and scanned again on the host.
    spec_checked: u64,
    spec_rescans: u64,
    /// Of `hits`: scanning them again.
    spec_rescan: Duration,
}

impl<'a> Driver<'a> {
    /// A driver with one pair of batch buffers, and the set-up that uploads the tables'
    /// contents and creates the other pairs (run it on another thread: at 10,000 rules that
    /// is 170 MB of tables and 300 MB of page-locked hit regions, 0.2-0.3 s on an H100 host,
    /// which the driver spends planning and publishing the first batches instead). The
    /// driver publishes nothing before the tables are uploaded.
    pub(crate) fn new(
        mk: &'a Megakernel,
        rules: &'a Compiled,
        opts: &ScanOptions,
        packs: Arc<PackPool>,
        reuse: &Mutex<&mut super::ScanBuffers>,
        share: Share,
        opener: Option<GateOpener>,
    ) -> Result<(Driver<'a>, SetUp<'a>), ScanError> {
        let started = Instant::now();
        let Share {
            index,
            drivers,
            tables,
            gate,
        } = share;
        // Groups that run as slots (unbounded ones may be scanned by the walk threads).
        let speculate = opts.speculate_unbounded;
        let on_device = |g: &&crate::compile::Group| {
            g.max_len.is_some() || !opts.unbounded_on_host || speculate
        };
        let groups = rules.groups.iter().filter(on_device).count().max(1);
        let max_slots = groups * (opts.batch.div_ceil(opts.window) + SMALL_FILE_WINDOWS);
        let region = HIT_HEADER_BYTES + 8 * u64::from(opts.hit_capacity);
        // Regions in host memory are sized by what each slot scans and laid out back to
        // back; the bytes slots scan are at most each group's batch plus each window's
        // look-behind.
        let any_unbounded = rules.groups.iter().any(|g| g.max_len.is_none());
        let look_behind = rules
            .groups
            .iter()
            .filter_map(|g| g.max_len)
            .chain((speculate && any_unbounded).then_some(SPECULATE_LOOK_BEHIND))
            .max()
            .unwrap_or(0);
        let scanned = groups as u64 * opts.batch as u64 + max_slots as u64 * u64::from(look_behind);
        // The most one slot scans: a window and its look-behind, or a whole segment where
        // unbounded groups are chained on the device.
        let chained = any_unbounded && !speculate && !opts.unbounded_on_host;
        let scan_max = if chained {
            opts.segment.max(opts.window) as u64
        } else {
            (opts.window + look_behind as usize) as u64
        };
        // Every driver's batches in flight share the page-locked budget.
        let in_flight_all = (opts.in_flight * drivers) as u64;
        let host_hits = if opts.fixed_hit_regions {
            HostHits::fixed(
                max_slots as u64,
                scan_max,
                opts.hit_capacity,
                in_flight_all,
                HOST_HITS_MAX_BYTES,
            )
        } else {
            HostHits::fit(
                max_slots as u64,
                scanned,
                opts.hit_capacity,
                in_flight_all,
                HOST_HITS_MAX_BYTES,
            )
        };
        for (what, bytes) in [
            ("", max_slots as u64 * region),
            (" in host memory", host_hits.map_or(0, |h| h.bytes)),
        ] {
            if bytes > u64::from(u32::MAX) {
                return Err(ScanError::Options(format!(
                    "{} rule groups × {max_slots} slots per batch need {bytes} bytes of hit \
                     regions{what}, past DFA_SCAN's 32-bit offsets; use a larger --window or a \
                     smaller --batch",
                    rules.groups.len()
                )));
            }
        }
        let wanted = Pairs {
            data: opts.batch.next_multiple_of(4) as u64,
            host: host_hits,
            device_regions: max_slots,
            region,
            hit_capacity: opts.hit_capacity,
        };
        // Pairs an earlier scan on this backend left with the same layout, else a new one.
        let (mut pairs, mut free) = lock(reuse).take_pairs(&wanted, opts.in_flight);
        if free.is_empty() {
            let (first, in_host) = wanted.create(mk)?;
            if !in_host {
                // Every pair alike: the driver lays hit regions out one way.
                pairs.host = None;
            }
            free.push(first);
        }
        let spare = opts.in_flight - free.len();
        let (tx, ready) = sync_channel(opts.in_flight + 1);
        let stop = Arc::new(AtomicBool::new(false));
        let set_up = SetUp {
            mk,
            rules,
            tables: tables.clone(),
            opener,
            gate,
            pairs: pairs.clone(),
            count: spare,
            tx,
            stop: stop.clone(),
        };
        let (mut unbounded, bounded): (Vec<usize>, Vec<usize>) =
            (0..rules.groups.len()).partition(|&g| rules.groups[g].max_len.is_none());
        let mut spec = Vec::new();
        if speculate {
            spec = std::mem::take(&mut unbounded);
        } else if opts.unbounded_on_host {
            // The walk threads scan them and hand over their hits with each piece.
            unbounded.clear();
        }
        let driver = Driver {
            mk,
            rules,
            opts: opts.clone(),
            tables,
            unbounded,
            bounded,
            spec,
            spec_state: HashMap::new(),
            free,
            vectors: Vec::new(),
            ready: Some(ready),
            tables_ready: false,
            spare,
            set_up_stop: stop,
            layout: (wanted, pairs),
            packs,
            held: Vec::new(),
            fifo: VecDeque::new(),
            current: None,
            carry: HashMap::new(),
            failed: HashSet::new(),
            max_slots,
            overflow: lock(reuse).overflow.pop(),
            place: (index, drivers),
            summary: Summary::default(),
            progressed: (0, 0),
            stages: Stages {
                setup: started.elapsed(),
                ..Stages::default()
            },
        };
        Ok((driver, set_up))
    }

    /// Takes what the set-up thread has finished: with `block`, waits for at least one more
    /// piece of it.
    fn take_ready(&mut self, block: bool) -> Result<(), ScanError> {
        let t = Instant::now();
        let mut block = block;
        while let Some(rx) = &self.ready {
            let next = if block {
                rx.recv().map_err(|_| TryRecvError::Disconnected)
            } else {
                rx.try_recv()
            };
            match next {
                Ok(Ok(Ready::Tables)) => self.tables_ready = true,
                Ok(Ok(Ready::Buffers(b))) => {
                    self.free.push(b);
                    self.spare -= 1;
                }
                Ok(Err(e)) => return Err(e),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.ready = None;
                    if !self.tables_ready || self.spare > 0 {
                        return Err(ScanError::Options(
                            "the scan's set-up thread ended before its work was done (it \
                             panicked: see the message above)"
                                .into(),
                        ));
                    }
                }
            }
            block = false;
        }
        self.stages.setup_wait += t.elapsed();
        Ok(())
    }

    pub(crate) fn run(
        &mut self,
        items: Receiver<Item>,
        reports: &mut Reports<'_>,
    ) -> Result<Summary, ScanError> {
        loop {
            if reports.stopped() {
                break;
            }
            self.take_ready(false)?;
            while let Some(b) = self.fifo.front() {
                if (!self.free.is_empty() || self.spare > 0) && !self.finished(b) {
                    break;
                }
                self.complete_front(reports)?;
            }
            let idle = self.fifo.is_empty() && self.current.is_none();
            let waited = Instant::now();
            let item = if idle {
                match items.recv() {
                    Ok(i) => i,
                    Err(_) => break,
                }
            } else {
                match items.recv_timeout(Duration::from_micros(100)) {
                    Ok(i) => i,
                    Err(RecvTimeoutError::Timeout) => {
                        // The reader is slower than the device: send what we have.
                        if self.current.is_some() {
                            self.flush()?;
                        } else {
                            self.complete_front(reports)?;
                        }
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            };
            self.stages.recv += waited.elapsed();
            match item {
                Item::Pack(mut pack) => {
                    // Less the batches `add` flushes or completes to free a buffer, and its
                    // waits for the set-up thread (counted there).
                    let other = |st: &Stages| st.wait + st.hits + st.flush + st.setup_wait;
                    let (t, before) = (Instant::now(), other(&self.stages));
                    let pieces = std::mem::take(&mut pack.pieces);
                    let count = pieces.len() as u64;
                    for piece in pieces {
                        // A pack may hold hundreds of files: stop within it too.
                        if reports.stopped() {
                            break;
                        }
                        self.add(piece, &pack, reports)?;
                    }
                    if let Some(b) = self.current.as_mut() {
                        write_pending(self.mk, b, &pack, &mut self.stages)?;
                    }
                    self.held.push(pack.buf);
                    self.stages.add += t.elapsed() - (other(&self.stages) - before);
                    self.stages.segments += count;
                }
                Item::Error(file, message) => {
                    // The file's earlier segments come first, so its matches precede its
                    // error.
                    if self.current_has(file.seq) {
                        self.flush()?;
                    }
                    while self
                        .fifo
                        .iter()
                        .any(|b| b.segments.iter().any(|s| s.seq == file.seq))
                    {
                        self.complete_front(reports)?;
                    }
                    self.carry.remove(&file.seq);
                    for &g in &self.spec {
                        self.spec_state.remove(&(file.seq, g));
                    }
                    // A file whose scan faulted was reported then; say it once.
                    if !self.failed.remove(&file.seq) {
                        self.summary.file_errors += 1;
                        reports.push(Report::Error(
                            file.seq,
                            FileError {
                                path: file.path.clone(),
                                message,
                            },
                        ));
                        reports.send();
                    }
                }
            }
        }
        if self.current.is_some() {
            self.flush()?;
        }
        while !self.fifo.is_empty() {
            self.complete_front(reports)?;
        }
        let st = &self.stages;
        tracing::info!(
            target: "vyre_scan::stages",
            "driver thread {} of {}: set-up {:.3} s, waiting for the set-up thread {:.3} s, waiting for \
             segments {:.3} s, planning {} segments {:.3} s (of which starting {} copies {:.3} s), \
             publishing {} batches {:.3} s (of which waiting for copies {:.3} s, hit regions' \
             headers {:.3} s, the ring {:.3} s), waiting for \
             the device {:.3} s, \
             hits to the sink's thread {:.3} s ({} slots rescanned in {:.3} s, hits read in \
             {:.3} s; {} speculative windows checked, {} scanned again on the host in {:.3} s)",
            self.place.0 + 1,
            self.place.1,
            st.setup.as_secs_f64(),
            st.setup_wait.as_secs_f64(),
            st.recv.as_secs_f64(),
            st.segments,
            st.add.as_secs_f64(),
            st.copies,
            st.copy.as_secs_f64(),
            st.batches,
            st.flush.as_secs_f64(),
            st.copy_wait.as_secs_f64(),
            st.headers.as_secs_f64(),
            st.ring.as_secs_f64(),
            st.wait.as_secs_f64(),
            st.hits.as_secs_f64(),
            st.rescans,
            st.rescan.as_secs_f64(),
            st.read.as_secs_f64(),
            st.spec_checked,
            st.spec_rescans,
            st.spec_rescan.as_secs_f64()
        );
        Ok(self.summary.clone())
    }

    /// The scan is over: the set-up thread makes no more batch buffer pairs (it finishes
    /// the one it is making).
    pub(crate) fn stop_set_up(&self) {
        self.set_up_stop.store(true, Ordering::Relaxed);
    }

    /// After a scan that completed every batch and a set-up thread that has ended: every
    /// batch buffer pair, table buffer and the overflow buffer into `reuse`, for the next
    /// scan on this backend. An error of the set-up thread (its results were not needed)
    /// leaves nothing.
    pub(crate) fn finish(mut self, reuse: &mut super::ScanBuffers) {
        if !self.fifo.is_empty() || self.current.is_some() {
            return;
        }
        // What the set-up thread sent before it ended (after a stop, fewer pairs than asked).
        if let Some(rx) = self.ready.take() {
            for r in rx.try_iter() {
                match r {
                    Ok(Ready::Buffers(b)) => self.free.push(b),
                    Ok(Ready::Tables) => {}
                    Err(_) => return,
                }
            }
        }
        reuse.put_pairs(self.layout, self.free);
        reuse.overflow.extend(self.overflow);
    }

    /// The hit regions' sizing in host memory; `None`: regions in device memory.
    fn host_hits(&self) -> Option<HostHits> {
        self.layout.1.host
    }

    fn current_has(&self, seq: u64) -> bool {
        self.current
            .as_ref()
            .is_some_and(|b| b.segments.iter().any(|s| s.seq == seq))
    }

    /// Whether every slot of `b` has completed: completions are reaped in ticket order, so
    /// the batch is done when all its slots are published and its highest ticket is. (One
    /// check, not one per slot: this runs for every segment the readers deliver.)
    fn finished(&self, b: &Batch) -> bool {
        b.published == b.slots.len() && b.last.is_none_or(|t| self.mk.is_finished(t))
    }

    /// Windows of a segment's own bytes (at least one, for the end-of-input transition).
    fn windows(&self, len: usize) -> usize {
        len.div_ceil(self.opts.window).max(1)
    }

    /// Adds a segment to the current batch, flushing first when it does not fit.
    fn add(&mut self, c: Piece, pack: &Pack, reports: &mut Reports<'_>) -> Result<(), ScanError> {
        let seq = c.seq;
        let data = c.data(pack);
        let need_slots = (self.bounded.len() + self.spec.len())
            * self.windows(data.len() - c.prefix)
            + self.unbounded.len();
        let fits = self.current.as_ref().is_some_and(|b| {
            b.used + data.len() <= self.opts.batch && b.slots.len() + need_slots <= self.max_slots
        });
        // A segment whose unbounded groups continue from a segment in this same batch must
        // go into a later batch: it can start only after that one has completed.
        let chained = !self.unbounded.is_empty() && c.at > 0 && self.current_has(seq);
        if self.current.is_some() && (!fits || chained) {
            write_pending(
                self.mk,
                self.current.as_mut().expect("a current batch"),
                pack,
                &mut self.stages,
            )?;
            self.flush()?;
        }
        if self.current.is_none() {
            if self.free.is_empty() {
                self.take_ready(false)?;
            }
            if self.free.is_empty() {
                let front_done = self.fifo.front().is_some_and(|b| self.finished(b));
                if self.spare > 0 && !front_done {
                    self.take_ready(true)?;
                } else {
                    self.complete_front(reports)?;
                }
            }
            let bufs = self.free.pop().expect("a free batch after completing");
            let (slots, segments) = self.vectors.pop().unwrap_or_default();
            self.current = Some(Batch {
                bufs,
                used: 0,
                hit_used: 0,
                pending: None,
                segments,
                slots,
                published: 0,
                last: None,
                flushed: false,
            });
        }
        let failed =
            self.failed.contains(&seq) || matches!(self.carry.get(&seq), Some(Carry::Failed));
        let rows = if c.at == 0 {
            Some(vec![
                START_LOOKBEHIND | START_TEXT as u32;
                self.unbounded.len()
            ])
        } else {
            match self.carry.get(&seq) {
                Some(Carry::Known(rows)) => Some(rows.clone()),
                _ => None,
            }
        };
        if !self.unbounded.is_empty() {
            if c.last {
                self.carry.remove(&seq);
            } else if failed {
                self.carry.insert(seq, Carry::Failed);
            } else {
                self.carry.insert(seq, Carry::Pending);
            }
        }
        let b = self.current.as_mut().expect("a current batch");
        let base = b.used;
        let n = data.len() - c.prefix;
        let segment = b.segments.len();
        // Into the batch's buffer (its slots are published only at the flush), with the
        // pack's next pieces in the same write where they follow on; no slot reads it when
        // every group is scanned on the host.
        match &mut b.pending {
            _ if self.bounded.is_empty() && self.unbounded.is_empty() && self.spec.is_empty() => {}
            Some(p) if p.from + p.len == c.start && p.to + p.len == base => p.len += data.len(),
            _ => {
                write_pending(self.mk, b, pack, &mut self.stages)?;
                b.pending = Some(Pending {
                    from: c.start,
                    to: base,
                    len: data.len(),
                });
            }
        }
        b.used += data.len();
        let (host, region, hc) = (
            self.layout.1.host,
            self.layout.1.region,
            self.opts.hit_capacity,
        );
        // Bounded groups, and speculated unbounded ones: one slot per window.
        let windows = n.div_ceil(self.opts.window).max(1);
        let spec_from = self.bounded.len();
        for w in 0..windows {
            let own = c.prefix + w * self.opts.window;
            let end = (own + self.opts.window).min(data.len());
            let eoi = if c.last && w + 1 == windows {
                REPORT_EOI
            } else {
                0
            };
            for (k, &g) in self.bounded.iter().chain(&self.spec).enumerate() {
                let l = self.rules.groups[g]
                    .max_len
                    .unwrap_or(SPECULATE_LOOK_BEHIND) as usize;
                let t = l.min(own);
                let from = own - t;
                let at_text_start = c.at - c.prefix as u64 + from as u64 == 0;
                let code = if at_text_start {
                    START_TEXT as u32
                } else if from > 0 {
                    u32::from(data[from - 1])
                } else {
                    u32::from(c.before.expect("a byte before a prefix that is not at 0"))
                };
                let (hits_at, hit_cap) = place_hits(b, host, region, hc, end - from);
                let slot = dfa_slot(
                    self.tables[g],
                    b.bufs,
                    (base + from) as u32,
                    (end - from) as u32,
                    t as u32 | eoi,
                    START_LOOKBEHIND | code,
                    hits_at,
                );
                b.slots.push(Planned {
                    slot,
                    hit_cap,
                    group: g,
                    segment,
                    state: State::Ready,
                    speculative: k >= spec_from && !at_text_start,
                });
            }
        }
        // Unbounded groups: one slot per segment, from the carried state.
        for (k, &g) in self.unbounded.iter().enumerate() {
            let eoi = if c.last { REPORT_EOI } else { 0 };
            let start = rows.as_ref().map_or(0, |r| r[k]);
            let (hits_at, hit_cap) = place_hits(b, host, region, hc, n);
            let slot = dfa_slot(
                self.tables[g],
                b.bufs,
                (base + c.prefix) as u32,
                n as u32,
                eoi,
                start,
                hits_at,
            );
            // After a fault in this file the state is unknown: keep the slot harmless (the
            // file's results are dropped and its error already reported).
            let (slot, state) = if failed {
                (Slot::new(SlotOp::Nop, &[]), State::Ready)
            } else if rows.is_some() {
                (slot, State::Ready)
            } else {
                (slot, State::Waiting)
            };
            b.slots.push(Planned {
                slot,
                hit_cap,
                group: g,
                segment,
                state,
                speculative: false,
            });
        }
        b.segments.push(Segment {
            seq,
            file: c.file,
            at: c.at,
            prefix: c.prefix,
            len: n,
            last: c.last,
            base,
            hits: c.hits,
            runs: Vec::new(),
        });
        Ok(())
    }

    /// Copies the current batch in and publishes its ready slots.
    fn flush(&mut self) -> Result<(), ScanError> {
        let Some(mut b) = self.current.take() else {
            return Ok(());
        };
        let (t, setup_wait) = (Instant::now(), self.stages.setup_wait);
        debug_assert!(
            b.pending.is_none(),
            "a pack's bytes are written before a flush"
        );
        // The batch's copies land before its slots can read them, and the packs they came
        // from can be filled again.
        let copies = Instant::now();
        self.mk.wait_copies()?;
        self.stages.copy_wait += copies.elapsed();
        for buf in self.held.drain(..) {
            self.packs.give(buf);
        }
        while !self.tables_ready {
            self.take_ready(true)?;
        }
        b.flushed = true;
        let headers = HostHits::per_batch_headers(self.host_hits());
        publish_ready(self.mk, &mut b, headers, &mut self.stages)?;
        self.fifo.push_back(b);
        // Less waiting for the tables (counted there).
        self.stages.flush += t.elapsed() - (self.stages.setup_wait - setup_wait);
        self.stages.batches += 1;
        Ok(())
    }

    /// Waits for the oldest batch, reports its hits and frees its buffers.
    fn complete_front(&mut self, reports: &mut Reports<'_>) -> Result<(), ScanError> {
        if self.fifo.is_empty() {
            return self.flush();
        }
        let mut b = self.fifo.pop_front().expect("a batch");
        let tickets: Vec<Ticket> = b
            .slots
            .iter()
            .map(|p| match p.state {
                State::Published(t) => t,
                _ => unreachable!("a batch completes after its predecessors published everything"),
            })
            .collect();
        let t = Instant::now();
        let results: Vec<Outcome> = self
            .mk
            .wait_all(&tickets)?
            .into_iter()
            .map(|c| c.outcome)
            .collect();
        let t = {
            let now = Instant::now();
            self.stages.wait += now - t;
            now
        };
        // The hits of every region that holds some and did not overflow, read in one go.
        let stored: Vec<(u64, u32)> = b
            .slots
            .iter()
            .zip(&results)
            .filter_map(|(p, o)| match *o {
                Outcome::Done(r)
                    if r[2] > 0 && r[0] == r[2] && p.slot.op == SlotOp::DfaScan as u16 =>
                {
                    Some((u64::from(p.slot.args[7]), r[2]))
                }
                _ => None,
            })
            .collect();
        let (mut hit_bytes, hit_ranges) = read_regions(
            self.mk,
            b.bufs.hits,
            self.host_hits().is_some(),
            &stored,
            reports.hit_bytes(),
        )?;
        let mut hit_ranges = hit_ranges.into_iter();
        // Slots whose regions overflowed, run again together.
        let overflowed: Vec<usize> = (0..results.len())
            .filter(|&i| {
                matches!(results[i], Outcome::Done(r) if r[0] > r[2])
                    && b.slots[i].slot.op == SlotOp::DfaScan as u16
            })
            .collect();
        let t_rescan = Instant::now();
        let mut rescanned = if overflowed.is_empty() {
            Vec::new()
        } else {
            let slots: Vec<(Slot, u32)> = overflowed
                .iter()
                .map(|&i| match results[i] {
                    Outcome::Done(r) => (b.slots[i].slot, r[0]),
                    Outcome::Fault(_) => unreachable!("only finished slots overflow"),
                })
                .collect();
            self.stages.rescans += slots.len() as u64;
            rescan_all(self.mk, &mut self.overflow, &slots)?
        }
        .into_iter();
        self.stages.rescan += t_rescan.elapsed();
        let t_read = Instant::now();
        // Where each speculative window's own bytes start, the state its scan was in (hit
        // header word 1), read in one call.
        let spec_heads: Vec<(u64, u64)> = b
            .slots
            .iter()
            .zip(&results)
            .filter(|(p, o)| p.speculative && matches!(o, Outcome::Done(_)))
            .map(|(p, _)| (u64::from(p.slot.args[7]) + 4, 4))
            .collect();
        let mut heads = Vec::with_capacity(spec_heads.len() * 4);
        match (spec_heads.first(), spec_heads.last()) {
            (Some(&(first, _)), Some(&(last, _))) if self.host_hits().is_none() => {
                // Regions in device memory: one read from the first head to the last (a read
                // per head would be a device round trip each).
                let span = self.mk.read_buffer(b.bufs.hits, first, last + 4 - first)?;
                for &(at, _) in &spec_heads {
                    let i = (at - first) as usize;
                    heads.extend_from_slice(&span[i..i + 4]);
                }
            }
            (Some(_), _) => {
                self.mk
                    .read_buffer_ranges(b.bufs.hits, &spec_heads, &mut heads)?;
            }
            _ => {}
        }
        let mut heads = heads
            .chunks_exact(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
        let mut rows: Vec<Vec<u32>> = vec![Vec::new(); b.segments.len()];
        let mut faults: Vec<Option<String>> = vec![None; b.segments.len()];
        for (p, outcome) in b.slots.iter().zip(&results) {
            let seg = &mut b.segments[p.segment];
            let r = match *outcome {
                Outcome::Done(r) => r,
                Outcome::Fault(f) => {
                    faults[p.segment] = Some(format!(
                        "DFA_SCAN of rule group {} faulted with {} (detail {}); this is a bug \
                         in vyre, please report it with the rule file",
                        p.group,
                        f.code.name(),
                        f.detail
                    ));
                    continue;
                }
            };
            if self.rules.groups[p.group].max_len.is_none() {
                rows[p.segment].push(r[1]);
            }
            if p.slot.op != SlotOp::DfaScan as u16 {
                continue; // a NOP standing in for a slot of a failed file
            }
            let origin = seg.at - seg.prefix as u64 + (p.slot.args[2] as usize - seg.base) as u64;
            let bytes = if r[0] > r[2] {
                // Rare: the rescan's pairs go after the regions' bytes.
                let bytes = rescanned.next().expect("one rescan per overflowed slot");
                hit_bytes.extend_from_slice(&bytes);
                Some(hit_bytes.len() - bytes.len()..hit_bytes.len())
            } else if r[2] > 0 {
                Some(hit_ranges.next().expect("one read per region with hits"))
            } else {
                None
            };
            let head = p
                .speculative
                .then(|| heads.next().expect("one head per speculation"));
            if self.spec.contains(&p.group) {
                // Windows of a speculated group are checked in file order: batches complete
                // in order, a file's segments and windows are planned in order. A window
                // from the start of the text is exact.
                let key = (seg.seq, p.group);
                if p.speculative {
                    let Some(&before) = self.spec_state.get(&key) else {
                        // The window before faulted: the file's results are dropped.
                        continue;
                    };
                    self.stages.spec_checked += 1;
                    if head != Some(before) {
                        // A partial match older than the look-behind: scan the window's own
                        // bytes again on the host, from the state the window before ended in.
                        let t_spec = Instant::now();
                        let a = p.slot.args;
                        let own = a[4] & !REPORT_EOI;
                        let data = self.mk.read_buffer(
                            b.bufs.data,
                            u64::from(a[2] + own),
                            u64::from(a[3] - own),
                        )?;
                        let mut found = Vec::new();
                        let state = scan_slice(
                            &self.rules.groups[p.group].table,
                            &data,
                            Start::Row(before),
                            0,
                            a[4] & REPORT_EOI != 0,
                            &mut found,
                        );
                        self.spec_state.insert(key, state);
                        self.stages.spec_rescans += 1;
                        self.stages.spec_rescan += t_spec.elapsed();
                        if !found.is_empty() {
                            let at = hit_bytes.len();
                            for (end, pattern) in found {
                                hit_bytes.extend_from_slice(&(end + own).to_le_bytes());
                                hit_bytes.extend_from_slice(&pattern.to_le_bytes());
                            }
                            seg.runs.push(Run {
                                origin,
                                group: p.group as u32,
                                bytes: at..hit_bytes.len(),
                            });
                        }
                        continue;
                    }
                }
                self.spec_state.insert(key, r[1]);
            }
            let Some(bytes) = bytes else { continue };
            seg.runs.push(Run {
                origin,
                group: p.group as u32,
                bytes,
            });
        }
        self.stages.read += t_read.elapsed();
        // Drained: each segment's file reference moves into its report.
        for (k, mut seg) in b.segments.drain(..).enumerate() {
            let seq = seg.seq;
            if let Some(message) = faults[k].take() {
                if self.failed.insert(seq) {
                    self.summary.file_errors += 1;
                    reports.push(Report::Error(
                        seq,
                        FileError {
                            path: seg.file.path.clone(),
                            message,
                        },
                    ));
                }
            }
            if !self.unbounded.is_empty() && !seg.last {
                let known = (!self.failed.contains(&seq)).then(|| rows[k].clone());
                self.continue_file(seq, known)?;
            }
            self.summary.bytes += seg.len as u64;
            if !self.failed.contains(&seq) {
                let runs: usize = seg.runs.iter().map(|r| r.bytes.len() / 8).sum();
                self.summary.matches += (seg.hits.len() + runs) as u64;
                self.summary.files += u64::from(seg.last);
                let runs = reports.push_runs(&mut seg.runs);
                reports.push(Report::Segment {
                    file: seg.file,
                    hits: std::mem::take(&mut seg.hits),
                    runs,
                    end: seg.last.then_some(seg.at + seg.len as u64),
                });
            }
            if seg.last {
                self.failed.remove(&seq);
                for &g in &self.spec {
                    self.spec_state.remove(&(seq, g));
                }
            }
        }
        reports.push(Report::Progress {
            bytes: self.summary.bytes - self.progressed.0,
            files: self.summary.files - self.progressed.1,
        });
        self.progressed = (self.summary.bytes, self.summary.files);
        reports.send_with(hit_bytes);
        self.free.push(b.bufs);
        b.slots.clear();
        self.vectors.push((b.slots, b.segments));
        self.stages.hits += t.elapsed();
        Ok(())
    }

    /// The segment of file `seq` just completed with unbounded-group states `rows` (`None`
    /// after a fault): start its successor's waiting slots, or remember the states.
    fn continue_file(&mut self, seq: u64, rows: Option<Vec<u32>>) -> Result<(), ScanError> {
        let (mk, headers) = (self.mk, HostHits::per_batch_headers(self.host_hits()));
        let (unbounded, stages) = (&self.unbounded, &mut self.stages);
        let waiting = |b: &Batch| {
            b.segments.iter().position(|s| s.seq == seq).filter(|&k| {
                b.slots
                    .iter()
                    .any(|p| p.segment == k && matches!(p.state, State::Waiting))
            })
        };
        let batches = self.fifo.iter_mut().chain(self.current.as_mut());
        for b in batches {
            let Some(k) = waiting(b) else { continue };
            for p in b.slots.iter_mut().filter(|p| p.segment == k) {
                if let Some(pos) = unbounded.iter().position(|&g| g == p.group) {
                    match &rows {
                        Some(r) => p.slot.args[5] = r[pos],
                        // The file already failed; keep the slot harmless.
                        None => p.slot = Slot::new(SlotOp::Nop, &[]),
                    }
                    p.state = State::Ready;
                }
            }
            if b.flushed {
                publish_ready(mk, b, headers, stages)?;
            }
            return Ok(());
        }
        match rows {
            Some(r) => self.carry.insert(seq, Carry::Known(r)),
            None => self.carry.insert(seq, Carry::Failed),
        };
        Ok(())
    }
}

/// Copies the batch's pending bytes in from `pack`.
fn write_pending(
    mk: &Megakernel,
    b: &mut Batch,
    pack: &Pack,
    stages: &mut Stages,
) -> Result<(), ScanError> {
    if let Some(p) = b.pending.take() {
        let t = Instant::now();
        mk.write_from_staging(b.bufs.data, p.to as u64, &*pack.buf, p.from..p.from + p.len)?;
        stages.copy += t.elapsed();
        stages.copies += 1;
    }
    Ok(())
}

/// The hit region of a slot that scans `len` bytes: its offset and capacity. In host memory
/// without a fixed layout, sized by `host` after the batch's earlier regions; otherwise the
/// slot's fixed region (of `hc` hits in device memory), whose header is already written.
fn place_hits(
    b: &mut Batch,
    host: Option<HostHits>,
    region: u64,
    hc: u32,
    len: usize,
) -> (u32, u32) {
    let index = b.slots.len() as u64;
    let h = match host {
        None => return ((index * region) as u32, hc),
        Some(h) if h.fixed => return ((index * h.region()) as u32, h.min_hits),
        Some(h) => h,
    };
    let cap = (len as u64)
        .div_ceil(h.bytes_per_hit)
        .max(u64::from(h.min_hits));
    let at = b.hit_used;
    b.hit_used += HIT_HEADER_BYTES + 8 * cap;
    (at as u32, cap as u32)
}

/// Publishes the batch's ready slots, first writing their hit regions' headers if `headers`.
fn publish_ready(
    mk: &Megakernel,
    b: &mut Batch,
    headers: bool,
    stages: &mut Stages,
) -> Result<(), ScanError> {
    let ready: Vec<Slot> = b
        .slots
        .iter()
        .filter(|p| matches!(p.state, State::Ready))
        .map(|p| p.slot)
        .collect();
    if ready.is_empty() {
        return Ok(());
    }
    let t = Instant::now();
    if headers {
        // Each region starts with its capacity (the kernel never writes word 0). A NOP
        // standing in for a failed file's slot has no region.
        let scans =
            |p: &&Planned| matches!(p.state, State::Ready) && p.slot.op == SlotOp::DfaScan as u16;
        let headers: Vec<(u64, u32)> = b
            .slots
            .iter()
            .filter(scans)
            .map(|p| (u64::from(p.slot.args[7]), p.hit_cap))
            .collect();
        mk.write_buffer_words(b.bufs.hits, &headers)?;
    }
    let t = {
        let now = Instant::now();
        stages.headers += now - t;
        now
    };
    let mut tickets = mk.publish_batch(&ready)?;
    stages.ring += t.elapsed();
    b.published += ready.len();
    b.last = b.last.max(Some(tickets.end - 1));
    for p in b
        .slots
        .iter_mut()
        .filter(|p| matches!(p.state, State::Ready))
    {
        p.state = State::Published(tickets.next().expect("one ticket per slot"));
    }
    Ok(())
}

/// The overflow buffer: room for `bytes`, host memory where the backend has it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Overflow {
    handle: u32,
    bytes: u64,
    host: bool,
}

/// Runs the slots whose hit regions overflowed again, all at once, each with a region of
/// exactly the hits it found (`(slot, found)`); returns each one's hit pairs. One round trip
/// for a batch's overflows: run one by one, they cost the driver a device round trip and a
/// lane's whole scan each.
fn rescan_all(
    mk: &Megakernel,
    overflow: &mut Option<Overflow>,
    slots: &[(Slot, u32)],
) -> Result<Vec<Vec<u8>>, ScanError> {
    let region = |found: u32| HIT_HEADER_BYTES + 8 * u64::from(found);
    let need: u64 = slots.iter().map(|&(_, n)| region(n)).sum();
    if need > u64::from(u32::MAX) {
        return Err(ScanError::Options(format!(
            "{} overflowing windows found {need} bytes of hits, more than DFA_SCAN's 32-bit \
             offsets reach; use a smaller --window",
            slots.len()
        )));
    }
    let o = match *overflow {
        Some(o) if o.bytes >= need => o,
        _ => {
            // Grows geometrically; the runtime has no way to free a buffer.
            let bytes = need
                .max(overflow.map_or(0, |o| o.bytes.saturating_mul(2)))
                .min(u64::from(u32::MAX));
            let (handle, host) = match mk.create_host_buffer(bytes)? {
                Some(h) => (h, true),
                None => (mk.create_buffer(bytes)?, false),
            };
            *overflow = Some(Overflow {
                handle,
                bytes,
                host,
            });
            overflow.expect("just set")
        }
    };
    // The regions back to back, each headed by its capacity.
    let mut layout = vec![0u8; need as usize];
    let mut again = Vec::with_capacity(slots.len());
    let mut at = 0u64;
    for &(slot, found) in slots {
        layout[at as usize..at as usize + 4].copy_from_slice(&found.to_le_bytes());
        let mut s = slot;
        s.args[6] = o.handle;
        s.args[7] = at as u32;
        again.push(s);
        at += region(found);
    }
    mk.write_buffer(o.handle, 0, &layout)?;
    let tickets = mk.publish_batch(&again)?;
    let done = mk.wait_range(tickets)?;
    let mut regions = Vec::with_capacity(slots.len());
    let mut at = 0u64;
    for (c, &(_, found)) in done.iter().zip(slots) {
        match c.outcome {
            Outcome::Done(r) if r[2] == found => {}
            other => {
                return Err(ScanError::Options(format!(
                    "a rescan with room for {found} hits did not store them all ({other:?}); \
                     this is a bug in vyre, please report it with the rule file"
                )))
            }
        }
        regions.push((at, found));
        at += region(found);
    }
    let (bytes, ranges) = read_regions(mk, o.handle, o.host, &regions, Vec::new())?;
    Ok(ranges.into_iter().map(|r| bytes[r].to_vec()).collect())
}

/// What the set-up thread sends the driver, in this order.
#[derive(Debug)]
enum Ready {
    /// Every table's contents are uploaded.
    Tables,
    /// One more pair of batch buffers.
    Buffers(Buffers),
}

/// How a batch's pair of buffers is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pairs {
    /// Bytes of the data buffer.
    data: u64,
    /// Hit buffers in host memory, if asked for.
    host: Option<HostHits>,
    /// Otherwise (or where the backend has no host buffers): regions of `region` bytes in
    /// device memory, this many.
    device_regions: usize,
    region: u64,
    hit_capacity: u32,
}

impl Pairs {
    /// A new pair, and whether its hit regions are in host memory.
    fn create(&self, mk: &Megakernel) -> Result<(Buffers, bool), ScanError> {
        let data = mk.create_buffer(self.data)?;
        if let Some(h) = self.host {
            if let Some(hits) = mk.create_host_buffer(h.bytes)? {
                if h.fixed {
                    // Every region starts with its capacity; the kernel never writes word 0.
                    let headers: Vec<(u64, u32)> = (0..h.bytes / h.region())
                        .map(|i| (i * h.region(), h.min_hits))
                        .collect();
                    mk.write_buffer_words(hits, &headers)?;
                }
                return Ok((Buffers { data, hits }, true));
            }
        }
        // Every region starts with its capacity; the kernel never writes word 0.
        let mut header = vec![0u8; self.device_regions * self.region as usize];
        for r in header.chunks_exact_mut(self.region as usize) {
            r[..4].copy_from_slice(&self.hit_capacity.to_le_bytes());
        }
        let hits = mk.create_buffer_with(header.len() as u64, &header)?;
        Ok((Buffers { data, hits }, false))
    }
}

/// The part of a driver's set-up that runs beside it (see [`Driver::new`]).
pub(crate) struct SetUp<'a> {
    mk: &'a Megakernel,
    rules: &'a Compiled,
    tables: Vec<u32>,
    /// This set-up thread uploads the tables (the first driver's: it holds the gate's
    /// opener); the others wait for it at `gate`.
    opener: Option<GateOpener>,
    gate: Arc<Gate>,
    pairs: Pairs,
    count: usize,
    tx: SyncSender<Result<Ready, ScanError>>,
    /// Set when the scan is over: make no more pairs.
    stop: Arc<AtomicBool>,
}

impl SetUp<'_> {
    /// Uploads the tables, then makes the other batches' buffers, sending each as it is done
    /// (or the first error). Stops early if the driver is gone.
    pub(crate) fn run(mut self) {
        let t = Instant::now();
        let uploader = self.opener.is_some();
        let tables = if let Some(mut opener) = self.opener.take() {
            // Opens the gate when dropped, as failed unless the upload succeeded.
            let r = self
                .rules
                .groups
                .iter()
                .zip(&self.tables)
                .try_for_each(|(g, &h)| upload_words(self.mk, h, &g.table));
            opener.ok = r.is_ok();
            r
        } else if self.gate.wait() {
            Ok(())
        } else {
            Err(ScanError::Options(
                "uploading the rule tables failed (the first driver reports why)".into(),
            ))
        };
        let uploaded = t.elapsed();
        let failed = tables.is_err();
        if self.tx.send(tables.map(|()| Ready::Tables)).is_err() || failed {
            return;
        }
        for _ in 0..self.count {
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            let pair = self.pairs.create(self.mk).and_then(|(b, host)| {
                if host == self.pairs.host.is_some() {
                    Ok(Ready::Buffers(b))
                } else {
                    Err(ScanError::Options(
                        "the backend gave the first batch's hit regions host memory and \
                         refused it for a later batch"
                            .into(),
                    ))
                }
            });
            let failed = pair.is_err();
            if self.tx.send(pair).is_err() || failed {
                return;
            }
        }
        tracing::info!(
            target: "vyre_scan::stages",
            "set-up thread: tables {} {:.3} s, {} more batch buffer pairs in {:.3} s",
            if uploader { "uploaded in" } else { "waited for (another driver uploads them)" },
            uploaded.as_secs_f64(),
            self.count,
            (t.elapsed() - uploaded).as_secs_f64()
        );
    }
}

/// What drivers of one scan share: the table buffers (made once, uploaded by the first
/// driver's set-up thread) and where each driver stands.
#[derive(Debug)]
pub(crate) struct Share {
    pub(crate) index: usize,
    pub(crate) drivers: usize,
    pub(crate) tables: Vec<u32>,
    pub(crate) gate: Arc<Gate>,
}

/// Opened once the tables are uploaded (true) or failed to (false).
#[derive(Debug, Default)]
pub(crate) struct Gate {
    open: Mutex<Option<bool>>,
    opened: Condvar,
}

impl Gate {
    fn open(&self, ok: bool) {
        *lock(&self.open) = Some(ok);
        self.opened.notify_all();
    }

    /// Waits until the gate is open: whether the upload succeeded.
    fn wait(&self) -> bool {
        let mut open = lock(&self.open);
        loop {
            match *open {
                Some(ok) => return ok,
                None => open = self.opened.wait(open).unwrap_or_else(|e| e.into_inner()),
            }
        }
    }
}

/// Opens its gate when dropped: as succeeded once `ok` is set, else as failed. The first
/// driver's thread makes it before anything else, so that whatever ends that driver (an
/// error or a panic in its set-up, before its set-up thread runs, or in the upload) opens the
/// gate and no other driver's set-up thread waits forever.
pub(crate) struct GateOpener {
    gate: Arc<Gate>,
    ok: bool,
}

impl GateOpener {
    pub(crate) fn new(gate: Arc<Gate>) -> GateOpener {
        GateOpener { gate, ok: false }
    }
}

impl std::fmt::Debug for GateOpener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GateOpener").field("ok", &self.ok).finish()
    }
}

impl Drop for GateOpener {
    fn drop(&mut self) {
        self.gate.open(self.ok);
    }
}

/// The table buffers of `rules`: those of the sizes an earlier scan's tables had are used
/// again (the first driver's set-up thread uploads this scan's tables into them).
pub(crate) fn table_buffers(
    mk: &Megakernel,
    rules: &Compiled,
    reuse: &mut super::ScanBuffers,
) -> Result<Vec<u32>, ScanError> {
    reuse.claim(mk);
    Ok(rules
        .groups
        .iter()
        .map(|g| {
            let bytes = g.table.len() as u64 * 4;
            reuse
                .take_table(bytes)
                .map_or_else(|| mk.create_buffer(bytes), Ok)
        })
        .collect::<Result<Vec<u32>, _>>()?)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes `words` (little-endian) into buffer `handle` through two 4 MiB chunks of the
/// backend's staging memory (page-locked on cuda): each chunk is filled while the previous
/// one's copy runs. 10,000 words compile to 170 MB of tables: converting them to bytes in one
/// go (a byte iterator) and copying from pageable memory took most of a scan's set-up.
fn upload_words(mk: &Megakernel, handle: u32, words: &[u32]) -> Result<(), ScanError> {
    const CHUNK_WORDS: usize = 1 << 20;
    let mut stages = [
        mk.create_staging(CHUNK_WORDS * 4)?,
        mk.create_staging(CHUNK_WORDS * 4)?,
    ];
    let mut copy = |i: usize, chunk: &[u32]| -> Result<(), ScanError> {
        let stage = &mut stages[i % 2];
        let bytes = &mut stage.bytes_mut()[..chunk.len() * 4];
        for (b, w) in bytes.chunks_exact_mut(4).zip(chunk) {
            b.copy_from_slice(&w.to_le_bytes());
        }
        // The copy of the chunk before (from the other staging buffer) finishes here; the
        // one before that, from this buffer, finished at the previous chunk's wait.
        mk.wait_copies()?;
        let at = (i * CHUNK_WORDS * 4) as u64;
        mk.write_from_staging(handle, at, &**stage, 0..chunk.len() * 4)?;
        Ok(())
    };
    let mut result = Ok(());
    for (i, chunk) in words.chunks(CHUNK_WORDS).enumerate() {
        result = copy(i, chunk);
        if result.is_err() {
            break;
        }
    }
    // Nothing may still read the staging buffers when they go back to their pool, error or
    // not.
    let waited = mk.wait_copies();
    result?;
    Ok(waited?)
}

/// The (end, pattern) pairs of hit regions of one buffer, each given by its offset and the
/// hits it stored: the bytes, and where each region's pairs lie in them. In host memory
/// the regions' pairs are copied back to back in one call (a call per region cost a lock,
/// an allocation and a cache miss each: 0.14-0.21 s of a 10,000-word pass on an H100
/// host); in device memory one copy covers the buffer from 0 to the end of the last. `bytes`:
/// an empty vector to read into (where the regions are in host memory).
fn read_regions(
    mk: &Megakernel,
    handle: u32,
    host: bool,
    regions: &[(u64, u32)],
    mut bytes: Vec<u8>,
) -> Result<(Vec<u8>, Vec<Range<usize>>), ScanError> {
    let spans: Vec<(u64, u64)> = regions
        .iter()
        .map(|&(at, stored)| (at + HIT_HEADER_BYTES, 8 * u64::from(stored)))
        .collect();
    if host {
        mk.read_buffer_ranges(handle, &spans, &mut bytes)?;
        let mut at = 0;
        let ranges = spans
            .iter()
            .map(|&(_, len)| {
                at += len as usize;
                at - len as usize..at
            })
            .collect();
        Ok((bytes, ranges))
    } else {
        let end = spans
            .iter()
            .map(|&(from, len)| from + len)
            .max()
            .unwrap_or(0);
        let bytes = if end > 0 {
            mk.read_buffer(handle, 0, end)?
        } else {
            Vec::new()
        };
        let ranges = spans
            .iter()
            .map(|&(from, len)| from as usize..(from + len) as usize)
            .collect();
        Ok((bytes, ranges))
    }
}

fn dfa_slot(
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Batches of 16 MiB in 8 KiB windows, `groups` slots per window, 6 in flight.
    fn fit(groups: u64, budget: u64) -> Option<HostHits> {
        let slots = groups * (2048 + SMALL_FILE_WINDOWS as u64);
        HostHits::fit(slots, groups * (16 << 20), 256, 6, budget)
    }

    #[test]
    fn host_hit_regions_thin_out_to_fit_the_budget_instead_of_leaving_host_memory() {
        let one = fit(1, HOST_HITS_MAX_BYTES).expect("fits");
        assert_eq!((one.bytes_per_hit, one.min_hits), (HIT_BYTES, 256));
        // Ten groups (the bench's secret regexes) need ~10 times the regions: fewer hits per
        // byte, never more than the budget.
        let ten = fit(10, HOST_HITS_MAX_BYTES).expect("fits");
        assert!(
            ten.bytes_per_hit > HIT_BYTES && ten.min_hits < 256,
            "{ten:?}"
        );
        assert!(ten.bytes * 6 <= HOST_HITS_MAX_BYTES);
        assert!(fit(1000, 1 << 20).is_none());
    }

    #[test]
    fn fixed_host_hit_regions_hold_a_window_of_hits_or_what_the_budget_leaves() {
        // 8 KiB windows with 256 bytes of look-behind: one hit per 16 bytes.
        let fixed = |groups: u64, budget| {
            let slots = groups * (2048 + SMALL_FILE_WINDOWS as u64);
            HostHits::fixed(slots, 8192 + 256, 256, 6, budget).map(|h| (h, slots))
        };
        let (one, slots) = fixed(1, HOST_HITS_MAX_BYTES).expect("fits");
        assert!(one.fixed);
        assert_eq!(one.min_hits, 528);
        assert_eq!(one.bytes, slots * one.region());
        // Ten groups: fewer hits per region, within the budget.
        let (ten, slots) = fixed(10, HOST_HITS_MAX_BYTES).expect("fits");
        assert!(ten.min_hits < 528 && ten.min_hits >= 8, "{ten:?}");
        assert!(ten.bytes * 6 <= HOST_HITS_MAX_BYTES);
        assert_eq!(ten.bytes, slots * ten.region());
        // Fewer than 8 hits per region: device regions instead.
        assert!(fixed(1000, 1 << 20).is_none());
    }
}
