//! The one table of VIR0.
//!
//! Two lists live here and nowhere else:
//!
//! * [`for_each_slot_op!`]: the opcodes a ring slot can carry, with the meaning of each of
//!   the slot's eight argument words and four result words;
//! * [`for_each_insn!`]: the instructions of the EXEC register machine.
//!
//! Every consumer (the enums in [`crate::slot`] and [`crate::program`], the assembler, the
//! disassembler, the validator, the interpreter, the constants generated for GPU kernels)
//! expands one of these macros, so a new opcode is added in exactly one place.
//!
//! Operand kinds of slot ops: `Buffer` (a registered buffer handle, relocated by the
//! linker), `Program` (a loaded program id, relocated by the linker), `Value` (any u32).
//! Argument words that an op does not list must be zero; a slot that violates this faults
//! with `MALFORMED_SLOT`, so the words can gain meaning later without ambiguity.
//!
//! Loads and stores (`ld8`, `ld32`, `st8`, `st32`) address buffer `rh` at offset `ro + imm`,
//! computed exactly (the 64-bit register plus the sign-extended immediate, never wrapped).
//! Checks run in this order: the handle (`bad_handle`), an offset outside 0..2^32
//! (`out_of_bounds`), alignment for word accesses (`misaligned`), the buffer's bounds
//! (`out_of_bounds`). Slot ops check handle, alignment, bounds in the same order.
//!
//! Operand kinds of instructions: `Reg` (r0..r15, packed into the a, b, c bytes in the
//! order listed), `Imm` (the signed 32-bit immediate), `Target` (an instruction index,
//! stored in the immediate). Register bytes and immediates an instruction does not use must
//! be zero.

