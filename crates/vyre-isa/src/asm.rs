//! `.vasm`: the text form of a VIR0 module (buffers, programs, slots), its assembler and
//! the linker step that turns buffer and program names into handles and ids.
//!
//! ```text
//! ; a comment (also `#`)
//! .buffer data 64 ascii "hello"    ; 64 bytes, the first five set; also `hex "..."`, `u32 1 2 3`
//! .program sum                     ; a program, until `.end`
//!     movi r0, 0
//! top:
//!     beqz r1, done
//!     add r0, r0, r1
//!     addi r1, r1, -1
//!     jmp top
//! done:
//!     halt
//! .end
//! .bytecode raw hex "0000000000000000"   ; a program as raw bytes, validated when loaded
//! .slot EXEC prog=sum r1=10
//! .slot STORE_U32 buf=data off=8 value=0x2a tenant=0 priority=3
//! .rawslot 0x0010 0 1 8 42 0 0 0 0 0     ; op word, tenant word, eight argument words
//! ```
//!
//! Slot operands are named after the op table; a `Buffer` operand takes a buffer name or a
//! raw handle number, a `Program` operand a program name or a raw id, a `Value` operand a
//! number (decimal, `0x` hex, negative two's complement) or `@name` for a buffer's handle.

use crate::program::{Insn, Opcode, OperandKind, Program, REGISTERS};
use crate::slot::{ArgKind, Slot, SlotOp, ARG_WORDS};
use std::collections::HashMap;

/// An assembly error: the line (1-based) and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct AsmError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong and how to fix it.
    pub message: String,
}

fn err<T>(line: usize, message: impl Into<String>) -> Result<T, AsmError> {
    Err(AsmError {
        line,
        message: message.into(),
    })
}

/// A buffer declared by `.buffer`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BufferDecl {
    /// Its name.
    pub name: String,
    /// Size in bytes.
    pub size: u32,
    /// Initial contents (the rest of the buffer is zero).
    pub init: Vec<u8>,
}

/// A program declared by `.program` (assembled) or `.bytecode` (raw, not yet validated).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramDecl {
    /// Its name.
    pub name: String,
    /// The bytecode.
    pub bytecode: Vec<u8>,
    /// The line it was declared on.
    pub line: usize,
}

/// What a relocation points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelocTarget {
    /// The handle of the module's n-th buffer.
    Buffer(usize),
    /// The id of the module's n-th program.
    Program(usize),
}

/// An argument word to patch at link time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reloc {
    /// The argument index (0..8).
    pub arg: usize,
    /// What goes there.
    pub target: RelocTarget,
}

/// A slot declared by `.slot` or `.rawslot`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotDecl {
    /// The slot, with relocated arguments still zero.
    pub slot: Slot,
    /// Arguments to patch.
    pub relocs: Vec<Reloc>,
    /// The line it was declared on.
    pub line: usize,
}

impl SlotDecl {
    /// The slot with buffer handles and program ids filled in.
    pub fn link(&self, buffers: &[u32], programs: &[u32]) -> Slot {
        let mut slot = self.slot;
        for r in &self.relocs {
            slot.args[r.arg] = match r.target {
                RelocTarget::Buffer(i) => buffers[i],
                RelocTarget::Program(i) => programs[i],
            };
        }
        slot
    }
}

/// An assembled module.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Module {
    /// Buffers, in declaration order.
    pub buffers: Vec<BufferDecl>,
    /// Programs, in declaration order.
    pub programs: Vec<ProgramDecl>,
    /// Slots, in publication order.
    pub slots: Vec<SlotDecl>,
}

/// Splits a line into tokens: words, `key=value` pairs and quoted strings stay whole;
/// commas separate; `;` or `#` start a comment.
fn tokenize(line: &str, n: usize) -> Result<Vec<String>, AsmError> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars();
    while let Some(ch) = chars.next() {
        match ch {
            ';' | '#' => break,
            '"' => {
                cur.push('"');
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some('n') => cur.push('\n'),
                            Some('t') => cur.push('\t'),
                            Some('0') => cur.push('\0'),
                            Some(c) => cur.push(c),
                            None => return err(n, "unterminated string: add a closing `\"`"),
                        },
                        Some(c) => cur.push(c),
                        None => return err(n, "unterminated string: add a closing `\"`"),
                    }
                }
                out.push(std::mem::take(&mut cur));
            }
            c if c.is_whitespace() || c == ',' => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

