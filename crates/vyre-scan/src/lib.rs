//! The rule compiler for `vyre scan`: rule files in, `VDFA` tables (the format the
//! DFA_SCAN slot opcode runs, `vyre_isa::dfa`) out.
//!
//! * [`rules`]: [`Rule`], [`RuleSet`], the TOML rule file and its errors;
//! * [`compile`](mod@compile): rule sets to groups of union DFAs, byte-class compressed;
//! * [`cache`]: compiled rule sets kept in the pipeline cache ([`compile_cached`]);
//! * [`scan`]: DFA_SCAN on the host over a slice ([`scan_slice`]), and [`check_table`];
//! * [`reference`]: an independent engine ([`reference_matches`]) for tests and checks.
//!
//! Match semantics: for every rule, every byte offset at which a match ends (just past its
//! last byte); overlapping matches all count, as in Hyperscan's default reporting.

#![forbid(unsafe_code)]

pub mod cache;
pub mod compile;
mod literal;
pub mod pipeline;
pub mod reference;
pub mod rules;
pub mod scan;

pub use cache::compile_cached;
pub use compile::{compile, CompileError, CompileErrorKind, Compiled, Group, Limits, OVERLAP_CAP};
pub use reference::{reference_matches, ReferenceError};
pub use rules::{Pattern, Rule, RuleError, RuleErrorKind, RuleRef, RuleSet};
pub use scan::{check_table, scan_slice, Start, TableError};
