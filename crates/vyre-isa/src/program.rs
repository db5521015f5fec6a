//! EXEC programs: the 8-byte instruction format, the checked decoder and the validator.
//!
//! Instruction format (little-endian): byte 0 opcode, bytes 1..4 register fields a, b, c,
//! bytes 4..8 a signed 32-bit immediate. Registers named by an instruction fill a, b, c in
//! the order the table lists them; fields it does not use must be zero.

use std::fmt;

/// Bytes per instruction.
pub const INSN_BYTES: usize = 8;
/// Registers of the EXEC machine (r0..r15), each 64 bits.
pub const REGISTERS: usize = 16;
/// Most instructions a program may have.
pub const MAX_PROGRAM_INSNS: usize = 1 << 16;

/// What an instruction operand is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OperandKind {
    /// A register, r0..r15.
    Reg,
    /// A signed 32-bit immediate.
    Imm,
    /// An instruction index to jump to (stored in the immediate).
    Target,
}

/// One operand of an instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OperandSpec {
    /// Its name in the table (`rd`, `imm`, ...).
    pub name: &'static str,
    /// What it is.
    pub kind: OperandKind,
}

macro_rules! define_insns {
    ($( $(#[doc = $doc:literal])* $name:ident = $num:literal, $mn:literal,
        [$($arg:ident : $kind:ident),* $(,)?]; )*) => {
        /// An EXEC instruction opcode (see [`crate::for_each_insn!`] for the table).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum Opcode {
            $( $(#[doc = $doc])* $name = $num, )*
        }

        impl Opcode {
            /// Every instruction opcode, in table order.
            pub const ALL: &'static [Opcode] = &[$(Opcode::$name),*];

            /// The opcode for a number.
            pub fn from_u8(n: u8) -> Option<Opcode> {
                match n { $( $num => Some(Opcode::$name), )* _ => None }
            }

            /// The lower-case mnemonic.
            pub fn mnemonic(self) -> &'static str {
                match self { $( Opcode::$name => $mn, )* }
            }

            /// The opcode for a mnemonic (case-insensitive).
            pub fn from_mnemonic(s: &str) -> Option<Opcode> {
                $( if s.eq_ignore_ascii_case($mn) { return Some(Opcode::$name); } )*
                None
            }

            /// The operands, in assembly order.
            pub fn operands(self) -> &'static [OperandSpec] {
                match self {
                    $( Opcode::$name => &[$(OperandSpec { name: stringify!($arg), kind: OperandKind::$kind }),*], )*
                }
            }

            /// The instruction's documentation, from the table.
            pub fn doc(self) -> &'static str {
                match self { $( Opcode::$name => concat!($($doc, "\n"),*), )* }
            }
        }
    };
}
crate::for_each_insn!(define_insns);

impl Opcode {
    /// How many register fields the instruction uses.
    pub fn reg_count(self) -> usize {
        self.operands()
            .iter()
            .filter(|o| o.kind == OperandKind::Reg)
            .count()
    }

    /// Whether the instruction uses the immediate (as a value or a target).
    pub fn uses_imm(self) -> bool {
        self.operands().iter().any(|o| o.kind != OperandKind::Reg)
    }

    /// Whether the immediate is a jump target.
    pub fn has_target(self) -> bool {
        self.operands()
            .iter()
            .any(|o| o.kind == OperandKind::Target)
    }

    /// Whether execution never continues to the next instruction.
    pub fn is_terminator(self) -> bool {
        matches!(self, Opcode::Halt | Opcode::Jmp)
    }
}

/// One decoded instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    /// The opcode.
    pub op: Opcode,
    /// Register fields a, b, c.
    pub regs: [u8; 3],
    /// The immediate (or jump target).
    pub imm: i32,
}

impl Insn {
    /// The 8 encoded bytes.
    pub fn encode(&self) -> [u8; INSN_BYTES] {
        let i = self.imm.to_le_bytes();
        [
            self.op as u8,
            self.regs[0],
            self.regs[1],
            self.regs[2],
            i[0],
            i[1],
            i[2],
            i[3],
        ]
    }
}

/// Why bytecode was rejected. Every variant carries the byte offset it concerns.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The length is not a whole number of instructions.
    #[error("truncated instruction at byte {position}: {len} bytes is not a multiple of 8; each VIR0 instruction is 8 bytes")]
    Truncated {
        /// Where the partial instruction starts.
        position: usize,
        /// The bytecode's length.
        len: usize,
    },
    /// Zero instructions.
    #[error(
        "empty program at byte 0: a program needs at least one instruction (end it with `halt`)"
    )]
    Empty,
    /// More than [`MAX_PROGRAM_INSNS`] instructions.
    #[error("program too long at byte {position}: {insns} instructions, the limit is {limit}")]
    TooLong {
        /// Where the first instruction past the limit starts.
        position: usize,
        /// How many there are.
        insns: usize,
        /// The limit.
        limit: usize,
    },
    /// Byte 0 of an instruction is no opcode.
    #[error("unknown instruction opcode {opcode:#04x} at byte {position}")]
    UnknownOpcode {
        /// The opcode byte's offset.
        position: usize,
        /// Its value.
        opcode: u8,
    },
    /// A register field names r16 or above.
    #[error("register r{reg} out of range at byte {position} ({mnemonic}): registers are r0..r15")]
    BadRegister {
        /// The field's offset.
        position: usize,
        /// The value.
        reg: u8,
        /// The instruction.
        mnemonic: &'static str,
    },
    /// A field the instruction does not use is not zero.
    #[error("non-zero unused field at byte {position} ({mnemonic} uses {used} register field(s){imm}); unused fields must be zero")]
    NonZeroUnused {
        /// The field's offset.
        position: usize,
        /// The instruction.
        mnemonic: &'static str,
        /// Register fields it uses.
        used: usize,
        /// Whether it uses the immediate (for the message).
        imm: &'static str,
    },
    /// A branch target outside the program.
    #[error("jump target {target} out of range at byte {position} ({mnemonic}): the program has {insns} instructions")]
    BadTarget {
        /// The immediate's offset.
        position: usize,
        /// The target.
        target: i32,
        /// The instruction.
        mnemonic: &'static str,
        /// Program length in instructions.
        insns: usize,
    },
    /// Execution could fall off the end.
    #[error("program falls off its end at byte {position}: the last instruction is `{mnemonic}`; end with `halt` or `jmp`")]
    FallsOffEnd {
        /// The last instruction's offset.
        position: usize,
        /// Its mnemonic.
        mnemonic: &'static str,
    },
}