/// Parses a number: decimal, `0x` hex, `0b` binary, optionally negative (two's complement).
pub fn parse_number(s: &str) -> Option<i64> {
    let (neg, t) = match s.strip_prefix('-') {
        Some(t) => (true, t),
        None => (false, s),
    };
    let t = t.replace('_', "");
    let v = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        i64::from_str_radix(h, 16).ok()?
    } else if let Some(b) = t.strip_prefix("0b") {
        i64::from_str_radix(b, 2).ok()?
    } else {
        t.parse::<i64>().ok()?
    };
    Some(if neg { -v } else { v })
}

fn parse_u32(s: &str, line: usize, what: &str) -> Result<u32, AsmError> {
    match parse_number(s) {
        Some(v) if (0..=i64::from(u32::MAX)).contains(&v) => Ok(v as u32),
        Some(v) if (i64::from(i32::MIN)..0).contains(&v) => Ok(v as i32 as u32),
        _ => err(line, format!("{what}: `{s}` is not a 32-bit number")),
    }
}

fn parse_hex(s: &str, line: usize) -> Result<Vec<u8>, AsmError> {
    let digits: String = s
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '_')
        .collect();
    if digits.len() % 2 != 0 {
        return err(line, "hex string has an odd number of digits");
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&digits[i..i + 2], 16)
                .or_else(|_| err(line, format!("bad hex digits `{}`", &digits[i..i + 2])))
        })
        .collect()
}

/// The text of a string token (the tokenizer marks strings with one leading `"`).
fn string_token(s: &str) -> &str {
    s.strip_prefix('"').unwrap_or(s)
}

/// Initial contents: `hex "..."`, `ascii "..."` or `u32 N N ...`.
fn parse_init(toks: &[String], line: usize) -> Result<Vec<u8>, AsmError> {
    match toks {
        [] => Ok(Vec::new()),
        [kind, s] if kind == "hex" => parse_hex(string_token(s), line),
        [kind, s] if kind == "ascii" => Ok(string_token(s).as_bytes().to_vec()),
        [kind, words @ ..] if kind == "u32" => {
            let mut out = Vec::new();
            for w in words {
                out.extend_from_slice(&parse_u32(w, line, "u32 initialiser")?.to_le_bytes());
            }
            Ok(out)
        }
        _ => err(
            line,
            "initial contents must be `hex \"..\"`, `ascii \"..\"` or `u32 N N ...`",
        ),
    }
}

fn parse_reg(s: &str, line: usize) -> Result<u8, AsmError> {
    s.strip_prefix('r')
        .or_else(|| s.strip_prefix('R'))
        .and_then(|n| n.parse::<u8>().ok())
        .filter(|&r| usize::from(r) < REGISTERS)
        .map_or_else(
            || err(line, format!("`{s}` is not a register (r0..r15)")),
            Ok,
        )
}

struct PendingInsn {
    op: Opcode,
    regs: [u8; 3],
    imm: i32,
    label: Option<String>,
    line: usize,
}

fn assemble_insn(toks: &[String], line: usize) -> Result<PendingInsn, AsmError> {
    let op = Opcode::from_mnemonic(&toks[0]).map_or_else(
        || err(line, format!("unknown instruction `{}`", toks[0])),
        Ok,
    )?;
    let specs = op.operands();
    if toks.len() - 1 != specs.len() {
        let names: Vec<_> = specs.iter().map(|s| s.name).collect();
        return err(
            line,
            format!(
                "`{}` takes {} operand(s) ({}), found {}",
                op.mnemonic(),
                specs.len(),
                names.join(", "),
                toks.len() - 1
            ),
        );
    }
    let mut p = PendingInsn {
        op,
        regs: [0; 3],
        imm: 0,
        label: None,
        line,
    };
    let mut r = 0;
    for (spec, tok) in specs.iter().zip(&toks[1..]) {
        match spec.kind {
            OperandKind::Reg => {
                p.regs[r] = parse_reg(tok, line)?;
                r += 1;
            }
            OperandKind::Imm => p.imm = parse_u32(tok, line, spec.name)? as i32,
            OperandKind::Target => match parse_number(tok) {
                Some(n) => {
                    p.imm = i32::try_from(n)
                        .or_else(|_| err(line, format!("jump target `{tok}` out of range")))?
                }
                None => p.label = Some(tok.clone()),
            },
        }
    }
    Ok(p)
}

