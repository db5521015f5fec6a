//! Behaviour of the Megakernel host API on the cpu backend: bad input is rejected or
//! faulted without losing other work; shutdown accounts for every slot.

use std::sync::Arc;
use std::time::Duration;
use vyre_cpu::CpuBackend;
use vyre_isa::{FaultCode, Slot, SlotOp};
use vyre_runtime::{Completion, Config, ErrorKind, Megakernel, Outcome, PublishRejection};

/// Counters are added after a batch's statuses, so they may lag the completions briefly.
fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while !cond() {
        if start.elapsed() > Duration::from_secs(5) {
            return false;
        }
        std::thread::yield_now();
    }
    true
}

fn launch(config: Config) -> Megakernel {
    Megakernel::launch(Arc::new(CpuBackend::new()), config).expect("launch")
}

#[test]
fn tenant_and_priority_out_of_range_are_rejected_at_publish_and_nothing_is_published() {
    let mk = launch(Config {
        tenants: 2,
        ..Config::default()
    });
    let good = Slot::new(SlotOp::Nop, &[]);
    let batch = [good, good.with_tenant(1), good.with_tenant(2), good];
    let err = mk.publish_batch(&batch).unwrap_err();
    match err.kind() {
        ErrorKind::Publish {
            index: 2,
            reason:
                PublishRejection::Tenant {
                    tenant: 2,
                    tenants: 2,
                },
        } => {}
        other => panic!("unexpected error {other:?}"),
    }
    assert!(
        err.to_string().contains("tenant 2 is out of range"),
        "{err}"
    );
    let err = mk.publish(good.with_priority(8)).unwrap_err();
    assert!(
        matches!(
            err.kind(),
            ErrorKind::Publish {
                index: 0,
                reason: PublishRejection::Priority {
                    priority: 8,
                    max: 7
                }
            }
        ),
        "{err:?}"
    );
    // Nothing of the rejected batches reached the ring: the next ticket is 0 and runs.
    let t = mk.publish(good.with_tenant(1).with_priority(7)).unwrap();
    assert_eq!(t, 0);
    assert_eq!(mk.wait(t).unwrap().outcome, Outcome::Done([0; 4]));
    assert!(
        eventually(|| mk.done_count() == 1),
        "done count {}",
        mk.done_count()
    );
}

#[test]
fn a_large_batch_with_a_bad_slot_is_rejected_whole_by_the_pools_check() {
    // Large enough for the host pool's overlapped run_batch, which checks the slots in
    // parallel: the error names the first bad slot and nothing of the batch runs, whether the
    // batch fits in the ring (1 << 16) or not (1 << 12).
    for capacity in [1 << 16, 1 << 12] {
        let mk = launch(Config {
            tenants: 2,
            capacity,
            host_threads: Some(3),
            ..Config::default()
        });
        let good = Slot::new(SlotOp::Nop, &[]);
        let mut batch = vec![good; 40_000];
        batch[30_000] = good.with_priority(9);
        batch[25_000] = good.with_tenant(5);
        let err = mk.run_batch(&batch).unwrap_err();
        assert!(
            matches!(
                err.kind(),
                ErrorKind::Publish {
                    index: 25_000,
                    reason: PublishRejection::Tenant {
                        tenant: 5,
                        tenants: 2
                    }
                }
            ),
            "{err:?}"
        );
        batch[25_000] = good.with_tenant(1);
        let got = mk.run_batch(&batch[..30_000]).expect("the good part runs");
        assert_eq!(got.len(), 30_000);
        assert_eq!(got[0].position, 0, "the rejected batch took no positions");
        assert!(got.iter().all(|c| c.outcome == Outcome::Done([0; 4])));
        assert!(
            eventually(|| mk.done_count() == 30_000),
            "done count {}",
            mk.done_count()
        );
    }
}

#[test]
fn malformed_bytecode_is_rejected_with_its_position() {
    let mk = launch(Config::default());
    let mut bytes = vec![0u8; 24]; // three HALTs
    bytes[16] = 0xee;
    let err = mk.load_program(&bytes).unwrap_err();
    match err.kind() {
        ErrorKind::Program(e) => assert_eq!(e.position(), 16),
        other => panic!("unexpected error {other:?}"),
    }
    assert!(err.to_string().contains("at byte 16"), "{err}");
}

