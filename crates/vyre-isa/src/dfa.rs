//! The `VDFA` table that DFA_SCAN runs, and the reference scan.
//!
//! A table is a run of little-endian u32 words at offset 0 of a buffer:
//!
//! | words | meaning |
//! | --- | --- |
//! | 0 | [`MAGIC`] (`"VDFA"`) |
//! | 1 | [`VERSION`] |
//! | 2 | `S`, the number of states (≥ 1) |
//! | 3 | `C`, the stride: byte classes + 1; the last column is the end-of-input class (2..=257) |
//! | 4 | the number of patterns |
//! | 5 | the longest match in bytes, or [`UNBOUNDED`] (for the host; the scan ignores it) |
//! | 6 | `M`, words in the match list |
//! | 7 | zero |
//! | 8..72 | the class of byte b is byte b of these 256 bytes (each < C - 1) |
//! | 72..329 | start states (row offsets): index b < 256 when the byte before the scan is b, 256 at the start of the text |
//! | 329.. | `S × C` transitions: the entry at `329 + row + class` is the next state's row offset (`row = state × C`), bit 31 set when the next state is a match state |
//! | then `S` words | per state, the offset of its entry in the match list |
//! | then `M` words | the match list: at each entry a count n, then n pattern ids in ascending order |
//!
//! States are named by row offset everywhere (start words, transitions, DFA_SCAN's `start`
//! argument and r1), so the scan loop never multiplies.
//!
//! The scan (one DFA_SCAN slot): from the start state, for each byte i of the range, take
//! the transition on the byte's class; when the target is a match state, every pattern in
//! its match list has a match that *ends at i* (the table delays matches by one byte, as
//! regex-automata's DFAs do, so that look-ahead assertions see the next byte); it is
//! reported if `i >= report_from`. With the end-of-input flag, after the last byte the scan
//! takes the end-of-input column and reports a match there with end `len`.
//!
//! Results: r0 matches found, r1 the state after the last byte (before the end-of-input
//! transition), r2 matches stored. A scan that completes also writes word 1 of the hit
//! header: the state after the first `min(report_from, len)` bytes. A window that starts a
//! few bytes early from the start state (look-behind) and reports from its own first byte
//! can be checked with it: if it equals the state the scan of the bytes before ended in,
//! the window's matches and r1 are those of one scan from the start of the text (the
//! scanner's unbounded rule groups rely on it).
//!
//! Checks, in order, before any byte is read: the three handles (`bad_handle`), `hits_off`
//! alignment (`misaligned`), the data range, the hit header and the K hit pairs
//! (`out_of_bounds`), the table header and class map (`bad_program`, detail = the table
//! word at fault), the `start` argument (`malformed_slot`, detail 5). While scanning, a
//! transition or start entry above `S×C − C` (a row must leave room for its C columns, so
//! that `row + class` stays inside the transitions) or a match list entry outside the list
//! faults `bad_program` with the word's index; hits written before that stay written. An
//! explicit `start` above `S×C − C` is `malformed_slot` (detail 5).
//!
//! # Table sets (`VDFS`)
//!
//! The `table` buffer may instead hold a *set*: several tables that one slot runs over the
//! same range, one after another, into one hit region. A scanner with many rule groups
//! then publishes one slot per window instead of one per group per window.
//!
//! | words | meaning |
//! | --- | --- |
//! | 0 | [`SET_MAGIC`] (`"VDFS"`) |
//! | 1 | [`SET_VERSION`] |
//! | 2 | `n`, the number of member tables (1..=[`SET_MAX_MEMBERS`]) |
//! | 3 | zero |
//! | 4 + 2k | member k's first word (a `VDFA` table lies there, after the directory) |
//! | 5 + 2k | member k's pattern base: its hits carry pattern ids `base + id` (wrapping) |
//!
//! The set's checks come after the buffer checks and before any member's: a buffer of at
//! least 16 bytes whose word 0 is `SET_MAGIC` is a set (anything else is read as one
//! table); word 1, 2 (also: a directory longer than the buffer) or 3 wrong is
//! `bad_program` with that index; a member starting inside the directory is `bad_program`
//! with the index of its offset word; a `start` without the look-behind bit (a row means
//! nothing across tables) is `malformed_slot` (detail 5). Then member k runs exactly as a
//! table alone would (its checks first; fault details are word indexes in the buffer, i.e.
//! the member's offset plus the index in the member), with the same `report` and
//! look-behind code, its hits stored after the hits of members `< k` (a fault in member k
//! leaves theirs written). Results: r0 counts every member's matches (wrapping), r2 the
//! hits stored; r1 and word 1 of the hit header are those of the last member (word 1 is
//! written only when every member has completed).

