//! Experiment (issue 5, wgpu): can a wgpu `MAP_WRITE | COPY_SRC` buffer's mapped range be the
//! destination of O_DIRECT file reads, saving `queue.write_buffer`'s host copy? Reads FILE
//! twice into a STORAGE buffer on the process's wgpu device and prints rate and CPU:
//!
//! - `write_buffer`: O_DIRECT `pread` into page-aligned host memory, then `queue.write_buffer`
//!   (one host copy into wgpu's staging memory) and a submit;
//! - `mapped`: O_DIRECT `pread` straight into the mapped range of a `MAP_WRITE | COPY_SRC`
//!   buffer (pointer from `get_mapped_range_mut().slice(..).as_raw_ptr()`), unmap,
//!   `copy_buffer_to_buffer` into the storage buffer, submit, `map_async` again.
//!
//! Each round's last staging-sized piece is read back and compared with the file.
//! `cargo run --release -p vyre-wgpu --example mapped_read_target -- FILE [STAGING_MIB]`

use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::time::Instant;

fn cpu() -> f64 {
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

/// O_DIRECT reads of `dst.len()` bytes at `off` in 1 MiB pieces; returns bytes read.
fn read_direct(f: &std::fs::File, dst: &mut [u8], off: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < dst.len() {
        let n = (dst.len() - done).min(1 << 20);
        let got = f.read_at(&mut dst[done..done + n], off + done as u64)?;
        if got == 0 {
            break;
        }
        done += got;
    }
    Ok(done)
}

fn readback(gpu: &vyre_wgpu::Gpu, src: &wgpu::Buffer, off: u64, len: u64) -> Vec<u8> {
    let rb = gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("readback"),
        size: len,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut enc = gpu.device.create_command_encoder(&Default::default());
    enc.copy_buffer_to_buffer(src, off, &rb, 0, len);
    gpu.queue.submit([enc.finish()]);
    rb.slice(..)
        .map_async(wgpu::MapMode::Read, |r| r.expect("map readback"));
    gpu.device
        .poll(wgpu::PollType::wait_indefinitely())
        .expect("poll");
    let v = rb.slice(..).get_mapped_range().expect("mapped").to_vec();
    v
}

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .expect("usage: mapped_read_target FILE [STAGING_MIB]");
    let staging: u64 = args.next().map_or(64, |s| s.parse().expect("MiB")) << 20;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .expect("open O_DIRECT");
    let size = file.metadata().expect("fstat").len() / staging * staging;
    assert!(size > 0, "the file must hold at least one staging buffer");
    let gpu = vyre_wgpu::device().expect("a wgpu device");
    println!("device: {}", gpu.describe());
    let storage = gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("storage"),
        size: staging,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let mut want = vec![0u8; staging as usize];
    let plain = std::fs::File::open(&path).expect("open");
    plain
        .read_exact_at(&mut want, size - staging)
        .expect("read the last piece");

    // 1. write_buffer from page-aligned host memory.
    let layout = std::alloc::Layout::from_size_align(staging as usize, 4096).expect("layout");
    // SAFETY: a non-zero size; freed below with the same layout.
    let host = unsafe { std::alloc::alloc_zeroed(layout) };
    assert!(!host.is_null());
    // SAFETY: `host` is `staging` bytes, valid and exclusively ours until dealloc.
    let host_buf = unsafe { std::slice::from_raw_parts_mut(host, staging as usize) };
    let (c0, t) = (cpu(), Instant::now());
    let mut off = 0;
    while off < size {
        read_direct(&file, host_buf, off).expect("O_DIRECT into host memory");
        gpu.queue.write_buffer(&storage, 0, host_buf);
        gpu.queue.submit([]);
        off += staging;
    }
    gpu.device
        .poll(wgpu::PollType::wait_indefinitely())
        .expect("poll");
    let (s, c) = (t.elapsed().as_secs_f64(), cpu() - c0);
    let ok = readback(&gpu, &storage, 0, staging) == want;
    println!(
        "write_buffer: {:.2} GB/s, CPU {:.3} s/GiB, bytes equal: {ok}",
        size as f64 / s / 1e9,
        c / (size as f64 / (1u64 << 30) as f64)
    );
    // SAFETY: allocated above with this layout; no reference into it remains.
    unsafe { std::alloc::dealloc(host, layout) };

    // 2. O_DIRECT into the mapped range of a MAP_WRITE | COPY_SRC buffer.
    let stage = gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("mapped staging"),
        size: staging,
        usage: wgpu::BufferUsages::MAP_WRITE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: true,
    });
    let (c0, t) = (cpu(), Instant::now());
    let mut off = 0;
    let mut first_err = None;
    while off < size {
        {
            let mut view = stage.slice(..).get_mapped_range_mut().expect("mapped");
            let ptr = view.slice(..).as_raw_ptr().as_ptr() as *mut u8;
            if off == 0 {
                println!("mapped range at {ptr:p} ({} mod 4096)", ptr as usize % 4096);
            }
            // SAFETY: the view maps `staging` bytes for writing and lives until the end of
            // this block; the reads finish (synchronous pread) before it is dropped; nothing
            // else reads or writes the mapping meanwhile.
            let dst = unsafe { std::slice::from_raw_parts_mut(ptr, staging as usize) };
            if let Err(e) = read_direct(&file, dst, off) {
                first_err = Some(e);
                break;
            }
        }
        stage.unmap();
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(&stage, 0, &storage, 0, staging);
        gpu.queue.submit([enc.finish()]);
        stage
            .slice(..)
            .map_async(wgpu::MapMode::Write, |r| r.expect("map staging"));
        gpu.device
            .poll(wgpu::PollType::wait_indefinitely())
            .expect("poll");
        off += staging;
    }
    let (s, c) = (t.elapsed().as_secs_f64(), cpu() - c0);
    match first_err {
        Some(e) => println!(
            "mapped: O_DIRECT pread into the mapped range failed: {e} (errno {:?})",
            e.raw_os_error()
        ),
        None => {
            stage.unmap();
            let ok = readback(&gpu, &storage, 0, staging) == want;
            println!(
                "mapped: {:.2} GB/s, CPU {:.3} s/GiB, bytes equal: {ok}",
                size as f64 / s / 1e9,
                c / (size as f64 / (1u64 << 30) as f64)
            );
        }
    }
}
