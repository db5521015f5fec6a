//! Compiled tables scanned with `scan_slice` find exactly what the independent reference
//! engine finds: whole inputs, windows with overlap, and carried state.

use proptest::prelude::*;
use vyre_isa::dfa::START_TEXT;
use vyre_scan::{
    check_table, compile, reference_matches, scan_slice, Compiled, Limits, Pattern, Rule, RuleSet,
    Start,
};

/// All matches of a compiled set, scanning each group over the whole input at once.
fn scan_whole(c: &Compiled, data: &[u8]) -> Vec<(usize, u32)> {
    let mut out = Vec::new();
    for g in &c.groups {
        let mut hits = Vec::new();
        scan_slice(
            &g.table,
            data,
            Start::LookBehind(START_TEXT as u16),
            0,
            true,
            &mut hits,
        );
        out.extend(hits.iter().map(|&(e, p)| (e as usize, g.rules[p as usize])));
    }
    out.sort_unstable();
    out
}

/// All matches, scanning in windows that own ends `[cuts[k], cuts[k+1])`: bounded groups
/// rescan `max_len` bytes before the window with `report_from`, unbounded ones carry the
/// state row.
fn scan_windows(c: &Compiled, data: &[u8], cuts: &[usize]) -> Vec<(usize, u32)> {
    let mut out = Vec::new();
    for g in &c.groups {
        let mut row = None;
        for w in cuts.windows(2) {
            let (a, b) = (w[0], w[1]);
            let last = b == data.len();
            let mut hits = Vec::new();
            let s = match g.max_len {
                Some(l) => a.saturating_sub(l as usize),
                None => a,
            };
            let start = match (g.max_len, row) {
                (None, Some(r)) => Start::Row(r),
                _ if s == 0 => Start::LookBehind(START_TEXT as u16),
                _ => Start::LookBehind(u16::from(data[s - 1])),
            };
            let r = scan_slice(
                &g.table,
                &data[s..b],
                start,
                (a - s) as u32,
                last,
                &mut hits,
            );
            row = Some(r);
            out.extend(
                hits.iter()
                    .map(|&(e, p)| (s + e as usize, g.rules[p as usize])),
            );
        }
    }
    out.sort_unstable();
    out
}

fn set(rules: &[(&str, Pattern, bool)]) -> RuleSet {
    let mut s = RuleSet::new();
    for (name, pattern, ci) in rules {
        s.push(Rule {
            name: name.to_string(),
            pattern: pattern.clone(),
            case_insensitive: *ci,
        })
        .expect("valid rule");
    }
    s
}

fn re(s: &str) -> Pattern {
    Pattern::Regex(s.to_string())
}

fn lit(s: &[u8]) -> Pattern {
    Pattern::Literal(s.to_vec())
}

#[test]
fn overlapping_literals_and_regexes_match_the_reference() {
    let rules = set(&[
        ("he", lit(b"he"), false),
        ("hers", lit(b"hers"), false),
        ("she", lit(b"SHE"), true),
        ("aa", lit(b"aa"), false),
        ("word", re(r"(?-u:\b)[a-z]+(?-u:\b)"), false),
        ("end", re(r"s$"), false),
        ("start", re(r"^us"), false),
        ("digits", re(r"[0-9]{2,3}"), false),
    ]);
    let c = compile(&rules, &Limits::default()).expect("compiles");
    for g in &c.groups {
        check_table(&g.table).expect("well formed");
    }
    let data = b"ushers aaaa sHe 12345 hers";
    let want = reference_matches(&rules, data).expect("reference");
    assert!(want.len() >= 18, "the input has many matches: {want:?}");
    assert_eq!(scan_whole(&c, data), want);
    for k in 1..data.len() {
        assert_eq!(
            scan_windows(&c, data, &[0, k, data.len()]),
            want,
            "cut at {k}"
        );
    }
}

