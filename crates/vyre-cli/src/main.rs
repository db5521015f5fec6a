//! `vyre`: the command-line tool.

#![forbid(unsafe_code)]

mod backends;
#[cfg(feature = "cuda")]
mod bench_cuda;
mod bench_ingest;
#[cfg(feature = "cuda")]
mod bench_ingest_cuda;
#[cfg(any(feature = "cuda", feature = "wgpu"))]
mod bench_ingest_gpu;
#[cfg(feature = "wgpu")]
mod bench_ingest_wgpu;
mod bench_ring;
mod bench_scan;
#[cfg(feature = "wgpu")]
mod bench_wgpu;
mod info;
mod run;
mod scan;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// mimalloc instead of the C library's allocator: a scan's walk threads allocate each file's
/// path and their reports, which the sink's thread frees.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// vyre: a persistent bytecode interpreter fed by a host ring.
#[derive(Debug, Parser)]
#[command(name = "vyre", version, about)]
struct Cli {
    /// Log level filter (error, warn, info, debug, trace); also RUST_LOG.
    #[arg(long, global = true, default_value = "warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Backends found, their capabilities, and the routing decision with its reason.
    Info(info::Args),
    /// Assemble a .vasm file, validate it, run its slots on the megakernel, print results.
    Run(run::Args),
    /// Scan files and directories against a rule set (literals and regexes) on the GPU
    /// when one can run it, else on the cpu backend.
    Scan(scan::Args),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Slot round trip and throughput against a thread pool fed over channels.
    Ring(bench_ring::Args),
    /// File ingest (io_uring) side by side with fio and a buffered read loop.
    Ingest(bench_ingest::Args),
    /// `vyre scan` on each backend side by side with ripgrep and regex-automata.
    Scan(bench_scan::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cli.log));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Info(a) => info::main(a),
        Command::Run(a) => run::main(a),
        Command::Scan(a) => scan::main(a),
        Command::Bench(BenchCommand::Ring(a)) => bench_ring::main(a),
        Command::Bench(BenchCommand::Ingest(a)) => bench_ingest::main(a),
        Command::Bench(BenchCommand::Scan(a)) => bench_scan::main(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
