//! `vyre run FILE.vasm`.

use std::path::PathBuf;
use std::process::ExitCode;
use vyre_isa::asm::assemble;
use vyre_isa::disasm::disassemble_slot;
use vyre_isa::SlotOp;
use vyre_runtime::{Config, Megakernel, Outcome};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The .vasm file.
    file: PathBuf,
    /// Backend: auto, cpu, cuda, wgpu.
    #[arg(long, default_value = "auto")]
    backend: String,
    /// Worker count (default: the backend's).
    #[arg(long)]
    workers: Option<usize>,
    /// Most instructions one EXEC slot may execute.
    #[arg(long, default_value_t = 1 << 20)]
    step_budget: u64,
    /// Publish every slot at once instead of one at a time (order-dependent results may vary).
    #[arg(long)]
    batch: bool,
    /// Bytes of each buffer to print.
    #[arg(long, default_value_t = 64)]
    show_bytes: u64,
}

pub fn main(args: Args) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let src = std::fs::read_to_string(&args.file)
        .map_err(|e| format!("cannot read {}: {e}", args.file.display()))?;
    let module = assemble(&src).map_err(|e| format!("{}:{e}", args.file.display()))?;
    let mut ops: Vec<SlotOp> = module
        .slots
        .iter()
        .filter_map(|s| SlotOp::from_u16(s.slot.op))
        .collect();
    ops.sort_by_key(|o| *o as u16);
    ops.dedup();
    let (backend, decision) = crate::backends::create(&args.backend, &ops)?;
    eprintln!("{decision}");
    let config = Config {
        workers: args.workers,
        step_budget: args.step_budget,
        ..Config::default()
    };
    let mk = Megakernel::launch(backend, config)?;
    let mut handles = Vec::new();
    for b in &module.buffers {
        handles.push(mk.create_buffer_with(b.size.into(), &b.init)?);
    }
    let mut ids = Vec::new();
    for p in &module.programs {
        let id = mk.load_program(&p.bytecode).map_err(|e| {
            format!(
                "{}:{}: program `{}`: {e}",
                args.file.display(),
                p.line,
                p.name
            )
        })?;
        ids.push(id);
    }
    let slots: Vec<_> = module
        .slots
        .iter()
        .map(|s| s.link(&handles, &ids))
        .collect();
    let completions = if args.batch {
        mk.run_batch(&slots)?
    } else {
        slots
            .iter()
            .map(|s| mk.publish(*s).and_then(|t| mk.wait(t)))
            .collect::<Result<Vec<_>, _>>()?
    };
    let mut faults = 0;
    for (i, ((decl, slot), c)) in module
        .slots
        .iter()
        .zip(&slots)
        .zip(&completions)
        .enumerate()
    {
        let what = disassemble_slot(slot);
        let what = what.trim_start_matches(".slot ");
        match c.outcome {
            Outcome::Done(r) => println!(
                "slot {i:>3} (line {:>3}) DONE  {what}  -> [{:#x}, {:#x}, {:#x}, {:#x}]",
                decl.line, r[0], r[1], r[2], r[3]
            ),
            Outcome::Fault(f) => {
                faults += 1;
                println!(
                    "slot {i:>3} (line {:>3}) FAULT {what}  -> {} (detail {:#x}, at {})",
                    decl.line, f.code, f.detail, f.at
                );
            }
        }
    }
    for (b, h) in module.buffers.iter().zip(&handles) {
        let n = u64::from(b.size).min(args.show_bytes);
        let bytes = mk.read_buffer(*h, 0, n)?;
        let hex: Vec<String> = bytes
            .chunks(4)
            .map(|c| c.iter().map(|x| format!("{x:02x}")).collect())
            .collect();
        let more = if n < u64::from(b.size) {
            format!(" ... ({} bytes)", b.size)
        } else {
            String::new()
        };
        println!("buffer {} (handle {h}): {}{more}", b.name, hex.join(" "));
    }
    for r in mk.drain_debug_log() {
        println!(
            "debug: position {} tenant {} op {:#x}: {:#x} {:#x} {:#x} {:#x}",
            r.position, r.tenant, r.op_word, r.words[0], r.words[1], r.words[2], r.words[3]
        );
    }
    // Counters are added per batch (and mirrored periodically on a GPU): read them after
    // shutdown, when every worker has flushed.
    let report = mk.shutdown()?;
    let stats = mk.stats();
    eprintln!(
        "{} slots, {} done, {} faulted, epoch {}, {} debug records dropped, {} lost at shutdown",
        slots.len(),
        stats.done,
        stats.faults,
        stats.epoch,
        stats.debug_dropped,
        report.lost.len()
    );
    Ok(if faults == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
