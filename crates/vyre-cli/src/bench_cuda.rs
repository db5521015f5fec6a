//! `vyre bench ring --backend cuda`: the megakernel's round trip against launch + readback,
//! graph replay and a raw mapped-memory ping-pong on the same GPU in the same run; and
//! throughput for NOP and HASH64-over-4-KiB slots at several batch sizes, side by side with
//! the cpu backend on all of the host's cores.

use crate::bench_ring::{fmt_rate, machine, percentile, throughput};
use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vyre_isa::{Slot, SlotOp};
use vyre_runtime::{Backend, Config, Megakernel, Outcome};

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn stats(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (percentile(&v, 0.5), percentile(&v, 0.99))
}

fn done_count(c: &[vyre_runtime::Completion]) -> usize {
    c.iter()
        .filter(|c| matches!(c.outcome, Outcome::Done(_)))
        .count()
}

pub fn main(
    out_file: &Option<std::path::PathBuf>,
    seconds: f64,
    round_trips: usize,
    round_trip_only: bool,
) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let mut out = String::new();
    let base = vyre_cuda::bench::baselines(round_trips)?;
    let cuda = Arc::new(vyre_cuda::CudaBackend::new()?);
    let device = cuda.capabilities().device.clone();
    writeln!(out, "# vyre bench ring — backend cuda\n")?;
    writeln!(out, "GPU: {device}\n\nhost: {}\n", machine())?;
    writeln!(out, "command: `vyre bench ring --backend cuda --seconds {seconds} --round-trips {round_trips}`\n")?;
    let mk = Megakernel::launch(
        cuda.clone(),
        Config {
            capacity: 1 << 17,
            ..Config::default()
        },
    )?;
    let nop = Slot::new(SlotOp::Nop, &[]);
    for _ in 0..1000 {
        mk.wait(mk.publish(nop)?)?;
    }
    let mut rt = Vec::with_capacity(round_trips);
    for _ in 0..round_trips {
        let t = Instant::now();
        let c = mk.wait(mk.publish(nop)?)?;
        rt.push(t.elapsed());
        assert!(matches!(c.outcome, Outcome::Done(_)));
    }
    let (v50, v99) = stats(rt);
    let (l50, l99) = stats(base.launch_readback);
    let (g50, g99) = stats(base.graph_replay);
    let (p50, p99) = stats(base.pingpong);
    writeln!(
        out,
        "## (a) Round trip: one NOP published → DONE observed by the host\n"
    )?;
    writeln!(out, "| path | p50 | p99 | p50 vs vyre |\n|---|---|---|---|")?;
    writeln!(
        out,
        "| vyre megakernel (persistent, mapped ring) | {:.2} µs | {:.2} µs | 1.00× |",
        us(v50),
        us(v99)
    )?;
    writeln!(
        out,
        "| kernel launch + 4-byte readback + sync | {:.2} µs | {:.2} µs | {:.2}× |",
        us(l50),
        us(l99),
        us(l50) / us(v50)
    )?;
    writeln!(
        out,
        "| CUDA graph replay + sync | {:.2} µs | {:.2} µs | {:.2}× |",
        us(g50),
        us(g99),
        us(g50) / us(v50)
    )?;
    writeln!(
        out,
        "| raw mapped-memory ping-pong (the floor) | {:.2} µs | {:.2} µs | {:.2}× |\n",
        us(p50),
        us(p99),
        us(p50) / us(v50)
    )?;
    eprintln!(
        "round trip p50: vyre {:.2} µs, launch {:.2}, graph {:.2}, ping-pong {:.2}",
        us(v50),
        us(l50),
        us(g50),
        us(p50)
    );
    if round_trip_only {
        mk.shutdown()?;
        print!("{out}");
        if let Some(path) = out_file {
            std::fs::write(path, &out)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        return Ok(ExitCode::SUCCESS);
    }

    // Throughput: NOP and HASH64 over 4 KiB, vyre cuda vs the cpu backend on all cores.
    let data: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let want = vyre_isa::hash::xxh64(&data, 0);
    let buf = mk.create_buffer_with(4096, &data)?;
    let check = mk.wait(mk.publish(Slot::new(SlotOp::Hash64, &[buf, 0, 4096, 0]))?)?;
    let got = check.results();
    if u64::from(got[1]) << 32 | u64::from(got[0]) != want {
        return Err(format!("HASH64 on cuda gave {got:?}, the host computes {want:#x}").into());
    }
    let cpu = Megakernel::launch(
        Arc::new(vyre_cpu::CpuBackend::new()),
        Config {
            capacity: 1 << 17,
            ..Config::default()
        },
    )?;
    let cpu_buf = cpu.create_buffer_with(4096, &data)?;
    writeln!(out, "## (b) Throughput (batch published, every completion awaited), vs the cpu backend on all host cores\n")?;
    writeln!(
        out,
        "| op | batch | vyre cuda | vyre cpu | cuda/cpu |\n|---|---|---|---|---|"
    )?;
    for (name, g, c) in [
        ("NOP", nop, nop),
        (
            "HASH64 4 KiB",
            Slot::new(SlotOp::Hash64, &[buf, 0, 4096, 0]),
            Slot::new(SlotOp::Hash64, &[cpu_buf, 0, 4096, 0]),
        ),
    ] {
        for batch in [1usize, 32, 1024, 65536] {
            let gs = vec![g; batch];
            let cs = vec![c; batch];
            let secs = if batch >= 1024 {
                seconds
            } else {
                seconds / 2.0
            };
            let gr = throughput(secs, batch, || {
                done_count(&mk.run_batch(&gs).expect("cuda run"))
            });
            let cr = throughput(secs, batch, || {
                done_count(&cpu.run_batch(&cs).expect("cpu run"))
            });
            writeln!(
                out,
                "| {name} | {batch} | {} | {} | {:.2}× |",
                fmt_rate(gr),
                fmt_rate(cr),
                gr / cr
            )?;
            eprintln!(
                "{name} batch {batch}: cuda {}, cpu {}",
                fmt_rate(gr),
                fmt_rate(cr)
            );
        }
    }
    let stats = mk.stats();
    writeln!(
        out,
        "\ncontrol block after the run: {} done, {} faults, heartbeat {}",
        stats.done, stats.faults, stats.heartbeat
    )?;
    cpu.shutdown()?;
    let report = mk.shutdown()?;
    if !report.lost.is_empty() {
        return Err(format!("{} slots lost at shutdown", report.lost.len()).into());
    }
    print!("{out}");
    if let Some(path) = out_file {
        std::fs::write(path, &out).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
