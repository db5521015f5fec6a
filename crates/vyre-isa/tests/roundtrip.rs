//! Round trips through every representation VIR0 has: bytes, `Program`, `.vasm` text and
//! slots, plus a checked decoder compared with an independent reference decoder written
//! from the format description in `program.rs` / `table.rs`.

use proptest::prelude::*;
use vyre_isa::disasm::{disassemble_program, disassemble_slot};
use vyre_isa::program::{OperandKind, INSN_BYTES, MAX_PROGRAM_INSNS};
use vyre_isa::slot::ARG_WORDS;
use vyre_isa::{assemble, DecodeError, Insn, Opcode, Program, Slot, SlotOp};

// ---------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------

/// Raw material for one instruction; `build` turns it into a valid `Insn` for a program of
/// a given length.
#[derive(Clone, Debug)]
struct RawInsn {
    op: usize,
    regs: [u8; 3],
    imm: i32,
    target: u32,
}

fn raw_insn() -> impl Strategy<Value = RawInsn> {
    (
        0..Opcode::ALL.len(),
        [0u8..16, 0u8..16, 0u8..16],
        prop_oneof![any::<i32>(), -16i32..16, Just(i32::MIN), Just(i32::MAX)],
        any::<u32>(),
    )
        .prop_map(|(op, regs, imm, target)| RawInsn {
            op,
            regs,
            imm,
            target,
        })
}

/// An instruction with its operands valid per `Opcode::operands()` and unused fields zero.
fn build(op: Opcode, raw: &RawInsn, len: usize) -> Insn {
    let mut regs = [0u8; 3];
    let mut imm = 0i32;
    let mut r = 0;
    for spec in op.operands() {
        match spec.kind {
            OperandKind::Reg => {
                regs[r] = raw.regs[r];
                r += 1;
            }
            OperandKind::Imm => imm = raw.imm,
            OperandKind::Target => imm = (raw.target % len as u32) as i32,
        }
    }
    Insn { op, regs, imm }
}

/// Valid instruction sequences: operands in range, targets in range, last is halt or jmp.
fn valid_insns() -> impl Strategy<Value = Vec<Insn>> {
    (
        prop::collection::vec(raw_insn(), 1..40),
        any::<bool>(),
        any::<u32>(),
    )
        .prop_map(|(raws, end_with_jmp, t)| {
            let len = raws.len();
            let mut insns: Vec<Insn> = raws
                .iter()
                .map(|raw| build(Opcode::ALL[raw.op], raw, len))
                .collect();
            let last = insns.last_mut().expect("at least one");
            if !matches!(last.op, Opcode::Halt | Opcode::Jmp) {
                *last = if end_with_jmp {
                    Insn {
                        op: Opcode::Jmp,
                        regs: [0; 3],
                        imm: (t % len as u32) as i32,
                    }
                } else {
                    Insn {
                        op: Opcode::Halt,
                        regs: [0; 3],
                        imm: 0,
                    }
                };
            }
            insns
        })
}

fn encode_all(insns: &[Insn]) -> Vec<u8> {
    insns.iter().flat_map(|i| i.encode()).collect()
}

/// Bytes that are mostly almost valid: a valid program with a few bytes overwritten, cut
/// short or extended, or plain random bytes.
fn hostile_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => prop::collection::vec(any::<u8>(), 0..48),
        // A small opcode alphabet so that field checks are reached.
        2 => prop::collection::vec(
            prop_oneof![3 => Just(0u8), 2 => 0u8..20, 1 => Just(0x40u8), 1 => Just(0x41u8),
                        1 => Just(0x43u8), 1 => any::<u8>()],
            0..48),
        4 => (valid_insns(), prop::collection::vec((any::<usize>(), any::<u8>()), 1..4))
            .prop_map(|(insns, muts)| {
                let mut b = encode_all(&insns);
                for (at, v) in muts {
                    let i = at % b.len();
                    b[i] = v;
                }
                b
            }),
        1 => (valid_insns(), any::<usize>()).prop_map(|(insns, cut)| {
            let b = encode_all(&insns);
            b[..cut % (b.len() + 1)].to_vec()
        }),
        1 => (valid_insns(), prop::collection::vec(any::<u8>(), 1..12)).prop_map(|(insns, extra)| {
            let mut b = encode_all(&insns);
            b.extend(extra);
            b
        }),
    ]
}

