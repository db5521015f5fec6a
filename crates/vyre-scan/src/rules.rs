//! Rules and rule sets: the rule file format, validation, and the errors that name the
//! rule at fault.
//!
//! A rule file is TOML: a list of `[[rule]]` tables, each with a `name` and exactly one of
//! `literal` (bytes matched exactly) or `regex` (Rust regex syntax without look-around or
//! backreferences), and optionally `case_insensitive = true`.
//!
//! ```toml
//! [[rule]]
//! name = "aws-access-key"
//! regex = "AKIA[0-9A-Z]{16}"
//!
//! [[rule]]
//! name = "password"
//! literal = "password"
//! case_insensitive = true
//! ```
//!
//! Every rule is checked when it enters a [`RuleSet`]: the regex parses, the rule cannot
//! match the empty string (it would match at every offset), and it uses no Unicode word
//! boundary (a DFA cannot run one; `(?-u:\b)` is the ASCII one). So [`crate::compile`]
//! fails only on size limits.

use regex_syntax::hir::{Class, ClassBytes, ClassBytesRange, Hir};
use std::fmt;
use std::path::Path;

/// One rule: a name and a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The name reported with each match; unique within a rule set.
    pub name: String,
    /// What the rule matches.
    pub pattern: Pattern,
    /// ASCII case folding for literals; the regex `i` flag (Unicode-aware) for regexes.
    pub case_insensitive: bool,
}

/// What a rule matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    /// These bytes, exactly (or with ASCII case folding).
    Literal(Vec<u8>),
    /// A regex in Rust `regex` syntax, matched against bytes as `regex::bytes` does
    /// (Unicode classes match UTF-8; `(?-u:\xFF)` matches the byte 0xFF).
    Regex(String),
}

/// Where a rule came from and how to name it in a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRef {
    /// Position in its file (or in the set), from 0.
    pub index: usize,
    /// Its name, when it has one.
    pub name: Option<String>,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(n) => write!(f, "rule {:?} (#{})", n, self.index + 1),
            None => write!(f, "rule #{}", self.index + 1),
        }
    }
}

/// Why a rule or a rule file was refused. The message names the file, the rule and what to
/// change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    origin: String,
    rule: Option<RuleRef>,
    kind: RuleErrorKind,
}

/// What was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RuleErrorKind {
    /// The file could not be read.
    #[error("cannot read the rule file: {0}")]
    Io(String),
    /// The file is not valid TOML.
    #[error("not valid TOML: {0}; a rule file is a list of [[rule]] tables")]
    Toml(String),
    /// A top-level key other than `rule`.
    #[error("unknown top-level key `{0}`; a rule file holds only [[rule]] tables")]
    UnknownTopKey(String),
    /// `rule` is not an array of tables.
    #[error("`rule` must be a list of tables; write each rule as a [[rule]] table")]
    NotRuleList,
    /// The file holds no rules.
    #[error("no rules; add at least one [[rule]] table with a name and a literal or regex")]
    Empty,
    /// A key a rule does not have.
    #[error("unknown key `{0}`; a rule has only name, literal, regex and case_insensitive")]
    UnknownKey(String),
    /// A key with a value of the wrong type.
    #[error("`{key}` must be {expected}")]
    WrongType {
        /// The key.
        key: String,
        /// What it must be.
        expected: &'static str,
    },
    /// No `name`.
    #[error("has no name; add name = \"...\"")]
    MissingName,
    /// An empty name.
    #[error("has an empty name; give it a non-empty name")]
    EmptyName,
    /// The name is already used.
    #[error("duplicate name (also rule #{first}); give each rule its own name")]
    Duplicate {
        /// The earlier rule with this name, from 1.
        first: usize,
    },
    /// Neither `literal` nor `regex`.
    #[error("has neither `literal` nor `regex`; give it exactly one")]
    MissingPattern,
    /// Both `literal` and `regex`.
    #[error("has both `literal` and `regex`; keep exactly one")]
    BothPatterns,
    /// The regex does not parse.
    #[error("invalid regex: {0}")]
    Syntax(String),
    /// The rule can match the empty string.
    #[error(
        "can match the empty string, which would match at every offset; \
         make it match at least one byte (e.g. `x+` instead of `x*`)"
    )]
    EmptyMatch,
    /// A Unicode word boundary, which a DFA cannot run.
    #[error(
        "uses a Unicode word boundary (\\b, \\B, \\< or \\>), which the scan DFA cannot run; \
         write the ASCII form `(?-u:\\b)` / `(?-u:\\B)` instead"
    )]
    UnicodeWordBoundary,
}

