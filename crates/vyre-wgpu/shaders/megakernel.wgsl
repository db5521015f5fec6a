// vyre megakernel for wgpu: one dispatch drains one epoch of staged slots.
//
// The protocol constants (VYRE_*), the per-opcode argument counts (`arg_count`), the VDFA
// layout (DFA_*) and the binding layout (IO_*, ST_*, MAX_PAGES, WORKGROUP_SIZE) are generated
// from the Rust definitions and prepended by src/shader.rs; nothing here repeats a number
// from the op table. Semantics follow crates/vyre-isa/src/interp.rs exactly (fault order,
// detail words, EXEC pc and step budget); crates/vyre-cuda/kernels/megakernel.cu is the same
// machine in CUDA C.
//
// Bindings:
//   io      the epoch: a header (count, active invocations, debug read cursor, step budget,
//           page shift, buffer, program and file counts, claim counter) and 16 words per
//           slot (position, status, op, tenant, args, results); results and status are
//           written back in place. A slot staged with status WAIT_IO is an IO_READ whose read
//           the host finished (RES0 = its result word): it runs phase 2. An IO_READ that
//           passes phase 1 comes back with status WAIT_IO: the driver queues its request.
//   tables    read-only: buffer table (base word, size lo, size hi, 0) per handle, then the
//           program table (code word, instruction count) per id, then the code words
//   st      persistent device state: epoch, debug write cursor, dropped records, shutdown,
//           then the debug log mirror (8 words per record)
//   heap0.. the buffers, one heap of words split into pages of 2^page_shift words, one
//           binding each, so that the heap may exceed max_storage_buffer_binding_size
//
// Every claim is a plain atomicAdd on io.claim; no invocation ever waits for another, so
// any grid size makes progress (lavapipe gives progress only to LP_NUM_THREADS spinning
// workgroups).

struct Io {
    count: u32,
    invocations: u32,
    dbg_read: u32,
    dbg_cap: u32,
    budget_lo: u32,
    budget_hi: u32,
    page_shift: u32,
    nbufs: u32,
    nprogs: u32,
    prog_base: u32,
    io_files: u32,
    reserved1: u32,
    reserved2: u32,
    reserved3: u32,
    reserved4: u32,
    claim: atomic<u32>,
    w: array<u32>,
}

@group(0) @binding(0) var<storage, read_write> io: Io;
@group(0) @binding(1) var<storage, read> tables: array<u32>;
@group(0) @binding(2) var<storage, read_write> st: array<atomic<u32>>;
@group(0) @binding(3) var<storage, read_write> heap0: array<atomic<u32>>;
@group(0) @binding(4) var<storage, read_write> heap1: array<atomic<u32>>;
@group(0) @binding(5) var<storage, read_write> heap2: array<atomic<u32>>;
@group(0) @binding(6) var<storage, read_write> heap3: array<atomic<u32>>;

// ---------------------------------------------------------------- faults and results

var<private> f_code: u32;
var<private> f_detail: u32;
var<private> f_at: u32;
var<private> res: array<u32, 4>;
var<private> a: array<u32, 8>;

fn fail(code: u32, detail: u32) -> bool {
    f_code = code;
    f_detail = detail;
    f_at = 0u;
    return false;
}

// ---------------------------------------------------------------- the heap

fn page_mask() -> u32 {
    return (1u << io.page_shift) - 1u;
}

fn hload(idx: u32) -> u32 {
    let i = idx & page_mask();
    switch (idx >> io.page_shift) {
        case 0u: { return atomicLoad(&heap0[i]); }
        case 1u: { return atomicLoad(&heap1[i]); }
        case 2u: { return atomicLoad(&heap2[i]); }
        default: { return atomicLoad(&heap3[i]); }
    }
}

fn hstore(idx: u32, v: u32) {
    let i = idx & page_mask();
    switch (idx >> io.page_shift) {
        case 0u: { atomicStore(&heap0[i], v); }
        case 1u: { atomicStore(&heap1[i], v); }
        case 2u: { atomicStore(&heap2[i], v); }
        default: { atomicStore(&heap3[i], v); }
    }
}

fn hadd(idx: u32, v: u32) -> u32 {
    let i = idx & page_mask();
    switch (idx >> io.page_shift) {
        case 0u: { return atomicAdd(&heap0[i], v); }
        case 1u: { return atomicAdd(&heap1[i], v); }
        case 2u: { return atomicAdd(&heap2[i], v); }
        default: { return atomicAdd(&heap3[i], v); }
    }
}

// A strong compare-and-swap (the weak one may fail spuriously). Returns the old value.
fn hcas(idx: u32, expected: u32, new_value: u32) -> u32 {
    let i = idx & page_mask();
    loop {
        var old: u32;
        var ok: bool;
        switch (idx >> io.page_shift) {
            case 0u: { let r = atomicCompareExchangeWeak(&heap0[i], expected, new_value); old = r.old_value; ok = r.exchanged; }
            case 1u: { let r = atomicCompareExchangeWeak(&heap1[i], expected, new_value); old = r.old_value; ok = r.exchanged; }
            case 2u: { let r = atomicCompareExchangeWeak(&heap2[i], expected, new_value); old = r.old_value; ok = r.exchanged; }
            default: { let r = atomicCompareExchangeWeak(&heap3[i], expected, new_value); old = r.old_value; ok = r.exchanged; }
        }
        if (ok || old != expected) {
            return old;
        }
    }
    return 0u; // unreachable: the loop only returns
}

// ---------------------------------------------------------------- buffers

struct Buf {
    base: u32,
    size_lo: u32,
    size_hi: u32,
}

fn buf_ok(h: u32) -> bool {
    return h != 0u && h <= io.nbufs;
}

