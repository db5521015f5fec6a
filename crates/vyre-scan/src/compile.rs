//! Compiling a [`RuleSet`] into `VDFA` tables (format: `vyre_isa::dfa`).
//!
//! Rules are split into *bounded* rules (longest match ≤ [`OVERLAP_CAP`] bytes) and
//! *unbounded* ones. Literals become Aho-Corasick tables (`crate::literal`). Regexes are
//! cut into groups of at most [`Limits::max_group_rules`] rules; each group is one union
//! DFA (regex-automata's dense DFA, `MatchKind::All`, unanchored, byte classes) whose
//! match states list the group's pattern ids. Each regex is first built alone (a rule
//! that does not fit the limits is an error naming it); a trial union over its cap is
//! split in halves until it fits.
//!
//! The conversion keeps regex-automata's one-byte match delay: entering a match state on
//! byte `i` means a match ended at `i`, which is exactly DFA_SCAN's convention, and the
//! end-of-input column gives matches that end at the end of the text.

use crate::literal::literal_table;
use crate::rules::{Pattern, RuleSet};
use rayon::prelude::*;
use regex_automata::dfa::{dense, Automaton};
use regex_automata::nfa::thompson::{self, WhichCaptures};
use regex_automata::util::primitives::StateID;
use regex_automata::util::start;
use regex_automata::{Anchored, MatchKind};
use regex_syntax::hir::Hir;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use vyre_isa::dfa::{
    CLASS_MAP_WORD, HEADER_WORDS, MAGIC, MATCH_BIT, START_TEXT, START_WORD, TRANS_WORD, UNBOUNDED,
    VERSION,
};

/// Rules whose longest match is at most this many bytes go into bounded groups (scanned in
/// overlapping windows); longer or unbounded ones go into unbounded groups (scanned with
/// the state carried from window to window).
pub const OVERLAP_CAP: u32 = 4096;

/// A trial union of regex rules may use this many times the bytes of its rules' own
/// tables before it is halved.
const UNION_GROWTH: usize = 8;

/// A regex rule whose own table exceeds `max_table_bytes / ALONE_FRACTION` gets a group
/// of its own.
const ALONE_FRACTION: usize = 16;

/// Threads a compile builds groups on at most ([`compile`]): each may hold one DFA under
/// construction, so a compile's memory can reach this many times `dfa_size_limit` +
/// `determinize_size_limit`.
pub const COMPILE_THREADS: usize = 8;

/// Size limits for compilation. Per DFA under construction; a compile builds up to
/// [`COMPILE_THREADS`] at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest table of a regex group, in bytes (default 64 MiB). Regex unions are capped
    /// at fractions of it (a larger limit lets more trial unions run longer before failing).
    pub max_table_bytes: usize,
    /// Largest table of a literal group, in bytes (default 256 MiB). Each group costs every
    /// scanned byte one more table step, every window one more slot and hit region:
    /// 10,000 corpus words fit one 170 MB table, which an H100 scans faster than four
    /// 42 MB ones (bench/results/scan-h100.md).
    pub max_literal_table_bytes: usize,
    /// regex-automata's limit on one DFA's heap size while building (default 128 MiB).
    pub dfa_size_limit: usize,
    /// regex-automata's limit on the determinizer's scratch memory (default 128 MiB).
    pub determinize_size_limit: usize,
    /// Most rules in one group before any size limit is hit (default 1000). Determinizing
    /// a union of n patterns costs about n per transition, so very large unions are slow
    /// even when their table is small; see `bench/results/scan-compile.md`.
    pub max_group_rules: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_table_bytes: 64 << 20,
            max_literal_table_bytes: 256 << 20,
            dfa_size_limit: 128 << 20,
            determinize_size_limit: 128 << 20,
            max_group_rules: 1000,
        }
    }
}

/// One `VDFA` table and what its pattern ids mean.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// The table words (little-endian u32 when uploaded).
    pub table: Vec<u32>,
    /// Pattern id → rule index.
    pub rules: Vec<u32>,
    /// Longest match of any rule in the group; `None` = unbounded (carry the state).
    pub max_len: Option<u32>,
}

/// A compiled rule set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compiled {
    /// The tables; every rule is in exactly one group.
    pub groups: Vec<Group>,
    /// Rule index → rule name.
    pub names: Vec<String>,
}