impl RuleError {
    pub(crate) fn new(origin: &str, rule: Option<RuleRef>, kind: RuleErrorKind) -> RuleError {
        RuleError {
            origin: origin.to_string(),
            rule,
            kind,
        }
    }
    /// The file (or `-e`, or `<api>`) the rule came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }
    /// The rule at fault, if the error is about one rule.
    pub fn rule(&self) -> Option<&RuleRef> {
        self.rule.as_ref()
    }
    /// What was wrong.
    pub fn kind(&self) -> &RuleErrorKind {
        &self.kind
    }
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.rule {
            Some(r) => write!(f, "{}: {}: {}", self.origin, r, self.kind),
            None => write!(f, "{}: {}", self.origin, self.kind),
        }
    }
}

impl std::error::Error for RuleError {}

/// A checked list of rules with unique names. Rule index = position in the set.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    rules: Vec<Rule>,
    hirs: Vec<Hir>,
    exprs: usize,
}

impl RuleSet {
    /// An empty set.
    pub fn new() -> Self {
        RuleSet::default()
    }

    /// The rules, in order (rule index = position).
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The checked syntax tree of each rule, in rule order.
    pub(crate) fn hirs(&self) -> &[Hir] {
        &self.hirs
    }

    /// Parses a TOML rule file. `origin` names the file in error messages. A file with
    /// no rules is an error.
    pub fn parse_toml(text: &str, origin: &str) -> Result<RuleSet, RuleError> {
        let err = |rule: Option<RuleRef>, kind| RuleError::new(origin, rule, kind);
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| err(None, RuleErrorKind::Toml(one_line(&e))))?;
        let mut set = RuleSet::new();
        for (key, value) in &table {
            if key != "rule" {
                return Err(err(None, RuleErrorKind::UnknownTopKey(key.clone())));
            }
            let list = value
                .as_array()
                .ok_or_else(|| err(None, RuleErrorKind::NotRuleList))?;
            for (index, item) in list.iter().enumerate() {
                let t = item
                    .as_table()
                    .ok_or_else(|| err(None, RuleErrorKind::NotRuleList))?;
                let rule = rule_from_table(t, index).map_err(|(r, k)| err(Some(r), k))?;
                set.push_at(rule, origin, index)?;
            }
        }
        if set.is_empty() {
            return Err(err(None, RuleErrorKind::Empty));
        }
        Ok(set)
    }

    /// Reads and parses a TOML rule file.
    pub fn load(path: &Path) -> Result<RuleSet, RuleError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| RuleError::new(&origin, None, RuleErrorKind::Io(e.to_string())))?;
        RuleSet::parse_toml(&text, &origin)
    }

    /// Adds a rule after checking it (name, pattern, empty match, duplicate name).
    pub fn push(&mut self, rule: Rule) -> Result<(), RuleError> {
        let index = self.len();
        self.push_at(rule, "<api>", index)
    }

    /// Adds a one-off regex rule (`-e PATTERN`), named `e0`, `e1`, ... in call order.
    pub fn push_expr(&mut self, regex: &str) -> Result<(), RuleError> {
        let name = format!("e{}", self.exprs);
        let index = self.len();
        self.push_at(
            Rule {
                name,
                pattern: Pattern::Regex(regex.to_string()),
                case_insensitive: false,
            },
            "-e",
            index,
        )?;
        self.exprs += 1;
        Ok(())
    }

    fn push_at(&mut self, rule: Rule, origin: &str, index: usize) -> Result<(), RuleError> {
        let r = RuleRef {
            index,
            name: Some(rule.name.clone()),
        };
        let err = |kind| RuleError::new(origin, Some(r.clone()), kind);
        if rule.name.is_empty() {
            return Err(err(RuleErrorKind::EmptyName));
        }
        if let Some(first) = self.rules.iter().position(|x| x.name == rule.name) {
            return Err(err(RuleErrorKind::Duplicate { first: first + 1 }));
        }
        let hir = rule_hir(&rule).map_err(err)?;
        self.rules.push(rule);
        self.hirs.push(hir);
        Ok(())
    }
}