fn arb_slot() -> impl Strategy<Value = Slot> {
    let op = prop_oneof![
        6 => (0..SlotOp::ALL.len()).prop_map(|i| SlotOp::ALL[i] as u16),
        1 => any::<u16>(),
    ];
    let arg = prop_oneof![3 => Just(0u32), 3 => 0u32..100, 2 => any::<u32>()];
    (
        op,
        prop_oneof![4 => Just(0u8), 1 => any::<u8>()],
        prop_oneof![2 => Just(0u8), 2 => 0u8..8, 1 => any::<u8>()],
        prop_oneof![2 => Just(0u16), 1 => any::<u16>()],
        prop::array::uniform8(arg),
        any::<bool>(),
    )
        .prop_map(|(op, flags, priority, tenant, mut args, zero_unused)| {
            if zero_unused {
                if let Some(core) = SlotOp::from_u16(op) {
                    for a in &mut args[core.args().len()..] {
                        *a = 0;
                    }
                }
            }
            Slot {
                op,
                flags,
                priority,
                tenant,
                args,
            }
        })
}

// ---------------------------------------------------------------------------------------
// An independent reference decoder, written from the format description.
// ---------------------------------------------------------------------------------------

/// (register fields used, uses the immediate, immediate is a jump target) per opcode byte,
/// transcribed by hand from the instruction table's documentation.
fn shape(op: u8) -> Option<(usize, bool, bool)> {
    Some(match op {
        0x00 => (0, false, false),        // halt
        0x01 | 0x02 => (1, true, false),  // movi, movhi
        0x03 => (2, false, false),        // mov
        0x10..=0x18 => (3, false, false), // add .. sar
        0x20..=0x23 => (2, true, false),  // addi, andi, shli, shri
        0x28..=0x2b => (3, false, false), // eq, ne, ltu, lts
        0x30..=0x33 => (3, true, false),  // ld8, ld32, st8, st32
        0x40 => (0, true, true),          // jmp
        0x41 | 0x42 => (1, true, true),   // beqz, bnez
        0x43 => (2, true, true),          // bltu
        _ => return None,
    })
}

/// What the decoder must report: the variant's name and the byte position.
fn reference_decode(b: &[u8]) -> Result<(), (&'static str, usize)> {
    if b.is_empty() {
        return Err(("Empty", 0));
    }
    if b.len() % 8 != 0 {
        return Err(("Truncated", b.len() / 8 * 8));
    }
    let n = b.len() / 8;
    if n > MAX_PROGRAM_INSNS {
        return Err(("TooLong", MAX_PROGRAM_INSNS * 8));
    }
    // Pass 1: every instruction's fields.
    for i in 0..n {
        let p = i * 8;
        let Some((regs, uses_imm, _)) = shape(b[p]) else {
            return Err(("UnknownOpcode", p));
        };
        for f in 0..3 {
            let v = b[p + 1 + f];
            if f < regs && v >= 16 {
                return Err(("BadRegister", p + 1 + f));
            }
            if f >= regs && v != 0 {
                return Err(("NonZeroUnused", p + 1 + f));
            }
        }
        if !uses_imm && b[p + 4..p + 8] != [0, 0, 0, 0] {
            return Err(("NonZeroUnused", p + 4));
        }
    }
    // Pass 2: jump targets.
    for i in 0..n {
        let p = i * 8;
        let (_, _, target) = shape(b[p]).expect("checked");
        let t = i32::from_le_bytes(b[p + 4..p + 8].try_into().expect("4 bytes"));
        if target && (t < 0 || t as usize >= n) {
            return Err(("BadTarget", p + 4));
        }
    }
    // Pass 3: the last instruction must not fall through.
    let last = (n - 1) * 8;
    if !matches!(b[last], 0x00 | 0x40) {
        return Err(("FallsOffEnd", last));
    }
    Ok(())
}

