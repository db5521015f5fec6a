// vyre megakernel for CUDA: one persistent grid that claims ring slots while the host
// publishes them. The protocol constants (VYRE_*) are generated from the Rust definitions and
// prepended by the build (crates/vyre-cuda/src/compile.rs); nothing here repeats a number.
//
// Memory:
//   cb, slots, dbg  mapped pinned host memory (the ring of PROTOCOL.md)
//   ds              device memory: the worker-written control words (claim head, counters),
//                   mirrored into cb by the control warp; the tail mirror the workers poll
//   bufs, progs     device memory: buffer and program tables (entries written by the host
//                   before any slot that names them is published)
//
// Warp 0 of block 0 is the control warp: it polls the host tail (the only warp that reads
// host memory while idle), mirrors it into device memory, mirrors counters back, bumps the
// heartbeat, and watches for shutdown. Every other warp is a worker: lane 0 takes up to 32
// positions with one fetch-and-add on the device head (tickets; CAS claims with
// VYRE_TICKET=0), each lane executes one slot.

typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;
typedef unsigned char u8;

// Device-state word offsets (DS_*) are generated from src/lib.rs's `ds` module.

struct BufEntry { u64 ptr; u64 size; };
struct ProgEntry { u64 ptr; u64 len; };

struct Params {
    u32* cb;
    u32* slots;
    u32* dbg;
    u32* ds;
    const BufEntry* bufs;
    const ProgEntry* progs;
    u64 step_budget;
    u32 max_bufs;
    u32 max_progs;
    u32 capacity;
    u32 dbg_capacity;
    u32 claim_batch;
    u32 ctl_sleep_ns;       // control warp's sleep between host-tail polls while traffic flows
    u32 worker_sleep_shift; // idle workers sleep up to 64 << this many ns
    u32 mirror_cycles;      // clock cycles between mirrors of the device counters to the host
    u32* trace;             // null, or 16 mapped host words of stage timestamps (VYRE_CUDA_TRACE)
    u32* ioq;               // the I/O queue (mapped host memory): request records, resume entries
    u32 workers;            // worker warps that run; the grid's others leave at once
};

struct Fault { u32 code; u32 detail; u32 at; };
// Not a fault: exec_slot's "suspended" answer (IO_READ queued its request; status WAIT_IO).
#define WAITING 0xffu

__device__ __forceinline__ u32 vload(const u32* p) { return *(const volatile u32*)p; }
__device__ __forceinline__ void vstore(u32* p, u32 v) { *(volatile u32*)p = v; }

