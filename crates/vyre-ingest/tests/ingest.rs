//! Ingest correctness: every byte of every file delivered exactly once, in order per file,
//! on the io_uring path and on the plain fallback, with the failure cases as events.

mod common;

use common::{collect, collect_into, content, require_uring, write_file};
use std::path::PathBuf;
use std::time::Duration;
use vyre_ingest::{Direct, EngineChoice, Event, Faults, FileErrorKind, Ingest, IngestConfig};

const BS: usize = 64 << 10;

fn config(engine: EngineChoice) -> IngestConfig {
    IngestConfig {
        queue_depth: 8,
        block_size: BS,
        buffers: 16,
        max_open_files: 16,
        engine,
        ..IngestConfig::default()
    }
}

/// Files of sizes around the block and page sizes, an empty one and a sparse one.
fn odd_files(dir: &std::path::Path) -> Vec<PathBuf> {
    let sizes = [
        0usize,
        1,
        511,
        4095,
        4096,
        4097,
        BS - 1,
        BS,
        BS + 1,
        2 * BS - 4096,
        3 * BS + 17,
        5 * BS + 4095,
    ];
    let mut paths: Vec<PathBuf> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| write_file(dir, &format!("odd{i}"), i as u64 + 1, n))
        .collect();
    // Sparse: holes around a few written bytes, an odd length.
    let sparse = dir.join("sparse");
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::File::create(&sparse).unwrap();
        f.set_len(3 * BS as u64 + 333).unwrap();
        f.seek(SeekFrom::Start(BS as u64 + 5)).unwrap();
        f.write_all(b"island in a sparse file").unwrap();
    }
    paths.push(sparse);
    paths
}

fn check_all_equal(paths: &[PathBuf], got: &std::collections::BTreeMap<u64, common::Got>) {
    assert_eq!(got.len(), paths.len(), "every file reports");
    for (i, p) in paths.iter().enumerate() {
        let g = &got[&(i as u64)];
        assert!(g.error.is_none(), "{}: {:?}", p.display(), g.error);
        let end = g.end.as_ref().expect("an end per file");
        let want = std::fs::read(p).unwrap();
        assert_eq!(end.len, want.len() as u64, "{}", p.display());
        assert!(!end.changed());
        assert_eq!(
            blake3::hash(&g.bytes),
            blake3::hash(&want),
            "{}: bytes differ from a plain read",
            p.display()
        );
    }
}

fn run_odd(engine: EngineChoice, direct: Direct) {
    let dir = tempfile::tempdir().unwrap();
    let paths = odd_files(dir.path());
    let mut ing = Ingest::paths(
        IngestConfig {
            direct,
            ..config(engine)
        },
        paths.clone(),
    )
    .unwrap();
    if engine == EngineChoice::Uring && !require_uring(&ing) {
        return;
    }
    let got = collect(&mut ing);
    check_all_equal(&paths, &got);
    let st = ing.stats();
    eprintln!("{engine:?} {direct:?}: {st:?}");
    if direct == Direct::Auto {
        // ext4/xfs/btrfs accept O_DIRECT; a filesystem that refuses it shows up here.
        assert!(st.direct_reads > 0 || st.direct_refused > 0, "{st:?}");
        assert!(
            st.buffered_reads > 0,
            "tiny files are read buffered: {st:?}"
        );
    } else {
        assert_eq!(st.direct_reads, 0);
    }
    if engine == EngineChoice::Uring {
        assert!(
            st.fixed_file_reads > 0,
            "files of several blocks are registered: {st:?}"
        );
    }
}

#[test]
fn odd_sizes_uring_direct() {
    run_odd(EngineChoice::Uring, Direct::Auto);
}

#[test]
fn odd_sizes_uring_buffered() {
    run_odd(EngineChoice::Uring, Direct::Off);
}

#[test]
fn odd_sizes_plain_fallback() {
    run_odd(EngineChoice::Plain, Direct::Auto);
}

