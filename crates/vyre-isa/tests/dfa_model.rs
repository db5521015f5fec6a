//! DFA_SCAN through `exec_slot` against an independent model written from the docs of
//! `crates/vyre-isa/src/dfa.rs` and the op table (`table.rs`), on raw bytes.
//!
//! The model reads the table as bytes (`u32::from_le_bytes` at `4 × index`), checks in the
//! documented order: the three handles (table, data, hits: `bad_handle`, detail = the
//! handle), `hits_off` alignment (`misaligned`, detail = hits_off), the data range
//! (`out_of_bounds`, detail = off), the hit header and the K hit pairs (`out_of_bounds`,
//! detail = hits_off), the table header and class map (`bad_program`, detail = the word at
//! fault: 0 for a buffer shorter than the fixed part or a bad magic, 1 version, 2 zero
//! states, 3 stride outside 2..=257, 7 non-zero word 7, 6 a table longer than its buffer, a
//! class-map word holding a class ≥ C - 1), then `start` (`malformed_slot`, detail 5, for a
//! look-behind code > 256 or a row above S×C − C; a start entry above S×C − C is
//! `bad_program` with its word index). While scanning, a transition above S×C − C (a row
//! must leave room for its C columns), a match index entry ≥ M, or a match list entry
//! running past M is `bad_program` with that word's index; hits stored before stay stored.
//! Where the docs leave a choice the model says so next to the code.
//!
//! Found with this model: rows that are not multiples of C and lie in the last C words
//! (e.g. start = 4 with S = 1, C = 5) let `row + class` read past the transitions, up to
//! past the end of the table buffer; the bound is now S×C − C.

use proptest::prelude::*;
use std::cell::RefCell;
use std::rc::Rc;
use vyre_isa::dfa::{MAGIC, MATCH_BIT, REPORT_EOI, START_LOOKBEHIND, VERSION};
use vyre_isa::{exec_slot, Env, Fault, FaultCode, Memory, Program, Slot, SlotOp};

// ------------------------------------------------------------------ the system under test

#[derive(Debug)]
struct VecMem(RefCell<Vec<Vec<u8>>>);

impl VecMem {
    fn with<R>(&self, h: u32, off: u64, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
        let mut b = self.0.borrow_mut();
        let buf = &mut b[h as usize - 1];
        let off = off as usize;
        assert!(off + len <= buf.len(), "out-of-range access reached Memory");
        f(&mut buf[off..off + len])
    }
}

impl Memory for VecMem {
    fn size(&self, h: u32) -> Option<u64> {
        let i = (h as usize).checked_sub(1)?;
        self.0.borrow().get(i).map(|b| b.len() as u64)
    }
    fn load_u32(&self, h: u32, off: u64) -> u32 {
        assert_eq!(off % 4, 0, "misaligned load reached Memory");
        self.with(h, off, 4, |s| {
            u32::from_le_bytes(s.try_into().expect("4 bytes"))
        })
    }
    fn store_u32(&self, h: u32, off: u64, v: u32) {
        assert_eq!(off % 4, 0, "misaligned store reached Memory");
        self.with(h, off, 4, |s| s.copy_from_slice(&v.to_le_bytes()));
    }
    fn fetch_add_u32(&self, _: u32, _: u64, _: u32) -> u32 {
        unreachable!("DFA_SCAN does not add")
    }
    fn cas_u32(&self, _: u32, _: u64, _: u32, _: u32) -> u32 {
        unreachable!("DFA_SCAN does not swap")
    }
    fn read(&self, h: u32, off: u64, dst: &mut [u8]) {
        self.with(h, off, dst.len(), |s| dst.copy_from_slice(s));
    }
    fn write(&self, h: u32, off: u64, src: &[u8]) {
        self.with(h, off, src.len(), |s| s.copy_from_slice(src));
    }
}

#[derive(Debug)]
struct TestEnv(VecMem);

