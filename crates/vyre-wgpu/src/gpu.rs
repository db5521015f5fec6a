//! The device: one per process, shared by every backend instance. Adapter selection, limits,
//! the start-up canary, and the megakernel pipeline (built once, through vyre's pipeline cache
//! where the adapter supports `Features::PIPELINE_CACHE`).

use crate::shader::{self, MAX_PAGES};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use vyre_runtime::pipeline_cache::{BlobMeta, CacheKey, PipelineCache};
use vyre_runtime::BackendError;

/// Iterations of the canary loop: more than Mesa 22.3 lavapipe's total cap of 65,535.
pub const CANARY_ITERATIONS: u32 = 100_000;
const CANARY_SEED: u32 = 0x5eed_1234;
/// Largest heap page (one storage binding) the backend uses, whatever the adapter allows.
const MAX_PAGE_BYTES: u64 = 1 << 30;
/// Storage bindings the megakernel declares: io, meta, state, and the heap pages.
const STORAGE_BINDINGS: u32 = 3 + MAX_PAGES as u32;

/// The hint for an adapter that fails the canary.
pub const LOOP_CAP_HINT: &str = "install Mesa >= 25 lavapipe (Debian 12: add `bookworm-backports` to the `Suites:` line of /etc/apt/sources.list.d/debian.sources, then `apt-get update && apt-get install -t bookworm-backports mesa-vulkan-drivers`), or use --backend cpu";

/// The megakernel pipeline, built on first use.
#[derive(Debug)]
pub struct MegakernelPipeline {
    /// The pipeline.
    pub pipeline: wgpu::ComputePipeline,
    /// How it was obtained (pipeline cache outcome, build time, first dispatch time).
    pub how: String,
}

/// The shared device; the megakernel pipeline is built (and warmed up) on first use, so that
/// probing an adapter (`vyre info`, routing) never waits for a shader compiler.
#[derive(Debug)]
pub struct Gpu {
    /// The device.
    pub device: wgpu::Device,
    /// Its queue.
    pub queue: wgpu::Queue,
    /// The adapter, as the driver names it.
    pub info: wgpu::AdapterInfo,
    /// The limits the device was created with (the adapter's own, for what vyre uses).
    pub limits: wgpu::Limits,
    /// The megakernel's bind group layout.
    pub layout: wgpu::BindGroupLayout,
    /// Bytes of one heap page (one storage binding): a power of two.
    pub page_bytes: u64,
    /// How long adapter and device creation and the canary took.
    pub startup: Duration,
    pub(crate) megakernel: OnceLock<Result<MegakernelPipeline, BackendError>>,
}

impl Gpu {
    /// "lavapipe (LLVM 19.1.7), Vulkan, Cpu, driver llvmpipe / Mesa 25.0.7"
    pub fn describe(&self) -> String {
        let i = &self.info;
        format!(
            "{} ({:?}, {:?}, driver {} {})",
            i.name, i.backend, i.device_type, i.driver, i.driver_info
        )
    }

