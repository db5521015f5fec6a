//! The cuda backend against the cpu oracle: the whole conformance suite with device buffers
//! and with host-mapped buffers, word for word and byte for byte, plus shutdown behaviour.
//! Without a CUDA driver it prints `skipped: no CUDA driver` and passes nothing.

use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use vyre_cuda::{BufferPlacement, CudaBackend, CudaProvider};
use vyre_isa::{FaultCode, Slot, SlotOp};
use vyre_runtime::pipeline_cache::PipelineCache;
use vyre_runtime::{Backend, BackendProvider, Config, Megakernel, Outcome};

fn cache() -> &'static PipelineCache {
    static CACHE: OnceLock<PipelineCache> = OnceLock::new();
    CACHE.get_or_init(PipelineCache::open_default)
}

fn cuda(placement: BufferPlacement) -> Arc<dyn Backend> {
    Arc::new(
        CudaBackend::with_cache(cache())
            .expect("cuda backend")
            .with_placement(placement),
    )
}

fn check(name: &str, ok: bool, detail: String, passed: &mut u32, failed: &mut u32) {
    if ok {
        *passed += 1;
        println!("test {name} ... ok");
    } else {
        *failed += 1;
        println!("test {name} ... FAILED\n{detail}");
    }
}

fn main() -> ExitCode {
    // A hang must fail this binary, not stall whoever runs it.
    std::thread::spawn(|| {
        std::thread::sleep(std::time::Duration::from_secs(600));
        println!("test binary deadline of 600 s passed: FAILED (a test hung)");
        println!("0 passed, 1 failed");
        std::process::exit(1);
    });
    let (mut passed, mut failed, mut skipped) = (0u32, 0u32, 0u32);
    // VYRE_CUDA_TESTS=watchdog runs only the watchdog test (for quick reruns on the GPU).
    let only_watchdog = std::env::var("VYRE_CUDA_TESTS").is_ok_and(|v| v == "watchdog");
    // The kernel compiles for Hopper wherever NVRTC is installed, GPU or not (CI installs
    // NVRTC from PyPI for this).
    match vyre_cuda::compile::nvrtc_version() {
        Err(e) => {
            println!("test megakernel_compiles_for_sm_90 ... skipped: {e}");
            skipped += 1;
        }
        Ok(v) => {
            let r =
                vyre_cuda::compile::compile_cubin(&vyre_cuda::compile::kernel_source(), "sm_90");
            let ok = matches!(&r, Ok(c) if c.len() > 1000);
            check(
                &format!("megakernel_compiles_for_sm_90 (NVRTC {v})"),
                ok,
                format!("{:?}", r.err()),
                &mut passed,
                &mut failed,
            );
        }
    }
    if let Err(e) = CudaProvider.probe() {
        println!("skipped: no CUDA driver ({e})");
        println!("{passed} passed, {failed} failed, {} skipped", skipped + 1);
        return if failed == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    if !only_watchdog {
        run_conformance_and_shutdown(&mut passed, &mut failed);
        scan_matches_cpu(&mut passed, &mut failed);
        ingest_zero_copy(&mut passed, &mut failed);
        buffer_words(&mut passed, &mut failed);
        large_batches(&mut passed, &mut failed);
        single_round_trips(&mut passed, &mut failed);
    }
    watchdog(&mut passed, &mut failed);
    println!("{passed} passed, {failed} failed, {skipped} skipped");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn run_conformance_and_shutdown(passed: &mut u32, failed: &mut u32) {
    let dir = vyre_conformance::default_dir();
    let oracle = || Arc::new(vyre_cpu::CpuBackend::new()) as Arc<dyn Backend>;
    for (label, placement) in [
        ("cuda", BufferPlacement::Device),
        ("cuda-mapped", BufferPlacement::HostMapped),
    ] {
        let make = move || cuda(placement);
        let report =
            vyre_conformance::run_suite(&dir, "cuda", &make, Some(&oracle)).expect("cases load");
        let summary = report
            .summary()
            .replace("conformance on cuda", &format!("conformance on {label}"));
        println!("{summary}");
        check(
            &format!("conformance_{label}"),
            report.failed.is_empty() && report.passed.len() > 50,
            summary,
            passed,
            failed,
        );
    }

    // Shutdown drains published work; a SHUTDOWN slot stops the kernel and later slots are
    // reported lost, never dropped.
    let mk = Megakernel::launch(cuda(BufferPlacement::Device), Config::default()).expect("launch");
    let buf = mk.create_buffer(4).unwrap();
    mk.publish_batch(&vec![Slot::new(SlotOp::AtomicAdd, &[buf, 0, 1]); 3000])
        .unwrap();
    let report = mk.shutdown().unwrap();
    let count = mk.read_buffer(buf, 0, 4).unwrap();
    check(
        "shutdown_drains_published_work",
        report.lost.is_empty() && report.drained == 3000 && count == 3000u32.to_le_bytes(),
        format!("{report:?}, count {count:?}"),
        passed,
        failed,
    );

    let mk = Megakernel::launch(
        cuda(BufferPlacement::Device),
        Config {
            claim_batch: 1,
            ..Config::default()
        },
    )
    .expect("launch");
    let mut slots = vec![Slot::new(SlotOp::Shutdown, &[])];
    slots.extend(std::iter::repeat_n(Slot::new(SlotOp::Nop, &[]), 2000));
    let done = mk.wait_range(mk.publish_batch(&slots).unwrap()).unwrap();
    let lost = done
        .iter()
        .filter(|c| matches!(c.outcome, Outcome::Fault(f) if f.code == FaultCode::Lost))
        .count();
    let ran = done
        .iter()
        .filter(|c| matches!(c.outcome, Outcome::Done(_)))
        .count();
    check(
        "shutdown_slot_stops_kernel_rest_reported_lost",
        done.len() == slots.len() && lost + ran == slots.len() && mk.health().stopped,
        format!(
            "{} completions, {ran} done, {lost} lost, health {:?}",
            done.len(),
            mk.health()
        ),
        passed,
        failed,
    );
}

fn watchdog(passed: &mut u32, failed: &mut u32) {
    // Watchdog: an injected hang is declared within the bound, the claimed and unclaimed
    // slots are reported, and a restart on a fresh CUDA backend runs every one exactly once.
    let config = Config {
        watchdog: Some(std::time::Duration::from_millis(500)),
        ..Config::default()
    };
    let mk = Megakernel::launch(cuda(BufferPlacement::Device), config).expect("launch");
    let buf = mk.create_buffer(4).unwrap();
    let add = Slot::new(SlotOp::AtomicAdd, &[buf, 0, 1]);
    mk.run_batch(&[add; 10]).unwrap();
    mk.inject_hang();
    // The device sees the injection at its next poll of the control block, while the warp
    // holding the next position reads the host's tail directly: give the injection time to
    // take effect, so that every slot below is published to a hung device.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let tickets = mk.publish_batch(&[add; 1000]).unwrap();
    println!("  watchdog: hang injected, 1000 slots published");
    let hang = mk
        .wait_range(tickets.clone())
        .err()
        .and_then(|e| match e.kind() {
            vyre_runtime::ErrorKind::Hung(r) => Some(r.clone()),
            _ => None,
        });
    println!(
        "  watchdog: hang reported: {:?}",
        hang.as_ref()
            .map(|r| (r.claimed.len(), r.unclaimed.len(), r.silent_for))
    );
    let fresh = CudaBackend::in_fresh_context(cache()).expect("a backend in a fresh context");
    println!("  watchdog: fresh-context backend ready");
    let restarted = mk.restart(Arc::new(fresh));
    println!(
        "  watchdog: restart {:?}",
        restarted
            .as_ref()
            .map(|r| (r.requeued.len(), r.possibly_partial.len()))
    );
    let done = mk.wait_range(tickets).map(|d| {
        d.iter()
            .filter(|c| matches!(c.outcome, Outcome::Done(_)))
            .count()
    });
    let count = mk.read_buffer(buf, 0, 4).unwrap();
    let ok = matches!(&hang, Some(r) if r.claimed.len() + r.unclaimed.len() == 1000)
        && matches!(&restarted, Ok(r) if r.requeued.len() == 1000)
        && matches!(done, Ok(1000))
        && count == 1010u32.to_le_bytes();
    check(
        "watchdog_detects_injected_hang_and_restart_requeues",
        ok,
        format!(
            "hang {:?}\nrestart {restarted:?}\ndone {done:?}\ncount {count:?}",
            hang.map(|r| (r.claimed.len(), r.unclaimed.len(), r.silent_for))
        ),
        passed,
        failed,
    );
    if let Ok(r) = &restarted {
        println!(
            "  hang: {} claimed (possibly partial) of {} requeued",
            r.possibly_partial.len(),
            r.requeued.len()
        );
    }
    drop(mk);
}

/// `vyre scan`'s pipeline on cuda (device and host-mapped buffers) finds exactly the matches
/// the cpu backend finds, on a generated corpus with 1,000 literal words, case-insensitive
/// literals, bounded and unbounded regexes and `\b`, in small windows so that many matches
/// straddle window boundaries, with a tiny hit region so that windows overflow and rescan.
fn scan_matches_cpu(passed: &mut u32, failed: &mut u32) {
    use std::path::{Path, PathBuf};
    use vyre_scan::pipeline::{scan, FileError, ScanOptions, Sink};

    #[derive(Default)]
    struct Collect(Vec<(PathBuf, u64, u32)>, Vec<String>);
    impl Sink for Collect {
        fn matched(&mut self, _file: u64, path: &Path, end: u64, rule: u32) {
            self.0.push((path.to_path_buf(), end, rule));
        }
        fn file_done(&mut self, _: u64, _: &Path, _: u64) {}
        fn file_error(&mut self, _file: u64, e: &FileError) {
            self.1.push(e.to_string());
        }
    }

    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut words = std::collections::BTreeSet::new();
    while words.len() < 1000 {
        let n = 4 + rnd() % 5;
        words.insert(
            (0..n)
                .map(|_| (b'a' + (rnd() % 8) as u8) as char)
                .collect::<String>(),
        );
    }
    let mut toml = String::new();
    for (i, w) in words.iter().enumerate() {
        toml.push_str(&format!("[[rule]]\nname = \"w{i}\"\nliteral = \"{w}\"\n"));
    }
    toml.push_str(concat!(
        "[[rule]]\nname = \"ci\"\nliteral = \"GaBe\"\ncase_insensitive = true\n",
        "[[rule]]\nname = \"digits\"\nregex = \"k[0-9]{3,6}\"\n",
        "[[rule]]\nname = \"unbounded\"\nregex = \"<[a-h ]*>\"\n",
        "[[rule]]\nname = \"word\"\nregex = \"(?-u:\\\\b)[a-h]{2}(?-u:\\\\b)\"\n",
    ));
    let rules = vyre_scan::RuleSet::parse_toml(&toml, "cuda test").expect("rules parse");
    let compiled = vyre_scan::compile(&rules, &vyre_scan::Limits::default()).expect("compile");
    let dir = std::env::temp_dir().join(format!("vyre-cuda-scan-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let alphabet = b"abcdefgh abcdefgh <>k0123456789 GABEgabe\n\x00\xff";
    let mut total = 0usize;
    for (i, len) in [0usize, 1, 100, 4095, 4096, 4097, 65_536, 1_000_003, 8 << 20]
        .into_iter()
        .enumerate()
    {
        let data: Vec<u8> = (0..len)
            .map(|_| alphabet[(rnd() % alphabet.len() as u64) as usize])
            .collect();
        total += len;
        std::fs::write(dir.join(format!("f{i}")), data).unwrap();
    }
    let run = |backend: Arc<dyn Backend>, opts: &ScanOptions| {
        let config = vyre_scan::pipeline::megakernel_config(backend.name());
        let mk = Megakernel::launch(backend, config).expect("launch");
        let mut c = Collect::default();
        let t = std::time::Instant::now();
        let summary = scan(&mk, &compiled, std::slice::from_ref(&dir), opts, &mut c).expect("scan");
        let secs = t.elapsed().as_secs_f64();
        mk.shutdown().expect("shutdown");
        (c, summary, secs)
    };
    let opts = ScanOptions {
        window: 4096,
        in_flight: 64,
        hit_capacity: 8,
        staging: true,
        ..ScanOptions::default()
    };
    // Reader threads interleave files, so compare the matches in (path, end, rule) order.
    let sorted = |mut c: Collect| {
        c.0.sort();
        c
    };
    let (want, ws, _) = run(Arc::new(vyre_cpu::CpuBackend::new()), &opts);
    let want = sorted(want);
    // Device and mapped buffers; hit regions in host memory laid out per batch, then at
    // fixed places (the GPU default); then the bounded groups in table sets (the GPU
    // default: one DFA_SCAN per window runs several tables); then three driver threads
    // publishing to the one megakernel together (the GPU default is two).
    for (label, placement, fixed_hit_regions, set_members, drivers) in [
        ("device", BufferPlacement::Device, false, 1, 1),
        ("mapped", BufferPlacement::HostMapped, false, 1, 1),
        (
            "device_fixed_hit_regions",
            BufferPlacement::Device,
            true,
            1,
            1,
        ),
        ("device_table_sets", BufferPlacement::Device, true, 4, 1),
        ("device_three_drivers", BufferPlacement::Device, true, 4, 3),
    ] {
        let opts = ScanOptions {
            fixed_hit_regions,
            set_members,
            drivers,
            readers: 6,
            ..opts.clone()
        };
        let (got, gs, secs) = run(cuda(placement), &opts);
        let got = sorted(got);
        let first_diff = want.0.iter().zip(&got.0).position(|(a, b)| a != b);
        check(
            &format!("scan_matches_cpu_{label}"),
            got.0 == want.0 && got.1.is_empty() && gs.bytes == total as u64 && ws.matches > 10_000,
            format!(
                "cpu {} matches, cuda {} matches, first difference at {first_diff:?}, errors {:?}, {secs:.2} s",
                want.0.len(),
                got.0.len(),
                got.1
            ),
            passed,
            failed,
        );
        println!(
            "  scan on cuda-{label}: {} matches, {} bytes, {secs:.2} s",
            gs.matches, gs.bytes
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// io_uring ingest straight into registered pinned memory that the persistent kernel reads in
/// place (`register_host_region`, cuMemHostRegister while the kernel runs): every chunk is
/// hashed by a HASH64 slot on the GPU and must equal xxh64 of a plain read of the same bytes.
fn ingest_zero_copy(passed: &mut u32, failed: &mut u32) {
    use vyre_ingest::{GpuStream, Ingest, IngestConfig, StreamEvent};
    let dir = std::env::temp_dir().join(format!("vyre-cuda-ingest-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut paths = Vec::new();
    let mut x = 0x9e37_79b9u64;
    for (i, len) in [
        0usize,
        1,
        4095,
        4097,
        1 << 20,
        (1 << 20) + 1,
        64 << 20,
        256 << 20,
    ]
    .into_iter()
    .enumerate()
    {
        let data: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let p = dir.join(format!("f{i}"));
        std::fs::write(&p, &data).unwrap();
        paths.push(p);
    }
    let mk = Megakernel::launch(cuda(BufferPlacement::Device), Config::default()).expect("launch");
    let seed = 7u32;
    let mut hashes: Vec<(u64, u64, usize, u64)> = Vec::new();
    let mut errors = Vec::new();
    let t = std::time::Instant::now();
    let result = Ingest::paths(IngestConfig::default(), paths.clone())
        .map_err(|e| e.to_string())
        .and_then(|ingest| GpuStream::new(&mk, ingest).map_err(|e| e.to_string()))
        .and_then(|stream| {
            stream
                .run(
                    |chunk, handle| {
                        vec![Slot::new(
                            SlotOp::Hash64,
                            &[handle, chunk.region_offset() as u32, chunk.len as u32, seed],
                        )]
                    },
                    |e| match e {
                        StreamEvent::ChunkDone {
                            file_id,
                            file_offset,
                            len,
                            completions,
                        } => match completions[0].outcome {
                            Outcome::Done(r) => hashes.push((
                                file_id,
                                file_offset,
                                len,
                                u64::from(r[0]) | u64::from(r[1]) << 32,
                            )),
                            other => errors.push(format!("{other:?}")),
                        },
                        StreamEvent::Error(e) => errors.push(e.to_string()),
                        StreamEvent::End(_) => {}
                    },
                )
                .map_err(|e| e.to_string())
        });
    let secs = t.elapsed().as_secs_f64();
    let _ = mk.shutdown();
    let mut bad = errors.clone();
    let mut bytes = 0u64;
    if result.is_ok() {
        for &(file, off, len, h) in &hashes {
            let data = std::fs::read(&paths[file as usize]).unwrap();
            let want =
                xxhash_rust::xxh64::xxh64(&data[off as usize..off as usize + len], seed.into());
            if want != h {
                bad.push(format!("file {file} at {off}+{len}: {h:#x} != {want:#x}"));
            }
            bytes += len as u64;
        }
    }
    let total: u64 = paths
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    check(
        "ingest_zero_copy_hashes_match_plain_reads",
        result.is_ok() && bad.is_empty() && bytes == total,
        format!(
            "{result:?}; {} chunks; {bytes} of {total} bytes; problems: {bad:?}",
            hashes.len()
        ),
        passed,
        failed,
    );
    // A correctness test, not a benchmark: one slot hashes a whole chunk serially, so its time
    // says nothing about the path's rate (`vyre bench ingest --backend cuda` measures that).
    println!("  ingest → registered region → HASH64 on the GPU: {bytes} bytes checked in {secs:.2} s (not a benchmark: see `vyre bench ingest --backend cuda`)");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `write_buffer_words` into host-mapped and device buffers: the words land where asked and
/// nowhere else; a word past the end is an error that writes none of them.
fn buffer_words(passed: &mut u32, failed: &mut u32) {
    let backend = cuda(BufferPlacement::Device);
    let words = [(0u64, 0x0403_0201u32), (12, 7), (60, u32::MAX)];
    let mut expect = vec![0u8; 64];
    for &(at, v) in &words {
        expect[at as usize..at as usize + 4].copy_from_slice(&v.to_le_bytes());
    }
    let host = backend.create_host_buffer(64).expect("host buffer");
    let device = backend.create_buffer(64).expect("device buffer");
    for (what, handle) in [
        ("host", host.expect("cuda has host buffers")),
        ("device", device),
    ] {
        let wrote = backend.write_buffer_words(handle, &words);
        let got = backend.read_buffer(handle, 0, 64);
        let bad = backend.write_buffer_words(handle, &[(4, 9), (61, 1)]);
        let after = backend.read_buffer(handle, 0, 64);
        let ok = wrote.is_ok()
            && got.as_ref().is_ok_and(|g| *g == expect)
            && bad.is_err()
            && after.as_ref().is_ok_and(|g| *g == expect);
        check(
            &format!("write_buffer_words_{what}"),
            ok,
            format!("wrote {wrote:?}, read {got:?}, bad write {bad:?}, then {after:?}"),
            passed,
            failed,
        );
    }
}

fn large_batches(passed: &mut u32, failed: &mut u32) {
    // Batches large enough for the host pool: a batch published whole (`publish_batch_whole`)
    // is written with non-temporal stores and its publish stamps withheld, the others with
    // ordinary stores while the device runs them; `run_batch_into` reuses its vector. Every
    // slot's words must reach the device whole and run only once published. Slot k loads word k % 4093 of a buffer holding a distinct value
    // per word (4093 does not divide the ring's capacity, so a stale line from the last lap
    // would load another word).
    const WORDS: u32 = 4093;
    let value = |i: u32| i.wrapping_mul(2_654_435_761) ^ 0x5a5a_5a5a;
    // A ring of 65,536 and 8 host threads: publishes of 8,192 slots or more go through the
    // pool, and so do `run_batch` calls of 16,384 or more (the default ring of 4,096 would
    // take the serial path, 64 slots per write, and never stream).
    let config = Config {
        capacity: 65_536,
        host_threads: Some(8),
        ..Config::default()
    };
    let capacity = config.capacity as usize;
    let mk = Megakernel::launch(cuda(BufferPlacement::Device), config).expect("launch");
    let buf = mk.create_buffer(u64::from(WORDS) * 4).unwrap();
    let data: Vec<u8> = (0..WORDS).flat_map(|i| value(i).to_le_bytes()).collect();
    mk.write_buffer(buf, 0, &data).unwrap();
    let slots = |n: usize| -> Vec<Slot> {
        (0..n as u32)
            .map(|k| Slot::new(SlotOp::LoadU32, &[buf, 4 * (k % WORDS)]))
            .collect()
    };
    let wrong = |got: &[vyre_runtime::Completion]| {
        got.iter()
            .enumerate()
            .filter(|(k, c)| c.outcome != Outcome::Done([value(*k as u32 % WORDS), 0, 0, 0]))
            .count()
    };
    let mut reused = Vec::new();
    for (what, n) in [
        ("run_batch_within_the_ring", capacity / 2),
        ("run_batch_larger_than_the_ring", 3 * capacity + 5),
        ("publish_batch_then_wait_range", capacity - 7),
        ("publish_batch_whole_then_wait_range", capacity - 9),
        ("run_batch_into_a_reused_vector", capacity / 2 + 3),
        ("run_batch_into_the_same_vector_again", capacity / 4),
    ] {
        let batch = slots(n);
        let got = match what {
            "publish_batch_then_wait_range" => {
                mk.publish_batch(&batch).and_then(|t| mk.wait_range(t))
            }
            "publish_batch_whole_then_wait_range" => mk
                .publish_batch_whole(&batch)
                .and_then(|t| mk.wait_range(t)),
            w if w.starts_with("run_batch_into") => mk
                .run_batch_into(&batch, &mut reused)
                .map(|()| std::mem::take(&mut reused)),
            _ => mk.run_batch(&batch),
        };
        let (count, bad) = got.as_ref().map_or((0, n), |g| (g.len(), wrong(g)));
        check(
            &format!("large_batch_{what}"),
            count == n && bad == 0,
            format!(
                "{n} slots: {count} completions, {bad} wrong; first: {:?}",
                got.as_ref().map(|g| g.iter().take(3).collect::<Vec<_>>())
            ),
            passed,
            failed,
        );
        if let Ok(g) = got {
            reused = g; // the next run_batch_into reuses it (larger, then smaller)
        }
    }
    mk.shutdown().expect("shutdown");
}

fn single_round_trips(passed: &mut u32, failed: &mut u32) {
    // Slots published one at a time, each waited for: the hot warp's line poll finds them, and
    // a well-formed NOP is completed where the poll saw it (VYRE_FAST_NOP). Malformed NOPs
    // (a flag, an argument word) must still fault exactly as on the cpu oracle, other opcodes
    // between them must run, and the done, fault and per-opcode counters must count every slot
    // once. The cuda run is traced: a NOP completed by the fast path leaves stamps 2, 0, 3, 1
    // and 4 equal (no run_lanes stages), so the test also sees which path each slot took.
    let nop = Slot::new(SlotOp::Nop, &[]);
    let mut flagged = nop;
    flagged.flags = 1;
    let (mut word0, mut word7) = (nop, nop);
    word0.args[0] = 5;
    word7.args[7] = 1;
    let mix = |buf: u32| {
        [
            (nop, true),
            (nop.with_priority(7), true),
            (flagged, false),
            (word0, false),
            (nop, true),
            (word7, false),
            (Slot::new(SlotOp::LoadU32, &[buf, 4]), false),
            (nop, true),
        ]
    };
    let n = 3_000;
    // (outcome, took the fast path) per slot; the done, fault and per-opcode counters.
    type Run = (Vec<(Outcome, Option<bool>)>, (u32, u32, Vec<u32>));
    let run = |backend: Arc<dyn Backend>, traced: Option<&CudaBackend>| -> Result<Run, String> {
        let mk = Megakernel::launch(backend, Config::default()).map_err(|e| e.to_string())?;
        let buf = mk.create_buffer_with(8, &[1, 0, 0, 0, 2, 0, 0, 0]).unwrap();
        let mix = mix(buf);
        let mut last = traced.and_then(|c| c.trace_words()).map_or(0, |w| w[5]);
        let mut got = Vec::with_capacity(n);
        for i in 0..n {
            let c = mk
                .publish(mix[i % mix.len()].0)
                .and_then(|t| mk.wait_timeout(t, Some(std::time::Duration::from_secs(10))))
                .map_err(|e| format!("slot {i}: {e}"))?;
            let fast = traced.and_then(|cuda| {
                let w = cuda.trace_words_after(last)?;
                last = w[5];
                Some(w[2] == w[0] && w[0] == w[3] && w[3] == w[1] && w[1] == w[4])
            });
            got.push((c.outcome, fast));
        }
        // The device adds its counts after a few idle rounds and mirrors them to the host.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while mk.stats().done != n as u32 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        // The per-opcode counters are added before the done count, and mirrored with it.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let s = mk.stats();
        mk.shutdown().map_err(|e| e.to_string())?;
        Ok((got, (s.done, s.faults, s.op_counts)))
    };
    let want = run(Arc::new(vyre_cpu::CpuBackend::new()), None);
    // Tracing is chosen when a backend is created; only this one has it.
    std::env::set_var("VYRE_CUDA_TRACE", "1");
    let traced = CudaBackend::with_cache(cache()).map(Arc::new);
    std::env::remove_var("VYRE_CUDA_TRACE");
    let got = traced
        .map_err(|e| e.to_string())
        .and_then(|b| run(b.clone(), Some(&b)));
    let (Ok((want, want_counts)), Ok((got, got_counts))) = (&want, &got) else {
        check(
            "single_round_trips_match_cpu_with_counters",
            false,
            format!(
                "cpu: {:?}\ncuda: {:?}",
                want.as_ref().err(),
                got.as_ref().err()
            ),
            passed,
            failed,
        );
        return;
    };
    let differ = want.iter().zip(got).filter(|(a, b)| a.0 != b.0).count();
    check(
        "single_round_trips_match_cpu_with_counters",
        differ == 0 && got.len() == want.len() && got_counts == want_counts,
        format!(
            "{differ} outcomes differ (first: {:?}); counters (done, faults, per op): cuda {got_counts:?}, cpu {want_counts:?}",
            want.iter().zip(got).find(|(a, b)| a.0 != b.0)
        ),
        passed,
        failed,
    );
    // Which path each slot took. Well-formed NOPs: the fast path for most (a NOP the line poll
    // missed, found through the tail instead, runs through run_lanes), or for none when the
    // kernel is built with VYRE_FAST_NOP=0. Anything else: never.
    let off = std::env::var("VYRE_CUDA_DEFINES").is_ok_and(|d| d.contains("VYRE_FAST_NOP=0"));
    let fast_mix = mix(0).map(|(_, fast)| fast);
    let (mut nops, mut nops_fast, mut others_fast, mut unknown) = (0, 0, 0, 0);
    for (i, (_, fast)) in got.iter().enumerate() {
        match (fast_mix[i % fast_mix.len()], fast) {
            (_, None) => unknown += 1,
            (true, Some(f)) => {
                nops += 1;
                nops_fast += usize::from(*f);
            }
            (false, Some(f)) => others_fast += usize::from(*f),
        }
    }
    let nops_ok = if off {
        nops_fast == 0
    } else {
        nops_fast * 2 >= nops
    };
    check(
        "single_round_trips_fast_nop_only_for_well_formed_nops",
        nops_ok && others_fast == 0 && unknown * 100 <= n,
        format!(
            "well-formed NOPs: {nops_fast} of {nops} completed by the fast path (VYRE_FAST_NOP=0: {off}); \
             other slots: {others_fast} by the fast path; {unknown} of {n} without fresh stamps"
        ),
        passed,
        failed,
    );
}