/// A random regex from a small grammar over the test alphabet.
fn regex_strategy() -> impl Strategy<Value = String> {
    let atom = prop_oneof![
        4 => prop::sample::select(vec!["a", "b", "c", "A", " ", "-", "ab", "ba"]).prop_map(String::from),
        1 => prop::sample::select(vec![
            "[ab]", "[a-c]", "[^a]", ".", "(?-u:\\b)", "(?-u:\\B)", "\\s", "[[:upper:]]",
            "(?-u:\\xFF)", "é",
        ])
        .prop_map(String::from),
    ];
    let piece = (
        atom,
        prop::sample::select(vec!["", "", "", "?", "+", "*", "{2}", "{1,3}"]),
    )
        .prop_map(|(a, q)| {
            if q.is_empty() {
                a
            } else {
                format!("(?:{a}){q}")
            }
        });
    let seq = prop::collection::vec(piece, 1..4).prop_map(|v| v.concat());
    let alt = prop::collection::vec(seq, 1..3).prop_map(|v| v.join("|"));
    (
        alt,
        prop::sample::select(vec!["", "", "", "^", "(?m)^"]),
        prop::sample::select(vec!["", "", "", "$", "(?m)$"]),
    )
        .prop_map(|(body, pre, post)| format!("{pre}(?:{body}){post}"))
}

fn rule_strategy() -> impl Strategy<Value = (Pattern, bool)> {
    prop_oneof![
        (
            prop::collection::vec(prop::sample::select(b"abcAB -\xff\xc3".to_vec()), 1..4),
            any::<bool>()
        )
            .prop_map(|(b, ci)| (Pattern::Literal(b), ci)),
        (regex_strategy(), prop::bool::weighted(0.2)).prop_map(|(r, ci)| (Pattern::Regex(r), ci)),
    ]
}

fn data_strategy() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        10 => prop::sample::select(b"abcAB -\n".to_vec()),
        1 => any::<u8>(),
        1 => prop::sample::select(vec![0xC3u8, 0xA9, 0xFF]),
    ];
    prop::collection::vec(byte, 0..80)
}

/// A rule set from random candidates, skipping those `RuleSet` rightly refuses (empty
/// matches); returns `None` when nothing is left.
fn random_set(cands: Vec<(Pattern, bool)>) -> Option<RuleSet> {
    let mut s = RuleSet::new();
    for (i, (pattern, ci)) in cands.into_iter().enumerate() {
        let _ = s.push(Rule {
            name: format!("r{i}"),
            pattern,
            case_insensitive: ci,
        });
    }
    (!s.is_empty()).then_some(s)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(300)))]

    #[test]
    fn windows_and_carried_state_match_the_reference(
        cands in prop::collection::vec(rule_strategy(), 1..6),
        data in data_strategy(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..4),
        group_rules in 1usize..4,
    ) {
        let Some(rules) = random_set(cands) else { return Ok(()) };
        let limits = Limits { max_group_rules: group_rules, ..Limits::default() };
        let c = compile(&rules, &limits).expect("checked rules compile");
        for g in &c.groups {
            prop_assert_eq!(check_table(&g.table), Ok(()));
        }
        let want = reference_matches(&rules, &data).expect("reference");
        prop_assert_eq!(&scan_whole(&c, &data), &want);
        let mut cut: Vec<usize> = cuts.iter().map(|i| i.index(data.len() + 1)).collect();
        cut.push(0);
        cut.push(data.len());
        cut.sort_unstable();
        cut.dedup();
        if cut.len() == 1 {
            cut.push(0);
        }
        prop_assert_eq!(scan_windows(&c, &data, &cut), want);
    }
}

/// Deterministic pseudo-words (xorshift over syllables).
fn words(n: usize) -> Vec<String> {
    const SYL: &[&str] = &[
        "an", "be", "con", "de", "er", "ing", "ly", "ter", "re", "st", "ab", "ou", "x",
    ];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut out = std::collections::BTreeSet::new();
    while out.len() < n {
        let mut w = String::new();
        for _ in 0..2 + (x % 4) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.push_str(SYL[(x % SYL.len() as u64) as usize]);
        }
        out.insert(w);
    }
    out.into_iter().collect()
}

