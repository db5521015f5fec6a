//! The ring: host-side publish and reap, worker-side claim and complete.
//!
//! Positions are u32 and wrap; every comparison uses wrapping differences. The invariant
//! `reap <= head <= tail <= reap + capacity` (in wrapping distance) is what makes slot reuse
//! safe: the host publishes position `p` only after it has reaped `p - capacity`, and a
//! worker claims `p` only after the host's release store of `tail` has made `p`'s words
//! visible. Each slot's sequence word must equal its position when claimed, which catches a
//! stale lap (ABA) instead of executing it.

use crate::protocol::{
    control, debug_record, slot_word, status, IO_QUEUE_WORDS_PER_SLOT, SLOT_WORDS,
};
use crate::sync::{fence, AtomicU32, Ordering};
use vyre_isa::slot::COUNTED_OPCODES;
use vyre_isa::{Fault, FaultCode, Slot};

/// The four regions of ring memory, as words. Where they live is the backend's choice
/// (heap for cpu, mapped pinned memory for cuda).
pub trait RingMemory: Send + Sync + std::fmt::Debug {
    /// The control block ([`control::WORDS`] words).
    fn control(&self) -> &[AtomicU32];
    /// The slots (capacity × 16 words).
    fn slots(&self) -> &[AtomicU32];
    /// The debug log (debug capacity × 8 words).
    fn debug_log(&self) -> &[AtomicU32];
    /// The I/O queue (capacity × [`IO_QUEUE_WORDS_PER_SLOT`] words: the request records, then
    /// the resume entries; PROTOCOL.md, "I/O queue"). Ring memory without one returns an empty
    /// slice (the default), and its workers fault IO_READ `unsupported`.
    fn io_queue(&self) -> &[AtomicU32] {
        &[]
    }
    /// Writes `slots` as published at positions `first, first + 1, …` (each at its slot
    /// index in a ring of `capacity`). Implementations must make each slot's first 32 bytes
    /// visible no later than its STATUS (word 1) and its second 32 bytes no later than its
    /// RES3 (word 15), or withhold the stamp (RES3 = 0, the line then runs only once TAIL covers
    /// it): hot slot polling relies on it (PROTOCOL.md). Every word must be visible before
    /// any store the calling thread makes after the call (the tail's). The default stores word by
    /// word, those two last; mapped GPU memory may store wider (writing a line costs the host
    /// a cache-line transfer, and fewer, wider stores overlap more of them).
    fn write_slots(&self, capacity: u32, first: u32, slots: &[Slot]) {
        let words = self.slots();
        for (k, slot) in slots.iter().enumerate() {
            let p = first.wrapping_add(k as u32);
            let base = slot_base(capacity, p);
            write_line(&words[base..base + SLOT_WORDS], &slot_line(p, slot));
        }
    }
    /// As [`RingMemory::write_slots`], for slots that are published together by one tail store
    /// once all are written ([`HostRing::publish_whole`]): no worker reads them before that
    /// store, so memory may write them in a way that favours the device's reading them all
    /// afterwards (cuda's mapped ring: non-temporal stores, the stamps withheld). The default is
    /// `write_slots`.
    fn write_slots_whole(&self, capacity: u32, first: u32, slots: &[Slot]) {
        self.write_slots(capacity, first, slots);
    }
}

/// Ring memory on the heap.
#[derive(Debug)]
pub struct HeapRing {
    control: Box<[AtomicU32]>,
    slots: Box<[AtomicU32]>,
    debug: Box<[AtomicU32]>,
    io: Box<[AtomicU32]>,
}

fn zeroed(n: usize) -> Box<[AtomicU32]> {
    (0..n).map(|_| AtomicU32::new(0)).collect()
}

impl HeapRing {
    /// Zeroed memory for a ring of `capacity` slots and `debug_capacity` debug records.
    pub fn new(capacity: u32, debug_capacity: u32) -> HeapRing {
        HeapRing {
            control: zeroed(control::WORDS),
            slots: zeroed(capacity as usize * SLOT_WORDS),
            debug: zeroed(debug_capacity as usize * debug_record::RECORD_WORDS),
            io: zeroed(capacity as usize * IO_QUEUE_WORDS_PER_SLOT),
        }
    }
}

impl RingMemory for HeapRing {
    fn control(&self) -> &[AtomicU32] {
        &self.control
    }
    fn slots(&self) -> &[AtomicU32] {
        &self.slots
    }
    fn debug_log(&self) -> &[AtomicU32] {
        &self.debug
    }
    fn io_queue(&self) -> &[AtomicU32] {
        &self.io
    }
}