/// 10,000 small files and a few large ones, on both readers, default block size and depth.
#[test]
fn corpus_10k_small_and_large_both_engines() {
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for i in 0..10_000u64 {
        let n = (i * 7919 % 9000) as usize; // 0..9000 bytes
        paths.push(write_file(dir.path(), &format!("s{i}"), i + 100, n));
    }
    for (i, n) in [
        (0u64, 40usize << 20),
        (1, (24 << 20) + 12345),
        (2, (8 << 20) - 1),
    ] {
        paths.push(write_file(dir.path(), &format!("large{i}"), i + 7, n));
    }
    let want: Vec<blake3::Hash> = paths
        .iter()
        .map(|p| blake3::hash(&std::fs::read(p).unwrap()))
        .collect();
    for engine in [EngineChoice::Uring, EngineChoice::Plain] {
        let cfg = IngestConfig {
            engine,
            ..IngestConfig::default()
        };
        let t = std::time::Instant::now();
        let mut ing = Ingest::paths(cfg, paths.clone()).unwrap();
        if engine == EngineChoice::Uring && !require_uring(&ing) {
            continue;
        }
        let got = collect(&mut ing);
        assert_eq!(got.len(), paths.len());
        for (i, w) in want.iter().enumerate() {
            let g = &got[&(i as u64)];
            assert!(g.error.is_none(), "{:?}", g.error);
            assert!(g.end.is_some());
            assert_eq!(&blake3::hash(&g.bytes), w, "file {i} on {engine:?}");
        }
        eprintln!("{engine:?}: {} files in {:?}", paths.len(), t.elapsed());
    }
}

fn faulted(
    faults: Faults,
    engine: EngineChoice,
) -> (
    Vec<PathBuf>,
    std::collections::BTreeMap<u64, common::Got>,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<PathBuf> = (0..6)
        .map(|i| {
            write_file(
                dir.path(),
                &format!("f{i}"),
                i + 1,
                3 * BS + 1000 * i as usize,
            )
        })
        .collect();
    let cfg = IngestConfig {
        faults,
        // One file at a time, so the nth read belongs to a known file.
        max_open_files: 1,
        ..config(engine)
    };
    let mut ing = Ingest::paths(cfg, paths.clone()).unwrap();
    if engine == EngineChoice::Uring {
        require_uring(&ing);
    }
    let got = collect(&mut ing);
    (paths, got, dir)
}

#[test]
fn eio_fails_one_file_and_the_stream_goes_on() {
    for engine in [EngineChoice::Uring, EngineChoice::Plain] {
        // Read 6 is the third read of the second file (4 reads per file: 3 blocks + tail).
        let (paths, got, _d) = faulted(
            Faults {
                eio_on_read: Some(6),
                ..Faults::default()
            },
            engine,
        );
        let errors: Vec<_> = got.values().filter_map(|g| g.error.clone()).collect();
        assert_eq!(
            errors.len(),
            1,
            "{engine:?}: exactly one file fails: {errors:?}"
        );
        let e = &errors[0];
        assert_eq!(e.kind, FileErrorKind::Read);
        assert!(e.message.contains("Input/output error"), "{}", e.message);
        assert_eq!(e.file_id, 1);
        // What was delivered of the failed file is a correct prefix.
        let failed = &got[&1];
        assert!(failed.end.is_none());
        let want = std::fs::read(&paths[1]).unwrap();
        assert_eq!(&want[..failed.bytes.len()], &failed.bytes[..]);
        for (i, p) in paths.iter().enumerate().filter(|(i, _)| *i != 1) {
            assert_eq!(
                got[&(i as u64)].bytes,
                std::fs::read(p).unwrap(),
                "{engine:?} file {i}"
            );
            assert!(got[&(i as u64)].end.is_some());
        }
    }
}

#[test]
fn short_reads_and_refused_direct_lose_nothing() {
    let cases = [
        Faults {
            short_on_read: Some(2),
            ..Faults::default()
        },
        Faults {
            short_on_read: Some(4),
            ..Faults::default()
        },
        Faults {
            einval_direct_read: Some(3),
            ..Faults::default()
        },
        Faults {
            einval_direct_open: true,
            ..Faults::default()
        },
    ];
    for faults in cases {
        for engine in [EngineChoice::Uring, EngineChoice::Plain] {
            let (paths, got, _d) = faulted(faults.clone(), engine);
            for (i, p) in paths.iter().enumerate() {
                let g = &got[&(i as u64)];
                assert!(g.error.is_none(), "{faults:?} {engine:?}: {:?}", g.error);
                assert_eq!(
                    g.bytes,
                    std::fs::read(p).unwrap(),
                    "{faults:?} {engine:?} file {i}"
                );
            }
            if faults.short_on_read.is_some() {
                let chunks: usize = got.values().map(|g| g.chunks).sum();
                let base: usize = paths
                    .iter()
                    .map(|p| (std::fs::metadata(p).unwrap().len() as usize).div_ceil(BS))
                    .sum();
                assert_eq!(chunks, base + 1, "a short read adds one continuation chunk");
            }
        }
    }
}

