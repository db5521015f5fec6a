//! Malformed input at every entry point: bytecode (exact `DecodeError` variant, byte
//! position and message), `.vasm` source (line number and what is wrong) and slots
//! (`Slot::check` fault code and detail).

use vyre_isa::program::MAX_PROGRAM_INSNS;
use vyre_isa::{assemble, AsmError, DecodeError, FaultCode, Insn, Opcode, Program, Slot, SlotOp};

// ---------------------------------------------------------------------------------------
// Bytecode
// ---------------------------------------------------------------------------------------

/// Bytes of one instruction.
fn insn(op: u8, a: u8, b: u8, c: u8, imm: i32) -> [u8; 8] {
    let i = imm.to_le_bytes();
    [op, a, b, c, i[0], i[1], i[2], i[3]]
}

const HALT: [u8; 8] = [0; 8];

fn program(insns: &[[u8; 8]]) -> Vec<u8> {
    insns.concat()
}

/// Decodes bytes that must fail; checks the position and that the message names it.
fn decode_err(bytes: &[u8], position: usize) -> DecodeError {
    let e = Program::decode(bytes).expect_err("must be rejected");
    assert_eq!(e.position(), position, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("at byte {position}")),
        "message `{msg}` does not say `at byte {position}`"
    );
    e
}

#[test]
fn unknown_opcode_at_byte_16() {
    let bytes = program(&[insn(0x01, 0, 0, 0, 5), HALT, insn(0x99, 0, 0, 0, 0), HALT]);
    let e = decode_err(&bytes, 16);
    assert_eq!(
        e,
        DecodeError::UnknownOpcode {
            position: 16,
            opcode: 0x99
        }
    );
    assert_eq!(e.to_string(), "unknown instruction opcode 0x99 at byte 16");
    // Gaps in the opcode space are unknown too.
    for op in [0x04u8, 0x0f, 0x19, 0x24, 0x2c, 0x34, 0x44, 0xff] {
        let e = decode_err(&program(&[insn(op, 0, 0, 0, 0), HALT]), 0);
        assert_eq!(
            e,
            DecodeError::UnknownOpcode {
                position: 0,
                opcode: op
            }
        );
    }
}

#[test]
fn register_r16_at_byte_9() {
    let bytes = program(&[HALT, insn(0x01, 16, 0, 0, 0), HALT]);
    let e = decode_err(&bytes, 9);
    assert_eq!(
        e,
        DecodeError::BadRegister {
            position: 9,
            reg: 16,
            mnemonic: "movi"
        }
    );
    assert!(e.to_string().contains("r16"), "{e}");
    assert!(e.to_string().contains("movi"), "{e}");
    // Each register field reports its own byte.
    let e = decode_err(&program(&[insn(0x10, 1, 2, 200, 0), HALT]), 3);
    assert!(matches!(
        e,
        DecodeError::BadRegister {
            reg: 200,
            mnemonic: "add",
            ..
        }
    ));
    let e = decode_err(&program(&[insn(0x33, 0, 0xff, 0, 0), HALT]), 2);
    assert!(matches!(
        e,
        DecodeError::BadRegister {
            reg: 0xff,
            mnemonic: "st32",
            ..
        }
    ));
    let e = decode_err(&program(&[HALT, insn(0x43, 3, 16, 0, 0)]), 10);
    assert!(matches!(
        e,
        DecodeError::BadRegister {
            reg: 16,
            mnemonic: "bltu",
            ..
        }
    ));
    // r15 is fine.
    Program::decode(&program(&[insn(0x10, 15, 15, 15, 0), HALT])).expect("r15 is valid");
}

