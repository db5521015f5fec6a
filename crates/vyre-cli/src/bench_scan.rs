//! `vyre bench scan`: `vyre scan`'s pipeline on each backend, side by side with ripgrep and
//! regex-automata, on the same corpus and the same rule sets, in one run.
//!
//! * Rule sets are drawn from the corpus itself (identifiers of 5..=24 bytes, fixed seed),
//!   so matches happen: `--rules-counts` literal sets (each a prefix of the next) and one
//!   set of secret-scanning regexes. Each is written as a TOML rule file (loaded the way
//!   `vyre scan --rules` loads it) and as a ripgrep `-f` file.
//! * Throughput is corpus bytes / wall seconds of the median of `--passes` timed passes, after
//!   `--warmup` untimed passes of the same engine (and one untimed read of the whole corpus
//!   first, so the cache is warm); every engine runs the same passes, and the table gives
//!   their range too.
//!   vyre's passes share one megakernel and its batch buffers (`pipeline::scan_reusing`), as
//!   in a long-lived process; a fresh `vyre scan` process also makes them.
//! * ripgrep: `rg -a --no-ignore --hidden -c -j N [-F] -f FILE ROOT`, N = every core (rg
//!   would otherwise stop at 12 threads). `-c` prints only files with a match, so the files it
//!   lists are the files `rg -l` lists.
//! * regex-automata: every rule in one lazy DFA (`hybrid`), `MatchKind::All`, overlapping
//!   search over each whole file: every (rule, match end), the semantics of `vyre scan`;
//!   files shared by an atomic counter among one thread per core.
//! * Checks: the set of files with a match must agree between every vyre backend, ripgrep
//!   and regex-automata, and vyre's per-file, per-rule match counts must equal
//!   regex-automata's.
//! * `--resident-mib`: DFA_SCAN over corpus bytes already in backend buffers (no file I/O,
//!   no hit read-back), to show what the scan itself sustains on each backend.

use crate::backends;
use aho_corasick::{AhoCorasick, AhoCorasickKind};
use clap::Parser;
use regex_automata::hybrid::dfa::{OverlappingState, DFA};
use regex_automata::nfa::thompson::{self, WhichCaptures};
use regex_automata::util::syntax;
use regex_automata::{Input, MatchKind};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use vyre_isa::dfa::{HIT_HEADER_BYTES, START_LOOKBEHIND, START_TEXT};
use vyre_isa::{Slot, SlotOp};
use vyre_runtime::{Config, Megakernel};
use vyre_scan::pipeline::{self, FileError, RuleCounts, Sink, WalkOptions};
use vyre_scan::{compile, Compiled, Limits, RuleSet};

/// Arguments of `vyre bench scan`.
#[derive(Debug, Parser)]
pub struct Args {
    /// The corpus: a directory (walked like `vyre scan --no-ignore --hidden`, no symlinks).
    #[arg(long, value_name = "DIR")]
    pub corpus: PathBuf,
    /// Literal rule counts, one rule set each (dictionary words drawn from the corpus).
    #[arg(long, value_delimiter = ',', default_value = "10,1000,10000")]
    pub rules_counts: Vec<usize>,
    /// Leave out the secret-scanning regex set.
    #[arg(long)]
    pub no_regex: bool,
    /// vyre backends to run, in order; unavailable ones are skipped with a note. wgpu on a
    /// software adapter (lavapipe) is only worth asking for explicitly.
    #[arg(long, value_delimiter = ',', default_value = "cpu,cuda")]
    pub backends: Vec<String>,
    /// The ripgrep binary.
    #[arg(long, default_value = "rg")]
    pub rg: PathBuf,
    /// Leave out ripgrep.
    #[arg(long)]
    pub no_rg: bool,
    /// Leave out the in-process engines (regex-automata and aho-corasick), and so the
    /// per-file count check.
    #[arg(long)]
    pub no_ra: bool,
    /// Run regex-automata on literal sets only up to this many rules (its lazy DFA with
    /// `MatchKind::All` scans 10,000 words at about 1 MB/s per core); aho-corasick checks
    /// every literal set.
    #[arg(long, default_value_t = 1000)]
    pub ra_max_rules: usize,
    /// Seed of the word sample.
    #[arg(long, default_value_t = 0x5eed)]
    pub seed: u64,
    /// Skip vyre on a rule set whose compile is predicted (linearly from the previous
    /// count) or observed to take longer than this; the table says so.
    #[arg(long, default_value_t = 120.0)]
    pub max_compile_seconds: f64,
    /// Untimed passes of each engine before its timed passes.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Timed passes of each engine; the table gives their median (ratios are of medians) and
    /// their range. One pass of vyre or ripgrep over the bench's corpus varied by a quarter
    /// from run to run on the H100 host.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub passes: u32,
    /// vyre's pipeline settings (default: each backend's, as `vyre scan` uses).
    #[command(flatten)]
    pub tuning: crate::scan::Tuning,
    /// Threads for ripgrep and regex-automata (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Also run the resident probe: this many MiB of corpus uploaded into backend buffers
    /// once, then DFA_SCAN over all of it with the 1,000-word set (0: off).
    #[arg(long, default_value_t = 0, value_name = "MiB")]
    pub resident_mib: usize,
    /// Bytes per DFA_SCAN slot in the resident probe (one slot scans its bytes serially),
    /// one table row each.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "65536",
        value_name = "BYTES"
    )]
    pub resident_window: Vec<usize>,
    /// Timed repetitions of the resident probe (the best is reported).
    #[arg(long, default_value_t = 3)]
    pub resident_reps: usize,
    /// Most resident-probe slots published and not yet reaped; the ring holds at least
    /// 4/3 of this. It must exceed the backend's worker lanes (an H100's 2 blocks of 128 per
    /// SM: 33,792) or the GPU idles between rounds (32,768, half a 65,536-slot ring, was
    /// the probe's setting until session 6 and measured about half the throughput).
    #[arg(long, default_value_t = 196_608, value_name = "SLOTS")]
    pub resident_in_flight: usize,
    /// The resident probe's rule set: a label of the table ("secrets", "1000 words");
    /// default: the literal set nearest 1,000 rules. With more than one group, each group
    /// is also timed alone.
    #[arg(long, value_name = "LABEL")]
    pub resident_rules: Option<String>,
    /// Skip the file-scan comparison (only the resident probe, if asked for).
    #[arg(long)]
    pub resident_only: bool,
    /// Where to keep the generated rule files (default: a fresh directory under the temp dir).
    #[arg(long, value_name = "DIR")]
    pub rules_dir: Option<PathBuf>,
    /// Also write the report (markdown) here.
    #[arg(long, value_name = "FILE.md")]
    pub out: Option<PathBuf>,
}

