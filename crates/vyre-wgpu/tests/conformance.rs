//! The data-driven conformance suite on wgpu, compared word for word with the cpu oracle.

mod common;

use std::sync::Arc;
use vyre_cpu::CpuBackend;
use vyre_runtime::Backend;
use vyre_wgpu::WgpuMegakernelDispatcher;

#[test]
fn conformance_suite_on_wgpu_matches_cpu_oracle() {
    let Some(gpu) = common::require_gpu("conformance_suite_on_wgpu_matches_cpu_oracle") else {
        return;
    };
    println!("adapter: {}", gpu.describe());
    let dir = vyre_conformance::default_dir();
    let make = || {
        Arc::new(WgpuMegakernelDispatcher::new().expect("device opened above")) as Arc<dyn Backend>
    };
    let oracle = || Arc::new(CpuBackend::new()) as Arc<dyn Backend>;
    let report =
        vyre_conformance::run_suite(&dir, "wgpu", &make, Some(&oracle)).expect("cases load");
    println!("{}", report.summary());
    assert!(
        report.passed.len() >= 70,
        "too few cases ran: {}",
        report.summary()
    );
    assert!(report.failed.is_empty(), "{}", report.summary());
}