/// Writes the control block header and the slots' initial sequence numbers. `start` is
/// the first position (tests start near `u32::MAX` to cross the wrap).
pub fn initialize(mem: &dyn RingMemory, capacity: u32, debug_capacity: u32, start: u32) {
    assert!(capacity.is_power_of_two() && debug_capacity.is_power_of_two());
    assert_eq!(mem.slots().len(), capacity as usize * SLOT_WORDS);
    assert_eq!(
        mem.debug_log().len(),
        debug_capacity as usize * debug_record::RECORD_WORDS
    );
    let c = mem.control();
    for w in c {
        w.store(0, Ordering::Relaxed);
    }
    c[control::MAGIC].store(crate::protocol::MAGIC, Ordering::Relaxed);
    c[control::VERSION].store(crate::protocol::PROTOCOL_VERSION, Ordering::Relaxed);
    c[control::CAPACITY].store(capacity, Ordering::Relaxed);
    c[control::DEBUG_CAPACITY].store(debug_capacity, Ordering::Relaxed);
    c[control::TAIL].store(start, Ordering::Relaxed);
    c[control::HEAD].store(start, Ordering::Relaxed);
    for k in 0..capacity {
        let p = start.wrapping_add(k);
        let base = slot_base(capacity, p);
        for w in &mem.slots()[base..base + SLOT_WORDS] {
            w.store(0, Ordering::Relaxed);
        }
        mem.slots()[base + slot_word::SEQ].store(p, Ordering::Relaxed);
    }
    for w in mem.debug_log() {
        w.store(0, Ordering::Relaxed);
    }
    let io = mem.io_queue();
    assert!(io.is_empty() || io.len() == capacity as usize * IO_QUEUE_WORDS_PER_SLOT);
    for w in io {
        w.store(0, Ordering::Relaxed);
    }
    fence(Ordering::SeqCst);
}

/// Checks that ring memory carries this protocol's magic and version; every backend calls it
/// before launching on a ring.
pub fn check_header(mem: &dyn RingMemory) -> Result<(), crate::BackendError> {
    let c = mem.control();
    let (magic, version) = (
        c[control::MAGIC].load(Ordering::Acquire),
        c[control::VERSION].load(Ordering::Acquire),
    );
    if magic != crate::protocol::MAGIC || version != crate::protocol::PROTOCOL_VERSION {
        return Err(crate::BackendError::Launch(format!(
            "ring control block has magic {magic:#x} version {version}; this backend speaks protocol v{} (initialise the ring with vyre_runtime::ring::initialize)",
            crate::protocol::PROTOCOL_VERSION
        )));
    }
    Ok(())
}

/// The last result word: the publish stamp until a worker writes results.
const RES3: usize = slot_word::RES0 + 3;

/// The index of position `position`'s first word among the slots of a ring of `capacity`.
#[inline(always)]
pub fn slot_base(capacity: u32, position: u32) -> usize {
    (position & (capacity - 1)) as usize * SLOT_WORDS
}

/// Writes a slot's sixteen words, the two that mark it published last: RES3 (the stamp) after
/// the rest of the second 32 bytes, STATUS after the rest of the first. A worker that reads the
/// line without the tail (cuda's hot polling) relies on that order (PROTOCOL.md, "Hot slot
/// polling"); the release stores keep the compiler from reordering them.
#[inline(always)]
pub fn write_line(dst: &[AtomicU32], line: &[u32; SLOT_WORDS]) {
    for (i, (d, &v)) in dst.iter().zip(line).enumerate() {
        if i != slot_word::STATUS && i != RES3 {
            d.store(v, Ordering::Relaxed);
        }
    }
    dst[RES3].store(line[RES3], Ordering::Release);
    dst[slot_word::STATUS].store(line[slot_word::STATUS], Ordering::Release);
}

/// The sixteen words of `slot` published at position `p`: SEQ, PUBLISHED, the instruction,
/// zero results and the publish stamp. Built whole, in registers: a line assembled in memory
/// from narrow stores and read back wide stalls on store forwarding.
#[inline(always)]
pub fn slot_line(p: u32, slot: &Slot) -> [u32; SLOT_WORDS] {
    let e = slot.encode();
    [
        p,
        status::PUBLISHED,
        e[0],
        e[1],
        e[2],
        e[3],
        e[4],
        e[5],
        e[6],
        e[7],
        e[8],
        e[9],
        0,
        0,
        0,
        status::publish_stamp(p),
    ]
}

/// Publishes and reaps at least this large are shared with the host pool's threads (when
/// there is one); below it, handing work over costs more than it saves.
pub const PARALLEL_MIN: usize = 8192;

/// The pool to share `n` slots' publishing or reaping with, if it is worth it.
fn shared(pool: Option<&rayon::ThreadPool>, n: usize) -> Option<&rayon::ThreadPool> {
    pool.filter(|p| n >= PARALLEL_MIN && p.current_num_threads() > 1)
}

/// Slots one task of a parallel publish or reap (or an overlapped `run_batch`) handles.
pub const PARALLEL_UNIT: usize = 1024;

/// Slots written between two tail stores. One store per slot costs a cache-line transfer
/// (a PCIe write for mapped GPU memory) each; one per batch leaves workers idle while the
/// host writes it. 64 slots overlap the two.
pub const PUBLISH_CHUNK: usize = 64;

/// How a slot finished, as the host reads it back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// DONE, with its result words.
    Done([u32; 4]),
    /// FAULT.
    Fault(Fault),
}

/// A completed slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The ring position it ran at.
    pub position: u32,
    /// What happened.
    pub outcome: Outcome,
}

impl Completion {
    /// The result words (for a fault: detail, location, 0, 0).
    pub fn results(&self) -> [u32; 4] {
        match self.outcome {
            Outcome::Done(r) => r,
            Outcome::Fault(f) => [f.detail, f.at, 0, 0],
        }
    }
}

