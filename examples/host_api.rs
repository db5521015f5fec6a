//! The Megakernel host API in one page: launch on a backend, register a buffer, load a
//! program, publish single slots and a batch, wait, read results, shut down.
//!
//! Run with `cargo run --release -p vyre-cpu --example host_api`.

use std::sync::Arc;
use vyre_cpu::CpuBackend;
use vyre_isa::{assemble, Slot, SlotOp};
use vyre_runtime::{Config, Megakernel, Outcome};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 1. Launch persistent workers on the cpu backend (the embedded default).
    let mk = Megakernel::launch(Arc::new(CpuBackend::new()), Config::default())?;

    // 2. Register a buffer with initial contents.
    let data = mk.create_buffer_with(4096, b"the quick brown fox jumps over the lazy dog")?;

    // 3. Load a VIR0 program (assembled from text here; `Megakernel::load_program` takes
    //    bytecode and validates it once).
    let module = assemble(".program square\n    mul r0, r1, r1\n    halt\n.end\n")?;
    let square = mk.load_program(&module.programs[0].bytecode)?;

    // 4. Publish one slot and wait for it.
    let t = mk.publish(Slot::new(SlotOp::Hash64, &[data, 0, 43, 0]))?;
    let c = mk.wait(t)?;
    if let Outcome::Done(r) = c.outcome {
        println!("xxh64 = {:#018x}", u64::from(r[1]) << 32 | u64::from(r[0]));
    }

    // 5. Publish a batch: one tail store per 64 slots; completions come back in order.
    let batch: Vec<Slot> = (0..1000u32)
        .map(|i| Slot::new(SlotOp::Exec, &[square, i]))
        .collect();
    let done = mk.run_batch(&batch)?;
    let sum: u64 = done.iter().map(|c| u64::from(c.results()[0])).sum();
    println!("sum of squares 0..1000 = {sum}");

    // 6. A fault does not stop the workers.
    let bad = mk.wait(mk.publish(Slot::new(SlotOp::LoadU32, &[data, 8192]))?)?;
    println!("out-of-bounds load: {:?}", bad.outcome);

    // 7. Counters from the control block, then a clean shutdown that accounts for every slot.
    println!("done count = {}", mk.done_count());
    let report = mk.shutdown()?;
    println!(
        "shutdown: {} drained, {} lost",
        report.drained,
        report.lost.len()
    );
    Ok(())
}