fn one_line(e: &impl fmt::Display) -> String {
    let s = e.to_string();
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn rule_from_table(t: &toml::Table, index: usize) -> Result<Rule, (RuleRef, RuleErrorKind)> {
    let name = t.get("name").and_then(|v| v.as_str()).map(str::to_string);
    let r = RuleRef {
        index,
        name: name.clone(),
    };
    let fail = |k| Err((r.clone(), k));
    for key in t.keys() {
        if !matches!(
            key.as_str(),
            "name" | "literal" | "regex" | "case_insensitive"
        ) {
            return fail(RuleErrorKind::UnknownKey(key.clone()));
        }
    }
    let string = |key: &str| -> Result<Option<String>, (RuleRef, RuleErrorKind)> {
        match t.get(key) {
            None => Ok(None),
            Some(v) => match v.as_str() {
                Some(s) => Ok(Some(s.to_string())),
                None => Err((
                    r.clone(),
                    RuleErrorKind::WrongType {
                        key: key.to_string(),
                        expected: "a string",
                    },
                )),
            },
        }
    };
    string("name")?;
    let Some(name) = name else {
        return fail(RuleErrorKind::MissingName);
    };
    let literal = string("literal")?;
    let regex = string("regex")?;
    let case_insensitive = match t.get("case_insensitive") {
        None => false,
        Some(v) => match v.as_bool() {
            Some(b) => b,
            None => {
                return fail(RuleErrorKind::WrongType {
                    key: "case_insensitive".into(),
                    expected: "true or false",
                })
            }
        },
    };
    let pattern = match (literal, regex) {
        (Some(l), None) => Pattern::Literal(l.into_bytes()),
        (None, Some(re)) => Pattern::Regex(re),
        (None, None) => return fail(RuleErrorKind::MissingPattern),
        (Some(_), Some(_)) => return fail(RuleErrorKind::BothPatterns),
    };
    Ok(Rule {
        name,
        pattern,
        case_insensitive,
    })
}

/// A regex error on one line: what is wrong and where (`regex_syntax`'s own Display is a
/// multi-line drawing).
fn syntax_message(e: &regex_syntax::Error) -> String {
    let (what, span) = match e {
        regex_syntax::Error::Parse(e) => (e.kind().to_string(), *e.span()),
        regex_syntax::Error::Translate(e) => (e.kind().to_string(), *e.span()),
        _ => return one_line(e),
    };
    format!(
        "{what} (at bytes {}..{} of the pattern)",
        span.start.offset, span.end.offset
    )
}

/// The checked syntax tree of a rule.
fn rule_hir(rule: &Rule) -> Result<Hir, RuleErrorKind> {
    let hir = match &rule.pattern {
        Pattern::Literal(bytes) => literal_hir(bytes, rule.case_insensitive),
        Pattern::Regex(re) => regex_syntax::ParserBuilder::new()
            .case_insensitive(rule.case_insensitive)
            .utf8(false)
            .build()
            .parse(re)
            .map_err(|e| RuleErrorKind::Syntax(syntax_message(&e)))?,
    };
    let props = hir.properties();
    if props.minimum_len() == Some(0) {
        return Err(RuleErrorKind::EmptyMatch);
    }
    if props.look_set().contains_word_unicode() {
        return Err(RuleErrorKind::UnicodeWordBoundary);
    }
    Ok(hir)
}

/// A literal's tree, built from its bytes (no escaping); with `fold`, each ASCII letter
/// becomes the class of its two cases.
fn literal_hir(bytes: &[u8], fold: bool) -> Hir {
    if !fold {
        return Hir::literal(bytes.to_vec());
    }
    let parts = bytes
        .iter()
        .map(|&b| {
            if b.is_ascii_alphabetic() {
                let (lo, up) = (b.to_ascii_lowercase(), b.to_ascii_uppercase());
                Hir::class(Class::Bytes(ClassBytes::new([
                    ClassBytesRange::new(up, up),
                    ClassBytesRange::new(lo, lo),
                ])))
            } else {
                Hir::literal(vec![b])
            }
        })
        .collect();
    Hir::concat(parts)
}