/// The outcome of a slot whose status word is `st`, if it has finished. RES3 is the publish
/// stamp, not a result (results have at most three words): it reads as 0.
#[inline(always)]
fn read_outcome(w: &[AtomicU32], st: u32) -> Option<Outcome> {
    let res = |i: usize| w[slot_word::RES0 + i].load(Ordering::Relaxed);
    match st & 0xff {
        status::DONE => Some(Outcome::Done([res(0), res(1), res(2), 0])),
        status::FAULT => Some(Outcome::Fault(Fault {
            code: FaultCode::from_u8((st >> 8) as u8).unwrap_or(FaultCode::Lost),
            detail: res(0),
            at: res(1),
        })),
        _ => None,
    }
}

/// The completion at `position` of a ring of `capacity` slots, if its slot has finished.
/// Reads only (reaping writes nothing to the ring), so threads can read a range together
/// while the owner of the [`HostRing`] counts what they read with
/// [`HostRing::advance_reap`].
pub fn finished_completion(
    mem: &dyn RingMemory,
    capacity: u32,
    position: u32,
) -> Option<Completion> {
    let w = &mem.slots()[slot_base(capacity, position)..][..SLOT_WORDS];
    let st = w[slot_word::STATUS].load(Ordering::Acquire);
    read_outcome(w, st).map(|outcome| Completion { position, outcome })
}

/// The host's side of the ring: publish at the tail, reap completions in order. One host
/// side exists per ring; callers serialise access to it (the Megakernel holds it in a mutex).
#[derive(Debug)]
pub struct HostRing {
    capacity: u32,
    tail: u32,
    reap: u32,
}

impl HostRing {
    /// The host side of a ring initialised with [`initialize`] at `start`.
    pub fn new(capacity: u32, start: u32) -> HostRing {
        HostRing {
            capacity,
            tail: start,
            reap: start,
        }
    }

    /// Publishes the next `n` slots, which the caller has already written (with
    /// [`RingMemory::write_slots`] at the positions from [`HostRing::tail`] on, within
    /// [`HostRing::free`]): for host threads that share one batch's writing while one of them
    /// moves the tail.
    pub fn advance_tail(&mut self, mem: &dyn RingMemory, n: u32) {
        debug_assert!(n <= self.free());
        self.tail = self.tail.wrapping_add(n);
        mem.control()[control::TAIL].store(self.tail, Ordering::Release);
    }

    /// Counts the next `n` published positions as reaped: their completions were read with
    /// [`finished_completion`] by threads sharing the work.
    pub fn advance_reap(&mut self, n: u32) {
        debug_assert!(n <= self.outstanding());
        self.reap = self.reap.wrapping_add(n);
    }

    /// Slots that can be published before the ring is full.
    pub fn free(&self) -> u32 {
        self.capacity - self.tail.wrapping_sub(self.reap)
    }

    /// Published slots not yet reaped.
    pub fn outstanding(&self) -> u32 {
        self.tail.wrapping_sub(self.reap)
    }

    /// The next position to publish.
    pub fn tail(&self) -> u32 {
        self.tail
    }

    /// The next position to reap.
    pub fn reap_position(&self) -> u32 {
        self.reap
    }

    /// Writes as many of `slots` as fit and publishes them with one release store of the
    /// tail per [`PUBLISH_CHUNK`] slots, so that workers start on the first slots while the
    /// host is still writing the rest. Returns how many were published (0 when full).
    pub fn publish(&mut self, mem: &dyn RingMemory, slots: &[Slot]) -> usize {
        self.publish_on(mem, slots, None)
    }

    /// As [`HostRing::publish`], with the slot writes of a large batch ([`PARALLEL_MIN`] slots
    /// or more) shared with the threads of `pool`: writing a 64-byte line costs the host a
    /// cache-line transfer (about 10 ns on an H100 host), the device runs NOP slots at
    /// about 3 ns, so one host thread cannot keep up. The calling thread stores the tail over
    /// the prefix written so far, as the serial path does per [`PUBLISH_CHUNK`].
    pub fn publish_on(
        &mut self,
        mem: &dyn RingMemory,
        slots: &[Slot],
        pool: Option<&rayon::ThreadPool>,
    ) -> usize {
        let n = (self.free() as usize).min(slots.len());
        if let Some(pool) = shared(pool, n) {
            self.publish_parallel(mem, &slots[..n], pool, false);
        } else {
            for chunk in slots[..n].chunks(PUBLISH_CHUNK) {
                self.publish_chunk(mem, chunk);
            }
        }
        n
    }

    /// Writes all of `slots` and makes them visible with a single tail store, or publishes
    /// nothing (returns false) when they do not all fit. Workers see the whole batch at once:
    /// what `vyre bench ring` uses to time the device apart from the host's writing.
    pub fn publish_whole(&mut self, mem: &dyn RingMemory, slots: &[Slot]) -> bool {
        self.publish_whole_on(mem, slots, None)
    }

    /// As [`HostRing::publish_whole`], sharing the writes with `pool` when the batch is large.
    pub fn publish_whole_on(
        &mut self,
        mem: &dyn RingMemory,
        slots: &[Slot],
        pool: Option<&rayon::ThreadPool>,
    ) -> bool {
        if slots.len() > self.free() as usize {
            return false;
        }
        match shared(pool, slots.len()) {
            Some(pool) => self.publish_parallel(mem, slots, pool, true),
            None => {
                mem.write_slots_whole(self.capacity, self.tail, slots);
                self.advance_tail(mem, slots.len() as u32);
            }
        }
        true
    }