#[test]
fn two_thousand_rules_compile_and_agree_with_the_reference() {
    let ws = words(2000);
    let mut rules = RuleSet::new();
    for (i, w) in ws.iter().enumerate() {
        let pattern = if i % 50 == 0 {
            Pattern::Regex(format!("(?-u:\\b){w}[0-9]+"))
        } else {
            Pattern::Literal(w.as_bytes().to_vec())
        };
        rules
            .push(Rule {
                name: format!("w{i}"),
                pattern,
                case_insensitive: i % 3 == 0,
            })
            .expect("valid");
    }
    let c = compile(&rules, &Limits::default()).expect("compiles");
    assert!(
        c.groups.len() >= 3,
        "literal, folded literal and regex groups"
    );
    let mut text = Vec::new();
    for (i, w) in ws.iter().enumerate().step_by(7) {
        text.extend_from_slice(
            if i % 2 == 0 {
                w.to_uppercase()
            } else {
                w.clone()
            }
            .as_bytes(),
        );
        text.extend_from_slice(if i % 5 == 0 { b"12 " } else { b" " });
    }
    let want = reference_matches(&rules, &text).expect("reference");
    assert!(want.len() > 500, "{} matches", want.len());
    assert_eq!(scan_whole(&c, &text), want);
    let cuts: Vec<usize> = (0..=text.len()).step_by(97).chain([text.len()]).collect();
    assert_eq!(scan_windows(&c, &text, &cuts), want);
}

#[test]
fn groups_over_the_table_limit_are_halved_and_still_agree() {
    let mut rules = RuleSet::new();
    for (i, w) in words(300).iter().enumerate() {
        rules
            .push(Rule {
                name: format!("l{i}"),
                pattern: Pattern::Literal(w.as_bytes().to_vec()),
                case_insensitive: false,
            })
            .expect("valid");
    }
    for (i, re) in [
        "a[bc]{1,6}d",
        "(?-u:\\b)st[a-z]{2,5}",
        "x+y",
        "[0-9]{3}-[0-9]{4}",
        "con[a-z ]{0,4}er",
    ]
    .iter()
    .enumerate()
    {
        rules
            .push(Rule {
                name: format!("r{i}"),
                pattern: Pattern::Regex(re.to_string()),
                case_insensitive: false,
            })
            .expect("valid");
    }
    let whole = compile(&rules, &Limits::default()).expect("compiles");
    let limits = Limits {
        max_table_bytes: 48 << 10,
        max_literal_table_bytes: 48 << 10,
        ..Limits::default()
    };
    let split = compile(&rules, &limits).expect("compiles in halves");
    // Literal groups have their own limit: lowering it alone splits only them.
    let literals_split = compile(
        &rules,
        &Limits {
            max_literal_table_bytes: 48 << 10,
            ..Limits::default()
        },
    )
    .expect("compiles");
    let literal_groups = |c: &Compiled| c.groups.iter().filter(|g| g.rules[0] < 300).count();
    assert_eq!(literal_groups(&whole), 1);
    assert!(literal_groups(&literals_split) > 2);
    assert_eq!(
        literals_split.groups.len() - literal_groups(&literals_split),
        whole.groups.len() - 1,
        "regex groups as before"
    );

    assert!(
        split.groups.len() > whole.groups.len() + 2,
        "{} groups",
        split.groups.len()
    );
    let mut seen: Vec<u32> = split.groups.iter().flat_map(|g| g.rules.clone()).collect();
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..rules.len() as u32).collect::<Vec<_>>(),
        "every rule in one group"
    );
    for g in &split.groups {
        assert!(g.table.len() * 4 <= 48 << 10);
        assert_eq!(
            g.max_len.is_none(),
            g.rules.contains(&302),
            "only x+y is unbounded"
        );
    }
    let text = text_for_split();
    let want = reference_matches(&rules, &text).expect("reference");
    assert!(want.len() > 200);
    assert_eq!(scan_whole(&split, &text), want);
    assert_eq!(scan_whole(&literals_split, &text), want);
    assert_eq!(scan_whole(&whole, &text), want);
}

fn text_for_split() -> Vec<u8> {
    b"abcbd stable consider xxy 555-1234 beerstabout contender "
        .iter()
        .copied()
        .cycle()
        .take(3000)
        .collect()
}

/// Proptest cases: `PROPTEST_CASES` when set (for long runs), else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