impl Env for TestEnv {
    type Mem = VecMem;
    type Prog = Rc<Program>;
    fn mem(&self) -> &VecMem {
        &self.0
    }
    fn program(&self, _: u32) -> Option<Rc<Program>> {
        None
    }
    fn fence(&self) -> u32 {
        unreachable!("DFA_SCAN does not fence")
    }
    fn debug_log(&self, _: u32, _: &Slot, _: [u32; 4]) -> bool {
        unreachable!("DFA_SCAN does not log")
    }
    fn request_shutdown(&self) {
        unreachable!("DFA_SCAN does not shut down")
    }
    fn step_budget(&self) -> u64 {
        0
    }
}

// ------------------------------------------------------------------------------ the model

type Outcome = Result<[u32; 4], (FaultCode, u32)>;

fn word(b: &[u8], i: u64) -> u32 {
    let i = i as usize * 4;
    u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"))
}

fn put(b: &mut [u8], off: u64, v: u32) {
    let off = off as usize;
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

/// The model: mutates `bufs` (the hit region) and returns the outcome.
fn model(bufs: &mut [Vec<u8>], a: [u32; 8]) -> Outcome {
    let [table, data, off, len, report, start, hits, hits_off] = a;
    let get = |h: u32| (h >= 1 && (h as usize) <= bufs.len()).then(|| h as usize - 1);
    let (Some(t), Some(d), Some(hb)) = (get(table), get(data), get(hits)) else {
        let bad = [table, data, hits]
            .into_iter()
            .find(|&h| get(h).is_none())
            .expect("one is bad");
        return Err((FaultCode::BadHandle, bad));
    };
    if hits_off % 4 != 0 {
        return Err((FaultCode::Misaligned, hits_off));
    }
    if u64::from(off) + u64::from(len) > bufs[d].len() as u64 {
        return Err((FaultCode::OutOfBounds, off));
    }
    let hsize = bufs[hb].len() as u64;
    let ho = u64::from(hits_off);
    if ho + 8 > hsize {
        return Err((FaultCode::OutOfBounds, hits_off));
    }
    let k = u64::from(word(&bufs[hb], ho / 4));
    if ho + 8 + 8 * k > hsize {
        return Err((FaultCode::OutOfBounds, hits_off));
    }
    let tb = bufs[t].clone();
    let bad = |i: u64| Err((FaultCode::BadProgram, i as u32));
    if tb.len() < 329 * 4 || word(&tb, 0) != MAGIC {
        return bad(0);
    }
    if word(&tb, 1) != VERSION {
        return bad(1);
    }
    let (s, c, m) = (
        u64::from(word(&tb, 2)),
        u64::from(word(&tb, 3)),
        u64::from(word(&tb, 6)),
    );
    if s == 0 {
        return bad(2);
    }
    if !(2..=257).contains(&c) {
        return bad(3);
    }
    if word(&tb, 7) != 0 {
        return bad(7);
    }
    let rows = s * c;
    let last_row = rows - c;
    let (mi, ml) = (329 + rows, 329 + rows + s);
    if (ml + m) * 4 > tb.len() as u64 {
        return bad(6);
    }
    for w in 8..72u64 {
        if word(&tb, w)
            .to_le_bytes()
            .iter()
            .any(|&x| u64::from(x) >= c - 1)
        {
            return bad(w);
        }
    }
    let class = |b: u8| u64::from(tb[8 * 4 + usize::from(b)]);
    let mut state = if start & START_LOOKBEHIND != 0 {
        let code = start & !START_LOOKBEHIND;
        if code > 256 {
            return Err((FaultCode::MalformedSlot, 5));
        }
        let v = word(&tb, 72 + u64::from(code));
        if u64::from(v) > last_row {
            return bad(72 + u64::from(code));
        }
        u64::from(v)
    } else {
        if u64::from(start) > last_row {
            return Err((FaultCode::MalformedSlot, 5));
        }
        u64::from(start)
    };
    let from = report & !REPORT_EOI;
    let (mut found, mut stored) = (0u32, 0u64);
    let bytes = bufs[d][off as usize..(off + len) as usize].to_vec();
    let hits_buf = &mut bufs[hb];
    // Reads the match list of the state at `row` (the docs: its entry at
    // match_index[row / C]); the list is checked before the report filter applies (the
    // docs make no exception for unreported matches). Returns the pattern ids.
    let list = |row: u64| -> Result<Vec<u32>, u64> {
        let at = mi + row / c;
        let e = u64::from(word(&tb, at));
        if e >= m {
            return Err(at);
        }
        let n = u64::from(word(&tb, ml + e));
        if e + 1 + n > m {
            return Err(ml + e);
        }
        Ok((0..n).map(|j| word(&tb, ml + e + 1 + j)).collect())
    };
    let mut steps: Vec<(u64, u32)> = Vec::new();
    // The state after the first min(report_from, len) bytes (hit header word 1).
    let mut at_report = state;
    for (i, &b) in bytes.iter().enumerate() {
        if i as u32 == from {
            at_report = state;
        }
        let at = 329 + state + class(b);
        let next = word(&tb, at);
        if u64::from(next & !MATCH_BIT) > last_row {
            return finish_fault(hits_buf, ho, &steps, k, at);
        }
        state = u64::from(next & !MATCH_BIT);
        if next & MATCH_BIT != 0 {
            match list(state) {
                Ok(ps) if i as u32 >= from => steps.extend(ps.into_iter().map(|p| (i as u64, p))),
                Ok(_) => {}
                Err(w) => return finish_fault(hits_buf, ho, &steps, k, w),
            }
        }
    }
    if report & REPORT_EOI != 0 {
        let at = 329 + state + (c - 1);
        let next = word(&tb, at);
        if u64::from(next & !MATCH_BIT) > last_row {
            return finish_fault(hits_buf, ho, &steps, k, at);
        }
        if next & MATCH_BIT != 0 {
            match list(u64::from(next & !MATCH_BIT)) {
                Ok(ps) if len >= from => steps.extend(ps.into_iter().map(|p| (u64::from(len), p))),
                Ok(_) => {}
                Err(w) => return finish_fault(hits_buf, ho, &steps, k, w),
            }
        }
    }
    for &(end, p) in &steps {
        if stored < k {
            put(hits_buf, ho + 8 + 8 * stored, end as u32);
            put(hits_buf, ho + 12 + 8 * stored, p);
            stored += 1;
        }
        found += 1;
    }
    if from as usize >= bytes.len() {
        at_report = state;
    }
    put(hits_buf, ho + 4, at_report as u32);
    Ok([found, state as u32, stored as u32, 0])
}

/// A fault while scanning: the hits found before it stay stored (up to K).
fn finish_fault(hb: &mut [u8], ho: u64, steps: &[(u64, u32)], k: u64, w: u64) -> Outcome {
    for (j, &(end, p)) in steps.iter().take(k as usize).enumerate() {
        put(hb, ho + 8 + 8 * j as u64, end as u32);
        put(hb, ho + 12 + 8 * j as u64, p);
    }
    Err((FaultCode::BadProgram, w as u32))
}

// ------------------------------------------------------------------------ random inputs

/// A valid random table: S states, `classes` classes, random transitions and match lists.
#[derive(Debug, Clone)]
struct Spec {
    states: u32,
    classes: u32,
    class_map: Vec<u8>,
    starts: Vec<u32>,
    trans: Vec<(u32, bool)>,
    lists: Vec<Vec<u32>>,
    extra: usize,
}

fn spec() -> impl Strategy<Value = Spec> {
    (1u32..5, 1u32..5).prop_flat_map(|(s, c)| {
        let stride = c + 1;
        (
            Just(s),
            Just(c),
            prop::collection::vec(0..c as u8, 256),
            prop::collection::vec(0..s, 257),
            prop::collection::vec((0..s, prop::bool::weighted(0.4)), (s * stride) as usize),
            prop::collection::vec(prop::collection::vec(0u32..6, 0..3), s as usize),
            0usize..3,
        )
            .prop_map(
                move |(states, classes, class_map, starts, trans, lists, extra)| Spec {
                    states,
                    classes,
                    class_map,
                    starts: starts.into_iter().map(|x| x * stride).collect(),
                    trans: trans.into_iter().map(|(t, m)| (t * stride, m)).collect(),
                    lists,
                    extra,
                },
            )
    })
}

fn table_bytes(sp: &Spec) -> Vec<u32> {
    let mut list = vec![0u32];
    let mut index = Vec::new();
    for l in &sp.lists {
        if l.is_empty() {
            index.push(0);
        } else {
            index.push(list.len() as u32);
            list.push(l.len() as u32);
            list.extend_from_slice(l);
        }
    }
    let mut w = vec![
        MAGIC,
        VERSION,
        sp.states,
        sp.classes + 1,
        6,
        9,
        list.len() as u32,
        0,
    ];
    w.extend(
        sp.class_map
            .chunks(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
    );
    w.extend_from_slice(&sp.starts);
    // A transition to a state with an empty list still sets the match bit sometimes: the
    // scan then reports nothing (a count of 0), which the format allows.
    w.extend(
        sp.trans
            .iter()
            .map(|&(t, m)| t | if m { MATCH_BIT } else { 0 }),
    );
    w.extend_from_slice(&index);
    w.extend_from_slice(&list);
    w
}

#[derive(Debug, Clone)]
enum Corrupt {
    None,
    /// Set word `i` (index taken modulo the table length) to `v`.
    Word(prop::sample::Index, u32),
    /// Set a word of the transitions, match index or match list to `v`.
    Body(prop::sample::Index, u32),
    /// Set a header word to `v`.
    Header(usize, u32),
    /// Drop the last `n` bytes.
    Truncate(usize),
}

fn corrupt() -> impl Strategy<Value = Corrupt> {
    prop_oneof![
        6 => Just(Corrupt::None),
        2 => (any::<prop::sample::Index>(), prop_oneof![any::<u32>(), 0u32..40, Just(MATCH_BIT | 3)])
            .prop_map(|(i, v)| Corrupt::Word(i, v)),
        1 => (0usize..8, prop_oneof![0u32..300, any::<u32>()]).prop_map(|(i, v)| Corrupt::Header(i, v)),
        3 => (any::<prop::sample::Index>(), prop_oneof![0u32..40, Just(MATCH_BIT | 21), any::<u32>()])
            .prop_map(|(i, v)| Corrupt::Body(i, v)),
        1 => (1usize..40).prop_map(Corrupt::Truncate),
    ]
}

/// The data range: inside the data buffer (by index), or raw numbers.
#[derive(Debug, Clone)]
enum Range {
    In(prop::sample::Index, prop::sample::Index),
    Raw(u32, u32),
}

#[derive(Debug, Clone)]
struct Args {
    handles: [u32; 3],
    range: Range,
    report: u32,
    start: u32,
    hits_off: u32,
    capacity: u32,
    hits_extra: u32,
}

fn args() -> impl Strategy<Value = Args> {
    let handle = |good: u32| prop_oneof![40 => Just(good), 1 => Just(0u32), 1 => Just(4u32), 1 => any::<u32>()];
    (
        (handle(1), handle(2), handle(3)),
        prop_oneof![
            8 => (any::<prop::sample::Index>(), any::<prop::sample::Index>()).prop_map(|(a, b)| Range::In(a, b)),
            1 => (0u32..24, 0u32..24).prop_map(|(a, b)| Range::Raw(a, b)),
        ],
        (0u32..20, any::<bool>()),
        prop_oneof![
            3 => (0u32..=256).prop_map(|c| START_LOOKBEHIND | c),
            1 => (257u32..300).prop_map(|c| START_LOOKBEHIND | c),
            3 => 0u32..12,
            1 => any::<u32>(),
        ],
        prop_oneof![20 => (0u32..4).prop_map(|x| 4 * x), 1 => 0u32..16],
        0u32..8,
        prop_oneof![5 => Just(0u32), 1 => 0u32..20],
    )
        .prop_map(|(h, range, (from, eoi), start, hits_off, capacity, hits_extra)| Args {
            handles: [h.0, h.1, h.2],
            range,
            report: from | if eoi { REPORT_EOI } else { 0 },
            start,
            hits_off,
            capacity,
            hits_extra,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn dfa_scan_matches_the_model(
        sp in spec(),
        damage in corrupt(),
        data in prop::collection::vec(any::<u8>(), 0..20),
        a in args(),
        hits_short in prop::bool::weighted(0.1),
    ) {
        let mut words = table_bytes(&sp);
        match damage {
            Corrupt::None => {}
            Corrupt::Word(i, v) => {
                let i = i.index(words.len());
                words[i] = v;
            }
            Corrupt::Body(i, v) => {
                let i = 329 + i.index(words.len() - 329);
                words[i] = v;
            }
            Corrupt::Header(i, v) => words[i] = v,
            Corrupt::Truncate(_) => {}
        }
        let mut table: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        table.extend(std::iter::repeat_n(0xEE, sp.extra));
        if let Corrupt::Truncate(n) = damage {
            table.truncate(table.len().saturating_sub(n));
        }
        let hits_len = a.hits_off.div_ceil(4) * 4 + 8 + 8 * a.capacity + a.hits_extra;
        let mut hits = vec![0x5Au8; if hits_short { hits_len as usize / 2 } else { hits_len as usize }];
        let ho = (a.hits_off & !3) as usize;
        if ho + 8 <= hits.len() {
            hits[ho..ho + 4].copy_from_slice(&a.capacity.to_le_bytes());
            hits[ho + 4..ho + 8].fill(0);
        }
        let bufs = vec![table, data.clone(), hits];
        let (off, len) = match a.range {
            Range::In(x, y) => {
                let (x, y) = (x.index(data.len() + 1), y.index(data.len() + 1));
                (x.min(y) as u32, (x.max(y) - x.min(y)) as u32)
            }
            Range::Raw(o, l) => (o, l),
        };
        let argv = [a.handles[0], a.handles[1], off, len, a.report, a.start, a.handles[2], a.hits_off];

        let mut want_bufs = bufs.clone();
        let want = model(&mut want_bufs, argv);

        let env = TestEnv(VecMem(RefCell::new(bufs)));
        let got = exec_slot(&env, &Slot::new(SlotOp::DfaScan, &argv), 0, 0)
            .map_err(|f: Fault| { assert_eq!(f.at, 0); (f.code, f.detail) });
        prop_assert_eq!(got, want);
        prop_assert_eq!(&*env.0 .0.borrow(), &want_bufs);
    }
}

#[test]
fn the_model_sees_matches_and_faults() {
    // A two-state table over one class: every byte moves to state 1 (a match state with
    // pattern 7), so each byte i reports (i, 7).
    let sp = Spec {
        states: 2,
        classes: 1,
        class_map: vec![0; 256],
        starts: vec![0; 257],
        trans: vec![(2, true), (0, false), (2, true), (0, false)],
        lists: vec![vec![], vec![7]],
        extra: 0,
    };
    let table: Vec<u8> = table_bytes(&sp)
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect();
    let mut hits = vec![0u8; 8 + 8 * 2];
    hits[0] = 2;
    let mut bufs = vec![table, b"xyz".to_vec(), hits];
    let out = model(&mut bufs, [1, 2, 0, 3, 1, START_LOOKBEHIND | 256, 3, 0]);
    assert_eq!(out, Ok([2, 2, 2, 0]));
    assert_eq!(word(&bufs[2], 2), 1);
    assert_eq!(word(&bufs[2], 3), 7);
    assert_eq!(word(&bufs[2], 4), 2);
    assert_eq!(
        model(
            &mut bufs.clone(),
            [1, 2, 0, 3, 1, START_LOOKBEHIND | 257, 3, 0]
        ),
        Err((FaultCode::MalformedSlot, 5))
    );
    assert_eq!(
        model(&mut bufs.clone(), [1, 2, 0, 4, 1, 0, 3, 0]),
        Err((FaultCode::OutOfBounds, 0))
    );
    assert_eq!(
        model(&mut bufs, [1, 2, 0, 3, 1, 0, 3, 2]),
        Err((FaultCode::Misaligned, 2))
    );
}