/// Calls `$m!` with every slot opcode: `Name = number, "MNEMONIC", [operand: Kind, ...],
/// "results"` preceded by its doc comment.
#[macro_export]
macro_rules! for_each_slot_op {
    ($m:ident) => {
        $m! {
            /// Does nothing. Completes with zero results.
            Nop = 0x00, "NOP", [], "-";
            /// Asks every worker to stop after the slots already claimed; results zero.
            /// The host still drains or reports every published slot.
            Shutdown = 0x01, "SHUTDOWN", [], "-";
            /// Increments the control block's epoch word and makes this worker's earlier
            /// memory effects visible (a full fence). Not a barrier across slots.
            Fence = 0x02, "FENCE", [], "r0 = the new epoch";
            /// Appends a record (slot position, tenant, opcode word, w0..w3) to the
            /// bounded debug log. A full log drops the record and counts it.
            DebugLog = 0x03, "DEBUG_LOG", [w0: Value, w1: Value, w2: Value, w3: Value],
                "r0 = 1 if written, 0 if dropped (counted in debug_dropped)";
            /// Up to three small memory ops on one buffer in one slot. `ops` holds the
            /// count in bits 0..8 (1..=3) and the sub-opcodes in bits 8..16, 16..24, 24..32;
            /// sub-op i uses (off_i, val_i). Allowed sub-ops: NOP, LOAD_U32, STORE_U32,
            /// ATOMIC_ADD. A faulting sub-op stops the slot (earlier sub-ops stay done).
            Packed = 0x04, "PACKED",
                [ops: Value, buf: Buffer, off1: Value, val1: Value, off2: Value, val2: Value,
                 off3: Value, val3: Value],
                "r_i = sub-op i's result (loaded or old value; 0 for NOP and STORE_U32)";
            /// Stores a little-endian u32 at a 4-byte aligned offset.
            StoreU32 = 0x10, "STORE_U32", [buf: Buffer, off: Value, value: Value], "-";
            /// Loads a little-endian u32 from a 4-byte aligned offset.
            LoadU32 = 0x11, "LOAD_U32", [buf: Buffer, off: Value], "r0 = the value";
            /// Atomically adds (wrapping) to a u32 at a 4-byte aligned offset.
            AtomicAdd = 0x12, "ATOMIC_ADD", [buf: Buffer, off: Value, value: Value],
                "r0 = the old value";
            /// Atomically replaces a u32 equal to `expected` with `new`.
            Cas = 0x13, "CAS", [buf: Buffer, off: Value, expected: Value, new: Value],
                "r0 = the old value, r1 = 1 if swapped else 0";
            /// Copies `len` bytes between buffers (or within one; overlapping ranges copy as
            /// if through a temporary).
            Memcpy = 0x14, "MEMCPY",
                [dst: Buffer, dst_off: Value, src: Buffer, src_off: Value, len: Value], "-";
            /// Sets `len` bytes to the low byte of `value`; the upper 24 bits must be zero.
            Fill = 0x15, "FILL", [buf: Buffer, off: Value, len: Value, value: Value], "-";
            /// xxHash64 of a byte range with a 32-bit seed (zero-extended).
            Hash64 = 0x20, "HASH64", [buf: Buffer, off: Value, len: Value, seed: Value],
                "r0 = low 32 bits, r1 = high 32 bits";
            /// Adds the byte histogram of a range into 256 little-endian u32 counters at a
            /// 4-byte aligned offset of `dst` (atomically, so slots can share counters).
            ByteHistogram = 0x21, "BYTE_HISTOGRAM",
                [buf: Buffer, off: Value, len: Value, dst: Buffer, dst_off: Value],
                "r0 = bytes counted";
            /// Counts the bytes of a range equal to `byte` (upper 24 bits must be zero).
            CountByte = 0x22, "COUNT_BYTE", [buf: Buffer, off: Value, len: Value, byte: Value],
                "r0 = the count";
            /// Runs a byte DFA (a `VDFA` table in buffer `table`, format in PROTOCOL.md
            /// and `crate::dfa`; or a `VDFS` set of tables, run one after another into the
            /// same hit region, each member's pattern ids plus its base, protocol v3) over
            /// `len` bytes of `data` at `off`, from the start state
            /// `start` (bit 31 set: a look-behind code in bits 0..9, 0..=255 = the byte
            /// before the range, 256 = start of text; clear: a state row offset). Consuming
            /// byte i into a match state reports every pattern of that state with end i;
            /// `report` bits 0..31 give the first end reported, bit 31 asks for the
            /// end-of-input transition after the last byte (end = len). Hits go to `hits`
            /// at the 4-aligned `hits_off`: word 0 is the capacity K (host-written), word 1
            /// the state row after the first min(report_from, len) bytes (written when the
            /// scan completes: where a window's own bytes start), then K (end, pattern) word
            /// pairs, in scan order.
            DfaScan = 0x23, "DFA_SCAN",
                [table: Buffer, data: Buffer, off: Value, len: Value, report: Value,
                 start: Value, hits: Buffer, hits_off: Value],
                "r0 = matches found, r1 = state row after the last byte, r2 = matches stored (min(r0, K))";
            /// Reads `len` bytes (at most `crate::io::MAX_READ_BYTES`) of registered file
            /// `file` (ids from 1) at the 64-bit offset `off_hi:off_lo` into `buf` at
            /// `buf_off`, through the host's I/O queue (PROTOCOL.md, "I/O queue"). The slot
            /// waits with status WAIT_IO while the host reads; a read past the end of the
            /// file is short, not a fault. Checks, in order: `len` (`malformed_slot`, detail
            /// 3), the buffer (`bad_handle`), the range (`out_of_bounds`), the file
            /// (`bad_file`), the continuation (`bad_program`). An I/O error faults `io` with
            /// the OS errno. With `then` = 0 the slot completes with the byte count; else
            /// program `then` runs as EXEC does, with r1 = bytes read, r2 = buf, r3 =
            /// buf_off, r4 = file, r5 = off_lo, r6 = off_hi and every other register zero.
            IoRead = 0x24, "IO_READ",
                [file: Value, off_lo: Value, off_hi: Value, len: Value, buf: Buffer,
                 buf_off: Value, then: Program],
                "then = 0: r0 = bytes read; else as EXEC (r0 low, r1 high, r2 = steps)";
            /// Runs a loaded program with r1..r7 set from the arguments and every other
            /// register zero, under the runtime's per-slot step budget.
            Exec = 0x30, "EXEC",
                [prog: Program, r1: Value, r2: Value, r3: Value, r4: Value, r5: Value,
                 r6: Value, r7: Value],
                "r0 = low 32 bits of register r0, r1 = its high 32 bits, r2 = steps used";
        }
    };
}

