// Host pool probe: how fast can T host threads write (publish) and read (reap) the 64-byte slot
// lines of a ring in mapped, page-locked memory, and what does handing the work to the threads
// cost? Not part of the product; it asks what bounds issue 3's NOP throughput end to end, where
// the megakernel drains 65,536 published NOPs in ~167 us but `run_batch` with a pool of 8 host
// threads takes ~450 us (and one host thread rewrites a line in 2.25-2.7 ns: pcie_write_probe.cu).
//
//   nvcc -O3 -arch=sm_90 -std=c++17 -o host_pool_probe bench/cuda/host_pool_probe.cu
//   ./host_pool_probe [SLOTS] [REPS]
//
// The work is cut into units of 1,024 slots taken in order from a shared counter, as vyre's
// pool does (ring::PARALLEL_UNIT); the calling thread takes units too. Two ways to hand it over:
//   spin   the helper threads spin on a generation word (no sleeping, no system call)
//   sleep  the helper threads sleep on a condition variable and are woken for every task (what a
//          pool whose threads have gone to sleep between batches costs)
// Tasks, timed from the hand-over to the last unit done (median of REPS):
//   empty  no work: the hand-over and join alone
//   nt     every line written with four non-temporal 16-byte stores (vyre's streamed units),
//          an sfence per unit; the device read every line and wrote its status before each rep
//   st     the same with ordinary 16-byte stores
//   read   every line's status and four result words read (vyre's finished_completion), after
//          the device wrote a status into every line
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cuda_runtime.h>
#include <functional>
#include <immintrin.h>
#include <mutex>
#include <thread>
#include <vector>

typedef unsigned int u32;