#[test]
fn unreadable_paths_are_errors_in_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_file(dir.path(), "good", 1, BS + 3);
    let fifo = dir.path().join("fifo");
    let st = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(st.success());
    let subdir = dir.path().join("subdir");
    std::fs::create_dir(&subdir).unwrap();
    let vanished = write_file(dir.path(), "vanished", 2, 100);
    std::fs::remove_file(&vanished).unwrap();
    let good2 = write_file(dir.path(), "good2", 3, 3 * BS);
    let paths = vec![good.clone(), fifo, subdir, vanished, good2.clone()];
    for engine in [EngineChoice::Uring, EngineChoice::Plain] {
        let mut ing = Ingest::paths(config(engine), paths.clone()).unwrap();
        let got = collect(&mut ing);
        assert_eq!(got[&0].bytes, std::fs::read(&good).unwrap());
        assert_eq!(got[&4].bytes, std::fs::read(&good2).unwrap());
        assert_eq!(
            got[&1].error.as_ref().unwrap().kind,
            FileErrorKind::NotRegular
        );
        assert!(got[&1].error.as_ref().unwrap().message.contains("FIFO"));
        assert_eq!(
            got[&2].error.as_ref().unwrap().kind,
            FileErrorKind::NotRegular
        );
        assert_eq!(
            got[&3].error.as_ref().unwrap().kind,
            FileErrorKind::NotFound
        );
    }
}

/// Opens one big file, reads its first chunk, then changes it.
fn mutate_mid_stream(
    engine: EngineChoice,
    mutate: impl FnOnce(&std::path::Path),
) -> (Vec<u8>, common::Got) {
    let dir = tempfile::tempdir().unwrap();
    let len = 64 * BS;
    let p = write_file(dir.path(), "big", 9, len);
    let original = content(9, len);
    let cfg = IngestConfig {
        queue_depth: 2,
        buffers: 2,
        ..config(engine)
    };
    let mut ing = Ingest::paths(cfg, vec![p.clone()]).unwrap();
    let first = ing.next_event().unwrap();
    let Event::Chunk(c) = first else {
        panic!("expected a chunk")
    };
    let mut seed = std::collections::BTreeMap::new();
    seed.insert(
        0u64,
        common::Got {
            bytes: c.bytes().to_vec(),
            chunks: 1,
            ..Default::default()
        },
    );
    // Holding this chunk while the other buffer is in flight keeps the reader at the start.
    mutate(&p);
    drop(c);
    let got = collect_into(&mut ing, seed).remove(&0).unwrap();
    (original, got)
}

#[test]
fn file_that_shrinks_grows_or_is_deleted_while_read() {
    for engine in [EngineChoice::Uring, EngineChoice::Plain] {
        // Shrinks: what is delivered is a prefix of the original, at least the new size,
        // and the end reports the change.
        let new_len = 10 * BS as u64 + 77;
        let (orig, got) = mutate_mid_stream(engine, |p| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(p)
                .unwrap()
                .set_len(new_len)
                .unwrap()
        });
        let end = got.end.expect("shrunk file still ends");
        assert!(end.changed());
        assert_eq!(end.size_at_end, new_len);
        assert!(end.len >= new_len && end.len < orig.len() as u64, "{end:?}");
        assert_eq!(&got.bytes[..], &orig[..end.len as usize]);

        // Grows: the size at open is delivered, the growth reported.
        let (orig, got) = mutate_mid_stream(engine, |p| {
            use std::io::Write;
            std::fs::OpenOptions::new()
                .append(true)
                .open(p)
                .unwrap()
                .write_all(&[7u8; 5000])
                .unwrap()
        });
        let end = got.end.expect("grown file ends");
        assert!(end.changed());
        assert_eq!(end.size_at_end, orig.len() as u64 + 5000);
        assert_eq!(got.bytes, orig);

        // Grows by less than the page the last read asks for beyond the end: that read
        // (not an fstat) sees the new size.
        let (orig, got) = mutate_mid_stream(engine, |p| {
            use std::io::Write;
            std::fs::OpenOptions::new()
                .append(true)
                .open(p)
                .unwrap()
                .write_all(&[7u8; 100])
                .unwrap()
        });
        let end = got.end.expect("grown file ends");
        assert!(end.changed());
        assert_eq!(end.size_at_end, orig.len() as u64 + 100);
        assert_eq!(got.bytes, orig);

        // Deleted: the open file is still read completely.
        let (orig, got) = mutate_mid_stream(engine, |p| std::fs::remove_file(p).unwrap());
        assert_eq!(got.bytes, orig);
        assert!(!got.end.unwrap().changed());
    }
}