    /// Writes `slots` (which fit) from the calling thread and the pool's threads, a
    /// [`PARALLEL_UNIT`] of slots at a time taken in order from a shared counter. The calling
    /// thread also stores the tail over the contiguous prefix of finished units (unless
    /// `whole`), and once more at the end: a unit's lines are written before its flag is set
    /// (release), and the flag is read (acquire) before the tail store that covers it.
    fn publish_parallel(
        &mut self,
        mem: &dyn RingMemory,
        slots: &[Slot],
        pool: &rayon::ThreadPool,
        whole: bool,
    ) {
        use std::sync::atomic::{AtomicBool, AtomicUsize};
        let (base, capacity) = (self.tail, self.capacity);
        let units = slots.len().div_ceil(PARALLEL_UNIT);
        let next = AtomicUsize::new(0);
        let written: Vec<AtomicBool> = (0..units).map(|_| AtomicBool::new(false)).collect();
        let take_unit = || {
            let u = next.fetch_add(1, Ordering::Relaxed);
            if u >= units {
                return None;
            }
            let first = u * PARALLEL_UNIT;
            let end = (first + PARALLEL_UNIT).min(slots.len());
            let (at, unit) = (base.wrapping_add(first as u32), &slots[first..end]);
            if whole {
                mem.write_slots_whole(capacity, at, unit);
            } else {
                mem.write_slots(capacity, at, unit);
            }
            written[u].store(true, Ordering::Release);
            Some(u)
        };
        let tail = &mem.control()[control::TAIL];
        pool.in_place_scope(|scope| {
            for _ in 1..pool.current_num_threads().min(units) {
                scope.spawn(|_| while take_unit().is_some() {});
            }
            let mut prefix = 0;
            while prefix < units {
                let took = take_unit().is_some();
                let before = prefix;
                while prefix < units && written[prefix].load(Ordering::Acquire) {
                    prefix += 1;
                }
                if !whole && prefix != before {
                    let done = (prefix * PARALLEL_UNIT).min(slots.len());
                    tail.store(base.wrapping_add(done as u32), Ordering::Release);
                }
                if !took && prefix < units {
                    std::hint::spin_loop();
                }
            }
        });
        self.tail = base.wrapping_add(slots.len() as u32);
        tail.store(self.tail, Ordering::Release);
    }

    fn publish_chunk(&mut self, mem: &dyn RingMemory, slots: &[Slot]) {
        mem.write_slots(self.capacity, self.tail, slots);
        self.tail = self.tail.wrapping_add(slots.len() as u32);
        mem.control()[control::TAIL].store(self.tail, Ordering::Release);
    }

    /// Reaps completed slots in order, handing each to `sink`, and frees their slots for
    /// the next lap. Stops at the first slot that is not finished. Returns how many.
    pub fn reap(&mut self, mem: &dyn RingMemory, sink: impl FnMut(Completion)) -> usize {
        self.reap_until(mem, self.tail, sink)
    }

    /// As [`HostRing::reap`], but stops at position `end` (for a caller that wants only the
    /// completions of its own positions, handed over without buffering).
    pub fn reap_until(
        &mut self,
        mem: &dyn RingMemory,
        end: u32,
        mut sink: impl FnMut(Completion),
    ) -> usize {
        let limit = end.wrapping_sub(self.reap).min(self.outstanding());
        let mut n = 0;
        while n < limit {
            let Some(c) = finished_completion(mem, self.capacity, self.reap) else {
                break;
            };
            sink(c);
            self.reap = self.reap.wrapping_add(1);
            n += 1;
        }
        n as usize
    }

    /// As [`HostRing::reap_until`], appending to `out`. When at least [`PARALLEL_MIN`] slots
    /// of the range have finished (probed at its end, then halfway, and so on), the pool's
    /// threads read them together: reading a line the device wrote costs the host a cache-line
    /// transfer (about 9 ns on an H100 host), three times what the device takes to run a NOP.
    /// Reaping writes nothing to the ring, so a part read ahead of an unfinished slot is
    /// simply not counted.
    ///
    /// With `eager` false, a large range of which fewer than [`PARALLEL_MIN`] slots have
    /// finished is left alone (returns 0) rather than read one slot at a time: a caller
    /// waiting for all of it is better served by the device finishing more first (it runs NOP
    /// slots three times faster than one host thread reads them).
    pub fn reap_into(
        &mut self,
        mem: &dyn RingMemory,
        end: u32,
        out: &mut Vec<Completion>,
        pool: Option<&rayon::ThreadPool>,
        eager: bool,
    ) -> usize {
        let limit = end.wrapping_sub(self.reap).min(self.outstanding()) as usize;
        let Some(pool) = shared(pool, limit) else {
            return self.reap_until(mem, end, |c| out.push(c));
        };
        // How much to read together: the longest of limit, limit / 2, … (down to PARALLEL_MIN)
        // whose last slot has finished. Slots finish roughly in order, so a finished slot far
        // ahead means most of what precedes it has finished too.
        let finished = |k: usize| {
            finished_completion(mem, self.capacity, self.reap.wrapping_add(k as u32 - 1)).is_some()
        };
        let mut limit = limit;
        while !finished(limit) {
            limit /= 2;
            if limit < PARALLEL_MIN {
                if !eager {
                    return 0;
                }
                return self.reap_until(mem, end, |c| out.push(c));
            }
        }
        use rayon::prelude::*;
        use std::sync::atomic::AtomicUsize;
        let (first, capacity) = (self.reap, self.capacity);
        let len = out.len();
        // The first unfinished offset in the range (slots may finish out of order); what was
        // read from it on is cut off below.
        let cut = AtomicUsize::new(limit);
        pool.install(|| {
            out.par_extend(
                (0..limit)
                    .into_par_iter()
                    .with_min_len(PARALLEL_UNIT)
                    .map(|k| {
                        let p = first.wrapping_add(k as u32);
                        finished_completion(mem, capacity, p).unwrap_or_else(|| {
                            cut.fetch_min(k, Ordering::Relaxed);
                            Completion {
                                position: p,
                                outcome: Outcome::Done([0; 4]),
                            }
                        })
                    }),
            )
        });
        let n = cut.into_inner();
        out.truncate(len + n);
        self.reap = self.reap.wrapping_add(n as u32);
        n
    }

