//! The I/O queue's ring side: request records (workers append, the host reads in order) and
//! resume entries (the host appends, workers take). PROTOCOL.md, "I/O queue (WAIT_IO)", is the
//! contract; the host thread that serves it is [`crate::io_service`].
//!
//! Neither queue needs a guard against lapping: a slot has at most one request or resume
//! entry outstanding, and at most `capacity` slots are unreaped, so `capacity` records
//! always suffice.

use crate::protocol::{control, io_request, io_resume, slot_word, status, SLOT_WORDS};
use crate::ring::RingMemory;
use crate::sync::{AtomicU32, Ordering};
use vyre_isa::io::IoRead;

fn capacity(mem: &dyn RingMemory) -> u32 {
    mem.control()[control::CAPACITY].load(Ordering::Relaxed)
}

fn record(mem: &dyn RingMemory, index: u32) -> &[AtomicU32] {
    let i = (index & (capacity(mem) - 1)) as usize;
    &mem.io_queue()[i * io_request::RECORD_WORDS..][..io_request::RECORD_WORDS]
}

fn entry(mem: &dyn RingMemory, index: u32) -> &[AtomicU32] {
    let cap = capacity(mem) as usize;
    let i = index as usize & (cap - 1);
    &mem.io_queue()[cap * io_request::RECORD_WORDS + i * io_resume::ENTRY_WORDS..]
        [..io_resume::ENTRY_WORDS]
}

/// Whether this ring memory has an I/O queue region (backends without one fault IO_READ
/// `unsupported`).
pub fn supported(mem: &dyn RingMemory) -> bool {
    !mem.io_queue().is_empty()
}

/// The number of registered files workers check IO_READ's file id against.
pub fn files(mem: &dyn RingMemory) -> u32 {
    mem.control()[control::IO_FILES].load(Ordering::Acquire)
}

/// Phase 1, worker side: marks the slot at `position` WAIT_IO, then appends its request
/// (fetch-add of IO_REQ_WRITE, words 1..8, then the sequence word with release ordering).
/// The status is stored first: once the record is visible the slot may be resumed and
/// completed at any moment.
pub fn request(mem: &dyn RingMemory, position: u32, req: &IoRead) {
    let cap = capacity(mem);
    let slot = &mem.slots()[(position & (cap - 1)) as usize * SLOT_WORDS..][..SLOT_WORDS];
    slot[slot_word::STATUS].store(status::WAIT_IO, Ordering::Relaxed);
    let i = mem.control()[control::IO_REQ_WRITE].fetch_add(1, Ordering::Relaxed);
    let r = record(mem, i);
    r[io_request::POSITION].store(position, Ordering::Relaxed);
    r[io_request::FILE].store(req.file, Ordering::Relaxed);
    r[io_request::OFF_LO].store(req.offset as u32, Ordering::Relaxed);
    r[io_request::OFF_HI].store((req.offset >> 32) as u32, Ordering::Relaxed);
    r[io_request::LEN].store(req.len, Ordering::Relaxed);
    r[io_request::BUF].store(req.buf, Ordering::Relaxed);
    r[io_request::BUF_OFF].store(req.buf_off, Ordering::Relaxed);
    r[io_request::SEQ].store(i.wrapping_add(1), Ordering::Release);
}

/// Whether a resume entry is waiting to be taken.
pub fn has_resume(mem: &dyn RingMemory) -> bool {
    let c = mem.control();
    !mem.io_queue().is_empty()
        && c[control::RESUME_TAIL].load(Ordering::Acquire)
            != c[control::RESUME_HEAD].load(Ordering::Acquire)
}

/// A resume entry a worker took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resume {
    /// The waiting slot's position.
    pub position: u32,
    /// Bytes read, or [`io_resume::ERROR`] | errno.
    pub result: u32,
}

/// Phase 2, worker side: takes the next resume entry (CAS of RESUME_HEAD), if any.
pub fn take_resume(mem: &dyn RingMemory) -> Option<Resume> {
    if mem.io_queue().is_empty() {
        return None;
    }
    let c = mem.control();
    let mut head = c[control::RESUME_HEAD].load(Ordering::Acquire);
    loop {
        let tail = c[control::RESUME_TAIL].load(Ordering::Acquire);
        if tail == head {
            return None;
        }
        match c[control::RESUME_HEAD].compare_exchange_weak(
            head,
            head.wrapping_add(1),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => {
                let e = entry(mem, head);
                return Some(Resume {
                    position: e[io_resume::POSITION].load(Ordering::Relaxed),
                    result: e[io_resume::RESULT].load(Ordering::Relaxed),
                });
            }
            Err(h) => head = h,
        }
    }
}

/// A request the host read from the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// The waiting slot's position.
    pub position: u32,
    /// File id.
    pub file: u32,
    /// File offset.
    pub offset: u64,
    /// Bytes asked for.
    pub len: u32,
    /// Destination buffer.
    pub buf: u32,
    /// Destination offset.
    pub buf_off: u32,
}

/// The host's side of one ring's I/O queue: its request cursor and resume tail (mirrored
/// into IO_REQ_READ and RESUME_TAIL).
#[derive(Clone, Copy, Debug, Default)]
pub struct HostQueue {
    read: u32,
    resume_tail: u32,
}