fn buf(h: u32) -> Buf {
    let e = 4u * (h - 1u);
    return Buf(tables[e], tables[e + 1u], tables[e + 2u]);
}

// off + len <= size, computed exactly (off and len are u32, size up to 2^32).
fn fits(b: Buf, off: u32, len: u32) -> bool {
    let end = off + len;
    let carry = select(0u, 1u, end < off);
    if (b.size_hi != carry) {
        return b.size_hi > carry;
    }
    return end <= b.size_lo;
}

// Handle, then range (interp.rs check_range).
fn check_range(h: u32, off: u32, len: u32) -> bool {
    if (!buf_ok(h)) { return fail(VYRE_F_BAD_HANDLE, h); }
    if (!fits(buf(h), off, len)) { return fail(VYRE_F_OUT_OF_BOUNDS, off); }
    return true;
}

// Handle, then alignment, then range (interp.rs check_word).
fn check_word(h: u32, off: u32) -> bool {
    if (!buf_ok(h)) { return fail(VYRE_F_BAD_HANDLE, h); }
    if ((off & 3u) != 0u) { return fail(VYRE_F_MISALIGNED, off); }
    if (!fits(buf(h), off, 4u)) { return fail(VYRE_F_OUT_OF_BOUNDS, off); }
    return true;
}

fn load_byte(base: u32, off: u32) -> u32 {
    return (hload(base + (off >> 2u)) >> ((off & 3u) * 8u)) & 0xffu;
}

// A byte store is a compare-and-swap of its word, so neighbouring bytes written concurrently
// by other invocations are never clobbered (like the cpu backend's fetch_update).
fn store_byte(base: u32, off: u32, v: u32) {
    let idx = base + (off >> 2u);
    let s = (off & 3u) * 8u;
    var old = hload(idx);
    loop {
        let new_value = (old & ~(0xffu << s)) | ((v & 0xffu) << s);
        let seen = hcas(idx, old, new_value);
        if (seen == old) {
            break;
        }
        old = seen;
    }
}

// Sequential byte reads: one word load per four bytes. `next_byte(base, p)` for p = off, off+1,
// ... in order; the word is reloaded at p = off and at every word boundary.
var<private> seq_word: u32;

fn next_byte(base: u32, p: u32, first: bool) -> u32 {
    if (first || (p & 3u) == 0u) {
        seq_word = hload(base + (p >> 2u));
    }
    return (seq_word >> ((p & 3u) * 8u)) & 0xffu;
}

// Four bytes at any offset (all four inside the buffer).
fn rd32(base: u32, off: u32) -> u32 {
    let q = base + (off >> 2u);
    let s = (off & 3u) * 8u;
    let lo = hload(q);
    if (s == 0u) {
        return lo;
    }
    return (lo >> s) | (hload(q + 1u) << (32u - s));
}

// ---------------------------------------------------------------- 64-bit arithmetic (x = low, y = high)

fn mul32(a0: u32, b0: u32) -> vec2<u32> {
    let al = a0 & 0xffffu;
    let ah = a0 >> 16u;
    let bl = b0 & 0xffffu;
    let bh = b0 >> 16u;
    let p00 = al * bl;
    let p01 = al * bh;
    let p10 = ah * bl;
    let p11 = ah * bh;
    let mid = (p00 >> 16u) + (p01 & 0xffffu) + (p10 & 0xffffu);
    let lo = (p00 & 0xffffu) | (mid << 16u);
    let hi = p11 + (p01 >> 16u) + (p10 >> 16u) + (mid >> 16u);
    return vec2<u32>(lo, hi);
}

fn mul64(x: vec2<u32>, y: vec2<u32>) -> vec2<u32> {
    let t = mul32(x.x, y.x);
    return vec2<u32>(t.x, t.y + x.x * y.y + x.y * y.x);
}

fn add64(x: vec2<u32>, y: vec2<u32>) -> vec2<u32> {
    let lo = x.x + y.x;
    return vec2<u32>(lo, x.y + y.y + select(0u, 1u, lo < x.x));
}

fn sub64(x: vec2<u32>, y: vec2<u32>) -> vec2<u32> {
    return vec2<u32>(x.x - y.x, x.y - y.y - select(0u, 1u, x.x < y.x));
}

fn shl64(x: vec2<u32>, n: u32) -> vec2<u32> {
    if (n == 0u) { return x; }
    if (n < 32u) { return vec2<u32>(x.x << n, (x.y << n) | (x.x >> (32u - n))); }
    return vec2<u32>(0u, x.x << (n - 32u));
}

fn shr64(x: vec2<u32>, n: u32) -> vec2<u32> {
    if (n == 0u) { return x; }
    if (n < 32u) { return vec2<u32>((x.x >> n) | (x.y << (32u - n)), x.y >> n); }
    return vec2<u32>(x.y >> (n - 32u), 0u);
}

fn sar64(x: vec2<u32>, n: u32) -> vec2<u32> {
    let hi = bitcast<i32>(x.y);
    if (n == 0u) { return x; }
    if (n < 32u) { return vec2<u32>((x.x >> n) | (x.y << (32u - n)), bitcast<u32>(hi >> n)); }
    return vec2<u32>(bitcast<u32>(hi >> (n - 32u)), bitcast<u32>(hi >> 31u));
}

fn rotl64(x: vec2<u32>, n: u32) -> vec2<u32> {
    return shl64(x, n) | shr64(x, 64u - n);
}

fn ltu64(x: vec2<u32>, y: vec2<u32>) -> bool {
    return x.y < y.y || (x.y == y.y && x.x < y.x);
}

