//! `vyre info`.

use std::process::ExitCode;
use vyre_isa::SlotOp;
use vyre_runtime::protocol::{PROTOCOL_VERSION, SLOT_BYTES};
use vyre_runtime::routing::KNOWN_BACKENDS;
use vyre_runtime::{route, BackendChoice, BackendProvider};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The backend to route for: auto, cpu, cuda, wgpu.
    #[arg(long, default_value = "auto")]
    backend: String,
}

pub fn main(args: Args) -> Result<ExitCode, Box<dyn std::error::Error>> {
    println!("vyre {} — ring protocol v{PROTOCOL_VERSION}, {SLOT_BYTES}-byte slots, {} core slot opcodes", env!("CARGO_PKG_VERSION"), SlotOp::ALL.len());
    println!();
    println!("backends:");
    let providers = crate::backends::providers();
    for name in KNOWN_BACKENDS {
        match providers.iter().find(|p| p.name() == *name) {
            None => println!("  {name:<5} not compiled into this build"),
            Some(p) => match p.probe() {
                Err(e) => println!("  {name:<5} unavailable: {e}"),
                Ok(c) => {
                    println!("  {name:<5} available: {}", c.device);
                    println!(
                        "        model {:?}, kind {:?}, {} workers by default, up to {}",
                        c.model, c.kind, c.default_workers, c.max_workers
                    );
                    println!(
                        "        buffers: {} of up to {} bytes; programs: {}",
                        c.max_buffers, c.max_buffer_bytes, c.max_programs
                    );
                    let ops: Vec<_> = c.ops.iter().map(|o| o.mnemonic()).collect();
                    println!("        opcodes: {}", ops.join(" "));
                }
            },
        }
    }
    #[cfg(feature = "cuda")]
    if providers
        .iter()
        .any(|p| p.name() == "cuda" && p.probe().is_ok())
    {
        println!();
        println!("cuda megakernel start-up:");
        match vyre_cuda::bench::startup_report() {
            Ok(lines) => lines.iter().for_each(|l| println!("  {l}")),
            Err(e) => println!("  failed: {e}"),
        }
    }
    println!();
    let choice: BackendChoice = args.backend.parse()?;
    let refs: Vec<&dyn BackendProvider> = providers.iter().map(|p| p.as_ref()).collect();
    match route(&choice, &refs, SlotOp::ALL) {
        Ok(d) => {
            println!(
                "routing (--backend {}, workload: every core opcode):",
                args.backend
            );
            println!(
                "  chose {} by rule `{}`: {}",
                d.backend, d.strategy, d.reason
            );
            for v in &d.considered {
                println!(
                    "  - {}: {}{}",
                    v.name,
                    if v.usable { "usable, " } else { "not usable, " },
                    v.why
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("routing (--backend {}): {e}", args.backend);
            Ok(ExitCode::from(2))
        }
    }
}
