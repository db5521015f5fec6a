//! `vyre bench ring --backend wgpu`: the epoch backend side by side with the usual way of
//! driving a GPU API, one dispatch + readback per op (`vyre_wgpu::bench::OneShot`: the same
//! megakernel pipeline on the same device, one submission, copy, map and wait per op).
//!
//! For each epoch size E (1, 256, 4096, 65536 NOP slots) vyre publishes E slots with one
//! `run_batch` and waits for all of them; the baseline runs E ops one after the other. The
//! table gives slots per second, the latency of a whole batch of E, and the dispatches vyre
//! actually used (its driver takes whatever is published when it looks, so a batch may span
//! more than one dispatch). The baseline is run for at most `--seconds` per row; when it could
//! not finish E ops in that time its batch latency is extrapolated from its per-op time and
//! marked "(est.)".

use crate::bench_ring::{fmt_rate, machine, percentile};
use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vyre_isa::{Slot, SlotOp};
use vyre_runtime::{Backend, Config, Megakernel, Outcome};

const EPOCHS: [usize; 4] = [1, 256, 4096, 65536];

fn fmt_time(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 1e-3 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{:.1} µs", s * 1e6)
    }
}

pub fn main(
    backend: Arc<dyn Backend>,
    workers: Option<usize>,
    seconds: f64,
    out_path: &Option<std::path::PathBuf>,
) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let workers = workers.unwrap_or_else(|| backend.capabilities().default_workers);
    let device = backend.capabilities().device.clone();
    let mk = Megakernel::launch(
        backend,
        Config {
            workers: Some(workers),
            capacity: 1 << 17,
            watchdog: Some(Duration::from_secs(120)),
            ..Config::default()
        },
    )?;
    let one = vyre_wgpu::bench::OneShot::new()?;
    let nop = Slot::new(SlotOp::Nop, &[]);
    let mut out = String::new();
    writeln!(
        out,
        "# vyre bench ring — backend wgpu (epochs) vs one dispatch + readback per op\n"
    )?;
    writeln!(out, "machine: {}\n", machine())?;
    writeln!(out, "device: {device}\n")?;
    writeln!(
        out,
        "command: `vyre bench ring --backend wgpu --workers {workers} --seconds {seconds}`\n"
    )?;
    writeln!(out, "Slots are NOPs (the cost measured is the ring and dispatch path, not the op). Latency: from publishing a batch of E slots to seeing all E done (p50 over the runs).\n")?;
    writeln!(out, "| E (slots per batch) | vyre slots/s | vyre batch latency p50 | vyre dispatches per batch | baseline slots/s | baseline batch latency | throughput vyre/baseline | latency baseline/vyre |")?;
    writeln!(out, "|---|---|---|---|---|---|---|---|")?;
    for e in EPOCHS {
        let slots = vec![nop; e];
        let hb0 = mk.stats().heartbeat;
        let mut lat = Vec::new();
        let start = Instant::now();
        while lat.len() < 3 || (start.elapsed().as_secs_f64() < seconds && lat.len() < 100_000) {
            let t = Instant::now();
            let cs = mk.run_batch(&slots)?;
            lat.push(t.elapsed());
            if !cs.iter().all(|c| matches!(c.outcome, Outcome::Done(_))) {
                return Err("a NOP slot did not complete DONE".into());
            }
        }
        let elapsed = start.elapsed().as_secs_f64();
        let runs = lat.len();
        let dispatches = mk.stats().heartbeat.wrapping_sub(hb0) as f64 / runs as f64;
        lat.sort();
        let v_lat = percentile(&lat, 0.5);
        let v_rate = (runs * e) as f64 / elapsed;

        let t = Instant::now();
        let mut k = 0usize;
        while k < e && (k < 3 || t.elapsed().as_secs_f64() < seconds) {
            match one.run(&nop, k as u32)? {
                Ok(_) => k += 1,
                Err(f) => return Err(format!("baseline NOP faulted: {f}").into()),
            }
        }
        let b_elapsed = t.elapsed();
        let b_rate = k as f64 / b_elapsed.as_secs_f64();
        let (b_lat, est) = if k == e {
            (b_elapsed, "")
        } else {
            (b_elapsed.mul_f64(e as f64 / k as f64), " (est.)")
        };
        writeln!(
            out,
            "| {e} | {} | {} | {dispatches:.1} | {} | {}{est} | {:.1}× | {:.1}× |",
            fmt_rate(v_rate),
            fmt_time(v_lat),
            fmt_rate(b_rate),
            fmt_time(b_lat),
            v_rate / b_rate,
            b_lat.as_secs_f64() / v_lat.as_secs_f64()
        )?;
        eprintln!(
            "E={e}: vyre {} (p50 {}), baseline {}",
            fmt_rate(v_rate),
            fmt_time(v_lat),
            fmt_rate(b_rate)
        );
    }
    let report = mk.shutdown()?;
    if !report.lost.is_empty() {
        return Err(format!("{} slots lost at shutdown", report.lost.len()).into());
    }
    print!("{out}");
    if let Some(path) = out_path {
        std::fs::write(path, &out).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