fn lts64(x: vec2<u32>, y: vec2<u32>) -> bool {
    let xh = bitcast<i32>(x.y);
    let yh = bitcast<i32>(y.y);
    return xh < yh || (xh == yh && x.x < y.x);
}

fn sext(imm: i32) -> vec2<u32> {
    return vec2<u32>(bitcast<u32>(imm), select(0u, 0xffffffffu, imm < 0));
}

fn b64(c: bool) -> vec2<u32> {
    return vec2<u32>(select(0u, 1u, c), 0u);
}

// ---------------------------------------------------------------- xxHash64

const P1 = vec2<u32>(0x85EBCA87u, 0x9E3779B1u);
const P2 = vec2<u32>(0x27D4EB4Fu, 0xC2B2AE3Du);
const P3 = vec2<u32>(0x9E3779F9u, 0x165667B1u);
const P4 = vec2<u32>(0xC2B2AE63u, 0x85EBCA77u);
const P5 = vec2<u32>(0x165667C5u, 0x27D4EB2Fu);

fn xround(acc: vec2<u32>, v: vec2<u32>) -> vec2<u32> {
    return mul64(rotl64(add64(acc, mul64(v, P2)), 31u), P1);
}

fn xmerge(acc: vec2<u32>, v: vec2<u32>) -> vec2<u32> {
    return add64(mul64(acc ^ xround(vec2<u32>(0u, 0u), v), P1), P4);
}

fn rd64(base: u32, off: u32) -> vec2<u32> {
    return vec2<u32>(rd32(base, off), rd32(base, off + 4u));
}

fn xxh64(base: u32, off: u32, len: u32, seed: u32) -> vec2<u32> {
    let s = vec2<u32>(seed, 0u);
    var p = off;
    let end = off + len; // off + len fits: the range was checked against a buffer < 2^32 bytes
    var h: vec2<u32>;
    if (len >= 32u) {
        var v1 = add64(add64(s, P1), P2);
        var v2 = add64(s, P2);
        var v3 = s;
        var v4 = sub64(s, P1);
        loop {
            if (end - p < 32u) { break; }
            v1 = xround(v1, rd64(base, p));
            v2 = xround(v2, rd64(base, p + 8u));
            v3 = xround(v3, rd64(base, p + 16u));
            v4 = xround(v4, rd64(base, p + 24u));
            p += 32u;
        }
        h = add64(add64(rotl64(v1, 1u), rotl64(v2, 7u)), add64(rotl64(v3, 12u), rotl64(v4, 18u)));
        h = xmerge(h, v1);
        h = xmerge(h, v2);
        h = xmerge(h, v3);
        h = xmerge(h, v4);
    } else {
        h = add64(s, P5);
    }
    h = add64(h, vec2<u32>(len, 0u));
    loop {
        if (end - p < 8u) { break; }
        h = add64(mul64(rotl64(h ^ xround(vec2<u32>(0u, 0u), rd64(base, p)), 27u), P1), P4);
        p += 8u;
    }
    if (end - p >= 4u) {
        h = add64(mul64(rotl64(h ^ mul64(vec2<u32>(rd32(base, p), 0u), P1), 23u), P2), P3);
        p += 4u;
    }
    loop {
        if (p == end) { break; }
        h = mul64(rotl64(h ^ mul64(vec2<u32>(load_byte(base, p), 0u), P5), 11u), P1);
        p += 1u;
    }
    h = h ^ shr64(h, 33u);
    h = mul64(h, P2);
    h = h ^ shr64(h, 29u);
    h = mul64(h, P3);
    return h ^ shr64(h, 32u);
}

// ---------------------------------------------------------------- slot ops

fn op_memcpy() -> bool {
    let dst = a[0];
    let dst_off = a[1];
    let src = a[2];
    let src_off = a[3];
    let len = a[4];
    if (!check_range(dst, dst_off, len)) { return false; }
    if (!check_range(src, src_off, len)) { return false; }
    let d = buf(dst).base;
    let s = buf(src).base;
    // Copy backwards when the destination overlaps the source from above, like memmove.
    let backward = dst == src && dst_off > src_off && dst_off - src_off < len;
    if (((dst_off | src_off | len) & 3u) == 0u) {
        let n = len >> 2u;
        let dw = d + (dst_off >> 2u);
        let sw = s + (src_off >> 2u);
        for (var i = 0u; i < n; i++) {
            let k = select(i, n - 1u - i, backward);
            hstore(dw + k, hload(sw + k));
        }
        return true;
    }
    for (var i = 0u; i < len; i++) {
        let k = select(i, len - 1u - i, backward);
        store_byte(d, dst_off + k, load_byte(s, src_off + k));
    }
    return true;
}

fn op_fill() -> bool {
    if (a[3] > 0xffu) { return fail(VYRE_F_MALFORMED_SLOT, 3u); }
    if (!check_range(a[0], a[1], a[2])) { return false; }
    let base = buf(a[0]).base;
    let v = a[3];
    var p = a[1];
    let end = a[1] + a[2];
    loop {
        if (p == end || (p & 3u) == 0u) { break; }
        store_byte(base, p, v);
        p += 1u;
    }
    let word = v * 0x01010101u;
    loop {
        if (end - p < 4u) { break; }
        hstore(base + (p >> 2u), word);
        p += 4u;
    }
    loop {
        if (p == end) { break; }
        store_byte(base, p, v);
        p += 1u;
    }
    return true;
}