#[test]
fn truncated_program() {
    let mut bytes = program(&[insn(0x01, 0, 0, 0, 1), HALT]);
    bytes.truncate(13);
    let e = decode_err(&bytes, 8);
    assert_eq!(
        e,
        DecodeError::Truncated {
            position: 8,
            len: 13
        }
    );
    assert!(e.to_string().contains("13 bytes"), "{e}");
    // Length is checked before contents: garbage that is also short is "truncated".
    let e = decode_err(&[0xff; 7], 0);
    assert_eq!(
        e,
        DecodeError::Truncated {
            position: 0,
            len: 7
        }
    );
    decode_err(&[0; 17], 16);
}

#[test]
fn empty_program() {
    let e = decode_err(&[], 0);
    assert_eq!(e, DecodeError::Empty);
    assert_eq!(Program::new(Vec::new()), Err(DecodeError::Empty));
}

#[test]
fn too_long_program() {
    let bytes = vec![0u8; (MAX_PROGRAM_INSNS + 1) * 8];
    let e = decode_err(&bytes, MAX_PROGRAM_INSNS * 8);
    assert_eq!(
        e,
        DecodeError::TooLong {
            position: MAX_PROGRAM_INSNS * 8,
            insns: MAX_PROGRAM_INSNS + 1,
            limit: MAX_PROGRAM_INSNS
        }
    );
    assert!(
        Program::decode(&bytes[8..]).is_ok(),
        "exactly the limit is fine"
    );
}

#[test]
fn non_zero_unused_fields() {
    let unused = |bytes: Vec<u8>, position: usize, mnemonic: &str| {
        let e = decode_err(&bytes, position);
        match e {
            DecodeError::NonZeroUnused { mnemonic: m, .. } => assert_eq!(m, mnemonic),
            other => panic!("expected NonZeroUnused, got {other:?}"),
        }
        assert!(e.to_string().contains("unused fields must be zero"), "{e}");
    };
    // Unused register bytes.
    unused(program(&[insn(0x00, 1, 0, 0, 0)]), 1, "halt");
    unused(program(&[insn(0x00, 0, 0, 1, 0)]), 3, "halt");
    unused(program(&[insn(0x01, 1, 2, 0, 0), HALT]), 2, "movi");
    unused(program(&[HALT, insn(0x03, 1, 2, 3, 0), HALT]), 11, "mov");
    unused(program(&[insn(0x40, 0, 0, 1, 0)]), 3, "jmp");
    unused(program(&[insn(0x41, 0, 1, 0, 0), HALT]), 2, "beqz");
    // Unused immediate (any of its four bytes): reported at the immediate's first byte.
    unused(program(&[insn(0x00, 0, 0, 0, 1)]), 4, "halt");
    unused(program(&[insn(0x10, 0, 0, 0, i32::MIN), HALT]), 4, "add");
    unused(program(&[HALT, insn(0x2b, 1, 2, 3, 0x100)]), 12, "lts");
    let e = Program::decode(&program(&[insn(0x03, 1, 2, 0, 7), HALT])).expect_err("rejected");
    assert!(
        e.to_string()
            .contains("mov uses 2 register field(s) and no immediate"),
        "{e}"
    );
    let e = Program::decode(&program(&[insn(0x20, 1, 2, 3, 0), HALT])).expect_err("rejected");
    assert!(
        e.to_string()
            .contains("addi uses 2 register field(s) and the immediate"),
        "{e}"
    );
    // The first bad field of an instruction wins: register bytes before the immediate.
    unused(program(&[insn(0x00, 0, 5, 0, 9)]), 2, "halt");
}

