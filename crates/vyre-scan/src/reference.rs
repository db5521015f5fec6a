//! An independent engine for tests: every rule on its own, searched by regex-automata's
//! lazy DFA (`hybrid`) with overlapping search. It shares nothing with the compiler but
//! the parsed rule set: regexes are re-parsed from their text, and literals are written as
//! `(?-u:\xHH...)` regexes instead of being built into a syntax tree.

use crate::rules::{Pattern, RuleSet};
use regex_automata::hybrid::dfa::{OverlappingState, DFA};
use regex_automata::nfa::thompson::{self, WhichCaptures};
use regex_automata::util::syntax;
use regex_automata::{Input, MatchKind};
use std::fmt::Write;

/// Why the reference engine could not run a rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("reference engine: rule {name:?}: {reason}")]
pub struct ReferenceError {
    /// The rule's name.
    pub name: String,
    /// What failed.
    pub reason: String,
}

/// Every `(end, rule index)` such that a match of the rule ends at `end` in `data`
/// (overlapping matches all count), sorted.
pub fn reference_matches(
    rules: &RuleSet,
    data: &[u8],
) -> Result<Vec<(usize, u32)>, ReferenceError> {
    let mut out = Vec::new();
    for (i, rule) in rules.rules().iter().enumerate() {
        let fail = |reason: String| ReferenceError {
            name: rule.name.clone(),
            reason,
        };
        let (pattern, ci) = match &rule.pattern {
            Pattern::Regex(re) => (re.clone(), rule.case_insensitive),
            Pattern::Literal(bytes) => {
                let mut p = String::from(if rule.case_insensitive {
                    "(?i-u:"
                } else {
                    "(?-u:"
                });
                for b in bytes {
                    write!(p, "\\x{b:02X}").expect("writing to a String");
                }
                p.push(')');
                (p, false)
            }
        };
        let dfa = DFA::builder()
            .configure(DFA::config().match_kind(MatchKind::All))
            .syntax(syntax::Config::new().case_insensitive(ci).utf8(false))
            .thompson(thompson::Config::new().which_captures(WhichCaptures::None))
            .build(&pattern)
            .map_err(|e| fail(e.to_string()))?;
        let mut cache = dfa.create_cache();
        let input = Input::new(data);
        let mut state = OverlappingState::start();
        loop {
            dfa.try_search_overlapping_fwd(&mut cache, &input, &mut state)
                .map_err(|e| fail(e.to_string()))?;
            match state.get_match() {
                Some(m) => out.push((m.offset(), i as u32)),
                None => break,
            }
        }
    }
    out.sort_unstable();
    Ok(out)
}