fn op_byte_histogram() -> bool {
    if (!check_range(a[0], a[1], a[2])) { return false; }
    if (!buf_ok(a[3])) { return fail(VYRE_F_BAD_HANDLE, a[3]); }
    if ((a[4] & 3u) != 0u) { return fail(VYRE_F_MISALIGNED, a[4]); }
    if (!fits(buf(a[3]), a[4], 1024u)) { return fail(VYRE_F_OUT_OF_BOUNDS, a[4]); }
    var counts: array<u32, 256>;
    let base = buf(a[0]).base;
    for (var i = 0u; i < a[2]; i++) {
        let b = next_byte(base, a[1] + i, i == 0u);
        counts[b] += 1u;
    }
    let dst = buf(a[3]).base + (a[4] >> 2u);
    for (var i = 0u; i < 256u; i++) {
        if (counts[i] != 0u) {
            hadd(dst + i, counts[i]);
        }
    }
    res[0] = a[2];
    return true;
}

fn op_count_byte() -> bool {
    if (a[3] > 0xffu) { return fail(VYRE_F_MALFORMED_SLOT, 3u); }
    if (!check_range(a[0], a[1], a[2])) { return false; }
    let base = buf(a[0]).base;
    var n = 0u;
    for (var i = 0u; i < a[2]; i++) {
        n += select(0u, 1u, next_byte(base, a[1] + i, i == 0u) == a[3]);
    }
    res[0] = n;
    return true;
}

fn op_packed() -> bool {
    let count = a[0] & 0xffu;
    if (count < 1u || count > 3u) { return fail(VYRE_F_MALFORMED_SLOT, 0u); }
    if (count < 3u && (a[0] >> (8u * (count + 1u))) != 0u) { return fail(VYRE_F_MALFORMED_SLOT, 0u); }
    for (var i = 2u + 2u * count; i < 8u; i++) {
        if (a[i] != 0u) { return fail(VYRE_F_MALFORMED_SLOT, i); }
    }
    let h = a[1];
    for (var i = 0u; i < count; i++) {
        let sub = (a[0] >> (8u * (i + 1u))) & 0xffu;
        let off = a[2u + 2u * i];
        let val = a[3u + 2u * i];
        if (sub == VYRE_OP_NOP) { continue; }
        if (sub != VYRE_OP_LOAD_U32 && sub != VYRE_OP_STORE_U32 && sub != VYRE_OP_ATOMIC_ADD) {
            fail(VYRE_F_MALFORMED_SLOT, 0u);
            f_at = i;
            return false;
        }
        if (!check_word(h, off)) {
            f_at = i;
            return false;
        }
        let idx = buf(h).base + (off >> 2u);
        if (sub == VYRE_OP_LOAD_U32) {
            res[i] = hload(idx);
        } else if (sub == VYRE_OP_STORE_U32) {
            hstore(idx, val);
        } else {
            res[i] = hadd(idx, val);
        }
    }
    return true;
}

fn debug_log(position: u32, op_word: u32, tenant_word: u32) -> bool {
    let cap = io.dbg_cap;
    var cur = atomicLoad(&st[ST_DEBUG_WRITE]);
    loop {
        // Signed: a write cursor read before the host drained past it is not "full".
        if (bitcast<i32>(cur - io.dbg_read) >= bitcast<i32>(cap)) {
            atomicAdd(&st[ST_DEBUG_DROPPED], 1u);
            return false;
        }
        let r = atomicCompareExchangeWeak(&st[ST_DEBUG_WRITE], cur, cur + 1u);
        if (r.exchanged) { break; }
        cur = r.old_value;
    }
    let rec = ST_DEBUG_RECORDS + (cur & (cap - 1u)) * VYRE_DBG_RECORD_WORDS;
    atomicStore(&st[rec + 1u], position);
    atomicStore(&st[rec + 2u], tenant_word);
    atomicStore(&st[rec + 3u], op_word);
    for (var i = 0u; i < 4u; i++) {
        atomicStore(&st[rec + 4u + i], a[i]);
    }
    atomicStore(&st[rec], cur + 1u);
    return true;
}

// ---------------------------------------------------------------- DFA_SCAN (crates/vyre-isa/src/dfa.rs)

var<private> dfa_classes: array<u32, 256>;
var<private> dfa_found: u32;
var<private> dfa_stored: u32;
// The table being run: its first word in the table buffer (0, or a set member's offset;
// added to fault details) and the base added to its pattern ids.
var<private> dfa_first: u32;
var<private> dfa_pbase: u32;
// What dfa_table leaves: the state after the last byte, and where reporting starts.
var<private> dfa_state: u32;
var<private> dfa_at_report: u32;

fn dfa_emit(tb: u32, hb: u32, hits_off: u32, capacity: u32, stride: u32, mi: u32, ml: u32,
            mwords: u32, report_from: u32, next: u32, end: u32) -> bool {
    let row = next & ~DFA_MATCH_BIT;
    let at = mi + row / stride;
    let entry = hload(tb + at);
    if (entry >= mwords) { return fail(VYRE_F_BAD_PROGRAM, dfa_first + at); }
    let list = ml + entry;
    let n = hload(tb + list);
    if (n > mwords - entry - 1u) { return fail(VYRE_F_BAD_PROGRAM, dfa_first + list); }
    if (end < report_from) { return true; }
    for (var k = 0u; k < n; k++) {
        let pattern = hload(tb + list + 1u + k) + dfa_pbase;
        if (dfa_stored < capacity) {
            let w = hb + ((hits_off + 8u) >> 2u) + 2u * dfa_stored;
            hstore(w, end);
            hstore(w + 1u, pattern);
            dfa_stored += 1u;
        }
        dfa_found += 1u;
    }
    return true;
}