#[test]
fn a_faulting_slot_does_not_stop_the_workers() {
    let mk = launch(Config {
        workers: Some(1),
        ..Config::default()
    });
    let buf = mk.create_buffer(16).unwrap();
    let slots = [
        Slot::new(SlotOp::LoadU32, &[buf + 100, 0]), // no such handle
        Slot::new(SlotOp::StoreU32, &[buf, 16, 1]),  // one past the end
        Slot {
            op: 0x3f,
            ..Slot::default()
        }, // unknown opcode
        Slot::new(SlotOp::StoreU32, &[buf, 12, 7]),
        Slot::new(SlotOp::LoadU32, &[buf, 12]),
    ];
    let done = mk.run_batch(&slots).unwrap();
    let codes: Vec<_> = done.iter().map(|c| c.outcome).collect();
    assert_eq!(
        codes[0],
        Outcome::Fault(vyre_isa::Fault::new(FaultCode::BadHandle, buf + 100))
    );
    assert_eq!(
        codes[1],
        Outcome::Fault(vyre_isa::Fault::new(FaultCode::OutOfBounds, 16))
    );
    assert_eq!(
        codes[2],
        Outcome::Fault(vyre_isa::Fault::new(FaultCode::UnknownOpcode, 0x3f))
    );
    assert_eq!(codes[4], Outcome::Done([7, 0, 0, 0]));
    assert!(eventually(|| mk.stats().done == 5));
    let stats = mk.stats();
    assert_eq!((stats.done, stats.faults), (5, 3));
    assert_eq!(stats.op_counts[SlotOp::LoadU32 as usize], 2);
    assert_eq!(stats.op_counts[vyre_isa::slot::COUNTED_OPCODES], 0);
}

#[test]
fn shutdown_opcode_stops_workers_and_later_slots_are_reported_lost_not_dropped() {
    let mk = launch(Config {
        workers: Some(1),
        claim_batch: 1,
        ..Config::default()
    });
    let mut slots = vec![Slot::new(SlotOp::Nop, &[]); 3];
    slots.push(Slot::new(SlotOp::Shutdown, &[]));
    slots.extend(std::iter::repeat_n(Slot::new(SlotOp::Nop, &[]), 50));
    let tickets = mk.publish_batch(&slots).unwrap();
    let done = mk.wait_range(tickets).unwrap();
    assert_eq!(
        done.len(),
        slots.len(),
        "every published slot has an outcome"
    );
    assert!(done[..4]
        .iter()
        .all(|c| matches!(c.outcome, Outcome::Done(_))));
    let lost = done
        .iter()
        .filter(|c| matches!(c.outcome, Outcome::Fault(f) if f.code == FaultCode::Lost))
        .count();
    let ran = done
        .iter()
        .filter(|c| matches!(c.outcome, Outcome::Done(_)))
        .count();
    assert_eq!(lost + ran, slots.len());
    assert!(
        lost >= 49,
        "one worker claiming one slot at a time stops right after SHUTDOWN; lost {lost}"
    );
    assert!(mk.health().stopped);
    assert!(matches!(
        mk.publish(Slot::new(SlotOp::Nop, &[])).unwrap_err().kind(),
        ErrorKind::Stopped
    ));
    mk.shutdown().unwrap();
}

#[test]
fn shutdown_drains_published_work_first() {
    let mk = launch(Config::default());
    let buf = mk.create_buffer(4).unwrap();
    let slots = vec![Slot::new(SlotOp::AtomicAdd, &[buf, 0, 1]); 10_000];
    mk.publish_batch(&slots[..3000]).unwrap();
    let report = mk.shutdown().unwrap();
    assert!(report.lost.is_empty(), "{report:?}");
    assert_eq!(report.drained, 3000);
    assert_eq!(mk.read_buffer(buf, 0, 4).unwrap(), 3000u32.to_le_bytes());
    assert!(matches!(
        mk.publish(slots[0]).unwrap_err().kind(),
        ErrorKind::Stopped
    ));
}

