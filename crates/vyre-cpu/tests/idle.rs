//! An idle runtime uses no CPU: once workers have parked, the process burns (almost) no
//! CPU time. Its own test binary, so no other test's threads are counted.

use std::sync::Arc;
use std::time::{Duration, Instant};
use vyre_cpu::CpuBackend;
use vyre_isa::{Slot, SlotOp};
use vyre_runtime::{Config, Megakernel};

mod common;
use common::cpu_ticks;

#[test]
fn idle_workers_park_and_wake_on_publish() {
    let mk = Megakernel::launch(
        Arc::new(CpuBackend::new().with_workers(4)),
        Config::default(),
    )
    .unwrap();
    mk.run_batch(&vec![Slot::new(SlotOp::Nop, &[]); 10_000])
        .unwrap();
    std::thread::sleep(Duration::from_millis(50)); // past the spin and yield phases
    let (t0, c0) = (Instant::now(), cpu_ticks());
    std::thread::sleep(Duration::from_millis(1000));
    let (wall, used) = (t0.elapsed(), cpu_ticks() - c0);
    // 4 spinning workers would burn ~4 s of CPU in this second; parked ones burn none.
    assert!(
        used <= 5,
        "idle runtime used {used} ticks (10 ms each) of CPU in {wall:?}"
    );
    // Parked workers wake on the doorbell.
    let t = mk.publish(Slot::new(SlotOp::Nop, &[])).unwrap();
    assert!(mk.wait_timeout(t, Some(Duration::from_secs(5))).is_ok());
    mk.shutdown().unwrap();
}