type Counts = HashMap<PathBuf, Vec<(u32, u64)>>;

/// One rule set as generated.
struct Set {
    label: String,
    literal: bool,
    /// The patterns, in rule order (a literal's bytes or a regex's text).
    patterns: Vec<String>,
    toml: PathBuf,
    rg_file: PathBuf,
}

/// One row of the table.
struct Row {
    set: String,
    engine: String,
    compile: String,
    seconds: Option<Passes>,
    files_matched: Option<usize>,
    matches: Option<u64>,
    check: String,
}

/// The wall seconds of an engine's timed passes.
#[derive(Debug, Clone, Default)]
struct Passes(Vec<f64>);

impl Passes {
    fn median(&self) -> f64 {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }

    /// "min-max (n)".
    fn range(&self) -> String {
        let min = self.0.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self.0.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        format!("{min:.3}-{max:.3} ({})", self.0.len())
    }
}

/// Runs the benchmark and prints the report.
pub fn main(a: Args) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let threads = a.threads.unwrap_or_else(cores);
    let files = list_files(&a.corpus)?;
    let bytes: u64 = files.iter().map(|(_, n)| n).sum();
    if files.is_empty() {
        return Err(format!("no files under {}", a.corpus.display()).into());
    }
    eprintln!(
        "corpus: {} files, {:.3} GB; warming the page cache",
        files.len(),
        bytes as f64 / 1e9
    );
    let t = Instant::now();
    let words = sample_words(&files, a.seed)?;
    eprintln!(
        "{} distinct identifiers sampled ({:.1} s)",
        words.len(),
        t.elapsed().as_secs_f64()
    );
    let dir = match &a.rules_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("vyre-bench-scan-{}", std::process::id())),
    };
    fs::create_dir_all(&dir)?;
    let mut sets = Vec::new();
    if !a.no_regex {
        sets.push(write_set(&dir, "secrets", false, secret_regexes())?);
    }
    let mut counts = a.rules_counts.clone();
    counts.sort_unstable();
    counts.dedup();
    for &n in &counts {
        if n > words.len() {
            return Err(format!("{n} rules asked for, only {} words found", words.len()).into());
        }
        sets.push(write_set(
            &dir,
            &format!("{n} words"),
            true,
            words[..n].to_vec(),
        )?);
    }
    let mut report = header(&a, &files, bytes, threads);
    let _ = writeln!(report, "\nrule files: `{}`\n", dir.display());
    if !a.resident_only {
        let rows = compare(&a, &sets, &files, bytes, threads)?;
        report.push_str(&table(&rows, bytes));
    }
    if a.resident_mib > 0 {
        let set = match &a.resident_rules {
            Some(label) => sets.iter().find(|s| &s.label == label).ok_or_else(|| {
                let labels: Vec<&str> = sets.iter().map(|s| s.label.as_str()).collect();
                format!(
                    "--resident-rules {label:?}: no such rule set in this run (there are: {})",
                    labels.join(", ")
                )
            })?,
            None => sets
                .iter()
                .filter(|s| s.literal)
                .min_by_key(|s| s.patterns.len().abs_diff(1000))
                .ok_or("the resident probe needs a literal rule count")?,
        };
        report.push_str(&resident(&a, set, &files)?);
    }
    println!("{report}");
    if let Some(out) = &a.out {
        fs::write(out, &report)?;
        eprintln!("report written to {}", out.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Regular files under `root` (symlinks not followed), sorted, with their sizes.
fn list_files(root: &Path) -> std::io::Result<Vec<(PathBuf, u64)>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)? {
            let e = e?;
            let t = e.file_type()?;
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                out.push((e.path(), e.metadata()?.len()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Every distinct identifier of 5..=24 bytes in the corpus (reading it all, which also
/// warms the page cache), shuffled with `seed`.
fn sample_words(files: &[(PathBuf, u64)], seed: u64) -> std::io::Result<Vec<String>> {
    let mut set = BTreeSet::new();
    let mut seen = 0u64;
    for (p, _) in files {
        let data = fs::read(p)?;
        // Words come from the first 64 MB; the rest is only read (replicas add no words).
        if seen < 64_000_000 {
            seen += data.len() as u64;
            let mut i = 0;
            while i < data.len() {
                if data[i].is_ascii_alphabetic() || data[i] == b'_' {
                    let s = i;
                    while i < data.len() && (data[i].is_ascii_alphanumeric() || data[i] == b'_') {
                        i += 1;
                    }
                    let boundary = s == 0 || !data[s - 1].is_ascii_alphanumeric();
                    if boundary && (5..=24).contains(&(i - s)) {
                        set.insert(String::from_utf8_lossy(&data[s..i]).into_owned());
                    }
                } else {
                    i += 1;
                }
            }
        }
    }
    let mut words: Vec<String> = set.into_iter().collect();
    let mut x = seed;
    for i in (1..words.len()).rev() {
        // splitmix64
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        words.swap(i, (z % (i as u64 + 1)) as usize);
    }
    Ok(words)
}

/// Twenty secret-scanning regexes, bounded and ASCII-only (so ripgrep accepts them as
/// they are and the DFAs stay small). Two common ones are left out because vyre's compile
/// explodes on them today: `AIza[0-9A-Za-z_-]{35}` (6 s alone: the class contains the
/// prefix, so overlapping starts multiply states) and the unbracketed e-mail regex
/// `[0-9A-Za-z._+-]{1,32}@[0-9A-Za-z-]{1,32}\.[a-z]{2,4}` (over 2 minutes in a set).
fn secret_regexes() -> Vec<String> {
    [
        r"AKIA[0-9A-Z]{16}",
        r"-----BEGIN [A-Z ]{0,20}PRIVATE KEY-----",
        r"-----BEGIN CERTIFICATE-----",
        r"ghp_[0-9A-Za-z]{36}",
        r"glpat-[0-9A-Za-z_-]{20}",
        r"xox[abprs]-[0-9]{10,13}-[0-9]{10,13}",
        r"-----BEGIN PGP PRIVATE KEY BLOCK-----",
        r"sk_live_[0-9A-Za-z]{24}",
        r"SG\.[0-9A-Za-z_-]{22}\.[0-9A-Za-z_-]{43}",
        r"eyJhbGciOiJ[0-9A-Za-z]{2,8}",
        r#"[Pp]assword[ \t]*[:=][ \t]*"[ !#-~]{4,40}""#,
        r#"(?i)secret[_a-z]{0,10}[ \t]*=[ \t]*"[ !#-~]{8,64}""#,
        r"(?i)api[_-]?key[ \t]*[:=]",
        r"(?i)token[ \t]*[:=][ \t]*[0-9A-Za-z_-]{16,64}",
        r"0x[0-9a-fA-F]{16}",
        r"[0-9a-f]{40}",
        r"<[0-9A-Za-z._+-]{1,32}@[0-9A-Za-z.-]{1,40}>",
        r"https?://[0-9A-Za-z.-]{3,40}/",
        r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}",
        r"[Cc]opyright \([Cc]\) [0-9]{4}",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn toml_string(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn write_set(
    dir: &Path,
    label: &str,
    literal: bool,
    patterns: Vec<String>,
) -> std::io::Result<Set> {
    let stem = label.replace(' ', "-");
    let mut toml = String::new();
    let mut plain = String::new();
    for (i, p) in patterns.iter().enumerate() {
        let key = if literal { "literal" } else { "regex" };
        let _ = writeln!(
            toml,
            "[[rule]]\nname = \"r{i}\"\n{key} = {}\n",
            toml_string(p)
        );
        plain.push_str(p);
        plain.push('\n');
    }
    let t = dir.join(format!("{stem}.toml"));
    let f = dir.join(format!("{stem}.txt"));
    fs::write(&t, toml)?;
    fs::write(&f, plain)?;
    Ok(Set {
        label: label.to_string(),
        literal,
        patterns,
        toml: t,
        rg_file: f,
    })
}

fn header(a: &Args, files: &[(PathBuf, u64)], bytes: u64, threads: usize) -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let rg = if a.no_rg {
        "not run".to_string()
    } else {
        Command::new(&a.rg)
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.lines().next().map(str::to_string))
            .unwrap_or_else(|| format!("{} (not runnable)", a.rg.display()))
    };
    let mut s = String::new();
    let _ = writeln!(s, "### vyre bench scan\n");
    let args: Vec<String> = std::env::args().collect();
    let _ = writeln!(s, "command: `{}`\n", args.join(" "));
    let _ = writeln!(
        s,
        "machine: {cpu}, {} cores available; ripgrep, aho-corasick and regex-automata on {threads} threads; {rg}\n",
        cores()
    );
    let _ = writeln!(
        s,
        "corpus: `{}`, {} files, {} bytes ({:.3} GB), warm page cache; {} untimed pass(es) per engine before its {} timed ones (the table gives their median and range); vyre pipeline: each backend's `ScanOptions::for_backend` defaults, one megakernel and its batch buffers for all passes{}",
        a.corpus.display(),
        files.len(),
        bytes,
        bytes as f64 / 1e9,
        a.warmup,
        a.passes,
        overrides(a),
    );
    s
}

/// The pipeline settings given on the command line, as text.
fn overrides(a: &Args) -> String {
    let o: Vec<String> = [
        a.tuning.window.map(|w| format!("window {w} bytes")),
        a.tuning.batch.map(|b| format!("batch {b} bytes")),
        a.tuning.in_flight.map(|n| format!("{n} batches in flight")),
    ]
    .into_iter()
    .flatten()
    .collect();
    if o.is_empty() {
        String::new()
    } else {
        format!(", except {}", o.join(", "))
    }
}

/// Runs every engine on every rule set.
fn compare(
    a: &Args,
    sets: &[Set],
    files: &[(PathBuf, u64)],
    bytes: u64,
    threads: usize,
) -> Result<Vec<Row>, Box<dyn std::error::Error>> {
    let mut rows = Vec::new();
    if !a.no_rg {
        // ripgrep's floor on this corpus: a literal found nowhere (its fastest search).
        eprintln!("== ripgrep, one literal found nowhere");
        let label = "1 literal found nowhere";
        let patterns = ["-F".into(), "-e".into(), nowhere().into()];
        rows.push(match run_rg_with(a, &patterns, threads) {
            Ok((secs, files)) if files.is_empty() => Row {
                set: label.into(),
                engine: "ripgrep -F".into(),
                compile: "(in scan)".into(),
                seconds: Some(secs),
                files_matched: Some(files.len()),
                matches: None,
                check: "its walk and reads, with its fastest search".into(),
            },
            Ok((_, files)) => note_row_of(
                label,
                "ripgrep -F",
                &format!("the made-up literal was found in {}", files[0].display()),
            ),
            Err(e) => note_row_of(label, "ripgrep -F", &e),
        });
    }
    let mut last_compile: Option<(usize, f64)> = None;
    // A compile abandoned at --max-compile-seconds still runs, on every core (the compiler
    // builds groups on rayon's threads): nothing timed after it would be fair.
    let mut still_compiling: Option<String> = None;
    for set in sets {
        eprintln!("== {}", set.label);
        if let Some(label) = &still_compiling {
            rows.push(note_row(
                set,
                "every engine",
                &format!("not run: the abandoned compile of {label} still runs on every core"),
            ));
            continue;
        }
        let n = set.patterns.len();
        // vyre's compile, guarded.
        let predicted = match last_compile {
            Some((k, t)) if set.literal && k > 0 => t * n as f64 / k as f64,
            _ => 0.0,
        };
        let compiled: Result<(Compiled, f64), String> = if predicted > a.max_compile_seconds {
            Err(format!(
                "skipped: compile predicted {predicted:.0} s > --max-compile-seconds {}",
                a.max_compile_seconds
            ))
        } else {
            compile_guarded(&set.toml, a.max_compile_seconds)
        };
        let mut abandoned = false;
        match &compiled {
            Ok((c, t)) => {
                eprintln!(
                    "vyre compile: {t:.2} s, {} group(s), {} table bytes",
                    c.groups.len(),
                    c.groups.iter().map(|g| g.table.len() * 4).sum::<usize>()
                );
                if set.literal {
                    last_compile = Some((n, *t));
                }
            }
            Err(e) => {
                eprintln!("vyre compile: {e}");
                abandoned = e.starts_with("abandoned");
                if abandoned {
                    still_compiling = Some(set.label.clone());
                }
            }
        }
        // In-process engines: (name, timed passes, counts, build seconds).
        let mut oracles: Vec<(&str, Passes, Counts, f64)> = Vec::new();
        let passes = (a.warmup, a.passes as usize);
        let mut notes = Vec::new();
        if !a.no_ra && !abandoned {
            if set.literal {
                let (t, c, b) = run_ac(set, files, threads, passes)?;
                oracles.push(("aho-corasick (DFA, overlapping: every match)", t, c, b));
            }
            if !set.literal || n <= a.ra_max_rules {
                let (t, c, b) = run_ra(set, files, threads, passes)?;
                oracles.push((
                    "regex-automata (lazy DFA, MatchKind::All, overlapping)",
                    t,
                    c,
                    b,
                ));
            } else {
                notes.push(note_row(
                    set,
                    "regex-automata",
                    &format!("not run: {n} rules > --ra-max-rules {} (its lazy DFA with MatchKind::All over 10,000 words measured ~1 MB/s per core)", a.ra_max_rules),
                ));
            }
        }
        let rg = if a.no_rg || abandoned {
            None
        } else {
            Some(run_rg(a, set, threads)?)
        };
        let mut set_rows = Vec::new();
        let ra_files: Option<HashSet<&PathBuf>> =
            oracles.first().map(|(_, _, c, _)| c.keys().collect());
        for backend in &a.backends {
            let (c, ct) = match &compiled {
                Ok(x) => x,
                Err(e) => {
                    set_rows.push(note_row(set, &format!("vyre {backend}"), e));
                    continue;
                }
            };
            match run_vyre(a, backend, c, bytes) {
                Ok((name, secs, counts, floor)) => {
                    let mut check = Vec::new();
                    for (oname, _, rc, _) in &oracles {
                        check.push(compare_counts(&counts, rc, oname));
                    }
                    if let Some((_, rgf)) = &rg {
                        let mine: HashSet<&PathBuf> = counts.keys().collect();
                        let theirs: HashSet<&PathBuf> = rgf.iter().collect();
                        check.push(agree_sets("files vs rg", &mine, &theirs));
                    }
                    let pass = secs.median();
                    set_rows.push(Row {
                        set: set.label.clone(),
                        engine: format!("vyre {name}"),
                        compile: format!("{ct:.2} s"),
                        seconds: Some(secs),
                        files_matched: Some(counts.len()),
                        matches: Some(counts.values().flatten().map(|(_, n)| n).sum()),
                        check: check.join("; "),
                    });
                    if let Some(f) = floor {
                        let ratio = pass / f.median();
                        set_rows.push(Row {
                            set: set.label.clone(),
                            engine: format!("vyre {name}: {FLOOR}"),
                            compile: String::new(),
                            seconds: Some(f),
                            files_matched: None,
                            matches: None,
                            check: format!(
                                "the same walk threads, segments and staging packs, nothing \
                                 copied or scanned: the pass above took {:.2}× this",
                                ratio
                            ),
                        });
                    }
                }
                Err(e) => set_rows.push(note_row(set, &format!("vyre {backend}"), &e)),
            }
        }
        if abandoned {
            set_rows.push(note_row(
                set,
                "ripgrep, regex-automata",
                "not run: the abandoned compile still runs on every core",
            ));
        }
        if let Some((secs, rgf)) = &rg {
            let theirs: HashSet<&PathBuf> = rgf.iter().collect();
            let check = match (&ra_files, oracles.first()) {
                (Some(r), Some((oname, ..))) => {
                    agree_sets(&format!("files vs {}", short(oname)), &theirs, r)
                }
                _ => String::new(),
            };
            set_rows.push(Row {
                set: set.label.clone(),
                engine: format!("ripgrep{}", if set.literal { " -F" } else { "" }),
                compile: "(in scan)".into(),
                seconds: Some(secs.clone()),
                files_matched: Some(rgf.len()),
                matches: None,
                check,
            });
        }
        for (oname, secs, rc, build) in &oracles {
            set_rows.push(Row {
                set: set.label.clone(),
                engine: oname.to_string(),
                compile: format!("{build:.2} s"),
                seconds: Some(secs.clone()),
                files_matched: Some(rc.len()),
                matches: Some(rc.values().flatten().map(|(_, n)| n).sum()),
                check: String::new(),
            });
        }
        set_rows.extend(notes);
        for r in &set_rows {
            eprintln!(
                "  {:<40} {} {}",
                r.engine,
                r.seconds
                    .as_ref()
                    .map(|s| format!("{:.3} GB/s", bytes as f64 / s.median() / 1e9))
                    .unwrap_or_default(),
                r.check
            );
        }
        rows.extend(set_rows);
    }
    Ok(rows)
}

fn note_row(set: &Set, engine: &str, note: &str) -> Row {
    note_row_of(&set.label, engine, note)
}

fn note_row_of(set: &str, engine: &str, note: &str) -> Row {
    Row {
        set: set.to_string(),
        engine: engine.to_string(),
        compile: String::new(),
        seconds: None,
        files_matched: None,
        matches: None,
        check: note.to_string(),
    }
}

/// Loads and compiles a rule file on a thread; gives up (leaving the thread behind) after
/// `max` seconds.
fn compile_guarded(toml: &Path, max: f64) -> Result<(Compiled, f64), String> {
    let rules = RuleSet::load(toml).map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("vyre-bench-compile".into())
        .spawn(move || {
            let t = Instant::now();
            let r = compile(&rules, &Limits::default());
            let _ = tx.send(r.map(|c| (c, t.elapsed().as_secs_f64())));
        })
        .map_err(|e| e.to_string())?;
    match rx.recv_timeout(Duration::from_secs_f64(max)) {
        Ok(r) => r.map_err(|e| format!("compile failed: {e}")),
        Err(_) => Err(format!(
            "abandoned: compile still running after --max-compile-seconds {max}"
        )),
    }
}

/// Per-file, per-rule counts from vyre's pipeline, kept by the walk's file id (hashing a
/// path per match cost the bench more than the GPU's scan at 10,000 words). The calls of
/// files whose windows are in flight together may interleave. Finished files are appended to
/// three flat vectors (paths' bytes, counts, and where each file's end) and put in a map by
/// path after the timed pass ([`CountSink::counts`]): in a profile of the 1,000-word pass one
/// hash-map insert by path per matched file took half of the sink's thread's time (hashing a
/// path walks its bytes looking for separators), and a path and a count vector allocated per
/// file took half of what was left.
#[derive(Default)]
struct CountSink {
    open: RuleCounts,
    /// Per finished file with matches: where its path ends in `paths` and its counts in
    /// `counts`.
    done: Vec<(usize, usize)>,
    paths: Vec<u8>,
    counts: Vec<(u32, u64)>,
    errors: Vec<String>,
    interleaved: u64,
    last: Option<u64>,
}

impl CountSink {
    /// A sink whose vectors start as large as `before`'s ended (the pass before, on the same
    /// corpus), so the timed pass does not grow them.
    fn sized_like(before: &CountSink) -> CountSink {
        CountSink {
            done: Vec::with_capacity(before.done.len()),
            paths: Vec::with_capacity(before.paths.len()),
            counts: Vec::with_capacity(before.counts.len()),
            ..CountSink::default()
        }
    }

    /// The finished files' counts by path.
    fn counts(&self) -> Counts {
        use std::os::unix::ffi::OsStrExt;
        let (mut path, mut counts) = (0, 0);
        self.done
            .iter()
            .map(|&(path_end, counts_end)| {
                let p = std::ffi::OsStr::from_bytes(&self.paths[path..path_end]);
                let c = self.counts[counts..counts_end].to_vec();
                (path, counts) = (path_end, counts_end);
                (PathBuf::from(p), c)
            })
            .collect()
    }
}

impl Sink for CountSink {
    fn ordered(&self) -> bool {
        false
    }
    fn matched(&mut self, file: u64, _path: &Path, _end: u64, rule: u32) {
        if self.last != Some(file) {
            if self.open.others_open(file) {
                self.interleaved += 1;
            }
            self.last = Some(file);
        }
        self.open.add(file, rule);
    }
    fn file_done(&mut self, file: u64, path: &Path, _bytes: u64) {
        use std::os::unix::ffi::OsStrExt;
        let before = self.counts.len();
        self.open.take_into(file, &mut self.counts);
        if self.counts.len() > before {
            self.paths.extend_from_slice(path.as_os_str().as_bytes());
            self.done.push((self.paths.len(), self.counts.len()));
        }
    }
    fn file_error(&mut self, file: u64, e: &FileError) {
        self.open.take(file);
        self.errors.push(e.to_string());
    }
}

/// The vyre pipeline on one backend: warm-up passes, then one timed pass.
fn run_vyre(
    a: &Args,
    backend: &str,
    compiled: &Compiled,
    bytes: u64,
) -> Result<(String, Passes, Counts, Option<Passes>), String> {
    let (b, _) = backends::create(backend, &[SlotOp::DfaScan])
        .map_err(|e| format!("skipped: backend {backend} unavailable: {e}"))?;
    let name = b.name().to_string();
    let walk = WalkOptions {
        hidden: true,
        no_ignore: true,
        follow: false,
    };
    let (config, opts) = a.tuning.apply(&name, walk, false);
    let mk = Megakernel::launch(b, config).map_err(|e| format!("launch failed: {e}"))?;
    eprintln!(
        "vyre {name}: window {} bytes, batch {} bytes, {} in flight per driver, {} driver(s), {} reader(s)",
        opts.window, opts.batch, opts.in_flight, opts.drivers, opts.readers
    );
    let paths = [a.corpus.clone()];
    let mut result = Err("no pass ran".to_string());
    // Later passes reuse the batch buffers of the first, as a long-lived process would.
    let mut buffers = pipeline::ScanBuffers::new();
    let mut before = CountSink::default();
    let mut timed = Passes::default();
    let last = a.warmup + a.passes as usize - 1;
    for pass in 0..=last {
        let mut sink = CountSink::sized_like(&before);
        let t = Instant::now();
        let r = pipeline::scan_reusing(&mk, compiled, &paths, &opts, &mut sink, &mut buffers);
        let secs = t.elapsed().as_secs_f64();
        match r {
            Ok(s) => {
                if !sink.errors.is_empty() || s.bytes != bytes {
                    eprintln!(
                        "vyre {name}: {} file errors (first: {:?}), {} bytes scanned of {bytes}",
                        sink.errors.len(),
                        sink.errors.first(),
                        s.bytes
                    );
                }
                if sink.open.open_files() > 0 {
                    eprintln!("vyre {name}: {} file(s) never done", sink.open.open_files());
                }
                // Files in flight together interleave their calls (the sink is unordered,
                // and each driver delivers its own batches): counted, not an error.
                tracing::debug!(
                    "vyre {name}: matches of another file arrived before a file was done {} time(s)",
                    sink.interleaved
                );
                if pass >= a.warmup {
                    timed.0.push(secs);
                }
                if pass == last {
                    result = Ok((name.clone(), timed.clone(), sink.counts(), None));
                }
                before = sink;
            }
            Err(e) => {
                result = Err(format!("scan failed: {e}"));
                break;
            }
        }
    }
    // The floor under the pass: the same walk threads and reads, nothing scanned.
    if let Ok((.., floor)) = &mut result {
        let mut timed = Passes::default();
        for pass in 0..=last {
            match pipeline::walk_and_read_only(&mk, compiled, &paths, &opts) {
                Ok(r) if r.bytes == bytes && r.file_errors == 0 => {
                    if pass >= a.warmup {
                        timed.0.push(r.seconds);
                    }
                    if pass == last {
                        *floor = Some(timed.clone());
                    }
                }
                Ok(r) => {
                    eprintln!(
                        "vyre {name}: reading alone: {} bytes of {bytes}, {} file errors",
                        r.bytes, r.file_errors
                    );
                    break;
                }
                Err(e) => {
                    eprintln!("vyre {name}: reading alone: {e}");
                    break;
                }
            }
        }
    }
    if let Err(e) = mk.shutdown() {
        eprintln!("vyre {name}: shutdown: {e}");
    }
    result
}

/// ripgrep, all cores: warm-up passes, then one timed pass; the files it reports.
fn run_rg(a: &Args, set: &Set, threads: usize) -> Result<(Passes, Vec<PathBuf>), String> {
    let mut patterns: Vec<std::ffi::OsString> = Vec::new();
    if set.literal {
        patterns.push("-F".into());
    }
    patterns.extend(["-f".into(), set.rg_file.clone().into_os_string()]);
    run_rg_with(a, &patterns, threads)
}

/// The engine column's ending for vyre's floor rows.
const FLOOR: &str = "walk and read alone";

/// A literal made up for this run (so that not even this source file holds it): ripgrep's
/// pass with it is its walk and reads.
fn nowhere() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("vyre-nowhere-{:x}-{nanos:x}", std::process::id())
}

/// ripgrep with these pattern arguments, as [`run_rg`].
fn run_rg_with(
    a: &Args,
    patterns: &[std::ffi::OsString],
    threads: usize,
) -> Result<(Passes, Vec<PathBuf>), String> {
    let mut cmd = Command::new(&a.rg);
    cmd.args(["-a", "--no-ignore", "--hidden", "-c", "-j"])
        .arg(threads.to_string());
    cmd.args(patterns).arg(&a.corpus);
    let mut last = None;
    let mut timed = Passes::default();
    for pass in 0..a.warmup + a.passes as usize {
        let t = Instant::now();
        let o = cmd
            .output()
            .map_err(|e| format!("{}: {e}", a.rg.display()))?;
        let secs = t.elapsed().as_secs_f64();
        // Exit 1: no match anywhere.
        if !o.status.success() && o.status.code() != Some(1) {
            return Err(format!(
                "{} failed ({}): {}",
                a.rg.display(),
                o.status,
                String::from_utf8_lossy(&o.stderr)
            ));
        }
        if pass >= a.warmup {
            timed.0.push(secs);
        }
        last = Some(o.stdout);
    }
    let out = last.expect("at least one pass");
    let files = String::from_utf8_lossy(&out)
        .lines()
        .filter_map(|l| l.rsplit_once(':').map(|(p, _)| PathBuf::from(p)))
        .collect();
    Ok((timed, files))
}

/// regex-automata on every core: (timed pass seconds, counts, build seconds).
fn run_ra(
    set: &Set,
    files: &[(PathBuf, u64)],
    threads: usize,
    passes: (usize, usize),
) -> Result<(Passes, Counts, f64), String> {
    let t = Instant::now();
    let patterns: Vec<String> = if set.literal {
        set.patterns
            .iter()
            .map(|w| {
                let mut p = String::from("(?-u:");
                for b in w.bytes() {
                    let _ = write!(p, "\\x{b:02X}");
                }
                p.push(')');
                p
            })
            .collect()
    } else {
        set.patterns.clone()
    };
    let dfa = DFA::builder()
        .configure(
            DFA::config()
                .match_kind(MatchKind::All)
                .cache_capacity(1 << 30)
                .minimum_cache_clear_count(None),
        )
        .syntax(syntax::Config::new().utf8(false))
        .thompson(thompson::Config::new().which_captures(WhichCaptures::None))
        .build_many(&patterns)
        .map_err(|e| format!("regex-automata build: {e}"))?;
    let build = t.elapsed().as_secs_f64();
    // One lazy-DFA cache per thread, kept across passes: the warm-up pass also builds the
    // DFA states the timed pass needs, as vyre's tables are built before its scan.
    let caches: Vec<Mutex<regex_automata::hybrid::dfa::Cache>> = (0..threads)
        .map(|_| Mutex::new(dfa.create_cache()))
        .collect();
    let (secs, counts) = parallel_counts(files, &caches, passes, &|cache, data, c| {
        let input = Input::new(data);
        let mut state = OverlappingState::start();
        loop {
            dfa.try_search_overlapping_fwd(cache, &input, &mut state)
                .map_err(|e| e.to_string())?;
            match state.get_match() {
                Some(m) => *c.entry(m.pattern().as_u32()).or_default() += 1,
                None => return Ok(()),
            }
        }
    })?;
    Ok((secs, counts, build))
}

/// aho-corasick (DFA) on every core, overlapping: every occurrence of every word, which for
/// literals is every (rule, match end). Returns (timed pass seconds, counts, build seconds).
fn run_ac(
    set: &Set,
    files: &[(PathBuf, u64)],
    threads: usize,
    passes: (usize, usize),
) -> Result<(Passes, Counts, f64), String> {
    let t = Instant::now();
    let ac = AhoCorasick::builder()
        .kind(Some(AhoCorasickKind::DFA))
        .build(&set.patterns)
        .map_err(|e| format!("aho-corasick build: {e}"))?;
    let build = t.elapsed().as_secs_f64();
    let states: Vec<Mutex<()>> = (0..threads).map(|_| Mutex::new(())).collect();
    let (secs, counts) = parallel_counts(files, &states, passes, &|_, data, c| {
        for m in ac.find_overlapping_iter(data) {
            *c.entry(m.pattern().as_u32()).or_default() += 1;
        }
        Ok(())
    })?;
    Ok((secs, counts, build))
}

/// Per-file scanner: adds each (rule, count) of `data` to the map.
type ScanFn<'a, S> =
    dyn Fn(&mut S, &[u8], &mut BTreeMap<u32, u64>) -> Result<(), String> + Sync + 'a;

/// Files shared among one thread per state (an atomic counter hands them out), each read
/// whole and scanned; `passes`: (untimed, timed) passes. The last pass's counts.
fn parallel_counts<S: Send>(
    files: &[(PathBuf, u64)],
    states: &[Mutex<S>],
    (warmup, passes): (usize, usize),
    scan: &ScanFn<'_, S>,
) -> Result<(Passes, Counts), String> {
    let mut last = None;
    let mut timed = Passes::default();
    for pass in 0..warmup + passes {
        let next = AtomicUsize::new(0);
        // Each thread's files, put in a map by path after the timed pass (as vyre's are).
        let out = Mutex::new(Vec::new());
        let err = Mutex::new(None::<String>);
        let t = Instant::now();
        std::thread::scope(|sc| {
            for st in states {
                sc.spawn(|| {
                    let mut st = st.lock().unwrap();
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some((p, _)) = files.get(i) else { break };
                        let mut c = BTreeMap::new();
                        let r = fs::read(p)
                            .map_err(|e| e.to_string())
                            .and_then(|data| scan(&mut st, &data, &mut c));
                        if let Err(e) = r {
                            *err.lock().unwrap() = Some(format!("{}: {e}", p.display()));
                        }
                        if !c.is_empty() {
                            mine.push((p.clone(), c.into_iter().collect::<Vec<_>>()));
                        }
                    }
                    out.lock().unwrap().push(mine);
                });
            }
        });
        let secs = t.elapsed().as_secs_f64();
        if let Some(e) = err.into_inner().unwrap() {
            return Err(e);
        }
        if pass >= warmup {
            timed.0.push(secs);
        }
        last = Some(out.into_inner().unwrap());
    }
    // Put in a map by path after the timed passes (as vyre's are).
    let counts: Counts = last
        .expect("at least one pass")
        .into_iter()
        .flatten()
        .collect();
    Ok((timed, counts))
}

fn agree_sets(what: &str, mine: &HashSet<&PathBuf>, theirs: &HashSet<&PathBuf>) -> String {
    let only_mine = mine.difference(theirs).count();
    let only_theirs = theirs.difference(mine).count();
    if only_mine == 0 && only_theirs == 0 {
        format!("{what}: agree ({})", mine.len())
    } else {
        let example = mine
            .symmetric_difference(theirs)
            .next()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        format!(
            "{what}: DISAGREE ({only_mine} only here, {only_theirs} only there, e.g. {example})"
        )
    }
}

/// An engine's name up to its first space.
fn short(name: &str) -> &str {
    name.split(' ').next().unwrap_or(name)
}

fn compare_counts(mine: &Counts, ra: &Counts, oracle: &str) -> String {
    let oracle = short(oracle);
    let mut differ = 0usize;
    let mut example = None;
    for (p, c) in mine {
        if ra.get(p) != Some(c) {
            differ += 1;
            example.get_or_insert_with(|| p.display().to_string());
        }
    }
    for p in ra.keys() {
        if !mine.contains_key(p) {
            differ += 1;
            example.get_or_insert_with(|| p.display().to_string());
        }
    }
    match example {
        None => format!("per-file counts = {oracle} ({} files)", mine.len()),
        Some(e) => format!("per-file counts DISAGREE with {oracle} in {differ} files, e.g. {e}"),
    }
}

fn table(rows: &[Row], bytes: u64) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n| rule set | engine | compile | scan s | passes: range (count) | GB/s | vs rg | files matched | matches | check |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
    let mut rg_secs: HashMap<&str, f64> = HashMap::new();
    for r in rows {
        if r.engine.starts_with("ripgrep") {
            if let Some(t) = &r.seconds {
                rg_secs.insert(&r.set, t.median());
            }
        }
    }
    for r in rows {
        let median = r.seconds.as_ref().map(Passes::median);
        let gbps = median.map(|t| bytes as f64 / t / 1e9);
        // A floor is not a scan: no ratio to ripgrep's scan for it.
        let floor = r.engine.ends_with(FLOOR);
        let ratio = match (median, rg_secs.get(r.set.as_str())) {
            (Some(t), Some(rg)) if !floor => format!("{:.2}×", rg / t),
            _ => String::new(),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.set,
            r.engine,
            r.compile,
            median.map(|t| format!("{t:.3}")).unwrap_or_default(),
            r.seconds.as_ref().map(Passes::range).unwrap_or_default(),
            gbps.map(|g| format!("{g:.3}")).unwrap_or_default(),
            ratio,
            r.files_matched.map(|n| n.to_string()).unwrap_or_default(),
            r.matches.map(|n| n.to_string()).unwrap_or_default(),
            r.check,
        );
    }
    let _ = writeln!(
        s,
        "\nscan s = the median of the timed passes' wall seconds. GB/s = corpus bytes / that median (vyre: walk, read, copy into backend buffers, scan, hit read-back; ripgrep: its whole run with `-c`; aho-corasick, regex-automata: read + overlapping search, no walk). \"vs rg\" = ripgrep's median / the engine's median (> 1: faster than ripgrep). ripgrep's `matches` column is empty: `-c` counts lines, not match ends. aho-corasick (literal sets) and regex-automata report every (rule, match end), which is what vyre reports; vyre's per-file counts are checked against them. Floors: \"walk and read alone\" is vyre's pass without the scan (the same walk threads read every file into the same staging packs, which are dropped), and ripgrep with one literal found nowhere is ripgrep's: neither engine's pass can be shorter than its floor."
    );
    s
}

/// The resident probe: corpus bytes in backend buffers, DFA_SCAN over all of them.
fn resident(
    a: &Args,
    set: &Set,
    files: &[(PathBuf, u64)],
) -> Result<String, Box<dyn std::error::Error>> {
    let want = a.resident_mib << 20;
    let t = Instant::now();
    let rules = RuleSet::load(&set.toml)?;
    let compiled = compile(&rules, &Limits::default())?;
    let compile_s = t.elapsed().as_secs_f64();
    // Corpus bytes, cycling through the files, in chunks of 16 MiB (one buffer each).
    const CHUNK: usize = 16 << 20;
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    let mut cur = Vec::with_capacity(CHUNK);
    'fill: loop {
        for (p, _) in files {
            let d = fs::read(p)?;
            let mut d = &d[..];
            while !d.is_empty() {
                let take = d.len().min(CHUNK - cur.len());
                cur.extend_from_slice(&d[..take]);
                d = &d[take..];
                if cur.len() == CHUNK {
                    chunks.push(std::mem::replace(&mut cur, Vec::with_capacity(CHUNK)));
                    if chunks.len() * CHUNK >= want {
                        break 'fill;
                    }
                }
            }
        }
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n#### Resident DFA_SCAN ({}, {} rule(s) in {} group(s), compile {compile_s:.2} s): {} MiB already in backend buffers, no file I/O, hits not read back\n",
        set.label,
        rules.len(),
        compiled.groups.len(),
        (chunks.len() * CHUNK) >> 20,
    );
    let _ = writeln!(
        s,
        "| backend | groups | bytes per slot | slots per pass | most in flight | best s | GB/s | table steps (G/s) | matches found (last pass) |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
    let region = HIT_HEADER_BYTES + 8 * u64::from(RESIDENT_CAP);
    for backend in &a.backends {
        let b = match backends::create(backend, &[SlotOp::DfaScan]) {
            Ok((b, _)) => b,
            Err(e) => {
                let _ = writeln!(s, "| {backend} | skipped: unavailable: {e} | | | | | | | |");
                continue;
            }
        };
        let name = b.name().to_string();
        let batch = 1 << 12;
        let in_flight_max = a.resident_in_flight.max(batch);
        let capacity = (in_flight_max / 3 * 4)
            .next_power_of_two()
            .clamp(1 << 16, 1 << 20);
        let config = Config {
            capacity: capacity as u32,
            workers: a.tuning.workers,
            ..vyre_scan::pipeline::megakernel_config(&name)
        };
        let in_flight_max = in_flight_max.min(capacity / 4 * 3);
        let mk = Megakernel::launch(b, config)?;
        let mut tables = Vec::new();
        for g in &compiled.groups {
            let bytes: Vec<u8> = g.table.iter().flat_map(|x| x.to_le_bytes()).collect();
            tables.push(mk.create_buffer_with(bytes.len() as u64, &bytes)?);
        }
        let mut data = Vec::new();
        for c in &chunks {
            data.push(mk.create_buffer_with(c.len() as u64, c)?);
        }
        // Every group together (what a file pass does), then each alone where there are
        // several, to see which group costs the time.
        let mut selections: Vec<(String, Vec<u32>)> = vec![("all".into(), tables.clone())];
        if tables.len() > 1 {
            for (i, (g, &t)) in compiled.groups.iter().zip(&tables).enumerate() {
                let len = g.max_len.map_or("unbounded".into(), |n| format!("≤ {n} B"));
                let label = format!(
                    "{i} ({} rule(s), {} KiB, {len})",
                    g.rules.len(),
                    (g.table.len() * 4) >> 10
                );
                selections.push((label, vec![t]));
            }
        }
        for &w in &a.resident_window {
            let w = w.clamp(64, CHUNK);
            let mut header = vec![0u8; region as usize * (CHUNK / w) * tables.len()];
            for r in header.chunks_mut(region as usize) {
                r[..4].copy_from_slice(&RESIDENT_CAP.to_le_bytes());
            }
            let mut hits = Vec::new();
            for _ in &data {
                hits.push(mk.create_buffer_with(header.len() as u64, &header)?);
            }
            for (label, sel) in &selections {
                let pass = resident_pass(&mk, sel, &data, &hits, CHUNK / w, w, a, in_flight_max)?;
                let scanned = (data.len() * (CHUNK / w) * w) as f64;
                let gbps = scanned / pass.best / 1e9;
                let steps = gbps * sel.len() as f64;
                eprintln!("resident {name}, groups {label}, {w} bytes per slot: {gbps:.2} GB/s");
                let _ = writeln!(
                    s,
                    "| {name} | {label} | {w} | {} | {in_flight_max} | {:.4} | {gbps:.2} | {steps:.2} | {}{} |",
                    pass.slots,
                    pass.best,
                    pass.found,
                    pass.failed
                        .map(|f| format!(" (a slot faulted: {f})"))
                        .unwrap_or_default()
                );
            }
        }
        let _ = mk.shutdown();
    }
    let _ = writeln!(
        s,
        "\nThe first pass is a warm-up; the best of the next {} is shown. Each slot scans its bytes from the start state on its own (no overlap between slots): the scan work of a file pass without I/O, copies and hit read-back. Hit regions hold {RESIDENT_CAP} hits; a slot with more still counts them all (r0). GB/s = corpus bytes / s; table steps = bytes × groups scanned / s (one DFA step per byte and group).",
        a.resident_reps.max(1),
    );
    Ok(s)
}

/// One timed selection of the resident probe.
struct ResidentPass {
    slots: usize,
    best: f64,
    found: u64,
    failed: Option<String>,
}

/// Hits each resident-probe slot's region holds (a slot with more still counts them, r0).
const RESIDENT_CAP: u32 = 64;

/// DFA_SCAN of every data buffer with every table in `tables`, `per_chunk` slots of `w`
/// bytes per buffer, hits into `hit_buffers` (one per data buffer, a region per slot): a
/// warm-up pass and `a.resident_reps` timed ones.
#[allow(clippy::too_many_arguments)]
fn resident_pass(
    mk: &Megakernel,
    tables: &[u32],
    data: &[u32],
    hit_buffers: &[u32],
    per_chunk: usize,
    w: usize,
    a: &Args,
    in_flight_max: usize,
) -> Result<ResidentPass, Box<dyn std::error::Error>> {
    let region = HIT_HEADER_BYTES + 8 * u64::from(RESIDENT_CAP);
    let batch = 1 << 12;
    let mut slots = Vec::new();
    for (&d, &hits) in data.iter().zip(hit_buffers) {
        for k in 0..per_chunk {
            for (g, &table) in tables.iter().enumerate() {
                let hoff = ((k * tables.len() + g) as u64 * region) as u32;
                slots.push(Slot::new(
                    SlotOp::DfaScan,
                    &[
                        table,
                        d,
                        (k * w) as u32,
                        w as u32,
                        0,
                        START_LOOKBEHIND | START_TEXT as u32,
                        hits,
                        hoff,
                    ],
                ));
            }
        }
    }
    let mut pass = ResidentPass {
        slots: slots.len(),
        best: f64::INFINITY,
        found: 0,
        failed: None,
    };
    for _ in 0..=a.resident_reps.max(1) {
        let t = Instant::now();
        let mut pending = std::collections::VecDeque::new();
        let mut n_found = 0u64;
        for part in slots.chunks(batch) {
            while (pending.len() + 1) * batch > in_flight_max {
                let r = pending.pop_front().expect("pending");
                for c in mk.wait_range(r)? {
                    tally(&c, &mut n_found, &mut pass.failed);
                }
            }
            pending.push_back(mk.publish_batch(part)?);
        }
        for r in pending {
            for c in mk.wait_range(r)? {
                tally(&c, &mut n_found, &mut pass.failed);
            }
        }
        pass.best = pass.best.min(t.elapsed().as_secs_f64());
        pass.found = n_found;
    }
    Ok(pass)
}

/// Adds a DFA_SCAN completion's match count (r0), or notes its fault.
fn tally(c: &vyre_runtime::Completion, found: &mut u64, failed: &mut Option<String>) {
    match c.outcome {
        vyre_runtime::Outcome::Done(r) => *found += u64::from(r[0]),
        vyre_runtime::Outcome::Fault(f) => {
            failed.get_or_insert(format!("{f:?}"));
        }
    }
}
