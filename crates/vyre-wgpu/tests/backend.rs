//! The wgpu backend beyond the conformance cases: the canary, limits and buffers split across
//! storage bindings, random slots (every opcode, DFA_SCAN on random tables, random EXEC
//! programs) against the cpu oracle, concurrent publishers, and shutdown draining.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use vyre_cpu::CpuBackend;
use vyre_isa::{Insn, Opcode, Program, Slot, SlotOp};
use vyre_runtime::{Backend, BackendError, Completion, Config, Megakernel};
use vyre_wgpu::WgpuMegakernelDispatcher;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u32 {
        (self.next() % n) as u32
    }
}

#[test]
fn canary_refuses_a_loop_cap_and_names_the_fix() {
    let n = vyre_wgpu::CANARY_ITERATIONS;
    let good = vyre_wgpu::canary_expected(n);
    assert!(vyre_wgpu::judge_canary("test", n, good, n).is_ok());
    // What Mesa 22.3 lavapipe does: the loop stops after 65,535 iterations.
    let capped = vyre_wgpu::canary_expected(65_535);
    let err = vyre_wgpu::judge_canary("llvmpipe (Mesa 22.3.6)", n, capped, 65_535).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, BackendError::Unavailable { .. }), "{text}");
    for want in [
        "65535 of 100000",
        "Mesa >= 25",
        "bookworm-backports",
        "--backend cpu",
    ] {
        assert!(text.contains(want), "`{want}` missing from: {text}");
    }
    // And the adapter here passed it for real (the device opened), unless there is none.
    if let Some(gpu) = common::require_gpu("canary_refuses_a_loop_cap_and_names_the_fix") {
        println!("canary passed on {}", gpu.describe());
    }
}

#[test]
fn limits_come_from_the_adapter_and_heap_pages_are_powers_of_two() {
    let Some(gpu) = common::require_gpu("limits_come_from_the_adapter") else {
        return;
    };
    assert!(gpu.page_bytes.is_power_of_two());
    assert!(gpu.page_bytes <= gpu.limits.max_storage_buffer_binding_size);
    assert!(gpu.page_bytes <= gpu.limits.max_buffer_size);
    let b = WgpuMegakernelDispatcher::new().unwrap();
    let caps = b.capabilities();
    assert_eq!(
        caps.max_buffer_bytes,
        (4 * gpu.page_bytes).min(1 << 32),
        "{}",
        caps.device
    );
    // A page size beyond the adapter's binding limit is refused with the limit.
    let err = WgpuMegakernelDispatcher::with_page_bytes(gpu.page_bytes * 2).unwrap_err();
    assert!(matches!(err, BackendError::Limit { limit, .. } if limit == gpu.page_bytes));
}

/// Runs `slots` one at a time (serial) after creating `bufs`; returns the completions and the
/// final buffer contents.
fn run_serial(
    backend: Arc<dyn Backend>,
    bufs: &[Vec<u8>],
    programs: &[Program],
    slots: &[Slot],
) -> (Vec<Completion>, Vec<Vec<u8>>) {
    let mk = Megakernel::launch(
        backend,
        Config {
            capacity: 256,
            step_budget: 5000,
            ..Config::default()
        },
    )
    .unwrap();
    let handles: Vec<u32> = bufs
        .iter()
        .map(|b| mk.create_buffer_with(b.len() as u64, b).unwrap())
        .collect();
    for p in programs {
        mk.load_program(&p.encode()).unwrap();
    }
    let done = slots
        .iter()
        .map(|s| mk.wait(mk.publish(*s).unwrap()).unwrap())
        .collect();
    let contents = handles
        .iter()
        .zip(bufs)
        .map(|(&h, b)| mk.read_buffer(h, 0, b.len() as u64).unwrap())
        .collect();
    let report = mk.shutdown().unwrap();
    assert!(report.lost.is_empty());
    (done, contents)
}

fn compare(
    name: &str,
    wgpu: Arc<dyn Backend>,
    bufs: &[Vec<u8>],
    programs: &[Program],
    slots: &[Slot],
) -> Vec<Completion> {
    let (got, got_bufs) = run_serial(wgpu, bufs, programs, slots);
    let (want, want_bufs) = run_serial(Arc::new(CpuBackend::new()), bufs, programs, slots);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g.outcome, w.outcome, "{name}: slot {i} {:?}", slots[i]);
    }
    for (i, (g, w)) in got_bufs.iter().zip(&want_bufs).enumerate() {
        if g != w {
            let at = g.iter().zip(w).position(|(a, b)| a != b).unwrap();
            panic!(
                "{name}: buffer {} differs first at byte {at}: {} vs cpu {}",
                i + 1,
                g[at],
                w[at]
            );
        }
    }
    got
}

