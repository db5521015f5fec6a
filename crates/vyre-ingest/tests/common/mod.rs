//! Shared test helpers: deterministic file contents and a collector that checks the
//! stream's contract (in order per file, exactly once, end or error once per file).

#![allow(dead_code, reason = "each test binary uses a subset")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use vyre_ingest::{EngineKind, Event, FileEnd, FileError, Ingest};

/// Deterministic pseudo-random bytes for file `seed`.
pub fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes a file of `len` deterministic bytes.
pub fn write_file(dir: &Path, name: &str, seed: u64, len: usize) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content(seed, len)).expect("write test file");
    p
}

/// What the stream delivered for one file.
#[derive(Debug, Default)]
pub struct Got {
    pub bytes: Vec<u8>,
    pub chunks: usize,
    pub end: Option<FileEnd>,
    pub error: Option<FileError>,
}

/// Drains an ingest, checking the contract as it goes.
pub fn collect(ingest: &mut Ingest) -> BTreeMap<u64, Got> {
    collect_into(ingest, BTreeMap::new())
}

/// Like `collect`, continuing from what was already taken.
pub fn collect_into(ingest: &mut Ingest, mut files: BTreeMap<u64, Got>) -> BTreeMap<u64, Got> {
    while let Some(e) = ingest.next_event() {
        match e {
            Event::Chunk(c) => {
                let g = files.entry(c.file_id).or_default();
                assert!(
                    g.end.is_none() && g.error.is_none(),
                    "chunk after the end of file {}",
                    c.file_id
                );
                assert_eq!(
                    c.file_offset,
                    g.bytes.len() as u64,
                    "file {}: chunks out of order or overlapping",
                    c.file_id
                );
                assert!(c.len > 0, "empty chunk");
                assert_eq!(c.bytes().len(), c.len);
                g.bytes.extend_from_slice(c.bytes());
                g.chunks += 1;
            }
            Event::End(end) => {
                let g = files.entry(end.file_id).or_default();
                assert!(
                    g.end.is_none() && g.error.is_none(),
                    "two ends for file {}",
                    end.file_id
                );
                assert_eq!(
                    end.len,
                    g.bytes.len() as u64,
                    "end length differs from bytes delivered"
                );
                g.end = Some(end);
            }
            Event::Error(err) => {
                let g = files.entry(err.file_id).or_default();
                assert!(
                    g.end.is_none() && g.error.is_none(),
                    "error after the end of file {}",
                    err.file_id
                );
                g.error = Some(err);
            }
        }
    }
    files
}

/// The io_uring path must really run: a test that needs it fails unless the environment
/// says io_uring is knowingly unavailable (`VYRE_INGEST_SKIP_URING_TESTS=1`), and then it
/// says so on stderr.
pub fn require_uring(ingest: &Ingest) -> bool {
    match ingest.engine() {
        EngineKind::Uring { fixed_buffers } => {
            assert!(
                fixed_buffers,
                "io_uring runs but buffer registration was refused (RLIMIT_MEMLOCK?)"
            );
            true
        }
        EngineKind::Plain { reason } => {
            if std::env::var_os("VYRE_INGEST_SKIP_URING_TESTS").is_some() {
                eprintln!("SKIPPED (io_uring path): io_uring is unavailable here: {reason}");
                false
            } else {
                panic!("io_uring is unavailable ({reason}); set VYRE_INGEST_SKIP_URING_TESTS=1 to skip the io_uring-path tests knowingly");
            }
        }
    }
}
