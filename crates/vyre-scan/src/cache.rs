//! Compiled rule sets kept in the pipeline cache (`vyre_runtime::pipeline_cache`), so that a
//! `vyre scan` with the rules of an earlier one does not compile them again: the bench's 20
//! secret regexes took 2.1 s to compile on one thread of the H100 host, longer than their scan,
//! and 10,000 words 0.5-0.9 s.
//!
//! The key is blake3 of everything the tables depend on: every rule (name, kind, pattern bytes,
//! case folding), the [`Limits`], the compiler's own source (`compile.rs`, `literal.rs`,
//! `rules.rs`, this file, and `vyre-isa`'s `dfa.rs`, with every constant in them), the
//! workspace's `Cargo.lock` (the regex crates' versions), [`COMPILER_REVISION`] and the `VDFA`
//! table format's version: a change to the compiler is a new key, never a stale table. The
//! blob layer checks the header, length and content hash of a blob file (a truncated, corrupt
//! or foreign one is reported, removed and rebuilt); the payload's own decoder checks its
//! structure, every table ([`check_table`]) and that each table's header agrees with its
//! group, and a payload that fails is compiled again and replaced, never used. Rule sets that
//! compile in less than [`KEEP_AFTER`] are not stored.

use crate::compile::{compile, CompileError, Compiled, Group, Limits};
use crate::rules::{Pattern, RuleSet};
use crate::scan::check_table;
use vyre_isa::dfa;
use vyre_runtime::pipeline_cache::{CacheSource, MissReason};
use vyre_runtime::{BlobMeta, CacheKey, PipelineCache};

/// Bumped whenever the payload's format changes (the key also hashes the compiler's source).
pub const COMPILER_REVISION: u32 = 1;

/// Compiles shorter than this are not stored (a blob file written and synced for every
/// one-off `-e` pattern would cost more than compiling it again).
pub const KEEP_AFTER: std::time::Duration = std::time::Duration::from_millis(20);

/// The source the compiler's output depends on, hashed into the key.
const COMPILER_SOURCE: [&str; 6] = [
    include_str!("compile.rs"),
    include_str!("literal.rs"),
    include_str!("rules.rs"),
    include_str!("cache.rs"),
    include_str!("../../vyre-isa/src/dfa.rs"),
    include_str!("../../../Cargo.lock"),
];

/// The payload's first bytes.
const PAYLOAD_MAGIC: &[u8; 4] = b"VRUL";

/// The cache key of `rules` compiled under `limits`.
pub fn key(rules: &RuleSet, limits: &Limits) -> CacheKey {
    let mut text = Vec::new();
    for r in rules.rules() {
        let (kind, bytes) = match &r.pattern {
            Pattern::Literal(l) => (0u8, l.as_slice()),
            Pattern::Regex(p) => (1u8, p.as_bytes()),
        };
        put_bytes(&mut text, r.name.as_bytes());
        text.push(kind);
        put_bytes(&mut text, bytes);
        text.push(u8::from(r.case_insensitive));
    }
    let mut b = CacheKey::builder()
        .part("what", "vyre-scan compiled rules")
        .part("vyre-scan", env!("CARGO_PKG_VERSION"))
        .part("revision", COMPILER_REVISION.to_le_bytes());
    for source in COMPILER_SOURCE {
        b = b.part("source", source);
    }
    b.part("vdfa", dfa::VERSION.to_le_bytes())
        .part("limits", format!("{limits:?}"))
        .part("rules", text)
        .finish()
}

/// [`compile`], or the tables an earlier compile of the same rules left in `cache`; and
/// where they came from.
pub fn compile_cached(
    rules: &RuleSet,
    limits: &Limits,
    cache: &PipelineCache,
) -> Result<(Compiled, CacheSource), CompileError> {
    compile_keeping(rules, limits, cache, KEEP_AFTER)
}

