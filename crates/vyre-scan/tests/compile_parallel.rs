//! The compiler builds independent groups on rayon's threads and tries regex unions beside
//! their halves: its output must not depend on the threads. Several compiles of rule sets
//! that split (literal groups over their size limit, regex unions over their cap) give the
//! same groups in the same order, every rule in exactly one group, literal groups first with
//! their rules ascending, and each group's matches those of the independent engine.

use vyre_isa::dfa::START_TEXT;
use vyre_scan::{compile, reference_matches, scan_slice, Limits, Pattern, Rule, RuleSet, Start};

fn rule_set() -> RuleSet {
    let mut s = RuleSet::new();
    for i in 0..400 {
        s.push(Rule {
            name: format!("w{i}"),
            pattern: Pattern::Literal(format!("word{i:03}x{}", i * 7919 % 1000).into_bytes()),
            case_insensitive: false,
        })
        .expect("a literal");
    }
    // Each of these is small alone; a union of the four multiplies their states past its cap
    // (it fails and is halved).
    for c in ["a", "b", "c", "d"] {
        s.push(Rule {
            name: format!("m{c}"),
            pattern: Pattern::Regex(format!("[a-h]*{c}[a-h]{{6}}z")),
            case_insensitive: false,
        })
        .expect("a regex");
    }
    for (i, p) in ["key=[A-Za-z]+", "x[0-9]{2,5}y", "id-[0-9a-f]{8}"]
        .iter()
        .enumerate()
    {
        s.push(Rule {
            name: format!("r{i}"),
            pattern: Pattern::Regex((*p).into()),
            case_insensitive: false,
        })
        .expect("a regex");
    }
    s
}

#[test]
fn compiles_are_the_same_whatever_the_threads_did() {
    let rules = rule_set();
    let limits = Limits {
        max_literal_table_bytes: 96 << 10,
        ..Limits::default()
    };
    let first = compile(&rules, &limits).expect("compiles");
    let literal_groups = first
        .groups
        .iter()
        .take_while(|g| g.rules.iter().all(|&r| r < 400))
        .count();
    assert!(
        literal_groups > 1,
        "the literals split: {literal_groups} group(s)"
    );
    // The union of the unbounded rules (the four and `key=`) failed and was halved.
    let holding = first
        .groups
        .iter()
        .filter(|g| g.rules.iter().any(|&r| (400..404).contains(&r)))
        .count();
    let lists: Vec<_> = first.groups.iter().map(|g| &g.rules).collect();
    assert!(holding >= 2, "{lists:?}");
    let literal_rules: Vec<u32> = first.groups[..literal_groups]
        .iter()
        .flat_map(|g| g.rules.iter().copied())
        .collect();
    assert_eq!(literal_rules, (0..400).collect::<Vec<u32>>());
    let mut all: Vec<u32> = first.groups.iter().flat_map(|g| g.rules.clone()).collect();
    all.sort_unstable();
    assert_eq!(all, (0..rules.len() as u32).collect::<Vec<u32>>());
    for _ in 0..4 {
        assert_eq!(compile(&rules, &limits).expect("compiles"), first);
    }
    // Every group finds what the independent engine finds for its rules.
    let mut text = Vec::new();
    for i in 0..400u32 {
        text.extend_from_slice(format!("..word{i:03}x{} ", i * 7919 % 1000).as_bytes());
        text.extend_from_slice(b"abcdefgz bcdefghz dabcdefz key=Abc x123y id-0123abcd ");
    }
    let mut want = reference_matches(&rules, &text).expect("the reference runs");
    want.sort_unstable();
    let mut got = Vec::new();
    for g in &first.groups {
        let mut found = Vec::new();
        let start = Start::LookBehind(START_TEXT as u16);
        scan_slice(&g.table, &text, start, 0, true, &mut found);
        got.extend(
            found
                .into_iter()
                .map(|(end, p)| (end as usize, g.rules[p as usize])),
        );
    }
    got.sort_unstable();
    assert!(!got.is_empty());
    assert_eq!(got, want);
}