    /// Positions published but not finished, in order, with their status (for shutdown and
    /// watchdog reports).
    pub fn unfinished(&self, mem: &dyn RingMemory) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        let mut p = self.reap;
        while p != self.tail {
            let st = mem.slots()[slot_base(self.capacity, p) + slot_word::STATUS]
                .load(Ordering::Acquire)
                & 0xff;
            if st != status::DONE && st != status::FAULT {
                out.push((p, st));
            }
            p = p.wrapping_add(1);
        }
        out
    }

    /// Forces every unfinished slot to FAULT(`Lost`) and reaps everything. Only valid once
    /// no worker can touch the ring any more (after the backend has stopped).
    pub fn fail_unfinished(&mut self, mem: &dyn RingMemory, sink: impl FnMut(Completion)) -> usize {
        for (p, _) in self.unfinished(mem) {
            let w = &mem.slots()[slot_base(self.capacity, p)..][..SLOT_WORDS];
            w[slot_word::RES0].store(p, Ordering::Relaxed);
            w[slot_word::RES0 + 1].store(0, Ordering::Relaxed);
            w[slot_word::STATUS].store(
                status::FAULT | (FaultCode::Lost as u32) << 8,
                Ordering::Release,
            );
        }
        self.reap(mem, sink)
    }
}

impl HostRing {
    /// Moves the ring onto fresh memory after a restart: `new` is initialised at the reap
    /// position, every published slot `[reap, tail)` is copied with its words, unfinished
    /// ones are set back to PUBLISHED, and the tail is stored. Positions (and so tickets) stay
    /// the same. Returns the positions requeued, with the status each had (CLAIMED ones may
    /// have run partly).
    pub fn transplant(
        &self,
        old: &dyn RingMemory,
        new: &dyn RingMemory,
        debug_capacity: u32,
    ) -> Vec<(u32, u32)> {
        initialize(new, self.capacity, debug_capacity, self.reap);
        let mut requeued = Vec::new();
        let mut p = self.reap;
        while p != self.tail {
            let base = slot_base(self.capacity, p);
            let (from, to) = (
                &old.slots()[base..base + SLOT_WORDS],
                &new.slots()[base..base + SLOT_WORDS],
            );
            for (d, s) in to.iter().zip(from) {
                d.store(s.load(Ordering::Acquire), Ordering::Relaxed);
            }
            let st = to[slot_word::STATUS].load(Ordering::Relaxed) & 0xff;
            if st != status::DONE && st != status::FAULT {
                requeued.push((p, st));
                for r in &to[slot_word::RES0..RES3] {
                    r.store(0, Ordering::Relaxed);
                }
                to[RES3].store(status::publish_stamp(p), Ordering::Relaxed);
                to[slot_word::STATUS].store(status::PUBLISHED, Ordering::Relaxed);
            }
            p = p.wrapping_add(1);
        }
        new.control()[control::TAIL].store(self.tail, Ordering::Release);
        requeued
    }
}

/// A worker's claim: `count` consecutive positions starting at `start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim {
    /// First position.
    pub start: u32,
    /// How many.
    pub count: u32,
}

/// Claims up to `max` published positions with one CAS on the head. `None` if nothing is
/// published. Retries on contention.
pub fn claim(mem: &dyn RingMemory, max: u32) -> Option<Claim> {
    let c = mem.control();
    let capacity = c[control::CAPACITY].load(Ordering::Relaxed);
    // Acquire on the head: it synchronises with the CAS of the worker that advanced it, so the
    // tail read next is at least the tail that worker saw.
    let mut head = c[control::HEAD].load(Ordering::Acquire);
    loop {
        let tail = c[control::TAIL].load(Ordering::Acquire);
        let avail = tail.wrapping_sub(head);
        if avail == 0 {
            return None;
        }
        if avail > capacity {
            // A head newer than the tail we read (possible only with a stale read): read again
            // rather than claim past the tail.
            head = c[control::HEAD].load(Ordering::Acquire);
            std::hint::spin_loop();
            continue;
        }
        let count = avail.min(max);
        match c[control::HEAD].compare_exchange_weak(
            head,
            head.wrapping_add(count),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => return Some(Claim { start: head, count }),
            Err(h) => head = h,
        }
    }
}