/// [`compile_cached`], storing compiles that took at least `keep_after`.
fn compile_keeping(
    rules: &RuleSet,
    limits: &Limits,
    cache: &PipelineCache,
    keep_after: std::time::Duration,
) -> Result<(Compiled, CacheSource), CompileError> {
    if cache.dir().is_none() {
        // Nowhere to keep it past this process: no payload to encode.
        let c = compile(rules, limits)?;
        let reason = MissReason::Absent;
        return Ok((c, CacheSource::Built { reason }));
    }
    let key = key(rules, limits);
    let meta = BlobMeta::new("scan-rules", "host");
    let mut fresh = None;
    let cached = cache.get_or_build_keep(&key, &meta, || {
        let t = std::time::Instant::now();
        let c = compile(rules, limits)?;
        let keep = t.elapsed() >= keep_after;
        let bytes = if keep { encode(&c) } else { Vec::new() };
        fresh = Some(c);
        Ok::<_, CompileError>((bytes, keep))
    })?;
    if let Some(c) = fresh {
        return Ok((c, cached.source));
    }
    let why = match decode(&cached.bytes) {
        Ok(c) if c.names.len() == rules.len() => return Ok((c, cached.source)),
        Ok(_) => "it names another number of rules".to_string(),
        Err(e) => e,
    };
    // Its key is only ever written with a payload of this format: a bug, logged loudly, and
    // the blob replaced by the tables compiled now.
    tracing::warn!(
        "the cached tables of this rule set are unusable ({why}); compiling the rules again"
    );
    let c = compile(rules, limits)?;
    if let Some(Err(e)) = cache.replace(&key, &meta, &encode(&c)) {
        tracing::warn!("cannot replace the unusable cached tables: {e}");
    }
    let reason = MissReason::Absent;
    Ok((c, CacheSource::Built { reason }))
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u64).to_le_bytes());
    out.extend_from_slice(b);
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// The payload: magic, revision, the names, then per group its longest match (or none), its
/// rules and its table words; little-endian.
pub fn encode(c: &Compiled) -> Vec<u8> {
    let table_words: usize = c.groups.iter().map(|g| g.table.len()).sum();
    let mut out = Vec::with_capacity(64 + table_words * 4);
    out.extend_from_slice(PAYLOAD_MAGIC);
    put_u32(&mut out, COMPILER_REVISION);
    put_u32(&mut out, c.names.len() as u32);
    for n in &c.names {
        put_bytes(&mut out, n.as_bytes());
    }
    put_u32(&mut out, c.groups.len() as u32);
    for g in &c.groups {
        put_u32(&mut out, u32::from(g.max_len.is_some()));
        put_u32(&mut out, g.max_len.unwrap_or(0));
        put_u32(&mut out, g.rules.len() as u32);
        for &r in &g.rules {
            put_u32(&mut out, r);
        }
        out.extend_from_slice(&(g.table.len() as u64).to_le_bytes());
        for &w in &g.table {
            put_u32(&mut out, w);
        }
    }
    out
}