use crate::fault::{Fault, FaultCode};
use crate::interp::Memory;

/// Word 0 of a table: the bytes `V D F A`.
pub const MAGIC: u32 = u32::from_le_bytes(*b"VDFA");
/// The table format's version.
pub const VERSION: u32 = 1;
/// Header words.
pub const HEADER_WORDS: usize = 8;
/// First word of the 256-byte class map.
pub const CLASS_MAP_WORD: usize = 8;
/// First word of the 257 start states.
pub const START_WORD: usize = 72;
/// Start state index used at the start of the text.
pub const START_TEXT: usize = 256;
/// First transition word.
pub const TRANS_WORD: usize = 329;
/// Bit 31 of a transition entry: the target is a match state.
pub const MATCH_BIT: u32 = 1 << 31;
/// Word 5 of a table whose patterns have no longest match.
pub const UNBOUNDED: u32 = u32::MAX;
/// Bit 31 of DFA_SCAN's `start` argument: the low bits are a look-behind code.
pub const START_LOOKBEHIND: u32 = 1 << 31;
/// Bit 31 of DFA_SCAN's `report` argument: take the end-of-input transition.
pub const REPORT_EOI: u32 = 1 << 31;
/// Bytes before the first hit pair in a hit region (capacity word and a zero word).
pub const HIT_HEADER_BYTES: u64 = 8;
/// Word 0 of a table set: the bytes `V D F S`.
pub const SET_MAGIC: u32 = u32::from_le_bytes(*b"VDFS");
/// The table set format's version.
pub const SET_VERSION: u32 = 1;
/// Words of a set's header, before its directory of `(offset, pattern base)` pairs.
pub const SET_HEADER_WORDS: usize = 4;
/// Most members of one table set.
pub const SET_MAX_MEMBERS: u32 = 256;

/// A table set (see the module docs) of `members`, each `(table words, pattern base)`, in
/// this order: the directory, then the tables back to back. `None` if there are no members,
/// more than [`SET_MAX_MEMBERS`], or more than 2^32 - 1 words in all.
pub fn table_set(members: &[(&[u32], u32)]) -> Option<Vec<u32>> {
    let n = u32::try_from(members.len()).ok()?;
    if n == 0 || n > SET_MAX_MEMBERS {
        return None;
    }
    let head = SET_HEADER_WORDS + 2 * members.len();
    let total = head + members.iter().map(|(t, _)| t.len()).sum::<usize>();
    u32::try_from(total).ok()?;
    let mut words = Vec::with_capacity(total);
    words.extend([SET_MAGIC, SET_VERSION, n, 0]);
    let mut at = head;
    for (t, base) in members {
        words.extend([at as u32, *base]);
        at += t.len();
    }
    for (t, _) in members {
        words.extend_from_slice(t);
    }
    Some(words)
}

/// A table's header, checked against its buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Number of states.
    pub states: u32,
    /// Classes + 1 (the end-of-input column).
    pub stride: u32,
    /// Number of patterns.
    pub patterns: u32,
    /// Longest match, or [`UNBOUNDED`].
    pub max_len: u32,
    /// Words in the match list.
    pub match_words: u32,
}

impl Header {
    /// `S × C`: one past the largest valid row offset.
    pub fn rows_end(&self) -> u64 {
        u64::from(self.states) * u64::from(self.stride)
    }
    /// Word index of the per-state match index.
    pub fn match_index_word(&self) -> u64 {
        TRANS_WORD as u64 + self.rows_end()
    }
    /// Word index of the match list.
    pub fn match_list_word(&self) -> u64 {
        self.match_index_word() + u64::from(self.states)
    }
    /// Total words of the table.
    pub fn words(&self) -> u64 {
        self.match_list_word() + u64::from(self.match_words)
    }
}

/// Checks a table's header words (read through `word`) against a buffer of `size` bytes.
/// On failure returns the index of the word at fault.
pub fn check_header(size: u64, word: impl Fn(usize) -> u32) -> Result<Header, u32> {
    if size < (TRANS_WORD as u64) * 4 {
        return Err(0);
    }
    if word(0) != MAGIC {
        return Err(0);
    }
    if word(1) != VERSION {
        return Err(1);
    }
    let h = Header {
        states: word(2),
        stride: word(3),
        patterns: word(4),
        max_len: word(5),
        match_words: word(6),
    };
    if h.states == 0 {
        return Err(2);
    }
    if !(2..=257).contains(&h.stride) {
        return Err(3);
    }
    if word(7) != 0 {
        return Err(7);
    }
    if h.words() * 4 > size {
        return Err(6);
    }
    Ok(h)
}

