//! The reference interpreter (`exec_slot`, `run_program`) against an independent,
//! deliberately simple model written from the doc comments in `table.rs` and `fault.rs`.
//!
//! The model works on raw bytes (`Vec<Vec<u8>>` buffers, bytecode read eight bytes at a
//! time with a hand-transcribed opcode table); it shares nothing with `interp.rs` except
//! the public types used to compare results. Fault precedence inside one access follows
//! the order documented by `interp.rs` for slot ops (handle, then alignment, then range);
//! where the documentation is silent the model states its choice next to the code.

use proptest::prelude::*;
use std::cell::{Cell, RefCell};
use std::ops::Range;
use std::rc::Rc;
use vyre_isa::program::REGISTERS;
use vyre_isa::{
    exec_slot, run_program, Env, Fault, FaultCode, Insn, Memory, Opcode, Program, Slot, SlotOp,
};

// =======================================================================================
// The system under test's side: a Vec-backed Memory and a recording Env.
// =======================================================================================

/// Buffers 1..=n; handle 0 and handles past n are unregistered. Accesses that the
/// interpreter should have rejected panic, so a missing range check cannot hide.
#[derive(Debug)]
struct VecMem {
    bufs: RefCell<Vec<Vec<u8>>>,
}

impl VecMem {
    fn new(bufs: Vec<Vec<u8>>) -> VecMem {
        VecMem {
            bufs: RefCell::new(bufs),
        }
    }

    fn snapshot(&self) -> Vec<Vec<u8>> {
        self.bufs.borrow().clone()
    }

    fn with<R>(&self, h: u32, off: u64, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
        let mut bufs = self.bufs.borrow_mut();
        let i = (h as usize)
            .checked_sub(1)
            .expect("handle 0 reached Memory");
        let b = bufs
            .get_mut(i)
            .unwrap_or_else(|| panic!("unregistered handle {h} reached Memory"));
        let off = usize::try_from(off).expect("offset fits usize");
        assert!(
            off.checked_add(len).is_some_and(|e| e <= b.len()),
            "out-of-range access reached Memory: handle {h} off {off} len {len} size {}",
            b.len()
        );
        f(&mut b[off..off + len])
    }

    fn word(&self, h: u32, off: u64) -> u32 {
        assert_eq!(off % 4, 0, "misaligned word access reached Memory");
        self.with(h, off, 4, |s| {
            u32::from_le_bytes(s.try_into().expect("4 bytes"))
        })
    }

    fn set_word(&self, h: u32, off: u64, v: u32) {
        assert_eq!(off % 4, 0, "misaligned word access reached Memory");
        self.with(h, off, 4, |s| s.copy_from_slice(&v.to_le_bytes()));
    }
}

impl Memory for VecMem {
    fn size(&self, h: u32) -> Option<u64> {
        let i = (h as usize).checked_sub(1)?;
        self.bufs.borrow().get(i).map(|b| b.len() as u64)
    }
    fn load_u32(&self, h: u32, off: u64) -> u32 {
        self.word(h, off)
    }
    fn store_u32(&self, h: u32, off: u64, value: u32) {
        self.set_word(h, off, value);
    }
    fn fetch_add_u32(&self, h: u32, off: u64, value: u32) -> u32 {
        let old = self.word(h, off);
        self.set_word(h, off, old.wrapping_add(value));
        old
    }
    fn cas_u32(&self, h: u32, off: u64, expected: u32, new: u32) -> u32 {
        let old = self.word(h, off);
        if old == expected {
            self.set_word(h, off, new);
        }
        old
    }
    fn read(&self, h: u32, off: u64, dst: &mut [u8]) {
        self.with(h, off, dst.len(), |s| dst.copy_from_slice(s));
    }
    fn write(&self, h: u32, off: u64, src: &[u8]) {
        self.with(h, off, src.len(), |s| s.copy_from_slice(src));
    }
}

type LogRecord = (u32, Slot, [u32; 4]);

/// Programs have ids 1..=n.
#[derive(Debug)]
struct TestEnv {
    mem: VecMem,
    programs: Vec<Rc<Program>>,
    budget: u64,
    epoch: Cell<u32>,
    log: RefCell<Vec<LogRecord>>,
    log_capacity: usize,
    dropped: Cell<u32>,
    shutdowns: Cell<u32>,
}

impl TestEnv {
    fn new(bufs: Vec<Vec<u8>>, programs: &[Vec<u8>], budget: u64, log_capacity: usize) -> Self {
        TestEnv {
            mem: VecMem::new(bufs),
            programs: programs
                .iter()
                .map(|p| Rc::new(Program::decode(p).expect("test programs are valid")))
                .collect(),
            budget,
            epoch: Cell::new(0),
            log: RefCell::new(Vec::new()),
            log_capacity,
            dropped: Cell::new(0),
            shutdowns: Cell::new(0),
        }
    }
}

impl Env for TestEnv {
    type Mem = VecMem;
    type Prog = Rc<Program>;
    fn mem(&self) -> &VecMem {
        &self.mem
    }
    fn program(&self, id: u32) -> Option<Rc<Program>> {
        let i = (id as usize).checked_sub(1)?;
        self.programs.get(i).cloned()
    }
    fn fence(&self) -> u32 {
        self.epoch.set(self.epoch.get().wrapping_add(1));
        self.epoch.get()
    }
    fn debug_log(&self, position: u32, slot: &Slot, words: [u32; 4]) -> bool {
        let mut log = self.log.borrow_mut();
        if log.len() < self.log_capacity {
            log.push((position, *slot, words));
            true
        } else {
            self.dropped.set(self.dropped.get() + 1);
            false
        }
    }
    fn request_shutdown(&self) {
        self.shutdowns.set(self.shutdowns.get() + 1);
    }
    fn step_budget(&self) -> u64 {
        self.budget
    }
}

// =======================================================================================
// The model.
// =======================================================================================

/// (code, detail, at), the observable parts of a fault.
type MFault = (FaultCode, u32, u32);

fn observe(f: Fault) -> MFault {
    (f.code, f.detail, f.at)
}

fn fault(code: FaultCode, detail: u32) -> MFault {
    (code, detail, 0)
}

fn at(f: MFault, where_: u32) -> MFault {
    (f.0, f.1, where_)
}

/// An EXEC load/store address: handle register value, offset register value, immediate.
/// Returns (buffer index, byte offset).
fn exec_address(
    bufs: &[Vec<u8>],
    handle: u64,
    base: u64,
    imm: i32,
    width: u64,
) -> Result<(usize, usize), (FaultCode, u32)> {
    // The offset is the mathematical sum; the fault detail is its low 32 bits.
    let off = i128::from(base) + i128::from(imm);
    let detail = off as u32;
    // Offsets are 32-bit: one outside 0..2^32 is out of bounds whatever its alignment (the
    // docs do not order MISALIGNED against this case; this is the choice the model makes).
    let off_fits = (0..=i128::from(u32::MAX)).contains(&off);
    let registered = handle >= 1 && handle <= bufs.len() as u64;
    if !registered {
        return Err((FaultCode::BadHandle, handle as u32));
    }
    if !off_fits {
        return Err((FaultCode::OutOfBounds, detail));
    }
    let idx = (handle - 1) as usize;
    let off = off as u64;
    if width == 4 && off % 4 != 0 {
        return Err((FaultCode::Misaligned, detail));
    }
    if off + width > bufs[idx].len() as u64 {
        return Err((FaultCode::OutOfBounds, detail));
    }
    Ok((idx, off as usize))
}

