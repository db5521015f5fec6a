//! GpuStream on the cpu backend: the staging region is registered in place, every chunk is
//! hashed by a HASH64 slot on the megakernel, and the hashes equal xxh64 of a plain read.

mod common;

use common::write_file;
use std::collections::BTreeMap;
use std::sync::Arc;
use vyre_cpu::CpuBackend;
use vyre_ingest::{GpuStream, Ingest, IngestConfig, StreamEvent};
use vyre_isa::{Slot, SlotOp};
use vyre_runtime::{Config, Megakernel, Outcome};

#[test]
fn every_chunk_hashed_on_the_megakernel_matches_a_plain_read() {
    let dir = tempfile::tempdir().unwrap();
    let bs = 256 << 10;
    let mut paths = Vec::new();
    for i in 0..300u64 {
        paths.push(write_file(
            dir.path(),
            &format!("s{i}"),
            i,
            (i as usize * 997) % 20_000,
        ));
    }
    for (i, n) in [
        (0u64, 5 * bs + 12345),
        (1, 17 << 20),
        (2, bs - 1),
        (3, bs + 1),
    ] {
        paths.push(write_file(dir.path(), &format!("l{i}"), 50 + i, n));
    }
    let mk = Megakernel::launch(
        Arc::new(CpuBackend::new().with_workers(2)),
        Config {
            // Smaller than the slots of all staging buffers (16 x 2): publishing waits.
            capacity: 8,
            ..Config::default()
        },
    )
    .unwrap();
    // A buffer created before the stream keeps its handle; the region gets the next one.
    let before = mk.create_buffer(64).unwrap();
    let cfg = IngestConfig {
        block_size: bs,
        queue_depth: 8,
        buffers: 16,
        ..IngestConfig::default()
    };
    let ingest = Ingest::paths(cfg, paths.clone()).unwrap();
    let stream = GpuStream::new(&mk, ingest).unwrap();
    assert_eq!(stream.handle(), before + 1);
    let seed = 0x5eed;
    let mut got: BTreeMap<u64, Vec<(u64, usize, u64)>> = BTreeMap::new();
    let mut ends = BTreeMap::new();
    let report = stream
        .run(
            |chunk, handle| {
                // Two slots per chunk: its two halves (the buffer returns after both).
                let off = chunk.region_offset() as u32;
                let half = (chunk.len / 2) as u32;
                vec![
                    Slot::new(SlotOp::Hash64, &[handle, off, half, seed]),
                    Slot::new(
                        SlotOp::Hash64,
                        &[handle, off + half, chunk.len as u32 - half, seed],
                    ),
                ]
            },
            |e| match e {
                StreamEvent::ChunkDone {
                    file_id,
                    file_offset,
                    len,
                    completions,
                } => {
                    assert_eq!(completions.len(), 2);
                    let v = got.entry(file_id).or_default();
                    let expect_off = v.last().map_or(0, |&(o, l, _)| o + l as u64);
                    assert_eq!(file_offset, expect_off, "in order per file");
                    for (k, c) in completions.iter().enumerate() {
                        let Outcome::Done(r) = c.outcome else {
                            panic!("slot faulted: {c:?}")
                        };
                        let h = u64::from(r[0]) | u64::from(r[1]) << 32;
                        let half = len / 2;
                        let (o, l) = if k == 0 {
                            (file_offset, half)
                        } else {
                            (file_offset + half as u64, len - half)
                        };
                        v.push((o, l, h));
                    }
                }
                StreamEvent::End(e) => {
                    ends.insert(e.file_id, e.len);
                }
                StreamEvent::Error(e) => panic!("{e}"),
            },
        )
        .unwrap();
    assert_eq!(report.files, paths.len() as u64);
    assert_eq!(report.faults, 0);
    let mut total = 0u64;
    for (i, p) in paths.iter().enumerate() {
        let want = std::fs::read(p).unwrap();
        total += want.len() as u64;
        assert_eq!(ends[&(i as u64)], want.len() as u64);
        let mut covered = 0usize;
        for &(o, l, h) in got.get(&(i as u64)).map_or(&[][..], |v| &v[..]) {
            assert_eq!(o as usize, covered);
            let plain = xxhash_rust::xxh64::xxh64(&want[o as usize..o as usize + l], seed.into());
            assert_eq!(h, plain, "file {i} at {o}+{l}");
            covered += l;
        }
        assert_eq!(covered, want.len());
    }
    assert_eq!(report.bytes, total);
    mk.shutdown().unwrap();
}