#[test]
fn concurrent_host_publishers_lose_nothing() {
    let mk = Arc::new(launch(Config {
        capacity: 64,
        workers: Some(2),
        ..Config::default()
    }));
    let buf = mk.create_buffer(4).unwrap();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let mk = mk.clone();
            std::thread::spawn(move || {
                let slots = vec![Slot::new(SlotOp::AtomicAdd, &[buf, 0, 1]); 2500];
                let done = mk.run_batch(&slots).unwrap();
                assert!(done.iter().all(|c| matches!(c.outcome, Outcome::Done(_))));
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(mk.read_buffer(buf, 0, 4).unwrap(), 10_000u32.to_le_bytes());
    assert!(
        eventually(|| mk.done_count() == 10_000),
        "done count {}",
        mk.done_count()
    );
}

#[test]
fn wait_timeout_reports_and_the_slot_still_completes() {
    let mk = launch(Config {
        step_budget: 1 << 40,
        workers: Some(1),
        ..Config::default()
    });
    // A loop of 2^21 iterations: long enough to outlast a 1 ms wait.
    let m = vyre_isa::assemble(
        ".program p\n movi r1, 0x200000\ntop:\n addi r1, r1, -1\n bnez r1, top\n halt\n.end\n",
    )
    .unwrap();
    let id = mk.load_program(&m.programs[0].bytecode).unwrap();
    let t = mk.publish(Slot::new(SlotOp::Exec, &[id])).unwrap();
    let err = mk
        .wait_timeout(t, Some(Duration::from_millis(1)))
        .unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::Timeout { ticket: 0, .. }),
        "{err:?}"
    );
    let c = mk.wait(t).unwrap();
    assert_eq!(c.results()[2], 1 + 2 * 0x200000 + 1);
}

#[test]
fn workers_and_heartbeat_are_visible_in_health() {
    let mk = Megakernel::launch(
        Arc::new(CpuBackend::new().with_workers(3)),
        Config::default(),
    )
    .unwrap();
    mk.run_batch(&vec![Slot::new(SlotOp::Nop, &[]); 1000])
        .unwrap();
    let h = mk.health();
    assert_eq!(h.workers_running, 3);
    assert!(h.heartbeat > 0 && !h.stopped && h.failure.is_none());
    mk.shutdown().unwrap();
    let h = mk.health();
    assert_eq!(h.workers_running, 0);
    assert!(h.stopped);
}

#[test]
fn debug_log_overflow_is_counted() {
    let mk = launch(Config {
        debug_capacity: 4,
        ..Config::default()
    });
    let slots: Vec<_> = (0..10)
        .map(|i| Slot::new(SlotOp::DebugLog, &[i, 0, 0, 0]))
        .collect();
    let done = mk.run_batch(&slots).unwrap();
    let written = done.iter().filter(|c| c.results()[0] == 1).count();
    assert_eq!(written, 4);
    assert_eq!(mk.stats().debug_dropped, 6);
    let recs = mk.drain_debug_log();
    assert_eq!(recs.len(), 4);
    // Drained records free their places.
    let t = mk
        .publish(Slot::new(SlotOp::DebugLog, &[99, 0, 0, 0]))
        .unwrap();
    assert_eq!(mk.wait(t).unwrap().results()[0], 1);
    assert_eq!(mk.drain_debug_log()[0].words[0], 99);
}

