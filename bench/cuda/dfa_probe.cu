// DFA_SCAN inner-loop probe: the megakernel's scan loop, alone in an ordinary kernel, in
// variants, over the same resident data and table, so that where the time goes can be seen
// (and profiled with ncu) without the ring. Not part of the product.
//
//   cargo run --release -p vyre-scan --example dfa_table -- RULES.toml table.bin
//   nvcc -O3 -arch=sm_90 -o dfa_probe bench/cuda/dfa_probe.cu
//   ./dfa_probe table.bin data.bin WINDOW_BYTES
//
// Each window is scanned from the start-of-text state on its own, as the resident probe of
// `vyre bench scan` does. Every variant's match count is checked against a host scan.
// Variants:
//   base     the megakernel's loop: class map and transitions through __ldg, a row check
//   cm_smem  the class map in shared memory
//   rowsR    cm_smem, and the first R rows of the transition table in shared memory
//   x2       two windows per thread, stepped in turn (two dependent chains in flight)
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include <algorithm>
#include <cuda_runtime.h>

typedef unsigned int u32;
typedef unsigned long long u64;
typedef unsigned char u8;

#define TRANS_WORD 329u
#define CLASS_MAP_WORD 8u
#define START_WORD 72u
#define MATCH_BIT 0x80000000u

