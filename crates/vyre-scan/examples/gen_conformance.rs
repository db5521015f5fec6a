//! Writes the DFA_SCAN conformance cases `conformance/cases/op_dfa_scan_*.toml`.
//!
//! `cargo run -p vyre-scan --example gen_conformance`
//!
//! Each table is `vyre_scan::compile`'s output for a 1–2 rule set. Expected hits come from
//! `vyre_scan::reference_matches` (regex-automata's lazy DFA, one rule at a time, an
//! engine independent of both DFA_SCAN implementations) on the text the slot sees: the
//! look-behind byte, the range, and the bytes after it unless the slot takes the
//! end-of-input transition. The cases are chosen so no match can start at the look-behind
//! byte. Result word r1 and the hit header's word 1 (state rows, which only the table
//! defines) come from `vyre_scan::scan_slice` (word 1: a separate scan of the range's first
//! `report_from` bytes),
//! which is checked here to give the same hits as the reference.
//! Fault cases are written by hand from the `vyre_isa::dfa` docs. Nothing here calls
//! `vyre_isa::dfa::scan`.

use std::fmt::Write as _;
use std::path::PathBuf;
use vyre_isa::dfa::{table_set, REPORT_EOI, SET_MAGIC, START_LOOKBEHIND, START_TEXT};
use vyre_scan::{compile, reference_matches, scan_slice, Limits, Pattern, Rule, RuleSet, Start};

/// One rule set compiled to exactly one table.
struct Set {
    rules: RuleSet,
    table: Vec<u32>,
    about: String,
}

fn set(rules: &[(&str, Pattern)]) -> Set {
    let mut s = RuleSet::new();
    let mut about = Vec::new();
    for (name, p) in rules {
        about.push(match p {
            Pattern::Literal(l) => format!("literal {:?}", String::from_utf8_lossy(l)),
            Pattern::Regex(r) => format!("regex {r:?}"),
        });
        s.push(Rule {
            name: name.to_string(),
            pattern: p.clone(),
            case_insensitive: false,
        })
        .expect("valid rule");
    }
    let c = compile(&s, &Limits::default()).expect("compiles");
    assert_eq!(c.groups.len(), 1, "one table");
    assert_eq!(c.groups[0].rules, (0..s.len() as u32).collect::<Vec<_>>());
    Set {
        rules: s,
        table: c.groups[0].table.clone(),
        about: format!("patterns {}", about.join(", ")),
    }
}

/// A DFA_SCAN slot over `data[off..off + len]`.
#[derive(Clone, Copy)]
struct Scan {
    /// Which of the case's tables the slot runs (buffer `t`, or `t0`, `t1`, ...).
    table: usize,
    off: usize,
    len: usize,
    report_from: u32,
    eoi: bool,
    start: Start,
    capacity: u32,
}

/// The state row after the first `n` bytes of `data` from `start` (the hit header word 1 DFA_SCAN writes, when
/// `n = min(report_from, len)`), by a scan of those bytes alone.
fn state_after(table: &[u32], data: &[u8], start: Start, n: usize) -> u32 {
    let mut ignored = Vec::new();
    scan_slice(
        table,
        &data[..n.min(data.len())],
        start,
        u32::MAX,
        false,
        &mut ignored,
    )
}

