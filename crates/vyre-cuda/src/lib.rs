//! vyre's cuda backend: one persistent kernel, compiled at run time by NVRTC for the device's
//! own architecture, that claims ring slots from mapped pinned host memory while the host
//! publishes them.
//!
//! Without a CUDA driver or NVRTC every entry point returns a typed error with a hint; cudarc
//! is never called before the libraries are known to be present (it panics otherwise).

mod backend;
pub mod bench;
pub mod compile;
mod driver;

pub use backend::{BufferPlacement, CudaBackend, CudaProvider, DeviceInfo, Tuning};

/// Device-state words: the worker-written control words kept in device memory (claims and
/// counters would be serialised PCIe round trips on host memory) and mirrored into the host
/// control block by the control warp. Generated into the kernel as `DS_*`.
pub(crate) mod ds {
    // Three 128-byte L2 lines. The first holds what every idle worker warp polls (lanes 0..7
    // load its first eight words, which coalesce into one request per round) and is written
    // only by the control warp (TAIL, RESUME_TAIL) and on shutdown, abort, hang and IO
    // resumes; the second holds the words warps add to (ticket claims, completion counts);
    // the third the opcode counters. Polled words sharing a line with the atomics queued
    // every poll behind them in one L2 slice, the hot warp's included.
    pub const SHUTDOWN: usize = 0;
    pub const ABORT: usize = 1;
    pub const TAIL: usize = 2;
    pub const HANG: usize = 3;
    /// IO_READ: next resume entry to take (mirrored to RESUME_HEAD).
    pub const RESUME_HEAD: usize = 4;
    /// IO_READ: the host's RESUME_TAIL as the control warp last read it.
    pub const RESUME_TAIL: usize = 5;
    /// Words 0..POLLED are read together by every worker poll.
    pub const POLLED: usize = 8;
    pub const HEAD: usize = 32;
    pub const DONE: usize = 33;
    pub const FAULTS: usize = 34;
    pub const EPOCH: usize = 35;
    pub const WORKERS: usize = 36;
    pub const DEBUG_WRITE: usize = 37;
    pub const DEBUG_DROPPED: usize = 38;
    pub const HEARTBEAT: usize = 39;
    /// IO_READ: next request record index (mirrored to the control block's IO_REQ_WRITE).
    pub const IO_REQ_WRITE: usize = 40;
    pub const OP_COUNTERS: usize = 64;
    pub const WORDS: usize = OP_COUNTERS + vyre_isa::slot::COUNTED_OPCODES + 1;

    /// `#define DS_*` lines for the kernel.
    pub fn defines() -> String {
        [
            ("HEAD", HEAD),
            ("TAIL", TAIL),
            ("SHUTDOWN", SHUTDOWN),
            ("DONE", DONE),
            ("FAULTS", FAULTS),
            ("EPOCH", EPOCH),
            ("WORKERS", WORKERS),
            ("DEBUG_WRITE", DEBUG_WRITE),
            ("DEBUG_DROPPED", DEBUG_DROPPED),
            ("HEARTBEAT", HEARTBEAT),
            ("HANG", HANG),
            ("ABORT", ABORT),
            ("IO_REQ_WRITE", IO_REQ_WRITE),
            ("RESUME_HEAD", RESUME_HEAD),
            ("RESUME_TAIL", RESUME_TAIL),
            ("POLLED", POLLED),
            ("OP_COUNTERS", OP_COUNTERS),
            ("WORDS", WORDS),
        ]
        .iter()
        .map(|(k, v)| format!("#define DS_{k} {v}\n"))
        .collect()
    }
}
