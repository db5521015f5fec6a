//! Running cases on a backend and comparing what happened.

use crate::case::{load_cases, load_gaps, parse_bytes, Case};
use std::sync::Arc;
use vyre_runtime::{Backend, Config, Megakernel, Outcome};

/// One slot's outcome as observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SlotObservation {
    /// DONE with results.
    Done([u32; 4]),
    /// FAULT with code name, detail and location.
    Fault(String, u32, u32),
}

/// Everything a run of a case produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// Program load errors, by program name.
    pub load_errors: Vec<(String, String)>,
    /// The publish error, if publishing failed.
    pub publish_error: Option<String>,
    /// Slot outcomes in order.
    pub slots: Vec<SlotObservation>,
    /// Final buffer contents in declaration order.
    pub buffers: Vec<Vec<u8>>,
    /// Debug records drained (position dropped: it depends on the start position only).
    pub debug_records: Vec<[u32; 6]>,
    /// Debug records dropped.
    pub debug_dropped: u32,
    /// Final epoch.
    pub epoch: u32,
}

/// A case's file fixtures in a fresh temporary directory, removed on drop.
struct FixtureDir {
    dir: Option<std::path::PathBuf>,
    paths: Vec<std::path::PathBuf>,
}

impl FixtureDir {
    fn new(case: &Case) -> Result<FixtureDir, String> {
        if case.spec.file.is_empty() {
            return Ok(FixtureDir {
                dir: None,
                paths: Vec::new(),
            });
        }
        static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "vyre-conformance-{}-{}-{}",
            std::process::id(),
            RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            case.name
        ));
        let mut fixtures = FixtureDir {
            dir: Some(dir.clone()),
            paths: Vec::new(),
        };
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {} for file fixtures: {e}", dir.display()))?;
        for f in &case.spec.file {
            let path = dir.join(&f.name);
            let bytes = parse_bytes(&f.bytes).expect("checked at load");
            std::fs::write(&path, bytes)
                .map_err(|e| format!("cannot write fixture {}: {e}", path.display()))?;
            fixtures.paths.push(path);
        }
        Ok(fixtures)
    }
}