#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { \
    fprintf(stderr, "%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e)); exit(1); } } while (0)

struct Tab { const u32* t; u32 stride; u32 last_row; u32 mi; u32 ml; u32 start; u32 smem_rows_end; };

// One byte. SMEM: rows below smem_rows_end come from shared memory.
template <bool CM_SMEM, bool SMEM_ROWS>
__device__ __forceinline__ void step(const Tab& d, const u8* cm_s, const u32* rows_s, u32& state,
                                     u32 byte, u32& found, u32& bad) {
    u32 c = CM_SMEM ? (u32)cm_s[byte] : (u32)__ldg((const u8*)(d.t + CLASS_MAP_WORD) + byte);
    u32 next;
    if (SMEM_ROWS && state < d.smem_rows_end) next = rows_s[state + c];
    else next = __ldg(d.t + TRANS_WORD + state + c);
    if ((next & ~MATCH_BIT) > d.last_row) bad = 1;
    if (next & MATCH_BIT) {
        u32 row = next & ~MATCH_BIT;
        u32 entry = __ldg(d.t + d.mi + row / d.stride);
        found += __ldg(d.t + d.ml + entry);
    }
    state = next & ~MATCH_BIT;
}

template <bool CM_SMEM, bool SMEM_ROWS, int X>
__global__ void scan(Tab d, const u8* data, u64 nwin, u32 win, u32* found_out, u32* bad_out) {
    extern __shared__ u32 sm[];
    u8* cm_s = (u8*)sm;
    u32* rows_s = sm + 64;
    if (CM_SMEM) {
        for (u32 i = threadIdx.x; i < 64; i += blockDim.x) sm[i] = __ldg(d.t + CLASS_MAP_WORD + i);
    }
    if (SMEM_ROWS) {
        for (u32 i = threadIdx.x; i < d.smem_rows_end; i += blockDim.x) rows_s[i] = __ldg(d.t + TRANS_WORD + i);
    }
    __syncthreads();
    u32 found = 0, bad = 0;
    u64 tid = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    u64 threads = (u64)gridDim.x * blockDim.x;
    u64 groups = nwin / X;
    for (u64 g = tid; g < groups; g += threads) {
        u32 st[X];
        const u8* s[X];
        for (int x = 0; x < X; x++) { st[x] = d.start; s[x] = data + (g + (u64)x * groups) * win; }
        for (u32 i = 0; i < win; i += 16) {
            uint4 q[X];
            #pragma unroll
            for (int x = 0; x < X; x++) q[x] = __ldcg((const uint4*)(s[x] + i));
            #pragma unroll
            for (int j = 0; j < 4; j++) {
                #pragma unroll
                for (int k = 0; k < 4; k++) {
                    #pragma unroll
                    for (int x = 0; x < X; x++) {
                        u32 w = j == 0 ? q[x].x : j == 1 ? q[x].y : j == 2 ? q[x].z : q[x].w;
                        step<CM_SMEM, SMEM_ROWS>(d, cm_s, rows_s, st[x], (w >> (8 * k)) & 0xff, found, bad);
                    }
                }
            }
        }
    }
    atomicAdd(found_out, found);
    if (bad) atomicOr(bad_out, 1);
}

static std::vector<u8> slurp(const char* path) {
    FILE* f = fopen(path, "rb");
    if (!f) { perror(path); exit(1); }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    std::vector<u8> v(n);
    if (fread(v.data(), 1, n, f) != (size_t)n) { perror(path); exit(1); }
    fclose(f);
    return v;
}

int main(int argc, char** argv) {
    if (argc < 4) { fprintf(stderr, "usage: dfa_probe table.bin data.bin WINDOW [BLOCK_THREADS]\n"); return 2; }
    std::vector<u8> tb = slurp(argv[1]);
    std::vector<u8> db = slurp(argv[2]);
    u32 win = atoi(argv[3]);
    u32 bt = argc > 4 ? atoi(argv[4]) : 128;
    const u32* t = (const u32*)tb.data();
    u32 states = t[2], stride = t[3];
    u64 nwin = db.size() / win;
    nwin &= ~(u64)1;
    u64 bytes = nwin * win;
    u32 rows_end = states * stride;
    Tab d;
    d.stride = stride; d.last_row = rows_end - stride; d.mi = TRANS_WORD + rows_end;
    d.ml = d.mi + states; d.start = t[START_WORD + 256];

    // Host reference count.
    u8 cls[256];
    memcpy(cls, t + CLASS_MAP_WORD, 256);
    u64 want = 0;
    for (u64 w = 0; w < nwin; w++) {
        u32 s = d.start;
        const u8* p = db.data() + w * win;
        for (u32 i = 0; i < win; i++) {
            u32 n = t[TRANS_WORD + s + cls[p[i]]];
            if (n & MATCH_BIT) want += t[d.ml + t[d.mi + (n & ~MATCH_BIT) / stride]];
            s = n & ~MATCH_BIT;
        }
    }

    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("GPU: %s, %d SMs; table %u states x %u columns (%zu KiB); %llu windows of %u bytes (%.3f GB); host count %llu\n\n",
           prop.name, prop.multiProcessorCount, states, stride, tb.size() / 1024,
           (unsigned long long)nwin, win, bytes / 1e9, (unsigned long long)want);
    u32 *dt, *dfound, *dbad;
    u8* dd;
    CK(cudaMalloc(&dt, tb.size()));
    CK(cudaMalloc(&dd, bytes));
    CK(cudaMalloc(&dfound, 4));
    CK(cudaMalloc(&dbad, 4));
    CK(cudaMemcpy(dt, tb.data(), tb.size(), cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dd, db.data(), bytes, cudaMemcpyHostToDevice));
    d.t = dt;

    printf("| variant | smem rows | blocks/SM | threads | best ms | GB/s | vs base | count ok |\n|---|---|---|---|---|---|---|---|\n");
    double base_ms = 0;
    auto run = [&](const char* name, void (*k)(Tab, const u8*, u64, u32, u32*, u32*), u32 rows,
                   int bps, int x) {
        Tab dk = d;
        dk.smem_rows_end = std::min(rows * stride, rows_end);
        size_t smem = 256 + (size_t)dk.smem_rows_end * 4;
        if (smem > 48 * 1024) CK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        int maxb = 0;
        CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&maxb, k, bt, smem));
        if (maxb < bps) { printf("| %s | %u | %d | - | - | - | - | not co-resident (max %d) |\n", name, rows, bps, maxb); return; }
        int blocks = bps * prop.multiProcessorCount;
        float best = 1e30f;
        u32 got = 0, bad = 0;
        cudaEvent_t a, b;
        cudaEventCreate(&a); cudaEventCreate(&b);
        for (int rep = 0; rep < 4; rep++) {
            CK(cudaMemset(dfound, 0, 4)); CK(cudaMemset(dbad, 0, 4));
            cudaEventRecord(a);
            k<<<blocks, bt, smem>>>(dk, dd, nwin, win, dfound, dbad);
            cudaEventRecord(b);
            CK(cudaEventSynchronize(b));
            CK(cudaGetLastError());
            float ms; cudaEventElapsedTime(&ms, a, b);
            if (rep > 0) best = std::min(best, ms);
            CK(cudaMemcpy(&got, dfound, 4, cudaMemcpyDeviceToHost));
            CK(cudaMemcpy(&bad, dbad, 4, cudaMemcpyDeviceToHost));
        }
        if (base_ms == 0) base_ms = best;
        printf("| %s | %u | %d | %d | %.2f | %.1f | %.2fx | %s |\n", name, rows, bps, blocks * bt / x, best,
               bytes / (best * 1e6), base_ms / best, (got == (u32)want && !bad) ? "yes" : "NO");
        fflush(stdout);
    };
    const int bpss[] = {2, 4, 8};
    for (int bps : bpss) run("base", scan<false, false, 1>, 0, bps, 1);
    for (int bps : bpss) run("cm_smem", scan<true, false, 1>, 0, bps, 1);
    for (int bps : bpss) run("x2 cm_smem", scan<true, false, 2>, 0, bps, 2);
    const u32 rowss[] = {64, 160, 320, 800};
    for (u32 rows : rowss) for (int bps : {1, 2, 4}) run("rows", scan<true, true, 1>, rows, bps, 1);
    for (u32 rows : rowss) for (int bps : {1, 2, 4}) run("x2 rows", scan<true, true, 2>, rows, bps, 2);
    return 0;
}