/// Whether anything is published and unclaimed.
pub fn has_work(mem: &dyn RingMemory) -> bool {
    let c = mem.control();
    c[control::TAIL].load(Ordering::Acquire) != c[control::HEAD].load(Ordering::Acquire)
}

/// A claimed slot's instruction words, read by the worker that claimed it.
#[derive(Clone, Copy, Debug)]
pub struct ClaimedSlot {
    /// Its position.
    pub position: u32,
    /// Already DONE or FAULT (the host rewound the head over it after a restart): the worker
    /// must skip it: not execute, complete or count it.
    pub finished: bool,
    /// The decoded instruction.
    pub slot: Slot,
    /// The reserved half of the tenant word (must be zero).
    pub tenant_reserved: u32,
    /// Whether its sequence word matched its position (false = a stale lap; it is faulted).
    pub seq_ok: bool,
}

/// Marks a claimed position CLAIMED and reads its words.
pub fn read_claimed(mem: &dyn RingMemory, position: u32) -> ClaimedSlot {
    let capacity = mem.control()[control::CAPACITY].load(Ordering::Relaxed);
    let w = &mem.slots()[slot_base(capacity, position)..][..SLOT_WORDS];
    let seq_ok = w[slot_word::SEQ].load(Ordering::Relaxed) == position;
    let st = w[slot_word::STATUS].load(Ordering::Acquire) & 0xff;
    let finished = st == status::DONE || st == status::FAULT;
    if !finished {
        w[slot_word::STATUS].store(status::CLAIMED, Ordering::Relaxed);
    }
    let mut raw = [0u32; 10];
    for (dst, src) in raw.iter_mut().zip(&w[slot_word::OP..slot_word::RES0]) {
        *dst = src.load(Ordering::Relaxed);
    }
    let (slot, tenant_reserved) = Slot::decode(&raw);
    ClaimedSlot {
        position,
        finished,
        slot,
        tenant_reserved,
        seq_ok,
    }
}

/// Writes a claimed slot's results and its final status (release), making it reapable.
pub fn complete(mem: &dyn RingMemory, position: u32, outcome: Result<[u32; 4], Fault>) {
    let capacity = mem.control()[control::CAPACITY].load(Ordering::Relaxed);
    let w = &mem.slots()[slot_base(capacity, position)..][..SLOT_WORDS];
    let (st, res) = match outcome {
        Ok(r) => (status::DONE, r),
        Err(f) => (
            status::FAULT | u32::from(f.code as u8) << 8,
            [f.detail, f.at, 0, 0],
        ),
    };
    for (dst, v) in w[slot_word::RES0..].iter().zip(res) {
        dst.store(v, Ordering::Relaxed);
    }
    w[slot_word::STATUS].store(st, Ordering::Release);
}

/// Per-batch counters a worker accumulates locally and flushes once per claim, so that
/// counting never makes workers contend on the control block per slot.
#[derive(Clone, Debug)]
pub struct BatchCounters {
    done: u32,
    faults: u32,
    ops: [u32; COUNTED_OPCODES + 1],
}

impl Default for BatchCounters {
    fn default() -> Self {
        BatchCounters {
            done: 0,
            faults: 0,
            ops: [0; COUNTED_OPCODES + 1],
        }
    }
}

impl BatchCounters {
    /// Counts one finished slot.
    pub fn record(&mut self, op: u16, faulted: bool) {
        self.done += 1;
        self.faults += u32::from(faulted);
        self.ops[usize::from(op).min(COUNTED_OPCODES)] += 1;
    }

    /// Adds the counts to the control block and clears them.
    pub fn flush(&mut self, mem: &dyn RingMemory) {
        let c = mem.control();
        for (i, n) in self.ops.iter_mut().enumerate().filter(|(_, n)| **n != 0) {
            c[control::OP_COUNTERS + i].fetch_add(*n, Ordering::Relaxed);
            *n = 0;
        }
        if self.faults != 0 {
            c[control::FAULT_COUNT].fetch_add(self.faults, Ordering::Relaxed);
        }
        c[control::DONE_COUNT].fetch_add(self.done, Ordering::Release);
        c[control::HEARTBEAT].fetch_add(1, Ordering::Relaxed);
        self.done = 0;
        self.faults = 0;
    }
}

/// A record read back from the debug log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DebugRecord {
    /// Ring position of the slot that logged it.
    pub position: u32,
    /// Its tenant word.
    pub tenant: u32,
    /// Its opcode word.
    pub op_word: u32,
    /// The four logged words.
    pub words: [u32; 4],
}