#[test]
fn jump_target_out_of_range() {
    let bytes = program(&[HALT, insn(0x40, 0, 0, 0, 2)]);
    let e = decode_err(&bytes, 12);
    assert_eq!(
        e,
        DecodeError::BadTarget {
            position: 12,
            target: 2,
            mnemonic: "jmp",
            insns: 2
        }
    );
    assert!(e.to_string().contains("jump target 2 out of range"), "{e}");
    let e = decode_err(&program(&[insn(0x42, 3, 0, 0, -1), HALT]), 4);
    assert!(matches!(
        e,
        DecodeError::BadTarget {
            target: -1,
            mnemonic: "bnez",
            ..
        }
    ));
    let e = decode_err(&program(&[insn(0x43, 1, 2, 0, i32::MIN), HALT]), 4);
    assert!(matches!(
        e,
        DecodeError::BadTarget {
            target: i32::MIN,
            ..
        }
    ));
    // The last index is in range; a jump to itself is a valid (budget-bounded) loop.
    Program::decode(&program(&[HALT, insn(0x40, 0, 0, 0, 1)])).expect("valid");
    // Every instruction's fields are checked before any target.
    let e = decode_err(
        &program(&[insn(0x40, 0, 0, 0, 9), insn(0x77, 0, 0, 0, 0)]),
        8,
    );
    assert!(matches!(e, DecodeError::UnknownOpcode { opcode: 0x77, .. }));
}

#[test]
fn falls_off_end() {
    let bytes = program(&[HALT, insn(0x01, 0, 0, 0, 1)]);
    let e = decode_err(&bytes, 8);
    assert_eq!(
        e,
        DecodeError::FallsOffEnd {
            position: 8,
            mnemonic: "movi"
        }
    );
    assert!(e.to_string().contains("`movi`"), "{e}");
    // Conditional branches can fall through.
    let e = decode_err(&program(&[insn(0x41, 0, 0, 0, 0)]), 0);
    assert!(matches!(
        e,
        DecodeError::FallsOffEnd {
            mnemonic: "beqz",
            ..
        }
    ));
    // Targets are checked before the end.
    let e = decode_err(&program(&[insn(0x41, 0, 0, 0, 5)]), 4);
    assert!(matches!(e, DecodeError::BadTarget { .. }));
}

#[test]
fn program_new_checks_hand_built_insns() {
    let i = |op, regs, imm| Insn { op, regs, imm };
    let halt = i(Opcode::Halt, [0; 3], 0);
    assert_eq!(
        Program::new(vec![halt, i(Opcode::Mov, [1, 16, 0], 0), halt]),
        Err(DecodeError::BadRegister {
            position: 10,
            reg: 16,
            mnemonic: "mov"
        })
    );
    assert!(matches!(
        Program::new(vec![i(Opcode::Halt, [0; 3], 3)]),
        Err(DecodeError::NonZeroUnused { position: 4, .. })
    ));
    assert!(matches!(
        Program::new(vec![halt, i(Opcode::Jmp, [0; 3], 2)]),
        Err(DecodeError::BadTarget {
            position: 12,
            target: 2,
            ..
        })
    ));
    assert!(matches!(
        Program::new(vec![i(Opcode::Addi, [1, 1, 0], 1)]),
        Err(DecodeError::FallsOffEnd {
            position: 0,
            mnemonic: "addi"
        })
    ));
}

// ---------------------------------------------------------------------------------------
// Assembler
// ---------------------------------------------------------------------------------------

/// Assembles source that must fail on `line` with a message containing every `needle`.
fn asm_err(src: &str, line: usize, needles: &[&str]) -> AsmError {
    let e = assemble(src).expect_err("must be rejected");
    assert_eq!(e.line, line, "{e}\n--- source ---\n{src}");
    for n in needles {
        assert!(e.message.contains(n), "`{}` lacks `{n}`", e.message);
    }
    assert_eq!(e.to_string(), format!("line {line}: {}", e.message));
    e
}

#[test]
fn unknown_instruction() {
    asm_err(
        ".buffer b 4\n.program p\n    movi r0, 1\n    frob r1, r2\n    halt\n.end\n",
        4,
        &["unknown instruction `frob`"],
    );
    // On a label line too.
    asm_err(
        ".program p\nhere: nope\n    halt\n.end\n",
        2,
        &["unknown instruction `nope`"],
    );
}

#[test]
fn unknown_slot_opcode() {
    asm_err(
        ".buffer b 4\n; comment\n.slot FROB buf=b\n",
        3,
        &["unknown slot opcode `FROB`"],
    );
    asm_err("\n.slot\n", 2, &["usage: .slot"]);
}