impl HostQueue {
    /// The host side of a freshly initialised ring (both cursors at 0).
    pub fn new() -> HostQueue {
        HostQueue::default()
    }

    /// The next complete request, in order, if its record's sequence word says it is written.
    pub fn next_request(&mut self, mem: &dyn RingMemory) -> Option<Request> {
        if mem.io_queue().is_empty() {
            return None;
        }
        let r = record(mem, self.read);
        if r[io_request::SEQ].load(Ordering::Acquire) != self.read.wrapping_add(1) {
            return None;
        }
        let w = |i: usize| r[i].load(Ordering::Relaxed);
        let req = Request {
            position: w(io_request::POSITION),
            file: w(io_request::FILE),
            offset: u64::from(w(io_request::OFF_LO)) | u64::from(w(io_request::OFF_HI)) << 32,
            len: w(io_request::LEN),
            buf: w(io_request::BUF),
            buf_off: w(io_request::BUF_OFF),
        };
        self.read = self.read.wrapping_add(1);
        mem.control()[control::IO_REQ_READ].store(self.read, Ordering::Release);
        Some(req)
    }

    /// Pushes a resume entry (its words, then RESUME_TAIL with release ordering). The bytes
    /// must already be in the buffer and visible to workers.
    pub fn push_resume(&mut self, mem: &dyn RingMemory, position: u32, result: u32) {
        let e = entry(mem, self.resume_tail);
        e[io_resume::POSITION].store(position, Ordering::Relaxed);
        e[io_resume::RESULT].store(result, Ordering::Relaxed);
        self.resume_tail = self.resume_tail.wrapping_add(1);
        mem.control()[control::RESUME_TAIL].store(self.resume_tail, Ordering::Release);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::ring::{claim, initialize, read_claimed, HeapRing, HostRing};
    use vyre_isa::{Slot, SlotOp};

    #[test]
    fn requests_and_resumes_round_trip_in_order_across_the_wrap() {
        let mem = HeapRing::new(4, 2);
        initialize(&mem, 4, 2, u32::MAX - 1);
        let mut host = HostRing::new(4, u32::MAX - 1);
        let mut q = HostQueue::new();
        for lap in 0..3u32 {
            let slots: Vec<Slot> = (0..4)
                .map(|i| Slot::new(SlotOp::IoRead, &[1, i, lap, 8, 1, 0, 0]))
                .collect();
            assert_eq!(host.publish(&mem, &slots), 4);
            let c = claim(&mem, 4).unwrap();
            // Requests appended out of position order are still read in append order.
            for k in [2u32, 0, 3, 1] {
                let p = c.start.wrapping_add(k);
                let s = read_claimed(&mem, p);
                request(&mem, p, &IoRead::from_args(&s.slot.args));
            }
            assert!(host
                .unfinished(&mem)
                .iter()
                .all(|&(_, st)| st == status::WAIT_IO));
            let mut got = Vec::new();
            while let Some(r) = q.next_request(&mem) {
                got.push((r.position.wrapping_sub(c.start), r.offset, r.len));
                q.push_resume(&mem, r.position, r.len - 1);
            }
            let want: Vec<_> = [2u64, 0, 3, 1]
                .iter()
                .map(|&k| (k as u32, k | u64::from(lap) << 32, 8))
                .collect();
            assert_eq!(got, want);
            let mut resumed = Vec::new();
            while let Some(r) = take_resume(&mem) {
                resumed.push(r.position.wrapping_sub(c.start));
                crate::ring::complete(&mem, r.position, Ok([r.result, 0, 0, 0]));
            }
            assert_eq!(resumed, vec![2, 0, 3, 1]);
            assert!(!has_resume(&mem));
            let mut done = Vec::new();
            host.reap(&mem, |c| done.push(c.results()[0]));
            assert_eq!(done, vec![7; 4]);
        }
        assert_eq!(
            mem.control()[control::IO_REQ_READ].load(Ordering::Relaxed),
            12
        );
        assert_eq!(
            mem.control()[control::IO_REQ_WRITE].load(Ordering::Relaxed),
            12
        );
    }

    #[test]
    fn a_record_is_not_read_before_its_sequence_word() {
        let mem = HeapRing::new(2, 2);
        initialize(&mem, 2, 2, 0);
        let mut q = HostQueue::new();
        // Index taken and words written, sequence word not yet stored.
        mem.control()[control::IO_REQ_WRITE].store(1, Ordering::Relaxed);
        record(&mem, 0)[io_request::LEN].store(5, Ordering::Relaxed);
        assert_eq!(q.next_request(&mem), None);
        record(&mem, 0)[io_request::SEQ].store(1, Ordering::Release);
        assert_eq!(q.next_request(&mem).map(|r| r.len), Some(5));
        record(&mem, 1)[io_request::SEQ].store(2, Ordering::Release);
        assert!(q.next_request(&mem).is_some());
        // Record 2 shares record 0's place, whose sequence word (1) is a lap old.
        assert_eq!(q.next_request(&mem), None);
    }
}