/// Expected (r0, r1, r2, the hit header's state word, hits stored) for a slot, from the
/// reference engine; the case files expect r3 = 0 and put the fourth word in the header.
fn expect(s: &Set, data: &[u8], sc: &Scan) -> ([u32; 4], Vec<(u32, u32)>) {
    let (pre, mut text): (usize, Vec<u8>) = match sc.start {
        Start::LookBehind(c) if usize::from(c) == START_TEXT => (0, Vec::new()),
        Start::LookBehind(c) => (1, vec![c as u8]),
        Start::Row(_) => panic!("explicit rows are computed in the case"),
    };
    let end = sc.off + sc.len;
    text.extend_from_slice(&data[sc.off..end]);
    if !sc.eoi {
        text.extend_from_slice(&data[end..]);
    }
    let mut hits: Vec<(u32, u32)> = reference_matches(&s.rules, &text)
        .expect("reference")
        .into_iter()
        .filter(|&(e, _)| e >= pre + sc.report_from as usize)
        .filter(|&(e, _)| {
            if sc.eoi {
                e <= pre + sc.len
            } else {
                e < pre + sc.len
            }
        })
        .map(|(e, p)| ((e - pre) as u32, p))
        .collect();
    hits.sort_unstable();
    let mut mine = Vec::new();
    let row = scan_slice(
        &s.table,
        &data[sc.off..end],
        sc.start,
        sc.report_from,
        sc.eoi,
        &mut mine,
    );
    assert_eq!(mine, hits, "scan_slice agrees with the reference");
    let found = hits.len() as u32;
    let stored = found.min(sc.capacity);
    hits.truncate(stored as usize);
    let at_report = state_after(
        &s.table,
        &data[sc.off..end],
        sc.start,
        sc.report_from as usize,
    );
    ([found, row, stored, at_report], hits)
}

/// Expected results of a slot over a table set of `members` (each with its pattern base):
/// every member's hits from the reference, in member order, pattern ids plus the base, cut
/// to the slot's capacity; r1 and the header's state are the last member's.
fn expect_set(members: &[(&Set, u32)], data: &[u8], sc: &Scan) -> ([u32; 4], Vec<(u32, u32)>) {
    let (mut found, mut last, mut all) = (0u32, [0u32; 4], Vec::new());
    for &(m, base) in members {
        let whole = Scan {
            capacity: u32::MAX,
            ..*sc
        };
        let (r, hits) = expect(m, data, &whole);
        found += r[0];
        last = r;
        all.extend(hits.into_iter().map(|(e, p)| (e, p + base)));
    }
    let stored = found.min(sc.capacity);
    all.truncate(stored as usize);
    ([found, last[1], stored, last[3]], all)
}