#[test]
fn wrong_operand_count() {
    asm_err(
        ".program p\n    add r1, r2\n    halt\n.end\n",
        2,
        &["`add` takes 3 operand(s) (rd, ra, rb), found 2"],
    );
    asm_err(
        ".program p\n    halt r0\n.end\n",
        2,
        &["`halt` takes 0 operand(s)", "found 1"],
    );
    asm_err(
        ".program p\n    movi r0, 1, 2\n    halt\n.end\n",
        2,
        &["`movi` takes 2 operand(s) (rd, imm), found 3"],
    );
}

#[test]
fn bad_operands() {
    asm_err(
        ".program p\n    movi r16, 1\n    halt\n.end\n",
        2,
        &["`r16` is not a register (r0..r15)"],
    );
    asm_err(
        ".program p\n    mov r1, x2\n    halt\n.end\n",
        2,
        &["`x2` is not a register"],
    );
    asm_err(
        ".program p\n    movi r1, 0x100000000\n    halt\n.end\n",
        2,
        &["imm", "`0x100000000` is not a 32-bit number"],
    );
    asm_err(
        ".program p\n    addi r1, r1, -2147483649\n    halt\n.end\n",
        2,
        &["is not a 32-bit number"],
    );
}

#[test]
fn undefined_label() {
    asm_err(
        ".program p\n    movi r0, 0\n    jmp nowhere\n    halt\n.end\n",
        3,
        &["undefined label `nowhere`"],
    );
    // Labels are per program.
    asm_err(
        ".program a\nx:\n    halt\n.end\n.program b\n    jmp x\n.end\n",
        6,
        &["undefined label `x`"],
    );
}

#[test]
fn unknown_buffer_or_program() {
    asm_err(
        ".buffer data 8\n.slot LOAD_U32 buf=dta off=0\n",
        2,
        &["unknown buffer `dta`"],
    );
    asm_err(
        ".program p\n    halt\n.end\n.slot EXEC prog=p r1=@nope\n",
        4,
        &["unknown buffer `@nope`"],
    );
    asm_err(
        ".buffer b 4\n.slot EXEC prog=b\n",
        2,
        &["unknown program `b`"],
    );
    // Names must be declared before use.
    asm_err(
        ".slot FILL buf=late off=0 len=1 value=0\n.buffer late 4\n",
        1,
        &["unknown buffer `late`"],
    );
}

#[test]
fn bad_slot_operands() {
    asm_err(
        ".buffer b 4\n.slot LOAD_U32 buf=b len=4\n",
        2,
        &["LOAD_U32 has no operand `len`", "buf, off"],
    );
    asm_err(
        ".slot NOP 5\n",
        1,
        &["`5`: slot operands are written name=value"],
    );
    asm_err(
        ".slot NOP priority=256\n",
        1,
        &["priority must fit in 8 bits"],
    );
    asm_err(
        ".slot NOP tenant=0x10000\n",
        1,
        &["tenant must fit in 16 bits"],
    );
    asm_err(".slot NOP flags=300\n", 1, &["flags must fit in 8 bits"]);
    asm_err(
        ".slot STORE_U32 buf=1 off=0 value=9999999999\n",
        1,
        &["value", "not a 32-bit number"],
    );
    asm_err(".rawslot 1 2 3\n", 1, &["usage: .rawslot", "ten words"]);
    asm_err(
        ".rawslot 0 0x10000 0 0 0 0 0 0 0 0\n",
        1,
        &["upper half of the tenant word is reserved"],
    );
}

#[test]
fn unterminated_string() {
    asm_err(
        ".buffer a 4\n.buffer b 8 ascii \"abc\n",
        2,
        &["unterminated string"],
    );
    asm_err(".buffer b 8 ascii \"abc\\\n", 1, &["unterminated string"]);
}

