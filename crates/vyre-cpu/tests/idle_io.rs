//! An idle I/O thread uses no CPU: once IO_READ's host thread has nothing to serve, it backs
//! off to sleeps. Its own test binary, so no other test's threads are counted.

use std::sync::Arc;
use std::time::{Duration, Instant};
use vyre_cpu::CpuBackend;
use vyre_isa::{Slot, SlotOp};
use vyre_runtime::{Config, Megakernel, Outcome};

mod common;
use common::cpu_ticks;

#[test]
fn an_idle_io_thread_sleeps_and_still_serves_the_next_read() {
    let dir = std::env::temp_dir().join(format!("vyre-idle-io-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("f");
    std::fs::write(&path, b"0123456789").unwrap();
    let mk = Megakernel::launch(
        Arc::new(CpuBackend::new().with_workers(2)),
        Config::default(),
    )
    .unwrap();
    let buf = mk.create_buffer(16).unwrap();
    let file = mk.register_file(&path).unwrap();
    let read = Slot::new(SlotOp::IoRead, &[file, 2, 0, 5, buf, 0, 0]);
    assert!(matches!(
        mk.wait(mk.publish(read).unwrap()).unwrap().outcome,
        Outcome::Done([5, 0, 0, 0])
    ));
    std::thread::sleep(Duration::from_millis(50)); // past the spin and yield phases
    let (t0, c0) = (Instant::now(), cpu_ticks());
    std::thread::sleep(Duration::from_millis(1000));
    let (wall, used) = (t0.elapsed(), cpu_ticks() - c0);
    // A spinning I/O thread would burn ~1 s of CPU in this second; a sleeping one burns
    // little (it wakes at most every millisecond).
    assert!(
        used <= 10,
        "idle runtime with an I/O thread used {used} ticks (10 ms each) of CPU in {wall:?}"
    );
    assert!(matches!(
        mk.wait(mk.publish(read).unwrap()).unwrap().outcome,
        Outcome::Done([5, 0, 0, 0])
    ));
    assert_eq!(mk.read_buffer(buf, 0, 5).unwrap(), b"23456");
    mk.shutdown().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