#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { \
    fprintf(stderr, "%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e)); exit(1); } } while (0)

static const u32 UNIT = 1024;

__global__ void complete_lines(u32* mem, u32 slots, u32 round) {
    u32 threads = gridDim.x * blockDim.x;
    for (u32 i = blockIdx.x * blockDim.x + threadIdx.x; i < slots; i += threads) {
        uint4 v = __ldcv((const uint4*)(mem + (size_t)i * 16));
        __stcg((uint4*)(mem + (size_t)i * 16 + 12), make_uint4(v.x, round, 0, 0));
        *(volatile u32*)(mem + (size_t)i * 16 + 1) = 2 + (round & 1);
    }
}

using Clock = std::chrono::steady_clock;

struct Pool {
    int helpers;
    bool sleeping;
    std::vector<std::thread> threads;
    std::atomic<u32> generation{0};
    std::atomic<int> finished{0};
    std::atomic<bool> quit{false};
    std::mutex m;
    std::condition_variable cv;
    std::function<void()> task;

    Pool(int helpers, bool sleeping) : helpers(helpers), sleeping(sleeping) {
        for (int i = 0; i < helpers; i++) threads.emplace_back([this] { loop(); });
    }
    void loop() {
        u32 seen = 0;
        for (;;) {
            if (sleeping) {
                std::unique_lock<std::mutex> g(m);
                cv.wait(g, [&] { return quit.load() || generation.load() != seen; });
            } else {
                while (!quit.load(std::memory_order_relaxed) &&
                       generation.load(std::memory_order_acquire) == seen)
                    _mm_pause();
            }
            if (quit.load()) return;
            seen = generation.load(std::memory_order_acquire);
            task();
            finished.fetch_add(1, std::memory_order_acq_rel);
        }
    }
    // Runs `f` on every helper and the calling thread; returns when all have finished.
    void run(std::function<void()> f) {
        task = std::move(f);
        finished.store(0);
        if (sleeping) {
            { std::lock_guard<std::mutex> g(m); generation.fetch_add(1, std::memory_order_release); }
            cv.notify_all();
        } else {
            generation.fetch_add(1, std::memory_order_release);
        }
        task();
        while (finished.load(std::memory_order_acquire) < helpers) _mm_pause();
    }
    ~Pool() {
        { std::lock_guard<std::mutex> g(m); quit.store(true); }
        cv.notify_all();
        for (auto& t : threads) t.join();
    }
};

enum Task { EMPTY, NT, ST, READ };
static const char* TASKS[] = {"empty", "nt", "st", "read"};

static void write_unit(u32* host, u32 from, u32 to, u32 round, bool nt) {
    for (u32 i = from; i < to; i++) {
        __m128i* line = (__m128i*)(host + (size_t)i * 16);
        __m128i a = _mm_set_epi32(0, 0, 1, i), b = _mm_set_epi32(i, 0, 0, round),
                c = _mm_set_epi32(0, 0, 0, 0), d = _mm_set_epi32(0, 0, 0, 0);
        if (nt) {
            _mm_stream_si128(line, a); _mm_stream_si128(line + 1, b);
            _mm_stream_si128(line + 2, c); _mm_stream_si128(line + 3, d);
        } else {
            _mm_store_si128(line + 1, b); _mm_store_si128(line + 2, c);
            _mm_store_si128(line + 3, d); _mm_store_si128(line, a);
        }
    }
    if (nt) _mm_sfence();
}

static u32 read_unit(const u32* host, u32 from, u32 to) {
    u32 acc = 0;
    for (u32 i = from; i < to; i++) {
        const volatile u32* w = host + (size_t)i * 16;
        u32 st = w[1];
        std::atomic_thread_fence(std::memory_order_acquire);
        if (st >= 2) acc += w[12] + w[13] + w[14] + w[15];
    }
    return acc;
}

int main(int argc, char** argv) {
    u32 slots = argc > 1 ? (u32)atoi(argv[1]) : 65536;
    int reps = argc > 2 ? atoi(argv[2]) : 30;
    CK(cudaSetDeviceFlags(cudaDeviceMapHost));
    int sms = 0;
    CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    u32* host = nullptr;
    CK(cudaHostAlloc((void**)&host, (size_t)slots * 64, cudaHostAllocMapped | cudaHostAllocPortable));
    u32* dev = nullptr;
    CK(cudaHostGetDevicePointer((void**)&dev, host, 0));
    printf("%u slots (%u KiB), units of %u, median of %d reps, %u host cores\n", slots,
           slots / 16, UNIT, reps, std::thread::hardware_concurrency());
    printf("\n| threads | pool | empty | nt write | st write | read | nt ns/slot | read ns/slot |\n"
           "|---|---|---|---|---|---|---|---|\n");
    std::atomic<u32> sink{0};
    for (int threads : {1, 2, 4, 8, 12, 16}) {
        for (int sleeping = 0; sleeping < 2; sleeping++) {
            Pool pool(threads - 1, sleeping);
            double med[4];
            for (int task = 0; task < 4; task++) {
                std::vector<double> us;
                for (int r = 0; r < reps + 2; r++) {
                    if (task != EMPTY) {
                        complete_lines<<<sms * 2, 128>>>(dev, slots, r);
                        CK(cudaDeviceSynchronize());
                    }
                    std::this_thread::sleep_for(std::chrono::microseconds(200));
                    std::atomic<u32> next{0};
                    u32 units = (slots + UNIT - 1) / UNIT;
                    auto t = Clock::now();
                    pool.run([&] {
                        if (task == EMPTY) return;
                        u32 acc = 0;
                        for (;;) {
                            u32 u = next.fetch_add(1, std::memory_order_relaxed);
                            if (u >= units) break;
                            u32 from = u * UNIT, to = std::min(slots, from + UNIT);
                            if (task == READ) acc += read_unit(host, from, to);
                            else write_unit(host, from, to, r, task == NT);
                        }
                        sink.fetch_add(acc, std::memory_order_relaxed);
                    });
                    double d = std::chrono::duration<double, std::micro>(Clock::now() - t).count();
                    if (r >= 2) us.push_back(d);
                }
                std::sort(us.begin(), us.end());
                med[task] = us[us.size() / 2];
            }
            printf("| %d | %s | %.1f us | %.1f us | %.1f us | %.1f us | %.2f | %.2f |\n", threads,
                   sleeping ? "sleep" : "spin", med[0], med[1], med[2], med[3],
                   med[1] * 1e3 / slots, med[3] * 1e3 / slots);
            fflush(stdout);
        }
    }
    if (sink.load() == 0xffffffffu) printf(" ");
    CK(cudaFreeHost(host));
    return 0;
}