#[test]
fn unclosed_program() {
    asm_err(
        ".buffer a 4\n.program p\n    halt\n",
        2,
        &["program `p` is never closed: add `.end`"],
    );
    asm_err(
        ".program p\n    halt\n.program q\n",
        3,
        &["`.program` inside program `p`: close it with `.end` first"],
    );
}

#[test]
fn duplicate_names() {
    asm_err(
        ".buffer x 4\n.buffer y 4\n.buffer x 8\n",
        3,
        &["`x` is declared twice"],
    );
    asm_err(
        ".program p\n    halt\n.end\n.program p\n    halt\n.end\n",
        4,
        &["`p` is declared twice"],
    );
    asm_err(
        ".program p\n    halt\n.end\n.bytecode p hex \"0000000000000000\"\n",
        4,
        &["`p` is declared twice"],
    );
    asm_err(
        ".bytecode p hex \"0000000000000000\"\n.program p\n    halt\n.end\n",
        2,
        &["`p` is declared twice"],
    );
    asm_err(
        ".program p\nl:\n    movi r0, 1\nl:  halt\n.end\n",
        4,
        &["label `l` defined twice in program `p`"],
    );
}

#[test]
fn invalid_program_reported_at_its_declaration() {
    asm_err(
        "\n\n.program p\n    movi r0, 1\n.end\n",
        3,
        &["program `p`", "falls off its end at byte 0", "`movi`"],
    );
    asm_err(
        ".program p\n    halt\n    jmp 7\n.end\n",
        1,
        &["program `p`", "jump target 7 out of range at byte 12"],
    );
    asm_err(".program p\n.end\n", 1, &["program `p`", "empty program"]);
}

#[test]
fn bad_buffers_and_directives() {
    asm_err(
        ".buffer b 4 ascii \"hello\"\n",
        1,
        &["buffer `b`: 5 initial bytes do not fit in 4"],
    );
    asm_err(".buffer b\n", 1, &["usage: .buffer"]);
    asm_err(".buffer b 4 hex \"abc\"\n", 1, &["odd number of digits"]);
    asm_err(".buffer b 4 hex \"zz\"\n", 1, &["bad hex digits `zz`"]);
    asm_err(
        ".buffer b 4 base64 \"zz\"\n",
        1,
        &["initial contents must be"],
    );
    asm_err(".buffer b -1x\n", 1, &["buffer size", "`-1x`"]);
    asm_err(".bytecode p raw \"00\"\n", 1, &["usage: .bytecode"]);
    asm_err("halt\n", 1, &["unknown directive `halt`"]);
    asm_err(".end\n", 1, &["unknown directive `.end`"]);
}

/// Errors come from the first bad line; comments and blank lines still count as lines.
#[test]
fn line_numbers_count_every_line() {
    let src = "; header\n\n# another comment\n.buffer b 4   ; trailing comment\n\n.slot NOPE\n.slot ALSO_NOPE\n";
    asm_err(src, 6, &["unknown slot opcode `NOPE`"]);
    let src = "\r\n.buffer b 4\r\n.slot NOPE\r\n";
    asm_err(src, 3, &["`NOPE`"]);
}

// ---------------------------------------------------------------------------------------
// Slot::check
// ---------------------------------------------------------------------------------------

#[test]
fn slot_check_unknown_opcode() {
    for op in [0x05u16, 0x0f, 0x16, 0x25, 0x31, 0x00ff, 0x0100, 0xffff] {
        let s = Slot {
            op,
            ..Slot::default()
        };
        assert_eq!(
            s.check(0),
            Err((FaultCode::UnknownOpcode, u32::from(op))),
            "{op:#x}"
        );
        // Before any other check.
        let bad = Slot {
            op,
            flags: 1,
            priority: 200,
            args: [1; 8],
            ..Slot::default()
        };
        assert_eq!(bad.check(7), Err((FaultCode::UnknownOpcode, u32::from(op))));
    }
}