#[test]
fn a_backend_without_host_regions_says_so() {
    // The trait's default: a clear Unavailable error, not a panic.
    #[derive(Debug)]
    struct NoRegions(CpuBackend);
    let b = NoRegions(CpuBackend::new());
    let region = Ingest::paths(IngestConfig::default(), vec![])
        .unwrap()
        .host_region();
    let err = vyre_runtime::Backend::register_host_region(&Minimal(&b.0), region).unwrap_err();
    assert!(
        err.to_string()
            .contains("cannot use a host memory region in place"),
        "{err}"
    );

    /// Forwards everything but `register_host_region`, so the default applies.
    #[derive(Debug)]
    struct Minimal<'a>(&'a CpuBackend);
    impl vyre_runtime::Backend for Minimal<'_> {
        fn name(&self) -> &'static str {
            "minimal"
        }
        fn capabilities(&self) -> &vyre_runtime::Capabilities {
            self.0.capabilities()
        }
        fn ring_memory(
            &self,
            c: u32,
            d: u32,
        ) -> Result<Arc<dyn vyre_runtime::RingMemory>, vyre_runtime::BackendError> {
            self.0.ring_memory(c, d)
        }
        fn create_buffer(&self, size: u64) -> Result<u32, vyre_runtime::BackendError> {
            self.0.create_buffer(size)
        }
        fn write_buffer(&self, h: u32, o: u64, d: &[u8]) -> Result<(), vyre_runtime::BackendError> {
            self.0.write_buffer(h, o, d)
        }
        fn read_buffer(
            &self,
            h: u32,
            o: u64,
            l: u64,
        ) -> Result<Vec<u8>, vyre_runtime::BackendError> {
            self.0.read_buffer(h, o, l)
        }
        fn load_program(&self, p: vyre_isa::Program) -> Result<u32, vyre_runtime::BackendError> {
            self.0.load_program(p)
        }
        fn launch(
            &self,
            r: Arc<dyn vyre_runtime::RingMemory>,
            c: &vyre_runtime::LaunchConfig,
        ) -> Result<(), vyre_runtime::BackendError> {
            self.0.launch(r, c)
        }
        fn doorbell(&self) {
            self.0.doorbell()
        }
        fn stop(&self) -> Result<(), vyre_runtime::BackendError> {
            self.0.stop()
        }
        fn health(&self) -> vyre_runtime::Health {
            self.0.health()
        }
    }
}

#[test]
fn restart_registers_the_region_again_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_file(dir.path(), "f", 1, 100_000);
    let mk = Megakernel::launch(
        Arc::new(CpuBackend::new().with_workers(1)),
        Config::default(),
    )
    .unwrap();
    let mut ing = Ingest::paths(
        IngestConfig {
            block_size: 64 << 10,
            queue_depth: 2,
            buffers: 2,
            ..IngestConfig::default()
        },
        vec![p.clone()],
    )
    .unwrap();
    let h = mk.register_host_region(ing.host_region()).unwrap();
    let after = mk.create_buffer_with(8, b"abcdefgh").unwrap();
    assert_eq!(after, h + 1);
    let Some(vyre_ingest::Event::Chunk(c)) = ing.next_event() else {
        panic!("expected a chunk")
    };
    let report = mk
        .restart(Arc::new(CpuBackend::new().with_workers(1)))
        .unwrap();
    assert_eq!(report.buffers, 2);
    let t = mk
        .publish(Slot::new(
            SlotOp::Hash64,
            &[h, c.region_offset() as u32, c.len as u32, 3],
        ))
        .unwrap();
    let r = mk.wait(t).unwrap().results();
    assert_eq!(
        u64::from(r[0]) | u64::from(r[1]) << 32,
        xxhash_rust::xxh64::xxh64(c.bytes(), 3)
    );
    assert_eq!(c.bytes(), &std::fs::read(&p).unwrap()[..c.len]);
    assert_eq!(mk.read_buffer(after, 0, 8).unwrap(), b"abcdefgh");
    drop(c);
    mk.shutdown().unwrap();
}