impl Drop for FixtureDir {
    fn drop(&mut self) {
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Runs one case on a fresh backend.
pub fn run_case(case: &Case, backend: Arc<dyn Backend>) -> Result<Observed, String> {
    let c = &case.spec.config;
    let d = Config::default();
    let config = Config {
        capacity: c.capacity.unwrap_or(64),
        start_position: c.start_position.unwrap_or(d.start_position),
        step_budget: c.step_budget.unwrap_or(d.step_budget),
        tenants: c.tenants.unwrap_or(d.tenants),
        workers: c.workers,
        debug_capacity: c.debug_capacity.unwrap_or(16),
        ..d
    };
    let mk = Megakernel::launch(backend, config).map_err(|e| format!("launch: {e}"))?;
    let files = FixtureDir::new(case)?;
    for (i, path) in files.paths.iter().enumerate() {
        let id = mk
            .register_file(path)
            .map_err(|e| format!("file {}: {e}", case.spec.file[i].name))?;
        if id as usize != i + 1 {
            return Err(format!(
                "file {} got id {id}, expected {} (ids follow declaration order)",
                case.spec.file[i].name,
                i + 1
            ));
        }
    }
    let mut obs = Observed::default();
    let mut handles = Vec::new();
    for b in &case.module.buffers {
        let h = mk
            .create_buffer_with(b.size.into(), &b.init)
            .map_err(|e| format!("buffer {}: {e}", b.name))?;
        handles.push(h);
    }
    let mut ids = Vec::new();
    for p in &case.module.programs {
        match mk.load_program(&p.bytecode) {
            Ok(id) => ids.push(id),
            Err(e) => {
                obs.load_errors.push((p.name.clone(), e.to_string()));
                ids.push(0); // id 0 is never a program: EXEC faults with bad_program
            }
        }
    }
    let slots: Vec<_> = case
        .module
        .slots
        .iter()
        .map(|s| s.link(&handles, &ids))
        .collect();
    let completions = if case.batch {
        mk.run_batch(&slots)
    } else {
        slots
            .iter()
            .map(|s| mk.publish(*s).and_then(|t| mk.wait(t)))
            .collect()
    };
    match completions {
        Ok(cs) => {
            obs.slots = cs
                .iter()
                .map(|c| match c.outcome {
                    Outcome::Done(r) => SlotObservation::Done(r),
                    Outcome::Fault(f) => {
                        SlotObservation::Fault(f.code.name().to_string(), f.detail, f.at)
                    }
                })
                .collect()
        }
        Err(e) => obs.publish_error = Some(e.to_string()),
    }
    let report = mk.shutdown().map_err(|e| format!("shutdown: {e}"))?;
    if !report.lost.is_empty() {
        return Err(format!(
            "shutdown reported lost slots at positions {:?}",
            report.lost
        ));
    }
    for (b, h) in case.module.buffers.iter().zip(&handles) {
        obs.buffers.push(
            mk.read_buffer(*h, 0, b.size.into())
                .map_err(|e| format!("read {}: {e}", b.name))?,
        );
    }
    obs.debug_records = mk
        .drain_debug_log()
        .iter()
        .map(|r| {
            [
                r.tenant, r.op_word, r.words[0], r.words[1], r.words[2], r.words[3],
            ]
        })
        .collect();
    let stats = mk.stats();
    obs.debug_dropped = stats.debug_dropped;
    obs.epoch = stats.epoch;
    Ok(obs)
}

/// Checks an observation against the case's written expectations. Returns mismatches.
pub fn check(case: &Case, obs: &Observed) -> Vec<String> {
    let e = &case.spec.expect;
    let mut bad = Vec::new();
    for (name, want) in &e.load_error {
        match obs.load_errors.iter().find(|(n, _)| n == name) {
            Some((_, got)) if got.contains(want.as_str()) => {}
            Some((_, got)) => bad.push(format!(
                "program {name}: load error `{got}` does not contain `{want}`"
            )),
            None => bad.push(format!(
                "program {name}: loaded, expected an error containing `{want}`"
            )),
        }
    }
    for (name, got) in &obs.load_errors {
        if !e.load_error.contains_key(name) {
            bad.push(format!("program {name}: unexpected load error `{got}`"));
        }
    }
    match (&e.publish_error, &obs.publish_error) {
        (Some(want), Some(got)) if got.contains(want.as_str()) => {}
        (Some(want), got) => bad.push(format!(
            "expected a publish error containing `{want}`, got {got:?}"
        )),
        (None, Some(got)) => bad.push(format!("unexpected publish error `{got}`")),
        (None, None) => {
            for (i, (want, got)) in e.slot.iter().zip(&obs.slots).enumerate() {
                let ok = match got {
                    SlotObservation::Done(r) => {
                        want.status == "done"
                            && want.results.as_ref().is_none_or(|w| w.as_slice() == r)
                    }
                    SlotObservation::Fault(code, detail, at) => {
                        want.status == "fault"
                            && want.fault.as_deref() == Some(code)
                            && want.detail.is_none_or(|d| d == *detail)
                            && want.at.is_none_or(|a| a == *at)
                    }
                };
                if !ok {
                    bad.push(format!(
                        "slot {i} (line {}): expected {want:?}, got {got:?}",
                        case.module.slots[i].line
                    ));
                }
            }
            if obs.slots.len() != e.slot.len() {
                bad.push(format!(
                    "{} slots completed, {} expected",
                    obs.slots.len(),
                    e.slot.len()
                ));
            }
        }
    }
    for (name, want) in &e.buffers {
        let i = case
            .module
            .buffers
            .iter()
            .position(|b| &b.name == name)
            .expect("checked at load");
        let mut want = parse_bytes(want).expect("checked at load");
        want.resize(case.module.buffers[i].size as usize, 0);
        if obs.buffers[i] != want {
            bad.push(format!(
                "buffer {name}: expected {}, got {}",
                hex(&want),
                hex(&obs.buffers[i])
            ));
        }
    }
    if let Some(n) = e.debug_records {
        if obs.debug_records.len() != n {
            bad.push(format!(
                "{} debug records, expected {n}",
                obs.debug_records.len()
            ));
        }
    }
    if let Some(n) = e.debug_dropped {
        if obs.debug_dropped != n {
            bad.push(format!(
                "{} debug records dropped, expected {n}",
                obs.debug_dropped
            ));
        }
    }
    if let Some(n) = e.epoch {
        if obs.epoch != n {
            bad.push(format!("epoch {}, expected {n}", obs.epoch));
        }
    }
    bad
}

fn hex(b: &[u8]) -> String {
    let shown: String = b.iter().take(64).map(|x| format!("{x:02x}")).collect();
    if b.len() > 64 {
        format!("{shown}... ({} bytes)", b.len())
    } else {
        shown
    }
}

/// Compares a backend's observation with the oracle's, exactly.
pub fn compare(obs: &Observed, oracle: &Observed) -> Vec<String> {
    let mut bad = Vec::new();
    if obs.slots != oracle.slots {
        for (i, (a, b)) in obs
            .slots
            .iter()
            .zip(&oracle.slots)
            .enumerate()
            .filter(|(_, (a, b))| a != b)
        {
            bad.push(format!("slot {i}: {a:?}, oracle {b:?}"));
        }
        if obs.slots.len() != oracle.slots.len() {
            bad.push(format!(
                "{} slots, oracle {}",
                obs.slots.len(),
                oracle.slots.len()
            ));
        }
    }
    for (i, (a, b)) in obs
        .buffers
        .iter()
        .zip(&oracle.buffers)
        .enumerate()
        .filter(|(_, (a, b))| a != b)
    {
        bad.push(format!("buffer {i}: {}, oracle {}", hex(a), hex(b)));
    }
    let sorted = |v: &Vec<[u32; 6]>| {
        let mut v = v.clone();
        v.sort();
        v
    };
    if sorted(&obs.debug_records) != sorted(&oracle.debug_records)
        || obs.debug_dropped != oracle.debug_dropped
    {
        bad.push("debug log differs from the oracle".into());
    }
    if obs.epoch != oracle.epoch
        || obs.publish_error.is_some() != oracle.publish_error.is_some()
        || obs.load_errors.len() != oracle.load_errors.len()
    {
        bad.push("epoch, publish or load errors differ from the oracle".into());
    }
    bad
}

/// The outcome of running the suite on one backend.
#[derive(Debug, Default)]
pub struct SuiteReport {
    /// The backend.
    pub backend: String,
    /// Cases that passed.
    pub passed: Vec<String>,
    /// Cases that failed, with what was wrong.
    pub failed: Vec<(String, Vec<String>)>,
    /// Cases skipped as known gaps, with the reason.
    pub skipped: Vec<(String, String)>,
}

impl SuiteReport {
    /// `conformance on cpu: N passed, N failed, N skipped` and the failures.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "conformance on {}: {} passed, {} failed, {} skipped\n",
            self.backend,
            self.passed.len(),
            self.failed.len(),
            self.skipped.len()
        );
        for (name, why) in &self.skipped {
            s += &format!("  skipped {name}: {why}\n");
        }
        for (name, msgs) in &self.failed {
            s += &format!("  FAILED {name}:\n");
            for m in msgs {
                s += &format!("    {m}\n");
            }
        }
        s
    }
}

