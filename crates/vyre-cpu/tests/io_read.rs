//! IO_READ on the cpu backend through the Megakernel's I/O thread: bytes arrive, checks
//! fault with their codes, I/O errors fault `io` with the errno, continuations run, and
//! waiting slots are never dropped by shutdown or restart.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vyre_cpu::CpuBackend;
use vyre_isa::{Fault, FaultCode, Slot, SlotOp};
use vyre_runtime::{
    Config, ErrorKind, FileRead, IoService, Megakernel, Outcome, PreadService, Ticket,
};

/// A file with `bytes` in a fresh temporary directory (removed on drop).
struct TempFile {
    dir: PathBuf,
    path: PathBuf,
}

impl TempFile {
    fn new(name: &str, bytes: &[u8]) -> TempFile {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "vyre-cpu-io-{}-{}-{name}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        TempFile { dir, path }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// 0, 1, 2, ... 255, 0, 1, ...
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| i as u8).collect()
}

fn io_read(file: u32, off: u64, len: u32, buf: u32, buf_off: u32, then: u32) -> Slot {
    Slot::new(
        SlotOp::IoRead,
        &[
            file,
            off as u32,
            (off >> 32) as u32,
            len,
            buf,
            buf_off,
            then,
        ],
    )
}

fn launch(workers: usize, capacity: u32) -> Megakernel {
    let config = Config {
        capacity,
        ..Config::default()
    };
    Megakernel::launch(Arc::new(CpuBackend::new().with_workers(workers)), config).unwrap()
}

fn done(outcome: Outcome) -> [u32; 4] {
    match outcome {
        Outcome::Done(r) => r,
        Outcome::Fault(f) => panic!("expected DONE, got {f}"),
    }
}

fn fault(outcome: Outcome) -> Fault {
    match outcome {
        Outcome::Fault(f) => f,
        Outcome::Done(r) => panic!("expected a fault, got DONE {r:?}"),
    }
}

