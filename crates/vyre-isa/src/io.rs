//! IO_READ: the slot half of the I/O queue.
//!
//! An IO_READ runs in two phases (PROTOCOL.md, "I/O queue (WAIT_IO)"):
//!
//! 1. [`begin`] checks the slot and returns the request; the worker appends it to the ring's
//!    request queue and leaves the slot in status WAIT_IO (not completed, not counted);
//! 2. when the host has read the bytes and pushed a resume entry, a worker calls [`resume`]
//!    with the entry's result word: the slot completes with the byte count, runs its
//!    continuation program as EXEC does, or faults `io`.
//!
//! Nothing here touches the ring or a file: the interpreter stays pure, and the worker and
//! the host's I/O thread (`vyre-runtime`) do the queueing.

use crate::fault::{Fault, FaultCode};
use crate::interp::{check_range, run_program, Env, Results};
use crate::program::REGISTERS;
use crate::slot::RESULT_WORDS;

/// Largest `len` an IO_READ may ask for (64 MiB); a larger one faults `malformed_slot` with
/// detail 3 (the index of the `len` argument word).
pub const MAX_READ_BYTES: u32 = 64 << 20;

/// Bit 31 of a resume entry's result word: the read failed, bits 0..31 hold the errno.
/// Otherwise the word is the number of bytes read (at most [`MAX_READ_BYTES`]).
pub const RESULT_ERROR: u32 = 0x8000_0000;

/// One IO_READ's request, as checked by [`begin`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoRead {
    /// Registered file id (1..=the number of registered files).
    pub file: u32,
    /// Byte offset in the file (`off_hi:off_lo`).
    pub offset: u64,
    /// Bytes asked for.
    pub len: u32,
    /// Destination buffer handle.
    pub buf: u32,
    /// Destination offset in the buffer.
    pub buf_off: u32,
    /// Continuation program id (0 = none).
    pub then: u32,
}

impl IoRead {
    /// The request an IO_READ slot's argument words describe (unchecked).
    pub fn from_args(a: &[u32; 8]) -> IoRead {
        IoRead {
            file: a[0],
            offset: u64::from(a[1]) | u64::from(a[2]) << 32,
            len: a[3],
            buf: a[4],
            buf_off: a[5],
            then: a[6],
        }
    }

    /// The result word of a successful read of `n` bytes.
    pub fn ok_result(n: u32) -> u32 {
        debug_assert!(n & RESULT_ERROR == 0);
        n
    }

    /// The result word of a failed read with OS error `errno` (0 if none is known).
    pub fn error_result(errno: i32) -> u32 {
        RESULT_ERROR | (errno as u32 & !RESULT_ERROR)
    }
}

/// Phase 1: checks an IO_READ slot's argument words against `env` (the caller has already
/// run [`crate::Slot::check`]). Order: `len` above [`MAX_READ_BYTES`] (`malformed_slot`,
/// detail 3), the buffer (`bad_handle`), the range (`out_of_bounds`, detail buf_off), the
/// file id against [`Env::io_files`] (`bad_file`, detail the id), the continuation
/// (`bad_program`, detail its id).
pub fn begin<E: Env>(env: &E, a: &[u32; 8]) -> Result<IoRead, Fault> {
    let req = IoRead::from_args(a);
    if req.len > MAX_READ_BYTES {
        return Err(Fault::new(FaultCode::MalformedSlot, 3));
    }
    check_range(env.mem(), req.buf, req.buf_off.into(), req.len.into())?;
    if req.file == 0 || req.file > env.io_files() {
        return Err(Fault::new(FaultCode::BadFile, req.file));
    }
    if req.then != 0 && env.program(req.then).is_none() {
        return Err(Fault::new(FaultCode::BadProgram, req.then));
    }
    Ok(req)
}

/// Phase 2: completes an IO_READ slot (argument words `a`) once the host's read finished
/// with `result` (bytes read, or [`RESULT_ERROR`] | errno).
pub fn resume<E: Env>(env: &E, a: &[u32; 8], result: u32) -> Result<Results, Fault> {
    let req = IoRead::from_args(a);
    if result & RESULT_ERROR != 0 {
        return Err(Fault::new(FaultCode::Io, result & !RESULT_ERROR));
    }
    let mut r = [0u32; RESULT_WORDS];
    if req.then == 0 {
        r[0] = result;
        return Ok(r);
    }
    let prog = env
        .program(req.then)
        .ok_or(Fault::new(FaultCode::BadProgram, req.then))?;
    let mut regs = [0u64; REGISTERS];
    regs[1] = result.into();
    regs[2] = req.buf.into();
    regs[3] = req.buf_off.into();
    regs[4] = req.file.into();
    regs[5] = a[1].into();
    regs[6] = a[2].into();
    let (r0, steps) = run_program(env.mem(), &prog, regs, env.step_budget())?;
    r[0] = r0 as u32;
    r[1] = (r0 >> 32) as u32;
    r[2] = u32::try_from(steps).unwrap_or(u32::MAX);
    Ok(r)
}
