//! The pipeline cache against a real directory: hits, every kind of bad blob, eviction,
//! atomic writes, racing threads and an unusable directory.

use std::convert::Infallible;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;
use vyre_runtime::pipeline_cache::{
    decode_blob, BlobError, BlobMeta, CacheConfig, CacheKey, CacheSource, Cached, MissReason,
    PipelineCache, Storage, MAGIC, PRODUCER_VERSION,
};

/// A fresh directory under the system temp dir, removed on drop.
struct TestDir(PathBuf);

impl TestDir {
    fn new(name: &str) -> TestDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "vyre-pipeline-cache-test-{}-{name}-{n}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TestDir(dir)
    }

    fn cache(&self) -> PipelineCache {
        PipelineCache::new(CacheConfig::in_dir(&self.0))
    }

    /// Every file name in the directory, sorted.
    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn key(name: &str) -> CacheKey {
    CacheKey::builder()
        .part("backend", "cuda")
        .part("arch", "sm_90")
        .part("source", name)
        .finish()
}

fn cuda() -> BlobMeta {
    BlobMeta::new("cuda", "sm_90/nvrtc 12.4")
}

fn payload(name: &str) -> Vec<u8> {
    (0..200u32)
        .map(|i| (i as u8) ^ name.len() as u8)
        .chain(name.bytes())
        .collect()
}

/// `get_or_build` with a builder that counts its calls.
fn get(cache: &PipelineCache, name: &str, meta: &BlobMeta, calls: &AtomicUsize) -> Cached {
    cache
        .get_or_build(&key(name), meta, || {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Infallible>(payload(name))
        })
        .unwrap()
}

#[test]
fn memory_hit_then_disk_hit_in_a_second_instance() {
    let dir = TestDir::new("roundtrip");
    let calls = AtomicUsize::new(0);
    let first = dir.cache();
    assert!(matches!(first.storage(), Storage::Disk(d) if d == &dir.0));

    let built = get(&first, "k", &cuda(), &calls);
    assert!(matches!(
        built.source,
        CacheSource::Built {
            reason: MissReason::Absent
        }
    ));
    assert_eq!(&built.bytes[..], &payload("k")[..]);
    let again = get(&first, "k", &cuda(), &calls);
    assert!(matches!(again.source, CacheSource::Memory), "{again}");
    assert!(Arc::ptr_eq(&built.bytes, &again.bytes));
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    let path = first.blob_path(&key("k")).unwrap();
    assert_eq!(
        path.file_name().unwrap().to_str().unwrap(),
        format!("{}.vpc", key("k").hex())
    );
    let file = fs::read(&path).unwrap();
    assert_eq!(file[..8], MAGIC);
    let blob = decode_blob(&file, &path).unwrap();
    assert_eq!(blob.payload, &payload("k")[..]);
    assert_eq!(blob.producer_version, PRODUCER_VERSION);
    assert_eq!(
        (blob.backend, blob.device_key),
        ("cuda", "sm_90/nvrtc 12.4")
    );

    let second = dir.cache();
    let warm = get(&second, "k", &cuda(), &calls);
    assert!(matches!(warm.source, CacheSource::Disk), "{warm}");
    assert!(
        warm.to_string().starts_with("warm start (disk hit) "),
        "{warm}"
    );
    assert_eq!(&warm.bytes[..], &payload("k")[..]);
    assert!(matches!(
        get(&second, "k", &cuda(), &calls).source,
        CacheSource::Memory
    ));
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the builder ran again");

    let s = first.stats();
    assert_eq!(
        (s.builds, s.memory_hits, s.disk_hits, s.disk_writes),
        (1, 1, 0, 1)
    );
    let s = second.stats();
    assert_eq!(
        (s.builds, s.memory_hits, s.disk_hits, s.disk_writes),
        (0, 1, 1, 0)
    );
    assert_eq!(
        (s.memory_entries, s.memory_bytes),
        (1, payload("k").len() as u64)
    );
}

