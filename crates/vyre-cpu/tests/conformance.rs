//! The data-driven conformance suite on the cpu backend (the oracle): every case must meet
//! its written expectations.

use std::sync::Arc;
use vyre_cpu::CpuBackend;
use vyre_runtime::Backend;

#[test]
fn conformance_suite_on_cpu() {
    let dir = vyre_conformance::default_dir();
    let make = || Arc::new(CpuBackend::new()) as Arc<dyn Backend>;
    let report = vyre_conformance::run_suite(&dir, "cpu", &make, None).expect("cases load");
    println!("{}", report.summary());
    assert!(
        report.passed.len() >= 10,
        "too few cases ran: {}",
        report.summary()
    );
    assert!(report.failed.is_empty(), "{}", report.summary());
}

#[test]
fn conformance_suite_on_cpu_single_worker_and_many_workers() {
    // The same cases with one worker and with more workers than cores: results must not
    // depend on how many workers claim slots.
    let dir = vyre_conformance::default_dir();
    for workers in [1usize, 4] {
        let make = move || Arc::new(CpuBackend::new().with_workers(workers)) as Arc<dyn Backend>;
        let oracle = || Arc::new(CpuBackend::new()) as Arc<dyn Backend>;
        let report =
            vyre_conformance::run_suite(&dir, "cpu", &make, Some(&oracle)).expect("cases load");
        println!("workers={workers}: {}", report.summary());
        assert!(report.failed.is_empty(), "{}", report.summary());
    }
}
