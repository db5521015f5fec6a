//! The cuda backend against the cpu oracle: the whole conformance suite with device buffers
//! and with host-mapped buffers, word for word and byte for byte, plus shutdown behaviour.
//! Without a CUDA driver it prints `skipped: no CUDA driver` and passes nothing.

use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use vyre_cuda::{BufferPlacement, CudaBackend, CudaProvider};
use vyre_isa::{FaultCode, Slot, SlotOp};
use vyre_runtime::pipeline_cache::PipelineCache;
use vyre_runtime::{Backend, BackendProvider, Config, Megakernel, Outcome};

fn cache() -> &'static PipelineCache {
    static CACHE: OnceLock<PipelineCache> = OnceLock::new();
    CACHE.get_or_init(PipelineCache::open_default)
}

fn cuda(placement: BufferPlacement) -> Arc<dyn Backend> {
    Arc::new(
        CudaBackend::with_cache(cache())
            .expect("cuda backend")
            .with_placement(placement),
    )
}

fn check(name: &str, ok: bool, detail: String, passed: &mut u32, failed: &mut u32) {
    if ok {
        *passed += 1;
        println!("test {name} ... ok");
    } else {
        *failed += 1;
        println!("test {name} ... FAILED\n{detail}");
    }
}

fn main() -> ExitCode {
    // A hang must fail this binary, not stall whoever runs it.
    std::thread::spawn(|| {
        std::thread::sleep(std::time::Duration::from_secs(600));
        println!("test binary deadline of 600 s passed: FAILED (a test hung)");
        println!("0 passed, 1 failed");
        std::process::exit(1);
    });
    let (mut passed, mut failed, mut skipped) = (0u32, 0u32, 0u32);
    // VYRE_CUDA_TESTS=watchdog runs only the watchdog test (for quick reruns on the GPU).
    let only_watchdog = std::env::var("VYRE_CUDA_TESTS").is_ok_and(|v| v == "watchdog");
    // The kernel compiles for Hopper wherever NVRTC is installed, GPU or not (CI installs
    // NVRTC from PyPI for this).
    match vyre_cuda::compile::nvrtc_version() {
        Err(e) => {
            println!("test megakernel_compiles_for_sm_90 ... skipped: {e}");
            skipped += 1;
        }
        Ok(v) => {
            let r =
                vyre_cuda::compile::compile_cubin(&vyre_cuda::compile::kernel_source(), "sm_90");
            let ok = matches!(&r, Ok(c) if c.len() > 1000);
            check(
                &format!("megakernel_compiles_for_sm_90 (NVRTC {v})"),
                ok,
                format!("{:?}", r.err()),
                &mut passed,
                &mut failed,
            );
        }
    }
    if let Err(e) = CudaProvider.probe() {
        println!("skipped: no CUDA driver ({e})");
        println!("{passed} passed, {failed} failed, {} skipped", skipped + 1);
        return if failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    if !only_watchdog {
        run_conformance_and_shutdown(&mut passed, &mut failed);
    }
    watchdog(&mut passed, &mut failed);
    println!("{passed} passed, {failed} failed, {skipped} skipped");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn run_conformance_and_shutdown(passed: &mut u32, failed: &mut u32) {
    let dir = vyre_conformance::default_dir();
    let oracle = || Arc::new(vyre_cpu::CpuBackend::new()) as Arc<dyn Backend>;
    for (label, placement) in [
        ("cuda", BufferPlacement::Device),
        ("cuda-mapped", BufferPlacement::HostMapped),
    ] {
        let make = move || cuda(placement);
        let report =
            vyre_conformance::run_suite(&dir, "cuda", &make, Some(&oracle)).expect("cases load");
        let summary = report
            .summary()
            .replace("conformance on cuda", &format!("conformance on {label}"));
        println!("{summary}");
        check(
            &format!("conformance_{label}"),
            report.failed.is_empty() && report.passed.len() > 50,
            summary,
            passed,
            failed,
        );
    }

    // Shutdown drains published work; a SHUTDOWN slot stops the kernel and later slots are
    // reported lost, never dropped.
    let mk = Megakernel::launch(cuda(BufferPlacement::Device), Config::default()).expect("launch");
    let buf = mk.create_buffer(4).unwrap();
    mk.publish_batch(&vec![Slot::new(SlotOp::AtomicAdd, &[buf, 0, 1]); 3000])
        .unwrap();
    let report = mk.shutdown().unwrap();
    let count = mk.read_buffer(buf, 0, 4).unwrap();
    check(
        "shutdown_drains_published_work",
        report.lost.is_empty() && report.drained == 3000 && count == 3000u32.to_le_bytes(),
        format!("{report:?}, count {count:?}"),
        passed,
        failed,
    );

    let mk = Megakernel::launch(
        cuda(BufferPlacement::Device),
        Config {
            claim_batch: 1,
            ..Config::default()
        },
    )
    .expect("launch");
    let mut slots = vec![Slot::new(SlotOp::Shutdown, &[])];
    slots.extend(std::iter::repeat_n(Slot::new(SlotOp::Nop, &[]), 2000));
    let done = mk.wait_range(mk.publish_batch(&slots).unwrap()).unwrap();
    let lost = done
        .iter()
        .filter(|c| matches!(c.outcome, Outcome::Fault(f) if f.code == FaultCode::Lost))
        .count();
    let ran = done
        .iter()
        .filter(|c| matches!(c.outcome, Outcome::Done(_)))
        .count();
    check(
        "shutdown_slot_stops_kernel_rest_reported_lost",
        done.len() == slots.len() && lost + ran == slots.len() && mk.health().stopped,
        format!(
            "{} completions, {ran} done, {lost} lost, health {:?}",
            done.len(),
            mk.health()
        ),
        passed,
        failed,
    );
}

fn watchdog(passed: &mut u32, failed: &mut u32) {
    // Watchdog: an injected hang is declared within the bound, the claimed and unclaimed
    // slots are reported, and a restart on a fresh CUDA backend runs every one exactly once.
    let config = Config {
        watchdog: Some(std::time::Duration::from_millis(500)),
        ..Config::default()
    };
    let mk = Megakernel::launch(cuda(BufferPlacement::Device), config).expect("launch");
    let buf = mk.create_buffer(4).unwrap();
    let add = Slot::new(SlotOp::AtomicAdd, &[buf, 0, 1]);
    mk.run_batch(&[add; 10]).unwrap();
    mk.inject_hang();
    let tickets = mk.publish_batch(&[add; 1000]).unwrap();
    println!("  watchdog: hang injected, 1000 slots published");
    let hang = mk
        .wait_range(tickets.clone())
        .err()
        .and_then(|e| match e.kind() {
            vyre_runtime::ErrorKind::Hung(r) => Some(r.clone()),
            _ => None,
        });
    println!(
        "  watchdog: hang reported: {:?}",
        hang.as_ref()
            .map(|r| (r.claimed.len(), r.unclaimed.len(), r.silent_for))
    );
    let fresh = CudaBackend::in_fresh_context(cache()).expect("a backend in a fresh context");
    println!("  watchdog: fresh-context backend ready");
    let restarted = mk.restart(Arc::new(fresh));
    println!(
        "  watchdog: restart {:?}",
        restarted
            .as_ref()
            .map(|r| (r.requeued.len(), r.possibly_partial.len()))
    );
    let done = mk.wait_range(tickets).map(|d| {
        d.iter()
            .filter(|c| matches!(c.outcome, Outcome::Done(_)))
            .count()
    });
    let count = mk.read_buffer(buf, 0, 4).unwrap();
    let ok = matches!(&hang, Some(r) if r.claimed.len() + r.unclaimed.len() == 1000)
        && matches!(&restarted, Ok(r) if r.requeued.len() == 1000)
        && matches!(done, Ok(1000))
        && count == 1010u32.to_le_bytes();
    check(
        "watchdog_detects_injected_hang_and_restart_requeues",
        ok,
        format!(
            "hang {:?}\nrestart {restarted:?}\ndone {done:?}\ncount {count:?}",
            hang.map(|r| (r.claimed.len(), r.unclaimed.len(), r.silent_for))
        ),
        passed,
        failed,
    );
    if let Ok(r) = &restarted {
        println!(
            "  hang: {} claimed (possibly partial) of {} requeued",
            r.possibly_partial.len(),
            r.requeued.len()
        );
    }
    drop(mk);
}