// One table at heap word `tb` (dfa_first words into its buffer; tsize = the buffer's bytes
// from there on): its checks (dfa.rs check_header), then the bytes, hits after the
// dfa_stored ones already in the region.
fn dfa_table(tb: u32, tsize: vec2<u32>, db: u32, off: u32, len: u32, report: u32, start: u32,
             hb: u32, hits_off: u32, capacity: u32) -> bool {
    let first = dfa_first;
    if (ltu64(tsize, vec2<u32>(DFA_TRANS_WORD * 4u, 0u))) { return fail(VYRE_F_BAD_PROGRAM, first); }
    if (hload(tb) != DFA_MAGIC) { return fail(VYRE_F_BAD_PROGRAM, first); }
    if (hload(tb + 1u) != DFA_VERSION) { return fail(VYRE_F_BAD_PROGRAM, first + 1u); }
    let states = hload(tb + 2u);
    let stride = hload(tb + 3u);
    let mwords = hload(tb + 6u);
    if (states == 0u) { return fail(VYRE_F_BAD_PROGRAM, first + 2u); }
    if (stride < 2u || stride > 257u) { return fail(VYRE_F_BAD_PROGRAM, first + 3u); }
    if (hload(tb + 7u) != 0u) { return fail(VYRE_F_BAD_PROGRAM, first + 7u); }
    let rows64 = mul32(states, stride);
    let words = add64(add64(rows64, vec2<u32>(DFA_TRANS_WORD, 0u)), add64(vec2<u32>(states, 0u), vec2<u32>(mwords, 0u)));
    if (ltu64(tsize, shl64(words, 2u))) { return fail(VYRE_F_BAD_PROGRAM, first + 6u); }
    // From here the whole table lies inside a buffer of at most 2^32 bytes: every word
    // index fits in u32.
    let rows_end = rows64.x;
    // The largest row offset whose C columns all lie inside the transitions.
    let last_row = rows_end - stride;
    let mi = DFA_TRANS_WORD + rows_end;
    let ml = mi + states;
    for (var w = 0u; w < 64u; w++) {
        let v = hload(tb + DFA_CLASS_MAP_WORD + w);
        for (var k = 0u; k < 4u; k++) {
            let c = (v >> (8u * k)) & 0xffu;
            if (c >= stride - 1u) { return fail(VYRE_F_BAD_PROGRAM, first + DFA_CLASS_MAP_WORD + w); }
            dfa_classes[4u * w + k] = c;
        }
    }
    var state: u32;
    if ((start & DFA_START_LOOKBEHIND) != 0u) {
        let code = start & ~DFA_START_LOOKBEHIND;
        if (code > DFA_START_TEXT) { return fail(VYRE_F_MALFORMED_SLOT, 5u); }
        let at = DFA_START_WORD + code;
        let s = hload(tb + at);
        if (s > last_row) { return fail(VYRE_F_BAD_PROGRAM, first + at); }
        state = s;
    } else {
        if (start > last_row) { return fail(VYRE_F_MALFORMED_SLOT, 5u); }
        state = start;
    }
    let report_from = report & ~DFA_REPORT_EOI;
    // Hit header word 1: the state after the first min(report_from, len) bytes.
    var at_report = state;
    for (var i = 0u; i < len; i++) {
        if (i == report_from) { at_report = state; }
        let at = DFA_TRANS_WORD + state + dfa_classes[next_byte(db, off + i, i == 0u)];
        let next = hload(tb + at);
        if ((next & ~DFA_MATCH_BIT) > last_row) { return fail(VYRE_F_BAD_PROGRAM, first + at); }
        if ((next & DFA_MATCH_BIT) != 0u) {
            if (!dfa_emit(tb, hb, hits_off, capacity, stride, mi, ml, mwords, report_from, next, i)) {
                return false;
            }
        }
        state = next & ~DFA_MATCH_BIT;
    }
    if ((report & DFA_REPORT_EOI) != 0u) {
        let at = DFA_TRANS_WORD + state + stride - 1u;
        let next = hload(tb + at);
        if ((next & ~DFA_MATCH_BIT) > last_row) { return fail(VYRE_F_BAD_PROGRAM, first + at); }
        if ((next & DFA_MATCH_BIT) != 0u) {
            if (!dfa_emit(tb, hb, hits_off, capacity, stride, mi, ml, mwords, report_from, next, len)) {
                return false;
            }
        }
    }
    if (report_from >= len) { at_report = state; }
    dfa_state = state;
    dfa_at_report = at_report;
    return true;
}