/// Why compilation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileError {
    kind: CompileErrorKind,
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CompileErrorKind {
    /// The rule set is empty.
    #[error("no rules to compile; add a rule file or -e PATTERN")]
    Empty,
    /// One rule alone exceeds a size limit.
    #[error(
        "rule {name:?} is too large for the scan DFA: {reason}; \
         simplify it (every overlapping match is tracked, so a repetition like \
         [0-9A-Za-z-]{{10,48}} whose class also matches the rule's own start needs a state \
         per set of starts; large Unicode classes multiply states too, `(?-u:...)` keeps \
         them ASCII) or raise the limit"
    )]
    RuleTooLarge {
        /// The rule's name.
        name: String,
        /// Which limit, and its value.
        reason: String,
    },
    /// regex-automata refused to build for a reason other than size (should not happen
    /// for rules that passed [`RuleSet`]'s checks).
    #[error("rule group {names} cannot be compiled: {reason}")]
    Build {
        /// The first names of the group.
        names: String,
        /// The builder's message.
        reason: String,
    },
}

impl CompileError {
    fn new(kind: CompileErrorKind) -> CompileError {
        CompileError { kind }
    }
    /// What went wrong.
    pub fn kind(&self) -> &CompileErrorKind {
        &self.kind
    }
}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.kind.fmt(f)
    }
}

impl std::error::Error for CompileError {}

/// How a group is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Literals only, as an Aho-Corasick automaton (`crate::literal`); `fold` = ASCII
    /// case-insensitive.
    Literal { fold: bool },
    /// regex-automata's dense DFA over the rules' syntax trees.
    Regex,
}

/// Compiles every rule into groups of `VDFA` tables.
///
/// Case-sensitive literals form one group and case-insensitive literals another (each
/// split only when its table exceeds `max_literal_table_bytes`); bounded and unbounded regexes
/// form groups of at most `max_group_rules`: each rule is built alone first (a rule over
/// the limits is an error naming it), then unions are tried, each capped at a few times
/// its rules' own tables and halved when over the cap.
pub fn compile(rules: &RuleSet, limits: &Limits) -> Result<Compiled, CompileError> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(COMPILE_THREADS);
    compile_on(rules, limits, threads)
}

/// [`compile`] on `threads` threads.
fn compile_on(rules: &RuleSet, limits: &Limits, threads: usize) -> Result<Compiled, CompileError> {
    if rules.is_empty() {
        return Err(CompileError::new(CompileErrorKind::Empty));
    }
    let hirs = rules.hirs();
    let (mut lit, mut lit_fold, mut bounded, mut unbounded) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (i, (r, h)) in rules.rules().iter().zip(hirs).enumerate() {
        let i = i as u32;
        match (&r.pattern, h.properties().maximum_len()) {
            (Pattern::Literal(l), _) if l.len() <= OVERLAP_CAP as usize => {
                if r.case_insensitive {
                    lit_fold.push(i)
                } else {
                    lit.push(i)
                }
            }
            (_, Some(n)) if n <= OVERLAP_CAP as usize => bounded.push(i),
            _ => unbounded.push(i),
        }
    }
    let b = Builder { rules, limits };
    // Independent pieces of work, built on up to `threads` threads (a DFA per regex rule,
    // then their unions, took 1.4-2.1 s for the bench's 20 secret regexes on one thread),
    // their groups kept in this order and the first failing piece's error reported, as on
    // one thread.
    let per = limits.max_group_rules.max(1);
    let mut jobs: Vec<(Option<Kind>, &[u32])> = vec![
        (Some(Kind::Literal { fold: false }), &lit),
        (Some(Kind::Literal { fold: true }), &lit_fold),
    ];
    for set in [&bounded, &unbounded] {
        jobs.extend(set.chunks(per).map(|chunk| (None, chunk)));
    }
    let build = || -> Vec<Result<Vec<Group>, CompileError>> {
        jobs.par_iter()
            .map(|&(kind, members)| {
                let mut out = Vec::new();
                match kind {
                    Some(kind) => b.split(kind, members, &mut out)?,
                    None => b.regex_groups(members, &mut out)?,
                }
                Ok(out)
            })
            .collect()
    };
    let built = match rayon::ThreadPoolBuilder::new().num_threads(threads).build() {
        Ok(pool) => pool.install(build),
        // No threads to be had: the calling thread builds everything.
        Err(_) => build(),
    };
    let mut groups = Vec::new();
    for g in built {
        groups.extend(g?);
    }
    for (i, g) in groups.iter().enumerate() {
        tracing::debug!(
            target: "vyre_scan::compile",
            "group {i}: {} rule(s), table {} bytes, longest match {}",
            g.rules.len(),
            g.table.len() * 4,
            g.max_len.map_or("unbounded".into(), |n| format!("{n} bytes")),
        );
    }
    let names = rules.rules().iter().map(|r| r.name.clone()).collect();
    Ok(Compiled { groups, names })
}

