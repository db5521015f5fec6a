// Completion-write probe: how fast can a grid shaped like the megakernel's write completion
// words into mapped, page-locked host memory, by layout? Not part of the product; it asks
// whether the ring's completions (a status word in each slot's own 64-byte line, protocol v1)
// cost more across PCIe than a dense completion area would (protocol v2 idea in issue 3).
//
//   nvcc -O3 -arch=sm_90 -o pcie_write_probe bench/cuda/pcie_write_probe.cu
//   ./pcie_write_probe [SLOTS] [LAPS]
//
// Layouts, one completion per slot, SLOTS slots written LAPS times by a grid of 2 blocks of 128
// threads per SM (lanes take consecutive slots, as warps claiming a batch do):
//   line4    4-byte status into word 1 of each slot's 64-byte line (v1's NOP completion)
//   line16+4 16-byte results into words 12..15, then the 4-byte status (v1 with results)
//   dense4   4-byte status, slots back to back
//   dense16  16-byte entry (status + 3 results), slots back to back
// Then the host reads every slot's status after a lap the device wrote (its read cost per
// layout), best of 5.
//
// Second table: the host's cost of writing every slot's 64-byte line again (a publish: four
// 16-byte stores per line, one thread), after the device has only read each line (what slot
// lines would see with a separate completion area), after it read each line and wrote a status
// word into it (protocol v1), and with no device access since the host's last write.
#include <atomic>
#include <immintrin.h>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cuda_runtime.h>

typedef unsigned int u32;

#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { \
    fprintf(stderr, "%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e)); exit(1); } } while (0)

enum Layout { LINE4 = 0, LINE16 = 1, DENSE4 = 2, DENSE16 = 3 };
static const char* NAMES[] = {"line4", "line16+4", "dense4", "dense16"};

__global__ void write_completions(u32* mem, u32 slots, u32 laps, int layout) {
    u32 threads = gridDim.x * blockDim.x;
    u32 tid = blockIdx.x * blockDim.x + threadIdx.x;
    for (u32 lap = 0; lap < laps; lap++) {
        for (u32 i = tid; i < slots; i += threads) {
            u32 v = (lap << 20) | i;
            switch (layout) {
            case LINE4:
                *(volatile u32*)(mem + (size_t)i * 16 + 1) = v;
                break;
            case LINE16: {
                uint4 r = make_uint4(v, v, v, 0);
                __stcg((uint4*)(mem + (size_t)i * 16 + 12), r);
                *(volatile u32*)(mem + (size_t)i * 16 + 1) = v;
                break;
            }
            case DENSE4:
                *(volatile u32*)(mem + i) = v;
                break;
            default: {
                uint4 r = make_uint4(v, v, v, v);
                __stcg((uint4*)(mem + (size_t)i * 4), r);
                break;
            }
            }
        }
    }
}

__global__ void touch_lines(u32* mem, u32 slots, int write, u32* sink) {
    u32 threads = gridDim.x * blockDim.x;
    u32 tid = blockIdx.x * blockDim.x + threadIdx.x;
    u32 acc = 0;
    for (u32 i = tid; i < slots; i += threads) {
        uint4 v = __ldcv((const uint4*)(mem + (size_t)i * 16));
        acc += v.x + v.w;
        if (write) *(volatile u32*)(mem + (size_t)i * 16 + 1) = v.y + 1;
    }
    if (acc == 0xffffffffu) *sink = acc;
}

// Writes every line whole, as a publish does; ns per line.
static double publish_all(u32* host, u32 slots, u32 round) {
    auto t = std::chrono::steady_clock::now();
    for (u32 i = 0; i < slots; i++) {
        __m128i* line = (__m128i*)(host + (size_t)i * 16);
        for (int k = 0; k < 4; k++) _mm_store_si128(line + k, _mm_set_epi32(i, round, k, i ^ round));
    }
    std::atomic_thread_fence(std::memory_order_release);
    return std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t).count() / slots;
}

int main(int argc, char** argv) {
    u32 slots = argc > 1 ? (u32)atoi(argv[1]) : 65536;
    u32 laps = argc > 2 ? (u32)atoi(argv[2]) : 200;
    CK(cudaSetDeviceFlags(cudaDeviceMapHost));
    int sms = 0;
    CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    u32* host = nullptr;
    size_t bytes = (size_t)slots * 64;
    CK(cudaHostAlloc((void**)&host, bytes, cudaHostAllocMapped | cudaHostAllocPortable));
    u32* dev = nullptr;
    CK(cudaHostGetDevicePointer((void**)&dev, host, 0));
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    printf("grid %d x 128 threads, %u slots, %u laps\n", sms * 2, slots, laps);
    printf("| layout | device writes M completions/s | host read of one lap, ns per slot |\n|---|---|---|\n");
    for (int rep = 0; rep < 2; rep++) {
        for (int layout = 0; layout < 4; layout++) {
            write_completions<<<sms * 2, 128>>>(dev, slots, 1, layout); // warm-up
            CK(cudaDeviceSynchronize());
            CK(cudaEventRecord(a));
            write_completions<<<sms * 2, 128>>>(dev, slots, laps, layout);
            CK(cudaEventRecord(b));
            CK(cudaEventSynchronize(b));
            float ms = 0;
            CK(cudaEventElapsedTime(&ms, a, b));
            double rate = (double)slots * laps / (ms / 1e3) / 1e6;
            double best = 1e30;
            volatile u32* h = host;
            u32 sink = 0;
            for (int k = 0; k < 5; k++) {
                write_completions<<<sms * 2, 128>>>(dev, slots, 1, layout);
                CK(cudaDeviceSynchronize());
                auto t = std::chrono::steady_clock::now();
                u32 stride = layout <= LINE16 ? 16 : (layout == DENSE4 ? 1 : 4);
                u32 off = layout <= LINE16 ? 1 : 0;
                for (u32 i = 0; i < slots; i++) sink += h[(size_t)i * stride + off];
                double ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t).count();
                if (ns < best) best = ns;
            }
            if (sink == 0xffffffffu) printf(" ");
            printf("| %s (rep %d) | %.1f | %.2f |\n", NAMES[layout], rep + 1, rate, best / slots);
        }
    }
    u32* sink = nullptr;
    CK(cudaMalloc((void**)&sink, 4));
    printf("\n| before the host's rewrite of %u lines | ns per line (best of 5), rep 1 | rep 2 |\n|---|---|---|\n", slots);
    const char* what[] = {"device read each line (v2: completions elsewhere)",
                          "device read each line and wrote its status (v1)",
                          "no device access (host cache warm)"};
    for (int mode = 0; mode < 3; mode++) {
        double best[2] = {1e30, 1e30};
        for (int rep = 0; rep < 2; rep++) {
            for (int k = 0; k < 5; k++) {
                publish_all(host, slots, 1000 + k);
                if (mode < 2) {
                    touch_lines<<<sms * 2, 128>>>(dev, slots, mode, sink);
                    CK(cudaDeviceSynchronize());
                }
                double ns = publish_all(host, slots, 2000 + k);
                if (ns < best[rep]) best[rep] = ns;
            }
        }
        printf("| %s | %.2f | %.2f |\n", what[mode], best[0], best[1]);
    }
    CK(cudaFree(sink));
    CK(cudaFreeHost(host));
    return 0;
}