fn op_dfa_scan() -> bool {
    let table = a[0];
    let data = a[1];
    let off = a[2];
    let len = a[3];
    let report = a[4];
    let start = a[5];
    let hits = a[6];
    let hits_off = a[7];
    if (!buf_ok(table)) { return fail(VYRE_F_BAD_HANDLE, table); }
    if (!buf_ok(data)) { return fail(VYRE_F_BAD_HANDLE, data); }
    if (!buf_ok(hits)) { return fail(VYRE_F_BAD_HANDLE, hits); }
    if ((hits_off & 3u) != 0u) { return fail(VYRE_F_MISALIGNED, hits_off); }
    let tbuf = buf(table);
    let hbuf = buf(hits);
    if (!fits(buf(data), off, len)) { return fail(VYRE_F_OUT_OF_BOUNDS, off); }
    if (!fits(hbuf, hits_off, 8u)) { return fail(VYRE_F_OUT_OF_BOUNDS, hits_off); }
    let capacity = hload(hbuf.base + (hits_off >> 2u));
    // hits_off + 8 + 8 * capacity <= size, in 64 bits.
    let need = add64(vec2<u32>(hits_off, 0u), add64(vec2<u32>(8u, 0u), shl64(vec2<u32>(capacity, 0u), 3u)));
    if (ltu64(vec2<u32>(hbuf.size_lo, hbuf.size_hi), need)) { return fail(VYRE_F_OUT_OF_BOUNDS, hits_off); }
    let tb = tbuf.base;
    let tsize = vec2<u32>(tbuf.size_lo, tbuf.size_hi);
    let db = buf(data).base;
    dfa_found = 0u;
    dfa_stored = 0u;
    dfa_pbase = 0u;
    dfa_first = 0u;
    if (ltu64(tsize, vec2<u32>(DFA_SET_HEADER_WORDS * 4u, 0u)) || hload(tb) != DFA_SET_MAGIC) {
        if (!dfa_table(tb, tsize, db, off, len, report, start, hbuf.base, hits_off, capacity)) {
            return false;
        }
    } else {
        // A table set (crates/vyre-isa/src/dfa.rs): its directory, then each member.
        if (hload(tb + 1u) != DFA_SET_VERSION) { return fail(VYRE_F_BAD_PROGRAM, 1u); }
        let n = hload(tb + 2u);
        let dir_end = DFA_SET_HEADER_WORDS + 2u * min(n, DFA_SET_MAX_MEMBERS);
        if (n == 0u || n > DFA_SET_MAX_MEMBERS || ltu64(tsize, vec2<u32>(4u * dir_end, 0u))) {
            return fail(VYRE_F_BAD_PROGRAM, 2u);
        }
        if (hload(tb + 3u) != 0u) { return fail(VYRE_F_BAD_PROGRAM, 3u); }
        for (var k = 0u; k < n; k++) {
            let w = DFA_SET_HEADER_WORDS + 2u * k;
            if (hload(tb + w) < dir_end) { return fail(VYRE_F_BAD_PROGRAM, w); }
        }
        if ((start & DFA_START_LOOKBEHIND) == 0u) { return fail(VYRE_F_MALFORMED_SLOT, 5u); }
        for (var k = 0u; k < n; k++) {
            let w = DFA_SET_HEADER_WORDS + 2u * k;
            let first = hload(tb + w);
            dfa_first = first;
            dfa_pbase = hload(tb + w + 1u);
            // The buffer's bytes from the member on (0 past the end), in 64 bits.
            let first_byte = shl64(vec2<u32>(first, 0u), 2u);
            var msize = vec2<u32>(0u, 0u);
            if (!ltu64(tsize, first_byte)) { msize = sub64(tsize, first_byte); }
            // A member past the end fails its size check before tb + first is read.
            if (!dfa_table(tb + select(first, 0u, ltu64(tsize, first_byte)), msize, db, off, len, report,
                           start, hbuf.base, hits_off, capacity)) {
                return false;
            }
        }
    }
    hstore(hbuf.base + (hits_off >> 2u) + 1u, dfa_at_report);
    res[0] = dfa_found;
    res[1] = dfa_state;
    res[2] = dfa_stored;
    return true;
}

// ---------------------------------------------------------------- EXEC

var<private> regs: array<vec2<u32>, 16>;
var<private> addr_base: u32;
var<private> addr_off: u32;
var<private> addr_size: vec2<u32>;

// Handle register, then an effective offset outside 0..2^32 (computed exactly); the detail of
// the latter is the low 32 bits of the exact offset.
fn address(rh: u32, ro: u32, imm: i32) -> bool {
    let h = regs[rh];
    if (h.y != 0u) { return fail(VYRE_F_BAD_HANDLE, h.x); }
    if (!buf_ok(h.x)) { return fail(VYRE_F_BAD_HANDLE, h.x); }
    let o = regs[ro];
    let low = o.x + bitcast<u32>(imm);
    var ok: bool;
    if (imm >= 0) {
        ok = o.y == 0u && low >= o.x;
    } else {
        let m = 0u - bitcast<u32>(imm);
        ok = (o.y == 0u && o.x >= m) || (o.y == 1u && o.x < m);
    }
    if (!ok) { return fail(VYRE_F_OUT_OF_BOUNDS, low); }
    let b = buf(h.x);
    addr_base = b.base;
    addr_off = low;
    addr_size = vec2<u32>(b.size_lo, b.size_hi);
    return true;
}

fn addr_fits(len: u32) -> bool {
    return !ltu64(addr_size, add64(vec2<u32>(addr_off, 0u), vec2<u32>(len, 0u)));
}

var<private> exec_steps: vec2<u32>;

