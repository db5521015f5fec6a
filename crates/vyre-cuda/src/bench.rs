//! Round-trip baselines measured on the same GPU in the same process as the megakernel:
//! one kernel launch + 4-byte readback + sync per op, CUDA-graph replay + sync per op, and a
//! raw mapped-memory ping-pong (the floor for any host<->GPU handshake). Run them while no
//! megakernel holds the GPU. [`htod_rate`] is the host-to-device copy rate from pinned
//! memory, the ceiling `vyre bench ingest --backend cuda` compares file ingest with.

use crate::driver::{DeviceAlloc, MappedHost};
use cudarc::driver::{sys, LaunchConfig, PushKernelArg};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use vyre_runtime::BackendError;

/// Per-op latencies of each baseline, in order of measurement.
#[derive(Debug, Default)]
pub struct Baselines {
    /// Kernel launch + 4-byte device-to-host copy + stream sync.
    pub launch_readback: Vec<Duration>,
    /// Graph replay (one kernel node) + stream sync.
    pub graph_replay: Vec<Duration>,
    /// Host writes a mapped word; a spinning GPU thread answers in another.
    pub pingpong: Vec<Duration>,
}

fn err(what: &str, e: impl std::fmt::Debug) -> BackendError {
    BackendError::Launch(format!("cuda bench: {what}: {e:?}"))
}

/// Measures `iters` ops of each baseline after `iters / 10` warm-up ops.
pub fn baselines(iters: usize) -> Result<Baselines, BackendError> {
    let (ctx, info) = crate::backend::open_device()?;
    let arch = format!("sm_{}{}", info.cc.0, info.cc.1);
    let cubin = crate::compile::compile_cubin(include_str!("../kernels/baselines.cu"), &arch)
        .map_err(|e| err("compile", e.to_string()))?;
    let module = ctx
        .load_module(cudarc::nvrtc::Ptx::from_binary(cubin))
        .map_err(|e| err("load", e))?;
    let nop = module
        .load_function("vyre_bench_nop")
        .map_err(|e| err("nop", e))?;
    let pingpong = module
        .load_function("vyre_bench_pingpong")
        .map_err(|e| err("pingpong", e))?;
    let stream = ctx.new_stream().map_err(|e| err("stream", e))?;
    let out = DeviceAlloc::zeroed(&ctx, &stream, 4).map_err(|e| err("alloc", e))?;
    let one = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (32, 1, 1),
        shared_mem_bytes: 0,
    };
    let warm = (iters / 10).max(10);
    let mut b = Baselines::default();

    // Launch + readback.
    let out_ptr = out.ptr();
    let mut word = [0u8; 4];
    for i in 0..warm + iters {
        let t = Instant::now();
        let mut l = stream.launch_builder(&nop);
        l.arg(&out_ptr);
        // SAFETY: the kernel takes one pointer to a live 4-byte device allocation.
        unsafe { l.launch(one) }.map_err(|e| err("launch", e))?;
        out.read(&stream, 0, &mut word)
            .map_err(|e| err("readback", e))?;
        if i >= warm {
            b.launch_readback.push(t.elapsed());
        }
    }
    if u32::from_le_bytes(word) as usize != warm + iters {
        return Err(err(
            "launch baseline",
            format!(
                "counter {} after {} launches",
                u32::from_le_bytes(word),
                warm + iters
            ),
        ));
    }

    // Graph replay.
    stream
        .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .map_err(|e| err("capture", e))?;
    let mut l = stream.launch_builder(&nop);
    l.arg(&out_ptr);
    // SAFETY: as above; captured, not run.
    unsafe { l.launch(one) }.map_err(|e| err("captured launch", e))?;
    let graph = stream
        .end_capture(sys::CUgraphInstantiate_flags(0))
        .map_err(|e| err("end capture", e))?
        .ok_or_else(|| err("end capture", "empty graph"))?;
    for i in 0..warm + iters {
        let t = Instant::now();
        graph.launch().map_err(|e| err("graph launch", e))?;
        stream.synchronize().map_err(|e| err("sync", e))?;
        if i >= warm {
            b.graph_replay.push(t.elapsed());
        }
    }

    // Ping-pong through mapped memory.
    let flag = MappedHost::zeroed(&ctx, 16).map_err(|e| err("mapped flag", e))?;
    let ack = MappedHost::zeroed(&ctx, 16).map_err(|e| err("mapped ack", e))?;
    let n = (warm + iters) as u32;
    let (flag_ptr, ack_ptr) = (flag.dev_ptr(), ack.dev_ptr());
    let mut l = stream.launch_builder(&pingpong);
    l.arg(&flag_ptr).arg(&ack_ptr).arg(&n);
    // SAFETY: two pointers to live mapped words and a count; the kernel ends after n rounds,
    // and we wait for it before the memory is freed.
    unsafe { l.launch(one) }.map_err(|e| err("pingpong launch", e))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    for i in 1..=n {
        let t = Instant::now();
        flag.words()[0].store(i, Ordering::Release);
        while ack.words()[0].load(Ordering::Acquire) != i {
            if Instant::now() > deadline {
                // The kernel still spins on `flag`; freeing its memory would wait for it
                // forever, so leak the three allocations and report.
                std::mem::forget(flag);
                std::mem::forget(ack);
                std::mem::forget(out);
                return Err(err(
                    "pingpong",
                    format!("no answer to round {i} within 30 s"),
                ));
            }
            std::hint::spin_loop();
        }
        if i as usize > warm {
            b.pingpong.push(t.elapsed());
        }
    }
    stream.synchronize().map_err(|e| err("pingpong sync", e))?;
    Ok(b)
}