/// Writes a good blob for `name`, damages it with `damage`, then checks that a fresh cache
/// rebuilds exactly once with a reason `expect` accepts, and leaves a good file behind.
fn rebuilt_once(
    case: &str,
    damage: impl FnOnce(&Path),
    meta: &BlobMeta,
    expect: impl FnOnce(&MissReason) -> bool,
) {
    let dir = TestDir::new(case);
    let calls = AtomicUsize::new(0);
    get(&dir.cache(), "k", &cuda(), &calls);
    let path = dir.cache().blob_path(&key("k")).unwrap();
    damage(&path);

    let cache = dir.cache();
    let got = get(&cache, "k", meta, &calls);
    assert_eq!(calls.load(Ordering::SeqCst), 2, "{case}: builder calls");
    match &got.source {
        CacheSource::Built { reason } => {
            assert!(expect(reason), "{case}: wrong reason: {reason:?}");
            let err = reason.error().expect("a rejected blob has an error");
            assert_eq!(err.path(), path, "{case}");
            let msg = err.to_string();
            assert!(msg.contains(path.to_str().unwrap()), "{case}: {msg}");
            assert!(
                msg.contains("rebuilt") || msg.contains("removed"),
                "{case}: {msg}"
            );
        }
        other => panic!("{case}: expected a rebuild, got {other:?}"),
    }
    assert_eq!(&got.bytes[..], &payload("k")[..], "{case}");

    let file = fs::read(&path).unwrap();
    let blob = decode_blob(&file, &path).unwrap();
    blob.check(meta, &path).unwrap();
    assert_eq!(blob.payload, &payload("k")[..], "{case}");
    assert_eq!(dir.names(), [format!("{}.vpc", key("k").hex())], "{case}");

    let warm = get(&dir.cache(), "k", meta, &calls);
    assert!(matches!(warm.source, CacheSource::Disk), "{case}: {warm}");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "{case}: builder calls after repair"
    );
}

fn truncate_to(len: usize) -> impl FnOnce(&Path) {
    move |path| {
        let bytes = fs::read(path).unwrap();
        fs::write(path, &bytes[..len]).unwrap();
    }
}

fn edit(f: impl FnOnce(&mut Vec<u8>)) -> impl FnOnce(&Path) {
    move |path| {
        let mut bytes = fs::read(path).unwrap();
        f(&mut bytes);
        fs::write(path, bytes).unwrap();
    }
}

fn corrupt(reason: &MissReason, what: impl Fn(&BlobError) -> bool) -> bool {
    matches!(reason, MissReason::Corrupt(e) if what(e))
}

fn truncated(field: &'static str) -> impl Fn(&MissReason) -> bool {
    move |r| {
        corrupt(
            r,
            |e| matches!(e, BlobError::Truncated { field: f, .. } if *f == field),
        )
    }
}

#[test]
fn truncated_blobs_are_rebuilt() {
    let total = {
        let dir = TestDir::new("len");
        get(&dir.cache(), "k", &cuda(), &AtomicUsize::new(0));
        fs::read(dir.cache().blob_path(&key("k")).unwrap())
            .unwrap()
            .len()
    };
    let meta = cuda();
    rebuilt_once("empty", truncate_to(0), &meta, truncated("magic"));
    rebuilt_once("magic", truncate_to(5), &meta, truncated("magic"));
    rebuilt_once(
        "format",
        truncate_to(10),
        &meta,
        truncated("format version"),
    );
    rebuilt_once(
        "producer",
        truncate_to(17),
        &meta,
        truncated("producer version"),
    );
    rebuilt_once(
        "hash",
        truncate_to(total - 220),
        &meta,
        truncated("content hash"),
    );
    rebuilt_once(
        "length",
        truncate_to(total - 205),
        &meta,
        truncated("payload length"),
    );
    rebuilt_once(
        "payload",
        truncate_to(total - 1),
        &meta,
        truncated("payload"),
    );
    rebuilt_once(
        "payload-start",
        truncate_to(total - 201),
        &meta,
        truncated("payload"),
    );
}

