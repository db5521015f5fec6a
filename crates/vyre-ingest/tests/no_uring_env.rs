//! `VYRE_INGEST_NO_URING=1` forces the plain reader (as when io_uring_setup fails), which
//! delivers the same bytes. Its own test binary: it sets a process-wide variable.

mod common;

use common::{collect, write_file};
use vyre_ingest::{EngineKind, Ingest, IngestConfig};

#[test]
fn env_knob_forces_the_plain_reader_and_loses_nothing() {
    std::env::set_var("VYRE_INGEST_NO_URING", "1");
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<_> = [0usize, 5, 4097, (1 << 20) + 1, 3 << 20]
        .iter()
        .enumerate()
        .map(|(i, &n)| write_file(dir.path(), &format!("f{i}"), i as u64, n))
        .collect();
    let mut ing = Ingest::paths(IngestConfig::default(), paths.clone()).unwrap();
    match ing.engine() {
        EngineKind::Plain { reason } => {
            assert!(reason.contains("VYRE_INGEST_NO_URING"), "{reason}")
        }
        other => panic!("expected the plain reader, got {other:?}"),
    }
    let got = collect(&mut ing);
    for (i, p) in paths.iter().enumerate() {
        assert_eq!(got[&(i as u64)].bytes, std::fs::read(p).unwrap());
        assert!(got[&(i as u64)].end.is_some());
    }
}

#[test]
fn env_knob_gives_io_read_the_pread_service() {
    std::env::set_var("VYRE_INGEST_NO_URING", "1");
    assert_eq!(vyre_ingest::io_service().name(), "pread");
}
