//! Literal groups: an Aho-Corasick automaton written out as a `VDFA` table, built in time
//! linear in the table instead of by subset construction (which costs about one step per
//! pattern per transition: 17 s for 1,000 words, see `bench/results/scan-compile.md`).
//!
//! DFA_SCAN reports a match *one byte late*: entering a match state on byte `i` reports
//! matches that end at `i` (they end before byte `i`). An Aho-Corasick state knows the
//! literals that end *after* its last byte, so a table state here is a pair (automaton
//! state `t`, outputs of the state before `t`): the transition on byte `i` from `(s, _)`
//! goes to `(δ(s, b), out(s))`, a match state when `out(s)` is not empty, and the
//! end-of-input column goes to `(root, out(s))`. Pairs are numbered in breadth-first order
//! from `(root, ∅)`, which is the start state for every look-behind code (literals have no
//! assertions).

use crate::compile::Parts;
use rustc_hash::FxHashMap;
use std::collections::{HashMap, VecDeque};
use vyre_isa::dfa::{MATCH_BIT, START_TEXT, TRANS_WORD};

/// Builds the table for `lits` (pattern id = position). With `fold`, ASCII letters match
/// either case. `None` when the table would exceed `max_table_words`.
pub(crate) fn literal_table(lits: &[&[u8]], fold: bool, max_table_words: usize) -> Option<Parts> {
    let folded = |b: u8| if fold { b.to_ascii_lowercase() } else { b };
    // Byte classes: one per byte (after folding) that occurs in a literal, one for the rest.
    let mut used = [false; 256];
    for l in lits {
        for &b in *l {
            used[usize::from(folded(b))] = true;
        }
    }
    let mut class_of = [0u8; 256];
    let mut key_class: HashMap<Option<u8>, u8> = HashMap::new();
    for b in 0..=255u8 {
        let key = used[usize::from(folded(b))].then_some(folded(b));
        let next = key_class.len();
        // At most 256 keys, so a class fits in a u8.
        class_of[usize::from(b)] = *key_class.entry(key).or_insert(next as u8);
    }
    let classes = key_class.len();
    let stride = classes + 1;

    // The trie, with sparse children while inserting.
    let mut children: Vec<Vec<(u8, u32)>> = vec![Vec::new()];
    let mut own: Vec<Vec<u32>> = vec![Vec::new()];
    for (k, l) in lits.iter().enumerate() {
        let mut node = 0usize;
        for &b in *l {
            let c = class_of[usize::from(b)];
            node = match children[node].iter().find(|&&(x, _)| x == c) {
                Some(&(_, n)) => n as usize,
                None => {
                    children.push(Vec::new());
                    own.push(Vec::new());
                    let n = children.len() - 1;
                    children[node].push((c, n as u32));
                    n
                }
            };
        }
        own[node].push(k as u32);
    }
    let nodes = children.len();
    // Every trie node is reachable, so the table has at least one state per node: a set too
    // large for the limit is refused here, before the transition function is built (the
    // compiler halves such sets, and building the failing ones cost most of its time).
    if TRANS_WORD.saturating_add(nodes.saturating_mul(stride)) > max_table_words {
        return None;
    }
    // Full transition function δ and output sets, breadth first (a node's failure link is
    // shallower, so it is finished first).
    let mut delta = vec![0u32; nodes * classes];
    let mut fail = vec![0u32; nodes];
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); nodes];
    let mut queue = VecDeque::new();
    for &(c, v) in &children[0] {
        delta[usize::from(c)] = v;
        queue.push_back(v as usize);
    }
    out[0] = own[0].clone();
    while let Some(u) = queue.pop_front() {
        let f = fail[u] as usize;
        let mut o = own[u].clone();
        if u != 0 {
            o.extend_from_slice(&out[f]);
        }
        o.sort_unstable();
        o.dedup();
        out[u] = o;
        for c in 0..classes {
            delta[u * classes + c] = delta[f * classes + c];
        }
        for &(c, v) in &children[u] {
            let c = usize::from(c);
            fail[v as usize] = delta[f * classes + c];
            delta[u * classes + c] = v;
            queue.push_back(v as usize);
        }
    }
    // Intern output sets: id 0 = empty.
    // Fx hashing: these maps take one lookup per transition of the table being built (tens
    // of millions for 10,000 words), where SipHash cost most of the compile time.
    let mut set_id: FxHashMap<Vec<u32>, u32> = FxHashMap::default();
    let mut sets: Vec<Vec<u32>> = vec![Vec::new()];
    set_id.insert(Vec::new(), 0);
    let out_id: Vec<u32> = out
        .into_iter()
        .map(|o| {
            let next = sets.len() as u32;
            *set_id.entry(o.clone()).or_insert_with(|| {
                sets.push(o);
                next
            })
        })
        .collect();
    // Pair states, breadth first from (root, ∅).
    let mut index: FxHashMap<(u32, u32), u32> = FxHashMap::default();
    let mut order: Vec<(u32, u32)> = Vec::new();
    let mut visit = |p: (u32, u32), order: &mut Vec<(u32, u32)>| -> u32 {
        *index.entry(p).or_insert_with(|| {
            order.push(p);
            (order.len() - 1) as u32
        })
    };
    visit((0, 0), &mut order);
    let mut targets: Vec<u32> = Vec::new();
    let mut i = 0;
    while i < order.len() {
        let (s, _) = order[i];
        let o = out_id[s as usize];
        for c in 0..classes {
            let t = delta[s as usize * classes + c];
            targets.push(visit((t, o), &mut order));
        }
        targets.push(visit((0, o), &mut order));
        if TRANS_WORD + targets.len() > max_table_words {
            return None;
        }
        i += 1;
    }
    let states = order.len();
    if states.saturating_mul(stride) >= MATCH_BIT as usize {
        return None;
    }
    let trans = targets
        .iter()
        .map(|&t| {
            let (_, o) = order[t as usize];
            (t * stride as u32) | if o != 0 { MATCH_BIT } else { 0 }
        })
        .collect();
    let mut match_list = vec![0u32];
    let mut set_at = vec![0u32; sets.len()];
    for (id, s) in sets.iter().enumerate().skip(1) {
        set_at[id] = match_list.len() as u32;
        match_list.push(s.len() as u32);
        match_list.extend_from_slice(s);
    }
    let match_index = order.iter().map(|&(_, o)| set_at[o as usize]).collect();
    Some(Parts {
        states,
        stride,
        class_of,
        starts: [0; START_TEXT + 1],
        trans,
        match_index,
        match_list,
    })
}