#[test]
fn corrupt_foreign_and_mismatched_blobs_are_rebuilt() {
    let meta = cuda();
    rebuilt_once(
        "flip",
        edit(|b| *b.last_mut().unwrap() ^= 0x20),
        &meta,
        |r| corrupt(r, |e| matches!(e, BlobError::HashMismatch { .. })),
    );
    rebuilt_once(
        "hash-field",
        edit(|b| {
            let at = b.len() - 201 - 8 - 5;
            b[at] ^= 1;
        }),
        &meta,
        |r| corrupt(r, |e| matches!(e, BlobError::HashMismatch { .. })),
    );
    rebuilt_once("magic", edit(|b| b[0] = b'X'), &meta, |r| {
        corrupt(r, |e| matches!(e, BlobError::BadMagic { .. }))
    });
    rebuilt_once(
        "foreign",
        edit(|b| *b = b"\x7fELF not ours".to_vec()),
        &meta,
        |r| corrupt(r, |e| matches!(e, BlobError::BadMagic { .. })),
    );
    rebuilt_once("trailing", edit(|b| b.push(0)), &meta, |r| {
        corrupt(r, |e| matches!(e, BlobError::TrailingBytes { .. }))
    });
    rebuilt_once(
        "backend",
        |_| {},
        &BlobMeta::new("wgpu", "sm_90/nvrtc 12.4"),
        |r| {
            corrupt(
                r,
                |e| matches!(e, BlobError::MetaMismatch { field: "backend", found, .. } if found == "cuda"),
            )
        },
    );
    rebuilt_once(
        "device",
        |_| {},
        &BlobMeta::new("cuda", "sm_80/nvrtc 12.4"),
        |r| {
            corrupt(r, |e| {
                matches!(
                    e,
                    BlobError::MetaMismatch {
                        field: "device key",
                        ..
                    }
                )
            })
        },
    );
}

#[test]
fn other_format_and_producer_versions_are_stale() {
    let meta = cuda();
    rebuilt_once(
        "format",
        edit(|b| b[8..12].copy_from_slice(&2u32.to_le_bytes())),
        &meta,
        |r| {
            matches!(
                r,
                MissReason::Stale(BlobError::FormatVersion {
                    found: 2,
                    supported: 1,
                    ..
                })
            )
        },
    );
    // Replace the length-prefixed producer version (at offset 12) by a longer, older one.
    let splice = edit(|b| {
        let len = u32::from_le_bytes(b[12..16].try_into().unwrap()) as usize;
        let old = b"0.0.1-previous";
        let mut out = b[..12].to_vec();
        out.extend_from_slice(&(old.len() as u32).to_le_bytes());
        out.extend_from_slice(old);
        out.extend_from_slice(&b[16 + len..]);
        *b = out;
    });
    rebuilt_once("producer", splice, &meta, |r| {
        let ok = matches!(r, MissReason::Stale(BlobError::ProducerVersion { found, current, .. })
            if found == "0.0.1-previous" && *current == PRODUCER_VERSION);
        ok && r.to_string().contains("stale")
    });
}