#[test]
fn buffers_larger_than_one_binding_span_several_pages() {
    let Some(_) = common::require_gpu("buffers_larger_than_one_binding_span_several_pages") else {
        return;
    };
    // 4 KiB pages: the 10,000-byte buffer spans three storage bindings.
    let make = || Arc::new(WgpuMegakernelDispatcher::with_page_bytes(4096).unwrap());
    let b = make();
    let h1 = b.create_buffer(3000).unwrap();
    let h2 = b.create_buffer(10_000).unwrap();
    assert_eq!((h1, h2), (1, 2));
    let data: Vec<u8> = (0..9_993u32).map(|i| (i * 7 + i / 251) as u8).collect();
    b.write_buffer(h2, 5, &data).unwrap();
    assert_eq!(b.read_buffer(h2, 5, data.len() as u64).unwrap(), data);
    assert_eq!(b.read_buffer(h2, 4093, 7).unwrap(), data[4088..4095]);
    // The heap is 4 pages of 4 KiB: a buffer that does not fit is refused with the limit.
    let err = b.create_buffer(4000).unwrap_err();
    assert!(
        matches!(err, BackendError::Limit { limit: 16384, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("max_storage_buffer_binding_size"),
        "{err}"
    );

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let bufs = vec![
        (0..10_000).map(|_| rng.next() as u8).collect::<Vec<u8>>(),
        (0..3_000).map(|_| rng.next() as u8).collect(),
    ];
    let mut slots = vec![
        Slot::new(SlotOp::Hash64, &[1, 0, 10_000, 7]),
        Slot::new(SlotOp::Hash64, &[1, 4090, 33, 0]),
        Slot::new(SlotOp::CountByte, &[1, 100, 9_000, 0x41]),
        Slot::new(SlotOp::Memcpy, &[1, 4093, 1, 4000, 300]),
        Slot::new(SlotOp::Memcpy, &[1, 8190, 2, 1, 2000]),
        Slot::new(SlotOp::Fill, &[1, 8187, 11, 0xab]),
        Slot::new(SlotOp::ByteHistogram, &[1, 0, 10_000, 2, 1024]),
        Slot::new(SlotOp::StoreU32, &[1, 8188, 0xdead_beef]),
        Slot::new(SlotOp::LoadU32, &[1, 4092]),
        Slot::new(SlotOp::AtomicAdd, &[1, 8192, 3]),
        Slot::new(SlotOp::Cas, &[1, 12_000 - 2_000 - 4, 0, 1]),
    ];
    slots.push(Slot::new(SlotOp::Hash64, &[1, 0, 10_000, 1]));
    compare("pages", make(), &bufs, &[], &slots);
}

/// A random straight-line ALU program ending in halt.
fn random_program(rng: &mut Rng) -> Program {
    let alu: Vec<Opcode> = Opcode::ALL
        .iter()
        .copied()
        .filter(|o| {
            !o.has_target()
                && *o != Opcode::Halt
                && !matches!(o, Opcode::Ld8 | Opcode::Ld32 | Opcode::St8 | Opcode::St32)
        })
        .collect();
    let mut insns = Vec::new();
    for _ in 0..rng.below(40) + 1 {
        let op = alu[rng.below(alu.len() as u64) as usize];
        let mut regs = [0u8; 3];
        for r in regs.iter_mut().take(op.reg_count()) {
            *r = rng.below(16) as u8;
        }
        let imm = if op.uses_imm() {
            match rng.below(4) {
                0 => rng.below(64) as i32,
                1 => -(rng.below(1000) as i32),
                _ => rng.next() as i32,
            }
        } else {
            0
        };
        insns.push(Insn { op, regs, imm });
    }
    // Fold every register into r0 so that the result depends on all of them.
    for r in 1..16u8 {
        insns.push(Insn {
            op: Opcode::Xor,
            regs: [0, 0, r],
            imm: 0,
        });
    }
    insns.push(Insn {
        op: Opcode::Halt,
        regs: [0; 3],
        imm: 0,
    });
    Program::new(insns).expect("valid program")
}

/// A random VDFA table (mostly valid; sometimes a bad word, to compare the faults too).
fn random_table(rng: &mut Rng) -> Vec<u8> {
    use vyre_isa::dfa;
    let states = rng.below(6) + 1;
    let stride = rng.below(5) + 2;
    let patterns = rng.below(4) + 1;
    let rows = states * stride;
    let mut match_list = Vec::new();
    let mut index = Vec::new();
    for _ in 0..states {
        index.push(match_list.len() as u32);
        let n = rng.below(3);
        match_list.push(n);
        for k in 0..n {
            match_list.push(k.min(patterns - 1));
        }
    }
    let mut w = vec![
        dfa::MAGIC,
        dfa::VERSION,
        states,
        stride,
        patterns,
        u32::MAX,
        match_list.len() as u32,
        0,
    ];
    let classes: Vec<u8> = (0..256)
        .map(|_| rng.below(u64::from(stride - 1)) as u8)
        .collect();
    w.extend(
        classes
            .chunks(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
    );
    w.extend((0..257).map(|_| rng.below(u64::from(states)) * stride));
    for _ in 0..rows {
        let next = rng.below(u64::from(states)) * stride;
        w.push(next | if rng.below(3) == 0 { dfa::MATCH_BIT } else { 0 });
    }
    w.extend(index);
    w.extend(match_list);
    if rng.below(8) == 0 {
        let at = rng.below(w.len() as u64) as usize;
        w[at] = rng.next() as u32;
    }
    w.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn random_slots_of_every_opcode_match_the_cpu_oracle() {
    let Some(_) = common::require_gpu("random_slots_of_every_opcode_match_the_cpu_oracle") else {
        return;
    };
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let data_len = 5_000u32;
    let mut bufs: Vec<Vec<u8>> = vec![
        (0..data_len)
            .map(|_| (rng.below(6) + u32::from(b'a')) as u8)
            .collect(),
        vec![0; 4096],
    ];
    for _ in 0..6 {
        bufs.push(random_table(&mut rng));
    }
    // Hit regions in buffer 2 at 0 and 2048: capacity words.
    bufs[1][0..4].copy_from_slice(&100u32.to_le_bytes());
    bufs[1][2048..2052].copy_from_slice(&3u32.to_le_bytes());
    let programs: Vec<Program> = (0..8).map(|_| random_program(&mut rng)).collect();
    let mut slots = Vec::new();
    let off = |rng: &mut Rng, len: u32| rng.below(u64::from(len) + 16);
    for _ in 0..300 {
        let op = if rng.below(3) == 0 {
            SlotOp::DfaScan
        } else {
            SlotOp::ALL[rng.below(SlotOp::ALL.len() as u64) as usize]
        };
        let slot = match op {
            SlotOp::Shutdown => continue,
            SlotOp::Nop | SlotOp::Fence => Slot::new(op, &[]),
            SlotOp::DebugLog => Slot::new(op, &[rng.below(9), 2, 3, 4]),
            SlotOp::Packed => {
                let count = rng.below(3) + 1;
                let mut ops = count;
                let mut args = vec![0u32; 8];
                args[1] = 2;
                for i in 0..count {
                    let sub = [0u32, 0x10, 0x11, 0x12][rng.below(4) as usize];
                    ops |= sub << (8 * (i + 1));
                    args[2 + 2 * i as usize] = 4 * rng.below(1030);
                    args[3 + 2 * i as usize] = rng.next() as u32;
                }
                args[0] = ops;
                Slot::new(op, &args)
            }
            SlotOp::StoreU32 | SlotOp::AtomicAdd => Slot::new(
                op,
                &[
                    2,
                    rng.below(4110) & !(u32::from(rng.below(4) != 0) * 3),
                    rng.next() as u32,
                ],
            ),
            SlotOp::LoadU32 => Slot::new(op, &[2, rng.below(4110) & !3]),
            SlotOp::Cas => Slot::new(
                op,
                &[2, rng.below(4100) & !3, rng.below(2), rng.next() as u32],
            ),
            SlotOp::Memcpy => {
                let len = rng.below(300);
                Slot::new(
                    op,
                    &[
                        2,
                        off(&mut rng, 4096 - len),
                        1 + rng.below(2),
                        off(&mut rng, 4096 - len),
                        len,
                    ],
                )
            }
            SlotOp::Fill => {
                let len = rng.below(200);
                Slot::new(op, &[2, off(&mut rng, 4096 - len), len, rng.below(260)])
            }
            SlotOp::Hash64 | SlotOp::CountByte => {
                let len = rng.below(u64::from(data_len));
                let last = if op == SlotOp::Hash64 {
                    rng.next() as u32
                } else {
                    u32::from(b'a') + rng.below(7)
                };
                Slot::new(op, &[1, off(&mut rng, data_len - len), len, last])
            }
            SlotOp::ByteHistogram => {
                let len = rng.below(u64::from(data_len));
                Slot::new(
                    op,
                    &[1, off(&mut rng, data_len - len), len, 2, 4 * rng.below(800)],
                )
            }
            SlotOp::DfaScan => {
                let len = rng.below(600);
                let start = match rng.below(3) {
                    0 => dfa_lookbehind(rng.below(258)),
                    _ => rng.below(40),
                };
                Slot::new(
                    op,
                    &[
                        3 + rng.below(6),
                        1,
                        off(&mut rng, data_len - len),
                        len,
                        rng.below(u64::from(len) + 1)
                            | if rng.below(2) == 0 {
                                vyre_isa::dfa::REPORT_EOI
                            } else {
                                0
                            },
                        start,
                        2,
                        [0, 2048][rng.below(2) as usize],
                    ],
                )
            }
            SlotOp::IoRead => {
                // No files are registered here: the buffer checks, then `bad_file`.
                let len = rng.below(300);
                Slot::new(
                    op,
                    &[
                        rng.below(3),
                        rng.next() as u32,
                        0,
                        len,
                        1 + rng.below(3),
                        off(&mut rng, 4096 - len),
                        rng.below(3),
                    ],
                )
            }
            SlotOp::Exec => {
                let mut a = vec![1 + rng.below(programs.len() as u64)];
                a.extend((0..7).map(|_| rng.next() as u32));
                Slot::new(op, &a)
            }
        };
        slots.push(slot);
    }
    let wgpu = Arc::new(WgpuMegakernelDispatcher::new().unwrap());
    let got = compare("random", wgpu, &bufs, &programs, &slots);
    // Not vacuous: every opcode ran, and the interesting outcomes occurred.
    let count = |op: SlotOp, f: &dyn Fn(&vyre_runtime::Outcome) -> bool| {
        slots
            .iter()
            .zip(&got)
            .filter(|(s, c)| s.op == op as u16 && f(&c.outcome))
            .count()
    };
    use vyre_runtime::Outcome::{Done, Fault};
    let hits = count(SlotOp::DfaScan, &|o| matches!(o, Done(r) if r[0] > 0));
    let dfa_faults = count(SlotOp::DfaScan, &|o| matches!(o, Fault(_)));
    let execs = count(SlotOp::Exec, &|o| matches!(o, Done(_)));
    let hashes = count(SlotOp::Hash64, &|o| matches!(o, Done(_)));
    println!("dfa scans with hits {hits}, dfa faults {dfa_faults}, execs {execs}, hashes {hashes}");
    assert!(hits >= 10 && dfa_faults >= 1 && execs >= 5 && hashes >= 5);
}

fn dfa_lookbehind(code: u32) -> u32 {
    vyre_isa::dfa::START_LOOKBEHIND | code
}

#[test]
fn concurrent_publishers_share_epochs_and_lose_nothing() {
    let Some(_) = common::require_gpu("concurrent_publishers_share_epochs_and_lose_nothing") else {
        return;
    };
    let mk = Arc::new(
        Megakernel::launch(
            Arc::new(WgpuMegakernelDispatcher::new().unwrap()),
            Config {
                capacity: 1024,
                ..Config::default()
            },
        )
        .unwrap(),
    );
    let counter = mk.create_buffer(4).unwrap();
    let (threads, per_thread) = (4u32, 3000u32);
    let olds: Vec<Vec<u32>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let mk = mk.clone();
                s.spawn(move || {
                    let mut rng = Rng(0xabc + u64::from(t));
                    let mut olds = Vec::new();
                    let mut left = per_thread;
                    while left > 0 {
                        let n = (rng.below(300) + 1).min(left);
                        let slots =
                            vec![Slot::new(SlotOp::AtomicAdd, &[counter, 0, 1]); n as usize];
                        for c in mk.run_batch(&slots).unwrap() {
                            match c.outcome {
                                vyre_runtime::Outcome::Done(r) => olds.push(r[0]),
                                other => panic!("{other:?}"),
                            }
                        }
                        left -= n;
                    }
                    olds
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let total = threads * per_thread;
    let seen: HashSet<u32> = olds.iter().flatten().copied().collect();
    assert_eq!(
        seen.len() as u32,
        total,
        "every old value is distinct: adds are atomic"
    );
    assert_eq!(seen, (0..total).collect());
    assert_eq!(mk.read_buffer(counter, 0, 4).unwrap(), total.to_le_bytes());
    let stats = mk.stats();
    assert_eq!(stats.done, total);
    assert_eq!(stats.op_counts[SlotOp::AtomicAdd as usize], total);
    // Heartbeat counts epochs: several slots shared each dispatch.
    println!("{total} slots in {} epochs", stats.heartbeat);
    assert!(
        stats.heartbeat < total,
        "{} epochs for {total} slots",
        stats.heartbeat
    );
    assert!(mk.shutdown().unwrap().lost.is_empty());
}

#[test]
fn shutdown_drains_everything_published_then_refuses_more() {
    let Some(_) = common::require_gpu("shutdown_drains_everything_published_then_refuses_more")
    else {
        return;
    };
    let backend = Arc::new(WgpuMegakernelDispatcher::new().unwrap());
    let mk = Megakernel::launch(
        backend.clone(),
        Config {
            capacity: 1 << 14,
            ..Config::default()
        },
    )
    .unwrap();
    let buf = mk.create_buffer(4096).unwrap();
    let slots: Vec<Slot> = (0..10_000u32)
        .map(|i| Slot::new(SlotOp::AtomicAdd, &[buf, 4 * (i % 1024), 1]))
        .collect();
    let tickets = mk.publish_batch(&slots).unwrap();
    let report = mk.shutdown().unwrap();
    assert!(report.lost.is_empty(), "lost {:?}", report.lost);
    assert!(backend.health().stopped);
    // Every slot ran exactly once.
    let words = mk.read_buffer(buf, 0, 4096).unwrap();
    assert!(words.chunks(4).all(
        |w| u32::from_le_bytes(w.try_into().unwrap()) == 10_000 / 1024
            || u32::from_le_bytes(w.try_into().unwrap()) == 10_000 / 1024 + 1
    ));
    let sum: u32 = words
        .chunks(4)
        .map(|w| u32::from_le_bytes(w.try_into().unwrap()))
        .sum();
    assert_eq!(sum, 10_000);
    for t in tickets {
        assert!(matches!(
            mk.poll(t).unwrap().outcome,
            vyre_runtime::Outcome::Done(_)
        ));
    }
    assert!(mk.publish(Slot::new(SlotOp::Nop, &[])).is_err());
}

#[test]
fn a_shutdown_slot_stops_the_epoch_driver() {
    let Some(_) = common::require_gpu("a_shutdown_slot_stops_the_epoch_driver") else {
        return;
    };
    let backend = Arc::new(WgpuMegakernelDispatcher::new().unwrap());
    let mk = Megakernel::launch(backend.clone(), Config::default()).unwrap();
    let c = mk
        .wait(mk.publish(Slot::new(SlotOp::Shutdown, &[])).unwrap())
        .unwrap();
    assert!(matches!(
        c.outcome,
        vyre_runtime::Outcome::Done([0, 0, 0, 0])
    ));
    let t = std::time::Instant::now();
    while !backend.health().stopped {
        assert!(t.elapsed().as_secs() < 10, "the driver did not stop");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(backend.health().workers_running, 0);
    assert!(mk.shutdown().unwrap().lost.is_empty());
}

#[test]
fn watchdog_hang_then_restart_onto_a_fresh_wgpu_backend() {
    let Some(_) = common::require_gpu("watchdog_hang_then_restart_onto_a_fresh_wgpu_backend")
    else {
        return;
    };
    let config = Config {
        watchdog: Some(std::time::Duration::from_millis(300)),
        ..Config::default()
    };
    let mk =
        Megakernel::launch(Arc::new(WgpuMegakernelDispatcher::new().unwrap()), config).unwrap();
    let buf = mk.create_buffer(4).unwrap();
    let add = Slot::new(SlotOp::AtomicAdd, &[buf, 0, 1]);
    assert_eq!(mk.run_batch(&[add; 10]).unwrap().len(), 10);
    mk.inject_hang();
    let tickets = mk.publish_batch(&[add; 100]).unwrap();
    let err = mk.wait_range(tickets.clone()).unwrap_err();
    let vyre_runtime::ErrorKind::Hung(report) = err.kind() else {
        panic!("expected a hang, got {err}")
    };
    assert_eq!(
        report.claimed.len() + report.unclaimed.len(),
        100,
        "{report:?}"
    );
    let restart = mk
        .restart(Arc::new(WgpuMegakernelDispatcher::new().unwrap()))
        .unwrap();
    assert_eq!(restart.requeued.len(), 100);
    let done = mk.wait_range(tickets).unwrap();
    assert!(done
        .iter()
        .all(|c| matches!(c.outcome, vyre_runtime::Outcome::Done(_))));
    // The buffer was copied across; every slot ran exactly once.
    assert_eq!(mk.read_buffer(buf, 0, 4).unwrap(), 110u32.to_le_bytes());
    assert!(mk.shutdown().unwrap().lost.is_empty());
}
