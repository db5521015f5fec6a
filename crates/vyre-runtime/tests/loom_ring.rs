//! Loom model of the ring protocol: host publish and reap racing worker claim and complete,
//! across the u32 position wrap and a slot reuse. Run with
//! `RUSTFLAGS="--cfg loom" cargo test -p vyre-runtime --test loom_ring --release`.

#![cfg(loom)]

use loom::sync::Arc;
use loom::thread;
use vyre_isa::{Slot, SlotOp};
use vyre_runtime::ring::{self, HeapRing, HostRing, Outcome, RingMemory};

/// Executes a claimed slot the way every worker must: echo ARG0 and the position, so the host
/// can check that the worker saw exactly what was published at that position.
fn work(mem: &dyn RingMemory, max: u32) -> u32 {
    let Some(c) = ring::claim(mem, max) else {
        return 0;
    };
    for k in 0..c.count {
        let p = c.start.wrapping_add(k);
        let s = ring::read_claimed(mem, p);
        assert!(s.seq_ok, "slot at position {p} has a stale sequence number");
        ring::complete(mem, p, Ok([s.slot.args[0], p, 0, 0]));
    }
    c.count
}

fn slot(tag: u32) -> Slot {
    Slot::new(SlotOp::Nop, &[tag])
}

#[test]
fn publish_claim_complete_reap_across_wrap_and_reuse() {
    loom::model(|| {
        let start = u32::MAX; // position u32::MAX then 0: crosses the wrap
        let mem = Arc::new(HeapRing::new(2, 2));
        ring::initialize(mem.as_ref(), 2, 2, start);
        let mut host = HostRing::new(2, start);
        assert_eq!(host.publish(mem.as_ref(), &[slot(10), slot(11)]), 2);
        assert_eq!(
            host.publish(mem.as_ref(), &[slot(12)]),
            0,
            "ring of 2 is full"
        );

        // Two workers race for the two published slots (one claim attempt each, one slot max).
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let m = mem.clone();
                thread::spawn(move || work(m.as_ref(), 1))
            })
            .collect();
        // The host reaps concurrently: whatever it sees finished must be complete.
        let mut seen = Vec::new();
        host.reap(mem.as_ref(), |c| seen.push(c));
        let claimed: u32 = workers.into_iter().map(|w| w.join().unwrap()).sum();
        // Finish anything no worker got (the model's workers try only once).
        let mut rest = claimed;
        while rest < 2 {
            rest += work(mem.as_ref(), 2);
        }
        host.reap(mem.as_ref(), |c| seen.push(c));
        assert_eq!(seen.len(), 2);
        for (i, c) in seen.iter().enumerate() {
            let p = start.wrapping_add(i as u32);
            assert_eq!(c.position, p);
            assert_eq!(
                c.outcome,
                Outcome::Done([10 + i as u32, p, 0, 0]),
                "each slot ran once, with its own words"
            );
        }

        // Reuse: the first slot index comes around again at position start + 2.
        let m = mem.clone();
        let worker = thread::spawn(move || work(m.as_ref(), 2));
        assert_eq!(host.publish(mem.as_ref(), &[slot(12)]), 1);
        let got = worker.join().unwrap();
        if got == 0 {
            assert_eq!(work(mem.as_ref(), 2), 1);
        }
        let mut last = Vec::new();
        host.reap(mem.as_ref(), |c| last.push(c));
        assert_eq!(last.len(), 1);
        assert_eq!(
            last[0].outcome,
            Outcome::Done([12, start.wrapping_add(2), 0, 0])
        );
        assert_eq!(host.outstanding(), 0);
    });
}

#[test]
fn debug_log_is_bounded_and_counts_drops() {
    loom::model(|| {
        let mem = Arc::new(HeapRing::new(2, 2));
        ring::initialize(mem.as_ref(), 2, 2, 0);
        let writers: Vec<_> = (0..3u32)
            .map(|i| {
                let m = mem.clone();
                thread::spawn(move || ring::debug_append(m.as_ref(), i, &slot(i), [i, 0, 0, 0]))
            })
            .collect();
        let written = writers
            .into_iter()
            .map(|w| w.join().unwrap())
            .filter(|&ok| ok)
            .count();
        assert_eq!(written, 2, "a log of 2 takes exactly 2 of 3 records");
        let recs = ring::debug_drain(mem.as_ref());
        assert_eq!(recs.len(), 2);
        let dropped = mem.control()[vyre_runtime::protocol::control::DEBUG_DROPPED]
            .load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(dropped, 1);
    });
}

#[test]
fn debug_log_drain_racing_appends_never_drops_a_record_that_fits() {
    // Two appenders and a concurrent drain on a log of 2: both records fit, so none may be
    // dropped, whatever the interleaving (a write cursor read before the drain moved the read
    // cursor must not make the log look full).
    loom::model(|| {
        let mem = Arc::new(HeapRing::new(2, 2));
        ring::initialize(mem.as_ref(), 2, 2, 0);
        let m = mem.clone();
        let first =
            thread::spawn(move || ring::debug_append(m.as_ref(), 0, &slot(0), [0, 0, 0, 0]));
        let m = mem.clone();
        let drainer = thread::spawn(move || ring::debug_drain(m.as_ref()).len());
        let m = mem.clone();
        let second =
            thread::spawn(move || ring::debug_append(m.as_ref(), 1, &slot(1), [1, 0, 0, 0]));
        assert!(
            first.join().unwrap() && second.join().unwrap(),
            "a record that fits was dropped"
        );
        let drained = drainer.join().unwrap() + ring::debug_drain(mem.as_ref()).len();
        assert_eq!(drained, 2);
        let dropped = mem.control()[vyre_runtime::protocol::control::DEBUG_DROPPED]
            .load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(dropped, 0);
    });
}