fn finish_program(
    pending: Vec<PendingInsn>,
    labels: &HashMap<String, usize>,
    name: &str,
    line: usize,
) -> Result<Vec<u8>, AsmError> {
    let mut insns = Vec::with_capacity(pending.len());
    for p in pending {
        let imm = match &p.label {
            Some(l) => *labels
                .get(l)
                .map_or_else(|| err(p.line, format!("undefined label `{l}`")), Ok)?
                as i32,
            None => p.imm,
        };
        insns.push(Insn {
            op: p.op,
            regs: p.regs,
            imm,
        });
    }
    let prog = Program::new(insns).map_err(|e| AsmError {
        line,
        message: format!("program `{name}`: {e}"),
    })?;
    Ok(prog.encode())
}

/// A `.program` block being assembled.
struct OpenProgram {
    name: String,
    line: usize,
    insns: Vec<PendingInsn>,
    labels: HashMap<String, usize>,
}

/// Assembles a `.vasm` source.
pub fn assemble(src: &str) -> Result<Module, AsmError> {
    let mut m = Module::default();
    let mut buffer_names: HashMap<String, usize> = HashMap::new();
    let mut program_names: HashMap<String, usize> = HashMap::new();
    let mut open: Option<OpenProgram> = None;
    for (i, raw) in src.lines().enumerate() {
        let n = i + 1;
        let toks = tokenize(raw, n)?;
        if toks.is_empty() {
            continue;
        }
        if let Some(prog) = open.as_mut() {
            if toks[0] == ".end" {
                let prog = open.take().expect("open");
                let bytecode = finish_program(prog.insns, &prog.labels, &prog.name, prog.line)?;
                program_names.insert(prog.name.clone(), m.programs.len());
                m.programs.push(ProgramDecl {
                    name: prog.name,
                    bytecode,
                    line: prog.line,
                });
            } else if let Some(label) = toks[0].strip_suffix(':') {
                if prog
                    .labels
                    .insert(label.to_string(), prog.insns.len())
                    .is_some()
                {
                    return err(
                        n,
                        format!("label `{label}` defined twice in program `{}`", prog.name),
                    );
                }
                if toks.len() > 1 {
                    prog.insns.push(assemble_insn(&toks[1..], n)?);
                }
            } else if toks[0].starts_with('.') {
                return err(
                    n,
                    format!(
                        "`{}` inside program `{}`: close it with `.end` first",
                        toks[0], prog.name
                    ),
                );
            } else {
                prog.insns.push(assemble_insn(&toks, n)?);
            }
            continue;
        }
        let declare = |names: &mut HashMap<String, usize>, name: &str, index: usize| {
            if names.insert(name.to_string(), index).is_some() {
                err(n, format!("`{name}` is declared twice"))
            } else {
                Ok(())
            }
        };
        match toks[0].as_str() {
            ".buffer" => {
                let (Some(name), Some(size)) = (toks.get(1), toks.get(2)) else {
                    return err(n, "usage: .buffer NAME SIZE [hex \"..\" | ascii \"..\" | u32 N ...]");
                };
                let size = parse_u32(size, n, "buffer size")?;
                let init = parse_init(&toks[3..], n)?;
                if init.len() > size as usize {
                    return err(n, format!("buffer `{name}`: {} initial bytes do not fit in {size}", init.len()));
                }
                declare(&mut buffer_names, name, m.buffers.len())?;
                m.buffers.push(BufferDecl { name: name.clone(), size, init });
            }
            ".program" => {
                let Some(name) = toks.get(1) else { return err(n, "usage: .program NAME ... .end") };
                if program_names.contains_key(name) {
                    return err(n, format!("`{name}` is declared twice"));
                }
                open = Some(OpenProgram { name: name.clone(), line: n, insns: Vec::new(), labels: HashMap::new() });
            }
            ".bytecode" => {
                let (Some(name), Some(kind), Some(s)) = (toks.get(1), toks.get(2), toks.get(3)) else {
                    return err(n, "usage: .bytecode NAME hex \"..\"");
                };
                if kind != "hex" {
                    return err(n, "usage: .bytecode NAME hex \"..\"");
                }
                declare(&mut program_names, name, m.programs.len())?;
                m.programs.push(ProgramDecl { name: name.clone(), bytecode: parse_hex(string_token(s), n)?, line: n });
            }
            ".slot" => m.slots.push(assemble_slot(&toks[1..], n, &buffer_names, &program_names)?),
            ".rawslot" => {
                if toks.len() != 11 {
                    return err(n, "usage: .rawslot OPWORD TENANTWORD A0 A1 A2 A3 A4 A5 A6 A7 (ten words)");
                }
                let mut w = [0u32; 10];
                for (slot, t) in w.iter_mut().zip(&toks[1..]) {
                    *slot = parse_u32(t, n, "raw slot word")?;
                }
                let (slot, reserved) = Slot::decode(&w);
                if reserved != 0 {
                    return err(n, "the upper half of the tenant word is reserved and cannot be published");
                }
                m.slots.push(SlotDecl { slot, relocs: Vec::new(), line: n });
            }
            other => return err(n, format!("unknown directive `{other}` (expected .buffer, .program, .bytecode, .slot or .rawslot)")),
        }
    }
    if let Some(prog) = open {
        return err(
            prog.line,
            format!("program `{}` is never closed: add `.end`", prog.name),
        );
    }
    Ok(m)
}