/// Reads what [`encode`] wrote, checking it: every rule in exactly one group, every table a
/// `VDFA` table that [`check_table`] accepts, nothing left over.
pub fn decode(bytes: &[u8]) -> Result<Compiled, String> {
    let mut r = Reader { bytes, at: 0 };
    if r.take(4)? != PAYLOAD_MAGIC {
        return Err("not a compiled rule set (bad magic)".into());
    }
    let revision = r.u32()?;
    if revision != COMPILER_REVISION {
        return Err(format!(
            "compiler revision {revision}, this build writes {COMPILER_REVISION}"
        ));
    }
    let n_names = r.u32()? as usize;
    let mut names = Vec::with_capacity(n_names.min(1 << 20));
    for _ in 0..n_names {
        let len = r.u64()?;
        let b = r.take(len)?;
        names.push(String::from_utf8(b.to_vec()).map_err(|_| "a rule name is not UTF-8")?);
    }
    let n_groups = r.u32()? as usize;
    let mut groups = Vec::with_capacity(n_groups.min(1 << 16));
    let mut seen = vec![false; n_names];
    for g in 0..n_groups {
        let bounded = r.u32()?;
        let len = r.u32()?;
        let max_len = match bounded {
            0 => None,
            1 => Some(len),
            _ => return Err(format!("group {g}: bad longest-match flag {bounded}")),
        };
        let n_rules = r.u32()? as usize;
        let mut rules = Vec::with_capacity(n_rules.min(n_names));
        for _ in 0..n_rules {
            let rule = r.u32()?;
            match seen.get_mut(rule as usize) {
                Some(s) if !*s => *s = true,
                Some(_) => return Err(format!("group {g}: rule {rule} is in two groups")),
                None => return Err(format!("group {g}: rule {rule} of {n_names}")),
            }
            rules.push(rule);
        }
        let words = r.u64()?;
        let raw = r.take(words.checked_mul(4).ok_or("a table's size overflows")?)?;
        let table: Vec<u32> = raw
            .chunks_exact(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect();
        check_table(&table)
            .map_err(|e| format!("group {g}: its table is malformed at word {}", e.word))?;
        // The header agrees with the group: a pattern per rule, the same longest match.
        let (patterns, longest) = (table[4] as usize, table[5]);
        if patterns != rules.len() {
            return Err(format!(
                "group {g}: its table has {patterns} patterns for {} rules",
                rules.len()
            ));
        }
        if longest != max_len.unwrap_or(dfa::UNBOUNDED)
            || max_len.is_some_and(|n| n > crate::OVERLAP_CAP)
        {
            return Err(format!(
                "group {g}: its longest match {max_len:?} disagrees with its table's ({longest})"
            ));
        }
        groups.push(Group {
            table,
            rules,
            max_len,
        });
    }
    if r.at != bytes.len() {
        return Err(format!("{} bytes left over", bytes.len() - r.at));
    }
    if let Some(missing) = seen.iter().position(|s| !s) {
        return Err(format!("rule {missing} is in no group"));
    }
    Ok(Compiled { groups, names })
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64) -> Result<&'a [u8], String> {
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| self.at.checked_add(n))
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| format!("truncated at byte {} (wanted {n} more)", self.at))?;
        let b = &self.bytes[self.at..end];
        self.at = end;
        Ok(b)
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        let mut w = [0; 8];
        w.copy_from_slice(b);
        Ok(u64::from_le_bytes(w))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::Rule;
    use std::time::Duration;

    const ZERO: Duration = Duration::ZERO;
    use vyre_runtime::pipeline_cache::CacheConfig;

    fn rules(words: &[&str], regexes: &[&str]) -> RuleSet {
        let mut r = RuleSet::new();
        for (i, w) in words.iter().enumerate() {
            r.push(Rule {
                name: format!("w{i}"),
                pattern: Pattern::Literal(w.as_bytes().to_vec()),
                case_insensitive: i % 2 == 1,
            })
            .expect("a literal rule");
        }
        for x in regexes {
            r.push_expr(x).expect("a regex rule");
        }
        r
    }

    fn sample() -> RuleSet {
        rules(
            &["alpha", "beta", "gamma"],
            &["[a-f0-9]{8}-[a-f0-9]{4}", "key=[A-Za-z]+", "x[0-9]{2,5}y"],
        )
    }

    #[test]
    fn payloads_decode_to_what_was_compiled() {
        let c = compile(&sample(), &Limits::default()).expect("compiles");
        assert!(c.groups.len() > 1, "several groups are exercised");
        assert_eq!(decode(&encode(&c)).expect("decodes"), c);
    }

    #[test]
    fn malformed_payloads_are_refused_not_used() {
        let c = compile(&sample(), &Limits::default()).expect("compiles");
        let good = encode(&c);
        let refused = |b: &[u8], what: &str| {
            let e = decode(b).expect_err(what);
            assert!(!e.is_empty(), "{what}: a reason");
        };
        refused(&good[..good.len() - 1], "truncated by one byte");
        refused(&good[..10], "truncated in the names");
        refused(&[good.as_slice(), &[0]].concat(), "a byte left over");
        let mut b = good.clone();
        b[0] = b'X';
        refused(&b, "bad magic");
        let mut b = good.clone();
        b[4] = b[4].wrapping_add(1);
        refused(&b, "another revision");
        // A group naming a rule past the end, and one naming a rule twice.
        let mut bad = c.clone();
        bad.groups[0].rules[0] = 99;
        refused(&encode(&bad), "rule out of range");
        let mut bad = c.clone();
        let twice = bad.groups[1].rules[0];
        bad.groups[0].rules.push(twice);
        refused(&encode(&bad), "rule in two groups");
        let mut bad = c.clone();
        bad.groups[0].rules.clear();
        refused(&encode(&bad), "rule in no group");
        // Tables whose header disagrees with their group.
        let mut bad = c.clone();
        bad.groups[0].rules.pop();
        let moved = *c.groups[0].rules.last().expect("a rule");
        bad.groups[1].rules.push(moved);
        refused(&encode(&bad), "a pattern count that is not the group's");
        let mut bad = c.clone();
        bad.groups[0].max_len = bad.groups[0].max_len.map(|n| n + 1).or(Some(1));
        refused(&encode(&bad), "another longest match");
        // A table whose header lies about its size, and one cut short.
        let mut bad = c.clone();
        bad.groups[0].table[1] = 77;
        refused(&encode(&bad), "bad table version");
        let mut bad = c;
        let n = bad.groups[0].table.len();
        bad.groups[0].table.truncate(n / 2);
        refused(&encode(&bad), "table cut in half");
    }

    #[test]
    fn a_second_compile_reads_the_tables_back_and_a_corrupt_blob_is_compiled_again() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let open = || PipelineCache::new(CacheConfig::in_dir(dir.path()));
        // Each compile through a new cache (a new process), with where its tables came from.
        let run =
            |r: &RuleSet| compile_keeping(r, &Limits::default(), &open(), ZERO).expect("compiles");
        let built = |how: &CacheSource| matches!(how, CacheSource::Built { .. });
        let r = sample();
        let want = compile(&r, &Limits::default()).expect("compiles");
        let (first, how) = run(&r);
        assert_eq!(first, want);
        assert!(built(&how), "{how}");
        // A new cache finds the blob on disk.
        let (second, how) = run(&r);
        assert_eq!(second, want);
        assert!(matches!(how, CacheSource::Disk), "{how}");
        // Other rules or other limits are another key.
        let (_, how) = run(&rules(&["alpha", "beta"], &[]));
        assert!(built(&how), "{how}");
        let tight = Limits {
            max_group_rules: 2,
            ..Limits::default()
        };
        assert_ne!(key(&r, &tight), key(&r, &Limits::default()));
        // A flipped byte in the blob: reported, compiled again, the same tables.
        let blob = open()
            .blob_path(&key(&r, &Limits::default()))
            .expect("a path");
        let mut bytes = std::fs::read(&blob).expect("the blob");
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        std::fs::write(&blob, &bytes).expect("rewrite");
        let (third, how) = run(&r);
        assert_eq!(third, want);
        assert!(built(&how), "{how}");
        // And written back whole.
        let (fourth, how) = run(&r);
        assert_eq!(fourth, want);
        assert!(matches!(how, CacheSource::Disk), "{how}");
    }

    #[test]
    fn an_unusable_payload_is_compiled_again_and_replaced() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let open = || PipelineCache::new(CacheConfig::in_dir(dir.path()));
        let r = sample();
        let limits = Limits::default();
        let want = compile(&r, &limits).expect("compiles");
        // A well-formed blob (the blob layer accepts it) whose payload is not tables.
        let meta = BlobMeta::new("scan-rules", "host");
        let written = open().replace(&key(&r, &limits), &meta, b"VRUL not tables");
        assert!(matches!(written, Some(Ok(()))));
        let (got, how) = compile_keeping(&r, &limits, &open(), ZERO).expect("compiles");
        assert_eq!(got, want);
        assert!(matches!(how, CacheSource::Built { .. }), "{how}");
        let (got, how) = compile_keeping(&r, &limits, &open(), ZERO).expect("compiles");
        assert_eq!(got, want);
        assert!(matches!(how, CacheSource::Disk), "replaced: {how}");
    }

    #[test]
    fn quick_compiles_and_memory_only_caches_store_nothing() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let cache = PipelineCache::new(CacheConfig::in_dir(dir.path()));
        let r = sample();
        let long = Duration::from_secs(3600);
        let (c, _) = compile_keeping(&r, &Limits::default(), &cache, long).expect("compiles");
        assert_eq!(c, compile(&r, &Limits::default()).expect("compiles"));
        let blob = cache
            .blob_path(&key(&r, &Limits::default()))
            .expect("a path");
        assert!(!blob.exists());
        let (_, how) = compile_keeping(&r, &Limits::default(), &cache, long).expect("compiles");
        assert!(
            matches!(how, CacheSource::Built { .. }),
            "not kept in memory: {how}"
        );
        let memory = PipelineCache::new(CacheConfig::memory_only());
        let (c, how) = compile_cached(&r, &Limits::default(), &memory).expect("compiles");
        assert_eq!(c, compile(&r, &Limits::default()).expect("compiles"));
        assert!(matches!(how, CacheSource::Built { .. }), "{how}");
    }

    #[test]
    fn a_rule_that_does_not_compile_is_an_error_and_nothing_is_stored() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let cache = PipelineCache::new(CacheConfig::in_dir(dir.path()));
        let r = rules(&[], &["[ab]*a[ab]{14}"]);
        let limits = Limits {
            max_table_bytes: 256 << 10,
            ..Limits::default()
        };
        let e = compile_keeping(&r, &limits, &cache, ZERO).expect_err("too large");
        assert_eq!(e, compile(&r, &limits).expect_err("too large"));
        let blob = cache.blob_path(&key(&r, &limits)).expect("a path");
        assert!(!blob.exists());
    }
}
