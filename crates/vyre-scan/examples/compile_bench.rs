//! Compile time and table size for word lists and secret-like regexes, plus a host scan
//! rate and an agreement check against `reference_matches`.
//!
//! `cargo run --release -p vyre-scan --example compile_bench [-- GROUP_RULES]`
//! Results: `bench/results/scan-compile.md`.
//!
//! Words are generated deterministically (xorshift over syllables, 3..=12 bytes); the
//! machine has no /usr/share/dict. Secrets: 20 regexes of the kind secret scanners use.

use std::time::Instant;
use vyre_isa::dfa::START_TEXT;
use vyre_scan::{
    compile, reference_matches, scan_slice, Compiled, Limits, Pattern, Rule, RuleSet, Start,
};

/// Deterministic pseudo-random numbers (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const SYLLABLES: &[&str] = &[
    "an", "be", "con", "de", "er", "ing", "in", "ly", "ment", "ter", "re", "st", "tion", "ab",
    "ou", "ch", "sh", "al", "ar", "or", "ic", "ate", "pro", "un", "ex", "per", "com", "ful",
];

fn words(n: usize, seed: u64) -> Vec<String> {
    let mut rng = Rng(seed);
    let mut out = std::collections::BTreeSet::new();
    while out.len() < n {
        let mut w = String::new();
        while w.len() < 3 || (w.len() < 12 && rng.below(3) != 0) {
            w.push_str(SYLLABLES[rng.below(SYLLABLES.len())]);
        }
        out.insert(w);
    }
    out.into_iter().collect()
}

const SECRETS: &[(&str, &str)] = &[
    ("aws-access-key", r"AKIA[0-9A-Z]{16}"),
    (
        "aws-secret",
        r#"(?i)aws(?:.{0,20})?(?-i)['"][0-9a-zA-Z/+]{40}['"]"#,
    ),
    ("github-pat", r"ghp_[A-Za-z0-9]{36}"),
    ("github-oauth", r"gho_[A-Za-z0-9]{36}"),
    ("github-app", r"(?:ghu|ghs)_[A-Za-z0-9]{36}"),
    ("github-fine", r"github_pat_[A-Za-z0-9]{22}_[A-Za-z0-9]{59}"),
    (
        "private-key",
        r"-----BEGIN (?:RSA|EC|DSA|OPENSSH|PGP) PRIVATE KEY(?: BLOCK)?-----",
    ),
    (
        "jwt",
        r"eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}",
    ),
    (
        "generic-api-key",
        r#"(?i)api[_-]?key\s*[:=]\s*['"][A-Za-z0-9]{16,}"#,
    ),
    ("slack-token", r"xox[baprs]-[0-9A-Za-z-]{10,48}"),
    (
        "slack-webhook",
        r"https://hooks\.slack\.com/services/T[A-Z0-9]{8}/B[A-Z0-9]{8}/[A-Za-z0-9]{24}",
    ),
    ("stripe-key", r"(?:sk|rk)_live_[0-9a-zA-Z]{24}"),
    ("google-api", r"AIza[0-9A-Za-z_-]{35}"),
    ("twilio", r"SK[0-9a-fA-F]{32}"),
    ("sendgrid", r"SG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}"),
    ("npm-token", r"npm_[A-Za-z0-9]{36}"),
    (
        "password-assign",
        r#"(?i)passw(?:or)?d\s*[:=]\s*['"][^'"\s]{8,}['"]"#,
    ),
    (
        "basic-auth-url",
        r"[a-z]{3,10}://[^/\s:@]{3,20}:[^/\s:@]{3,20}@[a-zA-Z0-9.-]+",
    ),
    (
        "heroku",
        r"(?i)heroku(?:.{0,20})?[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
    ),
    ("gitlab-pat", r"glpat-[0-9a-zA-Z_-]{20}"),
];

/// Secret-like strings planted in the text so the secret rules have matches to agree on.
const PLANTED: &[&str] = &[
    "AKIAABCDEFGHIJKLMNOP",
    "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
    "-----BEGIN RSA PRIVATE KEY-----",
    "api_key = 'abcdefghijklmnop1234'",
    "eyJhbGciOiJIUzI1.eyJzdWIiOiIxMjM0.SflKxwRJSMeKKF2QT4",
    "glpat-abcdefghij0123456789",
    "SK0123456789abcdef0123456789abcdef",
    "npm_abcdefghijklmnopqrstuvwxyz0123456789",
    "password = \"hunter22hunter\"",
    "https://user:secretpw@example.com",
];

