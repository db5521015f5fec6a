//! `vyre scan`: match a rule set over files and directories.

use crate::backends;
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::{self, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use vyre_isa::SlotOp;
use vyre_runtime::{Config, Megakernel, PipelineCache};
use vyre_scan::pipeline::{self, FileError, RuleCounts, ScanOptions, Sink, WalkOptions};
use vyre_scan::{compile, compile_cached, Limits, RuleSet};

/// Arguments of `vyre scan`.
#[derive(Debug, Parser)]
pub struct Args {
    /// Rule file (TOML): `[[rule]]` tables with `name` and one of `literal` or `regex`,
    /// optionally `case_insensitive = true`.
    #[arg(long, value_name = "RULES.toml")]
    pub rules: Option<PathBuf>,
    /// A one-off regex rule (named e0, e1, ... in order); may be repeated.
    #[arg(short = 'e', long = "regexp", value_name = "PATTERN")]
    pub patterns: Vec<String>,
    /// Files and directories to scan.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// JSON Lines on stdout: one object per match (or count), then a summary.
    #[arg(long)]
    pub json: bool,
    /// Print the number of matches per file and rule instead of each match.
    #[arg(long)]
    pub count: bool,
    /// Backend: auto (a GPU if one can run DFA_SCAN, else cpu), cpu, cuda or wgpu.
    #[arg(long, default_value = "auto")]
    pub backend: String,
    /// Don't respect .gitignore, .ignore and similar files.
    #[arg(long)]
    pub no_ignore: bool,
    /// Also scan hidden files and directories.
    #[arg(long)]
    pub hidden: bool,
    /// Follow symbolic links.
    #[arg(long)]
    pub follow: bool,
    /// Exit 0/1 by matches even if some files could not be read (they are still reported).
    #[arg(long)]
    pub no_fail_on_file_errors: bool,
    /// Compile the rules even if the cache holds their tables from an earlier scan, and
    /// store nothing. The cache is the pipeline cache's directory ($VYRE_CACHE_DIR, else
    /// $XDG_CACHE_HOME/vyre/pipelines, else ~/.cache/vyre/pipelines); a corrupt blob there is
    /// reported, removed and compiled again.
    #[arg(long)]
    pub no_rule_cache: bool,
    /// Pipeline settings.
    #[command(flatten)]
    pub tuning: Tuning,
}

/// The scan pipeline's knobs (shared with `vyre bench scan`); unset ones take the backend's
/// defaults (`ScanOptions::for_backend`).
#[derive(Debug, Clone, clap::Args)]
pub struct Tuning {
    /// Bytes of file data per DFA_SCAN slot (default: 1 MiB on cpu, 8 KiB on a GPU).
    #[arg(long, value_name = "BYTES")]
    pub window: Option<usize>,
    /// Bytes per backend transfer (default: 8 MiB on cpu, 16 MiB on a GPU).
    #[arg(long, value_name = "BYTES")]
    pub batch: Option<usize>,
    /// Batches in flight per driver thread (default: 4 on cpu, 6 on a GPU).
    #[arg(long, value_name = "N")]
    pub in_flight: Option<usize>,
    /// Worker threads for the cpu backend (default: one per core).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Threads that walk directories and read files (default: 2 on cpu; on a GPU one per core
    /// that the driver threads leave, 4 to 16).
    #[arg(long, value_name = "N")]
    pub readers: Option<usize>,
    /// Driver threads, each planning, publishing and completing the batches of its share of
    /// the walk threads (default: 1 for `vyre scan`; `vyre bench scan`, whose passes reuse
    /// their batch buffers, 2 on a GPU). Two drivers pay off once the buffers exist: on an
    /// H100 host a fresh process scanning 10 words took 0.26-0.31 s with one driver and
    /// 0.32-0.42 s with two (both making their buffers at once), while passes reusing them
    /// took 0.10-0.13 s with two and 0.13-0.15 s with one at 1,000 words, and 0.28-0.30 s
    /// against 0.41-0.48 s with the secret regexes (bench/results/scan-h100.md, session 11).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=16))]
    pub drivers: Option<u32>,
    /// Read files into plain memory instead of the backend's staging memory (page-locked on
    /// cuda); for measuring what staging gains.
    #[arg(long, hide = true)]
    pub no_staging: bool,
    /// Read every file with system calls, none through io_uring (`ScanOptions::io_uring`;
    /// `VYRE_INGEST_NO_URING=1` does the same); for measuring what io_uring gains.
    #[arg(long, hide = true)]
    pub no_uring: bool,
    /// How rules whose matches can be unboundedly long are scanned: `speculate` (windows
    /// checked in file order, the GPU default), `host` (by the walk threads as they read) or
    /// `chain` (one slot per segment after the file's previous one, the cpu default).
    #[arg(long, value_name = "MODE")]
    pub unbounded: Option<Unbounded>,
    /// How hit regions in host memory are laid out: `fixed` (one size, headers written once
    /// per batch buffer; the GPU default) or `packed` (sized by what each slot scans,
    /// headers written for every batch; the cpu default).
    #[arg(long, value_name = "LAYOUT")]
    pub hit_regions: Option<HitRegions>,
    /// Bounded rule groups scanned together by one slot per window (a table set), at most
    /// this many (default: 4 on a GPU, 1 on cpu; 1: one slot per group per window).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=256))]
    pub set_members: Option<u32>,
}

/// See [`Tuning::hit_regions`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HitRegions {
    /// All of one size, at fixed places.
    Fixed,
    /// Sized by what each slot scans, back to back.
    Packed,
}