#[test]
fn back_pressure_when_the_consumer_holds_every_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_file(dir.path(), "big", 3, 20 * BS);
    let cfg = IngestConfig {
        queue_depth: 4,
        buffers: 4,
        ..config(EngineChoice::Auto)
    };
    let mut ing = Ingest::paths(cfg, vec![p.clone()]).unwrap();
    let mut held = Vec::new();
    while held.len() < 4 {
        match ing.next_event().unwrap() {
            Event::Chunk(c) => held.push(c),
            e => panic!("unexpected {e:?}"),
        }
    }
    // Every buffer is held: nothing more can arrive, however long we wait.
    std::thread::sleep(Duration::from_millis(200));
    assert!(matches!(ing.try_next_event(), Ok(None)));
    assert_eq!(ing.free_buffers(), 0);
    let mut seed = std::collections::BTreeMap::new();
    seed.insert(
        0u64,
        common::Got {
            bytes: held.iter().flat_map(|c| c.bytes().to_vec()).collect(),
            ..Default::default()
        },
    );
    drop(held);
    let bytes = collect_into(&mut ing, seed).remove(&0).unwrap().bytes;
    assert_eq!(bytes, std::fs::read(&p).unwrap());
}

#[test]
fn dropping_mid_stream_waits_for_reads_and_keeps_held_chunks_valid() {
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<PathBuf> = (0..4)
        .map(|i| write_file(dir.path(), &format!("f{i}"), i, 16 * BS))
        .collect();
    for engine in [EngineChoice::Uring, EngineChoice::Plain] {
        let mut ing = Ingest::paths(config(engine), paths.clone()).unwrap();
        let Some(Event::Chunk(c)) = ing.next_event() else {
            panic!("expected a chunk")
        };
        // Reads are in flight now; drop waits for their completions, then unmaps nothing
        // while this chunk lives.
        drop(ing);
        let want = std::fs::read(&paths[c.file_id as usize]).unwrap();
        assert_eq!(
            c.bytes(),
            &want[c.file_offset as usize..c.file_offset as usize + c.len]
        );
    }
}

#[test]
fn bad_config_is_rejected() {
    for cfg in [
        IngestConfig {
            block_size: 1000,
            ..IngestConfig::default()
        },
        IngestConfig {
            queue_depth: 0,
            ..IngestConfig::default()
        },
        IngestConfig {
            buffers: 4,
            queue_depth: 8,
            ..IngestConfig::default()
        },
    ] {
        assert!(Ingest::paths(cfg, vec![]).is_err());
    }
}

#[test]
fn io_uring_setup_failure_falls_back_or_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<PathBuf> = (0..3)
        .map(|i| write_file(dir.path(), &format!("f{i}"), i, 2 * BS + 5))
        .collect();
    let faults = Faults {
        uring_setup_fails: true,
        ..Faults::default()
    };
    // Auto: the plain reader, nothing lost.
    let mut ing = Ingest::paths(
        IngestConfig {
            faults: faults.clone(),
            ..config(EngineChoice::Auto)
        },
        paths.clone(),
    )
    .unwrap();
    match ing.engine() {
        vyre_ingest::EngineKind::Plain { reason } => {
            assert!(reason.contains("io_uring_setup failed"), "{reason}")
        }
        other => panic!("expected the plain reader, got {other:?}"),
    }
    let got = collect(&mut ing);
    for (i, p) in paths.iter().enumerate() {
        assert_eq!(got[&(i as u64)].bytes, std::fs::read(p).unwrap());
    }
    // Uring required: a typed error that says what to do.
    let err = Ingest::paths(
        IngestConfig {
            faults,
            ..config(EngineChoice::Uring)
        },
        paths,
    )
    .unwrap_err();
    assert!(matches!(err, vyre_ingest::IngestError::Uring(_)), "{err}");
    assert!(err.to_string().contains("EngineChoice::Auto"), "{err}");
}

#[test]
fn dropping_while_the_consumer_holds_every_buffer_does_not_hang() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_file(dir.path(), "big", 5, 40 * BS);
    for engine in [EngineChoice::Uring, EngineChoice::Plain] {
        let cfg = IngestConfig {
            queue_depth: 2,
            buffers: 2,
            ..config(engine)
        };
        let mut ing = Ingest::paths(cfg, vec![p.clone()]).unwrap();
        let held: Vec<_> = (0..2)
            .map(|_| match ing.next_event() {
                Some(Event::Chunk(c)) => c,
                e => panic!("unexpected {e:?}"),
            })
            .collect();
        // The reader waits for a buffer that only these chunks can return; drop must still
        // stop it (and the chunks stay readable).
        let t = std::time::Instant::now();
        drop(ing);
        assert!(t.elapsed() < Duration::from_secs(5));
        let want = std::fs::read(&p).unwrap();
        for c in &held {
            assert_eq!(
                c.bytes(),
                &want[c.file_offset as usize..c.file_offset as usize + c.len]
            );
        }
    }
}