    /// Whether the adapter is a CPU implementation (lavapipe, llvmpipe, WARP).
    pub fn is_cpu(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    /// The megakernel pipeline: built once per process through vyre's pipeline cache, then one
    /// warm-up dispatch (llvmpipe compiles machine code at the first dispatch, about 35 s on a
    /// 2-core machine before Mesa's shader cache has it).
    pub fn megakernel(&self) -> Result<&MegakernelPipeline, BackendError> {
        self.megakernel
            .get_or_init(|| {
                let started = Instant::now();
                let cache = self
                    .has_pipeline_cache()
                    .then(PipelineCache::open_default);
                let (pipeline, mut how) =
                    build_pipeline(&self.device, &self.layout, &self.info, cache.as_ref());
                let warm = warm_up(&self.device, &self.queue, &self.layout, &pipeline)?;
                how += &format!(
                    "; first dispatch {:.0} ms; ready in {:.0} ms",
                    warm.as_secs_f64() * 1e3,
                    started.elapsed().as_secs_f64() * 1e3
                );
                tracing::info!(adapter = %self.describe(), pipeline = %how, "wgpu megakernel ready");
                Ok(MegakernelPipeline { pipeline, how })
            })
            .as_ref()
            .map_err(|e| e.clone())
    }
}

static SHARED: OnceLock<Result<Arc<Gpu>, BackendError>> = OnceLock::new();

/// The process's device, created (adapter, limits, canary) on first use.
pub fn shared() -> Result<Arc<Gpu>, BackendError> {
    SHARED.get_or_init(|| open().map(Arc::new)).clone()
}

fn unavailable(reason: impl Into<String>, hint: &str) -> BackendError {
    BackendError::Unavailable {
        backend: "wgpu",
        reason: reason.into(),
        hint: hint.into(),
    }
}

fn open() -> Result<Gpu, BackendError> {
    let started = Instant::now();
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        force_fallback_adapter: false,
        compatible_surface: None,
        ..Default::default()
    }))
    .map_err(|e| {
        unavailable(
            format!("no wgpu adapter: {e}"),
            "install a Vulkan driver (in CI: Mesa >= 25 lavapipe, package mesa-vulkan-drivers), or use --backend cpu",
        )
    })?;
    let info = adapter.get_info();
    let a = adapter.limits();
    if a.max_storage_buffers_per_shader_stage < STORAGE_BINDINGS {
        return Err(unavailable(
            format!(
                "adapter {} allows {} storage buffers per shader stage; the megakernel needs {STORAGE_BINDINGS}",
                info.name, a.max_storage_buffers_per_shader_stage
            ),
            "use --backend cpu",
        ));
    }
    let limits = wgpu::Limits {
        max_storage_buffers_per_shader_stage: STORAGE_BINDINGS.max(8),
        max_storage_buffer_binding_size: a.max_storage_buffer_binding_size,
        max_buffer_size: a.max_buffer_size,
        max_compute_workgroups_per_dimension: a.max_compute_workgroups_per_dimension,
        ..wgpu::Limits::downlevel_defaults()
    };
    let cacheable = adapter.features().contains(wgpu::Features::PIPELINE_CACHE);
    let features = if cacheable {
        wgpu::Features::PIPELINE_CACHE
    } else {
        wgpu::Features::empty()
    };
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("vyre"),
        required_features: features,
        required_limits: limits.clone(),
        ..Default::default()
    }))
    .map_err(|e| {
        unavailable(
            format!("cannot open {}: {e}", info.name),
            "use --backend cpu",
        )
    })?;
    run_canary(&device, &queue, &info)?;
    let page_limit = limits
        .max_storage_buffer_binding_size
        .min(limits.max_buffer_size)
        .min(MAX_PAGE_BYTES);
    // The largest power of two not above the limit, so that the shader splits an index into
    // page and word with a shift and a mask.
    let page_bytes = 1u64 << (63 - page_limit.leading_zeros());
    let layout = bind_group_layout(&device);
    let gpu = Gpu {
        device,
        queue,
        info,
        limits,
        layout,
        page_bytes,
        startup: started.elapsed(),
        megakernel: OnceLock::new(),
    };
    tracing::info!(adapter = %gpu.describe(), page_bytes, "wgpu device ready");
    Ok(gpu)
}

fn bind_group_layout(device: &wgpu::Device) -> wgpu::BindGroupLayout {
    let entry = |binding: u32, read_only: bool| wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage { read_only },
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    };
    let entries: Vec<_> = (0..STORAGE_BINDINGS).map(|b| entry(b, b == 1)).collect();
    device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some("vyre megakernel"),
        entries: &entries,
    })
}

/// The pipeline cache key of the megakernel on an adapter: `None` where the adapter has no
/// pipeline cache (wgpu supports it on Vulkan).
fn cache_key(src: &str, info: &wgpu::AdapterInfo) -> Option<(CacheKey, String)> {
    let device_key = wgpu::util::pipeline_cache_key(info)?;
    let key = CacheKey::builder()
        .part("backend", "wgpu")
        .part("wgpu", "30")
        .part("source", src)
        .part("device", &device_key)
        .part("driver", format!("{} {}", info.driver, info.driver_info))
        .finish();
    Some((key, device_key))
}

