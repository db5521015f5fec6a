//! `scan_slice` gives bit-for-bit what the reference DFA_SCAN (`vyre_isa::dfa::scan`)
//! gives on compiled tables: result words, hit region (including a region too small for
//! every hit: r0 > r2 and only K stored), from look-behind codes and explicit rows.

use proptest::prelude::*;
use std::cell::RefCell;
use vyre_isa::dfa::{HIT_HEADER_BYTES, REPORT_EOI, START_LOOKBEHIND};
use vyre_isa::Memory;
use vyre_scan::{check_table, compile, scan_slice, Limits, Pattern, Rule, RuleSet, Start};

/// Buffers 1..=n as byte vectors.
#[derive(Debug)]
struct Bufs(RefCell<Vec<Vec<u8>>>);

impl Bufs {
    fn get(&self, h: u32, off: u64, len: usize) -> Vec<u8> {
        let b = self.0.borrow();
        b[h as usize - 1][off as usize..off as usize + len].to_vec()
    }
    fn put(&self, h: u32, off: u64, src: &[u8]) {
        let mut b = self.0.borrow_mut();
        b[h as usize - 1][off as usize..off as usize + src.len()].copy_from_slice(src);
    }
}

impl Memory for Bufs {
    fn size(&self, h: u32) -> Option<u64> {
        let i = (h as usize).checked_sub(1)?;
        self.0.borrow().get(i).map(|b| b.len() as u64)
    }
    fn load_u32(&self, h: u32, off: u64) -> u32 {
        assert_eq!(off % 4, 0);
        u32::from_le_bytes(self.get(h, off, 4).try_into().expect("4 bytes"))
    }
    fn store_u32(&self, h: u32, off: u64, value: u32) {
        assert_eq!(off % 4, 0);
        self.put(h, off, &value.to_le_bytes());
    }
    fn fetch_add_u32(&self, _: u32, _: u64, _: u32) -> u32 {
        unreachable!("DFA_SCAN does not add")
    }
    fn cas_u32(&self, _: u32, _: u64, _: u32, _: u32) -> u32 {
        unreachable!("DFA_SCAN does not swap")
    }
    fn read(&self, h: u32, off: u64, dst: &mut [u8]) {
        dst.copy_from_slice(&self.get(h, off, dst.len()));
    }
    fn write(&self, h: u32, off: u64, src: &[u8]) {
        self.put(h, off, src);
    }
}

fn rule_set() -> RuleSet {
    let mut s = RuleSet::new();
    let rules: [(&str, Pattern, bool); 5] = [
        ("ab", Pattern::Literal(b"ab".to_vec()), false),
        ("b", Pattern::Literal(b"B".to_vec()), true),
        ("a+b", Pattern::Regex("a+b".into()), false),
        (
            "word",
            Pattern::Regex(r"(?-u:\b)[ab]{2}(?-u:\b)".into()),
            false,
        ),
        ("end", Pattern::Regex(r"b$".into()), false),
    ];
    for (name, pattern, case_insensitive) in rules {
        s.push(Rule {
            name: name.into(),
            pattern,
            case_insensitive,
        })
        .expect("valid");
    }
    s
}