impl DecodeError {
    /// The byte offset the error concerns.
    pub fn position(&self) -> usize {
        match *self {
            DecodeError::Empty => 0,
            DecodeError::Truncated { position, .. }
            | DecodeError::TooLong { position, .. }
            | DecodeError::UnknownOpcode { position, .. }
            | DecodeError::BadRegister { position, .. }
            | DecodeError::NonZeroUnused { position, .. }
            | DecodeError::BadTarget { position, .. }
            | DecodeError::FallsOffEnd { position, .. } => position,
        }
    }
}

/// Decodes one instruction at `position`, checking fields but not targets.
fn decode_insn(b: &[u8], position: usize) -> Result<Insn, DecodeError> {
    let op = Opcode::from_u8(b[0]).ok_or(DecodeError::UnknownOpcode {
        position,
        opcode: b[0],
    })?;
    let regs = [b[1], b[2], b[3]];
    let imm = i32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let used = op.reg_count();
    for (i, &r) in regs.iter().enumerate() {
        if i < used && usize::from(r) >= REGISTERS {
            return Err(DecodeError::BadRegister {
                position: position + 1 + i,
                reg: r,
                mnemonic: op.mnemonic(),
            });
        }
        if i >= used && r != 0 {
            return Err(unused(op, position + 1 + i));
        }
    }
    if !op.uses_imm() && imm != 0 {
        return Err(unused(op, position + 4));
    }
    Ok(Insn { op, regs, imm })
}

fn unused(op: Opcode, position: usize) -> DecodeError {
    DecodeError::NonZeroUnused {
        position,
        mnemonic: op.mnemonic(),
        used: op.reg_count(),
        imm: if op.uses_imm() {
            " and the immediate"
        } else {
            " and no immediate"
        },
    }
}

/// A validated program: every instruction decodes, every register is in range, every jump
/// lands inside the program and execution cannot fall off the end. Only [`Program::decode`]
/// and [`Program::new`] make one, so an interpreter may rely on these facts.
#[derive(Clone, PartialEq, Eq)]
pub struct Program {
    insns: Vec<Insn>,
}

impl Program {
    /// Decodes and validates untrusted bytecode.
    pub fn decode(bytes: &[u8]) -> Result<Program, DecodeError> {
        if bytes.is_empty() {
            return Err(DecodeError::Empty);
        }
        if bytes.len() % INSN_BYTES != 0 {
            return Err(DecodeError::Truncated {
                position: bytes.len() - bytes.len() % INSN_BYTES,
                len: bytes.len(),
            });
        }
        let n = bytes.len() / INSN_BYTES;
        if n > MAX_PROGRAM_INSNS {
            return Err(DecodeError::TooLong {
                position: MAX_PROGRAM_INSNS * INSN_BYTES,
                insns: n,
                limit: MAX_PROGRAM_INSNS,
            });
        }
        let insns = bytes
            .chunks_exact(INSN_BYTES)
            .enumerate()
            .map(|(i, c)| decode_insn(c, i * INSN_BYTES))
            .collect::<Result<Vec<_>, _>>()?;
        Program::new(insns)
    }

    /// Validates already-decoded instructions (targets and the final terminator).
    pub fn new(insns: Vec<Insn>) -> Result<Program, DecodeError> {
        let last = insns.last().ok_or(DecodeError::Empty)?;
        if insns.len() > MAX_PROGRAM_INSNS {
            return Err(DecodeError::TooLong {
                position: MAX_PROGRAM_INSNS * INSN_BYTES,
                insns: insns.len(),
                limit: MAX_PROGRAM_INSNS,
            });
        }
        for (i, insn) in insns.iter().enumerate() {
            // Re-check fields so that hand-built `Insn`s get the same guarantees as bytes.
            decode_insn(&insn.encode(), i * INSN_BYTES)?;
            if insn.op.has_target() && (insn.imm < 0 || insn.imm as usize >= insns.len()) {
                return Err(DecodeError::BadTarget {
                    position: i * INSN_BYTES + 4,
                    target: insn.imm,
                    mnemonic: insn.op.mnemonic(),
                    insns: insns.len(),
                });
            }
        }
        if !last.op.is_terminator() {
            return Err(DecodeError::FallsOffEnd {
                position: (insns.len() - 1) * INSN_BYTES,
                mnemonic: last.op.mnemonic(),
            });
        }
        Ok(Program { insns })
    }

    /// The instructions.
    pub fn insns(&self) -> &[Insn] {
        &self.insns
    }

    /// The encoded bytecode.
    pub fn encode(&self) -> Vec<u8> {
        self.insns.iter().flat_map(|i| i.encode()).collect()
    }
}

impl fmt::Debug for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Program({} insns)", self.insns.len())
    }
}
