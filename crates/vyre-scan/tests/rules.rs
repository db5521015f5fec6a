//! The rule file format and every way a rule or a rule set is refused: each message names
//! the file and the rule and says what to change.

use vyre_scan::{compile, CompileErrorKind, Limits, Pattern, Rule, RuleErrorKind, RuleSet};

fn parse_err(text: &str) -> (RuleErrorKind, String) {
    let e = RuleSet::parse_toml(text, "rules.toml").expect_err("the file is refused");
    let msg = e.to_string();
    assert!(msg.starts_with("rules.toml: "), "names the file: {msg}");
    (e.kind().clone(), msg)
}

#[test]
fn a_valid_file_parses_in_order() {
    let s = RuleSet::parse_toml(
        r#"
[[rule]]
name = "aws"
regex = "AKIA[0-9A-Z]{16}"

[[rule]]
name = "pw"
literal = "password"
case_insensitive = true

[[rule]]
name = "quote"
literal = "a\"b\\c"
case_insensitive = false
"#,
        "rules.toml",
    )
    .expect("valid");
    assert_eq!(s.len(), 3);
    assert_eq!(
        s.rules()[0],
        Rule {
            name: "aws".into(),
            pattern: Pattern::Regex("AKIA[0-9A-Z]{16}".into()),
            case_insensitive: false
        }
    );
    assert_eq!(s.rules()[1].pattern, Pattern::Literal(b"password".to_vec()));
    assert!(s.rules()[1].case_insensitive);
    assert_eq!(s.rules()[2].pattern, Pattern::Literal(b"a\"b\\c".to_vec()));
}

#[test]
fn file_level_errors() {
    let (k, m) = parse_err("[[rule]\nname = 'x'");
    assert!(matches!(k, RuleErrorKind::Toml(_)), "{m}");
    assert!(m.contains("[[rule]]"), "{m}");

    let (k, m) = parse_err("version = 1\n[[rule]]\nname = 'x'\nliteral = 'y'");
    assert_eq!(k, RuleErrorKind::UnknownTopKey("version".into()));
    assert!(
        m.contains("`version`") && m.contains("only [[rule]]"),
        "{m}"
    );

    let (k, m) = parse_err("rule = 'x'");
    assert_eq!(k, RuleErrorKind::NotRuleList);
    assert!(m.contains("[[rule]] table"), "{m}");

    let (k, m) = parse_err("# nothing here\n");
    assert_eq!(k, RuleErrorKind::Empty);
    assert!(m.contains("add at least one [[rule]]"), "{m}");

    let (k, _) = parse_err("rule = []");
    assert_eq!(k, RuleErrorKind::Empty);
}

#[test]
fn rule_level_errors_name_the_rule() {
    let cases: &[(&str, RuleErrorKind, &[&str])] = &[
        (
            "[[rule]]\nname = 'a'\nliteral = 'x'\n[[rule]]\nname = 'b'\nregx = 'y'",
            RuleErrorKind::UnknownKey("regx".into()),
            &["rule \"b\" (#2)", "`regx`", "only name, literal, regex and case_insensitive"],
        ),
        (
            "[[rule]]\nliteral = 'x'",
            RuleErrorKind::MissingName,
            &["rule #1", "add name = "],
        ),
        (
            "[[rule]]\nname = 7\nliteral = 'x'",
            RuleErrorKind::WrongType { key: "name".into(), expected: "a string" },
            &["rule #1", "`name` must be a string"],
        ),
        (
            "[[rule]]\nname = 'a'\nliteral = 5",
            RuleErrorKind::WrongType { key: "literal".into(), expected: "a string" },
            &["rule \"a\" (#1)", "`literal` must be a string"],
        ),
        (
            "[[rule]]\nname = 'a'\nregex = ['x']",
            RuleErrorKind::WrongType { key: "regex".into(), expected: "a string" },
            &["rule \"a\"", "`regex` must be a string"],
        ),
        (
            "[[rule]]\nname = 'a'\nliteral = 'x'\ncase_insensitive = 'yes'",
            RuleErrorKind::WrongType { key: "case_insensitive".into(), expected: "true or false" },
            &["rule \"a\"", "true or false"],
        ),
        (
            "[[rule]]\nname = ''\nliteral = 'x'",
            RuleErrorKind::EmptyName,
            &["rule \"\" (#1)", "non-empty name"],
        ),
        (
            "[[rule]]\nname = 'a'",
            RuleErrorKind::MissingPattern,
            &["rule \"a\"", "neither `literal` nor `regex`", "exactly one"],
        ),
        (
            "[[rule]]\nname = 'a'\nliteral = 'x'\nregex = 'y'",
            RuleErrorKind::BothPatterns,
            &["rule \"a\"", "both", "keep exactly one"],
        ),
        (
            "[[rule]]\nname = 'a'\nliteral = 'x'\n[[rule]]\nname = 'b'\nliteral = 'y'\n[[rule]]\nname = 'a'\nregex = 'z'",
            RuleErrorKind::Duplicate { first: 1 },
            &["rule \"a\" (#3)", "duplicate name (also rule #1)", "its own name"],
        ),
        (
            "[[rule]]\nname = 'empty'\nliteral = ''",
            RuleErrorKind::EmptyMatch,
            &["rule \"empty\"", "empty string", "every offset"],
        ),
        (
            "[[rule]]\nname = 'star'\nregex = 'ab*|c?'",
            RuleErrorKind::EmptyMatch,
            &["rule \"star\"", "empty string", "at least one byte"],
        ),
        (
            "[[rule]]\nname = 'wb'\nregex = '\\bfoo'",
            RuleErrorKind::UnicodeWordBoundary,
            &["rule \"wb\"", "Unicode word boundary", "(?-u:\\b)"],
        ),
    ];
    for (text, kind, needles) in cases {
        let (k, m) = parse_err(text);
        assert_eq!(&k, kind, "{text}");
        for n in *needles {
            assert!(m.contains(n), "{m:?} should contain {n:?}");
        }
    }
}