/// Runs raw (already validated) bytecode. Returns r0 and the instructions executed.
fn model_exec(
    code: &[u8],
    bufs: &mut [Vec<u8>],
    mut r: [u64; 16],
    budget: u64,
) -> Result<(u64, u64), MFault> {
    let mut pc = 0usize;
    let mut steps = 0u64;
    loop {
        // "Most instructions one EXEC slot may execute": the (budget+1)-th faults.
        if steps == budget {
            return Err((FaultCode::StepBudget, budget as u32, pc as u32));
        }
        steps += 1;
        let w = &code[pc * 8..pc * 8 + 8];
        let (a, b, c) = (w[1] as usize, w[2] as usize, w[3] as usize);
        let imm = i32::from_le_bytes([w[4], w[5], w[6], w[7]]);
        let sx = imm as i64 as u64;
        let here = pc as u32;
        let mem_fault = |(code, detail): (FaultCode, u32)| (code, detail, here);
        let mut next = pc + 1;
        match w[0] {
            0x00 => return Ok((r[0], steps)),
            0x01 => r[a] = sx,
            0x02 => r[a] = (r[a] & 0xFFFF_FFFF) | (u64::from(imm as u32) << 32),
            0x03 => r[a] = r[b],
            0x10 => r[a] = r[b].wrapping_add(r[c]),
            0x11 => r[a] = r[b].wrapping_sub(r[c]),
            0x12 => r[a] = r[b].wrapping_mul(r[c]),
            0x13 => r[a] = r[b] & r[c],
            0x14 => r[a] = r[b] | r[c],
            0x15 => r[a] = r[b] ^ r[c],
            0x16 => r[a] = r[b] << (r[c] % 64),
            0x17 => r[a] = r[b] >> (r[c] % 64),
            0x18 => r[a] = ((r[b] as i64) >> (r[c] % 64)) as u64,
            0x20 => r[a] = r[b].wrapping_add(sx),
            0x21 => r[a] = r[b] & sx,
            0x22 => r[a] = r[b] << (imm as u32 % 64),
            0x23 => r[a] = r[b] >> (imm as u32 % 64),
            0x28 => r[a] = (r[b] == r[c]) as u64,
            0x29 => r[a] = (r[b] != r[c]) as u64,
            0x2a => r[a] = (r[b] < r[c]) as u64,
            0x2b => r[a] = ((r[b] as i64) < (r[c] as i64)) as u64,
            0x30 => {
                let (i, o) = exec_address(bufs, r[b], r[c], imm, 1).map_err(mem_fault)?;
                r[a] = u64::from(bufs[i][o]);
            }
            0x31 => {
                let (i, o) = exec_address(bufs, r[b], r[c], imm, 4).map_err(mem_fault)?;
                let s = &bufs[i][o..o + 4];
                r[a] = u64::from(u32::from_le_bytes([s[0], s[1], s[2], s[3]]));
            }
            0x32 => {
                let (i, o) = exec_address(bufs, r[b], r[c], imm, 1).map_err(mem_fault)?;
                bufs[i][o] = r[a] as u8;
            }
            0x33 => {
                let (i, o) = exec_address(bufs, r[b], r[c], imm, 4).map_err(mem_fault)?;
                bufs[i][o..o + 4].copy_from_slice(&(r[a] as u32).to_le_bytes());
            }
            0x40 => next = imm as usize,
            0x41 if r[a] == 0 => next = imm as usize,
            0x42 if r[a] != 0 => next = imm as usize,
            0x43 if r[a] < r[b] => next = imm as usize,
            0x41..=0x43 => {}
            op => panic!("model: opcode {op:#x} in validated code"),
        }
        pc = next;
    }
}

