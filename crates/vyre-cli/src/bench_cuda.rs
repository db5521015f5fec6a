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
    host_threads: Option<usize>,
) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let mut out = String::new();
    let base = vyre_cuda::bench::baselines(round_trips)?;
    let cuda = Arc::new(vyre_cuda::CudaBackend::new()?);
    let device = cuda.capabilities().device.clone();
    writeln!(out, "# vyre bench ring — backend cuda\n")?;
    writeln!(out, "GPU: {device}\n\nhost: {}\n", machine())?;
    let threads_arg = host_threads.map_or(String::new(), |n| format!(" --host-threads {n}"));
    writeln!(out, "command: `vyre bench ring --backend cuda --seconds {seconds} --round-trips {round_trips}{threads_arg}`\n")?;
    let mk = Megakernel::launch(
        cuda.clone(),
        Config {
            capacity: 1 << 17,
            host_threads,
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
    // The same for a slot that reads memory: LOAD_U32 of a device-buffer word takes the general
    // path (a NOP is completed where the hot warp's line poll saw it).
    let word = mk.create_buffer_with(4, &0x5eed_u32.to_le_bytes())?;
    let load = Slot::new(SlotOp::LoadU32, &[word, 0]);
    let mut rt_load = Vec::with_capacity(round_trips);
    for i in 0..1000 + round_trips {
        let t = Instant::now();
        let c = mk.wait(mk.publish(load)?)?;
        if i >= 1000 {
            rt_load.push(t.elapsed());
        }
        if c.outcome != Outcome::Done([0x5eed, 0, 0, 0]) {
            return Err(format!("LOAD_U32 round trip gave {:?}", c.outcome).into());
        }
    }
    let trace = match round_trip_stages(&mk, &cuda, nop, round_trips.min(5000))? {
        Some(t) => Some(
            t + &round_trip_stages(&mk, &cuda, load, round_trips.min(5000))?.unwrap_or_default(),
        ),
        None => None,
    };
    let (v50, v99) = stats(rt);
    let (w50, w99) = stats(rt_load);
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
        "| vyre megakernel, LOAD_U32 of a device word instead | {:.2} µs | {:.2} µs | {:.2}× |",
        us(w50),
        us(w99),
        us(w50) / us(v50)
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
    writeln!(
        out,
        "vyre against the ping-pong (p50): NOP {:.2}×, LOAD_U32 {:.2}×; launch + readback against vyre's NOP: {:.2}×\n",
        us(v50) / us(p50),
        us(w50) / us(p50),
        us(l50) / us(v50)
    )?;
    if let Some(t) = &trace {
        out.push_str(t);
    }
    eprintln!(
        "round trip p50: vyre {:.2} µs (LOAD_U32 {:.2}), launch {:.2}, graph {:.2}, ping-pong {:.2}",
        us(v50),
        us(w50),
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
            host_threads,
            ..Config::default()
        },
    )?;
    let cpu_buf = cpu.create_buffer_with(4096, &data)?;
    writeln!(out, "## (b) Throughput (batch published, every completion read), vs the cpu backend on all host cores\n")?;
    writeln!(
        out,
        "Each batch through `run_batch_into`, one result vector reused for every batch, on both backends; \
         the last rows are `run_batch`, a new vector per batch.\n"
    )?;
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
            let (mut gv, mut cv) = (Vec::new(), Vec::new());
            let gr = throughput(secs, batch, || {
                mk.run_batch_into(&gs, &mut gv).expect("cuda run");
                done_count(&gv)
            });
            let cr = throughput(secs, batch, || {
                cpu.run_batch_into(&cs, &mut cv).expect("cpu run");
                done_count(&cv)
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
    {
        let (name, batch) = ("NOP", 65536);
        let (gs, cs) = (vec![nop; batch], vec![nop; batch]);
        let gr = throughput(seconds, batch, || {
            done_count(&mk.run_batch(&gs).expect("cuda run"))
        });
        let cr = throughput(seconds, batch, || {
            done_count(&cpu.run_batch(&cs).expect("cpu run"))
        });
        writeln!(
            out,
            "| {name} (`run_batch`) | {batch} | {} | {} | {:.2}× |",
            fmt_rate(gr),
            fmt_rate(cr),
            gr / cr
        )?;
    }
    out.push_str(&device_rate(
        &mk,
        &[
            ("NOP", nop),
            (
                "HASH64 4 KiB",
                Slot::new(SlotOp::Hash64, &[buf, 0, 4096, 0]),
            ),
        ],
    )?);
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
    drop(mk);
    drop(cuda);
    out.push_str(&host_thread_sweep(seconds, nop)?);
    out.push_str(&host_alone(nop)?);
    print!("{out}");
    if let Some(path) = out_file {
        std::fs::write(path, &out).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// With `VYRE_CUDA_TRACE=1`: where a round trip's time goes, from the kernel's stage
/// timestamps (GPU clock) and the host's own clock around publish and wait.
fn round_trip_stages(
    mk: &Megakernel,
    cuda: &vyre_cuda::CudaBackend,
    slot: Slot,
    n: usize,
) -> Result<Option<String>, Box<dyn std::error::Error>> {
    if cuda.trace_words().is_none() {
        return Ok(None);
    }
    let mut cols: [Vec<Duration>; 10] = Default::default();
    let mut last = cuda.trace_words().expect("tracing")[5];
    for _ in 0..n {
        let t0 = Instant::now();
        let ticket = mk.publish(slot)?;
        let t1 = Instant::now();
        mk.wait(ticket)?;
        let t2 = Instant::now();
        // Stamps 2..=5 come from the worker that ran the slot, in order (a round trip whose
        // stamp 5 did not arrive within 1 ms is left out).
        let Some(w) = cuda.trace_words_after(last) else {
            continue;
        };
        last = w[5];
        let d = |a: usize, b: usize| {
            Duration::from_nanos(u64::from(w[b].wrapping_sub(w[a])).min(1 << 30))
        };
        let gpu = d(2, 5);
        cols[0].push(t1 - t0);
        for (i, (a, b)) in [(2, 3), (3, 4), (4, 5)].into_iter().enumerate() {
            cols[1 + i].push(d(a, b));
        }
        cols[4].push((t2 - t1).saturating_sub(gpu));
        cols[5].push(t2 - t0);
        for (i, (a, b)) in [(2, 0), (0, 3), (3, 1), (1, 4)].into_iter().enumerate() {
            cols[6 + i].push(d(a, b));
        }
    }
    let names = [
        "host: publish() call",
        "gpu: the worker sees its slot published → slot words loaded (one PCIe read; none when its line poll brought them)",
        "gpu: loaded → executed, results written",
        "gpu: results → status stored",
        "rest: the tail store reaching the worker's poll + the status reaching the host + wait()",
        "total",
        "(of the second and third rows) run → run_lanes entered",
        "(of them) run_lanes entered → slot words in the running lanes",
        "(of them) slot words → exec_slot entered",
        "(of them) exec_slot entered → returned",
    ];
    let mut t = format!(
        "### Round trip by stage, {} (VYRE_CUDA_TRACE=1; medians of {} of {n} round trips, those whose stamps arrived)\n\n| stage | p50 | p99 |\n|---|---|---|\n",
        SlotOp::from_u16(slot.op).map_or("?", SlotOp::mnemonic),
        cols[5].len()
    );
    for (name, v) in names.iter().zip(cols) {
        let (a, b) = stats(v);
        t.push_str(&format!("| {name} | {:.2} µs | {:.2} µs |\n", us(a), us(b)));
    }
    let w = cuda.trace_words().expect("tracing");
    let (dt, dc) = (w[10].wrapping_sub(w[8]), w[11].wrapping_sub(w[9]));
    if dt > 0 {
        t.push_str(&format!(
            "\nSM clock of the control warp's SM after the last round trip: {:.0} MHz ({dc} cycles in {dt} ns)\n",
            f64::from(dc) * 1e3 / f64::from(dt)
        ));
    }
    t.push('\n');
    eprint!("{t}");
    Ok(Some(t))
}

/// End-to-end throughput at 65,536 slots by the number of host threads that share the slot
/// writes and completion reads (`Config::host_threads`), each on a fresh megakernel (one
/// persistent kernel at a time), against one host thread in the same run.
fn host_thread_sweep(seconds: f64, nop: Slot) -> Result<String, Box<dyn std::error::Error>> {
    let data = vec![7u8; 4096];
    let mut t = String::from(
        "\n## (d) End to end by host threads: 65536 slots per run_batch_into (one vector reused)\n\n\
         | host threads | NOP | vs 1 thread | HASH64 4 KiB | vs 1 thread |\n|---|---|---|---|---|\n",
    );
    let mut base = None;
    for threads in [1usize, 2, 4, 8] {
        let mk = Megakernel::launch(
            Arc::new(vyre_cuda::CudaBackend::new()?),
            Config {
                capacity: 1 << 17,
                host_threads: Some(threads),
                ..Config::default()
            },
        )?;
        let buf = mk.create_buffer_with(4096, &data)?;
        let mut rates = [0.0f64; 2];
        for (rate, slot) in rates
            .iter_mut()
            .zip([nop, Slot::new(SlotOp::Hash64, &[buf, 0, 4096, 0])])
        {
            let (slots, mut got) = (vec![slot; 65536], Vec::new());
            *rate = throughput(seconds, slots.len(), || {
                mk.run_batch_into(&slots, &mut got).expect("cuda run");
                done_count(&got)
            });
        }
        let report = mk.shutdown()?;
        if !report.lost.is_empty() {
            return Err(format!("{} slots lost at shutdown", report.lost.len()).into());
        }
        let [b_nop, b_hash] = *base.get_or_insert(rates);
        t.push_str(&format!(
            "| {threads} | {} | {:.2}× | {} | {:.2}× |\n",
            fmt_rate(rates[0]),
            rates[0] / b_nop,
            fmt_rate(rates[1]),
            rates[1] / b_hash
        ));
    }
    eprint!("{t}");
    Ok(t)
}

/// The host's side alone, on heap memory (no device): 65,536 slots published whole, marked
/// finished by this thread as a worker would, then reaped, by the number of host threads.
/// Separates what the host threads cost from what mapped memory and the device add.
fn host_alone(nop: Slot) -> Result<String, Box<dyn std::error::Error>> {
    use vyre_runtime::protocol::{slot_word, SLOT_WORDS};
    use vyre_runtime::ring::{self, HeapRing, HostRing, RingMemory};
    let n = 65536usize;
    let cap = 1u32 << 17;
    let slots = vec![nop; n];
    let mut t = String::from(
        "\n## (e) Host alone, heap ring memory: 65536 slots published whole, then reaped (median of 9)\n\n\
         | host threads | publish | reap |\n|---|---|---|\n",
    );
    for threads in [1usize, 2, 4, 8] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()?;
        let mem = HeapRing::new(cap, 2);
        ring::initialize(&mem, cap, 2, 0);
        let mut host = HostRing::new(cap, 0);
        let (mut p, mut r) = (Vec::new(), Vec::new());
        let mut out = Vec::with_capacity(n);
        for _ in 0..9 {
            let first = host.tail();
            let t0 = Instant::now();
            assert!(host.publish_whole_on(&mem, &slots, Some(&pool)));
            p.push(t0.elapsed());
            for k in 0..n as u32 {
                let pos = first.wrapping_add(k);
                let w = &mem.slots()[(pos & (cap - 1)) as usize * SLOT_WORDS..][..SLOT_WORDS];
                w[slot_word::STATUS].store(
                    vyre_runtime::protocol::status::DONE,
                    std::sync::atomic::Ordering::Release,
                );
            }
            out.clear();
            let t1 = Instant::now();
            let got = host.reap_into(&mem, host.tail(), &mut out, Some(&pool), true);
            r.push(t1.elapsed());
            if got != n {
                return Err(format!("host-alone reap took {got} of {n}").into());
            }
        }
        let per = |v: Vec<Duration>| stats(v).0.as_secs_f64() * 1e9 / n as f64;
        t.push_str(&format!(
            "| {threads} | {:.2} ns/slot | {:.2} ns/slot |\n",
            per(p),
            per(r)
        ));
    }
    eprint!("{t}");
    Ok(t)
}

/// The device's own rate: a batch written whole and made visible with one tail store, timed
/// from that store until the done count (kept in device memory, mirrored to the host) covers
/// it; the host's publish and reap are timed apart.
fn device_rate(
    mk: &Megakernel,
    ops: &[(&str, Slot)],
) -> Result<String, Box<dyn std::error::Error>> {
    let n = (mk.config().capacity as usize / 2).min(65536);
    let mut t = format!(
        "\n## (c) Where throughput goes: {n} slots written whole, one tail store (median of 7)\n\n\
         | op | host publish | device (tail store → done count) | host reap | device rate |\n|---|---|---|---|---|\n"
    );
    for &(name, slot) in ops {
        let slots = vec![slot; n];
        let (mut p, mut d, mut r) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..7 {
            let before = mk.done_count();
            let t0 = Instant::now();
            let tickets = mk.publish_batch_whole(&slots)?;
            let t1 = Instant::now();
            let deadline = t1 + Duration::from_secs(10);
            while (mk.done_count().wrapping_sub(before) as usize) < n {
                if Instant::now() > deadline {
                    return Err(
                        format!("{name}: the done count did not reach {n} within 10 s").into(),
                    );
                }
                std::hint::spin_loop();
            }
            let t2 = Instant::now();
            let c = mk.wait_range(tickets)?;
            let t3 = Instant::now();
            if done_count(&c) != n {
                return Err(
                    format!("{name}: {} of {n} slots finished DONE", done_count(&c)).into(),
                );
            }
            p.push(t1 - t0);
            d.push(t2 - t1);
            r.push(t3 - t2);
        }
        let med = |v: Vec<Duration>| stats(v).0;
        let (p, d, r) = (med(p), med(d), med(r));
        let per = |x: Duration| x.as_secs_f64() * 1e9 / n as f64;
        t.push_str(&format!(
            "| {name} | {:.2} ns/slot | {:.1} µs | {:.2} ns/slot | {} |\n",
            per(p),
            us(d),
            per(r),
            fmt_rate(n as f64 / d.as_secs_f64())
        ));
    }
    t.push_str(
        "\nThe device time includes up to ~10 µs of the done count's mirror delay and the workers' batched counting: if anything, the device rate is understated.\n",
    );
    eprint!("{t}");
    Ok(t)
}
