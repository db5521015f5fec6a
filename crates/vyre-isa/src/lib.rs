//! VIR0, vyre's instruction set, defined once.
//!
//! * [`table`]: the one list of slot opcodes and EXEC instructions;
//! * [`slot`]: the 64-byte slot layout and [`SlotOp`];
//! * [`program`]: the EXEC instruction format, the checked decoder and the validator;
//! * [`asm`] / [`disasm`]: the `.vasm` text form;
//! * [`interp`]: the reference interpreter, used by the CPU backend and as the oracle;
//! * [`hash`]: xxHash64 for HASH64;
//! * [`dfa`]: the `VDFA` table format and the reference DFA_SCAN;
//! * [`io`]: IO_READ's two phases (checks, then completion once the host has read);
//! * [`fault`]: the fault codes a slot can complete with.
//!
//! This crate has no `unsafe` and no dependencies beyond `thiserror`.

#![forbid(unsafe_code)]

pub mod asm;
pub mod dfa;
pub mod disasm;
pub mod fault;
pub mod hash;
pub mod interp;
pub mod io;
pub mod program;
pub mod slot;
pub mod table;

pub use asm::{assemble, AsmError, Module};
pub use fault::{Fault, FaultCode};
pub use interp::{exec_slot, run_program, step_slot, Env, Memory, Results, Step};
pub use program::{DecodeError, Insn, Opcode, Program};
pub use slot::{Slot, SlotOp};