/// Appends a debug record (a bounded multi-producer queue: reserve an index by CAS, write,
/// then publish with the record's sequence word). Returns false and counts a drop when full.
pub fn debug_append(mem: &dyn RingMemory, position: u32, slot: &Slot, words: [u32; 4]) -> bool {
    let c = mem.control();
    let cap = c[control::DEBUG_CAPACITY].load(Ordering::Relaxed);
    let mut w = c[control::DEBUG_WRITE].load(Ordering::Relaxed);
    loop {
        let r = c[control::DEBUG_READ].load(Ordering::Acquire);
        // Signed: a write cursor read before the host drained past it looks negative, not full.
        if w.wrapping_sub(r) as i32 >= cap as i32 {
            c[control::DEBUG_DROPPED].fetch_add(1, Ordering::Relaxed);
            return false;
        }
        match c[control::DEBUG_WRITE].compare_exchange_weak(
            w,
            w.wrapping_add(1),
            Ordering::AcqRel,
            Ordering::Relaxed,
        ) {
            Ok(_) => break,
            Err(cur) => w = cur,
        }
    }
    let rec = &mem.debug_log()[(w & (cap - 1)) as usize * debug_record::RECORD_WORDS..]
        [..debug_record::RECORD_WORDS];
    rec[debug_record::POSITION].store(position, Ordering::Relaxed);
    rec[debug_record::TENANT].store(slot.tenant_word(), Ordering::Relaxed);
    rec[debug_record::OP].store(slot.op_word(), Ordering::Relaxed);
    for (i, v) in words.into_iter().enumerate() {
        rec[debug_record::WORDS + i].store(v, Ordering::Relaxed);
    }
    rec[debug_record::SEQ].store(w.wrapping_add(1), Ordering::Release);
    true
}

