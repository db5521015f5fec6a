//! Loading cases and gaps.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use vyre_isa::{assemble, Module};

/// A case file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CaseError {
    /// Reading failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is not a case.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

/// Ring and megakernel settings a case may override.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseConfig {
    /// Ring capacity.
    pub capacity: Option<u32>,
    /// First ring position.
    pub start_position: Option<u32>,
    /// Step budget per EXEC slot.
    pub step_budget: Option<u64>,
    /// Tenant count.
    pub tenants: Option<u16>,
    /// Workers.
    pub workers: Option<usize>,
    /// Debug log capacity.
    pub debug_capacity: Option<u32>,
}

/// One expected slot outcome.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectSlot {
    /// `done` or `fault`.
    pub status: String,
    /// The fault code name, for `fault`.
    pub fault: Option<String>,
    /// All four result words (for `done`).
    pub results: Option<Vec<u32>>,
    /// The fault detail word.
    pub detail: Option<u32>,
    /// The fault location (pc or sub-op index).
    pub at: Option<u32>,
}

/// What a case expects.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Per slot, in order; must list every slot.
    #[serde(default)]
    pub slot: Vec<ExpectSlot>,
    /// Final buffer contents by name: `hex:..`, `u32:..` or `ascii:..`; bytes past the
    /// given ones must be zero.
    #[serde(default)]
    pub buffers: BTreeMap<String, String>,
    /// Substrings of the errors loading each program, by program name.
    #[serde(default)]
    pub load_error: BTreeMap<String, String>,
    /// Substring of the error publishing the slots (then no slot runs).
    pub publish_error: Option<String>,
    /// Debug records drained at the end.
    pub debug_records: Option<usize>,
    /// Debug records dropped.
    pub debug_dropped: Option<u32>,
    /// Final epoch.
    pub epoch: Option<u32>,
}

/// A file fixture: written to a temporary directory and registered for IO_READ before any
/// slot runs, in declaration order (the first gets file id 1).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// Its name (for reports and the file name on disk).
    pub name: String,
    /// Its contents, written like `expect.buffers` (`hex:`, `u32:`, `ascii:`).
    pub bytes: String,
}

/// A case file as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseSpec {
    /// What it checks.
    pub description: String,
    /// `serial` (default: publish a slot, wait, publish the next) or `batch` (publish
    /// everything at once; only for cases whose result does not depend on order).
    #[serde(default)]
    pub mode: Option<String>,
    /// Settings.
    #[serde(default)]
    pub config: CaseConfig,
    /// The module, in `.vasm`.
    pub vasm: String,
    /// File fixtures for IO_READ (`[[file]]` tables), ids 1, 2, ... in order.
    #[serde(default)]
    pub file: Vec<FileSpec>,
    /// Expectations.
    pub expect: Expect,
}

/// A loaded case.
#[derive(Clone, Debug)]
pub struct Case {
    /// The file stem.
    pub name: String,
    /// The file.
    pub path: PathBuf,
    /// As written.
    pub spec: CaseSpec,
    /// Its assembled module.
    pub module: Module,
    /// Whether slots are published all at once.
    pub batch: bool,
}

/// Parses an expected-bytes string.
pub fn parse_bytes(s: &str) -> Result<Vec<u8>, String> {
    let s = s.trim();
    if let Some(h) = s.strip_prefix("hex:") {
        let d: String = h
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '_')
            .collect();
        if d.len() % 2 != 0 {
            return Err(format!("odd number of hex digits in `{s}`"));
        }
        (0..d.len())
            .step_by(2)
            .map(|i| {
                u8::from_str_radix(&d[i..i + 2], 16).map_err(|e| format!("`{}`: {e}", &d[i..i + 2]))
            })
            .collect()
    } else if let Some(w) = s.strip_prefix("u32:") {
        let mut out = Vec::new();
        for t in w.split_whitespace() {
            let v = vyre_isa::asm::parse_number(t).ok_or(format!("`{t}` is not a number"))?;
            out.extend_from_slice(&(v as u32).to_le_bytes());
        }
        Ok(out)
    } else if let Some(a) = s.strip_prefix("ascii:") {
        Ok(a.as_bytes().to_vec())
    } else {
        Err(format!("`{s}` must start with hex:, u32: or ascii:"))
    }
}