impl Gpu {
    /// Whether the device persists driver pipeline-cache data through vyre's pipeline cache.
    pub fn has_pipeline_cache(&self) -> bool {
        self.device
            .features()
            .contains(wgpu::Features::PIPELINE_CACHE)
    }

    /// The megakernel's key in vyre's pipeline cache (`None` without driver support).
    pub fn pipeline_cache_key(&self) -> Option<CacheKey> {
        if !self.has_pipeline_cache() {
            return None;
        }
        cache_key(&shader::megakernel_source(), &self.info).map(|(k, _)| k)
    }

    /// Builds the megakernel pipeline again through `cache` and says how it was obtained
    /// (for tests and `vyre info`); `None` without driver pipeline-cache support.
    pub fn build_pipeline_through(&self, cache: &PipelineCache) -> Option<String> {
        if !self.has_pipeline_cache() {
            return None;
        }
        Some(build_pipeline(&self.device, &self.layout, &self.info, Some(cache)).1)
    }
}

fn build_pipeline(
    device: &wgpu::Device,
    layout: &wgpu::BindGroupLayout,
    info: &wgpu::AdapterInfo,
    cache: Option<&PipelineCache>,
) -> (wgpu::ComputePipeline, String) {
    let started = Instant::now();
    let src = shader::megakernel_source();
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("vyre megakernel"),
        source: wgpu::ShaderSource::Wgsl(src.clone().into()),
    });
    let pl = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some("vyre megakernel"),
        bind_group_layouts: &[Some(layout)],
        immediate_size: 0,
    });
    let make = |cache: Option<&wgpu::PipelineCache>| {
        device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("vyre megakernel"),
            layout: Some(&pl),
            module: &module,
            entry_point: Some("megakernel"),
            compilation_options: Default::default(),
            cache,
        })
    };
    let keyed = cache.and_then(|c| cache_key(&src, info).map(|k| (c, k)));
    let Some((cache, (key, device_key))) = keyed else {
        return (
            make(None),
            format!(
                "built in {:.1} ms (adapter has no pipeline cache)",
                started.elapsed().as_secs_f64() * 1e3
            ),
        );
    };
    let meta = BlobMeta::new("wgpu", device_key.as_str());
    let mut built = None;
    let cached = cache.get_or_build(&key, &meta, || {
        // SAFETY: no data is passed, so there is nothing to trust.
        let c = unsafe {
            device.create_pipeline_cache(&wgpu::PipelineCacheDescriptor {
                label: Some("vyre megakernel"),
                data: None,
                fallback: true,
            })
        };
        built = Some(make(Some(&c)));
        c.get_data()
            .ok_or("the driver returned no pipeline cache data")
    });
    let how = match (&cached, built) {
        (_, Some(p)) => {
            let how = match &cached {
                Ok(c) => c.to_string(),
                Err(e) => format!("built, not cached: {e}"),
            };
            return (p, format!("driver pipeline cache: {how}"));
        }
        (Ok(c), None) => c,
        (Err(e), None) => {
            return (make(None), format!("built without cache: {e}"));
        }
    };
    // SAFETY: the bytes are pipeline cache data that `PipelineCache::get_data` returned for
    // this adapter and driver (both are part of the key, and the blob's header names the
    // device), checked against its blake3 content hash by vyre's pipeline cache; `fallback`
    // makes the driver start empty if it still rejects them.
    let c = unsafe {
        device.create_pipeline_cache(&wgpu::PipelineCacheDescriptor {
            label: Some("vyre megakernel"),
            data: Some(&how.bytes),
            fallback: true,
        })
    };
    let pipeline = make(Some(&c));
    (
        pipeline,
        format!(
            "driver pipeline cache: {how}; pipeline in {:.1} ms",
            started.elapsed().as_secs_f64() * 1e3
        ),
    )
}