/// Argument words each core slot opcode uses, transcribed from the slot-op table.
fn model_arg_count(op: u16) -> Option<usize> {
    Some(match op {
        0x00..=0x02 => 0, // NOP, SHUTDOWN, FENCE
        0x03 => 4,        // DEBUG_LOG
        0x04 => 8,        // PACKED
        0x10 => 3,        // STORE_U32
        0x11 => 2,        // LOAD_U32
        0x12 => 3,        // ATOMIC_ADD
        0x13 => 4,        // CAS
        0x14 => 5,        // MEMCPY
        0x15 => 4,        // FILL
        0x20 => 4,        // HASH64
        0x21 => 5,        // BYTE_HISTOGRAM
        0x22 => 4,        // COUNT_BYTE
        0x30 => 8,        // EXEC
        _ => return None,
    })
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Model {
    bufs: Vec<Vec<u8>>,
    programs: Vec<Vec<u8>>,
    budget: u64,
    epoch: u32,
    log: Vec<LogRecord>,
    log_capacity: usize,
    dropped: u32,
    shutdowns: u32,
}

impl Model {
    fn new(bufs: Vec<Vec<u8>>, programs: &[Vec<u8>], budget: u64, log_capacity: usize) -> Self {
        Model {
            bufs,
            programs: programs.to_vec(),
            budget,
            epoch: 0,
            log: Vec::new(),
            log_capacity,
            dropped: 0,
            shutdowns: 0,
        }
    }

    fn buffer(&self, h: u32) -> Result<usize, MFault> {
        if h >= 1 && h as usize <= self.bufs.len() {
            Ok(h as usize - 1)
        } else {
            Err(fault(FaultCode::BadHandle, h))
        }
    }

    /// BAD_HANDLE, then OUT_OF_BOUNDS (detail: the start offset).
    fn range(&self, h: u32, off: u32, len: u32) -> Result<(usize, Range<usize>), MFault> {
        let i = self.buffer(h)?;
        let end = u64::from(off) + u64::from(len);
        if end > self.bufs[i].len() as u64 {
            return Err(fault(FaultCode::OutOfBounds, off));
        }
        Ok((i, off as usize..end as usize))
    }

    /// BAD_HANDLE, then MISALIGNED, then OUT_OF_BOUNDS.
    fn word(&self, h: u32, off: u32) -> Result<(usize, usize), MFault> {
        let i = self.buffer(h)?;
        if off % 4 != 0 {
            return Err(fault(FaultCode::Misaligned, off));
        }
        let (_, r) = self.range(h, off, 4)?;
        Ok((i, r.start))
    }

    fn get(&self, (i, o): (usize, usize)) -> u32 {
        u32::from_le_bytes(self.bufs[i][o..o + 4].try_into().expect("4"))
    }

    fn put(&mut self, (i, o): (usize, usize), v: u32) {
        self.bufs[i][o..o + 4].copy_from_slice(&v.to_le_bytes());
    }

    /// A value that must be a byte: MALFORMED_SLOT naming the word otherwise.
    fn byte(a: &[u32; 8], index: usize) -> Result<u8, MFault> {
        u8::try_from(a[index]).map_err(|_| fault(FaultCode::MalformedSlot, index as u32))
    }

    fn slot(&mut self, s: &Slot, reserved: u32, position: u32) -> Result<[u32; 4], MFault> {
        let Some(used) = model_arg_count(s.op) else {
            return Err(fault(FaultCode::UnknownOpcode, u32::from(s.op)));
        };
        if s.flags != 0 || reserved != 0 || s.priority > 7 {
            return Err(fault(FaultCode::MalformedSlot, 0));
        }
        if let Some(i) = (used..8).find(|&i| s.args[i] != 0) {
            return Err(fault(FaultCode::MalformedSlot, i as u32));
        }
        let a = s.args;
        let mut r = [0u32; 4];
        match s.op {
            0x00 => {}
            0x01 => self.shutdowns += 1,
            0x02 => {
                self.epoch = self.epoch.wrapping_add(1);
                r[0] = self.epoch;
            }
            0x03 => {
                if self.log.len() < self.log_capacity {
                    self.log.push((position, *s, [a[0], a[1], a[2], a[3]]));
                    r[0] = 1;
                } else {
                    self.dropped += 1;
                }
            }
            0x04 => r = self.packed(&a)?,
            0x10 => {
                let w = self.word(a[0], a[1])?;
                self.put(w, a[2]);
            }
            0x11 => r[0] = self.get(self.word(a[0], a[1])?),
            0x12 => {
                let w = self.word(a[0], a[1])?;
                r[0] = self.get(w);
                self.put(w, r[0].wrapping_add(a[2]));
            }
            0x13 => {
                let w = self.word(a[0], a[1])?;
                r[0] = self.get(w);
                r[1] = u32::from(r[0] == a[2]);
                if r[0] == a[2] {
                    self.put(w, a[3]);
                }
            }
            0x14 => {
                // Destination checked first, then source (interp.rs order).
                let (di, dr) = self.range(a[0], a[1], a[4])?;
                let (si, sr) = self.range(a[2], a[3], a[4])?;
                let tmp = self.bufs[si][sr].to_vec();
                self.bufs[di][dr].copy_from_slice(&tmp);
            }
            0x15 => {
                let byte = Self::byte(&a, 3)?;
                let (i, rg) = self.range(a[0], a[1], a[2])?;
                self.bufs[i][rg].fill(byte);
            }
            0x20 => {
                let (i, rg) = self.range(a[0], a[1], a[2])?;
                let h = xxhash_rust::xxh64::xxh64(&self.bufs[i][rg], u64::from(a[3]));
                r[0] = h as u32;
                r[1] = (h >> 32) as u32;
            }
            0x21 => {
                let (si, sr) = self.range(a[0], a[1], a[2])?;
                let di = self.buffer(a[3])?;
                if a[4] % 4 != 0 {
                    return Err(fault(FaultCode::Misaligned, a[4]));
                }
                self.range(a[3], a[4], 1024)?;
                let mut counts = [0u32; 256];
                for &b in &self.bufs[si][sr] {
                    counts[usize::from(b)] += 1;
                }
                for (k, c) in counts.iter().enumerate() {
                    let w = (di, a[4] as usize + 4 * k);
                    let v = self.get(w).wrapping_add(*c);
                    self.put(w, v);
                }
                r[0] = a[2];
            }
            0x22 => {
                let byte = Self::byte(&a, 3)?;
                let (i, rg) = self.range(a[0], a[1], a[2])?;
                r[0] = self.bufs[i][rg].iter().filter(|&&b| b == byte).count() as u32;
            }
            0x30 => {
                let Some(code) = (a[0] as usize)
                    .checked_sub(1)
                    .and_then(|i| self.programs.get(i))
                    .cloned()
                else {
                    return Err(fault(FaultCode::BadProgram, a[0]));
                };
                let mut regs = [0u64; 16];
                for (reg, &arg) in regs[1..8].iter_mut().zip(&a[1..8]) {
                    *reg = u64::from(arg);
                }
                let (r0, steps) = model_exec(&code, &mut self.bufs, regs, self.budget)?;
                r[0] = r0 as u32;
                r[1] = (r0 >> 32) as u32;
                r[2] = steps.min(u64::from(u32::MAX)) as u32;
            }
            op => unreachable!("model_arg_count knows {op:#x}"),
        }
        Ok(r)
    }

    fn packed(&mut self, a: &[u32; 8]) -> Result<[u32; 4], MFault> {
        let count = (a[0] & 0xff) as usize;
        if !(1..=3).contains(&count) {
            return Err(fault(FaultCode::MalformedSlot, 0));
        }
        // Sub-op bytes past the count must be zero, and so must their argument pairs.
        if (count + 1..4).any(|k| (a[0] >> (8 * k)) & 0xff != 0) {
            return Err(fault(FaultCode::MalformedSlot, 0));
        }
        if let Some(w) = (2 + 2 * count..8).find(|&w| a[w] != 0) {
            return Err(fault(FaultCode::MalformedSlot, w as u32));
        }
        let mut r = [0u32; 4];
        for i in 0..count {
            let sub = (a[0] >> (8 * (i + 1))) & 0xff;
            let (off, val) = (a[2 + 2 * i], a[3 + 2 * i]);
            let here = |f: MFault| at(f, i as u32);
            match sub {
                0x00 => {}
                0x11 => r[i] = self.get(self.word(a[1], off).map_err(here)?),
                0x10 => {
                    let w = self.word(a[1], off).map_err(here)?;
                    self.put(w, val);
                }
                0x12 => {
                    let w = self.word(a[1], off).map_err(here)?;
                    r[i] = self.get(w);
                    self.put(w, r[i].wrapping_add(val));
                }
                _ => return Err(at(fault(FaultCode::MalformedSlot, 0), i as u32)),
            }
        }
        Ok(r)
    }
}

/// Runs one slot on both sides and compares the results, memory and environment state.
fn step_both(
    env: &TestEnv,
    model: &mut Model,
    slot: &Slot,
    reserved: u32,
    position: u32,
) -> Result<(), TestCaseError> {
    let got = exec_slot(env, slot, reserved, position).map_err(observe);
    let want = model.slot(slot, reserved, position);
    prop_assert_eq!(got, want, "slot {:?} reserved {:#x}", slot, reserved);
    prop_assert!(
        env.mem.snapshot() == model.bufs,
        "buffers differ after {:?}",
        slot
    );
    prop_assert_eq!(env.epoch.get(), model.epoch);
    prop_assert_eq!(&*env.log.borrow(), &model.log);
    prop_assert_eq!(env.dropped.get(), model.dropped);
    prop_assert_eq!(env.shutdowns.get(), model.shutdowns);
    Ok(())
}

// =======================================================================================
// Program generators.
// =======================================================================================

const MEM_OPS: [Opcode; 4] = [Opcode::Ld8, Opcode::Ld32, Opcode::St8, Opcode::St32];

#[derive(Clone, Debug)]
struct RawInsn {
    sel: u8,
    regs: [u8; 3],
    small: i32,
    any: i32,
    pick: u8,
    target: u16,
}

fn raw_insn() -> impl Strategy<Value = RawInsn> {
    (
        any::<u8>(),
        [0u8..16, 0u8..16, 0u8..16],
        -8i32..72,
        any::<i32>(),
        any::<u8>(),
        any::<u16>(),
    )
        .prop_map(|(sel, regs, small, any, pick, target)| RawInsn {
            sel,
            regs,
            small,
            any,
            pick,
            target,
        })
}

/// A valid instruction, biased towards memory traffic on buffers 1 and 2 (held in r1 and
/// r2 at the start) at small offsets. With `control` false no halt or branch is produced.
fn biased_insn(raw: &RawInsn, len: usize, control: bool) -> Insn {
    let sel = usize::from(raw.sel) % 48;
    let mut op = if sel < Opcode::ALL.len() {
        Opcode::ALL[sel]
    } else {
        MEM_OPS[sel % 4]
    };
    if !control && (op.has_target() || op == Opcode::Halt) {
        op = MEM_OPS[usize::from(raw.pick) % 4];
    }
    let mem = MEM_OPS.contains(&op);
    let mut regs = [0u8; 3];
    let mut imm = 0;
    let mut r = 0;
    for spec in op.operands() {
        match spec.kind {
            vyre_isa::program::OperandKind::Reg => {
                regs[r] = raw.regs[r] % REGISTERS as u8;
                r += 1;
            }
            vyre_isa::program::OperandKind::Imm => {
                imm = if mem && raw.pick & 0x84 != 0 {
                    raw.small.rem_euclid(16) & !3 // small and aligned
                } else if mem || raw.pick % 4 != 0 {
                    raw.small
                } else {
                    raw.any
                }
            }
            vyre_isa::program::OperandKind::Target => {
                imm = i32::from(raw.target) % len as i32;
            }
        }
    }
    if mem {
        if raw.pick & 0x7 != 0 {
            regs[1] = 1 + (raw.pick >> 3) % 2; // rh = r1 or r2
        }
        if raw.pick & 0x30 != 0 {
            regs[2] = [3, 4, 3, 15][usize::from(raw.pick >> 4) % 4]; // ro: small values
        }
    } else if op.reg_count() > 0 && (1..=4).contains(&regs[0]) && raw.pick & 0x48 != 0 {
        regs[0] += 8; // keep the handles and offsets alive more often
    }
    Insn { op, regs, imm }
}

const HALT: Insn = Insn {
    op: Opcode::Halt,
    regs: [0; 3],
    imm: 0,
};

/// Arbitrary control flow (loops included); the step budget bounds every run.
fn random_program() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(raw_insn(), 1..24).prop_map(|raws| {
        let len = raws.len() + 1;
        let mut insns: Vec<Insn> = raws.iter().map(|r| biased_insn(r, len, true)).collect();
        insns.push(HALT);
        Program::new(insns).expect("valid").encode()
    })
}

