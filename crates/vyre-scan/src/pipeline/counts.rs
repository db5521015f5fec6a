//! Per-file match counts by rule, for sinks that count (`vyre scan --count`, the bench).

use std::collections::HashMap;

/// Counts of matches per file and rule. The file being counted has a count per rule in a
/// table indexed by rule, so a match costs one increment (the pipeline hands over a
/// segment's matches together, so the current file rarely changes); a file set aside while
/// another one's matches come keeps its counts as (rule, count) pairs, at most one per rule
/// it matched. Two levels of hash maps, one lookup pair per match, cost the bench's count
/// sink most of the driver thread's "hits to the sink" time at 10,000 rules
/// (bench/results/scan-h100.md).
#[derive(Debug, Default)]
pub struct RuleCounts {
    current: Option<u64>,
    /// The current file's count per rule (zero for rules it has not matched).
    table: Vec<u64>,
    /// Rules with a non-zero count in `table`.
    touched: Vec<u32>,
    /// Files set aside: counts by rule ascending.
    open: HashMap<u64, Vec<(u32, u64)>>,
}

impl RuleCounts {
    /// Counts one match of `rule` in `file`.
    pub fn add(&mut self, file: u64, rule: u32) {
        if self.current != Some(file) {
            self.switch_to(file);
        }
        let r = rule as usize;
        if r >= self.table.len() {
            self.table.resize(r + 1, 0);
        }
        if self.table[r] == 0 {
            self.touched.push(rule);
        }
        self.table[r] += 1;
    }

    /// Sets the current file aside and makes `file` current.
    fn switch_to(&mut self, file: u64) {
        if let Some(f) = self.current.take() {
            let c = self.drain();
            self.open.insert(f, c);
        }
        self.current = Some(file);
        for (rule, n) in self.open.remove(&file).unwrap_or_default() {
            let r = rule as usize;
            if r >= self.table.len() {
                self.table.resize(r + 1, 0);
            }
            self.table[r] = n;
            self.touched.push(rule);
        }
    }

    /// The current file's counts, by rule ascending; leaves the table zeroed.
    fn drain(&mut self) -> Vec<(u32, u64)> {
        self.touched.sort_unstable();
        let table = &mut self.table;
        let counts = self
            .touched
            .iter()
            .map(|&r| (r, std::mem::take(&mut table[r as usize])))
            .collect();
        self.touched.clear();
        counts
    }

    /// `file`'s counts, by rule ascending (empty if it had no match); forgets the file.
    pub fn take(&mut self, file: u64) -> Vec<(u32, u64)> {
        if self.current == Some(file) {
            self.current = None;
            return self.drain();
        }
        self.open.remove(&file).unwrap_or_default()
    }

    /// Appends `file`'s counts, by rule ascending, to `out` (nothing if it had no match);
    /// forgets the file. [`RuleCounts::take`] without a vector per file.
    pub fn take_into(&mut self, file: u64, out: &mut Vec<(u32, u64)>) {
        if self.current == Some(file) {
            self.current = None;
            self.touched.sort_unstable();
            let table = &mut self.table;
            out.extend(
                self.touched
                    .iter()
                    .map(|&r| (r, std::mem::take(&mut table[r as usize]))),
            );
            self.touched.clear();
        } else if let Some(c) = self.open.remove(&file) {
            out.extend(c);
        }
    }

    /// Files with counts not yet taken.
    pub fn open_files(&self) -> usize {
        self.open.len() + usize::from(self.current.is_some())
    }

    /// Whether a file other than `file` has counts not yet taken.
    pub fn others_open(&self, file: u64) -> bool {
        self.open.keys().any(|&f| f != file) || self.current.is_some_and(|f| f != file)
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
        // Three files interleaved in runs: each run sets the other files aside.
        for i in 0..200_000u64 {
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
        let mut flat = vec![(0, 0)];
        for (file, rules) in want {
            let expect: Vec<(u32, u64)> = rules.into_iter().collect();
            // Half the files by `take`, half appended to one vector.
            if file % 2 == 0 {
                assert_eq!(got.take(file), expect, "file {file}");
            } else {
                let before = flat.len();
                got.take_into(file, &mut flat);
                assert_eq!(flat[before..], expect, "file {file}");
            }
        }
        assert_eq!(flat[0], (0, 0), "take_into appends");
        assert!(!got.others_open(7));
        assert_eq!(got.open_files(), 0);
        assert!(got.take(99).is_empty());
    }
}
