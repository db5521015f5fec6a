//! `vyre scan`'s pipeline on wgpu with the GPU defaults (small windows, table sets,
//! speculated unbounded rules, two driver threads publishing to one megakernel) finds
//! exactly the matches the cpu backend finds.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use vyre_runtime::{Backend, Megakernel};
use vyre_scan::pipeline::{megakernel_config, scan, FileError, ScanOptions, Sink};
use vyre_wgpu::WgpuMegakernelDispatcher;

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

#[test]
fn scan_with_the_gpu_defaults_matches_cpu() {
    if common::require_gpu("scan_with_the_gpu_defaults_matches_cpu").is_none() {
        return;
    }
    let rules = vyre_scan::RuleSet::parse_toml(
        concat!(
            "[[rule]]\nname = \"w\"\nliteral = \"abc\"\n",
            "[[rule]]\nname = \"ci\"\nliteral = \"GaBe\"\ncase_insensitive = true\n",
            "[[rule]]\nname = \"digits\"\nregex = \"k[0-9]{3,6}\"\n",
            "[[rule]]\nname = \"unbounded\"\nregex = \"<[a-h ]*>\"\n",
            "[[rule]]\nname = \"word\"\nregex = \"(?-u:\\\\b)[a-h]{2}(?-u:\\\\b)\"\n",
        ),
        "wgpu test",
    )
    .unwrap();
    let compiled = vyre_scan::compile(&rules, &vyre_scan::Limits::default()).unwrap();
    let dir = std::env::temp_dir().join(format!("vyre-wgpu-scan-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let alphabet = b"abcdefgh abcdefgh <>k0123456789 GABEgabe\n\x00\xff";
    for i in 0..24usize {
        let len = [0, 1, 100, 8191, 8192, 8193, 30_000][i % 7] + i;
        let data: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                alphabet[(x % alphabet.len() as u64) as usize]
            })
            .collect();
        std::fs::write(dir.join(format!("f{i}")), data).unwrap();
    }
    let run = |backend: Arc<dyn Backend>, opts: &ScanOptions| {
        let mk = Megakernel::launch(backend.clone(), megakernel_config(backend.name())).unwrap();
        let mut c = Collect::default();
        let summary = scan(&mk, &compiled, std::slice::from_ref(&dir), opts, &mut c).unwrap();
        mk.shutdown().unwrap();
        c.0.sort();
        (c, summary)
    };
    let (want, ws) = run(
        Arc::new(vyre_cpu::CpuBackend::new()),
        &ScanOptions::for_backend("cpu"),
    );
    let opts = ScanOptions {
        // Enough walk threads for both drivers to get files.
        readers: 4,
        ..ScanOptions::for_backend("wgpu")
    };
    assert_eq!(opts.drivers, 2, "the GPU default this test is about");
    let (got, gs) = run(Arc::new(WgpuMegakernelDispatcher::new().unwrap()), &opts);
    assert!(
        got.1.is_empty() && want.1.is_empty(),
        "{:?} {:?}",
        got.1,
        want.1
    );
    assert!(ws.matches > 1000, "too few matches to compare: {ws:?}");
    assert_eq!(
        (gs.files, gs.bytes, gs.matches),
        (ws.files, ws.bytes, ws.matches)
    );
    assert!(got.0 == want.0, "wgpu and cpu matches differ");
    let _ = std::fs::remove_dir_all(&dir);
}