/// `movi r15, k; L: body; addi r15, r15, -1; bnez r15, L; tail; halt` with a straight-line
/// body that may use r15 as an offset but never writes it.
fn counted_loop() -> impl Strategy<Value = Vec<u8>> {
    (
        1i32..7,
        prop::collection::vec(raw_insn(), 0..8),
        prop::collection::vec(raw_insn(), 0..4),
    )
        .prop_map(|(k, body, tail)| {
            let mut insns = vec![Insn {
                op: Opcode::Movi,
                regs: [15, 0, 0],
                imm: k,
            }];
            let fix = |mut i: Insn| {
                let writes = !matches!(i.op, Opcode::St8 | Opcode::St32);
                if writes && i.op.reg_count() > 0 && i.regs[0] == 15 {
                    i.regs[0] = 14;
                }
                i
            };
            insns.extend(body.iter().map(|r| fix(biased_insn(r, 1, false))));
            insns.push(Insn {
                op: Opcode::Addi,
                regs: [15, 15, 0],
                imm: -1,
            });
            insns.push(Insn {
                op: Opcode::Bnez,
                regs: [15, 0, 0],
                imm: 1,
            });
            insns.extend(tail.iter().map(|r| fix(biased_insn(r, 1, false))));
            insns.push(HALT);
            Program::new(insns).expect("valid").encode()
        })
}

fn small_buffer() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => Just(Vec::new()),
        1 => prop::collection::vec(any::<u8>(), 1..8),
        2 => prop::collection::vec(any::<u8>(), 16..=16),
        6 => prop::collection::vec(any::<u8>(), 60..=72),
    ]
}

fn reg_value() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => (0u64..16).prop_map(|x| x * 4),
        4 => 0u64..72,
        1 => Just(u64::MAX),
        1 => (1u64 << 32)..(1u64 << 32) + 4,
        1 => any::<u64>(),
    ]
}

fn initial_regs() -> impl Strategy<Value = [u64; 16]> {
    prop::array::uniform16(reg_value()).prop_map(|mut r| {
        r[1] = 1;
        r[2] = 2;
        // r3 and r4 are the usual offset registers: keep them small.
        r[3] = (r[3] % 64) & !3;
        r[4] %= 64;
        r
    })
}

// =======================================================================================
// EXEC properties.
// =======================================================================================

/// r0 and steps, or the fault.
type ExecOutcome = Result<(u64, u64), MFault>;

fn run_both(
    code: &[u8],
    bufs: Vec<Vec<u8>>,
    regs: [u64; 16],
    budget: u64,
) -> Result<ExecOutcome, TestCaseError> {
    let prog = Program::decode(code).expect("valid");
    let mem = VecMem::new(bufs.clone());
    let got = run_program(&mem, &prog, regs, budget).map_err(observe);
    let mut model_bufs = bufs;
    let want = model_exec(code, &mut model_bufs, regs, budget);
    prop_assert_eq!(got, want, "program {:?}", prog.insns());
    prop_assert!(
        mem.snapshot() == model_bufs,
        "buffers differ; program {:?}",
        prog.insns()
    );
    Ok(want)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random control flow, random registers, random budgets.
    #[test]
    fn run_program_matches_model(
        code in random_program(),
        b1 in small_buffer(),
        b2 in small_buffer(),
        regs in initial_regs(),
        budget in prop_oneof![0u64..4, 0u64..300],
    ) {
        let outcome = run_both(&code, vec![b1, b2], regs, budget)?;
        if let Ok((_, steps)) = outcome {
            prop_assert!(steps <= budget && steps >= 1);
        }
    }

    /// Counted loops through the EXEC slot (r1..r7 from the arguments), under random
    /// budgets including none at all.
    #[test]
    fn exec_slot_loops_match_model(
        code in counted_loop(),
        b1 in small_buffer(),
        b2 in small_buffer(),
        args in prop::array::uniform6(prop_oneof![4 => 0u32..72, 1 => any::<u32>()]),
        handle_in_r1 in any::<bool>(),
        budget in prop_oneof![0u64..80, Just(u64::MAX)],
    ) {
        let bufs = vec![b1, b2];
        let programs = [code];
        let env = TestEnv::new(bufs.clone(), &programs, budget, 0);
        let mut model = Model::new(bufs, &programs, budget, 0);
        let mut a = [1u32, 0, 0, 0, 0, 0, 0, 0];
        a[1] = if handle_in_r1 { 1 } else { args[0] };
        a[2] = 2;
        a[3..8].copy_from_slice(&args[1..6]);
        let slot = Slot::new(SlotOp::Exec, &a);
        step_both(&env, &mut model, &slot, 0, 0)?;
    }
}

