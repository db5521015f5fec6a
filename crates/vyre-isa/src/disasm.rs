//! The disassembler: programs and slots back to `.vasm` text that assembles to the same bytes.

use crate::program::{OperandKind, Program};
use crate::slot::{Slot, SlotOp};
use std::collections::BTreeSet;
use std::fmt::Write;

/// Disassembles a program as a `.program NAME` ... `.end` block; jump targets get labels
/// `L<index>`.
pub fn disassemble_program(name: &str, prog: &Program) -> String {
    let targets: BTreeSet<usize> = prog
        .insns()
        .iter()
        .filter(|i| i.op.has_target())
        .map(|i| i.imm as usize)
        .collect();
    let mut out = format!(".program {name}\n");
    for (pc, insn) in prog.insns().iter().enumerate() {
        if targets.contains(&pc) {
            let _ = writeln!(out, "L{pc}:");
        }
        let mut r = 0;
        let operands: Vec<String> = insn
            .op
            .operands()
            .iter()
            .map(|spec| match spec.kind {
                OperandKind::Reg => {
                    r += 1;
                    format!("r{}", insn.regs[r - 1])
                }
                OperandKind::Imm => insn.imm.to_string(),
                OperandKind::Target => format!("L{}", insn.imm),
            })
            .collect();
        let _ = writeln!(out, "    {:<6} {}", insn.op.mnemonic(), operands.join(", "));
    }
    out.push_str(".end\n");
    out
}

/// Disassembles a slot as a `.slot` line (or `.rawslot` when its opcode is not a core one).
pub fn disassemble_slot(slot: &Slot) -> String {
    let Some(op) = SlotOp::from_u16(slot.op) else {
        let w = slot.encode();
        return format!(
            ".rawslot {}",
            w.iter()
                .map(|x| format!("{x:#x}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    };
    let mut out = format!(".slot {}", op.mnemonic());
    for (spec, v) in op.args().iter().zip(slot.args) {
        let _ = write!(out, " {}={v}", spec.name);
    }
    if slot.tenant != 0 {
        let _ = write!(out, " tenant={}", slot.tenant);
    }
    if slot.priority != 0 {
        let _ = write!(out, " priority={}", slot.priority);
    }
    if slot.flags != 0 {
        let _ = write!(out, " flags={}", slot.flags);
    }
    if slot.args[op.args().len()..].iter().any(|&a| a != 0) {
        // Unused words set: only the raw form says so exactly.
        let w = slot.encode();
        return format!(
            ".rawslot {}",
            w.iter()
                .map(|x| format!("{x:#x}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    out
}
