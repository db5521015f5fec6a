//! The reference interpreter: what every slot opcode and every EXEC instruction does.
//!
//! It is generic over [`Env`], which supplies buffers, loaded programs and the control-block
//! side effects, so the same code is the CPU backend's engine and the oracle the GPU
//! backends are compared with. Every range is checked here, before memory is touched.

use crate::fault::{Fault, FaultCode};
use crate::hash::Xxh64;
use crate::program::{Opcode, Program, REGISTERS};
use crate::slot::{Slot, SlotOp, RESULT_WORDS};
use std::ops::Deref;

/// Byte-addressed buffers named by handle. Bounds are checked by the interpreter before it
/// calls any access method, so implementations may treat an out-of-range call as a bug.
pub trait Memory {
    /// The size in bytes of buffer `handle`, or `None` if no such buffer is registered.
    fn size(&self, handle: u32) -> Option<u64>;
    /// Loads a little-endian u32 at a 4-byte aligned offset.
    fn load_u32(&self, handle: u32, off: u64) -> u32;
    /// Stores a little-endian u32 at a 4-byte aligned offset.
    fn store_u32(&self, handle: u32, off: u64, value: u32);
    /// Atomically adds; returns the old value.
    fn fetch_add_u32(&self, handle: u32, off: u64, value: u32) -> u32;
    /// Atomically compares and swaps; returns the old value.
    fn cas_u32(&self, handle: u32, off: u64, expected: u32, new: u32) -> u32;
    /// Copies bytes out of a buffer.
    fn read(&self, handle: u32, off: u64, dst: &mut [u8]);
    /// Copies bytes into a buffer, leaving neighbouring bytes intact even if other workers
    /// write them concurrently.
    fn write(&self, handle: u32, off: u64, src: &[u8]);
    /// The buffer's words, for implementations that hold buffers as little-endian atomic
    /// words: lets hot loops (DFA_SCAN's table lookups) skip the per-access handle lookup.
    /// `None` (the default) makes them use [`Memory::load_u32`].
    fn words(&self, _handle: u32) -> Option<&[std::sync::atomic::AtomicU32]> {
        None
    }
}

/// Everything a slot can reach besides its own words.
pub trait Env {
    /// The buffers.
    type Mem: Memory;
    /// How a loaded program is held (a reference, an `Arc`, ...).
    type Prog: Deref<Target = Program>;
    /// The buffers.
    fn mem(&self) -> &Self::Mem;
    /// The loaded program with this id.
    fn program(&self, id: u32) -> Option<Self::Prog>;
    /// Increments the epoch (with a full fence); returns the new epoch.
    fn fence(&self) -> u32;
    /// Appends a debug record; `false` if the log was full and the record was counted as
    /// dropped.
    fn debug_log(&self, position: u32, slot: &Slot, words: [u32; 4]) -> bool;
    /// Asks the workers to stop.
    fn request_shutdown(&self);
    /// Most instructions one EXEC slot may execute.
    fn step_budget(&self) -> u64;
    /// How many files the host registered for IO_READ (valid ids are `1..=io_files()`).
    /// Environments without an I/O queue have none (the default), so IO_READ faults
    /// `bad_file` there after its buffer checks.
    fn io_files(&self) -> u32 {
        0
    }
}

/// What executing a slot's first (or only) phase produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The slot finished with these result words.
    Done(Results),
    /// An IO_READ passed its checks: the worker queues the request and the slot waits in
    /// status WAIT_IO until [`crate::io::resume`] completes it.
    WaitIo(crate::io::IoRead),
}

/// Result words of a completed slot.
pub type Results = [u32; RESULT_WORDS];

const CHUNK: usize = 4096;

fn buffer_size<M: Memory>(mem: &M, handle: u32) -> Result<u64, Fault> {
    mem.size(handle)
        .ok_or(Fault::new(FaultCode::BadHandle, handle))
}

/// Checks that `[off, off + len)` lies in buffer `handle`.
pub(crate) fn check_range<M: Memory>(
    mem: &M,
    handle: u32,
    off: u64,
    len: u64,
) -> Result<(), Fault> {
    let size = buffer_size(mem, handle)?;
    match off.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Fault::new(FaultCode::OutOfBounds, off as u32)),
    }
}

/// Checks a 4-byte aligned word access.
fn check_word<M: Memory>(mem: &M, handle: u32, off: u64) -> Result<(), Fault> {
    buffer_size(mem, handle)?;
    if off % 4 != 0 {
        return Err(Fault::new(FaultCode::Misaligned, off as u32));
    }
    check_range(mem, handle, off, 4)
}