/// The generators reach every outcome the model distinguishes, so the properties above
/// really compare loads, stores and faults rather than trivially halting programs.
#[test]
fn exec_generators_reach_every_outcome() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = (
        prop_oneof![random_program(), counted_loop()],
        small_buffer(),
        small_buffer(),
        initial_regs(),
        0u64..300,
    );
    let mut seen = std::collections::BTreeSet::new();
    let mut wrote = 0;
    for _ in 0..600 {
        let (code, b1, b2, regs, budget) = strategy.new_tree(&mut runner).expect("tree").current();
        let before = vec![b1, b2];
        let mut bufs = before.clone();
        match model_exec(&code, &mut bufs, regs, budget) {
            Ok(_) => {
                seen.insert("ok".to_string());
            }
            Err((code, ..)) => {
                seen.insert(code.name().to_string());
            }
        }
        if bufs != before {
            wrote += 1;
        }
    }
    for want in [
        "ok",
        "bad_handle",
        "out_of_bounds",
        "misaligned",
        "step_budget",
    ] {
        assert!(seen.contains(want), "{want} never reached: {seen:?}");
    }
    assert!(wrote > 80, "only {wrote} runs changed memory");
}

// =======================================================================================
// Slot properties.
// =======================================================================================

/// Two small programs for EXEC slots: id 1 increments the word at (r1, r2) and returns
/// it; id 2 counts r1 down (so large r1 exceeds the budget).
fn slot_programs() -> Vec<Vec<u8>> {
    let p1 = [
        (Opcode::Ld32, [3, 1, 2], 0),
        (Opcode::Addi, [3, 3, 0], 1),
        (Opcode::St32, [3, 1, 2], 0),
        (Opcode::Mov, [0, 3, 0], 0),
        (Opcode::Halt, [0, 0, 0], 0),
    ];
    let p2 = [
        (Opcode::Beqz, [1, 0, 0], 4),
        (Opcode::Addi, [1, 1, 0], -1),
        (Opcode::Addi, [0, 0, 0], 3),
        (Opcode::Jmp, [0, 0, 0], 0),
        (Opcode::Halt, [0, 0, 0], 0),
    ];
    [&p1[..], &p2[..]]
        .iter()
        .map(|p| {
            let insns = p
                .iter()
                .map(|&(op, regs, imm)| Insn { op, regs, imm })
                .collect();
            Program::new(insns).expect("valid").encode()
        })
        .collect()
}

fn handle_arg() -> impl Strategy<Value = u32> {
    prop_oneof![12 => 1u32..=2, 1 => Just(0u32), 1 => 3u32..6, 1 => any::<u32>()]
}

fn value_arg() -> impl Strategy<Value = u32> {
    prop_oneof![
        5 => (0u32..30).prop_map(|x| x * 4),
        3 => 0u32..120,
        1 => 1000u32..1110,
        1 => (u32::MAX - 80)..=u32::MAX,
        1 => any::<u32>(),
    ]
}

fn byte_arg() -> impl Strategy<Value = u32> {
    prop_oneof![9 => 0u32..256, 1 => 256u32..512, 1 => any::<u32>()]
}

fn packed_ops() -> impl Strategy<Value = u32> {
    let sub = prop_oneof![3 => Just(0x11u32), 3 => Just(0x10), 3 => Just(0x12), 2 => Just(0),
                          1 => any::<u8>().prop_map(u32::from)];
    (
        prop_oneof![8 => 1u32..=3, 1 => Just(0u32), 1 => 4u32..256],
        [sub.clone(), sub.clone(), sub],
        any::<bool>(),
    )
        .prop_map(|(count, subs, clean)| {
            let mut w = count;
            for (k, s) in subs.iter().enumerate() {
                if !clean || (k as u32) < count {
                    w |= s << (8 * (k + 1));
                }
            }
            w
        })
}

#[derive(Clone, Debug)]
struct SlotCase {
    slot: Slot,
    reserved: u32,
}