/// Runs every case in `dir` on backends made by `make`. `oracle` (the cpu backend's maker),
/// when given, runs each case too and the backend's run must equal it exactly.
pub fn run_suite(
    dir: &std::path::Path,
    name: &str,
    make: &dyn Fn() -> Arc<dyn Backend>,
    oracle: Option<&dyn Fn() -> Arc<dyn Backend>>,
) -> Result<SuiteReport, crate::CaseError> {
    let cases = load_cases(dir)?;
    let gaps = load_gaps(dir)?;
    let mut report = SuiteReport {
        backend: name.to_string(),
        ..SuiteReport::default()
    };
    for case in &cases {
        if let Some(why) = gaps.reason(name, &case.name) {
            report.skipped.push((case.name.clone(), why.to_string()));
            continue;
        }
        let mut bad = Vec::new();
        let progress = std::env::var_os("VYRE_CONFORMANCE_PROGRESS").is_some();
        let started = std::time::Instant::now();
        if progress {
            eprint!("{name}: {} ... ", case.name);
        }
        match run_case(case, make()) {
            Err(e) => bad.push(e),
            Ok(obs) => {
                bad.extend(check(case, &obs));
                if let Some(oracle) = oracle {
                    match run_case(case, oracle()) {
                        Ok(o) => bad.extend(compare(&obs, &o)),
                        Err(e) => bad.push(format!("oracle run failed: {e}")),
                    }
                }
            }
        }
        if progress {
            eprintln!(
                "{} ({:.0} ms)",
                if bad.is_empty() { "ok" } else { "FAILED" },
                started.elapsed().as_secs_f64() * 1e3
            );
        }
        if bad.is_empty() {
            report.passed.push(case.name.clone());
        } else {
            report.failed.push((case.name.clone(), bad));
        }
    }
    Ok(report)
}