fn run_program(code: u32) -> bool {
    var pc = 0u;
    var steps = vec2<u32>(0u, 0u);
    let budget = vec2<u32>(io.budget_lo, io.budget_hi);
    loop {
        if (!ltu64(steps, budget)) {
            fail(VYRE_F_STEP_BUDGET, io.budget_lo);
            f_at = pc;
            return false;
        }
        steps = add64(steps, vec2<u32>(1u, 0u));
        let w0 = tables[code + 2u * pc];
        let imm = bitcast<i32>(tables[code + 2u * pc + 1u]);
        let op = w0 & 0xffu;
        let ra = (w0 >> 8u) & 0xffu;
        let rb = (w0 >> 16u) & 0xffu;
        let rc = w0 >> 24u;
        let here = pc;
        pc += 1u;
        switch (op) {
            case VYRE_I_HALT: {
                res[0] = regs[0].x;
                res[1] = regs[0].y;
                res[2] = select(steps.x, 0xffffffffu, steps.y != 0u);
                return true;
            }
            case VYRE_I_MOVI: { regs[ra] = sext(imm); }
            case VYRE_I_MOVHI: { regs[ra].y = bitcast<u32>(imm); }
            case VYRE_I_MOV: { regs[ra] = regs[rb]; }
            case VYRE_I_ADD: { regs[ra] = add64(regs[rb], regs[rc]); }
            case VYRE_I_SUB: { regs[ra] = sub64(regs[rb], regs[rc]); }
            case VYRE_I_MUL: { regs[ra] = mul64(regs[rb], regs[rc]); }
            case VYRE_I_AND: { regs[ra] = regs[rb] & regs[rc]; }
            case VYRE_I_OR: { regs[ra] = regs[rb] | regs[rc]; }
            case VYRE_I_XOR: { regs[ra] = regs[rb] ^ regs[rc]; }
            case VYRE_I_SHL: { regs[ra] = shl64(regs[rb], regs[rc].x & 63u); }
            case VYRE_I_SHR: { regs[ra] = shr64(regs[rb], regs[rc].x & 63u); }
            case VYRE_I_SAR: { regs[ra] = sar64(regs[rb], regs[rc].x & 63u); }
            case VYRE_I_ADDI: { regs[ra] = add64(regs[rb], sext(imm)); }
            case VYRE_I_ANDI: { regs[ra] = regs[rb] & sext(imm); }
            case VYRE_I_SHLI: { regs[ra] = shl64(regs[rb], bitcast<u32>(imm) & 63u); }
            case VYRE_I_SHRI: { regs[ra] = shr64(regs[rb], bitcast<u32>(imm) & 63u); }
            case VYRE_I_EQ: { regs[ra] = b64(all(regs[rb] == regs[rc])); }
            case VYRE_I_NE: { regs[ra] = b64(any(regs[rb] != regs[rc])); }
            case VYRE_I_LTU: { regs[ra] = b64(ltu64(regs[rb], regs[rc])); }
            case VYRE_I_LTS: { regs[ra] = b64(lts64(regs[rb], regs[rc])); }
            case VYRE_I_LD8: {
                if (!address(rb, rc, imm)) { f_at = here; return false; }
                if (!addr_fits(1u)) { fail(VYRE_F_OUT_OF_BOUNDS, addr_off); f_at = here; return false; }
                regs[ra] = vec2<u32>(load_byte(addr_base, addr_off), 0u);
            }
            case VYRE_I_LD32: {
                if (!address(rb, rc, imm)) { f_at = here; return false; }
                if ((addr_off & 3u) != 0u) { fail(VYRE_F_MISALIGNED, addr_off); f_at = here; return false; }
                if (!addr_fits(4u)) { fail(VYRE_F_OUT_OF_BOUNDS, addr_off); f_at = here; return false; }
                regs[ra] = vec2<u32>(hload(addr_base + (addr_off >> 2u)), 0u);
            }
            case VYRE_I_ST8: {
                if (!address(rb, rc, imm)) { f_at = here; return false; }
                if (!addr_fits(1u)) { fail(VYRE_F_OUT_OF_BOUNDS, addr_off); f_at = here; return false; }
                store_byte(addr_base, addr_off, regs[ra].x);
            }
            case VYRE_I_ST32: {
                if (!address(rb, rc, imm)) { f_at = here; return false; }
                if ((addr_off & 3u) != 0u) { fail(VYRE_F_MISALIGNED, addr_off); f_at = here; return false; }
                if (!addr_fits(4u)) { fail(VYRE_F_OUT_OF_BOUNDS, addr_off); f_at = here; return false; }
                hstore(addr_base + (addr_off >> 2u), regs[ra].x);
            }
            case VYRE_I_JMP: { pc = bitcast<u32>(imm); }
            case VYRE_I_BEQZ: { if (all(regs[ra] == vec2<u32>(0u, 0u))) { pc = bitcast<u32>(imm); } }
            case VYRE_I_BNEZ: { if (any(regs[ra] != vec2<u32>(0u, 0u))) { pc = bitcast<u32>(imm); } }
            case VYRE_I_BLTU: { if (ltu64(regs[ra], regs[rb])) { pc = bitcast<u32>(imm); } }
            default: {
                // Unreachable for validated programs; fault rather than guess.
                fail(VYRE_F_UNSUPPORTED, op);
                f_at = here;
                return false;
            }
        }
    }
    return false;
}

// ---------------------------------------------------------------- IO_READ (crates/vyre-isa/src/io.rs)

var<private> wait_io: bool;

// Phase 1: the checks, in the interpreter's order; passing leaves the slot WAIT_IO.
fn op_io_read() -> bool {
    if (a[3] > VYRE_IO_MAX_READ) { return fail(VYRE_F_MALFORMED_SLOT, 3u); }
    if (!check_range(a[4], a[5], a[3])) { return false; }
    if (a[0] == 0u || a[0] > io.io_files) { return fail(VYRE_F_BAD_FILE, a[0]); }
    if (a[6] != 0u && a[6] > io.nprogs) { return fail(VYRE_F_BAD_PROGRAM, a[6]); }
    wait_io = true;
    return true;
}

// Phase 2: `result` is the resume entry's word (bytes read, or VYRE_IO_RESULT_ERROR | errno).
fn io_resume(result: u32) -> bool {
    if ((result & VYRE_IO_RESULT_ERROR) != 0u) {
        return fail(VYRE_F_IO, result & ~VYRE_IO_RESULT_ERROR);
    }
    let id = a[6];
    if (id == 0u) {
        res[0] = result;
        return true;
    }
    if (id > io.nprogs) { return fail(VYRE_F_BAD_PROGRAM, id); }
    for (var i = 0u; i < 16u; i++) {
        regs[i] = vec2<u32>(0u, 0u);
    }
    regs[1] = vec2<u32>(result, 0u);
    regs[2] = vec2<u32>(a[4], 0u);
    regs[3] = vec2<u32>(a[5], 0u);
    regs[4] = vec2<u32>(a[0], 0u);
    regs[5] = vec2<u32>(a[1], 0u);
    regs[6] = vec2<u32>(a[2], 0u);
    return run_program(tables[io.prog_base + 2u * (id - 1u)]);
}