struct Builder<'a> {
    rules: &'a RuleSet,
    limits: &'a Limits,
}

impl Builder<'_> {
    /// Builds one group, halving it while it exceeds a size limit.
    fn split(&self, kind: Kind, members: &[u32], out: &mut Vec<Group>) -> Result<(), CompileError> {
        if members.is_empty() {
            return Ok(());
        }
        match self.group(kind, members, None) {
            Ok(g) => {
                out.push(g);
                Ok(())
            }
            Err(GroupError::TooLarge(_)) if members.len() > 1 => {
                let (a, b) = members.split_at(members.len() / 2);
                in_order(out, |o| self.split(kind, a, o), |o| self.split(kind, b, o))
            }
            Err(e) => Err(self.error(e, members)),
        }
    }

    /// Regex groups: every rule alone first, so a rule over the limits is named at once
    /// and each union below can be capped at [`UNION_GROWTH`] times its rules' tables
    /// (a union whose states multiply then fails fast instead of running to the size
    /// limits); a union over its cap is halved.
    fn regex_groups(&self, members: &[u32], out: &mut Vec<Group>) -> Result<(), CompileError> {
        let built: Vec<Result<Group, CompileError>> = members
            .par_iter()
            .map(|&m| {
                self.group(Kind::Regex, &[m], None)
                    .map_err(|e| self.error(e, &[m]))
            })
            .collect();
        let mut solo = HashMap::new();
        for (&m, g) in members.iter().zip(built) {
            solo.insert(m, g?);
        }
        // A rule whose own table is already large stays alone: a union with it would run
        // to the limits before failing. The rest are merged smallest first.
        let alone = self.limits.max_table_bytes / ALONE_FRACTION;
        let (big, mut small): (Vec<u32>, Vec<u32>) = members
            .iter()
            .partition(|m| solo[m].table.len() * 4 > alone);
        small.sort_by_key(|m| solo[m].table.len());
        for m in big {
            out.push(solo[&m].clone());
        }
        if small.is_empty() {
            return Ok(());
        }
        self.merge(&small, &solo, out)
    }

    /// The union of `members`, or groups of fewer of them where it is too large. The union's
    /// halves are tried beside it (on another core): a union too large fails only at its
    /// cap, 0.5 s each for the secret regexes' unbounded ones, and trying the halves after
    /// it made the failures add up along the halving.
    fn merge(
        &self,
        members: &[u32],
        solo: &HashMap<u32, Group>,
        out: &mut Vec<Group>,
    ) -> Result<(), CompileError> {
        if let [m] = members {
            out.push(solo[m].clone());
            return Ok(());
        }
        let (a, b) = members.split_at(members.len() / 2);
        let (whole, (first, second)) = if rayon::current_num_threads() > 1 {
            rayon::join(
                || self.union(members, solo),
                || rayon::join(|| Some(self.union(a, solo)), || Some(self.union(b, solo))),
            )
        } else {
            // One thread: the halves are tried only where the whole is too large.
            (self.union(members, solo), (None, None))
        };
        match whole {
            Ok(g) => {
                out.push(g);
                Ok(())
            }
            Err(GroupError::TooLarge(_)) => in_order(
                out,
                |o| self.settle(a, first, solo, o),
                |o| self.settle(b, second, solo, o),
            ),
            Err(e) => Err(self.error(e, members)),
        }
    }

    /// `members` given their union's outcome (`None`: not tried yet): the union, or
    /// [`Builder::merge`] of its halves where it was too large.
    fn settle(
        &self,
        members: &[u32],
        union: Option<Result<Group, GroupError>>,
        solo: &HashMap<u32, Group>,
        out: &mut Vec<Group>,
    ) -> Result<(), CompileError> {
        match union.unwrap_or_else(|| self.union(members, solo)) {
            Ok(g) => {
                out.push(g);
                Ok(())
            }
            Err(GroupError::TooLarge(_)) => {
                let (a, b) = members.split_at(members.len() / 2);
                in_order(out, |o| self.merge(a, solo, o), |o| self.merge(b, solo, o))
            }
            Err(e) => Err(self.error(e, members)),
        }
    }

    /// One trial union of `members` (a lone rule is its own table), capped at
    /// [`UNION_GROWTH`] times its rules' tables.
    fn union(&self, members: &[u32], solo: &HashMap<u32, Group>) -> Result<Group, GroupError> {
        if let [m] = members {
            return Ok(solo[m].clone());
        }
        let sum: usize = members.iter().map(|m| solo[m].table.len() * 4).sum();
        let cap = sum.saturating_mul(UNION_GROWTH).max(2 << 20);
        let t = std::time::Instant::now();
        let union = self.group(Kind::Regex, members, Some(cap));
        tracing::debug!(
            target: "vyre_scan::compile",
            "union of {} regex rules (cap {cap} bytes): {} in {:.3} s",
            members.len(),
            if union.is_ok() { "built" } else { "too large" },
            t.elapsed().as_secs_f64()
        );
        union
    }

    fn error(&self, e: GroupError, members: &[u32]) -> CompileError {
        let name = |i: u32| self.rules.rules()[i as usize].name.clone();
        match e {
            GroupError::TooLarge(reason) => CompileError::new(CompileErrorKind::RuleTooLarge {
                name: name(members[0]),
                reason,
            }),
            GroupError::Other(reason) => {
                let mut list: Vec<String> = members.iter().take(3).map(|&i| name(i)).collect();
                if members.len() > 3 {
                    list.push("...".into());
                }
                CompileError::new(CompileErrorKind::Build {
                    names: list.join(", "),
                    reason,
                })
            }
        }
    }

    /// One group; `cap` lowers the DFA and table size limits (for trial unions).
    fn group(&self, kind: Kind, members: &[u32], cap: Option<usize>) -> Result<Group, GroupError> {
        let capped;
        let limits = match cap {
            Some(c) => {
                capped = Limits {
                    dfa_size_limit: self.limits.dfa_size_limit.min(c),
                    max_table_bytes: self.limits.max_table_bytes.min(c),
                    max_literal_table_bytes: self.limits.max_literal_table_bytes.min(c),
                    ..*self.limits
                };
                &capped
            }
            None => self.limits,
        };
        let hirs: Vec<&Hir> = members
            .iter()
            .map(|&i| &self.rules.hirs()[i as usize])
            .collect();
        let mut max_len = Some(0u32);
        for h in &hirs {
            max_len = match (max_len, h.properties().maximum_len()) {
                (Some(a), Some(b)) if b <= OVERLAP_CAP as usize => Some(a.max(b as u32)),
                _ => None,
            };
        }
        let (max_bytes, limit) = match kind {
            Kind::Literal { .. } => (limits.max_literal_table_bytes, "max_literal_table_bytes"),
            Kind::Regex => (limits.max_table_bytes, "max_table_bytes"),
        };
        let too_large =
            || GroupError::TooLarge(format!("its table exceeds {limit} ({max_bytes} bytes)"));
        let parts = match kind {
            Kind::Literal { fold } => {
                let lits: Vec<&[u8]> = members
                    .iter()
                    .map(|&i| match &self.rules.rules()[i as usize].pattern {
                        Pattern::Literal(l) => l.as_slice(),
                        Pattern::Regex(_) => unreachable!("literal groups hold literals"),
                    })
                    .collect();
                literal_table(&lits, fold, max_bytes / 4).ok_or_else(too_large)?
            }
            Kind::Regex => to_parts(&build_dfa(&hirs, limits)?, max_bytes)?,
        };
        let table =
            assemble(&parts, members.len() as u32, max_len, max_bytes / 4).ok_or_else(too_large)?;
        Ok(Group {
            table,
            rules: members.to_vec(),
            max_len,
        })
    }
}