fn words(ws: &[u32]) -> String {
    ws.iter().map(u32::to_string).collect::<Vec<_>>().join(" ")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn start_arg(s: Start) -> u32 {
    match s {
        Start::LookBehind(c) => START_LOOKBEHIND | u32::from(c),
        Start::Row(r) => r,
    }
}

/// What one slot must do.
enum Outcome {
    Done([u32; 4], Vec<(u32, u32)>),
    Fault(&'static str, u32),
    /// A fault after some hits were stored (a later member of a table set faulted).
    FaultAfter(&'static str, u32, Vec<(u32, u32)>),
}

struct Case<'a> {
    file: &'a str,
    description: &'a str,
    notes: Vec<String>,
    /// Buffer `t` if there is one, else `t0`, `t1`, ...; none is written by a slot.
    tables: Vec<Vec<u32>>,
    data: &'a [u8],
    slots: Vec<(Scan, Outcome, String)>,
}

fn write(c: &Case<'_>) {
    let mut t = String::new();
    let _ = writeln!(t, "description = {:?}", c.description);
    let _ = writeln!(
        t,
        "# Generated by `cargo run -p vyre-scan --example gen_conformance` \
         (crates/vyre-scan/examples/gen_conformance.rs); do not edit by hand."
    );
    for n in &c.notes {
        let _ = writeln!(t, "# {n}");
    }
    let _ = writeln!(t, "vasm = \"\"\"");
    let name = |k: usize| {
        if c.tables.len() == 1 {
            "t".to_string()
        } else {
            format!("t{k}")
        }
    };
    for (k, table) in c.tables.iter().enumerate() {
        let _ = writeln!(
            t,
            ".buffer {} {} u32 {}",
            name(k),
            table.len() * 4,
            words(table)
        );
    }
    let _ = writeln!(t, ".buffer d {} hex \"{}\"", c.data.len(), hex(c.data));
    for (k, (sc, _, _)) in c.slots.iter().enumerate() {
        let _ = writeln!(
            t,
            ".buffer h{k} {} u32 {} 0",
            8 + 8 * sc.capacity,
            sc.capacity
        );
    }
    for (k, (sc, _, _)) in c.slots.iter().enumerate() {
        let report = sc.report_from | if sc.eoi { REPORT_EOI } else { 0 };
        let _ = writeln!(
            t,
            ".slot DFA_SCAN table={} data=d off={} len={} report={:#x} start={:#x} hits=h{k} hits_off=0",
            name(sc.table),
            sc.off,
            sc.len,
            report,
            start_arg(sc.start)
        );
    }
    let _ = writeln!(t, "\"\"\"");
    for (sc, out, why) in &c.slots {
        let _ = writeln!(t, "\n[[expect.slot]]");
        let _ = writeln!(t, "# {why}");
        match out {
            Outcome::Done(r, hits) => {
                let _ = writeln!(
                    t,
                    "# hits (end, pattern): {hits:?}; r1 and the hit header's state from scan_slice"
                );
                let results = [r[0], r[1], r[2], 0];
                let _ = writeln!(t, "status = \"done\"\nresults = {results:?}");
            }
            Outcome::Fault(name, detail) | Outcome::FaultAfter(name, detail, _) => {
                let _ = writeln!(
                    t,
                    "status = \"fault\"\nfault = \"{name}\"\ndetail = {detail}\nat = 0"
                );
            }
        }
        let _ = sc;
    }
    let _ = writeln!(t, "\n[expect.buffers]");
    for (k, table) in c.tables.iter().enumerate() {
        let _ = writeln!(t, "{} = \"u32: {}\"", name(k), words(table));
    }
    let _ = writeln!(t, "d = \"hex: {}\"", hex(c.data));
    for (k, (sc, out, _)) in c.slots.iter().enumerate() {
        // Header: the capacity, then (written by a completed scan) the state after the
        // first min(report_from, len) bytes, carried here as the outcome's fourth word.
        let mut w = vec![sc.capacity, 0];
        match out {
            Outcome::Done(r, hits) => {
                w[1] = r[3];
                for &(e, p) in hits {
                    w.extend([e, p]);
                }
            }
            Outcome::FaultAfter(_, _, hits) => {
                for &(e, p) in hits {
                    w.extend([e, p]);
                }
            }
            Outcome::Fault(..) => {}
        }
        let _ = writeln!(t, "h{k} = \"u32: {}\"", words(&w));
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../conformance/cases");
    let path = dir.join(format!("{}.toml", c.file));
    std::fs::write(&path, t).expect("write case");
    println!("wrote {}", path.display());
}

fn lb(b: u8) -> Start {
    Start::LookBehind(u16::from(b))
}

const TEXT: Start = Start::LookBehind(START_TEXT as u16);

fn scan(off: usize, len: usize, report_from: u32, eoi: bool, start: Start, capacity: u32) -> Scan {
    Scan {
        table: 0,
        off,
        len,
        report_from,
        eoi,
        start,
        capacity,
    }
}

impl Scan {
    /// The same slot on table `k` of the case.
    fn on(self, k: usize) -> Scan {
        Scan { table: k, ..self }
    }
}

/// A case whose slots all complete, expectations from the reference.
fn done_case(file: &str, description: &str, s: &Set, data: &[u8], slots: Vec<(Scan, &str)>) {
    let slots = slots
        .into_iter()
        .map(|(sc, why)| {
            let (r, h) = expect(s, data, &sc);
            (sc, Outcome::Done(r, h), why.to_string())
        })
        .collect();
    write(&Case {
        file,
        description,
        notes: vec![format!("table: vyre_scan::compile of {}", s.about)],
        tables: vec![s.table.clone()],
        data,
        slots,
    });
}

fn re(s: &str) -> Pattern {
    Pattern::Regex(s.into())
}

fn lit(s: &str) -> Pattern {
    Pattern::Literal(s.as_bytes().to_vec())
}

fn main() {
    let ab = set(&[("ab", re("ab"))]);
    done_case(
        "op_dfa_scan_matches",
        "DFA_SCAN reports every end offset of a match (just past its last byte), in scan order; a match that ends at len is seen only with the end-of-input flag",
        &ab,
        b"xabyab",
        vec![
            (scan(0, 6, 0, false, TEXT, 4), "ends 3 and 6; 6 = len needs the end-of-input flag, so only 3"),
            (scan(0, 6, 0, true, TEXT, 4), "with the end-of-input flag: ends 3 and 6"),
            (scan(4, 2, 0, false, lb(b'y'), 4), "range \"ab\" (offsets relative to off), no flag: nothing"),
            (scan(1, 0, 0, true, lb(b'x'), 4), "an empty range: nothing, r1 = the start row"),
        ],
    );
    let overlap = set(&[("aba", lit("aba")), ("ba", lit("ba"))]);
    done_case(
        "op_dfa_scan_overlap",
        "DFA_SCAN reports overlapping matches of two patterns, each end once per pattern, pattern ids ascending at one end",
        &overlap,
        b"ababa!",
        vec![
            (scan(0, 6, 0, false, TEXT, 8), "aba ends 3 and 5, ba ends 3 and 5"),
            (scan(1, 5, 0, false, lb(b'x'), 8), "from offset 1 (\"baba!\", look-behind code 'x'): ba ends 2, aba and ba end 4"),
        ],
    );
    done_case(
        "op_dfa_scan_report_from",
        "DFA_SCAN's report bits 0..31 drop matches that end before report_from (the window overlap) without changing the state",
        &overlap,
        b"ababa!",
        vec![
            (scan(0, 6, 4, false, TEXT, 8), "report_from 4: only the two matches ending at 5"),
            (scan(0, 6, 5, false, TEXT, 8), "report_from 5: the same two"),
            (scan(0, 6, 6, false, TEXT, 8), "report_from 6: none, r1 unchanged"),
        ],
    );
    let eoi = set(&[("ab-end", re("ab$")), ("b-boundary", re("b(?-u:\\b)"))]);
    done_case(
        "op_dfa_scan_eoi",
        "DFA_SCAN's end-of-input flag takes the last column: `$` and a trailing ASCII word boundary match at len only with it",
        &eoi,
        b"abab",
        vec![
            (scan(2, 2, 0, false, lb(b'b'), 4), "\"ab\" then \"...\": the text goes on, nothing ends at len"),
            (scan(2, 2, 0, true, lb(b'b'), 4), "with the flag: both patterns end at 2 (= len)"),
            (scan(0, 4, 0, true, TEXT, 4), "whole text: only at the end"),
        ],
    );
    let wb = set(&[("word-ab", re("(?-u:\\b)ab"))]);
    done_case(
        "op_dfa_scan_lookbehind",
        "DFA_SCAN's look-behind start code (the byte before the range, 256 = start of text) decides a leading ASCII word boundary",
        &wb,
        b"zab ab",
        vec![
            (scan(1, 3, 0, false, lb(b'z'), 4), "after 'z' there is no boundary before \"ab\""),
            (scan(1, 3, 0, false, lb(b' '), 4), "after ' ' there is: end 2"),
            (scan(1, 3, 0, false, TEXT, 4), "at the start of the text there is: end 2"),
            (scan(4, 2, 0, true, lb(b' '), 4), "\"ab\" at the end: end 2 with the flag"),
        ],
    );
    // Explicit rows: the state after "xxa" carries a partial match into the next range.
    let abc = set(&[("abc", re("abc"))]);
    let data = b"xxabcab";
    let first = scan(0, 3, 0, false, TEXT, 4);
    let (r_first, h_first) = expect(&abc, data, &first);
    let row = r_first[1];
    let second = scan(3, 4, 0, false, Start::Row(row), 4);
    let mut hits = Vec::new();
    let r1 = scan_slice(&abc.table, &data[3..7], second.start, 0, false, &mut hits);
    // By the reference: abc ends at 5 in the whole text, 2 relative to off 3.
    let want: Vec<(u32, u32)> = reference_matches(&abc.rules, data)
        .expect("reference")
        .into_iter()
        .filter(|&(e, _)| (3..7).contains(&e))
        .map(|(e, p)| (e as u32 - 3, p))
        .collect();
    assert_eq!(hits, want);
    // A look-behind code says only what the byte before was, so a match cannot start
    // there: the reference runs on the range alone ("bcab", no "abc" in it).
    let third = scan(3, 4, 0, false, lb(b'a'), 4);
    let h_third: Vec<(u32, u32)> = reference_matches(&abc.rules, &data[3..])
        .expect("reference")
        .into_iter()
        .filter(|&(e, _)| e < 4)
        .map(|(e, p)| (e as u32, p))
        .collect();
    let mut mine = Vec::new();
    let row3 = scan_slice(&abc.table, &data[3..7], third.start, 0, false, &mut mine);
    assert_eq!(mine, h_third);
    let r_third = [
        h_third.len() as u32,
        row3,
        h_third.len() as u32,
        state_after(&abc.table, &data[3..7], third.start, 0),
    ];
    let r_second = [
        want.len() as u32,
        r1,
        want.len() as u32,
        state_after(&abc.table, &data[3..7], second.start, 0),
    ];
    assert_eq!(
        r_second[3], row,
        "the header's state with report_from 0 is the start row"
    );
    write(&Case {
        file: "op_dfa_scan_row_start",
        description: "DFA_SCAN's start argument without bit 31 is a state row: r1 of one range carried into the next finds a match across the cut; a look-behind code does not",
        notes: vec![format!("table: vyre_scan::compile of {}", abc.about)],
        tables: vec![abc.table.clone()],
        data,
        slots: vec![
            (first, Outcome::Done(r_first, h_first), "\"xxa\" from the text start: no match; r1 = the row after a partial \"a\"".into()),
            (second, Outcome::Done(r_second, want), format!("\"bcab\" from row {row}: abc ends at 2 (5 in the text)")),
            (third, Outcome::Done(r_third, h_third), "\"bcab\" after byte 'a' (a look-behind code): no match".into()),
        ],
    });
    // The hit header's state word, where a window's own bytes start: a window scanned from two bytes early
    // agrees with the scan before it when no partial match is older than those two bytes.
    let abc_plus = set(&[("ab+c", re("ab+c"))]);
    let data: &[u8] = b"xxabbbbbbcxxabcxx";
    let head_a = scan(0, 6, 0, false, TEXT, 4);
    let spec_b = scan(4, 6, 2, false, lb(data[3]), 4);
    let head_c = scan(0, 12, 0, false, TEXT, 4);
    let spec_d = scan(10, 7, 2, true, lb(data[9]), 4);
    let (ra, ha) = expect(&abc_plus, data, &head_a);
    let (rb, hb) = expect(&abc_plus, data, &spec_b);
    let (rc, hc) = expect(&abc_plus, data, &head_c);
    let (rd, hd) = expect(&abc_plus, data, &spec_d);
    assert_ne!(
        rb[3], ra[1],
        "the partial \"abbbb\" is older than the look-behind"
    );
    assert_eq!(rd[3], rc[1], "nothing is alive across \"xx\"");
    write(&Case {
        file: "op_dfa_scan_state_at_report",
        description: "DFA_SCAN writes word 1 of the hit header: the state after the first min(report_from, len) bytes, equal to r1 of the scan of everything before the window when no partial match is older than the look-behind, different when one is",
        notes: vec![format!("table: vyre_scan::compile of {}", abc_plus.about)],
        tables: vec![abc_plus.table.clone()],
        data,
        slots: vec![
            (head_a, Outcome::Done(ra, ha), "bytes 0..6 from the text start: r1 = the state inside \"abbb\"".into()),
            (spec_b, Outcome::Done(rb, hb), "own bytes 6..10 from two early: the header's state (after \"bb\") differs from the r1 above".into()),
            (head_c, Outcome::Done(rc, hc), "bytes 0..12 from the text start".into()),
            (spec_d, Outcome::Done(rd, hd), "own bytes 12..17 from two early: the header's state (after \"xx\") equals the r1 above; \"abc\" ends at 15 (5 here)".into()),
        ],
    });
    let a = set(&[("a", lit("a"))]);
    done_case(
        "op_dfa_scan_overflow",
        "DFA_SCAN with a hit region too small: r0 counts every match, r2 = K stored, the rest is not written (r0 > r2 tells the host to rescan)",
        &a,
        b"aaaaa!",
        vec![
            (scan(0, 6, 0, false, TEXT, 2), "five matches (ends 1..5), two stored"),
            (scan(0, 6, 0, false, TEXT, 0), "capacity 0: five found, none stored"),
            (scan(0, 6, 0, false, TEXT, 5), "capacity 5: all stored"),
        ],
    );
    // Faults, by hand from the dfa.rs docs.
    let mut bad_magic = ab.table.clone();
    bad_magic[0] = 0;
    write(&Case {
        file: "op_dfa_scan_fault_bad_magic",
        description: "DFA_SCAN on a table whose word 0 is not VDFA faults bad_program with detail 0 and writes no hits",
        notes: vec![format!("table: vyre_scan::compile of {}, word 0 set to 0", ab.about)],
        tables: vec![bad_magic.clone()],
        data: b"xabyab",
        slots: vec![(scan(0, 6, 0, true, TEXT, 4), Outcome::Fault("bad_program", 0), "word 0 is the magic".into())],
    });
    write(&Case {
        file: "op_dfa_scan_fault_start_code",
        description: "DFA_SCAN with a look-behind start code above 256 faults malformed_slot with detail 5 (the start argument) and writes no hits",
        notes: vec![format!("table: vyre_scan::compile of {}", ab.about)],
        tables: vec![ab.table.clone()],
        data: b"xabyab",
        slots: vec![
            (scan(0, 6, 0, true, Start::LookBehind(257), 4), Outcome::Fault("malformed_slot", 5), "code 257".into()),
            (scan(0, 6, 0, true, Start::Row(ab.table[2] * ab.table[3]), 4), Outcome::Fault("malformed_slot", 5), "explicit row S×C (past the last row)".into()),
        ],
    });
    write(&Case {
        file: "op_dfa_scan_fault_data_oob",
        description: "DFA_SCAN over a range past the end of the data buffer faults out_of_bounds with detail = off, before reading the table",
        notes: vec![format!("table: vyre_scan::compile of {}", ab.about)],
        tables: vec![ab.table.clone()],
        data: b"xabyab",
        slots: vec![
            (scan(4, 3, 0, false, TEXT, 4), Outcome::Fault("out_of_bounds", 4), "bytes 4..7 of a 6-byte buffer".into()),
            (scan(6, 0, 0, false, TEXT, 4), Outcome::Done([0, ab.table[START_TEXT + 72], 0, ab.table[START_TEXT + 72]], vec![]), "an empty range at the end is in bounds: r1 and the header state = the text-start row (table word 72 + 256)".into()),
        ],
    });
    set_cases(&ab, &overlap, &a);
}

/// Table sets (`VDFS`, protocol v3): one slot runs several tables over one range.
fn set_cases(ab: &Set, overlap: &Set, a: &Set) {
    let members = [(ab, 0u32), (overlap, 1), (a, 10)];
    let set3 = table_set(&[(&ab.table, 0), (&overlap.table, 1), (&a.table, 10)]).expect("a set");
    let data: &[u8] = b"xababa!ab";
    let slots = vec![
        (
            scan(0, 9, 0, false, TEXT, 32),
            "the whole text: ab's hits (pattern 0), then aba/ba's (1, 2), then a's (10)",
        ),
        (
            scan(0, 9, 0, true, TEXT, 32),
            "with the end-of-input flag: ab also ends at 9 (= len)",
        ),
        (
            scan(1, 8, 3, false, lb(b'x'), 32),
            "from offset 1 after 'x', reporting from 3: every member skips ends before 3",
        ),
        (
            scan(0, 9, 0, false, TEXT, 3),
            "capacity 3: r0 counts all 10 matches, only ab's two and aba/ba's first are stored",
        ),
        (
            scan(9, 0, 0, true, lb(b'b'), 4),
            "an empty range: no hits; r1 and the header state are the last member's start row",
        ),
    ];
    let slots = slots
        .into_iter()
        .map(|(sc, why)| {
            let (r, h) = expect_set(&members, data, &sc);
            (sc, Outcome::Done(r, h), why.to_string())
        })
        .collect();
    write(&Case {
        file: "op_dfa_scan_set",
        description: "DFA_SCAN over a table set (VDFS) runs each member table over the range in order into one hit region: member k's pattern ids plus its base, after the hits of the members before it; r0 and r2 count all members, r1 and the header's state are the last member's",
        notes: vec![format!(
            "table: vyre_isa::dfa::table_set of vyre_scan::compile of [{}] (base 0), [{}] (base 1), [{}] (base 10)",
            ab.about, overlap.about, a.about
        )],
        tables: vec![set3],
        data,
        slots,
    });
    // Faults, by hand from the dfa.rs docs: the set's directory is checked before any
    // member, then each member as a table alone, with word indexes of the whole buffer.
    let good = table_set(&[(&ab.table, 0), (&a.table, 1)]).expect("a set");
    let a_at = good[6];
    let with = |i: usize, v: u32| {
        let mut t = good.clone();
        t[i] = v;
        t
    };
    let short = vec![SET_MAGIC, 1, 2, 0, 8, 0];
    let mut past_end = good.clone();
    past_end[6] = good.len() as u32;
    let data: &[u8] = b"xabyab";
    let whole = |k: usize| scan(0, 6, 0, true, TEXT, 4).on(k);
    write(&Case {
        file: "op_dfa_scan_set_faults",
        description: "DFA_SCAN over a malformed table set faults bad_program at the word at fault (a member's words counted from the start of the set's buffer) before reading any byte, or, when a later member is malformed, after the earlier members' hits are stored; an explicit row start is malformed_slot 5",
        notes: vec![format!(
            "tables: vyre_isa::dfa::table_set of vyre_scan::compile of [{}] (base 0), [{}] (base 1), each changed by hand as its slot says",
            ab.about, a.about
        )],
        tables: vec![
            with(1, 2),
            with(2, 0),
            short,
            with(3, 1),
            with(6, 5),
            good.clone(),
            with(a_at as usize, 0),
            past_end,
        ],
        data,
        slots: vec![
            (whole(0), Outcome::Fault("bad_program", 1), "word 1 (set version) is 2".into()),
            (whole(1), Outcome::Fault("bad_program", 2), "word 2: no members".into()),
            (whole(2), Outcome::Fault("bad_program", 2), "word 2: two members' directory runs past a 6-word buffer".into()),
            (whole(3), Outcome::Fault("bad_program", 3), "word 3 is not zero".into()),
            (whole(4), Outcome::Fault("bad_program", 6), "member 1 starts at word 5, inside the 8-word directory: its offset word 6".into()),
            (scan(0, 6, 0, true, Start::Row(0), 4).on(5), Outcome::Fault("malformed_slot", 5), "an explicit row start on a set".into()),
            (whole(6), Outcome::FaultAfter("bad_program", a_at, vec![(3, 0), (6, 0)]), format!("member 1's magic (word {a_at}) is 0: member 0 (ab) stored ends 3 and 6 first; the header's state stays unwritten")),
            (whole(7), Outcome::FaultAfter("bad_program", good.len() as u32, vec![(3, 0), (6, 0)]), format!("member 1 starts at word {} = the end of the buffer: its word 0 is at fault, after member 0 stored its hits", good.len())),
        ],
    });
}