/// Page-locked host memory from `cuMemHostAlloc` (flags 0), freed on drop.
struct Pinned {
    ptr: *mut u8,
    len: usize,
    ctx: std::sync::Arc<cudarc::driver::CudaContext>,
}

impl Pinned {
    fn new(
        ctx: &std::sync::Arc<cudarc::driver::CudaContext>,
        len: usize,
    ) -> Result<Pinned, BackendError> {
        ctx.bind_to_thread().map_err(|e| err("bind context", e))?;
        // SAFETY: a plain pinned allocation of a positive size, freed exactly once in Drop.
        let ptr = unsafe { cudarc::driver::result::malloc_host(len, 0) }
            .map_err(|e| err("pinned host allocation (cuMemHostAlloc)", e))?
            .cast::<u8>();
        Ok(Pinned {
            ptr,
            len,
            ctx: ctx.clone(),
        })
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: `len` bytes allocated in `new`, owned by `self`, borrowed exclusively here.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: as in `bytes_mut`, shared.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
        // SAFETY: allocated by malloc_host in `new`, freed only here; every copy reading it
        // was synchronised before `htod_rate` returned.
        let _ = unsafe { cudarc::driver::result::free_host(self.ptr.cast()) };
    }
}

/// The host-to-device copy rate from page-locked host memory, in bytes per second, with the
/// driver calls the backend uses: `cuMemHostAlloc`'d source, `cuMemAlloc`'d destination, one
/// `cuMemcpyHtoDAsync` of `bytes` (at least 1 MiB) on a stream, then a stream
/// synchronise. The median of five timed copies after one warm-up copy; the first and last
/// 64 KiB are read back and compared, so a copy that moved nothing is an error, not a rate.
/// Copies run on the copy engines, so a running megakernel does not stop them, but it shares
/// the PCIe link: measure before launching one for a clean figure.
pub fn htod_rate(bytes: usize) -> Result<f64, BackendError> {
    let bytes = bytes.max(1 << 20);
    let (ctx, _) = crate::backend::open_device()?;
    let stream = ctx.new_stream().map_err(|e| err("stream", e))?;
    let dev = DeviceAlloc::zeroed(&ctx, &stream, bytes)
        .map_err(|e| err(&format!("device allocation of {bytes} bytes"), e))?;
    let mut host = Pinned::new(&ctx, bytes)?;
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for w in host.bytes_mut().chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        w.copy_from_slice(&x.to_le_bytes()[..w.len()]);
    }
    let mut rates = Vec::new();
    for i in 0..6 {
        ctx.bind_to_thread().map_err(|e| err("bind context", e))?;
        let t = Instant::now();
        // SAFETY: the destination is `bytes` of device memory (`dev`), the source `bytes` of
        // pinned host memory that lives until the stream is synchronised right after.
        unsafe {
            cudarc::driver::result::memcpy_htod_async(dev.ptr(), host.bytes(), stream.cu_stream())
                .map_err(|e| err("host-to-device copy (cuMemcpyHtoDAsync)", e))?;
            cudarc::driver::result::stream::synchronize(stream.cu_stream())
                .map_err(|e| err("stream synchronise", e))?;
        }
        let secs = t.elapsed().as_secs_f64();
        if i > 0 {
            rates.push(bytes as f64 / secs);
        }
    }
    let check = bytes.min(64 << 10);
    let mut back = vec![0u8; check];
    for at in [0, bytes - check] {
        dev.read(&stream, at, &mut back)
            .map_err(|e| err("reading the copy back", e))?;
        if back[..] != host.bytes()[at..at + check] {
            return Err(err(
                "host-to-device copy check",
                format!("the device holds other bytes than were copied at offset {at}"),
            ));
        }
    }
    rates.sort_by(f64::total_cmp);
    Ok(rates[rates.len() / 2])
}

/// Cold start (NVRTC compile, no cache) and two starts through the pipeline cache, for
/// `vyre info`: lines of text.
pub fn startup_report() -> Result<Vec<String>, BackendError> {
    let (_, info) = crate::backend::open_device()?;
    let arch = format!("sm_{}{}", info.cc.0, info.cc.1);
    let cold =
        crate::compile::time_cold_compile(&arch).map_err(|e| err("compile", e.to_string()))?;
    // Two cache instances over the same directory: the first start builds or finds the blob
    // on disk, the second (like a new process) finds it on disk.
    let mut lines = vec![format!(
        "cold start: NVRTC compile of the megakernel for {arch}: {:.1} ms",
        cold.as_secs_f64() * 1e3
    )];
    let mut storage = String::new();
    for which in [
        "first start through the pipeline cache",
        "second start, new cache instance",
    ] {
        let cache = vyre_runtime::pipeline_cache::PipelineCache::open_default();
        let b = crate::CudaBackend::with_cache(&cache)?;
        lines.push(format!("{which}: {}", b.kernel().how));
        storage = cache.storage().to_string();
    }
    lines.push(format!("pipeline cache: {storage}"));
    Ok(lines)
}
