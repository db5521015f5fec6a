//! The megakernel's source (generated protocol constants + `kernels/megakernel.cu`), its
//! NVRTC compilation to a CUBIN for the device's own architecture, and the pipeline cache in
//! front of that compilation.

use cudarc::nvrtc::{result, sys};
use std::ffi::{c_char, CStr, CString};
use std::time::{Duration, Instant};
use vyre_runtime::pipeline_cache::{BlobMeta, CacheKey, Cached, PipelineCache};

/// The kernel's source text as compiled.
pub fn kernel_source() -> String {
    format!(
        "// generated from vyre-runtime's protocol definitions and vyre-cuda's device state\n{}{}\n{}",
        vyre_runtime::protocol::generated_constants(),
        crate::ds::defines(),
        include_str!("../kernels/megakernel.cu")
    )
}

/// NVRTC failed.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// NVRTC is not installed or could not be loaded.
    #[error("NVRTC (libnvrtc) not found; install the CUDA toolkit's NVRTC or use --backend cpu")]
    NoNvrtc,
    /// The compiler rejected the source.
    #[error("NVRTC could not compile the megakernel for {arch} ({code:?}); compiler log:\n{log}")]
    Rejected {
        /// Target architecture.
        arch: String,
        /// NVRTC's result code.
        code: sys::nvrtcResult,
        /// The compiler's log.
        log: String,
    },
    /// Another NVRTC call failed.
    #[error("NVRTC call failed: {0:?}")]
    Call(sys::nvrtcResult),
}

/// The NVRTC version as "major.minor".
pub fn nvrtc_version() -> Result<String, CompileError> {
    // SAFETY: checking for the library has no preconditions.
    if !unsafe { sys::is_culib_present() } {
        return Err(CompileError::NoNvrtc);
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: writes two ints.
    unsafe {
        sys::nvrtcVersion(&mut major, &mut minor)
            .result()
            .map_err(|e| CompileError::Call(e.0))?
    };
    Ok(format!("{major}.{minor}"))
}

/// The options the megakernel is compiled with.
/// `VYRE_CUDA_DEFINES` (space-separated `-DNAME=VALUE` words) adds macro definitions, for
/// comparing kernel variants in one build (they are part of the pipeline-cache key); any
/// other word in it is ignored with a warning.
pub fn options(arch: &str) -> Vec<String> {
    let mut o = vec![
        format!("--gpu-architecture={arch}"),
        "--std=c++17".into(),
        "-default-device".into(),
    ];
    if let Ok(defs) = std::env::var("VYRE_CUDA_DEFINES") {
        for d in defs.split_whitespace() {
            if d.starts_with("-D") && d.len() > 2 {
                o.push(d.to_string());
            } else {
                tracing::warn!(
                    word = d,
                    "VYRE_CUDA_DEFINES: not a -DNAME[=VALUE] word; ignored"
                );
            }
        }
    }
    o
}

/// Compiles `src` to a CUBIN for `arch` (e.g. `sm_90`).
pub fn compile_cubin(src: &str, arch: &str) -> Result<Vec<u8>, CompileError> {
    nvrtc_version()?;
    let src = CString::new(src).expect("kernel source has no NUL");
    let name = CString::new("vyre_megakernel.cu").expect("no NUL");
    let prog = result::create_program(&src, Some(&name)).map_err(|e| CompileError::Call(e.0))?;
    let opts = options(arch);
    // SAFETY: `prog` is a live program; the options are valid C strings built by cudarc.
    let compiled = unsafe { result::compile_program(prog, &opts) };
    let out = match compiled {
        Err(e) => {
            // SAFETY: `prog` is live; the log is NUL-terminated.
            let log = unsafe { result::get_program_log(prog) }
                .map(|l| {
                    // SAFETY: NVRTC's log buffer is NUL-terminated and lives in `l`.
                    unsafe { CStr::from_ptr(l.as_ptr()) }
                        .to_string_lossy()
                        .into_owned()
                })
                .unwrap_or_default();
            Err(CompileError::Rejected {
                arch: arch.into(),
                code: e.0,
                log,
            })
        }
        Ok(()) => {
            let mut size = 0usize;
            // SAFETY: `prog` compiled for a real architecture, so it has a CUBIN of `size` bytes,
            // which we copy into a buffer of exactly that size.
            unsafe {
                sys::nvrtcGetCUBINSize(prog, &mut size)
                    .result()
                    .map_err(|e| CompileError::Call(e.0))?;
                let mut cubin = vec![0u8; size];
                sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr() as *mut c_char)
                    .result()
                    .map_err(|e| CompileError::Call(e.0))?;
                Ok(cubin)
            }
        }
    };
    // SAFETY: destroyed once, after its last use.
    let _ = unsafe { result::destroy_program(prog) };
    out
}

/// A compiled megakernel and how it was obtained.
#[derive(Debug, Clone)]
pub struct CompiledKernel {
    /// The CUBIN.
    pub cubin: std::sync::Arc<[u8]>,
    /// "warm start (disk hit) 2.1 ms", "cold start (build; ...) 612 ms", ...
    pub how: String,
    /// Time to get it.
    pub elapsed: Duration,
}

/// The cache key of the megakernel for a device.
pub fn cache_key(src: &str, arch: &str, nvrtc: &str, device_key: &str) -> CacheKey {
    CacheKey::builder()
        .part("backend", "cuda")
        .part("source", src)
        .part("options", options(arch).join(" "))
        .part("arch", arch)
        .part("nvrtc", nvrtc)
        .part("device", device_key)
        .finish()
}

/// Gets the megakernel's CUBIN for `arch` from the pipeline cache, compiling it on a miss.
pub fn megakernel(
    cache: &PipelineCache,
    arch: &str,
    device_key: &str,
) -> Result<CompiledKernel, CompileError> {
    let src = kernel_source();
    let nvrtc = nvrtc_version()?;
    let key = cache_key(&src, arch, &nvrtc, device_key);
    let meta = BlobMeta::new("cuda", device_key);
    let start = Instant::now();
    let cached: Cached = cache.get_or_build(&key, &meta, || compile_cubin(&src, arch))?;
    let elapsed = start.elapsed();
    tracing::info!(key = %key, how = %cached, "cuda megakernel");
    Ok(CompiledKernel {
        cubin: cached.bytes.clone(),
        how: cached.to_string(),
        elapsed,
    })
}

/// Compiles without the cache and times it (for `vyre info`'s cold-start figure).
pub fn time_cold_compile(arch: &str) -> Result<Duration, CompileError> {
    let start = Instant::now();
    compile_cubin(&kernel_source(), arch)?;
    Ok(start.elapsed())
}
