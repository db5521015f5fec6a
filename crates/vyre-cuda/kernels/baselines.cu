// Baselines for `vyre bench ring --backend cuda`: what a program would do without a
// persistent kernel (launch per op, graph replay per op), and the floor of any host<->GPU
// handshake through mapped memory (a ping-pong with one thread on each side).

extern "C" __global__ void vyre_bench_nop(unsigned* out) {
    if (threadIdx.x == 0 && blockIdx.x == 0) out[0] = out[0] + 1u;
}

extern "C" __global__ void vyre_bench_pingpong(const unsigned* flag, unsigned* ack, unsigned n) {
    if (threadIdx.x != 0 || blockIdx.x != 0) return;
    for (unsigned i = 1; i <= n; i++) {
        while (*(const volatile unsigned*)flag != i) { }
        *(volatile unsigned*)ack = i;
        __threadfence_system();
    }
}
