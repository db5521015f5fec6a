//! UringIoService: IO_READ's reads on io_uring give the bytes (and errors) of plain
//! positional reads, whatever the offsets, lengths and destination alignment, alone and
//! end to end through a megakernel's I/O thread on the cpu backend.

mod common;

use common::write_file;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vyre_cpu::CpuBackend;
use vyre_ingest::{Direct, UringIoService, UringServiceConfig};
use vyre_isa::{Slot, SlotOp};
use vyre_runtime::{Config, FileRead, IoService, Megakernel, Outcome};

const MIB: usize = 1 << 20;

/// The reference: `pread` until `dst` is full or the file ends (nothing lies at or past
/// the largest offset the OS takes).
fn read_full_at(file: &File, offset: u64, dst: &mut [u8]) -> std::io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let max = i64::MAX as u64;
    let len = max.saturating_sub(offset).min(dst.len() as u64) as usize;
    let dst = &mut dst[..len];
    let mut done = 0;
    while done < dst.len() {
        match file.read_at(&mut dst[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// The service, or `None` (said on stderr) where io_uring is knowingly unavailable
/// (`VYRE_INGEST_SKIP_URING_TESTS=1`); otherwise its absence fails the test.
fn service(config: UringServiceConfig) -> Option<UringIoService> {
    match UringIoService::new(config) {
        Ok(s) => {
            assert!(
                s.fixed_buffers(),
                "io_uring runs but bounce buffer registration was refused (RLIMIT_MEMLOCK? run `ulimit -l unlimited`)"
            );
            Some(s)
        }
        Err(e) => {
            if std::env::var_os("VYRE_INGEST_SKIP_URING_TESTS").is_some() {
                eprintln!("SKIPPED (io_uring path): io_uring is unavailable here: {e}");
                None
            } else {
                panic!("io_uring is unavailable ({e}); set VYRE_INGEST_SKIP_URING_TESTS=1 to skip the io_uring-path tests knowingly");
            }
        }
    }
}

/// Deterministic xorshift for offsets and lengths.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A destination of `len` bytes inside `backing`: page-aligned, or `skew` bytes past a
/// page boundary.
fn dst(backing: &mut Vec<u8>, len: usize, skew: usize) -> &mut [u8] {
    backing.clear();
    backing.resize(len + 2 * 4096, 0xa5);
    let start = backing.as_ptr().align_offset(4096) + skew;
    &mut backing[start..start + len]
}

/// Files of odd sizes around the page and MiB boundaries.
fn odd_files(dir: &Path) -> Vec<PathBuf> {
    [
        0usize,
        1,
        4095,
        4096,
        4097,
        MIB - 1,
        MIB,
        MIB + 1,
        3 * MIB + 12_345,
        5 * MIB + 4095,
    ]
    .iter()
    .enumerate()
    .map(|(i, &n)| write_file(dir, &format!("f{i}"), 100 + i as u64, n))
    .collect()
}

/// Offsets around the interesting boundaries of a file of `size` bytes.
fn offsets(size: u64, rng: &mut Rng) -> Vec<u64> {
    let mut v = vec![0, 1, 4095, 4096, 4097, 8192];
    for b in [1u64 << 20, 2 << 20, 3 << 20, 5 << 20] {
        v.extend([b - 4096, b - 1, b, b + 1, b + 4096]);
    }
    v.extend([size.saturating_sub(1), size, size + 1, size + 5000]);
    v.extend((0..6).map(|_| rng.below(size + 1)));
    v.extend((0..4).map(|_| rng.below(size / 4096 + 1) * 4096));
    v
}

const LENS: [usize; 10] = [
    1,
    100,
    4095,
    4096,
    4097,
    MIB - 1,
    MIB,
    MIB + 1,
    3 * MIB,
    8192,
];

/// One request of a batch, and what a plain read gives.
struct Case {
    file: usize,
    offset: u64,
    len: usize,
    skew: usize,
}

fn check_batch(svc: &UringIoService, files: &[File], cases: &[Case]) {
    let mut backings: Vec<Vec<u8>> = cases.iter().map(|_| Vec::new()).collect();
    let mut reads: Vec<FileRead<'_>> = cases
        .iter()
        .zip(backings.iter_mut())
        .map(|(c, b)| FileRead {
            file: &files[c.file],
            offset: c.offset,
            dst: dst(b, c.len, c.skew),
        })
        .collect();
    let got = svc.read_batch(&mut reads);
    assert_eq!(got.len(), cases.len(), "one result per request");
    for ((c, r), res) in cases.iter().zip(&reads).zip(got) {
        let mut want = vec![0u8; c.len];
        let n = read_full_at(&files[c.file], c.offset, &mut want).unwrap();
        let what = format!(
            "file {} offset {} len {} skew {}",
            c.file, c.offset, c.len, c.skew
        );
        let got_n = res.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(got_n, n, "{what}: byte count differs from a plain read");
        assert!(
            r.dst[..n] == want[..n],
            "{what}: bytes differ from a plain read"
        );
    }
}

#[test]
fn batches_of_odd_reads_equal_plain_reads() {
    let Some(svc) = service(UringServiceConfig {
        queue_depth: 8,
        ..UringServiceConfig::default()
    }) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let paths = odd_files(dir.path());
    let files: Vec<File> = paths.iter().map(|p| File::open(p).unwrap()).collect();
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut cases = Vec::new();
    for (k, p) in paths.iter().enumerate() {
        let size = std::fs::metadata(p).unwrap().len();
        for (o, off) in offsets(size, &mut rng).into_iter().enumerate() {
            // Four of the lengths per offset, rotating.
            for j in (o..o + 4).map(|j| j % LENS.len()) {
                let len = LENS[j];
                // Aligned destinations, off by one, and off by an odd amount.
                let skew = [0, 1, 2048 + 7][(j + off as usize) % 3];
                cases.push(Case {
                    file: k,
                    offset: off,
                    len,
                    skew,
                });
            }
        }
    }
    // Many requests per batch (far more than the queue depth), in several batches.
    for batch in cases.chunks(61) {
        check_batch(&svc, &files, batch);
    }
    let st = svc.stats();
    eprintln!("{} requests: {st:?}", cases.len());
    assert_eq!(st.batches, cases.len().div_ceil(61) as u64, "{st:?}");
    // ext4/xfs/btrfs take O_DIRECT; a filesystem that refuses it shows up as refused.
    assert!(
        st.direct_reads > 0 || st.direct_refused > 0,
        "aligned reads of aligned destinations go O_DIRECT: {st:?}"
    );
    assert!(
        st.bounce_reads > 0 || st.direct_refused > 0,
        "aligned reads of unaligned destinations go through bounce buffers: {st:?}"
    );
    assert!(
        st.buffered_reads > 0,
        "unaligned offsets read buffered: {st:?}"
    );
    assert!(
        st.continued_reads > 0 || st.direct_refused > 0,
        "a direct read of whole pages is continued for the tail: {st:?}"
    );
}

#[test]
fn reads_at_and_past_the_end_are_short_not_errors() {
    let Some(svc) = service(UringServiceConfig::default()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let p = write_file(dir.path(), "tail", 7, 3 * 4096 + 10);
    let empty = write_file(dir.path(), "empty", 8, 0);
    let files = [File::open(&p).unwrap(), File::open(&empty).unwrap()];
    let cases = [
        (0, 3 * 4096, 4096),
        (0, 3 * 4096 + 10, 4096),
        (0, 3 * 4096 + 11, 5),
        (0, 1 << 40, 4096),
        (0, i64::MAX as u64 - 1, 4096),
        (0, 2 * 4096, 3 * 4096),
        (1, 0, 4096),
        (1, 4096, 1),
    ];
    let cases: Vec<Case> = cases
        .iter()
        .map(|&(file, offset, len)| Case {
            file,
            offset,
            len,
            skew: 0,
        })
        .collect();
    check_batch(&svc, &files, &cases);
    let mut b = Vec::new();
    let mut reads = [FileRead {
        file: &files[0],
        offset: 2 * 4096,
        dst: dst(&mut b, MIB, 0),
    }];
    assert_eq!(svc.read_batch(&mut reads)[0].as_ref().unwrap(), &4106);
}

#[test]
fn buffered_only_when_asked_and_errors_carry_the_errno() {
    let Some(svc) = service(UringServiceConfig {
        direct: Direct::Off,
        queue_depth: 4,
        block_size: 64 << 10,
    }) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let p = write_file(dir.path(), "data", 9, 2 * MIB + 3);
    let files = [File::open(&p).unwrap()];
    let cases: Vec<Case> = [(0u64, 2 * MIB + 3, 0usize), (4096, MIB, 1), (1, 4096, 0)]
        .iter()
        .map(|&(offset, len, skew)| Case {
            file: 0,
            offset,
            len,
            skew,
        })
        .collect();
    check_batch(&svc, &files, &cases);
    let st = svc.stats();
    assert_eq!(st.direct_reads + st.bounce_reads, 0, "{st:?}");
    assert!(st.buffered_reads > 0);
    // A directory opens but cannot be read: the error is pread's (EISDIR), and the other
    // requests of the batch are unaffected.
    let d = File::open(dir.path()).unwrap();
    let mut b1 = Vec::new();
    let mut b2 = Vec::new();
    let mut reads = [
        FileRead {
            file: &d,
            offset: 0,
            dst: dst(&mut b1, 100, 0),
        },
        FileRead {
            file: &files[0],
            offset: 10,
            dst: dst(&mut b2, 100, 3),
        },
    ];
    let res = svc.read_batch(&mut reads);
    let want = read_full_at(&d, 0, &mut [0u8; 100]).unwrap_err();
    let err = res[0].as_ref().unwrap_err();
    assert_eq!(err.raw_os_error(), want.raw_os_error(), "{err}");
    assert_eq!(res[1].as_ref().unwrap(), &100);
    assert_eq!(reads[1].dst, &common::content(9, 110)[10..]);
}

/// IO_READ slot: `len` bytes of `file` at `off` into `buf` at `buf_off`.
fn io_read(file: u32, off: u64, len: u32, buf: u32, buf_off: u32) -> Slot {
    Slot::new(
        SlotOp::IoRead,
        &[file, off as u32, (off >> 32) as u32, len, buf, buf_off, 0],
    )
}

#[test]
fn megakernel_io_read_slots_through_io_uring_equal_plain_reads() {
    let Some(svc) = service(UringServiceConfig {
        queue_depth: 16,
        ..UringServiceConfig::default()
    }) else {
        return;
    };
    let svc = Arc::new(svc);
    let dir = tempfile::tempdir().unwrap();
    let paths = odd_files(dir.path());
    let mk = Megakernel::launch(
        Arc::new(CpuBackend::new().with_workers(2)),
        Config {
            capacity: 64,
            ..Config::default()
        },
    )
    .unwrap();
    mk.set_io_service(svc.clone()).unwrap();
    let ids: Vec<u32> = paths.iter().map(|p| mk.register_file(p).unwrap()).collect();
    // Each slot reads into its own region of one buffer (regions do not overlap).
    let mut rng = Rng(0xfeed_beef_0123_4567);
    let mut plan = Vec::new();
    let mut at = 0u32;
    for round in 0..3 {
        for (k, p) in paths.iter().enumerate() {
            let size = std::fs::metadata(p).unwrap().len();
            for off in offsets(size, &mut rng).into_iter().step_by(3 + round) {
                let len = LENS[(rng.below(LENS.len() as u64)) as usize] as u32;
                // Destination offsets: page-aligned or not.
                let skew = if rng.below(2) == 0 {
                    0
                } else {
                    1 + rng.below(4095) as u32
                };
                let buf_off = at.next_multiple_of(4096) + skew;
                plan.push((k, off, len, buf_off));
                at = buf_off + len;
            }
        }
    }
    let buf = mk.create_buffer(u64::from(at)).unwrap();
    let slots: Vec<Slot> = plan
        .iter()
        .map(|&(k, off, len, buf_off)| io_read(ids[k], off, len, buf, buf_off))
        .collect();
    // Published at once: the I/O thread sees many requests per batch.
    let tickets = mk.publish_batch(&slots).unwrap();
    let mut counts = Vec::new();
    for t in tickets {
        match mk.wait(t).unwrap().outcome {
            Outcome::Done(r) => counts.push(r[0] as usize),
            Outcome::Fault(f) => panic!("slot {t:?}: {f}"),
        }
    }
    let got = mk.read_buffer(buf, 0, u64::from(at)).unwrap();
    let files: Vec<File> = paths.iter().map(|p| File::open(p).unwrap()).collect();
    for (&(k, off, len, buf_off), n) in plan.iter().zip(counts) {
        let mut want = vec![0u8; len as usize];
        let wn = read_full_at(&files[k], off, &mut want).unwrap();
        assert_eq!(n, wn, "file {k} offset {off} len {len}: count");
        let b = buf_off as usize;
        assert!(
            got[b..b + n] == want[..n],
            "file {k} offset {off} len {len}: bytes differ from a plain read"
        );
    }
    let st = svc.stats();
    eprintln!("{} slots: {st:?}", plan.len());
    assert!(st.batches > 0 && st.batches < plan.len() as u64, "{st:?}");
    assert!(
        st.direct_reads + st.bounce_reads > 0 || st.direct_refused > 0,
        "{st:?}"
    );
    assert!(mk.shutdown().unwrap().lost.is_empty());
}

#[test]
fn io_service_is_io_uring_where_available() {
    if service(UringServiceConfig::default()).is_none() {
        return;
    }
    assert_eq!(vyre_ingest::io_service().name(), "io_uring");
}