/// The reference DFA_SCAN. `a` are the slot's argument words; returns the result words.
pub fn scan<M: Memory>(mem: &M, a: &[u32; 8]) -> Result<[u32; 4], Fault> {
    let [table, data, off, len, _, _, hits, hits_off] = *a;
    let size = |h: u32| mem.size(h).ok_or(Fault::new(FaultCode::BadHandle, h));
    let table_size = size(table)?;
    let data_size = size(data)?;
    let hits_size = size(hits)?;
    if hits_off % 4 != 0 {
        return Err(Fault::new(FaultCode::Misaligned, hits_off));
    }
    let oob = |at: u32| Fault::new(FaultCode::OutOfBounds, at);
    if u64::from(off) + u64::from(len) > data_size {
        return Err(oob(off));
    }
    let hits_off = u64::from(hits_off);
    if hits_off + HIT_HEADER_BYTES > hits_size {
        return Err(oob(hits_off as u32));
    }
    let capacity = mem.load_u32(hits, hits_off);
    if hits_off + HIT_HEADER_BYTES + 8 * u64::from(capacity) > hits_size {
        return Err(oob(hits_off as u32));
    }
    match mem.words(table) {
        Some(words) => scan_tables(mem, &Words(words), table_size, a, capacity),
        None => scan_tables(mem, &Loads(mem, table), table_size, a, capacity),
    }
}

/// One table, or each member of a set in turn.
fn scan_tables<M: Memory, T: TableWords>(
    mem: &M,
    t: &T,
    table_size: u64,
    a: &[u32; 8],
    capacity: u32,
) -> Result<[u32; 4], Fault> {
    let [_, _, _, _, _, start, hits, hits_off] = *a;
    let mut acc = Acc {
        capacity,
        found: 0,
        stored: 0,
    };
    let head = SET_HEADER_WORDS as u64;
    if table_size < 4 * head || t.word(0) != SET_MAGIC {
        let (state, at_report) = scan_table(mem, t, 0, 0, table_size, a, &mut acc)?;
        mem.store_u32(hits, u64::from(hits_off) + 4, at_report);
        return Ok([acc.found, state, acc.stored, 0]);
    }
    let bad = |i: u64| Fault::new(FaultCode::BadProgram, i as u32);
    if t.word(1) != SET_VERSION {
        return Err(bad(1));
    }
    let n = u64::from(t.word(2));
    let dir_end = head + 2 * n;
    if n == 0 || n > u64::from(SET_MAX_MEMBERS) || 4 * dir_end > table_size {
        return Err(bad(2));
    }
    if t.word(3) != 0 {
        return Err(bad(3));
    }
    for k in 0..n {
        if u64::from(t.word(head + 2 * k)) < dir_end {
            return Err(bad(head + 2 * k));
        }
    }
    if start & START_LOOKBEHIND == 0 {
        return Err(Fault::new(FaultCode::MalformedSlot, 5));
    }
    let mut last = (0, 0);
    for k in 0..n {
        let at = u64::from(t.word(head + 2 * k));
        let base = t.word(head + 2 * k + 1);
        let size = table_size.saturating_sub(4 * at);
        last = scan_table(mem, t, at, base, size, a, &mut acc)?;
    }
    mem.store_u32(hits, u64::from(hits_off) + 4, last.1);
    Ok([acc.found, last.0, acc.stored, 0])
}

/// Matches found and hits stored so far by one slot (across a set's members).
struct Acc {
    capacity: u32,
    found: u32,
    stored: u32,
}

/// How the scan reads table words: straight from a word slice, or through [`Memory`].
trait TableWords {
    fn word(&self, i: u64) -> u32;
}

struct Words<'a>(&'a [std::sync::atomic::AtomicU32]);

impl TableWords for Words<'_> {
    #[inline(always)]
    fn word(&self, i: u64) -> u32 {
        // In bounds: the header check covers every index the scan reads.
        self.0[i as usize].load(std::sync::atomic::Ordering::Relaxed)
    }
}

struct Loads<'a, M>(&'a M, u32);

impl<M: Memory> TableWords for Loads<'_, M> {
    #[inline(always)]
    fn word(&self, i: u64) -> u32 {
        self.0.load_u32(self.1, 4 * i)
    }
}

