//! `vyre bench ring`: slot round trip and throughput on the megakernel, side by side with a
//! baseline that hands each op to a thread pool over channels.
//!
//! Both sides execute the same `vyre_isa::exec_slot` on the same slots with the same number
//! of threads. The baseline is the usual design: one channel per pool thread, ops dealt
//! round-robin, results back on one shared channel; threads block in `recv` when idle.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vyre_isa::{exec_slot, Env, Fault, Memory, Program, Results, Slot, SlotOp};
use vyre_runtime::{Config, Megakernel};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Backend: auto, cpu, cuda, wgpu.
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// Worker threads for vyre and for the pool (default: available cores).
    #[arg(long)]
    workers: Option<usize>,
    /// Seconds per throughput measurement.
    #[arg(long, default_value_t = 1.0)]
    seconds: f64,
    /// Round trips to time.
    #[arg(long, default_value_t = 20_000)]
    round_trips: usize,
    /// Also write the table (markdown) to this file.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    /// Measure the round trip only (for quick parameter sweeps).
    #[arg(long)]
    round_trip_only: bool,
    /// Host threads that share the writes and reads of large batches (default: half the
    /// cores, 1 to 8, on a GPU backend; a quarter, 1 to 4, on cpu; `Config::host_threads`).
    #[arg(long)]
    host_threads: Option<usize>,
}

/// No buffers: NOP-class ops touch none.
struct NoMemory;

impl Memory for NoMemory {
    fn size(&self, _: u32) -> Option<u64> {
        None
    }
    fn load_u32(&self, _: u32, _: u64) -> u32 {
        unreachable!("no buffers")
    }
    fn store_u32(&self, _: u32, _: u64, _: u32) {}
    fn fetch_add_u32(&self, _: u32, _: u64, _: u32) -> u32 {
        unreachable!("no buffers")
    }
    fn cas_u32(&self, _: u32, _: u64, _: u32, _: u32) -> u32 {
        unreachable!("no buffers")
    }
    fn read(&self, _: u32, _: u64, _: &mut [u8]) {}
    fn write(&self, _: u32, _: u64, _: &[u8]) {}
}

struct PoolEnv(NoMemory);

impl Env for PoolEnv {
    type Mem = NoMemory;
    type Prog = Arc<Program>;
    fn mem(&self) -> &NoMemory {
        &self.0
    }
    fn program(&self, _: u32) -> Option<Arc<Program>> {
        None
    }
    fn fence(&self) -> u32 {
        0
    }
    fn debug_log(&self, _: u32, _: &Slot, _: [u32; 4]) -> bool {
        false
    }
    fn request_shutdown(&self) {}
    fn step_budget(&self) -> u64 {
        1 << 20
    }
}

type Job = (u32, Slot);
type Done = (u32, Result<Results, Fault>);

/// The baseline: a thread pool fed over channels.
struct Pool {
    txs: Vec<mpsc::Sender<Job>>,
    rx: mpsc::Receiver<Done>,
    threads: Vec<std::thread::JoinHandle<()>>,
    next: usize,
}

impl Pool {
    fn new(n: usize) -> Pool {
        let (done_tx, rx) = mpsc::channel::<Done>();
        let mut txs = Vec::new();
        let mut threads = Vec::new();
        for _ in 0..n {
            let (tx, jobs) = mpsc::channel::<Job>();
            let done = done_tx.clone();
            threads.push(std::thread::spawn(move || {
                let env = PoolEnv(NoMemory);
                for (id, slot) in jobs {
                    if done.send((id, exec_slot(&env, &slot, 0, id))).is_err() {
                        break;
                    }
                }
            }));
            txs.push(tx);
        }
        Pool {
            txs,
            rx,
            threads,
            next: 0,
        }
    }

    fn run(&mut self, slots: &[Slot]) -> usize {
        for (i, s) in slots.iter().enumerate() {
            self.txs[self.next]
                .send((i as u32, *s))
                .expect("pool thread alive");
            self.next = (self.next + 1) % self.txs.len();
        }
        let mut ok = 0;
        for _ in slots {
            let (_, r) = self.rx.recv().expect("pool thread alive");
            ok += usize::from(r.is_ok());
        }
        ok
    }

    fn shutdown(self) {
        drop(self.txs);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Runs `f(batch)` repeatedly for about `seconds`; returns items per second.
pub(crate) fn throughput(seconds: f64, batch: usize, mut f: impl FnMut() -> usize) -> f64 {
    // Warm up.
    for _ in 0..3 {
        assert_eq!(f(), batch, "every slot must complete DONE");
    }
    let start = Instant::now();
    let mut n = 0usize;
    while start.elapsed().as_secs_f64() < seconds {
        assert_eq!(f(), batch, "every slot must complete DONE");
        n += batch;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown cpu".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    format!("{cpu}, {cores} cores available, Linux {kernel}")
}

pub(crate) fn fmt_rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2} M/s", r / 1e6)
    } else {
        format!("{:.1} k/s", r / 1e3)
    }
}