/// See [`Tuning::unbounded`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Unbounded {
    /// Speculative windows, checked and scanned again on the host where wrong.
    Speculate,
    /// On the walk threads.
    Host,
    /// One slot per segment, chained.
    Chain,
}

impl Tuning {
    /// The megakernel settings and pipeline options for `backend` with these overrides.
    /// `one_shot`: one scan in this process, which makes its batch buffers (one driver
    /// thread unless `--drivers` says otherwise).
    pub fn apply(&self, backend: &str, walk: WalkOptions, one_shot: bool) -> (Config, ScanOptions) {
        let mut config = pipeline::megakernel_config(backend);
        if self.workers.is_some() {
            config.workers = self.workers;
        }
        let defaults = ScanOptions::for_backend(backend);
        let drivers = self
            .drivers
            .map_or(if one_shot { 1 } else { defaults.drivers }, |n| n as usize);
        let opts = ScanOptions {
            window: self.window.unwrap_or(defaults.window),
            batch: self.batch.unwrap_or(defaults.batch),
            in_flight: self.in_flight.unwrap_or(defaults.in_flight),
            readers: self.readers.unwrap_or(if backend == "cpu" {
                defaults.readers
            } else {
                pipeline::gpu_readers(drivers)
            }),
            staging: !self.no_staging,
            io_uring: !self.no_uring,
            drivers,
            fixed_hit_regions: self
                .hit_regions
                .map_or(defaults.fixed_hit_regions, |l| l == HitRegions::Fixed),
            set_members: self
                .set_members
                .map_or(defaults.set_members, |n| n as usize),
            walk,
            ..defaults
        };
        let opts = match self.unbounded {
            None => opts,
            Some(mode) => ScanOptions {
                speculate_unbounded: mode == Unbounded::Speculate,
                unbounded_on_host: mode == Unbounded::Host,
                ..opts
            },
        };
        (config, opts)
    }
}

/// Runs the scan; exit 0 if anything matched, 1 if nothing did, 2 on error.
pub fn main(a: Args) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let mut rules = match &a.rules {
        Some(p) => RuleSet::load(p)?,
        None => RuleSet::new(),
    };
    for p in &a.patterns {
        rules.push_expr(p)?;
    }
    if rules.is_empty() {
        return Err("no rules: give --rules RULES.toml or -e PATTERN".into());
    }
    // The backend opens on a thread of its own while the rules compile: opening the GPU takes
    // 0.2 s of a one-shot scan on an H100 host, compiling 1,000 words 0.06 s, 10,000 words
    // 0.5-0.9 s and the bench's secret regexes 1 s (less from the rule cache).
    let started = Instant::now();
    let choice = a.backend.clone();
    let opening = std::thread::Builder::new()
        .name("vyre-open-backend".into())
        .spawn(move || {
            let opened = backends::create(&choice, &[SlotOp::DfaScan]).map_err(|e| e.to_string());
            (opened, started.elapsed())
        })?;
    let compiled = if a.no_rule_cache {
        compile(&rules, &Limits::default()).map(|c| (c, "compiled (--no-rule-cache)".to_string()))
    } else {
        let cache = PipelineCache::open_default();
        compile_cached(&rules, &Limits::default(), &cache).map(|(c, how)| (c, how.to_string()))
    };
    let compile_seconds = started.elapsed().as_secs_f64();
    // Joined before any error returns: the process does not exit while a driver opens.
    let (opened, open_time) = opening
        .join()
        .map_err(|_| "opening the backend panicked (see the message above)")?;
    let (compiled, how) = compiled?;
    tracing::info!(
        rules = rules.len(),
        groups = compiled.groups.len(),
        seconds = compile_seconds,
        how,
        "rules compiled"
    );
    let (backend, decision) = opened?;
    tracing::info!(
        backend = decision.backend,
        reason = %decision.reason,
        seconds = open_time.as_secs_f64(),
        "backend chosen"
    );
    let backend_name = backend.name();
    let walk = WalkOptions {
        hidden: a.hidden,
        no_ignore: a.no_ignore,
        follow: a.follow,
    };
    let (config, opts) = a.tuning.apply(backend_name, walk, true);
    let mk = Megakernel::launch(backend, config)?;
    let mut out = Printer::new(&a, &compiled.names);
    let result = pipeline::scan(&mk, &compiled, &a.paths, &opts, &mut out);
    out.finish_progress();
    let t = Instant::now();
    let shut = mk.shutdown();
    // Its buffers freed and the device closed (page-locked memory is slow to give back).
    drop(mk);
    tracing::info!(
        seconds = t.elapsed().as_secs_f64(),
        "backend shut down and closed"
    );
    let summary = result?;
    shut?;
    out.summary(&summary, backend_name)?;
    if let Some(e) = out.error.take() {
        if e.kind() != io::ErrorKind::BrokenPipe {
            return Err(e.into());
        }
    }
    Ok(if summary.file_errors > 0 && !a.no_fail_on_file_errors {
        ExitCode::from(2)
    } else if summary.matches > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Prints matches (or counts), file errors and the summary.
struct Printer<'a> {
    out: BufWriter<io::Stdout>,
    names: &'a [String],
    json: bool,
    count: bool,
    /// Per file in flight (readers interleave files), by the walk's file id (the same path
    /// reached twice is counted twice, apart): rule → count.
    counts: RuleCounts,
    error: Option<io::Error>,
    bar: Option<ProgressBar>,
    last_tick: Instant,
}