/// `first` and `second` on rayon's threads, their groups appended to `out` in that order; the
/// first one's error if both fail, as on one thread.
fn in_order(
    out: &mut Vec<Group>,
    first: impl FnOnce(&mut Vec<Group>) -> Result<(), CompileError> + Send,
    second: impl FnOnce(&mut Vec<Group>) -> Result<(), CompileError> + Send,
) -> Result<(), CompileError> {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let (ra, rb) = rayon::join(|| first(&mut a), || second(&mut b));
    ra?;
    rb?;
    out.append(&mut a);
    out.append(&mut b);
    Ok(())
}

enum GroupError {
    TooLarge(String),
    Other(String),
}

/// The regex-automata DFA for a list of rules (pattern id k = `members[k]`).
fn build_dfa(hirs: &[&Hir], limits: &Limits) -> Result<dense::DFA<Vec<u32>>, GroupError> {
    let nfa = thompson::Compiler::new()
        .configure(
            thompson::Config::new()
                .which_captures(WhichCaptures::None)
                .nfa_size_limit(Some(limits.dfa_size_limit)),
        )
        .build_many_from_hir(hirs)
        .map_err(|e| match e.size_limit() {
            Some(limit) => GroupError::TooLarge(format!("its NFA exceeds {limit} bytes")),
            None => GroupError::Other(e.to_string()),
        })?;
    dense::Builder::new()
        .configure(
            dense::Config::new()
                .match_kind(MatchKind::All)
                .start_kind(regex_automata::dfa::StartKind::Unanchored)
                .byte_classes(true)
                .starts_for_each_pattern(false)
                .accelerate(false)
                .minimize(false)
                .dfa_size_limit(Some(limits.dfa_size_limit))
                .determinize_size_limit(Some(limits.determinize_size_limit)),
        )
        .build_from_nfa(&nfa)
        .map_err(|e| {
            if e.is_size_limit_exceeded() {
                GroupError::TooLarge(format!(
                    "{e} (dfa_size_limit {} bytes, determinize_size_limit {} bytes)",
                    limits.dfa_size_limit, limits.determinize_size_limit
                ))
            } else {
                GroupError::Other(e.to_string())
            }
        })
}