/// Scans `data` with every group; returns sorted (end, rule).
fn scan_all(c: &Compiled, data: &[u8]) -> Vec<(usize, u32)> {
    let mut out = Vec::new();
    let mut hits = Vec::new();
    for g in &c.groups {
        hits.clear();
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

fn text(len: usize, words: &[String], rng: &mut Rng) -> Vec<u8> {
    let mut t = Vec::with_capacity(len + 16);
    while t.len() < len {
        match rng.below(8) {
            0 if rng.below(16) == 0 => {
                t.extend_from_slice(PLANTED[rng.below(PLANTED.len())].as_bytes());
                t.push(b' ');
            }
            0 => t.extend_from_slice(b"\n"),
            1 => {
                let w = &words[rng.below(words.len())];
                t.extend_from_slice(w.as_bytes());
                t.push(b' ');
            }
            _ => {
                const NOISE: &[u8] = b"abcdeinorstAKIghp_=:'\" 0123456789";
                for _ in 0..rng.below(10) {
                    t.push(NOISE[rng.below(NOISE.len())]);
                }
                t.push(b' ');
            }
        }
    }
    t.truncate(len);
    t
}

fn run(label: &str, rules: &RuleSet, limits: &Limits, corpus: &[String]) {
    let t0 = Instant::now();
    let c = compile(rules, limits).expect("compiles");
    let secs = t0.elapsed().as_secs_f64();
    let bytes: usize = c.groups.iter().map(|g| g.table.len() * 4).sum();
    let states: u64 = c.groups.iter().map(|g| u64::from(g.table[2])).sum();
    let max_stride = c.groups.iter().map(|g| g.table[3]).max().unwrap_or(0);
    let mut rng = Rng(7);
    let sample = text(64 << 10, corpus, &mut rng);
    let got = scan_all(&c, &sample);
    let want = reference_matches(rules, &sample).expect("reference");
    let agree = if got == want { "yes" } else { "NO" };
    let big = text(8 << 20, corpus, &mut rng);
    let t1 = Instant::now();
    let n = scan_all(&c, &big).len();
    let rate = big.len() as f64 / t1.elapsed().as_secs_f64() / 1e6;
    println!(
        "| {label} | {} | {} | {secs:.3} | {:.2} | {states} | {max_stride} | {} | {agree} | {rate:.0} |",
        rules.len(),
        c.groups.len(),
        bytes as f64 / (1 << 20) as f64,
        want.len(),
    );
    let _ = n;
    if c.groups.len() > 1 {
        let sizes: Vec<String> = c
            .groups
            .iter()
            .map(|g| {
                format!(
                    "{}×{:.0}K",
                    g.rules.len(),
                    (g.table.len() * 4) as f64 / 1024.0
                )
            })
            .collect();
        println!("\ngroups (rules×table): {}\n", sizes.join(", "));
    }
}

fn word_set(ws: &[String]) -> RuleSet {
    let mut s = RuleSet::new();
    for w in ws {
        s.push(Rule {
            name: w.clone(),
            pattern: Pattern::Literal(w.as_bytes().to_vec()),
            case_insensitive: false,
        })
        .expect("word rule");
    }
    s
}

fn main() {
    let group_rules: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("GROUP_RULES is a number"))
        .unwrap_or(Limits::default().max_group_rules);
    let limits = Limits {
        max_group_rules: group_rules,
        ..Limits::default()
    };
    let all = words(10_000, 0x5eed);
    println!("max_group_rules = {group_rules}");
    println!();
    println!("| set | rules | groups | compile s | table MiB | states | max stride | matches in 64 KiB | agrees with reference | host scan MB/s (8 MiB) |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for n in [10, 1_000, 10_000] {
        let mut rng = Rng(n as u64);
        let mut pick: Vec<String> = all.clone();
        for i in (1..pick.len()).rev() {
            pick.swap(i, rng.below(i + 1));
        }
        pick.truncate(n);
        run(&format!("{n} words"), &word_set(&pick), &limits, &pick);
    }
    println!();
    println!("Secret-like regexes, each alone:");
    println!();
    println!("| rule | compile s | table KiB | states | result |");
    println!("| --- | --- | --- | --- | --- |");
    let mut ok = RuleSet::new();
    for (name, re) in SECRETS {
        let rule = Rule {
            name: name.to_string(),
            pattern: Pattern::Regex(re.to_string()),
            case_insensitive: false,
        };
        let mut one = RuleSet::new();
        one.push(rule.clone()).expect("secret rule");
        let t0 = Instant::now();
        let r = compile(&one, &limits);
        let secs = t0.elapsed().as_secs_f64();
        match r {
            Ok(c) => {
                let g = &c.groups[0];
                println!(
                    "| {name} | {secs:.3} | {:.1} | {} | ok |",
                    (g.table.len() * 4) as f64 / 1024.0,
                    g.table[2]
                );
                ok.push(rule).expect("secret rule");
            }
            Err(e) => println!("| {name} | {secs:.3} | - | - | {e} |"),
        }
    }
    println!();
    println!("| set | rules | groups | compile s | table MiB | states | max stride | matches in 64 KiB | agrees with reference | host scan MB/s (8 MiB) |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    run("secret regexes that compile", &ok, &limits, &all[..100]);
}
