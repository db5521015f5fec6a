//! Per-file match counts by rule, for sinks that count (`vyre scan --count`, the bench).

use std::collections::HashMap;

/// A file's rules not yet counted, at most this many; then they are sorted and merged into
/// its counts, so memory stays bounded by the rules a file matched, however many matches.
const PENDING_MAX: usize = 1 << 16;

/// One file's counts: rules appended as matches come, counted in bulk.
#[derive(Debug, Default)]
struct FileCounts {
    pending: Vec<u32>,
    counted: Vec<(u32, u64)>,
}

impl FileCounts {
    fn merge(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        self.pending.sort_unstable();
        let mut runs: Vec<(u32, u64)> = Vec::new();
        for &r in &self.pending {
            match runs.last_mut() {
                Some((last, n)) if *last == r => *n += 1,
                _ => runs.push((r, 1)),
            }
        }
        self.pending.clear();
        if self.counted.is_empty() {
            self.counted = runs;
            return;
        }
        let mut merged = Vec::with_capacity(self.counted.len() + runs.len());
        let (mut a, mut b) = (self.counted.iter().peekable(), runs.iter().peekable());
        while let (Some(&&(ra, na)), Some(&&(rb, nb))) = (a.peek(), b.peek()) {
            if ra == rb {
                merged.push((ra, na + nb));
                a.next();
                b.next();
            } else if ra < rb {
                merged.push((ra, na));
                a.next();
            } else {
                merged.push((rb, nb));
                b.next();
            }
        }
        merged.extend(a);
        merged.extend(b);
        self.counted = merged;
    }
}

/// Counts of matches per file and rule. A match costs a push onto its file's list (the
/// pipeline hands over a segment's matches together, so the current file's list is kept at
/// hand); a file's list is sorted and counted when taken, or when it grows long. Two levels
/// of hash maps, one lookup pair per match, cost the bench's count sink most of the driver
/// thread's "hits to the sink" time at 10,000 rules (bench/results/scan-h100.md).
#[derive(Debug, Default)]
pub struct RuleCounts {
    current: Option<(u64, FileCounts)>,
    open: HashMap<u64, FileCounts>,
}

impl RuleCounts {
    /// Counts one match of `rule` in `file`.
    pub fn add(&mut self, file: u64, rule: u32) {
        let c = match &mut self.current {
            Some((f, c)) if *f == file => c,
            _ => {
                if let Some((f, c)) = self.current.take() {
                    self.open.insert(f, c);
                }
                let c = self.open.remove(&file).unwrap_or_default();
                &mut self.current.insert((file, c)).1
            }
        };
        c.pending.push(rule);
        if c.pending.len() >= PENDING_MAX {
            c.merge();
        }
    }

    /// `file`'s counts, by rule ascending (empty if it had no match); forgets the file.
    pub fn take(&mut self, file: u64) -> Vec<(u32, u64)> {
        let mut c = match self.current.take() {
            Some((f, c)) if f == file => c,
            other => {
                self.current = other;
                self.open.remove(&file).unwrap_or_default()
            }
        };
        c.merge();
        c.counted
    }

    /// Files with counts not yet taken.
    pub fn open_files(&self) -> usize {
        self.open.len() + usize::from(self.current.is_some())
    }

    /// Whether a file other than `file` has counts not yet taken.
    pub fn others_open(&self, file: u64) -> bool {
        self.open.keys().any(|&f| f != file) || matches!(self.current, Some((f, _)) if f != file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn counts_equal_a_map_of_maps_for_interleaved_files_and_long_runs() {
        let mut want: BTreeMap<u64, BTreeMap<u32, u64>> = BTreeMap::new();
        let mut got = RuleCounts::default();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        // Three files interleaved in runs, one of them past the merge threshold twice.
        for i in 0..(3 * PENDING_MAX as u64) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let file = if i % 1000 < 900 { 7 } else { x % 3 };
            let rule = (x >> 20) as u32 % 50;
            got.add(file, rule);
            *want.entry(file).or_default().entry(rule).or_default() += 1;
        }
        assert!(got.others_open(7));
        assert_eq!(got.open_files(), want.len());
        for (file, rules) in want {
            let expect: Vec<(u32, u64)> = rules.into_iter().collect();
            assert_eq!(got.take(file), expect, "file {file}");
        }
        assert!(!got.others_open(7));
        assert_eq!(got.open_files(), 0);
        assert!(got.take(99).is_empty());
    }
}