#[test]
fn regex_syntax_errors_and_unsupported_features() {
    for (re, needle) in [
        ("(ab", "unclosed group"),
        ("a(?=b)", "look-around"),
        ("(a)\\1", "backreferences"),
        ("[z-a]", "invalid character class range"),
        ("ab\\p{Nope}", "at bytes 2..10 of the pattern"),
    ] {
        let text = format!("[[rule]]\nname = 'bad'\nregex = '{re}'");
        let (k, m) = parse_err(&text);
        assert!(matches!(k, RuleErrorKind::Syntax(_)), "{re}: {m}");
        assert!(m.contains("rule \"bad\" (#1): invalid regex"), "{m}");
        assert!(m.contains(needle), "{re}: {m:?} should contain {needle:?}");
    }
}

#[test]
fn ascii_word_boundaries_and_anchors_are_accepted() {
    let s = RuleSet::parse_toml(
        "[[rule]]\nname = 'w'\nregex = '(?-u:\\b)foo(?-u:\\B)'\n[[rule]]\nname = 'l'\nregex = '(?m)^x$'",
        "f",
    )
    .expect("valid");
    assert_eq!(s.len(), 2);
}

#[test]
fn load_reads_a_file_and_names_it() {
    let dir = std::env::temp_dir().join(format!("vyre-scan-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let ok = dir.join("ok.toml");
    std::fs::write(&ok, "[[rule]]\nname = 'x'\nliteral = 'y'\n").expect("write");
    assert_eq!(RuleSet::load(&ok).expect("loads").len(), 1);
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[[rule]]\nname = 'x'\n").expect("write");
    let e = RuleSet::load(&bad).expect_err("refused");
    assert!(
        e.to_string()
            .starts_with(&format!("{}: rule \"x\"", bad.display())),
        "{e}"
    );
    let missing = dir.join("missing.toml");
    let e = RuleSet::load(&missing).expect_err("refused");
    assert!(matches!(e.kind(), RuleErrorKind::Io(_)), "{e}");
    assert!(e.to_string().contains("cannot read the rule file"), "{e}");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

#[test]
fn expressions_are_named_e0_e1_and_checked() {
    let mut s = RuleSet::parse_toml("[[rule]]\nname = 'f'\nliteral = 'x'", "f").expect("valid");
    s.push_expr("ab+").expect("valid");
    s.push_expr("c").expect("valid");
    let names: Vec<&str> = s.rules().iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["f", "e0", "e1"]);
    assert_eq!(s.rules()[1].pattern, Pattern::Regex("ab+".into()));
    let e = s.push_expr("x*").expect_err("empty match");
    assert_eq!(e.to_string().split(':').next(), Some("-e"));
    assert!(e.to_string().contains("rule \"e2\" (#4)"), "{e}");
    assert_eq!(e.kind(), &RuleErrorKind::EmptyMatch);
    // A failed expression uses up no name.
    s.push_expr("y").expect("valid");
    assert_eq!(s.rules()[3].name, "e2");
}

#[test]
fn push_checks_names() {
    let mut s = RuleSet::new();
    assert!(s.is_empty());
    let r = |name: &str| Rule {
        name: name.into(),
        pattern: Pattern::Literal(vec![0xFF, 0x00]),
        case_insensitive: false,
    };
    s.push(r("a")).expect("valid");
    let e = s.push(r("a")).expect_err("duplicate");
    assert_eq!(e.kind(), &RuleErrorKind::Duplicate { first: 1 });
    assert_eq!(e.rule().map(|r| r.index), Some(1));
    assert_eq!(s.len(), 1);
}

#[test]
fn an_empty_set_does_not_compile() {
    let e = compile(&RuleSet::new(), &Limits::default()).expect_err("empty");
    assert_eq!(e.kind(), &CompileErrorKind::Empty);
    assert!(e.to_string().contains("-e PATTERN"), "{e}");
}

#[test]
fn a_rule_over_the_size_limits_is_named() {
    // Every end of `(a|b)*a(a|b){k}` needs the last k+1 bytes: 2^(k+1) DFA states.
    let mut s = RuleSet::new();
    s.push(Rule {
        name: "small".into(),
        pattern: Pattern::Regex("xyz".into()),
        case_insensitive: false,
    })
    .expect("valid");
    s.push(Rule {
        name: "blowup".into(),
        pattern: Pattern::Regex("[ab]*a[ab]{14}".into()),
        case_insensitive: false,
    })
    .expect("valid");
    let limits = Limits {
        max_table_bytes: 256 << 10,
        ..Limits::default()
    };
    let e = compile(&s, &limits).expect_err("too large");
    match e.kind() {
        CompileErrorKind::RuleTooLarge { name, reason } => {
            assert_eq!(name, "blowup");
            assert!(
                reason.contains("max_table_bytes (262144 bytes)"),
                "{reason}"
            );
        }
        k => panic!("wrong error {k:?}"),
    }
    let m = e.to_string();
    assert!(
        m.contains("rule \"blowup\" is too large") && m.contains("raise the limit"),
        "{m}"
    );

    let limits = Limits {
        dfa_size_limit: 100_000,
        ..Limits::default()
    };
    let e = compile(&s, &limits).expect_err("too large");
    assert!(
        matches!(e.kind(), CompileErrorKind::RuleTooLarge { name, reason } if name == "blowup" && reason.contains("dfa_size_limit 100000")),
        "{e}"
    );
}
