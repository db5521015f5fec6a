//! Reads the files named on the command line with `Ingest` and prints bytes, time and CPU.
//! `cargo run --release -p vyre-ingest --example ingest_files -- FILE...`

use std::time::Instant;
use vyre_ingest::{CpuTimes, Event, Ingest, IngestConfig};

fn main() {
    let paths: Vec<std::path::PathBuf> = std::env::args_os().skip(1).map(Into::into).collect();
    let cpu0 = CpuTimes::now();
    let t = Instant::now();
    let mut ing = Ingest::paths(IngestConfig::default(), paths).expect("start ingest");
    eprintln!("engine: {:?}", ing.engine());
    let (mut bytes, mut errors) = (0u64, 0u64);
    while let Some(e) = ing.next_event() {
        match e {
            Event::Chunk(c) => bytes += c.len as u64,
            Event::End(_) => {}
            Event::Error(e) => {
                errors += 1;
                eprintln!("{e}");
            }
        }
    }
    drop(ing);
    let cpu = CpuTimes::now().since(cpu0);
    let s = t.elapsed().as_secs_f64();
    println!(
        "{bytes} bytes, {errors} errors, {s:.3} s, {:.2} GB/s, user {:.3} s, sys {:.3} s",
        bytes as f64 / s / 1e9,
        cpu.user.as_secs_f64(),
        cpu.system.as_secs_f64()
    );
}