fn slot_case() -> impl Strategy<Value = SlotCase> {
    let op = prop_oneof![
        // DFA_SCAN has its own model (tests/dfa_model.rs): its table is structured data that
        // random words would almost never form. IO_READ needs the host's I/O queue; its two
        // phases are tested in tests/io_read.rs and by the conformance cases.
        30 => (0..SlotOp::ALL.len())
            .prop_map(|i| SlotOp::ALL[i])
            .prop_filter("modelled elsewhere", |&o| o != SlotOp::DfaScan && o != SlotOp::IoRead)
            .prop_map(|o| o as u16),
        1 => any::<u16>(),
    ];
    (
        (
            op,
            prop::array::uniform8(handle_arg()),
            prop::array::uniform8(value_arg()),
            prop::array::uniform8(byte_arg()),
            packed_ops(),
            0u32..4,
        ),
        (
            prop_oneof![20 => Just(0u8), 1 => 1u8..=255],
            prop_oneof![20 => 0u8..=7, 1 => 8u8..=255],
            prop_oneof![20 => Just(0u16), 1 => any::<u16>()],
            prop_oneof![20 => Just(0u32), 1 => 1u32..=0xffff],
            prop_oneof![12 => Just(None), 1 => (0usize..8, 1u32..=u32::MAX).prop_map(Some)],
        ),
    )
        .prop_map(
            |(
                (op, handles, values, bytes, packed, prog),
                (flags, priority, tenant, reserved, noise),
            )| {
                let mut args = [0u32; 8];
                if let Some(core) = SlotOp::from_u16(op) {
                    for (i, spec) in core.args().iter().enumerate() {
                        use vyre_isa::slot::ArgKind;
                        args[i] = match spec.kind {
                            ArgKind::Buffer => handles[i],
                            ArgKind::Program => prog,
                            ArgKind::Value => match (core, spec.name) {
                                (SlotOp::Fill, "value") | (SlotOp::CountByte, "byte") => bytes[i],
                                (SlotOp::Packed, "ops") => packed,
                                (SlotOp::Exec, "r1") => handles[i],
                                _ => values[i],
                            },
                        };
                    }
                    if core == SlotOp::Packed {
                        // Offsets at 2, 4, 6: mostly aligned and small.
                        for k in [2, 4, 6] {
                            args[k] = values[k] % 80;
                        }
                    }
                }
                if let Some((i, v)) = noise {
                    args[i] = v;
                }
                SlotCase {
                    slot: Slot {
                        op,
                        flags,
                        priority,
                        tenant,
                        args,
                    },
                    reserved,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Sequences of random slots (every core op, out-of-range arguments, malformed words)
    /// against the model, sharing memory and environment state across the sequence.
    #[test]
    fn slot_sequences_match_model(
        b1 in prop::collection::vec(any::<u8>(), 0..=120),
        b2 in prop::collection::vec(any::<u8>(), 1020..=1110),
        cases in prop::collection::vec(slot_case(), 1..8),
        budget in prop_oneof![0u64..3, 3u64..40],
        log_capacity in 0usize..3,
    ) {
        let bufs = vec![b1, b2];
        let programs = slot_programs();
        let env = TestEnv::new(bufs.clone(), &programs, budget, log_capacity);
        let mut model = Model::new(bufs, &programs, budget, log_capacity);
        for (pos, c) in cases.iter().enumerate() {
            step_both(&env, &mut model, &c.slot, c.reserved, pos as u32 * 7 + 3)?;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    /// Ranges longer than the interpreter's 4 KiB chunk: MEMCPY with overlaps in both
    /// directions, HASH64, COUNT_BYTE and BYTE_HISTOGRAM.
    #[test]
    fn large_ranges_match_model(
        big in prop::collection::vec(any::<u8>(), 9000..=9000),
        which in 0u8..4,
        src_off in prop_oneof![0u32..40, 4000u32..4200],
        dst_off in prop_oneof![0u32..40, 4000u32..4200],
        len in prop_oneof![4090u32..4110, 4800u32..4900, 0u32..3],
        other_buf in any::<bool>(),
        seed: u32,
        byte: u8,
    ) {
        let hist = vec![0u8; 1024];
        let bufs = vec![big, hist];
        let env = TestEnv::new(bufs.clone(), &[], 0, 0);
        let mut model = Model::new(bufs, &[], 0, 0);
        let slot = match which {
            0 => Slot::new(SlotOp::Memcpy, &[1, dst_off, 1 + u32::from(other_buf), src_off, len]),
            1 => Slot::new(SlotOp::Hash64, &[1, src_off, len, seed]),
            2 => Slot::new(SlotOp::CountByte, &[1, src_off, len, byte.into()]),
            _ => Slot::new(SlotOp::ByteHistogram, &[1, src_off, len, 2, 0]),
        };
        step_both(&env, &mut model, &slot, 0, 0)?;
        // Twice, so the histogram accumulates and MEMCPY reads what it wrote.
        step_both(&env, &mut model, &slot, 0, 1)?;
    }
}

/// The slot generator reaches every fault code the slot ops can raise.
#[test]
fn slot_generator_reaches_every_outcome() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = (
        prop::collection::vec(any::<u8>(), 0..=120),
        prop::collection::vec(any::<u8>(), 1020..=1110),
        slot_case(),
    );
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..6000 {
        let (b1, b2, c) = strategy.new_tree(&mut runner).expect("tree").current();
        let mut model = Model::new(vec![b1, b2], &slot_programs(), 20, 1);
        let op = SlotOp::from_u16(c.slot.op).map_or("ext", |o| o.mnemonic());
        match model.slot(&c.slot, c.reserved, 0) {
            Ok(_) => seen.insert(format!("{op} ok")),
            Err((code, ..)) => seen.insert(format!("{op} {}", code.name())),
        };
    }
    let mut want: Vec<String> = SlotOp::ALL
        .iter()
        .filter(|&&o| o != SlotOp::DfaScan && o != SlotOp::IoRead)
        .map(|o| format!("{} ok", o.mnemonic()))
        .collect();
    for (op, codes) in [
        ("ext", &["unknown_opcode"][..]),
        ("NOP", &["malformed_slot"][..]),
        (
            "LOAD_U32",
            &["bad_handle", "misaligned", "out_of_bounds"][..],
        ),
        (
            "PACKED",
            &["malformed_slot", "misaligned", "out_of_bounds"][..],
        ),
        ("MEMCPY", &["bad_handle", "out_of_bounds"][..]),
        ("FILL", &["malformed_slot", "out_of_bounds"][..]),
        ("COUNT_BYTE", &["malformed_slot", "out_of_bounds"][..]),
        ("BYTE_HISTOGRAM", &["misaligned", "out_of_bounds"][..]),
        ("EXEC", &["bad_program", "step_budget", "bad_handle"][..]),
    ] {
        want.extend(codes.iter().map(|c| format!("{op} {c}")));
    }
    for w in want {
        assert!(seen.contains(&w), "{w} never reached: {seen:?}");
    }
}

// =======================================================================================
// Fixed cases: documented behaviour and fault precedence.
// =======================================================================================

fn one(env: &TestEnv, slot: Slot) -> Result<[u32; 4], MFault> {
    exec_slot(env, &slot, 0, 0).map_err(observe)
}

fn env_with(bufs: Vec<Vec<u8>>) -> TestEnv {
    TestEnv::new(bufs, &slot_programs(), 100, 4)
}

#[test]
fn slot_fault_precedence() {
    use FaultCode::*;
    let env = env_with(vec![vec![0; 16], vec![0; 1024]]);
    // Unknown opcode beats everything else; detail is the opcode.
    let mut s = Slot::new(SlotOp::Nop, &[]);
    s.op = 0x0100;
    s.flags = 1;
    s.args[7] = 1;
    assert_eq!(
        exec_slot(&env, &s, 5, 0).map_err(observe),
        Err((UnknownOpcode, 0x100, 0))
    );
    // Flags, reserved tenant bits and priority: MALFORMED_SLOT detail 0, before unused words.
    let mut s = Slot::new(SlotOp::LoadU32, &[9, 3]);
    s.args[5] = 1;
    for (flags, reserved, prio) in [(1, 0, 0), (0, 1, 0), (0, 0, 8)] {
        s.flags = flags;
        s.priority = prio;
        assert_eq!(
            exec_slot(&env, &s, reserved, 0).map_err(observe),
            Err((MalformedSlot, 0, 0))
        );
    }
    s.flags = 0;
    s.priority = 7;
    // First non-zero unused word (detail = its index) before the bad handle.
    s.args[7] = 1;
    assert_eq!(one(&env, s), Err((MalformedSlot, 5, 0)));
    // Then handle, alignment, range.
    assert_eq!(
        one(&env, Slot::new(SlotOp::LoadU32, &[9, 3])),
        Err((BadHandle, 9, 0))
    );
    assert_eq!(
        one(&env, Slot::new(SlotOp::LoadU32, &[1, 18])),
        Err((Misaligned, 18, 0))
    );
    assert_eq!(
        one(&env, Slot::new(SlotOp::LoadU32, &[1, 16])),
        Err((OutOfBounds, 16, 0))
    );
    assert_eq!(one(&env, Slot::new(SlotOp::LoadU32, &[1, 12])), Ok([0; 4]));
    // A byte argument above 255 is checked before the range.
    assert_eq!(
        one(&env, Slot::new(SlotOp::Fill, &[9, 99, 99, 256])),
        Err((MalformedSlot, 3, 0))
    );
    assert_eq!(
        one(&env, Slot::new(SlotOp::CountByte, &[9, 99, 99, 0x1_00])),
        Err((MalformedSlot, 3, 0))
    );
    // MEMCPY: destination before source.
    assert_eq!(
        one(&env, Slot::new(SlotOp::Memcpy, &[1, 10, 9, 0, 8])),
        Err((OutOfBounds, 10, 0))
    );
    assert_eq!(
        one(&env, Slot::new(SlotOp::Memcpy, &[1, 0, 9, 0, 8])),
        Err((BadHandle, 9, 0))
    );
    // off + len overflowing 32 bits is out of bounds, not wrapped.
    assert_eq!(
        one(&env, Slot::new(SlotOp::Hash64, &[1, u32::MAX, 2, 0])),
        Err((OutOfBounds, u32::MAX, 0))
    );
    assert_eq!(
        one(&env, Slot::new(SlotOp::CountByte, &[1, 8, u32::MAX, 0])),
        Err((OutOfBounds, 8, 0))
    );
    // BYTE_HISTOGRAM: source range, destination handle, alignment, destination range.
    let h = |a: &[u32]| one(&env, Slot::new(SlotOp::ByteHistogram, a));
    assert_eq!(h(&[1, 0, 17, 9, 2]), Err((OutOfBounds, 0, 0)));
    assert_eq!(h(&[1, 0, 16, 9, 2]), Err((BadHandle, 9, 0)));
    assert_eq!(h(&[1, 0, 16, 2, 2]), Err((Misaligned, 2, 0)));
    assert_eq!(h(&[1, 0, 16, 2, 4]), Err((OutOfBounds, 4, 0)));
    assert_eq!(h(&[1, 0, 16, 1, 0]), Err((OutOfBounds, 0, 0)));
    assert_eq!(h(&[1, 0, 16, 2, 0]), Ok([16, 0, 0, 0]));
    // EXEC: unknown program.
    assert_eq!(
        one(&env, Slot::new(SlotOp::Exec, &[0])),
        Err((BadProgram, 0, 0))
    );
    assert_eq!(
        one(&env, Slot::new(SlotOp::Exec, &[3])),
        Err((BadProgram, 3, 0))
    );
}

#[test]
fn packed_sub_ops() {
    use FaultCode::*;
    let env = env_with(vec![vec![0; 16]]);
    let ops = |subs: &[u32]| {
        subs.len() as u32
            | subs
                .iter()
                .enumerate()
                .fold(0, |w, (k, s)| w | s << (8 * (k + 1)))
    };
    let p = |a: &[u32]| one(&env, Slot::new(SlotOp::Packed, a));
    // store 7 at 0, atomic add 5 at 0, load 0.
    assert_eq!(
        p(&[ops(&[0x10, 0x12, 0x11]), 1, 0, 7, 0, 5, 0, 0]),
        Ok([0, 7, 12, 0])
    );
    // A faulting sub-op stops the slot; earlier sub-ops stay done; `at` is its index.
    assert_eq!(
        p(&[ops(&[0x10, 0x11]), 1, 4, 9, 6, 0]),
        Err((Misaligned, 6, 1))
    );
    assert_eq!(env.mem.snapshot()[0][4], 9);
    assert_eq!(
        p(&[ops(&[0x00, 0x10, 0x11]), 1, 0, 0, 8, 1, 16, 0]),
        Err((OutOfBounds, 16, 2))
    );
    assert_eq!(env.mem.snapshot()[0][8], 1);
    // A disallowed sub-op (HASH64) is MALFORMED_SLOT at its index, after earlier sub-ops.
    assert_eq!(
        p(&[ops(&[0x12, 0x20]), 1, 0, 1, 0, 0]),
        Err((MalformedSlot, 0, 1))
    );
    assert_eq!(env.mem.snapshot()[0][0], 13);
    // Count 0 or 4, sub-op bytes or argument pairs past the count.
    assert_eq!(p(&[0, 1]), Err((MalformedSlot, 0, 0)));
    assert_eq!(p(&[4, 1]), Err((MalformedSlot, 0, 0)));
    assert_eq!(
        p(&[1 | 0x11 << 8 | 0x11 << 16, 1]),
        Err((MalformedSlot, 0, 0))
    );
    assert_eq!(
        p(&[ops(&[0x11]), 1, 0, 0, 0, 3]),
        Err((MalformedSlot, 5, 0))
    );
    // A bad handle faults at the first sub-op that uses it, NOPs do not.
    assert_eq!(
        p(&[ops(&[0x00, 0x11]), 7, 0, 0, 0, 0]),
        Err((BadHandle, 7, 1))
    );
    assert_eq!(p(&[ops(&[0x00]), 7]), Ok([0; 4]));
}

#[test]
fn env_side_effects() {
    let env = env_with(vec![vec![0; 4]]);
    assert_eq!(one(&env, Slot::new(SlotOp::Fence, &[])), Ok([1, 0, 0, 0]));
    assert_eq!(one(&env, Slot::new(SlotOp::Fence, &[])), Ok([2, 0, 0, 0]));
    assert_eq!(one(&env, Slot::new(SlotOp::Shutdown, &[])), Ok([0; 4]));
    assert_eq!(env.shutdowns.get(), 1);
    let s = Slot::new(SlotOp::DebugLog, &[1, 2, 3, 4]).with_tenant(9);
    for i in 0..6 {
        let want = u32::from(i < 4);
        assert_eq!(
            exec_slot(&env, &s, 0, 40 + i).map_err(observe),
            Ok([want, 0, 0, 0])
        );
    }
    assert_eq!(env.dropped.get(), 2);
    let log = env.log.borrow();
    assert_eq!(log.len(), 4);
    assert_eq!(log[3], (43, s, [1, 2, 3, 4]));
}

#[test]
fn exec_results_and_budget_boundary() {
    use FaultCode::*;
    // Program 2 counts r1 down: 4 * r1 + 2 instructions (4 per round, then the final beqz
    // and halt), and returns 3 * r1.
    for n in 0u32..5 {
        let steps = u64::from(4 * n + 2);
        let exact = TestEnv::new(vec![], &slot_programs(), steps, 0);
        assert_eq!(
            one(&exact, Slot::new(SlotOp::Exec, &[2, n])),
            Ok([3 * n, 0, steps as u32, 0])
        );
        let short = TestEnv::new(vec![], &slot_programs(), steps - 1, 0);
        // The instruction that would exceed the budget is the final halt at pc 4.
        assert_eq!(
            one(&short, Slot::new(SlotOp::Exec, &[2, n])),
            Err((StepBudget, steps as u32 - 1, 4))
        );
    }
    let zero = TestEnv::new(vec![], &slot_programs(), 0, 0);
    assert_eq!(
        one(&zero, Slot::new(SlotOp::Exec, &[2, 0])),
        Err((StepBudget, 0, 0))
    );
    // r0 is 64-bit: the high half comes back in result word 1.
    let code = Program::new(vec![
        Insn {
            op: Opcode::Movi,
            regs: [0, 0, 0],
            imm: -2,
        },
        Insn {
            op: Opcode::Movhi,
            regs: [0, 0, 0],
            imm: 0x1234_5678,
        },
        HALT,
    ])
    .expect("valid")
    .encode();
    let env = TestEnv::new(vec![], &[code], 10, 0);
    assert_eq!(
        one(&env, Slot::new(SlotOp::Exec, &[1])),
        Ok([0xffff_fffe, 0x1234_5678, 3, 0])
    );
}

/// Register semantics straight from the table's doc comments, one instruction each.
#[test]
fn instruction_semantics_examples() {
    let neg = (-8i64) as u64;
    let cases: &[(Opcode, i32, u64, u64, u64)] = &[
        // (op, imm, ra, rb, expected rd)
        (Opcode::Shl, 0, 1, 65, 2),
        (Opcode::Shr, 0, neg, 63, 1),
        (Opcode::Sar, 0, neg, 1, (-4i64) as u64),
        (Opcode::Sar, 0, neg, 64 + 2, (-2i64) as u64),
        (Opcode::Mul, 0, u64::MAX, 3, u64::MAX - 2),
        (Opcode::Sub, 0, 0, 1, u64::MAX),
        (Opcode::Ltu, 0, neg, 1, 0),
        (Opcode::Lts, 0, neg, 1, 1),
        (Opcode::Eq, 0, 5, 5, 1),
        (Opcode::Ne, 0, 5, 5, 0),
        (Opcode::Addi, -1, 0, 0, u64::MAX),
        (Opcode::Andi, -16, 0xff, 0, 0xf0),
        (Opcode::Andi, 0x7fff_ffff, u64::MAX, 0, 0x7fff_ffff),
        (Opcode::Shli, 64 + 4, 1, 0, 16),
        (Opcode::Shli, -1, 1, 0, 1 << 63),
        (Opcode::Shri, 63, u64::MAX, 0, 1),
        (Opcode::Movi, i32::MIN, 0, 0, 0xffff_ffff_8000_0000),
    ];
    for &(op, imm, ra, rb, want) in cases {
        let regs3 = match op.reg_count() {
            1 => [3, 0, 0],
            2 => [3, 1, 0],
            _ => [3, 1, 2],
        };
        let prog = Program::new(vec![
            Insn {
                op,
                regs: regs3,
                imm,
            },
            Insn {
                op: Opcode::Mov,
                regs: [0, 3, 0],
                imm: 0,
            },
            HALT,
        ])
        .expect("valid");
        let mut regs = [0u64; 16];
        regs[1] = ra;
        regs[2] = rb;
        regs[3] = 0xdead_beef_0000_0000;
        let mem = VecMem::new(vec![]);
        assert_eq!(
            run_program(&mem, &prog, regs, 10),
            Ok((want, 3)),
            "{op:?} {imm}"
        );
        let mut model_bufs = vec![];
        assert_eq!(
            model_exec(&prog.encode(), &mut model_bufs, regs, 10),
            Ok((want, 3))
        );
    }
    // movhi keeps the low half.
    let prog = Program::new(vec![
        Insn {
            op: Opcode::Movhi,
            regs: [0, 0, 0],
            imm: -1,
        },
        HALT,
    ])
    .expect("valid");
    let mut regs = [0u64; 16];
    regs[0] = 0x1111_2222_3333_4444;
    assert_eq!(
        run_program(&VecMem::new(vec![]), &prog, regs, 2),
        Ok((0xffff_ffff_3333_4444, 2))
    );
}

#[test]
fn exec_memory_faults() {
    use FaultCode::*;
    let prog = |op: Opcode, imm: i32| {
        Program::new(vec![
            Insn {
                op: Opcode::Mov,
                regs: [9, 9, 0],
                imm: 0,
            },
            Insn {
                op,
                regs: [0, 1, 2],
                imm,
            },
            HALT,
        ])
        .expect("valid")
    };
    let run = |op: Opcode, h: u64, off: u64, imm: i32| {
        let mem = VecMem::new(vec![vec![7; 8]]);
        let mut regs = [0u64; 16];
        regs[1] = h;
        regs[2] = off;
        run_program(&mem, &prog(op, imm), regs, 10).map_err(observe)
    };
    assert_eq!(run(Opcode::Ld8, 1, 7, 0), Ok((7, 3)));
    assert_eq!(run(Opcode::Ld8, 1, 10, -3), Ok((7, 3)));
    assert_eq!(run(Opcode::Ld8, 1, 8, 0), Err((OutOfBounds, 8, 1)));
    assert_eq!(run(Opcode::Ld8, 1, 0, -1), Err((OutOfBounds, u32::MAX, 1)));
    assert_eq!(run(Opcode::Ld8, 1, u64::MAX, 1), Err((OutOfBounds, 0, 1)));
    assert_eq!(run(Opcode::Ld8, 1, 1 << 32, 0), Err((OutOfBounds, 0, 1)));
    assert_eq!(run(Opcode::Ld32, 1, 4, 0), Ok((0x0707_0707, 3)));
    assert_eq!(run(Opcode::Ld32, 1, 2, 0), Err((Misaligned, 2, 1)));
    assert_eq!(run(Opcode::Ld32, 1, 8, 0), Err((OutOfBounds, 8, 1)));
    assert_eq!(run(Opcode::Ld32, 1, 6, -2), Ok((0x0707_0707, 3)));
    assert_eq!(run(Opcode::St32, 0, 0, 0), Err((BadHandle, 0, 1)));
    assert_eq!(run(Opcode::St8, 2, 0, 0), Err((BadHandle, 2, 1)));
    // A handle register above 32 bits is a bad handle (detail: its low 32 bits), even when
    // the low 32 bits name a registered buffer.
    assert_eq!(
        run(Opcode::Ld8, (1 << 32) | 1, 0, 0),
        Err((BadHandle, 1, 1))
    );
    // An unregistered handle is reported before alignment.
    assert_eq!(run(Opcode::Ld32, 5, 2, 0), Err((BadHandle, 5, 1)));
    // Stores write exactly their bytes.
    let mem = VecMem::new(vec![vec![0; 8]]);
    let mut regs = [0u64; 16];
    regs[0] = 0x1122_3344_5566_7788;
    regs[1] = 1;
    regs[2] = 4;
    run_program(&mem, &prog(Opcode::St32, 0), regs, 10).expect("runs");
    run_program(&mem, &prog(Opcode::St8, -3), regs, 10).expect("runs");
    assert_eq!(
        mem.snapshot()[0],
        vec![0, 0x88, 0, 0, 0x88, 0x77, 0x66, 0x55]
    );
}

/// Regression: an unregistered handle with an effective offset outside 0..2^32 is
/// `bad_handle` (the handle is checked first, as in slot ops), not `out_of_bounds`.
#[test]
fn exec_unregistered_handle_is_bad_handle_whatever_the_offset() {
    let prog = Program::new(vec![
        Insn {
            op: Opcode::Ld8,
            regs: [0, 1, 2],
            imm: -1,
        },
        HALT,
    ])
    .expect("valid");
    let mem = VecMem::new(vec![vec![0; 8]]);
    let mut regs = [0u64; 16];
    regs[1] = 5;
    let got = run_program(&mem, &prog, regs, 10).map_err(observe);
    assert_eq!(
        got,
        Err((FaultCode::BadHandle, 5, 0)),
        "EXEC checks the handle before the offset"
    );
}