fn op_exec() -> bool {
    let id = a[0];
    if (id == 0u || id > io.nprogs) { return fail(VYRE_F_BAD_PROGRAM, id); }
    let e = io.prog_base + 2u * (id - 1u);
    for (var i = 0u; i < 16u; i++) {
        regs[i] = vec2<u32>(0u, 0u);
    }
    for (var i = 1u; i < 8u; i++) {
        regs[i] = vec2<u32>(a[i], 0u);
    }
    return run_program(tables[e]);
}

// ---------------------------------------------------------------- one slot

fn exec_slot(position: u32, op_word: u32, tenant_word: u32) -> bool {
    let op = op_word & 0xffffu;
    let flags = (op_word >> 16u) & 0xffu;
    let prio = op_word >> 24u;
    let used = arg_count(op);
    if (used == ARG_COUNT_UNKNOWN) { return fail(VYRE_F_UNKNOWN_OPCODE, op); }
    if (flags != 0u || (tenant_word >> 16u) != 0u || prio > MAX_PRIORITY) {
        return fail(VYRE_F_MALFORMED_SLOT, 0u);
    }
    for (var i = used; i < 8u; i++) {
        if (a[i] != 0u) { return fail(VYRE_F_MALFORMED_SLOT, i); }
    }
    switch (op) {
        case VYRE_OP_NOP: { return true; }
        case VYRE_OP_SHUTDOWN: {
            atomicStore(&st[ST_SHUTDOWN], 1u);
            return true;
        }
        case VYRE_OP_FENCE: {
            res[0] = atomicAdd(&st[ST_EPOCH], 1u) + 1u;
            return true;
        }
        case VYRE_OP_DEBUG_LOG: {
            res[0] = select(0u, 1u, debug_log(position, op_word, tenant_word));
            return true;
        }
        case VYRE_OP_PACKED: { return op_packed(); }
        case VYRE_OP_STORE_U32: {
            if (!check_word(a[0], a[1])) { return false; }
            hstore(buf(a[0]).base + (a[1] >> 2u), a[2]);
            return true;
        }
        case VYRE_OP_LOAD_U32: {
            if (!check_word(a[0], a[1])) { return false; }
            res[0] = hload(buf(a[0]).base + (a[1] >> 2u));
            return true;
        }
        case VYRE_OP_ATOMIC_ADD: {
            if (!check_word(a[0], a[1])) { return false; }
            res[0] = hadd(buf(a[0]).base + (a[1] >> 2u), a[2]);
            return true;
        }
        case VYRE_OP_CAS: {
            if (!check_word(a[0], a[1])) { return false; }
            res[0] = hcas(buf(a[0]).base + (a[1] >> 2u), a[2], a[3]);
            res[1] = select(0u, 1u, res[0] == a[2]);
            return true;
        }
        case VYRE_OP_MEMCPY: { return op_memcpy(); }
        case VYRE_OP_FILL: { return op_fill(); }
        case VYRE_OP_HASH64: {
            if (!check_range(a[0], a[1], a[2])) { return false; }
            let h = xxh64(buf(a[0]).base, a[1], a[2], a[3]);
            res[0] = h.x;
            res[1] = h.y;
            return true;
        }
        case VYRE_OP_BYTE_HISTOGRAM: { return op_byte_histogram(); }
        case VYRE_OP_COUNT_BYTE: { return op_count_byte(); }
        case VYRE_OP_DFA_SCAN: { return op_dfa_scan(); }
        case VYRE_OP_EXEC: { return op_exec(); }
        case VYRE_OP_IO_READ: { return op_io_read(); }
        default: { return fail(VYRE_F_UNKNOWN_OPCODE, op); }
    }
}

@compute @workgroup_size(WORKGROUP_SIZE)
fn megakernel(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (gid.x >= io.invocations) {
        return;
    }
    loop {
        let k = atomicAdd(&io.claim, 1u);
        if (k >= io.count) {
            break;
        }
        let s = VYRE_SLOT_WORDS * k;
        for (var i = 0u; i < 8u; i++) {
            a[i] = io.w[s + VYRE_SLOT_ARG0 + i];
        }
        for (var i = 0u; i < 4u; i++) {
            res[i] = 0u;
        }
        wait_io = false;
        var ok: bool;
        if (io.w[s + VYRE_SLOT_STATUS] == VYRE_ST_WAIT_IO) {
            ok = io_resume(io.w[s + VYRE_SLOT_RES0]);
        } else {
            ok = exec_slot(io.w[s + VYRE_SLOT_SEQ], io.w[s + VYRE_SLOT_OP], io.w[s + VYRE_SLOT_TENANT]);
        }
        if (ok && wait_io) {
            io.w[s + VYRE_SLOT_STATUS] = VYRE_ST_WAIT_IO;
        } else if (ok) {
            for (var i = 0u; i < 4u; i++) {
                io.w[s + VYRE_SLOT_RES0 + i] = res[i];
            }
            io.w[s + VYRE_SLOT_STATUS] = VYRE_ST_DONE;
        } else {
            io.w[s + VYRE_SLOT_RES0] = f_detail;
            io.w[s + VYRE_SLOT_RES0 + 1u] = f_at;
            io.w[s + VYRE_SLOT_RES0 + 2u] = 0u;
            io.w[s + VYRE_SLOT_RES0 + 3u] = 0u;
            io.w[s + VYRE_SLOT_STATUS] = VYRE_ST_FAULT | (f_code << 8u);
        }
    }
}