#[test]
fn bad_configuration_is_a_clear_error() {
    let err = Megakernel::launch(
        Arc::new(CpuBackend::new()),
        Config {
            capacity: 1000,
            ..Config::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("power of two"), "{err}");
}

#[test]
fn watchdog_declares_a_hang_and_restart_requeues_every_unfinished_slot() {
    let config = Config {
        watchdog: Some(Duration::from_millis(200)),
        claim_batch: 4,
        ..Config::default()
    };
    let mk = Megakernel::launch(Arc::new(CpuBackend::new().with_workers(2)), config).unwrap();
    let buf = mk.create_buffer(4).unwrap();
    // A host buffer (recreated as one by the restart) keeps its handle and contents too.
    let host = mk
        .create_host_buffer(8)
        .unwrap()
        .expect("cpu buffers are host memory");
    mk.write_buffer(host, 0, b"kept 7!!").unwrap();
    let add = Slot::new(SlotOp::AtomicAdd, &[buf, 0, 1]);
    assert_eq!(mk.run_batch(&[add; 10]).unwrap().len(), 10);
    mk.inject_hang();
    let tickets = mk.publish_batch(&[add; 100]).unwrap();
    let err = mk.wait_range(tickets.clone()).unwrap_err();
    let ErrorKind::Hung(report) = err.kind() else {
        panic!("expected a hang, got {err}")
    };
    assert_eq!(
        report.claimed.len() + report.unclaimed.len(),
        100,
        "{report:?}"
    );
    assert!(
        !report.claimed.is_empty() && report.claimed.len() <= 8,
        "two workers claim at most 4 each: {report:?}"
    );
    assert!(report.silent_for >= Duration::from_millis(200));
    assert!(
        err.to_string().contains("call Megakernel::restart"),
        "{err}"
    );
    // Nothing more is accepted until the restart.
    assert!(matches!(
        mk.publish(add).unwrap_err().kind(),
        ErrorKind::Hung(_)
    ));
    let restart = mk.restart(Arc::new(CpuBackend::new())).unwrap();
    assert_eq!(restart.requeued.len(), 100);
    assert_eq!(restart.possibly_partial, report.claimed);
    assert_eq!((restart.buffers, restart.programs), (2, 0));
    assert_eq!(mk.read_buffer(host, 0, 8).unwrap(), b"kept 7!!");
    // The same tickets complete on the new backend; every slot ran exactly once.
    let done = mk.wait_range(tickets).unwrap();
    assert!(done.iter().all(|c| matches!(c.outcome, Outcome::Done(_))));
    assert_eq!(mk.read_buffer(buf, 0, 4).unwrap(), 110u32.to_le_bytes());
    assert!(mk.hang_report().is_none());
    assert_eq!(mk.wait(mk.publish(add).unwrap()).unwrap().results()[0], 110);
    assert!(mk.shutdown().unwrap().lost.is_empty());
}

#[test]
fn a_hung_megakernel_shuts_down_reporting_every_unfinished_slot_lost() {
    let config = Config {
        watchdog: Some(Duration::from_millis(100)),
        ..Config::default()
    };
    let mk = Megakernel::launch(Arc::new(CpuBackend::new()), config).unwrap();
    mk.inject_hang();
    let tickets = mk
        .publish_batch(&[Slot::new(SlotOp::Nop, &[]); 20])
        .unwrap();
    assert!(matches!(
        mk.wait(tickets.start).unwrap_err().kind(),
        ErrorKind::Hung(_)
    ));
    let report = mk.shutdown().unwrap();
    assert_eq!(report.lost.len(), 20, "{report:?}");
}

#[test]
fn wait_all_takes_any_subset_in_the_order_given_and_leaves_the_rest() {
    let mk = launch(Config::default());
    let buf = mk.create_buffer(4 * 100).unwrap();
    let slots: Vec<Slot> = (0..100u32)
        .map(|i| Slot::new(SlotOp::AtomicAdd, &[buf, 4 * i, i + 1]))
        .collect();
    let t = mk.publish_batch(&slots).unwrap();
    // A shuffled subset with gaps: each completion is its own slot's (old value 0 → r0 = 0;
    // the position tells which slot it was).
    let pick: Vec<u64> = [97u64, 3, 50, 0, 64, 99]
        .iter()
        .map(|&k| t.start + k)
        .collect();
    let got = mk.wait_all(&pick).unwrap();
    assert_eq!(got.len(), pick.len());
    for (c, &ticket) in got.iter().zip(&pick) {
        assert!(matches!(c.outcome, Outcome::Done([0, 0, 0, 0])), "{c:?}");
        assert_eq!(u64::from(c.position), ticket - t.start, "{c:?}");
    }
    // The others are still there to take; a taken one is an error, not a hang.
    let rest: Vec<u64> = t.clone().filter(|x| !pick.contains(x)).collect();
    assert_eq!(mk.wait_all(&rest).unwrap().len(), 94);
    assert!(mk.wait_all(&[t.start + 3]).is_err());
    assert!(mk.wait_all(&[]).unwrap().is_empty());
    mk.shutdown().unwrap();
}

#[test]
fn a_large_batch_with_host_threads_returns_every_completion_in_order() {
    // Larger than the parallel threshold: written by the host pool while the workers run,
    // and read by the pool's threads together (the batch fits in the ring) or by the
    // calling thread as it goes (it does not), with a fault in the middle and slots of
    // other publishers interleaved between the batches.
    for (threads, capacity) in [(1, 1 << 14), (3, 1 << 14), (3, 1 << 16), (4, 1 << 17)] {
        let mk = launch(Config {
            capacity,
            host_threads: Some(threads),
            ..Config::default()
        });
        let n = 50_000u32;
        let data: Vec<u8> = (0..n).flat_map(|i| (i * 7 + 1).to_le_bytes()).collect();
        let buf = mk
            .create_buffer_with(data.len() as u64, &data)
            .expect("buffer");
        let mut slots: Vec<Slot> = (0..n)
            .map(|i| Slot::new(SlotOp::LoadU32, &[buf, 4 * i]))
            .collect();
        slots[20_001] = Slot::new(SlotOp::LoadU32, &[buf, 4 * n]); // out of bounds
        for round in 0..3 {
            // Round 1 has another publisher's slot, not yet taken, ahead of the batch.
            let other =
                (round == 1).then(|| mk.publish(Slot::new(SlotOp::Nop, &[])).expect("publish"));
            let got = if round == 1 {
                // Into a vector with room for the batch but fewer elements.
                let mut reused = Vec::with_capacity(n as usize + 10);
                let stale = Completion {
                    position: 3,
                    outcome: Outcome::Done([1; 4]),
                };
                reused.extend([stale; 5]);
                mk.run_batch_into(&slots, &mut reused)
                    .expect("run_batch_into");
                reused
            } else if round == 2 {
                // Into a vector reused from elsewhere: longer than the batch, stale contents.
                let stale = Completion {
                    position: 7,
                    outcome: Outcome::Done([9; 4]),
                };
                let mut reused = vec![stale; n as usize + 100];
                mk.run_batch_into(&slots, &mut reused)
                    .expect("run_batch_into");
                reused
            } else {
                mk.run_batch(&slots).expect("run_batch")
            };
            assert_eq!(got.len(), n as usize, "threads {threads} round {round}");
            for (i, c) in got.iter().enumerate() {
                match c.outcome {
                    Outcome::Done(r) => assert_eq!(r[0], i as u32 * 7 + 1, "slot {i}"),
                    Outcome::Fault(f) => {
                        assert_eq!((i, f.code), (20_001, FaultCode::OutOfBounds));
                    }
                }
            }
            if let Some(t) = other {
                assert!(matches!(
                    mk.wait(t).expect("other").outcome,
                    Outcome::Done(_)
                ));
            }
        }
        mk.shutdown().expect("shutdown");
    }
}

#[test]
fn a_hang_during_an_overlapped_batch_is_reported_not_waited_out() {
    // 1 << 12: larger than the ring, the writers wait for room that never comes. 1 << 15: the
    // batch fits, the pool's threads read it and spin on slots that never finish. Either way
    // the batch stalls and the general path reports the hang.
    for capacity in [1 << 12, 1 << 15] {
        let mk = launch(Config {
            capacity,
            host_threads: Some(3),
            watchdog: Some(Duration::from_millis(200)),
            ..Config::default()
        });
        let nop = Slot::new(SlotOp::Nop, &[]);
        assert_eq!(mk.run_batch(&vec![nop; 20_000]).unwrap().len(), 20_000);
        mk.inject_hang();
        let err = mk.run_batch(&vec![nop; 20_000]).unwrap_err();
        assert!(
            matches!(err.kind(), ErrorKind::Hung(_)),
            "capacity {capacity}: {err}"
        );
        let restart = mk.restart(Arc::new(CpuBackend::new())).unwrap();
        assert!(!restart.requeued.is_empty());
        mk.shutdown().unwrap();
    }
}

#[test]
fn staging_memory_is_copied_into_a_buffer_by_range() {
    let mk = Megakernel::launch(Arc::new(CpuBackend::new()), Config::default()).unwrap();
    let buf = mk.create_buffer(16).unwrap();
    let mut staging = mk.create_staging(32).unwrap();
    assert_eq!(staging.bytes().len(), 32);
    staging.bytes_mut()[8..16].copy_from_slice(b"abcdefgh");
    mk.write_from_staging(buf, 4, &*staging, 8..16).unwrap();
    assert_eq!(
        mk.read_buffer(buf, 0, 16).unwrap(),
        b"\0\0\0\0abcdefgh\0\0\0\0"
    );
    // A range past the buffer is the usual bounds error, not a panic.
    let err = mk.write_from_staging(buf, 12, &*staging, 0..8).unwrap_err();
    assert!(err.to_string().contains("outside buffer"), "{err}");
    mk.shutdown().unwrap();
}
