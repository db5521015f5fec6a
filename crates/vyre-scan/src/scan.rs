//! DFA_SCAN on the host, over a byte slice.

use vyre_isa::dfa::{CLASS_MAP_WORD, MATCH_BIT, START_TEXT, START_WORD, TRANS_WORD};

/// Where a scan starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// By the byte before the scan: 0..=255 is that byte, 256 (`START_TEXT`) the start of
    /// the text.
    LookBehind(u16),
    /// An explicit state row offset (a previous scan's final row, to carry state).
    Row(u32),
}

/// Scans `data` with one `VDFA` table, with the semantics of `vyre_isa::dfa::scan` (an
/// unlimited hit region): appends `(end, pattern id)` for every match whose end is
/// `>= report_from`, in scan order, ends relative to `data`; with `eoi`, takes the
/// end-of-input transition after the last byte (end = `data.len()`). Returns the state row
/// after the last byte.
///
/// The table must be well formed (as [`crate::compile`] makes them, or as checked by
/// [`crate::check_table`]); a malformed one may panic. `data.len()` must fit in a u32.
pub fn scan_slice(
    table: &[u32],
    data: &[u8],
    start: Start,
    report_from: u32,
    eoi: bool,
    hits: &mut Vec<(u32, u32)>,
) -> u32 {
    let states = table[2] as usize;
    let stride = table[3] as usize;
    let match_index = TRANS_WORD + states * stride;
    let match_list = match_index + states;
    let mut classes = [0u8; 256];
    for (w, word) in table[CLASS_MAP_WORD..CLASS_MAP_WORD + 64]
        .iter()
        .enumerate()
    {
        classes[4 * w..4 * w + 4].copy_from_slice(&word.to_le_bytes());
    }
    let trans = &table[TRANS_WORD..match_index];
    let mut state = match start {
        Start::LookBehind(code) => {
            assert!(
                usize::from(code) <= START_TEXT,
                "look-behind code {code} > 256"
            );
            table[START_WORD + usize::from(code)]
        }
        Start::Row(row) => row,
    };
    let mut emit = |next: u32, end: u32| {
        if end < report_from {
            return;
        }
        let s = (next & !MATCH_BIT) as usize / stride;
        let at = match_list + table[match_index + s] as usize;
        let n = table[at] as usize;
        for &p in &table[at + 1..at + 1 + n] {
            hits.push((end, p));
        }
    };
    for (i, &b) in data.iter().enumerate() {
        let next = trans[state as usize + usize::from(classes[usize::from(b)])];
        if next & MATCH_BIT != 0 {
            emit(next, i as u32);
        }
        state = next & !MATCH_BIT;
    }
    if eoi {
        let next = trans[state as usize + stride - 1];
        if next & MATCH_BIT != 0 {
            emit(next, data.len() as u32);
        }
    }
    state
}

/// Why [`check_table`] refused a table: the index of the first word at fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed VDFA table: word {word} is invalid; recompile the rules")]
pub struct TableError {
    /// Index of the word at fault.
    pub word: usize,
}

/// Checks every word a scan can read: the header, class map, start states, transitions and
/// match lists, so that [`scan_slice`] cannot index out of range with a `LookBehind` start.
pub fn check_table(table: &[u32]) -> Result<(), TableError> {
    let size = (table.len() as u64) * 4;
    let h = vyre_isa::dfa::check_header(size, |i| table[i])
        .map_err(|w| TableError { word: w as usize })?;
    let stride = h.stride;
    for w in 0..64 {
        if table[CLASS_MAP_WORD + w]
            .to_le_bytes()
            .iter()
            .any(|&c| u32::from(c) >= stride - 1)
        {
            return Err(TableError {
                word: CLASS_MAP_WORD + w,
            });
        }
    }
    let rows_end = h.rows_end();
    let row_ok = |v: u32| u64::from(v) < rows_end && u64::from(v) % u64::from(stride) == 0;
    if let Some(k) = table[START_WORD..TRANS_WORD]
        .iter()
        .position(|&v| !row_ok(v))
    {
        return Err(TableError {
            word: START_WORD + k,
        });
    }
    let mi = h.match_index_word() as usize;
    let ml = h.match_list_word() as usize;
    let m = h.match_words as usize;
    for (w, &v) in table.iter().enumerate().take(mi).skip(TRANS_WORD) {
        if !row_ok(v & !MATCH_BIT) {
            return Err(TableError { word: w });
        }
    }
    for w in mi..ml {
        let e = table[w] as usize;
        if e >= m || e + 1 + table[ml + e] as usize > m {
            return Err(TableError { word: w });
        }
    }
    Ok(())
}