/// Reads every complete debug record in order and frees their places (host side; one
/// reader at a time).
pub fn debug_drain(mem: &dyn RingMemory) -> Vec<DebugRecord> {
    let c = mem.control();
    let cap = c[control::DEBUG_CAPACITY].load(Ordering::Relaxed);
    let mut r = c[control::DEBUG_READ].load(Ordering::Relaxed);
    let mut out = Vec::new();
    loop {
        let rec = &mem.debug_log()[(r & (cap - 1)) as usize * debug_record::RECORD_WORDS..]
            [..debug_record::RECORD_WORDS];
        if rec[debug_record::SEQ].load(Ordering::Acquire) != r.wrapping_add(1) {
            break;
        }
        out.push(DebugRecord {
            position: rec[debug_record::POSITION].load(Ordering::Relaxed),
            tenant: rec[debug_record::TENANT].load(Ordering::Relaxed),
            op_word: rec[debug_record::OP].load(Ordering::Relaxed),
            words: std::array::from_fn(|i| rec[debug_record::WORDS + i].load(Ordering::Relaxed)),
        });
        r = r.wrapping_add(1);
    }
    c[control::DEBUG_READ].store(r, Ordering::Release);
    out
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use vyre_isa::SlotOp;

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("pool")
    }

    /// A worker's completion of `p`, as a backend would write it.
    fn finish(mem: &dyn RingMemory, p: u32) {
        let s = read_claimed(mem, p);
        assert!(s.seq_ok, "position {p}");
        complete(mem, p, Ok([s.slot.args[0], p, 7, 0]));
    }

    #[test]
    fn published_lines_carry_the_stamp_and_reaping_writes_nothing() {
        let mem = HeapRing::new(4, 2);
        let start = u32::MAX - 1; // positions 0xffff_fffe, 0xffff_ffff, 0, 1 (stamp of 0 is 1)
        initialize(&mem, 4, 2, start);
        let mut host = HostRing::new(4, start);
        let slots: Vec<Slot> = (0..4).map(|i| Slot::new(SlotOp::Nop, &[i])).collect();
        for _lap in 0..3 {
            let first = host.tail();
            assert_eq!(host.publish(&mem, &slots), 4);
            for k in 0..4u32 {
                let p = first.wrapping_add(k);
                let w = &mem.slots()[slot_base(4, p)..][..SLOT_WORDS];
                assert_eq!(w[RES3].load(Ordering::Relaxed), status::publish_stamp(p));
                assert_ne!(status::publish_stamp(p), 0);
                assert_ne!(
                    status::publish_stamp(p),
                    status::publish_stamp(p.wrapping_sub(4))
                );
                assert_eq!(
                    w[slot_word::STATUS].load(Ordering::Relaxed),
                    status::PUBLISHED
                );
            }
            // Two finish with results (RES3 written as 0), two as a light op would: status
            // only, the stamp left in RES3; both read back with a zero fourth word.
            finish(&mem, first);
            finish(&mem, first.wrapping_add(2));
            for k in [1u32, 3] {
                let w = &mem.slots()[slot_base(4, first.wrapping_add(k))..][..SLOT_WORDS];
                w[slot_word::STATUS].store(status::DONE, Ordering::Release);
            }
            let before: Vec<u32> = mem
                .slots()
                .iter()
                .map(|w| w.load(Ordering::Relaxed))
                .collect();
            let mut got = Vec::new();
            assert_eq!(host.reap(&mem, |c| got.push(c)), 4);
            let after: Vec<u32> = mem
                .slots()
                .iter()
                .map(|w| w.load(Ordering::Relaxed))
                .collect();
            assert_eq!(before, after, "reaping is read-only");
            let want: Vec<[u32; 4]> = vec![
                [0, first, 7, 0],
                [0; 4],
                [2, first.wrapping_add(2), 7, 0],
                [0; 4],
            ];
            assert_eq!(got.iter().map(|c| c.results()).collect::<Vec<_>>(), want);
        }
    }

    #[test]
    fn a_partly_finished_range_is_reaped_up_to_its_first_unfinished_slot() {
        let n = PARALLEL_MIN * 4;
        let cap = n as u32;
        let pool = pool(2);
        let mem = HeapRing::new(cap, 2);
        initialize(&mem, cap, 2, 5);
        let mut host = HostRing::new(cap, 5);
        let slots: Vec<Slot> = (0..n as u32)
            .map(|i| Slot::new(SlotOp::Nop, &[i]))
            .collect();
        assert_eq!(host.publish_on(&mem, &slots, Some(&pool)), n);
        // The first 2.5 quarters finish: the probe finds half the range finished and reads it
        // together; the rest is read one by one up to the first unfinished slot.
        let done = PARALLEL_MIN * 5 / 2;
        for k in 0..done as u32 {
            finish(&mem, 5 + k);
        }
        let mut out = Vec::new();
        let mut got = 0;
        while got < done {
            let k = host.reap_into(&mem, host.tail(), &mut out, Some(&pool), true);
            assert!(k > 0);
            got += k;
        }
        assert_eq!(got, done);
        assert_eq!(
            host.reap_into(&mem, host.tail(), &mut out, Some(&pool), true),
            0
        );
        assert!(out
            .iter()
            .enumerate()
            .all(|(k, c)| c.position == 5 + k as u32));
    }

    #[test]
    fn parallel_publish_and_reap_match_the_serial_paths() {
        let n = PARALLEL_MIN * 2 + 123;
        let cap = (2 * n).next_power_of_two() as u32;
        let pool = pool(3);
        let slots: Vec<Slot> = (0..n as u32)
            .map(|i| Slot::new(SlotOp::Nop, &[i]))
            .collect();
        for whole in [false, true] {
            let (a, b) = (HeapRing::new(cap, 2), HeapRing::new(cap, 2));
            let start = u32::MAX - 1000;
            initialize(&a, cap, 2, start);
            initialize(&b, cap, 2, start);
            let (mut ha, mut hb) = (HostRing::new(cap, start), HostRing::new(cap, start));
            if whole {
                assert!(ha.publish_whole(&a, &slots));
                assert!(hb.publish_whole_on(&b, &slots, Some(&pool)));
            } else {
                assert_eq!(ha.publish(&a, &slots), n);
                assert_eq!(hb.publish_on(&b, &slots, Some(&pool)), n);
            }
            let words = |m: &HeapRing| -> Vec<u32> {
                m.slots()
                    .iter()
                    .map(|w| w.load(Ordering::Relaxed))
                    .collect()
            };
            assert_eq!(words(&a), words(&b), "whole = {whole}");
            assert_eq!(
                b.control()[control::TAIL].load(Ordering::Relaxed),
                start.wrapping_add(n as u32)
            );
            // Everything but one slot in the middle finishes; the last slot is finished, so
            // the parallel path runs and must stop at the unfinished one.
            let gap = start.wrapping_add(PARALLEL_MIN as u32 + 17);
            for k in 0..n as u32 {
                let p = start.wrapping_add(k);
                if p != gap {
                    finish(&b, p);
                }
            }
            let mut out = vec![Completion {
                position: 0,
                outcome: Outcome::Done([9; 4]),
            }];
            let end = hb.tail();
            let got = hb.reap_into(&b, end, &mut out, Some(&pool), true);
            assert_eq!(got, PARALLEL_MIN + 17);
            assert_eq!(out.len(), 1 + got);
            assert_eq!(hb.reap_position(), gap);
            finish(&b, gap);
            assert_eq!(hb.reap_into(&b, end, &mut out, Some(&pool), true), n - got);
            for (k, c) in out[1..].iter().enumerate() {
                let p = start.wrapping_add(k as u32);
                assert_eq!(c.position, p);
                assert_eq!(c.results(), [k as u32, p, 7, 0]);
            }
        }
    }

    #[test]
    fn transplant_requeues_unfinished_slots_and_workers_skip_finished_ones() {
        let (old, new) = (HeapRing::new(8, 2), HeapRing::new(8, 2));
        initialize(&old, 8, 2, 6);
        let mut host = HostRing::new(8, 6);
        let slots: Vec<Slot> = (0..4).map(|i| Slot::new(SlotOp::Nop, &[i])).collect();
        assert_eq!(host.publish(&old, &slots), 4); // positions 6, 7, 8, 9 (slot indices wrap)
        let c = claim(&old, 3).unwrap();
        assert_eq!((c.start, c.count), (6, 3));
        for p in [6u32, 8] {
            let s = read_claimed(&old, p);
            complete(&old, p, Ok([s.slot.args[0], 0, 0, 0]));
        }
        let _ = read_claimed(&old, 7); // claimed, never finished: the device "hung" here
        let requeued = host.transplant(&old, &new, 2);
        assert_eq!(requeued, vec![(7, status::CLAIMED), (9, status::PUBLISHED)]);
        // A worker on the new ring claims from the reap position and skips finished slots.
        let c = claim(&new, 8).unwrap();
        assert_eq!((c.start, c.count), (6, 4));
        let mut ran = Vec::new();
        for p in 6..10u32 {
            let s = read_claimed(&new, p);
            assert!(s.seq_ok);
            if !s.finished {
                ran.push(p);
                complete(&new, p, Ok([s.slot.args[0] + 100, 0, 0, 0]));
            }
        }
        assert_eq!(ran, vec![7, 9]);
        let mut got = Vec::new();
        host.reap(&new, |c| got.push((c.position, c.results()[0])));
        assert_eq!(got, vec![(6, 0), (7, 101), (8, 2), (9, 103)]);
    }
}