/// Runs `f` over `[off, off + len)` of a buffer in chunks (range already checked).
fn for_each_chunk<M: Memory>(mem: &M, handle: u32, off: u64, len: u64, mut f: impl FnMut(&[u8])) {
    let mut buf = [0u8; CHUNK];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(CHUNK as u64) as usize;
        mem.read(handle, off + done, &mut buf[..n]);
        f(&buf[..n]);
        done += n as u64;
    }
}

fn byte_arg(slot: &Slot, index: usize) -> Result<u8, Fault> {
    let v = slot.args[index];
    u8::try_from(v).map_err(|_| Fault::new(FaultCode::MalformedSlot, index as u32))
}

/// Executes one slot where no I/O queue exists: like [`step_slot`], but an IO_READ that
/// passes its checks faults `unsupported` (detail: the opcode) instead of waiting.
pub fn exec_slot<E: Env>(
    env: &E,
    slot: &Slot,
    tenant_reserved: u32,
    position: u32,
) -> Result<Results, Fault> {
    match step_slot(env, slot, tenant_reserved, position)? {
        Step::Done(r) => Ok(r),
        Step::WaitIo(_) => Err(Fault::new(FaultCode::Unsupported, u32::from(slot.op))),
    }
}

/// Executes one slot (for IO_READ, its first phase). `tenant_reserved` is the reserved half
/// of the tenant word (it must be zero), `position` the ring position it was claimed at (for
/// DEBUG_LOG records).
pub fn step_slot<E: Env>(
    env: &E,
    slot: &Slot,
    tenant_reserved: u32,
    position: u32,
) -> Result<Step, Fault> {
    let op = slot
        .check(tenant_reserved)
        .map_err(|(code, detail)| Fault::new(code, detail))?;
    let a = &slot.args;
    let mem = env.mem();
    let mut r = [0u32; RESULT_WORDS];
    match op {
        SlotOp::Nop => {}
        SlotOp::Shutdown => env.request_shutdown(),
        SlotOp::Fence => r[0] = env.fence(),
        SlotOp::DebugLog => {
            r[0] = u32::from(env.debug_log(position, slot, [a[0], a[1], a[2], a[3]]))
        }
        SlotOp::Packed => r = exec_packed(mem, slot)?,
        SlotOp::StoreU32 => {
            check_word(mem, a[0], a[1].into())?;
            mem.store_u32(a[0], a[1].into(), a[2]);
        }
        SlotOp::LoadU32 => {
            check_word(mem, a[0], a[1].into())?;
            r[0] = mem.load_u32(a[0], a[1].into());
        }
        SlotOp::AtomicAdd => {
            check_word(mem, a[0], a[1].into())?;
            r[0] = mem.fetch_add_u32(a[0], a[1].into(), a[2]);
        }
        SlotOp::Cas => {
            check_word(mem, a[0], a[1].into())?;
            r[0] = mem.cas_u32(a[0], a[1].into(), a[2], a[3]);
            r[1] = u32::from(r[0] == a[2]);
        }
        SlotOp::Memcpy => memcpy(mem, a[0], a[1].into(), a[2], a[3].into(), a[4].into())?,
        SlotOp::Fill => {
            let byte = byte_arg(slot, 3)?;
            check_range(mem, a[0], a[1].into(), a[2].into())?;
            let chunk = [byte; CHUNK];
            let (off, len) = (u64::from(a[1]), u64::from(a[2]));
            let mut done = 0;
            while done < len {
                let n = (len - done).min(CHUNK as u64) as usize;
                mem.write(a[0], off + done, &chunk[..n]);
                done += n as u64;
            }
        }
        SlotOp::Hash64 => {
            check_range(mem, a[0], a[1].into(), a[2].into())?;
            let mut h = Xxh64::new(a[3].into());
            for_each_chunk(mem, a[0], a[1].into(), a[2].into(), |c| h.update(c));
            let d = h.digest();
            r[0] = d as u32;
            r[1] = (d >> 32) as u32;
        }
        SlotOp::ByteHistogram => {
            check_range(mem, a[0], a[1].into(), a[2].into())?;
            buffer_size(mem, a[3])?;
            if a[4] % 4 != 0 {
                return Err(Fault::new(FaultCode::Misaligned, a[4]));
            }
            check_range(mem, a[3], a[4].into(), 256 * 4)?;
            let mut counts = [0u32; 256];
            for_each_chunk(mem, a[0], a[1].into(), a[2].into(), |c| {
                for &b in c {
                    counts[usize::from(b)] += 1;
                }
            });
            for (i, &c) in counts.iter().enumerate().filter(|(_, &c)| c != 0) {
                mem.fetch_add_u32(a[3], u64::from(a[4]) + 4 * i as u64, c);
            }
            r[0] = a[2];
        }
        SlotOp::CountByte => {
            let byte = byte_arg(slot, 3)?;
            check_range(mem, a[0], a[1].into(), a[2].into())?;
            let mut n = 0u32;
            for_each_chunk(mem, a[0], a[1].into(), a[2].into(), |c| {
                n += c.iter().filter(|&&b| b == byte).count() as u32;
            });
            r[0] = n;
        }
        SlotOp::DfaScan => r = crate::dfa::scan(mem, a)?,
        SlotOp::Exec => {
            let prog = env
                .program(a[0])
                .ok_or(Fault::new(FaultCode::BadProgram, a[0]))?;
            let mut regs = [0u64; REGISTERS];
            for (reg, &arg) in regs[1..8].iter_mut().zip(&a[1..8]) {
                *reg = arg.into();
            }
            let (r0, steps) = run_program(mem, &prog, regs, env.step_budget())?;
            r[0] = r0 as u32;
            r[1] = (r0 >> 32) as u32;
            r[2] = u32::try_from(steps).unwrap_or(u32::MAX);
        }
        SlotOp::IoRead => return Ok(Step::WaitIo(crate::io::begin(env, a)?)),
    }
    Ok(Step::Done(r))
}

