//! `vyre bench ingest --backend wgpu`: issue 5's wgpu evidence ("measure the best available
//! path and document what copy remains and why"), in one run on the same files, block size
//! and queue depth:
//!
//! 1. the disk read rate: vyre ingest alone (io_uring, O_DIRECT, registered buffers), and fio
//!    with the same parameters where it is installed;
//! 2. the upload rate through wgpu: [`Megakernel::write_buffer`] on the wgpu backend (one
//!    `queue.write_buffer` into the heap: a copy into wgpu's staging memory, then the
//!    device's copy into the storage buffer at the next submission), large writes, each
//!    followed by a 4-byte read-back that waits for the copy to land, median of 5;
//! 3. the GPU alone: HASH64 over a device buffer it already holds, per slot size
//!    (`--split auto` takes the fastest);
//! 4. end to end: ingest chunks → `write_buffer` into a ring of device blocks → HASH64
//!    slots on the wgpu megakernel over each block; a block is reused only when every slot
//!    reading it has finished, the staging buffer goes back to the ingest as soon as
//!    `write_buffer` has copied it. Every hash is checked against the host's xxh64 of the
//!    same file bytes.
//!
//! wgpu cannot use the ingest region in place (`Backend::register_host_region` is
//! unsupported: wgpu 30 has no import of foreign host memory), so one host copy remains:
//! ingest region → wgpu staging memory (`crates/vyre-wgpu/README.md`, "Host data").

use crate::bench_ingest::{large_set, Args, Measure};
use crate::bench_ingest_gpu::{
    check_end_to_end, cold, disk_passes, disk_rate, fastest, fixed_split, gated, in_place_rows,
    max_split, pieces, size_name, total_bytes, Hashed, Progress, Report, MARGIN, SEED,
};
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::ops::Range;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;
use vyre_ingest::{CpuTimes, EngineKind, Event, Ingest, IngestConfig};
use vyre_isa::{Slot, SlotOp};
use vyre_runtime::{Backend, Config, Megakernel, Ticket};

/// Most bytes of one upload when measuring its rate (lavapipe's heap is 4 × 128 MiB).
const MAX_UPLOAD: usize = 256 << 20;
/// Device blocks of the end-to-end ring at most (chunks in flight on the GPU).
const MAX_DEVICE_BLOCKS: u32 = 64;