// Memory ordering: acquire loads and release stores at the scope that needs them (kernel v3's
// full fences around every host-visible hand-over measured slower; cuda-round-trip-sweeps.md).
// VYRE_NOP_FIRST=1 (the default): exec_slot finishes a NOP before its opcode dispatches.
#ifndef VYRE_NOP_FIRST
#define VYRE_NOP_FIRST 1
#endif
// VYRE_LIGHT_OPS=1 (the default): NOP and LOAD_U32 skip the CLAIMED marker (see run_lanes).
#ifndef VYRE_LIGHT_OPS
#define VYRE_LIGHT_OPS 1
#endif
__device__ __forceinline__ u32 ld_acquire_sys(const u32* p) {
    u32 v; asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory"); return v;
}
__device__ __forceinline__ u32 ld_relaxed_sys(const u32* p) {
    u32 v; asm volatile("ld.relaxed.sys.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory"); return v;
}
__device__ __forceinline__ void fence_acq_rel_sys() { asm volatile("fence.acq_rel.sys;" ::: "memory"); }
__device__ __forceinline__ u32 ld_acquire_gpu(const u32* p) {
    u32 v; asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory"); return v;
}
__device__ __forceinline__ void st_release_sys(u32* p, u32 v) {
    asm volatile("st.release.sys.global.u32 [%0], %1;" :: "l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ void st_release_gpu(u32* p, u32 v) {
    asm volatile("st.release.gpu.global.u32 [%0], %1;" :: "l"(p), "r"(v) : "memory");
}
// Slot words are read with relaxed loads at system scope (coherent with the host, never a
// stale cached copy), a warp's slots together (see run_lanes).
__device__ __forceinline__ uint4 ld_relaxed_sys_v4(const uint4* p) {
    uint4 v;
    asm volatile("ld.relaxed.sys.global.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}
// The hot warp's poll of a slot line (see worker_warp): acquire, so that what the host wrote
// before publishing the slot is visible once its PUBLISHED status is seen.
__device__ __forceinline__ uint4 ld_acquire_sys_v4(const uint4* p) {
    uint4 v;
    asm volatile("ld.acquire.sys.global.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p) : "memory");
    return v;
}
__device__ __forceinline__ void fence_acq_rel_gpu() { asm volatile("fence.acq_rel.gpu;" ::: "memory"); }

// Stage timestamps for `vyre bench ring --backend cuda` with VYRE_CUDA_TRACE=1 (low 32 bits
// of %globaltimer, ns): where a round trip's time goes.
__device__ __forceinline__ void trace(const Params& p, u32 i) {
    if (p.trace) {
        unsigned long long t;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
        vstore(&p.trace[i], (u32)t);
    }
}

// The clock for stamps taken before a store they must not delay (see trace_seen).
__device__ __forceinline__ u32 trace_clock(const Params& p) {
    unsigned long long t = 0;
    if (p.trace) asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return (u32)t;
}

// The stamps of a slot completed where the line poll saw it (no run_lanes stages), written
// after its status store so that they do not hold it up: 2, 0, 3, 1 and 4 at `seen` (the
// stage table shows those stages as empty), 5 now.
__device__ __forceinline__ void trace_seen(const Params& p, u32 seen) {
    if (p.trace) {
        vstore(&p.trace[2], seen); vstore(&p.trace[0], seen); vstore(&p.trace[3], seen);
        vstore(&p.trace[1], seen); vstore(&p.trace[4], seen);
        trace(p, 5);
    }
}

// The first word of position `pos`'s slot line in the ring (ring::slot_base on the host).
__device__ __forceinline__ u32* slot_at(const Params& p, u32 pos) {
    return p.slots + (size_t)(pos & (p.capacity - 1)) * VYRE_SLOT_WORDS;
}

// ---------------------------------------------------------------- buffers

struct Buf { u8* base; u64 size; };

__device__ bool lookup(const Params& p, u32 h, Buf* b) {
    if (h == 0 || h > p.max_bufs) return false;
    const BufEntry* e = &p.bufs[h - 1];
    u64 ptr = __ldcg(&e->ptr);
    if (ptr == 0) return false;
    b->base = (u8*)ptr;
    b->size = __ldcg(&e->size);
    return true;
}

#define FAIL(c, d) do { f->code = (c); f->detail = (u32)(d); f->at = 0; return false; } while (0)

// Handle, then range.
__device__ bool check_range(const Params& p, u32 h, u64 off, u64 len, Buf* b, Fault* f) {
    if (!lookup(p, h, b)) FAIL(VYRE_F_BAD_HANDLE, h);
    if (off + len < off || off + len > b->size) FAIL(VYRE_F_OUT_OF_BOUNDS, off);
    return true;
}

// Handle, then alignment, then range.
__device__ bool check_word(const Params& p, u32 h, u64 off, Buf* b, Fault* f) {
    if (!lookup(p, h, b)) FAIL(VYRE_F_BAD_HANDLE, h);
    if (off % 4 != 0) FAIL(VYRE_F_MISALIGNED, off);
    if (off + 4 > b->size) FAIL(VYRE_F_OUT_OF_BOUNDS, off);
    return true;
}

__device__ __forceinline__ u32* word_at(const Buf& b, u64 off) { return (u32*)(b.base + off); }

// ---------------------------------------------------------------- xxHash64

#define P1 0x9E3779B185EBCA87ULL
#define P2 0xC2B2AE3D27D4EB4FULL
#define P3 0x165667B19E3779F9ULL
#define P4 0x85EBCA77C2B2AE63ULL
#define P5 0x27D4EB2F165667C5ULL

__device__ __forceinline__ u64 rotl64(u64 x, int r) { return (x << r) | (x >> (64 - r)); }
__device__ __forceinline__ u64 xround(u64 acc, u64 in) { return rotl64(acc + in * P2, 31) * P1; }
__device__ __forceinline__ u64 xmerge(u64 acc, u64 v) { return (acc ^ xround(0, v)) * P1 + P4; }
__device__ __forceinline__ u64 rd64(const u8* s) {
    u64 v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | s[i];
    return v;
}
__device__ __forceinline__ u64 rd32(const u8* s) {
    return (u64)s[0] | ((u64)s[1] << 8) | ((u64)s[2] << 16) | ((u64)s[3] << 24);
}

__device__ u64 xxh64(const u8* s, u64 len, u64 seed) {
    const u8* end = s + len;
    u64 h;
    if (len >= 32) {
        u64 v1 = seed + P1 + P2, v2 = seed + P2, v3 = seed, v4 = seed - P1;
        const u8* limit = end - 32;
        do {
            v1 = xround(v1, rd64(s)); v2 = xround(v2, rd64(s + 8));
            v3 = xround(v3, rd64(s + 16)); v4 = xround(v4, rd64(s + 24));
            s += 32;
        } while (s <= limit);
        h = rotl64(v1, 1) + rotl64(v2, 7) + rotl64(v3, 12) + rotl64(v4, 18);
        h = xmerge(h, v1); h = xmerge(h, v2); h = xmerge(h, v3); h = xmerge(h, v4);
    } else {
        h = seed + P5;
    }
    h += len;
    while (s + 8 <= end) { h = rotl64(h ^ xround(0, rd64(s)), 27) * P1 + P4; s += 8; }
    if (s + 4 <= end) { h = rotl64(h ^ (rd32(s) * P1), 23) * P2 + P3; s += 4; }
    while (s < end) { h = rotl64(h ^ ((u64)(*s) * P5), 11) * P1; s++; }
    h ^= h >> 33; h *= P2; h ^= h >> 29; h *= P3; h ^= h >> 32;
    return h;
}

// ---------------------------------------------------------------- EXEC

struct Insn { u32 op; u32 a, b, c; int imm; };

__device__ __forceinline__ Insn fetch(const ProgEntry& pe, u64 pc) {
    u64 w = __ldg(((const u64*)pe.ptr) + pc);
    Insn i;
    i.op = (u32)(w & 0xff); i.a = (u32)((w >> 8) & 0xff); i.b = (u32)((w >> 16) & 0xff);
    i.c = (u32)((w >> 24) & 0xff); i.imm = (int)(u32)(w >> 32);
    return i;
}

// Handle register, then an offset outside 0..2^32 (computed exactly).
__device__ bool address(const Params& p, const u64* regs, u32 rh, u32 ro, int imm, Buf* b, u64* off_out, Fault* f) {
    u64 h = regs[rh];
    if (h > 0xffffffffULL) FAIL(VYRE_F_BAD_HANDLE, (u32)h);
    if (!lookup(p, (u32)h, b)) FAIL(VYRE_F_BAD_HANDLE, (u32)h);
    u64 base = regs[ro];
    u64 off;
    if (imm < 0) {
        u64 m = (u64)(-(i64)imm);
        if (base < m) FAIL(VYRE_F_OUT_OF_BOUNDS, (u32)(base - m));
        off = base - m;
    } else {
        off = base + (u64)imm;
        if (off < base) FAIL(VYRE_F_OUT_OF_BOUNDS, (u32)off); // wrapped past 2^64
    }
    if (off > 0xffffffffULL) FAIL(VYRE_F_OUT_OF_BOUNDS, (u32)off);
    *off_out = off;
    return true;
}

// Runs a validated program. Returns false with *f set on a fault.
__device__ bool run_program(const Params& p, const ProgEntry& pe, u64* regs, u64* r0, u64* steps_out, Fault* f) {
    u64 pc = 0, steps = 0;
    const u64 budget = p.step_budget;
    for (;;) {
        if (steps >= budget) { f->code = VYRE_F_STEP_BUDGET; f->detail = (u32)budget; f->at = (u32)pc; return false; }
        steps++;
        Insn in = fetch(pe, pc);
        u32 here = (u32)pc;
        pc++;
        Buf b; u64 off;
        switch (in.op) {
        case VYRE_I_HALT: *r0 = regs[0]; *steps_out = steps; return true;
        case VYRE_I_MOVI: regs[in.a] = (u64)(i64)in.imm; break;
        case VYRE_I_MOVHI: regs[in.a] = (regs[in.a] & 0xffffffffULL) | ((u64)(u32)in.imm << 32); break;
        case VYRE_I_MOV: regs[in.a] = regs[in.b]; break;
        case VYRE_I_ADD: regs[in.a] = regs[in.b] + regs[in.c]; break;
        case VYRE_I_SUB: regs[in.a] = regs[in.b] - regs[in.c]; break;
        case VYRE_I_MUL: regs[in.a] = regs[in.b] * regs[in.c]; break;
        case VYRE_I_AND: regs[in.a] = regs[in.b] & regs[in.c]; break;
        case VYRE_I_OR: regs[in.a] = regs[in.b] | regs[in.c]; break;
        case VYRE_I_XOR: regs[in.a] = regs[in.b] ^ regs[in.c]; break;
        case VYRE_I_SHL: regs[in.a] = regs[in.b] << (regs[in.c] & 63); break;
        case VYRE_I_SHR: regs[in.a] = regs[in.b] >> (regs[in.c] & 63); break;
        case VYRE_I_SAR: regs[in.a] = (u64)((i64)regs[in.b] >> (regs[in.c] & 63)); break;
        case VYRE_I_ADDI: regs[in.a] = regs[in.b] + (u64)(i64)in.imm; break;
        case VYRE_I_ANDI: regs[in.a] = regs[in.b] & (u64)(i64)in.imm; break;
        case VYRE_I_SHLI: regs[in.a] = regs[in.b] << (in.imm & 63); break;
        case VYRE_I_SHRI: regs[in.a] = regs[in.b] >> (in.imm & 63); break;
        case VYRE_I_EQ: regs[in.a] = regs[in.b] == regs[in.c]; break;
        case VYRE_I_NE: regs[in.a] = regs[in.b] != regs[in.c]; break;
        case VYRE_I_LTU: regs[in.a] = regs[in.b] < regs[in.c]; break;
        case VYRE_I_LTS: regs[in.a] = (i64)regs[in.b] < (i64)regs[in.c]; break;
        case VYRE_I_LD8:
            if (!address(p, regs, in.b, in.c, in.imm, &b, &off, f)) { f->at = here; return false; }
            if (off + 1 > b.size) { f->code = VYRE_F_OUT_OF_BOUNDS; f->detail = (u32)off; f->at = here; return false; }
            regs[in.a] = b.base[off];
            break;
        case VYRE_I_LD32:
            if (!address(p, regs, in.b, in.c, in.imm, &b, &off, f)) { f->at = here; return false; }
            if (off % 4 != 0) { f->code = VYRE_F_MISALIGNED; f->detail = (u32)off; f->at = here; return false; }
            if (off + 4 > b.size) { f->code = VYRE_F_OUT_OF_BOUNDS; f->detail = (u32)off; f->at = here; return false; }
            regs[in.a] = *word_at(b, off);
            break;
        case VYRE_I_ST8:
            if (!address(p, regs, in.b, in.c, in.imm, &b, &off, f)) { f->at = here; return false; }
            if (off + 1 > b.size) { f->code = VYRE_F_OUT_OF_BOUNDS; f->detail = (u32)off; f->at = here; return false; }
            b.base[off] = (u8)regs[in.a];
            break;
        case VYRE_I_ST32:
            if (!address(p, regs, in.b, in.c, in.imm, &b, &off, f)) { f->at = here; return false; }
            if (off % 4 != 0) { f->code = VYRE_F_MISALIGNED; f->detail = (u32)off; f->at = here; return false; }
            if (off + 4 > b.size) { f->code = VYRE_F_OUT_OF_BOUNDS; f->detail = (u32)off; f->at = here; return false; }
            *word_at(b, off) = (u32)regs[in.a];
            break;
        case VYRE_I_JMP: pc = (u64)in.imm; break;
        case VYRE_I_BEQZ: if (regs[in.a] == 0) pc = (u64)in.imm; break;
        case VYRE_I_BNEZ: if (regs[in.a] != 0) pc = (u64)in.imm; break;
        case VYRE_I_BLTU: if (regs[in.a] < regs[in.b]) pc = (u64)in.imm; break;
        default:
            // Unreachable for validated programs; fault rather than guess.
            f->code = VYRE_F_UNSUPPORTED; f->detail = in.op; f->at = here; return false;
        }
    }
}

// ---------------------------------------------------------------- DFA_SCAN
// The VDFA table format and the exact scan, checks and fault order are defined in
// crates/vyre-isa/src/dfa.rs; this is the same algorithm. States are row offsets. Table
// words go through the read-only cache (a table buffer is written once, before the slots
// that use it are published); data words are read with ld.global.cg, since pooled data
// buffers are rewritten between scans.

// last_row: the largest row offset whose C columns all lie inside the transitions, capped at
// 2^31 - 1 (a transition entry's row never exceeds that), so that row arithmetic is 32-bit:
// a row plus a column stays below 2^32. The per-byte step is kept to two dependent loads
// (class, then transition) and one compare; 64-bit word indexes are formed only on a fault.
#ifndef VYRE_DFA_LOAD16
#define VYRE_DFA_LOAD16 1
#endif
// first: the table's word index in its buffer (0, or a set member's offset), added to every
// fault detail; pbase: added to every pattern id the table reports (a set member's base).
struct Dfa { const u32* t; const u32* trans; const u8* cm; u32 stride; u32 last_row; u64 mi; u64 ml; u64 mw; u64 first; u32 pbase; };

__device__ __forceinline__ u32 tword(const Dfa& d, u64 i) { return __ldg(d.t + i); }

__device__ __forceinline__ bool dfa_emit(const Dfa& d, u32 next, u32 end, u32 report_from,
                                         u32* hits, u32 cap, u32& found, u32& stored, Fault* f) {
    u32 row = next & ~VYRE_DFA_MATCH_BIT;
    u64 at = d.mi + row / d.stride;
    u64 entry = tword(d, at);
    if (entry >= d.mw) FAIL(VYRE_F_BAD_PROGRAM, d.first + at);
    u64 list = d.ml + entry;
    u64 n = tword(d, list);
    if (entry + 1 + n > d.mw) FAIL(VYRE_F_BAD_PROGRAM, d.first + list);
    if (end < report_from) return true;
    for (u64 k = 0; k < n; k++) {
        u32 pat = tword(d, list + 1 + k) + d.pbase;
        if (stored < cap) {
            hits[2 * (u64)stored] = end;
            hits[2 * (u64)stored + 1] = pat;
            stored += 1;
        }
        found += 1;
    }
    return true;
}

__device__ __forceinline__ bool dfa_step(const Dfa& d, u32& state, u32 byte, u32 end,
                                         u32 report_from, u32* hits, u32 cap, u32& found,
                                         u32& stored, Fault* f) {
    u32 col = state + __ldg(d.cm + byte);
    u32 next = __ldg(d.trans + col);
    if ((next & ~VYRE_DFA_MATCH_BIT) > d.last_row) FAIL(VYRE_F_BAD_PROGRAM, d.first + VYRE_DFA_TRANS_WORD + (u64)col);
    if ((next & VYRE_DFA_MATCH_BIT) &&
        !dfa_emit(d, next, end, report_from, hits, cap, found, stored, f)) return false;
    state = next & ~VYRE_DFA_MATCH_BIT;
    return true;
}

// Bytes [i, end) of a scan whose bytes start at s: bytes up to an aligned boundary, then whole
// words (16 bytes per load with VYRE_DFA_LOAD16, the default: a quarter of the L2 requests
// for the data, whose lanes each read a different line) through L2, then the tail.
__device__ __forceinline__ bool dfa_range(const Dfa& d, u32& state, const u8* s, u32 i, u32 end,
                                          u32 report_from, u32* hits, u32 cap, u32& found,
                                          u32& stored, Fault* f) {
#if VYRE_DFA_LOAD16
    while (i < end && (((size_t)(s + i)) & 15) != 0) {
        if (!dfa_step(d, state, __ldcg(s + i), i, report_from, hits, cap, found, stored, f)) return false;
        i++;
    }
    while (i + 16 <= end) {
        uint4 q = __ldcg((const uint4*)(s + i));
        u32 ws[4] = {q.x, q.y, q.z, q.w};
        #pragma unroll
        for (u32 j = 0; j < 4; j++) {
            #pragma unroll
            for (u32 k = 0; k < 4; k++) {
                if (!dfa_step(d, state, (ws[j] >> (8 * k)) & 0xff, i + 4 * j + k, report_from, hits, cap, found, stored, f)) return false;
            }
        }
        i += 16;
    }
#else
    while (i < end && (((size_t)(s + i)) & 3) != 0) {
        if (!dfa_step(d, state, __ldcg(s + i), i, report_from, hits, cap, found, stored, f)) return false;
        i++;
    }
#endif
    while (i + 4 <= end) {
        u32 w = __ldcg((const unsigned int*)(s + i));
        for (u32 k = 0; k < 4; k++) {
            if (!dfa_step(d, state, (w >> (8 * k)) & 0xff, i + k, report_from, hits, cap, found, stored, f)) return false;
        }
        i += 4;
    }
    while (i < end) {
        if (!dfa_step(d, state, __ldcg(s + i), i, report_from, hits, cap, found, stored, f)) return false;
        i++;
    }
    return true;
}

// One table at word `first` of the table buffer (0, or a set member's offset; tsize = the
// buffer's bytes from there on): its checks, then the bytes, hits after the `stored` ones
// already in the region. Returns the state after the last byte in *out and the state where
// reporting starts in *at_report (the caller writes it to the hit header).
__device__ bool dfa_table(const Buf& tb, u64 first, u64 tsize, u32 pbase, const u8* s, u32 len,
                          u32 report, u32 start, u32* hits, u32 cap, u32& found, u32& stored,
                          u32* out, u32* at_report_out, Fault* f) {
    Dfa d;
    d.t = (const u32*)tb.base + first;
    d.first = first;
    d.pbase = pbase;
    if (tsize < (u64)VYRE_DFA_TRANS_WORD * 4) FAIL(VYRE_F_BAD_PROGRAM, first);
    if (tword(d, 0) != VYRE_DFA_MAGIC) FAIL(VYRE_F_BAD_PROGRAM, first);
    if (tword(d, 1) != VYRE_DFA_VERSION) FAIL(VYRE_F_BAD_PROGRAM, first + 1);
    u32 states = tword(d, 2);
    d.stride = tword(d, 3);
    u32 mwords = tword(d, 6);
    if (states == 0) FAIL(VYRE_F_BAD_PROGRAM, first + 2);
    if (d.stride < 2 || d.stride > 257) FAIL(VYRE_F_BAD_PROGRAM, first + 3);
    if (tword(d, 7) != 0) FAIL(VYRE_F_BAD_PROGRAM, first + 7);
    u64 rows_end = (u64)states * d.stride;
    u64 last_row = rows_end - d.stride;
    d.last_row = last_row < 0x7fffffffull ? (u32)last_row : 0x7fffffffu;
    d.trans = d.t + VYRE_DFA_TRANS_WORD;
    d.cm = (const u8*)(d.t + VYRE_DFA_CLASS_MAP_WORD);
    d.mi = VYRE_DFA_TRANS_WORD + rows_end;
    d.ml = d.mi + states;
    d.mw = mwords;
    if ((d.ml + d.mw) * 4 > tsize) FAIL(VYRE_F_BAD_PROGRAM, first + 6);
    for (u32 w = 0; w < 64; w++) {
        u32 v = tword(d, VYRE_DFA_CLASS_MAP_WORD + w);
        for (u32 k = 0; k < 4; k++)
            if (((v >> (8 * k)) & 0xff) >= d.stride - 1) FAIL(VYRE_F_BAD_PROGRAM, first + VYRE_DFA_CLASS_MAP_WORD + w);
    }
    u32 state;
    if (start & VYRE_DFA_START_LOOKBEHIND) {
        u32 code = start & ~VYRE_DFA_START_LOOKBEHIND;
        if (code > VYRE_DFA_START_TEXT) FAIL(VYRE_F_MALFORMED_SLOT, 5);
        u64 at = VYRE_DFA_START_WORD + (u64)code;
        state = tword(d, at);
        if (state > d.last_row) FAIL(VYRE_F_BAD_PROGRAM, first + at);
    } else {
        if (start > d.last_row) FAIL(VYRE_F_MALFORMED_SLOT, 5);
        state = start;
    }
    u32 report_from = report & ~VYRE_DFA_REPORT_EOI;
    // The look-behind bytes, then the window's own: the state between them goes to word 1
    // of the hit header when the scan completes.
    u32 split = report_from < len ? report_from : len;
    if (!dfa_range(d, state, s, 0, split, report_from, hits, cap, found, stored, f)) return false;
    u32 at_report = state;
    if (!dfa_range(d, state, s, split, len, report_from, hits, cap, found, stored, f)) return false;
    *out = state;
    if (report & VYRE_DFA_REPORT_EOI) {
        u64 at = VYRE_DFA_TRANS_WORD + (u64)state + (d.stride - 1);
        u32 next = tword(d, at);
        if ((u64)(next & ~VYRE_DFA_MATCH_BIT) > d.last_row) FAIL(VYRE_F_BAD_PROGRAM, first + at);
        if ((next & VYRE_DFA_MATCH_BIT) &&
            !dfa_emit(d, next, len, report_from, hits, cap, found, stored, f)) return false;
    }
    *at_report_out = at_report;
    return true;
}

__device__ bool dfa_scan(const Params& p, const u32* a, u32* r, Fault* f) {
    Buf tb, db, hb;
    if (!lookup(p, a[0], &tb)) FAIL(VYRE_F_BAD_HANDLE, a[0]);
    if (!lookup(p, a[1], &db)) FAIL(VYRE_F_BAD_HANDLE, a[1]);
    if (!lookup(p, a[6], &hb)) FAIL(VYRE_F_BAD_HANDLE, a[6]);
    u32 off = a[2], len = a[3], report = a[4], start = a[5];
    u64 hoff = a[7];
    if (hoff % 4 != 0) FAIL(VYRE_F_MISALIGNED, hoff);
    if ((u64)off + len > db.size) FAIL(VYRE_F_OUT_OF_BOUNDS, off);
    if (hoff + VYRE_DFA_HIT_HEADER_BYTES > hb.size) FAIL(VYRE_F_OUT_OF_BOUNDS, hoff);
    u32 cap = *(volatile u32*)word_at(hb, hoff);
    if (hoff + VYRE_DFA_HIT_HEADER_BYTES + 8 * (u64)cap > hb.size) FAIL(VYRE_F_OUT_OF_BOUNDS, hoff);
    u32* hits = word_at(hb, hoff + VYRE_DFA_HIT_HEADER_BYTES);
    const u8* s = db.base + off;
    const u32* t = (const u32*)tb.base;
    u32 found = 0, stored = 0, state = 0, at_report = 0;
    if (tb.size < (u64)VYRE_DFA_SET_HEADER_WORDS * 4 || __ldg(t) != VYRE_DFA_SET_MAGIC) {
        if (!dfa_table(tb, 0, tb.size, 0, s, len, report, start, hits, cap, found, stored,
                       &state, &at_report, f)) return false;
    } else {
        // A table set (crates/vyre-isa/src/dfa.rs): its directory, then each member.
        if (__ldg(t + 1) != VYRE_DFA_SET_VERSION) FAIL(VYRE_F_BAD_PROGRAM, 1);
        u64 n = __ldg(t + 2);
        u64 dir_end = VYRE_DFA_SET_HEADER_WORDS + 2 * n;
        if (n == 0 || n > VYRE_DFA_SET_MAX_MEMBERS || 4 * dir_end > tb.size) FAIL(VYRE_F_BAD_PROGRAM, 2);
        if (__ldg(t + 3) != 0) FAIL(VYRE_F_BAD_PROGRAM, 3);
        for (u64 k = 0; k < n; k++) {
            u64 w = VYRE_DFA_SET_HEADER_WORDS + 2 * k;
            if ((u64)__ldg(t + w) < dir_end) FAIL(VYRE_F_BAD_PROGRAM, w);
        }
        if (!(start & VYRE_DFA_START_LOOKBEHIND)) FAIL(VYRE_F_MALFORMED_SLOT, 5);
        for (u64 k = 0; k < n; k++) {
            u64 w = VYRE_DFA_SET_HEADER_WORDS + 2 * k;
            u64 first = __ldg(t + w);
            u32 pbase = __ldg(t + w + 1);
            u64 tsize = tb.size > 4 * first ? tb.size - 4 * first : 0;
            if (!dfa_table(tb, first, tsize, pbase, s, len, report, start, hits, cap, found,
                           stored, &state, &at_report, f)) return false;
        }
    }
    *word_at(hb, hoff + 4) = at_report;
    r[0] = found; r[1] = state; r[2] = stored;
    return true;
}

// ---------------------------------------------------------------- slot ops

__device__ u32 arg_count(u32 op) {
    switch (op) {
    case VYRE_OP_NOP: case VYRE_OP_SHUTDOWN: case VYRE_OP_FENCE: return 0;
    case VYRE_OP_LOAD_U32: return 2;
    case VYRE_OP_STORE_U32: case VYRE_OP_ATOMIC_ADD: return 3;
    case VYRE_OP_DEBUG_LOG: case VYRE_OP_CAS: case VYRE_OP_FILL: case VYRE_OP_HASH64:
    case VYRE_OP_COUNT_BYTE: return 4;
    case VYRE_OP_MEMCPY: case VYRE_OP_BYTE_HISTOGRAM: return 5;
    case VYRE_OP_IO_READ: return 7;
    case VYRE_OP_PACKED: case VYRE_OP_EXEC: case VYRE_OP_DFA_SCAN: return 8;
    default: return 0xffffffffu;
    }
}

__device__ bool debug_log(const Params& p, u32 position, u32 op_word, u32 tenant_word, const u32* w) {
    u32* ds = p.ds;
    u32 cap = p.dbg_capacity;
    u32 cur = atomicAdd(&ds[DS_DEBUG_WRITE], 0);
    for (;;) {
        u32 r = vload(&p.cb[VYRE_CB_DEBUG_READ]);
        // Signed: a write cursor read before the host drained past it is not "full".
        if ((int)(cur - r) >= (int)cap) { atomicAdd(&ds[DS_DEBUG_DROPPED], 1); return false; }
        u32 old = atomicCAS(&ds[DS_DEBUG_WRITE], cur, cur + 1);
        if (old == cur) break;
        cur = old;
    }
    u32* rec = p.dbg + (size_t)(cur & (cap - 1)) * VYRE_DBG_RECORD_WORDS;
    vstore(&rec[1], position); vstore(&rec[2], tenant_word); vstore(&rec[3], op_word);
    #pragma unroll
    for (int i = 0; i < 4; i++) vstore(&rec[4 + i], w[i]);
    __threadfence_system();
    vstore(&rec[0], cur + 1);
    return true;
}

// Executes one slot (words 2..12 in w). Returns false with *f set on a fault.
__device__ bool exec_slot(const Params& p, u32 position, const u32* w, u32* r, Fault* f) {
    u32 op_word = w[0], tenant_word = w[1];
    const u32* a = w + 2;
    u32 op = op_word & 0xffff, flags = (op_word >> 16) & 0xff, prio = op_word >> 24;
    r[0] = r[1] = r[2] = r[3] = 0;
    // Unused argument words must be zero: all eight tested at once into a mask (bit i: a[i]
    // is not zero), not one test and branch after another.
    u32 given = 0;
    #pragma unroll
    for (u32 i = 0; i < 8; i++) given |= (a[i] != 0 ? 1u : 0u) << i;
    bool malformed = flags != 0 || (tenant_word >> 16) != 0 || prio > 7;
#if VYRE_NOP_FIRST
    // A NOP (no arguments, no effects) is checked and done before the two opcode dispatches
    // below, each a tree of compares and branches: the same faults, in the same order.
    if (op == VYRE_OP_NOP) {
        if (malformed) FAIL(VYRE_F_MALFORMED_SLOT, 0);
        if (given) FAIL(VYRE_F_MALFORMED_SLOT, __ffs(given) - 1);
        return true;
    }
#endif
    u32 used = arg_count(op);
    if (used == 0xffffffffu) FAIL(VYRE_F_UNKNOWN_OPCODE, op);
    if (malformed) FAIL(VYRE_F_MALFORMED_SLOT, 0);
    u32 unused = given & ~((1u << used) - 1u);
    if (unused) FAIL(VYRE_F_MALFORMED_SLOT, __ffs(unused) - 1);
    Buf b, d;
    switch (op) {
    case VYRE_OP_NOP: return true;
    case VYRE_OP_SHUTDOWN:
        atomicExch(&p.ds[DS_SHUTDOWN], 1u);
        vstore(&p.cb[VYRE_CB_SHUTDOWN], 1u);
        __threadfence_system();
        return true;
    case VYRE_OP_FENCE:
        __threadfence_system();
        r[0] = atomicAdd(&p.ds[DS_EPOCH], 1u) + 1u;
        return true;
    case VYRE_OP_DEBUG_LOG:
        r[0] = debug_log(p, position, op_word, tenant_word, a) ? 1u : 0u;
        return true;
    case VYRE_OP_PACKED: {
        // Every index into a[] and r[] is a constant once the loops are unrolled, so the
        // slot's words stay in registers (one dynamic index anywhere puts the whole array in
        // local memory, for every opcode).
        u32 count = a[0] & 0xff;
        if (count < 1 || count > 3) FAIL(VYRE_F_MALFORMED_SLOT, 0);
        if (count < 3 && (a[0] >> (8 * (count + 1))) != 0) FAIL(VYRE_F_MALFORMED_SLOT, 0);
        u32 extra = given & ~((1u << (2 + 2 * count)) - 1u);
        if (extra) FAIL(VYRE_F_MALFORMED_SLOT, __ffs(extra) - 1);
        #pragma unroll
        for (u32 i = 0; i < 3; i++) {
            if (i >= count) break;
            u32 sub = (a[0] >> (8 * (i + 1))) & 0xff;
            u64 off = a[2 + 2 * i]; u32 val = a[3 + 2 * i];
            if (sub == VYRE_OP_NOP) continue;
            if (sub != VYRE_OP_LOAD_U32 && sub != VYRE_OP_STORE_U32 && sub != VYRE_OP_ATOMIC_ADD) {
                f->code = VYRE_F_MALFORMED_SLOT; f->detail = 0; f->at = i; return false;
            }
            if (!check_word(p, a[1], off, &b, f)) { f->at = i; return false; }
            if (sub == VYRE_OP_LOAD_U32) r[i] = *(volatile u32*)word_at(b, off);
            else if (sub == VYRE_OP_STORE_U32) *(volatile u32*)word_at(b, off) = val;
            else r[i] = atomicAdd(word_at(b, off), val);
        }
        return true;
    }
    case VYRE_OP_STORE_U32:
        if (!check_word(p, a[0], a[1], &b, f)) return false;
        *(volatile u32*)word_at(b, a[1]) = a[2];
        return true;
    case VYRE_OP_LOAD_U32:
        if (!check_word(p, a[0], a[1], &b, f)) return false;
        r[0] = *(volatile u32*)word_at(b, a[1]);
        return true;
    case VYRE_OP_ATOMIC_ADD:
        if (!check_word(p, a[0], a[1], &b, f)) return false;
        r[0] = atomicAdd(word_at(b, a[1]), a[2]);
        return true;
    case VYRE_OP_CAS:
        if (!check_word(p, a[0], a[1], &b, f)) return false;
        r[0] = atomicCAS(word_at(b, a[1]), a[2], a[3]);
        r[1] = r[0] == a[2] ? 1u : 0u;
        return true;
    case VYRE_OP_MEMCPY: {
        if (!check_range(p, a[0], a[1], a[4], &d, f)) return false;
        if (!check_range(p, a[2], a[3], a[4], &b, f)) return false;
        volatile u8* dst = d.base + a[1];
        const volatile u8* src = b.base + a[3];
        u64 len = a[4];
        bool backward = a[0] == a[2] && a[1] > a[3] && (u64)a[1] < (u64)a[3] + len;
        if (backward) { for (u64 i = len; i > 0; i--) dst[i - 1] = src[i - 1]; }
        else { for (u64 i = 0; i < len; i++) dst[i] = src[i]; }
        return true;
    }
    case VYRE_OP_FILL: {
        if (a[3] > 0xff) FAIL(VYRE_F_MALFORMED_SLOT, 3);
        if (!check_range(p, a[0], a[1], a[2], &b, f)) return false;
        volatile u8* dst = b.base + a[1];
        for (u64 i = 0; i < a[2]; i++) dst[i] = (u8)a[3];
        return true;
    }
    case VYRE_OP_HASH64: {
        if (!check_range(p, a[0], a[1], a[2], &b, f)) return false;
        u64 h = xxh64(b.base + a[1], a[2], a[3]);
        r[0] = (u32)h; r[1] = (u32)(h >> 32);
        return true;
    }
    case VYRE_OP_BYTE_HISTOGRAM: {
        if (!check_range(p, a[0], a[1], a[2], &b, f)) return false;
        if (!lookup(p, a[3], &d)) FAIL(VYRE_F_BAD_HANDLE, a[3]);
        if (a[4] % 4 != 0) FAIL(VYRE_F_MISALIGNED, a[4]);
        if ((u64)a[4] + 1024 > d.size) FAIL(VYRE_F_OUT_OF_BOUNDS, a[4]);
        const u8* s = b.base + a[1];
        u32* counters = word_at(d, a[4]);
        // Count in registers by 32-bit packs would need 256 registers; count with shared-
        // nothing local memory instead: one pass, then one atomic per non-zero byte value.
        u32 counts[256];
        for (int i = 0; i < 256; i++) counts[i] = 0;
        for (u64 i = 0; i < a[2]; i++) counts[s[i]]++;
        for (int i = 0; i < 256; i++) if (counts[i]) atomicAdd(&counters[i], counts[i]);
        r[0] = a[2];
        return true;
    }
    case VYRE_OP_COUNT_BYTE: {
        if (a[3] > 0xff) FAIL(VYRE_F_MALFORMED_SLOT, 3);
        if (!check_range(p, a[0], a[1], a[2], &b, f)) return false;
        const u8* s = b.base + a[1];
        u32 n = 0;
        for (u64 i = 0; i < a[2]; i++) n += s[i] == (u8)a[3];
        r[0] = n;
        return true;
    }
    case VYRE_OP_DFA_SCAN: return dfa_scan(p, a, r, f);
    case VYRE_OP_IO_READ: {
        // Phase 1 (PROTOCOL.md, "I/O queue"): check, then hand the read to the host.
        if (a[3] > VYRE_IO_MAX_READ) FAIL(VYRE_F_MALFORMED_SLOT, 3);
        if (!check_range(p, a[4], a[5], a[3], &b, f)) return false;
        u32 files = vload(&p.cb[VYRE_CB_IO_FILES]);
        if (a[0] == 0 || a[0] > files) FAIL(VYRE_F_BAD_FILE, a[0]);
        if (a[6] != 0) {
            if (a[6] > p.max_progs || __ldcg(&p.progs[a[6] - 1].ptr) == 0) FAIL(VYRE_F_BAD_PROGRAM, a[6]);
        }
        u32* s = slot_at(p, position);
        vstore(&s[VYRE_SLOT_STATUS], VYRE_ST_WAIT_IO);
        u32 i = atomicAdd(&p.ds[DS_IO_REQ_WRITE], 1u);
        u32* rec = p.ioq + (size_t)(i & (p.capacity - 1)) * VYRE_IOREQ_WORDS;
        vstore(&rec[VYRE_IOREQ_POSITION], position);
        vstore(&rec[VYRE_IOREQ_FILE], a[0]);
        vstore(&rec[VYRE_IOREQ_OFF_LO], a[1]);
        vstore(&rec[VYRE_IOREQ_OFF_HI], a[2]);
        vstore(&rec[VYRE_IOREQ_LEN], a[3]);
        vstore(&rec[VYRE_IOREQ_BUF], a[4]);
        vstore(&rec[VYRE_IOREQ_BUF_OFF], a[5]);
        __threadfence_system();
        st_release_sys(&rec[VYRE_IOREQ_SEQ], i + 1);
        __threadfence_system(); // push the record out: the host is polling for it
        f->code = WAITING;
        return false;
    }
    case VYRE_OP_EXEC: {
        u32 id = a[0];
        if (id == 0 || id > p.max_progs) FAIL(VYRE_F_BAD_PROGRAM, id);
        ProgEntry pe;
        pe.ptr = __ldcg(&p.progs[id - 1].ptr);
        pe.len = __ldcg(&p.progs[id - 1].len);
        if (pe.ptr == 0) FAIL(VYRE_F_BAD_PROGRAM, id);
        u64 regs[16];
        for (int i = 0; i < 16; i++) regs[i] = 0;
        #pragma unroll
        for (int i = 1; i < 8; i++) regs[i] = a[i];
        u64 r0, steps;
        if (!run_program(p, pe, regs, &r0, &steps, f)) return false;
        r[0] = (u32)r0; r[1] = (u32)(r0 >> 32);
        r[2] = steps > 0xffffffffULL ? 0xffffffffu : (u32)steps;
        return true;
    }
    }
    FAIL(VYRE_F_UNKNOWN_OPCODE, op);
}

// ---------------------------------------------------------------- the persistent kernel

__device__ void mirror(const Params& p, u32 lane) {
    // Worker-written control words: device -> host control block (posted writes).
    u32* ds = p.ds;
    u32* cb = p.cb;
    if (lane == 0) {
        // Ticket claims run the device head ahead of the tail; the host sees min(head, tail).
        u32 head = vload(&ds[DS_HEAD]), tail = vload(&ds[DS_TAIL]);
        vstore(&cb[VYRE_CB_HEAD], (int)(head - tail) > 0 ? tail : head);
        vstore(&cb[VYRE_CB_DONE_COUNT], vload(&ds[DS_DONE]));
        vstore(&cb[VYRE_CB_FAULT_COUNT], vload(&ds[DS_FAULTS]));
        vstore(&cb[VYRE_CB_EPOCH], vload(&ds[DS_EPOCH]));
        vstore(&cb[VYRE_CB_WORKERS_RUNNING], vload(&ds[DS_WORKERS]));
        vstore(&cb[VYRE_CB_DEBUG_WRITE], vload(&ds[DS_DEBUG_WRITE]));
        vstore(&cb[VYRE_CB_DEBUG_DROPPED], vload(&ds[DS_DEBUG_DROPPED]));
        vstore(&cb[VYRE_CB_HEARTBEAT], vload(&ds[DS_HEARTBEAT]));
        vstore(&cb[VYRE_CB_IO_REQ_WRITE], vload(&ds[DS_IO_REQ_WRITE]));
        vstore(&cb[VYRE_CB_RESUME_HEAD], vload(&ds[DS_RESUME_HEAD]));
    }
    for (u32 i = lane; i <= VYRE_COUNTED_OPCODES; i += 32) {
        vstore(&cb[VYRE_CB_OP_COUNTERS + i], vload(&ds[DS_OP_COUNTERS + i]));
    }
}

__device__ void control_warp(const Params& p, u32 lane) {
    u32* ds = p.ds;
    u32 last_tail = vload(&p.cb[VYRE_CB_TAIL]);
    u32 idle = 0;
    unsigned long long last_mirror = 0;
    u32 trace_t = 0, trace_c = 0;
    u32 last_rtail = vload(&p.cb[VYRE_CB_RESUME_TAIL]);
    for (;;) {
        // Lanes poll their words at once (the host's are PCIe round trips each).
        u32 v = 0;
        if (lane == 0) v = ld_acquire_sys(&p.cb[VYRE_CB_TAIL]);
        else if (lane == 1) v = vload(&p.cb[VYRE_CB_SHUTDOWN]);
        else if (lane == 2) v = vload(&ds[DS_SHUTDOWN]);
        else if (lane == 3) v = vload(&p.cb[VYRE_CB_FAULT_INJECT]);
        else if (lane == 4) v = vload(&p.cb[VYRE_CB_ABORT]);
        else if (lane == 5) v = ld_acquire_sys(&p.cb[VYRE_CB_RESUME_TAIL]);
        u32 tail = __shfl_sync(0xffffffffu, v, 0);
        u32 rtail = __shfl_sync(0xffffffffu, v, 5);
        if (rtail != last_rtail) {
            // Resume entries were written before the host's release store of RESUME_TAIL.
            if (lane == 5) st_release_gpu(&ds[DS_RESUME_TAIL], rtail);
            last_rtail = rtail;
            idle = 0;
        }
        u32 stop = __shfl_sync(0xffffffffu, v, 1) | __shfl_sync(0xffffffffu, v, 2);
        u32 hang = __shfl_sync(0xffffffffu, v, 3);
        u32 abort_ = __shfl_sync(0xffffffffu, v, 4);
        if (hang && !abort_) {
            // Simulated hang (FAULT_INJECT): tell the workers, then beat and mirror no more
            // until the host aborts.
            if (lane == 0) { atomicExch(&ds[DS_HANG], 1u); __threadfence(); }
            __nanosleep(10000);
            continue;
        }
        if (abort_) {
            if (lane == 0) { atomicExch(&ds[DS_ABORT], 1u); __threadfence(); }
            stop = 1;
        }
        if (tail != last_tail) {
            // Slot words were written by the host before it stored the tail; make sure no
            // worker reads them before it reads the new tail mirror.
            // The acquire load of the host tail and this release store chain the host's
            // slot writes to every worker that acquires the mirror.
            if (lane == 0) st_release_gpu(&ds[DS_TAIL], tail);
            last_tail = tail;
            idle = 0;
        }
        unsigned long long now = clock64();
        if (now - last_mirror > p.mirror_cycles || stop) {
            if (lane == 0) atomicAdd(&ds[DS_HEARTBEAT], 1u);
            if (lane == 0 && p.trace) {
                // Two (timer, SM clock) samples one mirror apart: the SM clock in MHz.
                unsigned long long t;
                asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
                u32 c = (u32)clock64();
                vstore(&p.trace[8], trace_t);
                vstore(&p.trace[9], trace_c);
                vstore(&p.trace[10], (u32)t);
                vstore(&p.trace[11], c);
                trace_t = (u32)t;
                trace_c = c;
            }
            __threadfence();
            mirror(p, lane);
            last_mirror = now;
        }
        if (stop) {
            if (lane == 0) atomicExch(&ds[DS_SHUTDOWN], 1u);
            // Wait for the workers to leave, then publish final counters.
            u32 running = 1;
            while (running) {
                if (lane == 0) running = vload(&ds[DS_WORKERS]);
                running = __shfl_sync(0xffffffffu, running, 0);
                __nanosleep(1000);
            }
            __threadfence();
            mirror(p, lane);
            __threadfence_system();
            return;
        }
        // Back off: tight while traffic flows, up to 1 us after a long idle stretch. Every
        // poll of the host tail is a PCIe round trip.
        idle = idle < 100000 ? idle + 1 : idle;
        if (idle > 8 && p.ctl_sleep_ns) __nanosleep(idle < 10000 ? p.ctl_sleep_ns : 1000);
    }
}

// Claiming. VYRE_TICKET=1 (the default): a warp takes the next `claim_batch` positions with
// one fetch-and-add on the device head, published or not, and runs each once the host's
// tail has passed it; every add succeeds, so hundreds of warps never serialise on one word
// the way compare-and-swap claims do (measured on an H100: CAS claims capped the device at
// 32 M NOP slots/s). The head runs ahead of the tail by the positions warps hold; the
// control warp mirrors min(head, tail) to the host. VYRE_TICKET=0 keeps the CAS claim.
#ifndef VYRE_TICKET
#define VYRE_TICKET 1
#endif
// VYRE_HOT_POLL=1 (the default): the warp holding the next position polls the host tail.
#ifndef VYRE_HOT_POLL
#define VYRE_HOT_POLL 1
#endif
// VYRE_LINE_POLL (PROTOCOL.md, "Hot slot polling"): how the hot warp also polls that
// position's slot line. 0: it does not (it reads the host's tail); 1 (the default): the line
// alone (acquire), and the tail (acquire) in the round after the line showed a slot followed
// by another published one; 2: the
// line (acquire, issued last) and the tail (relaxed) in every round; 3: both relaxed, and a
// system-scope fence before running what they show. Measured on an H100 (round trip p50):
// 1: 4.0 us, 2: 5.5, 3: 6.3, 0: 6.8 (an acquire load holds back the loads after it, and the
// system-scope fence costs about 2 us).
#ifndef VYRE_LINE_POLL
#define VYRE_LINE_POLL 1
#endif
#define VYRE_HOT_LINE (VYRE_TICKET && VYRE_HOT_POLL && VYRE_LINE_POLL)
// VYRE_LINE_FENCE=1: a device-scope fence before running a slot that only the hot warp's
// line poll showed (kernel v5). 0 (the default): a warp barrier instead (see worker_warp).
#ifndef VYRE_LINE_FENCE
#define VYRE_LINE_FENCE 0
#endif
// VYRE_FAST_NOP=1 (the default with light ops): a NOP that the hot warp's line poll brought is
// checked and completed by the lanes that loaded its line, before the rest of the round (see
// worker_warp). 0: it runs through run_lanes like any other slot.
#ifndef VYRE_FAST_NOP
#define VYRE_FAST_NOP VYRE_LIGHT_OPS
#endif
#if DS_SHUTDOWN >= DS_POLLED || DS_ABORT >= DS_POLLED || DS_TAIL >= DS_POLLED || DS_HANG >= DS_POLLED \
    || DS_RESUME_HEAD >= DS_POLLED || DS_RESUME_TAIL >= DS_POLLED || DS_POLLED > 8
#error "the polled device-state words must be the first DS_POLLED (at most 8, lanes 0..7)"
#endif
#if DS_HEAD < 32 || DS_DONE < 32 || DS_FAULTS < 32 || DS_HEARTBEAT < 32 || DS_IO_REQ_WRITE < 32 || DS_OP_COUNTERS < 32
#error "the words warps add to must stay off the polled 128-byte line (words 0..31)"
#endif

// Phase 2 of IO_READ: the host finished the read of the waiting slot at `position` with
// `result` (bytes, or IO_RESULT_ERROR | errno); complete it, running the continuation.
__device__ bool resume_io(const Params& p, u32 position, u32 result, const u32* w, u32* r, Fault* f) {
    const u32* a = w + 2;
    r[0] = r[1] = r[2] = r[3] = 0;
    if (result & VYRE_IO_RESULT_ERROR) FAIL(VYRE_F_IO, result & ~VYRE_IO_RESULT_ERROR);
    if (a[6] == 0) { r[0] = result; return true; }
    ProgEntry pe;
    pe.ptr = __ldcg(&p.progs[a[6] - 1].ptr);
    pe.len = __ldcg(&p.progs[a[6] - 1].len);
    if (pe.ptr == 0) FAIL(VYRE_F_BAD_PROGRAM, a[6]);
    u64 regs[16];
    for (int i = 0; i < 16; i++) regs[i] = 0;
    regs[1] = result; regs[2] = a[4]; regs[3] = a[5]; regs[4] = a[0]; regs[5] = a[1]; regs[6] = a[2];
    u64 r0, steps;
    if (!run_program(p, pe, regs, &r0, &steps, f)) return false;
    r[0] = (u32)r0; r[1] = (u32)(r0 >> 32);
    r[2] = steps > 0xffffffffULL ? 0xffffffffu : (u32)steps;
    return true;
}

// Runs position `start + lane` on every lane with `run` set: reads the slot, executes it,
// writes results and status, and counts the warp's completions. All 32 lanes call it.
// With `resumed`, `pos` is a waiting IO_READ taken from the resume queue, finished with
// `io_result` (phase 2); otherwise a claimed position.
// Returns the warp's completions (bits 0..16) and faults (bits 16..32); the caller adds them to
// the device counters (see `Counts`).
// `pre_lane` < 32: that lane's slot line was already read by the poll round (hot polling);
// lanes 8..11 hold its four 16-byte chunks in `pre`, and it is not read again.
__device__ u32 run_lanes(const Params& p, u32 lane, u32 pos, bool run, bool resumed = false, u32 io_result = 0,
                         u32 pre_lane = 32, uint4 pre = make_uint4(0, 0, 0, 0)) {
    u32* ds = p.ds;
    u32 runners = __ballot_sync(0xffffffffu, run);
    bool tracer = runners && lane == (u32)(__ffs(runners) - 1);
    if (tracer) trace(p, 0);
    bool faulted = false;
    u32 op = 0xffffffffu;
    u32 w[16];
    // The warp reads its slots together: in load k, lane L reads 16-byte chunk L % 4 of the
    // slot of lane 8k + L / 4, so each slot is one 64-byte request across PCIe instead of
    // four (measured on an H100: four separate reads of a line the host just wrote took
    // ~3.5 us, one after another). All four loads are issued before any is used; then the
    // chunks are passed to the lanes that own the slots.
    if (pre_lane < 32 && runners == (1u << pre_lane)) {
        // Only the slot the line poll brought runs (a round trip's usual case): its words are
        // lanes 8..11's chunks, sixteen independent shuffles away. The general transposition
        // below took 0.38 us for it on an H100 (its shuffles feed conditional stores one
        // group after another).
        #pragma unroll
        for (int j = 0; j < 4; j++) {
            w[4 * j] = __shfl_sync(0xffffffffu, pre.x, 8 + j);
            w[4 * j + 1] = __shfl_sync(0xffffffffu, pre.y, 8 + j);
            w[4 * j + 2] = __shfl_sync(0xffffffffu, pre.z, 8 + j);
            w[4 * j + 3] = __shfl_sync(0xffffffffu, pre.w, 8 + j);
        }
    } else {
        uint4 c[4], pv;
        u32 from = 8 + (lane & 3);
        pv.x = __shfl_sync(0xffffffffu, pre.x, from); pv.y = __shfl_sync(0xffffffffu, pre.y, from);
        pv.z = __shfl_sync(0xffffffffu, pre.z, from); pv.w = __shfl_sync(0xffffffffu, pre.w, from);
        #pragma unroll
        for (int k = 0; k < 4; k++) {
            u32 src = 8 * k + (lane >> 2);
            u32 spos = __shfl_sync(0xffffffffu, pos, src);
            bool srun = (runners >> src) & 1;
            c[k] = make_uint4(0, 0, 0, 0);
            if (src == pre_lane) {
                c[k] = pv;
            } else if (srun) {
                const uint4* line = (const uint4*)slot_at(p, spos);
                c[k] = ld_relaxed_sys_v4(line + (lane & 3));
            }
        }
        #pragma unroll
        for (int k = 0; k < 4; k++) {
            #pragma unroll
            for (int j = 0; j < 4; j++) {
                u32 from = 4 * (lane & 7) + j;
                u32 x = __shfl_sync(0xffffffffu, c[k].x, from), y = __shfl_sync(0xffffffffu, c[k].y, from);
                u32 z = __shfl_sync(0xffffffffu, c[k].z, from), q = __shfl_sync(0xffffffffu, c[k].w, from);
                if ((lane >> 3) == (u32)k) { w[4 * j] = x; w[4 * j + 1] = y; w[4 * j + 2] = z; w[4 * j + 3] = q; }
            }
        }
    }
    if (run) {
        u32* s = slot_at(p, pos);
        if (tracer) trace(p, 3);
        u32 r[4] = {0, 0, 0, 0};
        Fault f; f.code = 0; f.detail = 0; f.at = 0;
        bool ok = false, light = false;
        u32 st = w[VYRE_SLOT_STATUS] & 0xff;
        if (st == VYRE_ST_DONE || st == VYRE_ST_FAULT || (resumed && st != VYRE_ST_WAIT_IO)) {
            // Finished before a restart rewound the head: never run twice. (A resume entry
            // always names a slot in WAIT_IO; anything else is left alone.)
            op = 0xfffffffeu;
        } else {
            // CLAIMED is informational (watchdog and restart reports). NOP and LOAD_U32 take
            // constant time and change nothing, so they can never be left partly done: they
            // skip the marker, a PCIe write the status store would otherwise wait for.
            u32 opn = w[VYRE_SLOT_OP] & 0xffff;
            light = VYRE_LIGHT_OPS && !resumed && (opn == VYRE_OP_NOP || opn == VYRE_OP_LOAD_U32);
            if (!light) vstore(&s[VYRE_SLOT_STATUS], VYRE_ST_CLAIMED);
            if (w[VYRE_SLOT_SEQ] != pos) { ok = false; f.code = VYRE_F_LOST; f.detail = pos; }
            else if (resumed) ok = resume_io(p, pos, io_result, w + VYRE_SLOT_OP, r, &f);
            else {
                if (tracer) trace(p, 1);
                ok = exec_slot(p, pos, w + VYRE_SLOT_OP, r, &f);
            }
            if (!ok && f.code == WAITING) {
                // IO_READ phase 1 done: the slot waits (WAIT_IO) and is neither completed nor
                // counted until it is resumed.
                run = false;
            }
        }
        if (run && op != 0xfffffffeu) {
            u32 status;
            if (ok) { status = VYRE_ST_DONE; }
            else { status = VYRE_ST_FAULT | (f.code << 8); r[0] = f.detail; r[1] = f.at; r[2] = 0; r[3] = 0; faulted = true; }
            // Publishing zeroed RES0..RES2 (RES3 is the publish stamp; results have at most
            // three words): all-zero results need no write.
            if (r[0] | r[1] | r[2]) {
                uint4 rv; rv.x = r[0]; rv.y = r[1]; rv.z = r[2]; rv.w = 0;
                __stcg((uint4*)(s + VYRE_SLOT_RES0), rv); // one 16-byte write
            }
            if (tracer) trace(p, 4);
            if (light && !(r[0] | r[1] | r[2])) {
                // Nothing was written before the status (no marker, no results, no memory
                // effects), so there is nothing to order: a plain store, no system fence.
                vstore(&s[VYRE_SLOT_STATUS], status);
            } else {
                st_release_sys(&s[VYRE_SLOT_STATUS], status); // the results before the status
            }
            if (tracer) trace(p, 5);
            op = w[VYRE_SLOT_OP] & 0xffff;
        }
    }
    // Count the batch: one atomic per distinct opcode in the warp, totals once per warp.
    u32 key = op < 0xfffffffeu ? (op < VYRE_COUNTED_OPCODES ? op : VYRE_COUNTED_OPCODES) : 0xffffffffu;
    u32 same = __match_any_sync(0xffffffffu, key);
    if (key != 0xffffffffu && lane == (u32)(__ffs(same) - 1)) atomicAdd(&ds[DS_OP_COUNTERS + key], (u32)__popc(same));
    u32 done = __popc(__ballot_sync(0xffffffffu, op < 0xfffffffeu));
    u32 faults = __popc(__ballot_sync(0xffffffffu, faulted));
    return done | faults << 16;
}

// A warp's completions not yet added to DONE/FAULTS. Adding them takes a fence (the statuses
// before the count), which would hold the warp up after every slot; they are added once 1,024
// have gathered, when the warp has found nothing to do for a while, and when it exits. The
// done count may lag the statuses (PROTOCOL.md allows it), never lead them.
struct Counts {
    u32 done = 0, faults = 0;
    __device__ void add(u32 packed) { done += packed & 0xffff; faults += packed >> 16; }
    __device__ void flush(const Params& p, u32 lane) {
        if (done == 0) return;
        if (lane == 0) {
            if (faults) atomicAdd(&p.ds[DS_FAULTS], faults);
            __threadfence();
            atomicAdd(&p.ds[DS_DONE], done);
        }
        done = 0; faults = 0;
    }
};

__device__ void worker_warp(const Params& p, u32 lane) {
    u32* ds = p.ds;
    if (lane == 0) atomicAdd(&ds[DS_WORKERS], 1u);
    u32 idle = 0, dry = 0;
    Counts counts;
    bool hot = false; // the warp held the next position to publish at its last look
    bool tail_next = false; // line polling found a slot: read the host's tail in the next round
#if VYRE_TICKET
    u32 start = 0, pending = 0; // the warp's tickets: start + lane for each bit of pending
#endif
    for (;;) {
        if (counts.done >= 1024 || (dry >= 4 && counts.done)) counts.flush(p, lane);
#if VYRE_TICKET
        if (pending == 0) {
            u32 s = 0;
            if (lane == 0) s = atomicAdd(&ds[DS_HEAD], p.claim_batch);
            start = __shfl_sync(0xffffffffu, s, 0);
            pending = p.claim_batch >= 32 ? 0xffffffffu : (1u << p.claim_batch) - 1;
        }
#endif
#if VYRE_TICKET
        u32 first = start + (u32)(__ffs(pending) - 1);
#endif
        // One round of loads, on several lanes at once: the words a claim needs. Lanes 0..7
        // read the polled device-state words, eight relaxed loads that coalesce into one
        // request; the fence before anything they show is run makes each an acquire for the
        // lane that loaded it, and the warp barrier after that fence carries it to the lanes
        // the value was shuffled to. Kernel v5 read them one load
        // per word with acquire loads for the tails: seven requests per warp and round on the
        // L2 line the claims add to, and the hot warp's line poll held back until the acquire
        // returned (round trip 4.0 against 3.4-3.6 us, bench/results/ring-cuda.md, session 13).
        u32 v = 0;
        if (lane < DS_POLLED) v = vload(&ds[lane]);
#if !VYRE_TICKET
        if (lane == 14) v = vload(&ds[DS_HEAD]);
#endif
#if VYRE_HOT_POLL
        // The warp holding the next position to publish reads the host's tail itself, in the
        // same round: the control warp's mirror is a hop of about a microsecond later. In
        // line-poll mode 1 (the default) it does so only in the round after a line hit showed
        // a batch coming, with an acquire load; in modes 2 and 3 every round, relaxed (an
        // acquire would hold back the line's load: two PCIe round trips per poll), and a
        // system-scope fence makes up for it when positions it alone shows are run.
        if (lane == 13 && hot && (VYRE_LINE_POLL != 1 || tail_next))
            v = (VYRE_LINE_POLL & 2) ? ld_relaxed_sys(&p.cb[VYRE_CB_TAIL]) : ld_acquire_sys(&p.cb[VYRE_CB_TAIL]);
#endif
#if VYRE_HOT_LINE
        // It also reads that position's slot line (lanes 8..11, one 64-byte request), so a
        // slot published after the poll began runs without a tail read and then a slot read
        // (PROTOCOL.md, "Hot slot polling"). Issued last, because an acquire load holds back
        // the loads after it.
        // Lane 12 also reads the first 16 bytes of the next position's line in the same load:
        // if that one is published too, a batch is coming, and the next round reads the tail.
        uint4 hl = make_uint4(0, 0, 0, 0);
        if (hot && !tail_next && lane >= 8 && lane < 13) {
            u32 pos = lane < 12 ? first : first + 1;
            const uint4* line = (const uint4*)slot_at(p, pos);
            const uint4* at = line + (lane < 12 ? lane - 8 : 0);
            hl = VYRE_LINE_POLL == 3 ? ld_relaxed_sys_v4(at) : ld_acquire_sys_v4(at);
        }
#endif
        u32 stop = __shfl_sync(0xffffffffu, v, DS_SHUTDOWN) | __shfl_sync(0xffffffffu, v, DS_ABORT);
        u32 head = __shfl_sync(0xffffffffu, v, 14);
        u32 tail = __shfl_sync(0xffffffffu, v, DS_TAIL);
        u32 hang = __shfl_sync(0xffffffffu, v, DS_HANG);
#if VYRE_HOT_LINE && VYRE_FAST_NOP
        // A NOP the line poll brought is checked where its words landed and completed at once:
        // lane 8 holds SEQ, STATUS, OP and TENANT, lanes 9 and 10 the eight argument words,
        // lane 11 the publish stamp. The vote passes only for a NOP that passes all of
        // run_lanes' checks (the right position, PUBLISHED, no flags, priority 0..7, no tenant
        // high bits, no arguments) and whose line shows its publish stamp; anything else, a
        // malformed NOP included, takes the general path below and gets its fault there. It
        // changes nothing but its status (no CLAIMED marker, no results, no memory), as a light
        // op in run_lanes. Measured on an H100 it cut the
        // round trip's chain of single-warp steps after a line hit (run_lanes' ballots and
        // shuffles, exec_slot's dispatch; bench/results/ring-cuda.md, session 16). Checking
        // for it only inside the general hit test below (one branch when the poll finds
        // nothing) measured worse: p50 2.07-3.31 us against 1.93-2.69 in the same session.
        // Other slots pay for the check: LOAD_U32's round trip was slower with it in 13 of 15
        // alternated pairs (by a median of 0.2 us), for a reason not found.
        if (hot && !tail_next && !stop && !hang) {
            bool good = true;
            if (lane == 8) {
                good = hl.x == first && (hl.y & 0xff) == VYRE_ST_PUBLISHED
                    && (hl.z & 0x00ffffffu) == VYRE_OP_NOP && (hl.z >> 24) <= 7 && (hl.w >> 16) == 0;
            } else if (lane == 9 || lane == 10) {
                good = (hl.x | hl.y | hl.z | hl.w) == 0;
            } else if (lane == 11) {
                good = hl.w == (first | 1u);
            }
            if (__all_sync(0xffffffffu, good)) {
                if (lane == 8) {
                    u32 seen = trace_clock(p);
                    vstore(&slot_at(p, first)[VYRE_SLOT_STATUS], VYRE_ST_DONE);
                    trace_seen(p, seen);
                    atomicAdd(&ds[DS_OP_COUNTERS + VYRE_OP_NOP], 1u);
                }
                counts.add(1);
                // The rest of the round sees the position taken: its bit is no longer pending.
                pending &= ~(1u << (first - start));
                idle = 0; dry = 0;
            }
        }
#endif
        u32 rhead = __shfl_sync(0xffffffffu, v, DS_RESUME_HEAD);
        u32 ravail = __shfl_sync(0xffffffffu, v, DS_RESUME_TAIL) - rhead;
        if (ravail != 0 && ravail <= p.capacity && !hang) {
            // IO_READs whose reads the host finished: take up to 32 resume entries with one
            // CAS and complete them (phase 2) before anything new.
            u32 n = ravail < 32 ? ravail : 32, got = 0;
            if (lane == 0 && atomicCAS(&ds[DS_RESUME_HEAD], rhead, rhead + n) == rhead) got = n;
            got = __shfl_sync(0xffffffffu, got, 0);
            if (got) {
                fence_acq_rel_gpu();
                __syncwarp(); // lane 5's acquire of RESUME_TAIL, for every lane reading entries
                u32 pos = 0, result = 0;
                if (lane < got) {
                    const u32* e = p.ioq + (size_t)p.capacity * VYRE_IOREQ_WORDS
                                 + (size_t)((rhead + lane) & (p.capacity - 1)) * VYRE_IORES_WORDS;
                    pos = vload(&e[VYRE_IORES_POSITION]);
                    result = vload(&e[VYRE_IORES_RESULT]);
                }
                counts.add(run_lanes(p, lane, pos, lane < got, true, result));
                idle = 0; dry = 0;
                continue;
            }
        }
        bool sys_acquire = false; // positions only a relaxed read of the host's tail shows will run
#if VYRE_TICKET
        (void)head;
        u32 pre_lane = 32; // the lane whose slot the line poll found published
#if VYRE_HOT_POLL
        u32 htail = VYRE_LINE_POLL == 1 && !tail_next ? tail : __shfl_sync(0xffffffffu, v, 13);
        tail_next = false;
#if VYRE_HOT_LINE
        // Valid only if both 32-byte halves are this publication's: SEQ and PUBLISHED in the
        // first (lane 8), the publish stamp (position | 1) in RES3 of the second (lane 11).
        u32 lseq = __shfl_sync(0xffffffffu, hl.x, 8), lst = __shfl_sync(0xffffffffu, hl.y, 8);
        u32 lstamp = __shfl_sync(0xffffffffu, hl.w, 11);
        u32 nseq = __shfl_sync(0xffffffffu, hl.x, 12), nst = __shfl_sync(0xffffffffu, hl.y, 12);
        if (hot && lseq == first && (lst & 0xff) == VYRE_ST_PUBLISHED && lstamp == (first | 1u)) {
            pre_lane = first - start;
            // A batch: the next round reads the tail instead (acquire), to see the rest of it
            // at once rather than a line per round.
            tail_next = VYRE_LINE_POLL == 1 && nseq == first + 1 && (nst & 0xff) == VYRE_ST_PUBLISHED;
        }
        // The line's acquire covers `first` alone; anything else past the mirror needs a fence.
        if (VYRE_LINE_POLL == 3) sys_acquire = hot && ((int)(htail - tail) > 0 || pre_lane < 32);
        else if (VYRE_LINE_POLL == 2) sys_acquire = hot && (int)(htail - tail) > 0 && !(pre_lane < 32 && htail - first <= 1u);
        // (Mode 1 reads only with acquire loads.)
#endif
        if (hot && (int)(htail - tail) > 0) tail = htail;
        hot = first - tail < 32u;
#endif
        // Tickets are not claims: a published position is this warp's only once it starts
        // running it. After SHUTDOWN or ABORT the warp starts nothing more (what it leaves
        // is reported lost by the host, never dropped).
        if (stop) break;
        bool run = ((pending >> lane) & 1) && ((int)(tail - (start + lane)) > 0 || lane == pre_lane);
        u32 ready = __ballot_sync(0xffffffffu, run);
        if (ready == 0) {
            dry = dry < 1000 ? dry + 1 : dry;
            // Back off by how far the warp's first ticket is from the tail: the warp that
            // holds the next position to be published polls all the time; a warp whose
            // tickets are further away sleeps up to 64 << worker_sleep_shift ns.
            if (first - tail < 32u) { idle = 0; continue; }
            idle = idle < p.worker_sleep_shift ? idle + 1 : idle;
            if (idle > 1) __nanosleep(64u << idle);
            continue;
        }
        pending &= ~ready;
#else
        if (stop) break;
        u32 start = 0, count = 0;
        u32 avail = tail - head;
        // avail > capacity means a head newer than the tail read: never claim past it.
        if (avail != 0 && avail <= p.capacity) {
            if (lane == 0) {
                u32 n = avail < p.claim_batch ? avail : p.claim_batch;
                if (atomicCAS(&ds[DS_HEAD], head, head + n) == head) { start = head; count = n; }
            }
            start = __shfl_sync(0xffffffffu, start, 0);
            count = __shfl_sync(0xffffffffu, count, 0);
        }
        if (count == 0) {
            // Exponential back-off, 128 ns to 4 us: with hundreds of warps polling, one of
            // them looks within nanoseconds anyway, and fewer polls leave the head's L2 line
            // to the warps that claim.
            dry = dry < 1000 ? dry + 1 : dry;
            idle = idle < p.worker_sleep_shift ? idle + 1 : idle;
            if (idle > 1) __nanosleep(64u << idle);
            continue;
        }
        bool run = lane < count;
#endif
        if (lane == 0) trace(p, 2);
        idle = 0;
        // Acquire for every lane: the tail before the slot words (system scope when the tail
        // came from a relaxed read of the host's).
#if VYRE_HOT_LINE && !VYRE_LINE_FENCE
        // Only the slot the line poll brought runs: lanes 8..11 acquired its line, and the
        // warp barrier orders their acquire before the running lane's accesses (CUDA's
        // __syncwarp guarantees memory ordering among the lanes it joins). The device-scope
        // fence cost 0.3 us of every round trip (bench/results/ring-cuda.md, session 13).
        bool line_only = pre_lane < 32 && ready == (1u << pre_lane);
#else
        bool line_only = false;
#endif
        if (sys_acquire) fence_acq_rel_sys();
        else if (line_only) __syncwarp();
        else { fence_acq_rel_gpu(); __syncwarp(); } // lane 2's acquire of TAIL, for every lane
        if (hang) {
            // Simulated hang: mark the claim taken, hold it, leave only on ABORT.
            if (run) {
                u32* s = slot_at(p, start + lane);
                vstore(&s[VYRE_SLOT_STATUS], VYRE_ST_CLAIMED);
            }
            while (!vload(&ds[DS_ABORT])) __nanosleep(10000);
            break;
        }
#if VYRE_HOT_LINE
        counts.add(run_lanes(p, lane, start + lane, run, false, 0, pre_lane, hl));
#else
        counts.add(run_lanes(p, lane, start + lane, run));
#endif
        dry = 0;
    }
    counts.flush(p, lane);
    __syncwarp();
    if (lane == 0) { __threadfence(); atomicSub(&ds[DS_WORKERS], 1u); }
}

extern "C" __global__ void vyre_megakernel(Params p) {
    u32 lane = threadIdx.x & 31;
    bool control = blockIdx.x == 0 && threadIdx.x < 32;
    // Worker index: every warp of the grid after the control warp. A grid rounded up to whole
    // blocks has more warps than the configured workers; those leave (a one-worker ring runs
    // its slots in ring order, as on every backend).
    u32 worker = (blockIdx.x * blockDim.x + threadIdx.x) / 32 - 1;
    if (control) control_warp(p, lane);
    else if (worker < p.workers) worker_warp(p, lane);
}