fn assemble_slot(
    toks: &[String],
    n: usize,
    buffers: &HashMap<String, usize>,
    programs: &HashMap<String, usize>,
) -> Result<SlotDecl, AsmError> {
    let Some(mn) = toks.first() else {
        return err(n, "usage: .slot OPCODE name=value ...");
    };
    let op = SlotOp::from_mnemonic(mn)
        .map_or_else(|| err(n, format!("unknown slot opcode `{mn}`")), Ok)?;
    let mut decl = SlotDecl {
        slot: Slot::new(op, &[]),
        relocs: Vec::new(),
        line: n,
    };
    let mut seen = [false; ARG_WORDS];
    for t in &toks[1..] {
        let Some((key, value)) = t.split_once('=') else {
            return err(n, format!("`{t}`: slot operands are written name=value"));
        };
        match key {
            "tenant" => {
                decl.slot.tenant = u16::try_from(parse_u32(value, n, "tenant")?)
                    .or_else(|_| err(n, "tenant must fit in 16 bits"))?
            }
            "priority" => {
                decl.slot.priority = u8::try_from(parse_u32(value, n, "priority")?)
                    .or_else(|_| err(n, "priority must fit in 8 bits"))?
            }
            "flags" => {
                decl.slot.flags = u8::try_from(parse_u32(value, n, "flags")?)
                    .or_else(|_| err(n, "flags must fit in 8 bits"))?
            }
            _ => {
                let Some(i) = op.args().iter().position(|a| a.name == key) else {
                    let names: Vec<_> = op.args().iter().map(|a| a.name).collect();
                    return err(
                        n,
                        format!(
                            "{} has no operand `{key}` (it takes: {})",
                            op.mnemonic(),
                            names.join(", ")
                        ),
                    );
                };
                if std::mem::replace(&mut seen[i], true) {
                    return err(n, format!("operand `{key}` is given twice"));
                }
                let named = |names: &HashMap<String, usize>, v: &str| {
                    names.get(v.trim_start_matches('@')).copied()
                };
                match op.args()[i].kind {
                    ArgKind::Buffer if parse_number(value).is_none() => match named(buffers, value)
                    {
                        Some(b) => decl.relocs.push(Reloc {
                            arg: i,
                            target: RelocTarget::Buffer(b),
                        }),
                        None => return err(n, format!("unknown buffer `{value}`")),
                    },
                    ArgKind::Program if parse_number(value).is_none() => {
                        match named(programs, value) {
                            Some(p) => decl.relocs.push(Reloc {
                                arg: i,
                                target: RelocTarget::Program(p),
                            }),
                            None => return err(n, format!("unknown program `{value}`")),
                        }
                    }
                    ArgKind::Value if value.starts_with('@') => match named(buffers, value) {
                        Some(b) => decl.relocs.push(Reloc {
                            arg: i,
                            target: RelocTarget::Buffer(b),
                        }),
                        None => return err(n, format!("unknown buffer `{value}`")),
                    },
                    _ => decl.slot.args[i] = parse_u32(value, n, key)?,
                }
            }
        }
    }
    Ok(decl)
}
