//! The conformance suite runner. Cases are data (`conformance/cases/*.toml`, format in
//! `conformance/README.md`), loaded once and run on any backend. The cpu backend checks them
//! against their written expectations; every other backend is also compared, word for word
//! and byte for byte, with the cpu backend's run of the same case (the oracle). Each
//! backend's known gaps are data too (`conformance/gaps.toml`).

#![forbid(unsafe_code)]

mod case;
mod run;

pub use case::{load_cases, load_gaps, Case, CaseError, Gaps};
pub use run::{check, compare, run_case, run_suite, Observed, SlotObservation, SuiteReport};

/// The repository's `conformance/` folder: `$VYRE_CONFORMANCE_DIR` if set (for test binaries
/// carried to another machine), else the folder beside this crate.
pub fn default_dir() -> std::path::PathBuf {
    match std::env::var_os("VYRE_CONFORMANCE_DIR") {
        Some(d) if !d.is_empty() => d.into(),
        _ => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../conformance"),
    }
}