fn load_case(path: &Path) -> Result<Case, CaseError> {
    let text = std::fs::read_to_string(path).map_err(|source| CaseError::Io {
        path: path.into(),
        source,
    })?;
    let parse = |message: String| CaseError::Parse {
        path: path.into(),
        message,
    };
    let spec: CaseSpec = toml::from_str(&text).map_err(|e| parse(e.to_string()))?;
    let module = assemble(&spec.vasm).map_err(|e| parse(format!("vasm {e}")))?;
    let batch = match spec.mode.as_deref() {
        None | Some("serial") => false,
        Some("batch") => true,
        Some(m) => return Err(parse(format!("mode `{m}` must be `serial` or `batch`"))),
    };
    if spec.expect.publish_error.is_none() && spec.expect.slot.len() != module.slots.len() {
        return Err(parse(format!(
            "{} slots but {} [[expect.slot]] entries: list one per slot",
            module.slots.len(),
            spec.expect.slot.len()
        )));
    }
    for (name, s) in &spec.expect.buffers {
        if !module.buffers.iter().any(|b| &b.name == name) {
            return Err(parse(format!(
                "expect.buffers names unknown buffer `{name}`"
            )));
        }
        parse_bytes(s).map_err(|e| parse(format!("expect.buffers.{name}: {e}")))?;
    }
    for (i, f) in spec.file.iter().enumerate() {
        if f.name.is_empty()
            || !f
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
            || spec.file[..i].iter().any(|g| g.name == f.name)
        {
            return Err(parse(format!(
                "[[file]] {}: a file name is unique and made of letters, digits, `_`, `-`, `.`",
                i + 1
            )));
        }
        parse_bytes(&f.bytes).map_err(|e| parse(format!("[[file]] {}: {e}", f.name)))?;
    }
    for e in &spec.expect.slot {
        match (e.status.as_str(), &e.fault) {
            ("done", None) => {}
            ("fault", Some(f)) if vyre_isa::FaultCode::from_name(f).is_some() => {}
            _ => {
                return Err(parse(format!(
                    "bad expectation {e:?}: status is `done`, or `fault` with a known fault name"
                )))
            }
        }
    }
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(Case {
        name,
        path: path.into(),
        spec,
        module,
        batch,
    })
}

/// Loads every `*.toml` case under `dir/cases`, sorted by name.
pub fn load_cases(dir: &Path) -> Result<Vec<Case>, CaseError> {
    let cases = dir.join("cases");
    let rd = std::fs::read_dir(&cases).map_err(|source| CaseError::Io {
        path: cases.clone(),
        source,
    })?;
    let mut paths: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    paths.iter().map(|p| load_case(p)).collect()
}

/// Known gaps: per backend, case name → reason.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Gaps(pub BTreeMap<String, BTreeMap<String, String>>);

impl Gaps {
    /// Why `backend` skips `case`, if it does.
    pub fn reason(&self, backend: &str, case: &str) -> Option<&str> {
        self.0.get(backend)?.get(case).map(String::as_str)
    }
}

/// Loads `dir/gaps.toml` (absent = no gaps).
pub fn load_gaps(dir: &Path) -> Result<Gaps, CaseError> {
    let path = dir.join("gaps.toml");
    match std::fs::read_to_string(&path) {
        Ok(t) => toml::from_str(&t).map_err(|e| CaseError::Parse {
            path,
            message: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Gaps::default()),
        Err(source) => Err(CaseError::Io { path, source }),
    }
}