impl<'a> Printer<'a> {
    fn new(a: &Args, names: &'a [String]) -> Printer<'a> {
        let bar = io::stderr().is_terminal().then(|| {
            let b = ProgressBar::new_spinner();
            b.set_style(
                ProgressStyle::with_template(
                    "{spinner} {elapsed} {bytes} scanned, {msg} ({bytes_per_sec})",
                )
                .expect("a valid template"),
            );
            b.enable_steady_tick(Duration::from_millis(120));
            b
        });
        Printer {
            out: BufWriter::with_capacity(1 << 16, io::stdout()),
            names,
            json: a.json,
            count: a.count,
            counts: RuleCounts::default(),
            error: None,
            bar,
            last_tick: Instant::now(),
        }
    }

    fn emit(&mut self, line: std::fmt::Arguments<'_>) {
        if self.error.is_none() {
            if let Err(e) = self.out.write_fmt(line) {
                self.error = Some(e);
            }
        }
    }

    fn flush_counts(&mut self, file: u64, path: &Path) {
        let counts = self.counts.take(file);
        for (rule, n) in counts {
            let name = &self.names[rule as usize];
            if self.json {
                let v = serde_json::json!({
                    "type": "count", "path": path.to_string_lossy(), "rule": name, "count": n,
                });
                self.emit(format_args!("{v}\n"));
            } else {
                self.emit(format_args!("{}:{name}:{n}\n", path.display()));
            }
        }
    }

    fn finish_progress(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }

    fn summary(&mut self, s: &pipeline::Summary, backend: &str) -> io::Result<()> {
        let gbps = s.bytes as f64 / s.seconds.max(1e-9) / 1e9;
        if self.json {
            let v = serde_json::json!({
                "type": "summary", "files": s.files, "bytes": s.bytes, "matches": s.matches,
                "file_errors": s.file_errors, "seconds": s.seconds, "backend": backend,
            });
            self.emit(format_args!("{v}\n"));
        } else {
            eprintln!(
                "vyre scan: {} matches in {} files, {} bytes in {:.3} s ({gbps:.2} GB/s) on {backend}{}",
                s.matches,
                s.files,
                s.bytes,
                s.seconds,
                if s.file_errors > 0 {
                    format!(", {} file errors", s.file_errors)
                } else {
                    String::new()
                }
            );
        }
        if self.error.is_none() {
            self.out.flush()?;
        }
        Ok(())
    }
}

impl Sink for Printer<'_> {
    /// Counts need no order; match lines come by increasing end.
    fn ordered(&self) -> bool {
        !self.count
    }

    fn matched(&mut self, file: u64, path: &Path, end: u64, rule: u32) {
        if self.count {
            self.counts.add(file, rule);
            return;
        }
        let name = &self.names[rule as usize];
        if self.json {
            let v = serde_json::json!({
                "type": "match", "path": path.to_string_lossy(), "rule": name, "end": end,
            });
            self.emit(format_args!("{v}\n"));
        } else {
            self.emit(format_args!("{}:{end}:{name}\n", path.display()));
        }
    }

    fn file_done(&mut self, file: u64, path: &Path, _bytes: u64) {
        if self.count {
            self.flush_counts(file, path);
        }
    }

    fn file_error(&mut self, file: u64, e: &FileError) {
        if self.count {
            self.flush_counts(file, &e.path);
        }
        if let Some(b) = &self.bar {
            b.suspend(|| eprintln!("vyre scan: {e}"));
        } else {
            eprintln!("vyre scan: {e}");
        }
        if self.json {
            let v = serde_json::json!({
                "type": "error", "path": e.path.to_string_lossy(), "message": e.message,
            });
            self.emit(format_args!("{v}\n"));
        }
    }

    /// A failed write to stdout (closed by `| head`, or a full disk) ends the scan early:
    /// nothing more could be printed.
    fn stopped(&self) -> bool {
        self.error.is_some()
    }

    fn progress(&mut self, bytes: u64, files: u64) {
        if let Some(b) = &self.bar {
            if self.last_tick.elapsed() > Duration::from_millis(100) {
                self.last_tick = Instant::now();
                b.set_position(bytes);
                b.set_message(format!("{files} files"));
            }
        }
    }
}