#[derive(Debug, Clone)]
enum StartArg {
    Code(u16),
    Row(prop::sample::Index),
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(500)))]

    #[test]
    fn scan_slice_matches_the_reference_dfa_scan(
        data in prop::collection::vec(prop::sample::select(b"aAbB c".to_vec()), 0..60),
        range in (any::<prop::sample::Index>(), any::<prop::sample::Index>()),
        report_from in 0u32..64,
        eoi in any::<bool>(),
        start in prop_oneof![(0u16..=256).prop_map(StartArg::Code), any::<prop::sample::Index>().prop_map(StartArg::Row)],
        capacity in 0u32..12,
        hits_off in 0u32..4,
        max_group_rules in 1usize..6,
    ) {
        let c = compile(&rule_set(), &Limits { max_group_rules, ..Limits::default() }).expect("compiles");
        let (x, y) = (range.0.index(data.len() + 1), range.1.index(data.len() + 1));
        let (off, len) = (x.min(y), x.max(y) - x.min(y));
        for g in &c.groups {
            let states = g.table[2] as usize;
            let stride = g.table[3];
            let (start_word, start) = match &start {
                StartArg::Code(code) => (START_LOOKBEHIND | u32::from(*code), Start::LookBehind(*code)),
                StartArg::Row(i) => {
                    let row = i.index(states) as u32 * stride;
                    (row, Start::Row(row))
                }
            };
            let mut want = Vec::new();
            let row = scan_slice(&g.table, &data[off..off + len], start, report_from, eoi, &mut want);

            let table: Vec<u8> = g.table.iter().flat_map(|w| w.to_le_bytes()).collect();
            let hits_off = 4 * hits_off;
            let mut region = vec![0xA5u8; (hits_off + 8 + 8 * capacity) as usize];
            region[hits_off as usize..hits_off as usize + 4].copy_from_slice(&capacity.to_le_bytes());
            region[hits_off as usize + 4..hits_off as usize + 8].fill(0);
            let mem = Bufs(RefCell::new(vec![table, data.clone(), region.clone()]));
            let report = report_from | if eoi { REPORT_EOI } else { 0 };
            let got = vyre_isa::dfa::scan(&mem, &[1, 2, off as u32, len as u32, report, start_word, 3, hits_off])
                .expect("a valid table and range do not fault");
            let stored = want.len().min(capacity as usize);
            prop_assert_eq!(got, [want.len() as u32, row, stored as u32, 0]);
            let mut expect = region;
            // Header word 1: the state after the first min(report_from, len) bytes, by a
            // scan of those bytes alone.
            let n = (report_from as usize).min(len);
            let at_report = scan_slice(&g.table, &data[off..off + n], start, u32::MAX, false, &mut Vec::new());
            expect[hits_off as usize + 4..hits_off as usize + 8].copy_from_slice(&at_report.to_le_bytes());
            for (k, &(end, p)) in want.iter().take(stored).enumerate() {
                let at = (u64::from(hits_off) + HIT_HEADER_BYTES) as usize + 8 * k;
                expect[at..at + 4].copy_from_slice(&end.to_le_bytes());
                expect[at + 4..at + 8].copy_from_slice(&p.to_le_bytes());
            }
            prop_assert_eq!(&mem.0.borrow()[2], &expect);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(300)))]

    /// A slot over a table set of some of the groups (in any order, with any pattern
    /// bases) equals `scan_slice` of each member in turn: hits in member order with the
    /// bases added, cut to the capacity; r1 and header word 1 are the last member's.
    #[test]
    fn a_table_set_scans_like_its_members_one_after_another(
        data in prop::collection::vec(prop::sample::select(b"aAbB c".to_vec()), 0..60),
        range in (any::<prop::sample::Index>(), any::<prop::sample::Index>()),
        report_from in 0u32..64,
        eoi in any::<bool>(),
        code in 0u16..=256,
        capacity in 0u32..24,
        picks in prop::collection::vec((any::<prop::sample::Index>(), 0u32..1000), 1..5),
    ) {
        let c = compile(&rule_set(), &Limits { max_group_rules: 1, ..Limits::default() }).expect("compiles");
        let (x, y) = (range.0.index(data.len() + 1), range.1.index(data.len() + 1));
        let (off, len) = (x.min(y), x.max(y) - x.min(y));
        let members: Vec<(&[u32], u32)> = picks
            .iter()
            .map(|(i, base)| (c.groups[i.index(c.groups.len())].table.as_slice(), *base))
            .collect();
        let set = vyre_isa::dfa::table_set(&members).expect("a set");
        let start = Start::LookBehind(code);
        let (mut want, mut found, mut last, mut at_report) = (Vec::new(), 0u32, 0, 0);
        for &(table, base) in &members {
            let mut hits = Vec::new();
            last = scan_slice(table, &data[off..off + len], start, report_from, eoi, &mut hits);
            found += hits.len() as u32;
            want.extend(hits.into_iter().map(|(e, p)| (e, p + base)));
            let n = (report_from as usize).min(len);
            at_report = scan_slice(table, &data[off..off + n], start, u32::MAX, false, &mut Vec::new());
        }
        let table: Vec<u8> = set.iter().flat_map(|w| w.to_le_bytes()).collect();
        let mut region = vec![0xA5u8; (8 + 8 * capacity) as usize];
        region[..4].copy_from_slice(&capacity.to_le_bytes());
        let mem = Bufs(RefCell::new(vec![table, data.clone(), region.clone()]));
        let report = report_from | if eoi { REPORT_EOI } else { 0 };
        let start_word = START_LOOKBEHIND | u32::from(code);
        let got = vyre_isa::dfa::scan(&mem, &[1, 2, off as u32, len as u32, report, start_word, 3, 0])
            .expect("a valid set and range do not fault");
        let stored = want.len().min(capacity as usize);
        prop_assert_eq!(got, [found, last, stored as u32, 0]);
        let mut expect = region;
        expect[4..8].copy_from_slice(&at_report.to_le_bytes());
        for (k, &(end, p)) in want.iter().take(stored).enumerate() {
            let at = HIT_HEADER_BYTES as usize + 8 * k;
            expect[at..at + 4].copy_from_slice(&end.to_le_bytes());
            expect[at + 4..at + 8].copy_from_slice(&p.to_le_bytes());
        }
        prop_assert_eq!(&mem.0.borrow()[2], &expect);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(500)))]

    /// A table that `check_table` accepts never faults in the reference scan from a
    /// look-behind start, and `scan_slice` (which does not check) gives the same words.
    #[test]
    fn check_table_accepts_only_tables_the_scan_runs(
        word in any::<prop::sample::Index>(),
        value in prop_oneof![0u32..64, any::<u32>(), Just(vyre_isa::dfa::MATCH_BIT | 5)],
        data in prop::collection::vec(prop::sample::select(b"aAbB c".to_vec()), 0..40),
        code in 0u16..=256,
    ) {
        let c = compile(&rule_set(), &Limits::default()).expect("compiles");
        for g in &c.groups {
            prop_assert_eq!(check_table(&g.table), Ok(()));
            let mut t = g.table.clone();
            let i = word.index(t.len());
            t[i] = value;
            if check_table(&t).is_err() {
                continue;
            }
            let mut want = Vec::new();
            let row = scan_slice(&t, &data, Start::LookBehind(code), 0, true, &mut want);
            let bytes: Vec<u8> = t.iter().flat_map(|w| w.to_le_bytes()).collect();
            let mut region = vec![0u8; 8 + 8 * 64];
            region[..4].copy_from_slice(&64u32.to_le_bytes());
            let mem = Bufs(RefCell::new(vec![bytes, data.clone(), region]));
            let got = vyre_isa::dfa::scan(&mem, &[1, 2, 0, data.len() as u32, REPORT_EOI, START_LOOKBEHIND | u32::from(code), 3, 0]);
            prop_assert_eq!(got, Ok([want.len() as u32, row, want.len().min(64) as u32, 0]));
        }
    }
}

#[test]
fn check_table_names_the_bad_word() {
    let c = compile(&rule_set(), &Limits::default()).expect("compiles");
    let t = &c.groups[0].table;
    let (states, stride) = (t[2] as usize, t[3] as usize);
    let bad = |i: usize, v: u32| {
        let mut x = t.clone();
        x[i] = v;
        check_table(&x).map_err(|e| e.word)
    };
    assert_eq!(bad(0, 0), Err(0));
    assert_eq!(bad(3, 1), Err(3));
    assert_eq!(bad(8, 0xFFFF_FFFF), Err(8));
    assert_eq!(
        bad(72, 1),
        Err(72),
        "a start row that is not a multiple of the stride"
    );
    assert_eq!(bad(329, (states * stride) as u32), Err(329));
    let mi = 329 + states * stride;
    assert_eq!(bad(mi, t[6]), Err(mi), "a match entry past the list");
    assert_eq!(check_table(&t[..t.len() - 1]).map_err(|e| e.word), Err(6));
}

/// Proptest cases: `PROPTEST_CASES` when set (for long runs), else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