/// Calls `$m!` with every EXEC instruction: `Name = number, "mnemonic", [operand: Kind,
/// ...]` preceded by its doc comment. Arithmetic is on 64-bit registers and wraps.
#[macro_export]
macro_rules! for_each_insn {
    ($m:ident) => {
        $m! {
            /// Stops the program; register r0 is its result.
            Halt = 0x00, "halt", [];
            /// rd = imm, sign-extended to 64 bits.
            Movi = 0x01, "movi", [rd: Reg, imm: Imm];
            /// Replaces the high 32 bits of rd with imm.
            Movhi = 0x02, "movhi", [rd: Reg, imm: Imm];
            /// rd = ra.
            Mov = 0x03, "mov", [rd: Reg, ra: Reg];
            /// rd = ra + rb.
            Add = 0x10, "add", [rd: Reg, ra: Reg, rb: Reg];
            /// rd = ra - rb.
            Sub = 0x11, "sub", [rd: Reg, ra: Reg, rb: Reg];
            /// rd = ra * rb (low 64 bits).
            Mul = 0x12, "mul", [rd: Reg, ra: Reg, rb: Reg];
            /// rd = ra & rb.
            And = 0x13, "and", [rd: Reg, ra: Reg, rb: Reg];
            /// rd = ra | rb.
            Or = 0x14, "or", [rd: Reg, ra: Reg, rb: Reg];
            /// rd = ra ^ rb.
            Xor = 0x15, "xor", [rd: Reg, ra: Reg, rb: Reg];
            /// rd = ra << (rb & 63).
            Shl = 0x16, "shl", [rd: Reg, ra: Reg, rb: Reg];
            /// rd = ra >> (rb & 63), logical.
            Shr = 0x17, "shr", [rd: Reg, ra: Reg, rb: Reg];
            /// rd = ra >> (rb & 63), arithmetic.
            Sar = 0x18, "sar", [rd: Reg, ra: Reg, rb: Reg];
            /// rd = ra + imm (imm sign-extended).
            Addi = 0x20, "addi", [rd: Reg, ra: Reg, imm: Imm];
            /// rd = ra & imm (imm sign-extended).
            Andi = 0x21, "andi", [rd: Reg, ra: Reg, imm: Imm];
            /// rd = ra << (imm & 63).
            Shli = 0x22, "shli", [rd: Reg, ra: Reg, imm: Imm];
            /// rd = ra >> (imm & 63), logical.
            Shri = 0x23, "shri", [rd: Reg, ra: Reg, imm: Imm];
            /// rd = 1 if ra == rb else 0.
            Eq = 0x28, "eq", [rd: Reg, ra: Reg, rb: Reg];
            /// rd = 1 if ra != rb else 0.
            Ne = 0x29, "ne", [rd: Reg, ra: Reg, rb: Reg];
            /// rd = 1 if ra < rb (unsigned) else 0.
            Ltu = 0x2a, "ltu", [rd: Reg, ra: Reg, rb: Reg];
            /// rd = 1 if ra < rb (signed) else 0.
            Lts = 0x2b, "lts", [rd: Reg, ra: Reg, rb: Reg];
            /// rd = the byte at buffer rh, offset ro + imm (zero-extended).
            Ld8 = 0x30, "ld8", [rd: Reg, rh: Reg, ro: Reg, imm: Imm];
            /// rd = the little-endian u32 at buffer rh, offset ro + imm (4-byte aligned).
            Ld32 = 0x31, "ld32", [rd: Reg, rh: Reg, ro: Reg, imm: Imm];
            /// Stores the low byte of rs at buffer rh, offset ro + imm.
            St8 = 0x32, "st8", [rs: Reg, rh: Reg, ro: Reg, imm: Imm];
            /// Stores the low 32 bits of rs at buffer rh, offset ro + imm (4-byte aligned).
            St32 = 0x33, "st32", [rs: Reg, rh: Reg, ro: Reg, imm: Imm];
            /// Jumps to the instruction index `target`.
            Jmp = 0x40, "jmp", [target: Target];
            /// Jumps to `target` if ra == 0.
            Beqz = 0x41, "beqz", [ra: Reg, target: Target];
            /// Jumps to `target` if ra != 0.
            Bnez = 0x42, "bnez", [ra: Reg, target: Target];
            /// Jumps to `target` if ra < rb (unsigned).
            Bltu = 0x43, "bltu", [ra: Reg, rb: Reg, target: Target];
        }
    };
}
