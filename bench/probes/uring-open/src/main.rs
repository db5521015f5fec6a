// Open/read/close floor through io_uring (direct descriptors, per-thread rings) vs syscalls.
use io_uring::{opcode, squeue, types, IoUring};
use std::ffi::CString;
use std::io::BufRead;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

const CHUNK: usize = 64;

fn syscalls(files: &[(CString, u64)], next: &AtomicUsize, total: &AtomicU64) {
    let cap = 8 << 20;
    let mut buf = vec![0u8; cap];
    let mut at = 0usize;
    let mut got = 0u64;
    loop {
        let i = next.fetch_add(CHUNK, Ordering::Relaxed);
        if i >= files.len() {
            break;
        }
        for (p, size) in &files[i..(i + CHUNK).min(files.len())] {
            let fd = unsafe { libc::open(p.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
            if fd < 0 {
                continue;
            }
            let want = (*size as usize + 1).min(cap);
            if at + want > cap {
                at = 0;
            }
            let r = unsafe { libc::read(fd, buf.as_mut_ptr().add(at).cast(), want) };
            if r > 0 {
                got += r as u64;
                at += (r as usize + 63) & !63;
            }
            unsafe { libc::close(fd) };
        }
    }
    total.fetch_add(got, Ordering::Relaxed);
}

fn uring(files: &[(CString, u64)], next: &AtomicUsize, total: &AtomicU64, read: bool) {
    let mut ring: IoUring = IoUring::builder().setup_single_issuer().build(512).unwrap();
    ring.submitter()
        .register_files_sparse(CHUNK as u32)
        .unwrap();
    let cap = 8 << 20;
    let mut buf = vec![0u8; cap];
    let mut at = 0usize;
    let mut got = 0u64;
    let mut errs = 0u64;
    loop {
        let i = next.fetch_add(CHUNK, Ordering::Relaxed);
        if i >= files.len() {
            break;
        }
        let chunk = &files[i..(i + CHUNK).min(files.len())];
        let mut n = 0;
        for (k, (p, size)) in chunk.iter().enumerate() {
            let slot = types::DestinationSlot::try_from_slot_target(k as u32).unwrap();
            let open = opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), p.as_ptr())
                .flags(libc::O_RDONLY)
                .file_index(Some(slot))
                .build()
                .flags(squeue::Flags::IO_LINK)
                .user_data(0);
            let want = (*size as usize + 1).min(cap);
            if at + want > cap {
                at = 0;
            }
            let rd = opcode::Read::new(
                types::Fixed(k as u32),
                unsafe { buf.as_mut_ptr().add(at) },
                want as u32,
            )
            .build()
            .flags(squeue::Flags::IO_HARDLINK)
            .user_data(1);
            at += (want + 63) & !63;
            let close = opcode::Close::new(types::Fixed(k as u32))
                .build()
                .user_data(2);
            unsafe {
                let mut sq = ring.submission();
                sq.push(&open).unwrap();
                if read {
                    sq.push(&rd).unwrap();
                    n += 1;
                }
                sq.push(&close).unwrap();
            }
            n += 2;
        }
        ring.submit_and_wait(n).unwrap();
        for cqe in ring.completion() {
            if cqe.user_data() == 1 && cqe.result() > 0 {
                got += cqe.result() as u64;
            }
            if cqe.result() < 0 {
                errs += 1;
                if errs < 4 {
                    eprintln!("op {} {}", cqe.user_data(), cqe.result());
                }
            }
        }
    }
    if errs > 0 {
        eprintln!("{errs} errors");
    }
    total.fetch_add(got, Ordering::Relaxed);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let list = std::fs::File::open(&args[1]).unwrap();
    let files: Vec<(CString, u64)> = std::io::BufReader::new(list)
        .lines()
        .map(|l| {
            let l = l.unwrap();
            let size = std::fs::metadata(&l).map_or(0, |m| m.len());
            (
                CString::new(std::path::Path::new(&l).as_os_str().as_bytes()).unwrap(),
                size,
            )
        })
        .collect();
    for mode in args[2].split(',') {
        for t in args[3..].iter().map(|a| a.parse::<usize>().unwrap()) {
            for rep in 0..3 {
                let (next, total) = (AtomicUsize::new(0), AtomicU64::new(0));
                let start = Instant::now();
                std::thread::scope(|s| {
                    for _ in 0..t {
                        s.spawn(|| match mode {
                            "sys" => syscalls(&files, &next, &total),
                            "uring" => uring(&files, &next, &total, true),
                            "uring-meta" => uring(&files, &next, &total, false),
                            _ => panic!("mode"),
                        });
                    }
                });
                let dt = start.elapsed().as_secs_f64();
                let gb = total.load(Ordering::Relaxed) as f64 / 1e9;
                println!("{mode:>10} threads {t:2} rep {rep}: {dt:.4} s, {gb:.2} GB");
            }
        }
    }
}