/// The scan of one table at word `first` of its buffer (0, or a set member's offset) after
/// the buffer checks: table checks, then the bytes; `table_size` counts the buffer's bytes
/// from word `first` on. Hits go after those already in `acc`, with pattern ids plus `base`.
/// Returns the state after the last byte and the state where reporting starts (the hit
/// header's word 1, which the caller writes).
fn scan_table<M: Memory, T: TableWords>(
    mem: &M,
    t: &T,
    first: u64,
    base: u32,
    table_size: u64,
    a: &[u32; 8],
    acc: &mut Acc,
) -> Result<(u32, u32), Fault> {
    let [_, data, off, len, report, start, hits, hits_off] = *a;
    let hits_off = u64::from(hits_off);
    let word = |i: u64| t.word(first + i);
    let bad = |i: u64| Fault::new(FaultCode::BadProgram, (first + i) as u32);
    let h = check_header(table_size, |i| word(i as u64)).map_err(|i| bad(i.into()))?;
    let mut classes = [0u8; 256];
    for w in 0..64 {
        let v = word((CLASS_MAP_WORD + w) as u64).to_le_bytes();
        for (k, &c) in v.iter().enumerate() {
            if u32::from(c) >= h.stride - 1 {
                return Err(bad((CLASS_MAP_WORD + w) as u64));
            }
            classes[4 * w + k] = c;
        }
    }
    // The largest row offset whose C columns all lie inside the transitions.
    let last_row = h.rows_end() - u64::from(h.stride);
    let mut state = if start & START_LOOKBEHIND != 0 {
        let code = start & !START_LOOKBEHIND;
        if code > START_TEXT as u32 {
            return Err(Fault::new(FaultCode::MalformedSlot, 5));
        }
        let at = (START_WORD as u64) + u64::from(code);
        let s = word(at);
        if u64::from(s) > last_row {
            return Err(bad(at));
        }
        s
    } else {
        if u64::from(start) > last_row {
            return Err(Fault::new(FaultCode::MalformedSlot, 5));
        }
        start
    };
    let report_from = report & !REPORT_EOI;
    let Acc {
        capacity,
        mut found,
        mut stored,
    } = *acc;
    let mut emit = |next: u32, end: u32| -> Result<(), Fault> {
        let row = u64::from(next & !MATCH_BIT);
        let at = h.match_index_word() + row / u64::from(h.stride);
        let entry = u64::from(word(at));
        if entry >= u64::from(h.match_words) {
            return Err(bad(at));
        }
        let list = h.match_list_word() + entry;
        let n = u64::from(word(list));
        if entry + 1 + n > u64::from(h.match_words) {
            return Err(bad(list));
        }
        if end < report_from {
            return Ok(());
        }
        for k in 0..n {
            let pattern = word(list + 1 + k).wrapping_add(base);
            if stored < capacity {
                let at = hits_off + HIT_HEADER_BYTES + 8 * u64::from(stored);
                mem.store_u32(hits, at, end);
                mem.store_u32(hits, at + 4, pattern);
                stored += 1;
            }
            found = found.wrapping_add(1);
        }
        Ok(())
    };
    let mut buf = [0u8; 4096];
    // Bytes [from, to) of the range; the hit header's word 1 gets the state between the two
    // calls.
    let mut steps = |state: &mut u32, from: u32, to: u32| -> Result<(), Fault> {
        let mut done = from;
        while done < to {
            let n = (to - done).min(buf.len() as u32) as usize;
            mem.read(data, u64::from(off) + u64::from(done), &mut buf[..n]);
            for (i, &b) in buf[..n].iter().enumerate() {
                let at = TRANS_WORD as u64 + u64::from(*state) + u64::from(classes[usize::from(b)]);
                let next = word(at);
                if u64::from(next & !MATCH_BIT) > last_row {
                    return Err(bad(at));
                }
                if next & MATCH_BIT != 0 {
                    emit(next, done + i as u32)?;
                }
                *state = next & !MATCH_BIT;
            }
            done += n as u32;
        }
        Ok(())
    };
    let split = report_from.min(len);
    steps(&mut state, 0, split)?;
    let at_report = state;
    steps(&mut state, split, len)?;
    if report & REPORT_EOI != 0 {
        let at = TRANS_WORD as u64 + u64::from(state) + u64::from(h.stride - 1);
        let next = word(at);
        if u64::from(next & !MATCH_BIT) > last_row {
            return Err(bad(at));
        }
        if next & MATCH_BIT != 0 {
            emit(next, len)?;
        }
    }
    acc.found = found;
    acc.stored = stored;
    Ok((state, at_report))
}
