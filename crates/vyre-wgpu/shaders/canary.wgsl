// Start-up canary: one invocation runs io[0] iterations of a linear congruential generator
// (which no compiler can fold away) and writes the state and the iteration count. Mesa 22.3's
// lavapipe silently stops every shader after 65,535 loop iterations in total; the host compares
// both words with its own computation and refuses such an adapter.

@group(0) @binding(0) var<storage, read_write> io: array<u32>;

@compute @workgroup_size(1)
fn canary() {
    let n = io[0];
    var x = io[1];
    var i = 0u;
    loop {
        if (i >= n) {
            break;
        }
        x = x * 1664525u + 1013904223u;
        i += 1u;
    }
    io[2] = x;
    io[3] = i;
}