#[test]
fn io_read_delivers_the_file_bytes_and_counts_once() {
    let f = TempFile::new("data", &pattern(1000));
    let mk = launch(2, 64);
    let buf = mk.create_buffer(256).unwrap();
    assert_eq!(mk.register_file(&f.path).unwrap(), 1);
    assert_eq!(mk.registered_files(), 1);
    let before = mk.stats();
    let c = mk
        .wait(mk.publish(io_read(1, 300, 100, buf, 8, 0)).unwrap())
        .unwrap();
    assert_eq!(done(c.outcome), [100, 0, 0, 0]);
    let got = mk.read_buffer(buf, 0, 256).unwrap();
    let mut want = vec![0u8; 256];
    want[8..108].copy_from_slice(&pattern(1000)[300..400]);
    assert_eq!(got, want);
    // Counted once, as IO_READ, in the done count and the opcode counters.
    let start = Instant::now();
    loop {
        let s = mk.stats();
        if s.done == before.done + 1 {
            assert_eq!(s.op_counts[SlotOp::IoRead as usize], 1);
            assert_eq!(s.faults, 0);
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{s:?}");
        std::thread::yield_now();
    }
    assert!(mk.shutdown().unwrap().lost.is_empty());
}

#[test]
fn short_reads_at_the_end_and_beyond_it_are_not_faults() {
    let f = TempFile::new("short", &pattern(50));
    let mk = launch(1, 8);
    let buf = mk.create_buffer(64).unwrap();
    mk.register_file(&f.path).unwrap();
    mk.write_buffer(buf, 0, &[0xee; 64]).unwrap();
    let c = mk
        .wait(mk.publish(io_read(1, 40, 20, buf, 0, 0)).unwrap())
        .unwrap();
    assert_eq!(done(c.outcome)[0], 10);
    // Only the bytes read were written; the rest of the range is untouched.
    let got = mk.read_buffer(buf, 0, 24).unwrap();
    assert_eq!(&got[..10], &pattern(50)[40..50]);
    assert_eq!(&got[10..], &[0xee; 14]);
    // A 64-bit offset past the end reads nothing.
    let c = mk
        .wait(mk.publish(io_read(1, 5 << 32, 20, buf, 0, 0)).unwrap())
        .unwrap();
    assert_eq!(done(c.outcome)[0], 0);
    let c = mk
        .wait(mk.publish(io_read(1, u64::MAX, 20, buf, 0, 0)).unwrap())
        .unwrap();
    assert_eq!(done(c.outcome)[0], 0);
}

#[test]
fn checks_fault_in_order_without_queueing_a_read() {
    let f = TempFile::new("checks", &pattern(10));
    let mk = launch(1, 8);
    let buf = mk.create_buffer(16).unwrap();
    mk.register_file(&f.path).unwrap();
    let cases = [
        // len above 64 MiB: malformed_slot, detail 3, before anything else.
        (
            io_read(9, 0, (64 << 20) + 1, 7, 0, 9),
            FaultCode::MalformedSlot,
            3,
        ),
        (io_read(9, 0, 4, 7, 0, 9), FaultCode::BadHandle, 7),
        (io_read(9, 0, 4, buf, 13, 9), FaultCode::OutOfBounds, 13),
        (io_read(0, 0, 4, buf, 12, 9), FaultCode::BadFile, 0),
        (io_read(2, 0, 4, buf, 12, 9), FaultCode::BadFile, 2),
        (io_read(1, 0, 4, buf, 12, 9), FaultCode::BadProgram, 9),
    ];
    for (slot, code, detail) in cases {
        let f = fault(mk.wait(mk.publish(slot).unwrap()).unwrap().outcome);
        assert_eq!((f.code, f.detail, f.at), (code, detail, 0), "{slot:?}");
    }
    // An unused argument word is still malformed.
    let mut s = io_read(1, 0, 4, buf, 0, 0);
    s.args[7] = 1;
    let f = fault(mk.wait(mk.publish(s).unwrap()).unwrap().outcome);
    assert_eq!((f.code, f.detail), (FaultCode::MalformedSlot, 7));
    assert_eq!(mk.read_buffer(buf, 0, 16).unwrap(), vec![0; 16]);
}

#[test]
fn a_continuation_runs_with_the_documented_registers() {
    let data: Vec<u8> = (0..64u32).map(|i| (i * 7 + 3) as u8).collect();
    let f = TempFile::new("cont", &data);
    let mk = launch(2, 16);
    let buf = mk.create_buffer(128).unwrap();
    mk.register_file(&f.path).unwrap();
    // Sums the r1 bytes at buf r2, offset r3, then adds r4 * 1000 + r5 * 100 + r6 * 10.
    let m = vyre_isa::assemble(
        "
.program sum
    movi r0, 0
top:
    beqz r1, tail
    ld8 r7, r2, r3, 0
    add r0, r0, r7
    addi r3, r3, 1
    addi r1, r1, -1
    jmp top
tail:
    movi r8, 1000
    mul r8, r8, r4
    add r0, r0, r8
    movi r8, 100
    mul r8, r8, r5
    add r0, r0, r8
    movi r8, 10
    mul r8, r8, r6
    add r0, r0, r8
    halt
.end
",
    )
    .unwrap();
    let prog = mk.load_program(&m.programs[0].bytecode).unwrap();
    let c = mk
        .wait(mk.publish(io_read(1, 10, 40, buf, 20, prog)).unwrap())
        .unwrap();
    let sum: u64 = data[10..50].iter().map(|&b| u64::from(b)).sum();
    let r = done(c.outcome);
    assert_eq!(u64::from(r[0]), sum + 1000 + 10 * 100);
    assert_eq!(r[1], 0);
    // movi, 40 loops of 6, the last beqz, 9 in the tail and halt.
    assert_eq!(r[2], 1 + 40 * 6 + 1 + 9 + 1);
    // A continuation that faults faults the slot, with its pc.
    let m = vyre_isa::assemble(".program bad\n    ld32 r0, r2, r3, 1\n    halt\n.end\n").unwrap();
    let bad = mk.load_program(&m.programs[0].bytecode).unwrap();
    let c = mk
        .wait(mk.publish(io_read(1, 0, 4, buf, 0, bad)).unwrap())
        .unwrap();
    let f = fault(c.outcome);
    assert_eq!((f.code, f.detail, f.at), (FaultCode::Misaligned, 1, 0));
}

#[test]
fn many_reads_through_a_small_ring_wrap_both_queues() {
    let data = pattern(4096);
    let f = TempFile::new("many", &data);
    for workers in [1, 3] {
        let mk = launch(workers, 4);
        let buf = mk.create_buffer(200 * 16).unwrap();
        let id = mk.register_file(&f.path).unwrap();
        let slots: Vec<Slot> = (0..200u32)
            .map(|i| io_read(id, u64::from(i) * 13, 16, buf, i * 16, 0))
            .collect();
        let out = mk.run_batch(&slots).unwrap();
        assert!(out.iter().all(|c| done(c.outcome)[0] == 16));
        let got = mk.read_buffer(buf, 0, 200 * 16).unwrap();
        for i in 0..200usize {
            assert_eq!(&got[i * 16..][..16], &data[i * 13..][..16], "read {i}");
        }
        assert!(mk.shutdown().unwrap().lost.is_empty());
    }
}

/// Fails every read with one errno.
#[derive(Debug)]
struct Failing(i32);

impl IoService for Failing {
    fn name(&self) -> &str {
        "failing"
    }
    fn read_batch(&self, reads: &mut [FileRead<'_>]) -> Vec<io::Result<usize>> {
        reads
            .iter()
            .map(|_| Err(io::Error::from_raw_os_error(self.0)))
            .collect()
    }
}

#[test]
fn an_io_error_faults_io_with_the_errno() {
    let f = TempFile::new("err", b"abc");
    let mk = launch(1, 8);
    mk.set_io_service(Arc::new(Failing(5))).unwrap();
    let buf = mk.create_buffer(8).unwrap();
    mk.register_file(&f.path).unwrap();
    let c = mk
        .wait(mk.publish(io_read(1, 0, 3, buf, 0, 0)).unwrap())
        .unwrap();
    let f = fault(c.outcome);
    assert_eq!((f.code, f.detail, f.at), (FaultCode::Io, 5, 0));
    // The service cannot change once the I/O thread runs.
    let err = mk.set_io_service(Arc::new(PreadService)).unwrap_err();
    assert!(
        err.to_string().contains("`failing` service already runs"),
        "{err}"
    );
}

#[test]
fn a_read_error_from_the_os_reaches_the_slot() {
    // A directory opens but cannot be read: EISDIR (21 on Linux).
    let f = TempFile::new("dir-holder", b"");
    let mk = launch(1, 8);
    let buf = mk.create_buffer(8).unwrap();
    mk.register_file(&f.dir).unwrap();
    let c = mk
        .wait(mk.publish(io_read(1, 0, 4, buf, 0, 0)).unwrap())
        .unwrap();
    let f = fault(c.outcome);
    assert_eq!(f.code, FaultCode::Io);
    assert_eq!(
        f.detail as i32,
        io::Error::from(io::ErrorKind::IsADirectory)
            .raw_os_error()
            .unwrap_or(21)
    );
}

#[test]
fn register_file_names_the_path_and_the_reason() {
    let mk = launch(1, 8);
    let missing = std::env::temp_dir().join("vyre-no-such-file-for-io-read");
    let err = mk.register_file(&missing).unwrap_err();
    let ErrorKind::File { path, source } = err.kind() else {
        panic!("expected a file error, got {err}")
    };
    assert_eq!(path, &missing);
    assert_eq!(source.kind(), io::ErrorKind::NotFound);
    let text = err.to_string();
    assert!(text.contains("vyre-no-such-file-for-io-read"), "{text}");
    assert!(text.contains("No such file"), "{text}");
    assert_eq!(mk.registered_files(), 0);
}

/// Blocks every batch until the gate opens (or 10 s pass), then reads with pread.
#[derive(Debug, Default)]
struct Gated {
    open: AtomicBool,
    batches: AtomicUsize,
    reads: AtomicUsize,
}

impl IoService for Gated {
    fn name(&self) -> &str {
        "gated"
    }
    fn read_batch(&self, reads: &mut [FileRead<'_>]) -> Vec<io::Result<usize>> {
        self.batches.fetch_add(1, Ordering::SeqCst);
        let start = Instant::now();
        while !self.open.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.reads.fetch_add(reads.len(), Ordering::SeqCst);
        PreadService.read_batch(reads)
    }
}

fn until(cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < Duration::from_secs(5), "timed out");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn shutdown_reports_slots_still_waiting_on_io_as_lost() {
    let f = TempFile::new("slow", &pattern(64));
    let config = Config {
        capacity: 8,
        drain_timeout: Duration::from_millis(200),
        ..Config::default()
    };
    let mk = Megakernel::launch(Arc::new(CpuBackend::new().with_workers(1)), config).unwrap();
    let gate = Arc::new(Gated::default());
    mk.set_io_service(gate.clone()).unwrap();
    let buf = mk.create_buffer(64).unwrap();
    mk.register_file(&f.path).unwrap();
    let nop = mk.publish(Slot::new(SlotOp::Nop, &[])).unwrap();
    let waiting: Vec<Ticket> = (0..3)
        .map(|i| {
            mk.publish(io_read(1, i * 8, 8, buf, i as u32 * 8, 0))
                .unwrap()
        })
        .collect();
    until(|| gate.batches.load(Ordering::SeqCst) > 0);
    assert!(mk.poll(waiting[0]).is_none());
    let report = mk.shutdown().unwrap();
    assert_eq!(report.lost, vec![1, 2, 3], "{report:?}");
    gate.open.store(true, Ordering::SeqCst);
    assert!(matches!(mk.wait(nop).unwrap().outcome, Outcome::Done(_)));
    for t in waiting {
        let f = fault(mk.wait(t).unwrap().outcome);
        assert_eq!(f.code, FaultCode::Lost);
    }
}

#[test]
fn shutdown_waits_for_outstanding_io_within_the_drain_timeout() {
    let f = TempFile::new("drain", &pattern(64));
    let mk = launch(1, 8);
    let gate = Arc::new(Gated::default());
    mk.set_io_service(gate.clone()).unwrap();
    let buf = mk.create_buffer(64).unwrap();
    mk.register_file(&f.path).unwrap();
    let t = mk.publish(io_read(1, 0, 64, buf, 0, 0)).unwrap();
    until(|| gate.batches.load(Ordering::SeqCst) > 0);
    let opener = {
        let gate = gate.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            gate.open.store(true, Ordering::SeqCst);
        })
    };
    let report = mk.shutdown().unwrap();
    opener.join().unwrap();
    assert!(report.lost.is_empty(), "{report:?}");
    assert_eq!(report.drained, 1);
    assert_eq!(done(mk.wait(t).unwrap().outcome)[0], 64);
    assert_eq!(mk.read_buffer(buf, 0, 64).unwrap(), pattern(64));
}

#[test]
fn restart_requeues_slots_waiting_on_io_and_reads_them_again() {
    let f = TempFile::new("restart", &pattern(256));
    let mk = Megakernel::launch(
        Arc::new(CpuBackend::new().with_workers(2)),
        Config {
            capacity: 16,
            watchdog: None,
            ..Config::default()
        },
    )
    .unwrap();
    let gate = Arc::new(Gated::default());
    mk.set_io_service(gate.clone()).unwrap();
    let buf = mk.create_buffer(64).unwrap();
    mk.register_file(&f.path).unwrap();
    let tickets = mk
        .publish_batch(&[
            io_read(1, 0, 16, buf, 0, 0),
            io_read(1, 100, 16, buf, 16, 0),
            io_read(1, 200, 16, buf, 32, 0),
        ])
        .unwrap();
    // All three have queued their requests and the thread is inside the first batch.
    until(|| gate.batches.load(Ordering::SeqCst) > 0);
    let report = mk.restart(Arc::new(CpuBackend::new())).unwrap();
    assert_eq!(report.requeued, vec![0, 1, 2]);
    // WAIT_IO slots (and any the thread had not yet taken) run IO_READ again.
    assert!(!report.possibly_partial.is_empty(), "{report:?}");
    gate.open.store(true, Ordering::SeqCst);
    let out = mk.wait_range(tickets).unwrap();
    assert!(out.iter().all(|c| done(c.outcome)[0] == 16), "{out:?}");
    let got = mk.read_buffer(buf, 0, 48).unwrap();
    let data = pattern(256);
    assert_eq!(&got[..16], &data[..16]);
    assert_eq!(&got[16..32], &data[100..116]);
    assert_eq!(&got[32..48], &data[200..216]);
    // The old ring's reads were done and dropped; the new ring's read again.
    assert!(gate.reads.load(Ordering::SeqCst) >= 4);
    assert!(mk.shutdown().unwrap().lost.is_empty());
}
