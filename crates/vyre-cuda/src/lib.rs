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
    pub const HEAD: usize = 0;
    pub const TAIL: usize = 1;
    pub const SHUTDOWN: usize = 2;
    pub const DONE: usize = 3;
    pub const FAULTS: usize = 4;
    pub const EPOCH: usize = 5;
    pub const WORKERS: usize = 6;
    pub const DEBUG_WRITE: usize = 7;
    pub const DEBUG_DROPPED: usize = 8;
    pub const HEARTBEAT: usize = 9;
    pub const HANG: usize = 10;
    pub const ABORT: usize = 11;
    /// IO_READ: next request record index (mirrored to the control block's IO_REQ_WRITE).
    pub const IO_REQ_WRITE: usize = 12;
    /// IO_READ: next resume entry to take (mirrored to RESUME_HEAD).
    pub const RESUME_HEAD: usize = 13;
    /// IO_READ: the host's RESUME_TAIL as the control warp last read it.
    pub const RESUME_TAIL: usize = 14;
    pub const OP_COUNTERS: usize = 16;
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
            ("OP_COUNTERS", OP_COUNTERS),
            ("WORDS", WORDS),
        ]
        .iter()
        .map(|(k, v)| format!("#define DS_{k} {v}\n"))
        .collect()
    }
}