fn memcpy<M: Memory>(
    mem: &M,
    dst: u32,
    dst_off: u64,
    src: u32,
    src_off: u64,
    len: u64,
) -> Result<(), Fault> {
    check_range(mem, dst, dst_off, len)?;
    check_range(mem, src, src_off, len)?;
    let mut buf = [0u8; CHUNK];
    // Copy backwards when the destination overlaps the source from above, like memmove.
    let backward = dst == src && dst_off > src_off && dst_off < src_off + len;
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(CHUNK as u64);
        let at = if backward { len - done - n } else { done };
        mem.read(src, src_off + at, &mut buf[..n as usize]);
        mem.write(dst, dst_off + at, &buf[..n as usize]);
        done += n;
    }
    Ok(())
}

fn exec_packed<M: Memory>(mem: &M, slot: &Slot) -> Result<Results, Fault> {
    let a = &slot.args;
    let count = (a[0] & 0xff) as usize;
    if !(1..=3).contains(&count) {
        return Err(Fault::new(FaultCode::MalformedSlot, 0));
    }
    // Sub-op bytes and argument pairs past `count` must be zero.
    if count < 3 && (a[0] >> (8 * (count + 1))) != 0 {
        return Err(Fault::new(FaultCode::MalformedSlot, 0));
    }
    if let Some(i) = a[2 + 2 * count..].iter().position(|&w| w != 0) {
        return Err(Fault::new(
            FaultCode::MalformedSlot,
            (2 + 2 * count + i) as u32,
        ));
    }
    let buf = a[1];
    let mut r = [0u32; RESULT_WORDS];
    for i in 0..count {
        let sub = (a[0] >> (8 * (i + 1))) as u8;
        let (off, val) = (u64::from(a[2 + 2 * i]), a[3 + 2 * i]);
        let at = |mut f: Fault| {
            f.at = i as u32;
            f
        };
        match SlotOp::from_u16(sub.into()) {
            Some(SlotOp::Nop) => {}
            Some(SlotOp::LoadU32) => {
                check_word(mem, buf, off).map_err(at)?;
                r[i] = mem.load_u32(buf, off);
            }
            Some(SlotOp::StoreU32) => {
                check_word(mem, buf, off).map_err(at)?;
                mem.store_u32(buf, off, val);
            }
            Some(SlotOp::AtomicAdd) => {
                check_word(mem, buf, off).map_err(at)?;
                r[i] = mem.fetch_add_u32(buf, off, val);
            }
            _ => return Err(at(Fault::new(FaultCode::MalformedSlot, 0))),
        }
    }
    Ok(r)
}

/// Effective address of a load or store: handle register, offset register plus immediate.
/// Checks follow the slot ops' order: the handle first (`bad_handle`), then an effective
/// offset outside 0..2^32 (`out_of_bounds`; computed exactly, never wrapped); alignment and
/// the buffer's bounds are checked by the caller.
fn address<M: Memory>(
    mem: &M,
    regs: &[u64; REGISTERS],
    rh: u8,
    ro: u8,
    imm: i32,
) -> Result<(u32, u64), Fault> {
    let h = regs[usize::from(rh)];
    let handle = u32::try_from(h).map_err(|_| Fault::new(FaultCode::BadHandle, h as u32))?;
    buffer_size(mem, handle)?;
    let off = i128::from(regs[usize::from(ro)]) + i128::from(imm);
    match u32::try_from(off) {
        Ok(off) => Ok((handle, u64::from(off))),
        Err(_) => Err(Fault::new(FaultCode::OutOfBounds, off as u32)),
    }
}