#[test]
fn slot_check_flags_priority_reserved() {
    let base = Slot::new(SlotOp::LoadU32, &[1, 4]);
    assert_eq!(base.check(0), Ok(SlotOp::LoadU32));
    for flags in [1u8, 0x80, 0xff] {
        let s = Slot { flags, ..base };
        assert_eq!(s.check(0), Err((FaultCode::MalformedSlot, 0)));
    }
    for priority in 0..=7u8 {
        assert_eq!(base.with_priority(priority).check(0), Ok(SlotOp::LoadU32));
    }
    for priority in [8u8, 9, 0x80, 0xff] {
        assert_eq!(
            base.with_priority(priority).check(0),
            Err((FaultCode::MalformedSlot, 0))
        );
    }
    for reserved in [1u32, 0x8000, 0xffff] {
        assert_eq!(base.check(reserved), Err((FaultCode::MalformedSlot, 0)));
    }
    // Any tenant is allowed by check.
    assert_eq!(base.with_tenant(0xffff).check(0), Ok(SlotOp::LoadU32));
    // Flags/priority are reported (detail 0) before an unused argument word.
    let mut s = base.with_priority(8);
    s.args[6] = 1;
    assert_eq!(s.check(0), Err((FaultCode::MalformedSlot, 0)));
}

#[test]
fn slot_check_unused_argument_words() {
    for &op in SlotOp::ALL {
        let used = op.args().len();
        let mut full = Slot::new(op, &[]);
        for a in &mut full.args[..used] {
            *a = u32::MAX;
        }
        assert_eq!(full.check(0), Ok(op), "{op}");
        for i in used..8 {
            let mut s = full;
            s.args[i] = 1;
            assert_eq!(
                s.check(0),
                Err((FaultCode::MalformedSlot, i as u32)),
                "{op} word {i}"
            );
            // The first offending word is named.
            s.args[7] = 5;
            assert_eq!(s.check(0), Err((FaultCode::MalformedSlot, i as u32)));
        }
    }
    // Spot checks against the table: LOAD_U32 uses two words, MEMCPY five, EXEC all eight.
    assert_eq!(
        Slot::new(SlotOp::LoadU32, &[1, 0, 1]).check(0),
        Err((FaultCode::MalformedSlot, 2))
    );
    assert_eq!(
        Slot::new(SlotOp::Memcpy, &[1, 0, 1, 0, 4, 9]).check(0),
        Err((FaultCode::MalformedSlot, 5))
    );
    assert_eq!(
        Slot::new(SlotOp::Exec, &[u32::MAX; 8]).check(0),
        Ok(SlotOp::Exec)
    );
    assert_eq!(
        Slot::new(SlotOp::Nop, &[0, 0, 0, 0, 0, 0, 0, 1]).check(0),
        Err((FaultCode::MalformedSlot, 7))
    );
}

#[test]
fn slot_decode_reports_reserved_tenant_bits() {
    let w = [0x0701_0011u32, 0xabcd_0005, 1, 2, 3, 4, 5, 6, 7, 8];
    let (s, reserved) = Slot::decode(&w);
    assert_eq!(reserved, 0xabcd);
    assert_eq!(s.tenant, 5);
    assert_eq!((s.op, s.flags, s.priority), (0x11, 1, 7));
    assert_eq!(s.check(reserved), Err((FaultCode::MalformedSlot, 0)));
}

/// Regression: an operand given twice is an error on its line, not a silent overwrite.
#[test]
fn duplicate_slot_operand_is_an_error() {
    let src = ".buffer a 4\n.slot LOAD_U32 buf=a off=0 buf=7\n";
    match assemble(src) {
        Err(e) => {
            assert_eq!(e.line, 2, "{e}");
            assert!(e.message.contains("buf"), "{e}");
        }
        Ok(m) => panic!(
            "duplicate operand `buf` accepted; linked slot args = {:?}",
            m.slots[0].link(&[10], &[]).args
        ),
    }
}
