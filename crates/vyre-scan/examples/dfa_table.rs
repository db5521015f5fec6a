//! Compile a rule file and write each group's `VDFA` table as raw little-endian words, the
//! input of `bench/cuda/dfa_probe.cu`.
//!
//! `cargo run --release -p vyre-scan --example dfa_table -- RULES.toml OUT.bin`
//! (a rule set of several groups writes `OUT.bin`, `OUT.bin.1`, ...).

use std::path::Path;
use vyre_scan::{compile, Limits, RuleSet};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, rules, out] = &args[..] else {
        return Err("usage: dfa_table RULES.toml OUT.bin".into());
    };
    let compiled = compile(&RuleSet::load(Path::new(rules))?, &Limits::default())?;
    for (i, group) in compiled.groups.iter().enumerate() {
        let path = if i == 0 {
            out.clone()
        } else {
            format!("{out}.{i}")
        };
        let bytes: Vec<u8> = group.table.iter().flat_map(|w| w.to_le_bytes()).collect();
        std::fs::write(&path, bytes)?;
        println!(
            "{path}: {} rules, {} states, {} columns, {} KiB",
            group.rules.len(),
            group.table[2],
            group.table[3],
            group.table.len() * 4 / 1024
        );
    }
    Ok(())
}