/// Runs a validated program from instruction 0 with the given registers. Returns r0 and the
/// number of instructions executed (HALT included).
pub fn run_program<M: Memory>(
    mem: &M,
    prog: &Program,
    mut regs: [u64; REGISTERS],
    budget: u64,
) -> Result<(u64, u64), Fault> {
    let insns = prog.insns();
    let mut pc = 0usize;
    let mut steps = 0u64;
    loop {
        if steps >= budget {
            return Err(Fault {
                code: FaultCode::StepBudget,
                detail: budget as u32,
                at: pc as u32,
            });
        }
        steps += 1;
        // Validation guarantees pc is in range and every register index is below 16.
        let insn = insns[pc];
        let [a, b, c] = insn.regs.map(usize::from);
        let imm = insn.imm;
        let here = pc as u32;
        let fault_at = move |mut f: Fault| {
            f.at = here;
            f
        };
        pc += 1;
        match insn.op {
            Opcode::Halt => return Ok((regs[0], steps)),
            Opcode::Movi => regs[a] = i64::from(imm) as u64,
            Opcode::Movhi => regs[a] = (regs[a] & 0xFFFF_FFFF) | u64::from(imm as u32) << 32,
            Opcode::Mov => regs[a] = regs[b],
            Opcode::Add => regs[a] = regs[b].wrapping_add(regs[c]),
            Opcode::Sub => regs[a] = regs[b].wrapping_sub(regs[c]),
            Opcode::Mul => regs[a] = regs[b].wrapping_mul(regs[c]),
            Opcode::And => regs[a] = regs[b] & regs[c],
            Opcode::Or => regs[a] = regs[b] | regs[c],
            Opcode::Xor => regs[a] = regs[b] ^ regs[c],
            Opcode::Shl => regs[a] = regs[b] << (regs[c] & 63),
            Opcode::Shr => regs[a] = regs[b] >> (regs[c] & 63),
            Opcode::Sar => regs[a] = ((regs[b] as i64) >> (regs[c] & 63)) as u64,
            Opcode::Addi => regs[a] = regs[b].wrapping_add(i64::from(imm) as u64),
            Opcode::Andi => regs[a] = regs[b] & (i64::from(imm) as u64),
            Opcode::Shli => regs[a] = regs[b] << (imm & 63),
            Opcode::Shri => regs[a] = regs[b] >> (imm & 63),
            Opcode::Eq => regs[a] = u64::from(regs[b] == regs[c]),
            Opcode::Ne => regs[a] = u64::from(regs[b] != regs[c]),
            Opcode::Ltu => regs[a] = u64::from(regs[b] < regs[c]),
            Opcode::Lts => regs[a] = u64::from((regs[b] as i64) < (regs[c] as i64)),
            Opcode::Ld8 => {
                let (h, off) =
                    address(mem, &regs, insn.regs[1], insn.regs[2], imm).map_err(fault_at)?;
                check_range(mem, h, off, 1).map_err(fault_at)?;
                let mut byte = [0u8];
                mem.read(h, off, &mut byte);
                regs[a] = byte[0].into();
            }
            Opcode::Ld32 => {
                let (h, off) =
                    address(mem, &regs, insn.regs[1], insn.regs[2], imm).map_err(fault_at)?;
                check_word(mem, h, off).map_err(fault_at)?;
                regs[a] = mem.load_u32(h, off).into();
            }
            Opcode::St8 => {
                let (h, off) =
                    address(mem, &regs, insn.regs[1], insn.regs[2], imm).map_err(fault_at)?;
                check_range(mem, h, off, 1).map_err(fault_at)?;
                mem.write(h, off, &[regs[a] as u8]);
            }
            Opcode::St32 => {
                let (h, off) =
                    address(mem, &regs, insn.regs[1], insn.regs[2], imm).map_err(fault_at)?;
                check_word(mem, h, off).map_err(fault_at)?;
                mem.store_u32(h, off, regs[a] as u32);
            }
            Opcode::Jmp => pc = imm as usize,
            Opcode::Beqz => {
                if regs[a] == 0 {
                    pc = imm as usize;
                }
            }
            Opcode::Bnez => {
                if regs[a] != 0 {
                    pc = imm as usize;
                }
            }
            Opcode::Bltu => {
                if regs[a] < regs[b] {
                    pc = imm as usize;
                }
            }
        }
    }
}