fn variant(e: &DecodeError) -> &'static str {
    match e {
        DecodeError::Truncated { .. } => "Truncated",
        DecodeError::Empty => "Empty",
        DecodeError::TooLong { .. } => "TooLong",
        DecodeError::UnknownOpcode { .. } => "UnknownOpcode",
        DecodeError::BadRegister { .. } => "BadRegister",
        DecodeError::NonZeroUnused { .. } => "NonZeroUnused",
        DecodeError::BadTarget { .. } => "BadTarget",
        DecodeError::FallsOffEnd { .. } => "FallsOffEnd",
    }
}

/// The error's payload is consistent with the bytes at its position.
fn check_error_fields(b: &[u8], e: &DecodeError) -> Result<(), TestCaseError> {
    let pos = e.position();
    prop_assert!(pos < b.len().max(1), "{e}: position {pos} past {}", b.len());
    prop_assert!(
        e.to_string().contains(&format!("at byte {pos}")),
        "message `{e}` does not name byte {pos}"
    );
    match *e {
        DecodeError::Empty => prop_assert!(b.is_empty()),
        DecodeError::Truncated { position, len } => {
            prop_assert_eq!(len, b.len());
            prop_assert_eq!(position, len - len % 8);
            prop_assert!(len % 8 != 0);
        }
        DecodeError::TooLong { .. } => prop_assert!(false, "cannot happen for short inputs"),
        DecodeError::UnknownOpcode { position, opcode } => {
            prop_assert_eq!(position % 8, 0);
            prop_assert_eq!(b[position], opcode);
            prop_assert!(Opcode::from_u8(opcode).is_none());
        }
        DecodeError::BadRegister { position, reg, .. } => {
            prop_assert!((1..=3).contains(&(position % 8)));
            prop_assert_eq!(b[position], reg);
            prop_assert!(reg >= 16);
        }
        DecodeError::NonZeroUnused { position, .. } => {
            let field = position % 8;
            prop_assert!((1..=4).contains(&field));
            if field == 4 {
                prop_assert!(b[position..position + 4] != [0, 0, 0, 0]);
            } else {
                prop_assert!(b[position] != 0);
            }
        }
        DecodeError::BadTarget {
            position,
            target,
            insns,
            ..
        } => {
            prop_assert_eq!(position % 8, 4);
            prop_assert_eq!(insns, b.len() / 8);
            let at = i32::from_le_bytes(b[position..position + 4].try_into().expect("4"));
            prop_assert_eq!(at, target);
            prop_assert!(target < 0 || target as usize >= insns);
        }
        DecodeError::FallsOffEnd { position, mnemonic } => {
            prop_assert_eq!(position, b.len() - 8);
            let op = Opcode::from_u8(b[position]).expect("decoded");
            prop_assert_eq!(op.mnemonic(), mnemonic);
            prop_assert!(!op.is_terminator());
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]

    /// (a) Program::new -> encode -> decode gives the same program and the same bytes.
    #[test]
    fn program_encode_decode_round_trip(insns in valid_insns()) {
        let prog = Program::new(insns.clone()).expect("generator makes valid programs");
        prop_assert_eq!(prog.insns(), &insns[..]);
        let bytes = prog.encode();
        prop_assert_eq!(bytes.len(), insns.len() * INSN_BYTES);
        prop_assert_eq!(&bytes, &encode_all(&insns));
        let back = Program::decode(&bytes).expect("encoded program decodes");
        prop_assert_eq!(back.insns(), &insns[..]);
        prop_assert!(back == prog);
        prop_assert_eq!(back.encode(), bytes);
    }

    /// (b) disassemble -> assemble gives the same bytecode, and the text is a fixed point.
    #[test]
    fn disassemble_assemble_round_trip(insns in valid_insns()) {
        let prog = Program::new(insns).expect("valid");
        let text = disassemble_program("p", &prog);
        let module = assemble(&text)
            .map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(module.programs.len(), 1);
        prop_assert!(module.buffers.is_empty() && module.slots.is_empty());
        prop_assert_eq!(&module.programs[0].name, "p");
        prop_assert_eq!(module.programs[0].line, 1);
        prop_assert_eq!(&module.programs[0].bytecode, &prog.encode(), "{}", text);
        let again = Program::decode(&module.programs[0].bytecode).expect("valid");
        prop_assert_eq!(disassemble_program("p", &again), text);
    }

    /// (c) The checked decoder never panics, agrees with the reference decoder on the
    /// error variant and position, and re-encodes accepted bytes exactly.
    #[test]
    fn decode_arbitrary_bytes(bytes in hostile_bytes()) {
        let got = Program::decode(&bytes);
        let want = reference_decode(&bytes);
        match (&got, want) {
            (Ok(p), Ok(())) => {
                prop_assert_eq!(p.encode(), bytes.clone());
                prop_assert_eq!(p.insns().len(), bytes.len() / 8);
            }
            (Err(e), Err((name, pos))) => {
                prop_assert_eq!(variant(e), name, "{}", e);
                prop_assert_eq!(e.position(), pos, "{}", e);
                check_error_fields(&bytes, e)?;
            }
            (got, want) => prop_assert!(false, "decoder {got:?}, reference {want:?}"),
        }
    }

    /// (d1) Slot words round trip, including the reserved half of the tenant word.
    #[test]
    fn slot_encode_decode_round_trip(slot in arb_slot(), words: [u32; 10]) {
        let w = slot.encode();
        prop_assert_eq!(w[0], u32::from(slot.op) | u32::from(slot.flags) << 16
            | u32::from(slot.priority) << 24);
        prop_assert_eq!(w[1], u32::from(slot.tenant));
        prop_assert_eq!(&w[2..], &slot.args[..]);
        prop_assert_eq!(Slot::decode(&w), (slot, 0));

        let (s, reserved) = Slot::decode(&words);
        prop_assert_eq!(reserved, words[1] >> 16);
        let mut back = s.encode();
        back[1] |= reserved << 16;
        prop_assert_eq!(back, words);
    }

    /// (d2) disassemble_slot -> assemble -> link gives the same slot. Core opcodes with
    /// zero unused words use the named `.slot` form; everything else `.rawslot`.
    #[test]
    fn slot_disassemble_assemble_round_trip(slot in arb_slot()) {
        let text = disassemble_slot(&slot);
        let named = SlotOp::from_u16(slot.op)
            .is_some_and(|op| slot.args[op.args().len()..].iter().all(|&a| a == 0));
        if named {
            let op = SlotOp::from_u16(slot.op).expect("core");
            let prefix = format!(".slot {}", op.mnemonic());
            prop_assert!(text.starts_with(&prefix), "{}", text);
        } else {
            prop_assert!(text.starts_with(".rawslot "), "{}", text);
        }
        let module = assemble(&text).map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
        prop_assert_eq!(module.slots.len(), 1);
        let decl = &module.slots[0];
        prop_assert!(decl.relocs.is_empty(), "numeric operands need no relocation: {}", text);
        prop_assert_eq!(decl.line, 1);
        prop_assert_eq!(decl.slot, slot, "{}", text);
        prop_assert_eq!(decl.link(&[], &[]), slot);
    }
}

// ---------------------------------------------------------------------------------------
// Fixed cases
// ---------------------------------------------------------------------------------------

/// The hand-written shape table used by the reference decoder agrees with the op table.
#[test]
fn reference_shape_table_matches_op_table() {
    for n in 0..=255u8 {
        let op = Opcode::from_u8(n);
        assert_eq!(op.is_some(), shape(n).is_some(), "opcode {n:#x}");
        if let (Some(op), Some((regs, imm, target))) = (op, shape(n)) {
            assert_eq!(op as u8, n);
            assert_eq!(op.reg_count(), regs, "{}", op.mnemonic());
            assert_eq!(op.uses_imm(), imm, "{}", op.mnemonic());
            assert_eq!(op.has_target(), target, "{}", op.mnemonic());
            assert_eq!(Opcode::from_mnemonic(op.mnemonic()), Some(op));
            assert_eq!(
                Opcode::from_mnemonic(&op.mnemonic().to_uppercase()),
                Some(op)
            );
        }
    }
    assert_eq!(Opcode::ALL.len(), 29);
    for n in 0..=u16::MAX {
        if let Some(op) = SlotOp::from_u16(n) {
            assert_eq!(op as u16, n);
            assert_eq!(SlotOp::from_mnemonic(op.mnemonic()), Some(op));
            assert!(op.args().len() <= ARG_WORDS);
        }
    }
    assert_eq!(SlotOp::ALL.len(), 17);
}

#[test]
fn exact_bytes_of_a_known_program() {
    let src = "\
.program sum
    movi r0, 0
top:
    beqz r1, done
    add r0, r0, r1
    addi r1, r1, -1
    jmp top
done:
    halt
.end
";
    let m = assemble(src).expect("assembles");
    #[rustfmt::skip]
    let want: Vec<u8> = vec![
        0x01, 0, 0, 0, 0, 0, 0, 0,            // movi r0, 0
        0x41, 1, 0, 0, 5, 0, 0, 0,            // beqz r1, 5
        0x10, 0, 0, 1, 0, 0, 0, 0,            // add r0, r0, r1
        0x20, 1, 1, 0, 0xff, 0xff, 0xff, 0xff, // addi r1, r1, -1
        0x40, 0, 0, 0, 1, 0, 0, 0,            // jmp 1
        0x00, 0, 0, 0, 0, 0, 0, 0,            // halt
    ];
    assert_eq!(m.programs[0].bytecode, want);
    let prog = Program::decode(&want).expect("valid");
    let text = disassemble_program("sum", &prog);
    assert_eq!(
        text,
        ".program sum\n    movi   r0, 0\nL1:\n    beqz   r1, L5\n    add    r0, r0, r1\n    \
         addi   r1, r1, -1\n    jmp    L1\nL5:\n    halt   \n.end\n"
    );
    assert_eq!(
        assemble(&text).expect("assembles").programs[0].bytecode,
        want
    );
}

#[test]
fn extreme_immediates_round_trip_through_text() {
    for imm in [i32::MIN, -1, 0, 1, i32::MAX] {
        let prog = Program::new(vec![
            Insn {
                op: Opcode::Movi,
                regs: [15, 0, 0],
                imm,
            },
            Insn {
                op: Opcode::Movhi,
                regs: [15, 0, 0],
                imm,
            },
            Insn {
                op: Opcode::Halt,
                regs: [0; 3],
                imm: 0,
            },
        ])
        .expect("valid");
        let text = disassemble_program("x", &prog);
        let m = assemble(&text).expect("assembles");
        assert_eq!(m.programs[0].bytecode, prog.encode(), "{text}");
    }
    // The assembler also takes immediates written as unsigned 32-bit values.
    let m = assemble(".program x\nmovi r1, 0xffffffff\nhalt\n.end").expect("assembles");
    assert_eq!(&m.programs[0].bytecode[4..8], &[0xff; 4]);
}

#[test]
fn slot_text_forms() {
    let s = Slot::new(SlotOp::StoreU32, &[3, 8, 42])
        .with_tenant(7)
        .with_priority(3);
    let text = disassemble_slot(&s);
    assert_eq!(
        text,
        ".slot STORE_U32 buf=3 off=8 value=42 tenant=7 priority=3"
    );
    assert_eq!(assemble(&text).expect("ok").slots[0].slot, s);

    // Unused word set: only the raw form is exact.
    let mut odd = Slot::new(SlotOp::Nop, &[]);
    odd.args[7] = 9;
    let text = disassemble_slot(&odd);
    assert_eq!(text, ".rawslot 0x0 0x0 0x0 0x0 0x0 0x0 0x0 0x0 0x0 0x9");
    assert_eq!(assemble(&text).expect("ok").slots[0].slot, odd);

    // An extension opcode.
    let ext = Slot {
        op: 0x0100,
        flags: 1,
        priority: 9,
        tenant: 0xffff,
        args: [1, 2, 3, 4, 5, 6, 7, u32::MAX],
    };
    let text = disassemble_slot(&ext);
    assert!(text.starts_with(".rawslot 0x9010100 0xffff "), "{text}");
    assert_eq!(assemble(&text).expect("ok").slots[0].slot, ext);
}

#[test]
fn named_slot_operands_relocate() {
    let src = "\
.buffer a 16
.buffer b 8 u32 1 2
.program p
    halt
.end
.slot MEMCPY dst=b dst_off=0 src=a src_off=4 len=4
.slot EXEC prog=p r1=@b r2=-1
.slot COUNT_BYTE buf=2 off=0 len=8 byte=1
";
    let m = assemble(src).expect("assembles");
    assert_eq!(m.buffers[1].init, vec![1, 0, 0, 0, 2, 0, 0, 0]);
    let linked: Vec<Slot> = m.slots.iter().map(|d| d.link(&[10, 20], &[77])).collect();
    assert_eq!(linked[0], Slot::new(SlotOp::Memcpy, &[20, 0, 10, 4, 4]));
    assert_eq!(linked[1], Slot::new(SlotOp::Exec, &[77, 20, u32::MAX]));
    assert_eq!(linked[2], Slot::new(SlotOp::CountByte, &[2, 0, 8, 1]));
    assert_eq!(
        [m.slots[0].line, m.slots[1].line, m.slots[2].line],
        [6, 7, 8]
    );
}

/// `ascii "..."` keeps comment characters, commas and escapes inside the string.
#[test]
fn buffer_ascii_initialisers() {
    let m = assemble(".buffer s 16 ascii \"a;b,c#d\\n\\t\\0\\\\\"").expect("assembles");
    assert_eq!(m.buffers[0].init, b"a;b,c#d\n\t\0\\".to_vec());
    let m = assemble(".buffer h 4 hex \"de ad_be ef\"").expect("assembles");
    assert_eq!(m.buffers[0].init, vec![0xde, 0xad, 0xbe, 0xef]);
    let m = assemble(".buffer e 4 ascii \"\"").expect("assembles");
    assert!(m.buffers[0].init.is_empty());
}

/// Regression: an escaped quote that starts a string's contents is kept.
#[test]
fn ascii_string_starting_with_escaped_quote() {
    let m = assemble(r#".buffer q 8 ascii "\"hi\"""#).expect("assembles");
    assert_eq!(
        String::from_utf8_lossy(&m.buffers[0].init),
        "\"hi\"",
        "leading escaped quote kept"
    );
}

#[test]
fn longest_program_round_trips() {
    let mut insns = vec![
        Insn {
            op: Opcode::Addi,
            regs: [1, 1, 0],
            imm: 1,
        };
        MAX_PROGRAM_INSNS - 1
    ];
    insns.push(Insn {
        op: Opcode::Jmp,
        regs: [0; 3],
        imm: (MAX_PROGRAM_INSNS - 1) as i32,
    });
    let prog = Program::new(insns).expect("exactly the limit is allowed");
    let bytes = prog.encode();
    assert_eq!(bytes.len(), MAX_PROGRAM_INSNS * 8);
    assert!(Program::decode(&bytes).expect("decodes") == prog);
}

/// The byte generator of `decode_arbitrary_bytes` reaches every outcome the decoder has
/// (except TooLong, which needs half a megabyte and has its own test in bad_input.rs).
#[test]
fn hostile_bytes_reach_every_decoder_outcome() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = hostile_bytes();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..1500 {
        let bytes = strategy.new_tree(&mut runner).expect("tree").current();
        seen.insert(match Program::decode(&bytes) {
            Ok(_) => "Ok",
            Err(e) => variant(&e),
        });
    }
    for want in [
        "Ok",
        "Empty",
        "Truncated",
        "UnknownOpcode",
        "BadRegister",
        "NonZeroUnused",
        "BadTarget",
        "FallsOffEnd",
    ] {
        assert!(seen.contains(want), "{want} never generated: {seen:?}");
    }
}