/// Runs one empty epoch, so that drivers that compile at first dispatch (llvmpipe builds its
/// machine code then) do it at start-up rather than under the first slot's watchdog.
fn warm_up(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    layout: &wgpu::BindGroupLayout,
    pipeline: &wgpu::ComputePipeline,
) -> Result<Duration, BackendError> {
    let started = Instant::now();
    let buf = |size: u64| {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("vyre warm-up"),
            size,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        })
    };
    // A zero-filled io header: no slots, so every invocation leaves at once.
    let buffers: Vec<wgpu::Buffer> = (0..STORAGE_BINDINGS)
        .map(|b| {
            buf(if b == 0 {
                4 * (shader::IO_HEADER_WORDS as u64 + 16)
            } else {
                256
            })
        })
        .collect();
    let entries: Vec<_> = buffers
        .iter()
        .enumerate()
        .map(|(i, b)| wgpu::BindGroupEntry {
            binding: i as u32,
            resource: b.as_entire_binding(),
        })
        .collect();
    let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("vyre warm-up"),
        layout,
        entries: &entries,
    });
    let mut enc = device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, &bind, &[]);
        pass.dispatch_workgroups(1, 1, 1);
    }
    queue.submit([enc.finish()]);
    crate::heap::read_back(device, queue, &buffers[0], 0, 4)
        .map_err(|e| unavailable(format!("warm-up dispatch failed: {e}"), "use --backend cpu"))?;
    Ok(started.elapsed())
}

/// What the canary computes on the host: the generator state after `n` steps.
pub fn canary_expected(n: u32) -> u32 {
    (0..n).fold(CANARY_SEED, |x, _| {
        x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223)
    })
}

/// Judges a canary run: `Ok` when the shader ran all `n` iterations, else the refusal.
pub fn judge_canary(
    adapter: &str,
    n: u32,
    state: u32,
    iterations: u32,
) -> Result<(), BackendError> {
    if iterations == n && state == canary_expected(n) {
        return Ok(());
    }
    Err(unavailable(
        format!(
            "adapter {adapter} stopped a shader loop after {iterations} of {n} iterations (state {state:#x}, expected {:#x}): \
             this is the loop-iteration cap of Mesa 22.3 lavapipe (Debian 12's default), which silently cuts every \
             shader off after 65,535 loop iterations in total",
            canary_expected(n)
        ),
        LOOP_CAP_HINT,
    ))
}

fn run_canary(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    info: &wgpu::AdapterInfo,
) -> Result<(), BackendError> {
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("vyre canary"),
        source: wgpu::ShaderSource::Wgsl(shader::canary_source().into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("vyre canary"),
        layout: None,
        module: &module,
        entry_point: Some("canary"),
        compilation_options: Default::default(),
        cache: None,
    });
    let init = [CANARY_ITERATIONS, CANARY_SEED, 0, 0];
    let bytes: Vec<u8> = init.iter().flat_map(|w| w.to_le_bytes()).collect();
    let io = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("vyre canary"),
        size: 16,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    queue.write_buffer(&io, 0, &bytes);
    let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("vyre canary"),
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[wgpu::BindGroupEntry {
            binding: 0,
            resource: io.as_entire_binding(),
        }],
    });
    let mut enc = device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind, &[]);
        pass.dispatch_workgroups(1, 1, 1);
    }
    queue.submit([enc.finish()]);
    let words = crate::heap::read_back(device, queue, &io, 0, 16)
        .map_err(|e| unavailable(format!("canary readback failed: {e}"), "use --backend cpu"))?;
    let w = |i: usize| u32::from_le_bytes(words[4 * i..4 * i + 4].try_into().expect("4 bytes"));
    let adapter = format!(
        "{} (driver {} {})",
        info.name, info.driver, info.driver_info
    );
    judge_canary(&adapter, CANARY_ITERATIONS, w(2), w(3))
}
