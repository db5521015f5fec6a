//! `scan_slice` gives bit-for-bit what the reference DFA_SCAN (`vyre_isa::dfa::scan`)
//! gives on compiled tables: result words, hit region (including a region too small for
//! every hit: r0 > r2 and only K stored), from look-behind codes and explicit rows.

use proptest::prelude::*;
use std::cell::RefCell;
use vyre_isa::dfa::{HIT_HEADER_BYTES, REPORT_EOI, START_LOOKBEHIND};
use vyre_isa::Memory;
use vyre_scan::{compile, scan_slice, Limits, Pattern, Rule, RuleSet, Start};

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
    #![proptest_config(ProptestConfig::with_cases(500))]

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
            for (k, &(end, p)) in want.iter().take(stored).enumerate() {
                let at = (u64::from(hits_off) + HIT_HEADER_BYTES) as usize + 8 * k;
                expect[at..at + 4].copy_from_slice(&end.to_le_bytes());
                expect[at + 4..at + 8].copy_from_slice(&p.to_le_bytes());
            }
            prop_assert_eq!(&mem.0.borrow()[2], &expect);
        }
    }
}