pub fn main(args: Args) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let (backend, decision) = crate::backends::create(&args.backend, &[SlotOp::Nop])?;
    #[cfg(feature = "cuda")]
    if backend.name() == "cuda" {
        drop(backend);
        if args.workers.is_some() {
            eprintln!("note: --workers does not apply to cuda: its grid is sized by occupancy (VYRE_CUDA_BLOCKS_PER_SM)");
        }
        eprintln!("{decision}");
        return crate::bench_cuda::main(
            &args.out,
            args.seconds,
            args.round_trips,
            args.round_trip_only,
            args.host_threads,
        );
    }
    #[cfg(feature = "wgpu")]
    if backend.name() == "wgpu" {
        eprintln!("{decision}");
        return crate::bench_wgpu::main(backend, args.workers, args.seconds, &args.out);
    }
    let workers = args
        .workers
        .unwrap_or_else(|| backend.capabilities().default_workers);
    eprintln!("{decision}; {workers} worker(s); baseline: thread pool of {workers} over channels");
    let mk = Megakernel::launch(
        backend.clone(),
        Config {
            workers: Some(workers),
            capacity: 1 << 14,
            host_threads: args.host_threads,
            ..Config::default()
        },
    )?;
    let mut pool = Pool::new(workers);
    let nop = Slot::new(SlotOp::Nop, &[]);
    let mut out = String::new();
    writeln!(
        out,
        "# vyre bench ring — backend {}, {workers} worker(s)\n",
        backend.name()
    )?;
    writeln!(out, "machine: {}\n", machine())?;
    writeln!(out, "command: `vyre bench ring --backend {} --workers {workers} --seconds {} --round-trips {}`\n", args.backend, args.seconds, args.round_trips)?;

    // Round trip: publish one NOP, wait for DONE; back to back so workers stay awake.
    let rt = |f: &mut dyn FnMut()| {
        for _ in 0..1000 {
            f();
        }
        let mut v: Vec<Duration> = (0..args.round_trips)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect();
        v.sort();
        (percentile(&v, 0.5), percentile(&v, 0.99))
    };
    let (v50, v99) = rt(&mut || {
        let t = mk.publish(nop).expect("publish");
        assert!(matches!(
            mk.wait(t).expect("wait").outcome,
            vyre_runtime::Outcome::Done(_)
        ));
    });
    let (p50, p99) = rt(&mut || assert_eq!(pool.run(&[nop]), 1));
    writeln!(out, "## Round trip (one NOP, publish → DONE observed)\n")?;
    writeln!(out, "| | p50 | p99 |\n|---|---|---|")?;
    writeln!(
        out,
        "| vyre ring | {:.2} µs | {:.2} µs |",
        v50.as_secs_f64() * 1e6,
        v99.as_secs_f64() * 1e6
    )?;
    writeln!(
        out,
        "| thread pool over channels | {:.2} µs | {:.2} µs |",
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6
    )?;
    writeln!(
        out,
        "| ratio (pool / vyre, p50) | {:.2}× | |\n",
        p50.as_secs_f64() / v50.as_secs_f64()
    )?;

    writeln!(
        out,
        "## Throughput (NOP slots, batch published then all completions awaited)\n"
    )?;
    writeln!(
        out,
        "| batch | vyre | thread pool | ratio vyre/pool |\n|---|---|---|---|"
    )?;
    for batch in [1usize, 32, 1024] {
        let slots = vec![nop; batch];
        let v = throughput(args.seconds, batch, || {
            mk.run_batch(&slots)
                .expect("run")
                .iter()
                .filter(|c| matches!(c.outcome, vyre_runtime::Outcome::Done(_)))
                .count()
        });
        let p = throughput(args.seconds, batch, || pool.run(&slots));
        writeln!(
            out,
            "| {batch} | {} | {} | {:.2}× |",
            fmt_rate(v),
            fmt_rate(p),
            v / p
        )?;
        eprintln!("batch {batch}: vyre {}, pool {}", fmt_rate(v), fmt_rate(p));
    }
    pool.shutdown();
    let report = mk.shutdown()?;
    if !report.lost.is_empty() {
        return Err(format!("{} slots lost at shutdown", report.lost.len()).into());
    }
    print!("{out}");
    if let Some(path) = args.out {
        std::fs::write(&path, &out).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}