/// The upload rate: `write_buffer` of `bytes` then a 4-byte read-back that waits for it;
/// median of 5 (after one warm-up); the read-back must equal what was written.
fn upload(mk: &Megakernel, handle: u32, bytes: usize) -> Result<Measure, String> {
    let mut data = vec![0u8; bytes];
    for (i, w) in data.chunks_exact_mut(8).enumerate() {
        w.copy_from_slice(&(i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
    }
    let mut runs = Vec::new();
    for round in 0..6u8 {
        data[0] = round;
        let last = data.len() as u64 - 4;
        let cpu0 = CpuTimes::now();
        let t = Instant::now();
        mk.write_buffer(handle, 0, &data)
            .map_err(|e| format!("upload: write_buffer: {e}"))?;
        let back = mk
            .read_buffer(handle, last, 4)
            .map_err(|e| format!("upload: read-back: {e}"))?;
        let secs = t.elapsed().as_secs_f64();
        let cpu = CpuTimes::now().since(cpu0);
        let head = mk
            .read_buffer(handle, 0, 4)
            .map_err(|e| format!("upload: read-back: {e}"))?;
        if back[..] != data[last as usize..] || head[..] != data[..4] {
            return Err("upload: the bytes read back differ from those written".into());
        }
        if round > 0 {
            runs.push(Measure::timed(bytes as u64, secs, cpu));
        }
    }
    runs.sort_by(|a, b| a.secs.total_cmp(&b.secs));
    Ok(runs[runs.len() / 2])
}

/// A chunk on the GPU: its device block and the slots hashing it.
struct OnGpu {
    block: u32,
    tickets: Range<Ticket>,
    file: u64,
    offset: u64,
    len: usize,
}

/// The end-to-end pass's results.
struct E2e {
    m: Measure,
    chunks: Vec<Hashed>,
    slots: u64,
    errors: Vec<String>,
}

/// Files → io_uring O_DIRECT → ingest region → `write_buffer` → HASH64 on the GPU.
fn e2e(
    mk: &Megakernel,
    a: &Args,
    paths: &[PathBuf],
    device: (u32, u32),
    split: u32,
) -> Result<E2e, String> {
    let (handle, blocks) = device;
    let block = a.bs_kib << 10;
    let total = total_bytes(paths);
    let cfg = IngestConfig {
        queue_depth: a.qd,
        block_size: block,
        buffers: a.qd * 2,
        ..IngestConfig::default()
    };
    let (files, go) = gated(paths);
    let mut ing = Ingest::new(cfg, files).map_err(|e| format!("vyre ingest: {e}"))?;
    if let EngineKind::Plain { reason } = ing.engine() {
        return Err(format!("vyre ingest is not on io_uring here ({reason})"));
    }
    let mut free: Vec<u32> = (0..blocks).rev().collect();
    let mut on_gpu: VecDeque<OnGpu> = VecDeque::new();
    let mut chunks = Vec::new();
    let mut errors = Vec::new();
    let (mut bytes, mut slots) = (0u64, 0u64);
    let mut progress = Progress::new("end to end", total);
    let retire = |g: OnGpu,
                  free: &mut Vec<u32>,
                  chunks: &mut Vec<Hashed>,
                  errors: &mut Vec<String>|
     -> Result<(), String> {
        let done = mk
            .wait_range(g.tickets)
            .map_err(|e| format!("end to end: wait: {e}"))?;
        let hashed = Hashed::new(g.file, g.offset, g.len, done, errors);
        free.push(g.block);
        chunks.push(hashed);
        Ok(())
    };
    let cpu0 = CpuTimes::now();
    let t = Instant::now();
    drop(go);
    while let Some(e) = ing.next_event() {
        match e {
            Event::Chunk(c) => {
                while free.is_empty() {
                    let g = on_gpu.pop_front().expect("a block is busy");
                    retire(g, &mut free, &mut chunks, &mut errors)?;
                }
                let b = free.pop().expect("a free block");
                let base = b as usize * block;
                mk.write_buffer(handle, base as u64, c.bytes())
                    .map_err(|e| format!("end to end: write_buffer: {e}"))?;
                let list: Vec<Slot> = pieces(c.len, split)
                    .map(|(o, n)| {
                        Slot::new(SlotOp::Hash64, &[handle, (base + o) as u32, n as u32, SEED])
                    })
                    .collect();
                let tickets = mk
                    .publish_batch(&list)
                    .map_err(|e| format!("end to end: publish: {e}"))?;
                slots += list.len() as u64;
                bytes += c.len as u64;
                progress.tick(bytes);
                on_gpu.push_back(OnGpu {
                    block: b,
                    tickets,
                    file: c.file_id,
                    offset: c.file_offset,
                    len: c.len,
                });
                // `write_buffer` copied the bytes: the staging buffer goes back to the reader.
                drop(c);
            }
            Event::End(_) => {}
            Event::Error(e) => errors.push(e.to_string()),
        }
    }
    while let Some(g) = on_gpu.pop_front() {
        retire(g, &mut free, &mut chunks, &mut errors)?;
    }
    let secs = t.elapsed().as_secs_f64();
    let cpu = CpuTimes::now().since(cpu0);
    Ok(E2e {
        m: Measure::timed(bytes, secs, cpu),
        chunks,
        slots,
        errors,
    })
}

pub fn main(a: &Args) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let backend = Arc::new(
        vyre_wgpu::WgpuMegakernelDispatcher::new()
            .map_err(|e| format!("--backend wgpu: no usable wgpu adapter: {e}"))?,
    );
    let device = backend.capabilities().device.clone();
    measure(a, backend, device, true)
}

pub(crate) fn measure(
    a: &Args,
    backend: Arc<dyn Backend>,
    device: String,
    drop_caches: bool,
) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let block = a.bs_kib << 10;
    if a.large_files() == 0 || a.large_mib() == 0 {
        return Err("--large-files and --large-mib must be at least 1".into());
    }
    let max_split = max_split(block);
    let fixed_split = fixed_split(a)?;
    let max_bytes = backend.capabilities().max_buffer_bytes;
    let blocks = a.in_flight.clamp(1, MAX_DEVICE_BLOCKS);
    let ring_bytes = blocks as u64 * block as u64;
    let upload_bytes = (a.htod_mib << 20)
        .min(MAX_UPLOAD)
        .min(((max_bytes.saturating_sub(ring_bytes)) / 2) as usize)
        & !0xfff;
    if upload_bytes == 0 || ring_bytes > max_bytes / 2 {
        return Err(format!(
            "{blocks} device blocks of {} do not fit in the wgpu heap ({max_bytes} bytes); lower --in-flight or --bs-kib",
            size_name(block)
        )
        .into());
    }
    let set = large_set(a)?;
    let total = total_bytes(&set.paths);
    let mut notes = Vec::new();
    let (disk, fio) = disk_passes(a, &set, total, "[1/4]", drop_caches, false, &mut notes)?;

    eprintln!("[2/4] starting the megakernel on {device}; upload rate ({} MiB write_buffer + 4-byte read-back, median of 5) ...", upload_bytes >> 20);
    let mk = Megakernel::launch(
        backend,
        Config {
            capacity: (blocks as usize * max_split.min(64) as usize)
                .next_power_of_two()
                .clamp(4096, 1 << 16) as u32,
            ..Config::default()
        },
    )?;
    let ring = mk.create_buffer(ring_bytes)?;
    let up_handle = mk.create_buffer(upload_bytes as u64)?;
    let up = upload(&mk, up_handle, upload_bytes)?;
    eprintln!("    {:.2} GB/s", up.gbps());

    eprintln!("[3/4] the GPU alone: HASH64 over {blocks} device blocks, per slot size ...");
    // The first file's bytes, block by block, as the GPU's own data.
    let first = std::fs::read(&set.paths[0])?;
    let mut region = vec![0u8; ring_bytes as usize];
    for (i, b) in region.chunks_mut(block).enumerate() {
        let src = (i * block) % first.len().max(1);
        let n = b.len().min(first.len() - src);
        b[..n].copy_from_slice(&first[src..src + n]);
    }
    drop(first);
    mk.write_buffer(ring, 0, &region)?;
    let gpu_rows = in_place_rows(&mk, ring, &region, block, "block")?;
    drop(region);
    let disk_rate = disk_rate(&disk.m, fio.as_ref());
    let ceiling = disk_rate.min(up.gbps());
    // `auto` takes the fastest slot size on the GPU alone, not the fewest with a margin as the
    // cuda bench does: on an H100 through Vulkan, 16 slots per 1 MiB chunk (12.8 GB/s alone,
    // 5.9 x min(disk, upload)) reached 0.78 of the disk rate end to end and 64 slots
    // (37.6 GB/s) 0.95 (a chunk's device block is held until its slowest slot is done, and
    // an epoch's slots are claimed all at once, so shorter slots free blocks sooner).
    let (split, why) = match fixed_split {
        Some(n) => (n, "--split given".to_string()),
        None => {
            let (n, m) = fastest(&gpu_rows);
            (
                *n,
                format!(
                    "the fastest slot size on the GPU alone ({:.2} GB/s; {:.1} x min(disk, upload) = {ceiling:.2} GB/s){}",
                    m.gbps(),
                    m.gbps() / ceiling,
                    if m.gbps() < MARGIN * ceiling {
                        format!(": under {MARGIN} x, the GPU may limit this run")
                    } else {
                        String::new()
                    }
                ),
            )
        }
    };
    let gpu_best = gpu_rows
        .iter()
        .find(|(s, _)| *s == split)
        .map(|(_, m)| m.gbps());

    eprintln!(
        "[4/4] end to end: {:.2} GiB, file -> io_uring O_DIRECT -> ingest region -> write_buffer -> HASH64 on the GPU, {split} slot(s) per chunk ...",
        total as f64 / (1u64 << 30) as f64
    );
    cold(drop_caches, "end to end", &mut notes);
    let run = e2e(&mk, a, &set.paths, (ring, blocks), split)?;
    let shutdown = mk.shutdown();
    let mut problems = run.errors.clone();
    check_end_to_end(
        &mut problems,
        &set.paths,
        &run.chunks,
        split,
        run.m.bytes,
        shutdown,
    );

    let ratio = run.m.gbps() / ceiling;
    let mut r = Report::new(
        "wgpu",
        &device,
        a,
        total,
        &format!(
            "; {blocks} device blocks ({} MiB) in flight on the GPU",
            ring_bytes >> 20
        ),
        3,
    )?;
    r.disk_rows(&disk.m, fio.as_ref())?;
    r.row(
        &format!(
            "upload: Megakernel::write_buffer ({} MiB, queue.write_buffer into the heap) + 4-byte read-back, median of 5",
            upload_bytes >> 20
        ),
        &up,
    )?;
    for (s, m) in &gpu_rows {
        r.row(
            &format!(
                "GPU alone: HASH64 over device blocks (no disk, no upload), {s} slot(s) per block of {}",
                size_name(block / *s as usize)
            ),
            m,
        )?;
    }
    r.row(
        &format!(
            "**end to end**: file → io_uring O_DIRECT → ingest region → write_buffer → HASH64 on the GPU, {split} slot(s) per chunk"
        ),
        &run.m,
    )?;
    writeln!(r.t)?;
    writeln!(
        r.t,
        "- disk rate = max(vyre ingest, fio) = {disk_rate:.2} GB/s; upload = {:.2} GB/s; min = {ceiling:.2} GB/s; GPU alone at the chosen split: {}",
        up.gbps(),
        gpu_best.map_or("-".into(), |g| format!("{g:.2} GB/s"))
    )?;
    writeln!(
        r.t,
        "- **end to end / min(disk, upload) = {ratio:.2}**{}",
        match gpu_best {
            Some(g) if g < ceiling => format!(
                " (the GPU alone is slower than both here: end to end / GPU alone = {:.2})",
                run.m.gbps() / g
            ),
            _ => String::new(),
        }
    )?;
    writeln!(
        r.t,
        "- copies on this path: the disk writes the ingest region (io_uring, O_DIRECT, no CPU copy); `write_buffer` copies it into wgpu's staging memory (the one host copy: wgpu 30 cannot make foreign host memory device-visible); the device copies staging → storage buffer at the next submission"
    )?;
    r.checks(
        run.chunks.len(),
        run.slots,
        "plus every GPU-alone round and the upload read-backs",
        &problems,
    )?;
    writeln!(r.t, "- slots per chunk: {split}: {why}")?;
    writeln!(
        r.t,
        "- setup, timed apart (the reader waits for it): staging region mapped and registered with io_uring: {:.3} s for the disk pass",
        disk.setup_secs
    )?;
    writeln!(
        r.t,
        "- CPU is the whole process's (getrusage) over the timed part (the wgpu driver thread, and on lavapipe the shader threads, included); fio's is its own accounting"
    )?;
    r.finish(a, notes, fio.as_ref(), &problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench_ingest_gpu::parse_args;

    /// The whole run on the cpu backend (the same Megakernel calls as on wgpu): every step
    /// runs, every hash is checked and the report says so.
    #[test]
    fn the_wgpu_run_checks_every_hash_and_reports_the_ratio() {
        let dir =
            std::env::temp_dir().join(format!("vyre-bench-ingest-wgpu-{}", std::process::id()));
        let out = dir.join("report.md");
        let args = parse_args(&[
            "--backend",
            "wgpu",
            "--dir",
            dir.to_str().unwrap(),
            "--large-files",
            "2",
            "--large-mib",
            "3",
            "--bs-kib",
            "256",
            "--qd",
            "4",
            "--in-flight",
            "6",
            "--htod-mib",
            "4",
            "--fio",
            "/nonexistent/fio",
            "--out",
            out.to_str().unwrap(),
        ]);
        let backend = Arc::new(vyre_cpu::CpuBackend::new().with_workers(2));
        let code = measure(&args, backend, "cpu backend (test)".into(), false).unwrap();
        let report = std::fs::read_to_string(&out).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(code, ExitCode::SUCCESS, "{report}");
        assert!(
            report.contains("all equal, every byte of every file covered once"),
            "{report}"
        );
        assert!(
            report.contains("end to end / min(disk, upload) = "),
            "{report}"
        );
        assert_eq!(report.matches("GPU alone: HASH64").count(), 4, "{report}");
        let e2e = report
            .lines()
            .find(|l| l.starts_with("| **end to end**"))
            .expect("an end-to-end row");
        assert!(e2e.contains("| 0.01 |"), "6 MiB = 0.01 GiB: {e2e}");
    }
}