/// Converts a dense DFA into `VDFA` words: the states reachable from the 257 start
/// states, numbered in breadth-first order.
fn to_parts(dfa: &dense::DFA<Vec<u32>>, max_table_bytes: usize) -> Result<Parts, GroupError> {
    let bc = dfa.byte_classes();
    let mut class_of = [0u8; 256];
    let mut rep: Vec<u8> = Vec::new();
    for b in 0..=255u8 {
        let c = bc.get(b);
        class_of[usize::from(b)] = c;
        if usize::from(c) == rep.len() {
            rep.push(b);
        }
    }
    let classes = rep.len();
    if class_of.iter().any(|&c| usize::from(c) >= classes) {
        return Err(GroupError::Other(
            "byte classes are not numbered densely".into(),
        ));
    }
    let stride = classes + 1;

    let mut index: HashMap<StateID, u32> = HashMap::new();
    let mut order: Vec<StateID> = Vec::new();
    let mut queue = VecDeque::new();
    let mut visit = |id: StateID, order: &mut Vec<StateID>, queue: &mut VecDeque<StateID>| {
        *index.entry(id).or_insert_with(|| {
            order.push(id);
            queue.push_back(id);
            (order.len() - 1) as u32
        })
    };
    let mut starts = [0u32; START_TEXT + 1];
    for (code, slot) in starts.iter_mut().enumerate() {
        let lb = u8::try_from(code).ok();
        let cfg = start::Config::new().anchored(Anchored::No).look_behind(lb);
        let id = dfa
            .start_state(&cfg)
            .map_err(|e| GroupError::Other(e.to_string()))?;
        *slot = visit(id, &mut order, &mut queue);
    }
    let limit_words = max_table_bytes / 4;
    let too_large = |words: usize| {
        GroupError::TooLarge(format!(
            "its table needs at least {} bytes, over max_table_bytes ({max_table_bytes} bytes)",
            words * 4
        ))
    };
    let mut trans: Vec<StateID> = Vec::new();
    while let Some(s) = queue.pop_front() {
        for &b in &rep {
            let t = dfa.next_state(s, b);
            trans.push(t);
            visit(t, &mut order, &mut queue);
        }
        let t = dfa.next_eoi_state(s);
        trans.push(t);
        visit(t, &mut order, &mut queue);
        if TRANS_WORD + trans.len() > limit_words {
            return Err(too_large(TRANS_WORD + trans.len()));
        }
    }
    let states = order.len();
    if states.saturating_mul(stride) >= MATCH_BIT as usize {
        return Err(too_large(states * stride));
    }
    let class_of = class_of;
    let row = |id: StateID| -> u32 {
        let r = index[&id] * stride as u32;
        if dfa.is_match_state(id) {
            r | MATCH_BIT
        } else {
            r
        }
    };
    // Match lists, shared between states with the same list; entry 0 is the empty list.
    let mut match_list: Vec<u32> = vec![0];
    let mut list_at: HashMap<Vec<u32>, u32> = HashMap::new();
    let mut match_index = Vec::with_capacity(states);
    for &s in &order {
        if !dfa.is_match_state(s) {
            match_index.push(0);
            continue;
        }
        let mut ids: Vec<u32> = (0..dfa.match_len(s))
            .map(|k| dfa.match_pattern(s, k).as_u32())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let at = *list_at.entry(ids.clone()).or_insert_with(|| {
            let at = match_list.len() as u32;
            match_list.push(ids.len() as u32);
            match_list.extend_from_slice(&ids);
            at
        });
        match_index.push(at);
    }
    Ok(Parts {
        states,
        stride,
        class_of,
        starts: starts.map(|i| i * stride as u32),
        trans: trans.iter().map(|&id| row(id)).collect(),
        match_index,
        match_list,
    })
}