#[test]
fn unreadable_blob_is_rebuilt_and_served_from_memory() {
    let dir = TestDir::new("unreadable");
    let cache = dir.cache();
    let path = cache.blob_path(&key("k")).unwrap();
    fs::create_dir(&path).unwrap(); // a directory where the blob file should be
    let calls = AtomicUsize::new(0);
    let got = get(&cache, "k", &cuda(), &calls);
    assert!(
        matches!(
            &got.source,
            CacheSource::Built {
                reason: MissReason::Unreadable(BlobError::Read { .. })
            }
        ),
        "{got}"
    );
    assert_eq!(&got.bytes[..], &payload("k")[..]);
    assert_eq!(cache.stats().disk_write_failures, 1);
    assert!(matches!(
        get(&cache, "k", &cuda(), &calls).source,
        CacheSource::Memory
    ));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[test]
fn lru_evicts_by_byte_budget() {
    // 200 + len(name) bytes per blob: two fit in 450, three do not.
    let cache = PipelineCache::new(CacheConfig::memory_only().with_memory_budget(450));
    assert!(matches!(cache.storage(), Storage::MemoryOnly));
    let calls = AtomicUsize::new(0);
    get(&cache, "a", &cuda(), &calls);
    get(&cache, "b", &cuda(), &calls);
    assert!(matches!(
        get(&cache, "a", &cuda(), &calls).source,
        CacheSource::Memory
    ));
    get(&cache, "c", &cuda(), &calls); // evicts b, the least recently used
    let s = cache.stats();
    assert_eq!((s.evictions, s.memory_entries, s.memory_bytes), (1, 2, 402));
    assert!(matches!(
        get(&cache, "a", &cuda(), &calls).source,
        CacheSource::Memory
    ));
    assert!(matches!(
        get(&cache, "c", &cuda(), &calls).source,
        CacheSource::Memory
    ));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let b = get(&cache, "b", &cuda(), &calls);
    assert!(matches!(
        b.source,
        CacheSource::Built {
            reason: MissReason::Absent
        }
    ));
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert!(cache.stats().memory_bytes <= 450);

    // With a directory, an evicted blob comes back from disk.
    let dir = TestDir::new("evict");
    let cache = PipelineCache::new(CacheConfig::in_dir(&dir.0).with_memory_budget(250));
    let calls = AtomicUsize::new(0);
    get(&cache, "a", &cuda(), &calls);
    get(&cache, "b", &cuda(), &calls);
    let a = get(&cache, "a", &cuda(), &calls);
    assert!(matches!(a.source, CacheSource::Disk), "{a}");
    assert_eq!(&a.bytes[..], &payload("a")[..]);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[test]
fn atomic_writes_leave_only_blob_files() {
    let dir = TestDir::new("atomic");
    let cache = dir.cache();
    let calls = AtomicUsize::new(0);
    let names = ["a", "b", "c", "d"];
    for name in names {
        get(&cache, name, &cuda(), &calls);
    }
    // Rewrite one blob (a stale file) to exercise the rename over an existing file.
    let path = cache.blob_path(&key("a")).unwrap();
    fs::write(&path, b"VYREPC\0\x01\x07\0\0\0").unwrap();
    cache.clear_memory();
    get(&cache, "a", &cuda(), &calls);
    let mut expected: Vec<String> = names
        .iter()
        .map(|n| format!("{}.vpc", key(n).hex()))
        .collect();
    expected.sort();
    assert_eq!(dir.names(), expected);
}

#[test]
fn racing_threads_share_one_build() {
    let dir = TestDir::new("race");
    let cache = dir.cache();
    let calls = AtomicUsize::new(0);
    let threads = 8;
    let barrier = Barrier::new(threads);
    let results: Vec<Cached> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    cache
                        .get_or_build(&key("k"), &cuda(), || {
                            calls.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(50));
                            Ok::<_, Infallible>(payload("k"))
                        })
                        .unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    for r in &results {
        assert_eq!(&r.bytes[..], &payload("k")[..]);
    }
    let built = results
        .iter()
        .filter(|r| matches!(r.source, CacheSource::Built { .. }))
        .count();
    assert_eq!(built, 1);

    // Two instances (as two processes would) racing on one directory both succeed.
    let (a, b) = (dir.cache(), dir.cache());
    let calls = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for cache in [&a, &b] {
            let calls = &calls;
            s.spawn(move || {
                for i in 0..20 {
                    let name = format!("n{i}");
                    let got = get(cache, &name, &cuda(), calls);
                    assert_eq!(&got.bytes[..], &payload(&name)[..]);
                }
            });
        }
    });
    assert!(calls.load(Ordering::SeqCst) <= 40);
    assert_eq!(dir.names().len(), 21, "{:?}", dir.names());
}

#[test]
fn failed_or_panicking_builds_store_nothing() {
    let dir = TestDir::new("fail");
    let cache = dir.cache();
    let err = cache
        .get_or_build(&key("k"), &cuda(), || {
            Err::<Vec<u8>, _>("nvrtc: syntax error")
        })
        .unwrap_err();
    assert_eq!(err, "nvrtc: syntax error");
    assert!(dir.names().is_empty());
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        cache.get_or_build(&key("k"), &cuda(), || -> Result<Vec<u8>, Infallible> {
            panic!("builder panicked")
        })
    }));
    assert!(panicked.is_err());
    // Neither left the key marked as building: this does not wait forever.
    let calls = AtomicUsize::new(0);
    let got = get(&cache, "k", &cuda(), &calls);
    assert!(matches!(
        got.source,
        CacheSource::Built {
            reason: MissReason::Absent
        }
    ));
    assert_eq!(cache.stats().build_failures, 1);
}

#[test]
fn unusable_directory_falls_back_to_memory() {
    let dir = TestDir::new("unusable");
    let file = dir.0.join("regular-file");
    fs::write(&file, b"not a directory").unwrap();
    let cache = PipelineCache::new(CacheConfig::in_dir(file.join("pipelines")));
    assert!(
        matches!(cache.storage(), Storage::MemoryOnlyFallback(_)),
        "{}",
        cache.storage()
    );
    assert!(cache.storage().to_string().contains("VYRE_CACHE_DIR"));
    assert!(cache.dir().is_none() && cache.blob_path(&key("k")).is_none());
    let calls = AtomicUsize::new(0);
    let built = get(&cache, "k", &cuda(), &calls);
    assert!(matches!(
        built.source,
        CacheSource::Built {
            reason: MissReason::Absent
        }
    ));
    let hit = get(&cache, "k", &cuda(), &calls);
    assert!(matches!(hit.source, CacheSource::Memory));
    assert_eq!(&hit.bytes[..], &payload("k")[..]);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(dir.names(), ["regular-file"]);
}