/// A table's parts, before they are laid out.
#[derive(Debug)]
pub(crate) struct Parts {
    pub states: usize,
    pub stride: usize,
    pub class_of: [u8; 256],
    /// Row offsets.
    pub starts: [u32; START_TEXT + 1],
    /// Row offsets with the match bit.
    pub trans: Vec<u32>,
    pub match_index: Vec<u32>,
    pub match_list: Vec<u32>,
}

/// Lays out a table's words; `None` when it exceeds `limit_words`.
fn assemble(
    p: &Parts,
    patterns: u32,
    max_len: Option<u32>,
    limit_words: usize,
) -> Option<Vec<u32>> {
    let words = TRANS_WORD + p.trans.len() + p.states + p.match_list.len();
    if words > limit_words {
        return None;
    }
    let mut t = Vec::with_capacity(words);
    t.extend_from_slice(&[
        MAGIC,
        VERSION,
        p.states as u32,
        p.stride as u32,
        patterns,
        max_len.unwrap_or(UNBOUNDED),
        p.match_list.len() as u32,
        0,
    ]);
    debug_assert_eq!(t.len(), HEADER_WORDS);
    debug_assert_eq!(t.len(), CLASS_MAP_WORD);
    t.extend(
        p.class_of
            .chunks(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
    );
    debug_assert_eq!(t.len(), START_WORD);
    t.extend_from_slice(&p.starts);
    debug_assert_eq!(t.len(), TRANS_WORD);
    t.extend_from_slice(&p.trans);
    t.extend_from_slice(&p.match_index);
    t.extend_from_slice(&p.match_list);
    debug_assert_eq!(t.len(), words);
    Some(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::Rule;

    /// One thread tries a union's halves only after the whole failed; several try them
    /// beside it: the same groups either way.
    #[test]
    fn one_thread_and_several_build_the_same_groups() {
        let mut r = RuleSet::new();
        for (i, c) in ["a", "b", "c", "d"].iter().enumerate() {
            r.push(Rule {
                name: format!("m{i}"),
                pattern: Pattern::Regex(format!("[a-h]*{c}[a-h]{{6}}z")),
                case_insensitive: false,
            })
            .expect("a regex");
        }
        for i in 0..50 {
            r.push(Rule {
                name: format!("w{i}"),
                pattern: Pattern::Literal(format!("word{i}").into_bytes()),
                case_insensitive: false,
            })
            .expect("a literal");
        }
        let limits = Limits::default();
        let one = compile_on(&r, &limits, 1).expect("compiles");
        assert!(one.groups.len() >= 3, "the union of four was halved");
        for threads in [2, 4, 8] {
            assert_eq!(compile_on(&r, &limits, threads).expect("compiles"), one);
        }
    }
}
