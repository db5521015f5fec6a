//! Capability gate shared by the wgpu tests: no adapter means a visible skip, unless
//! `VYRE_REQUIRE_WGPU=1` (set in CI), where it is a failure.

use std::sync::Arc;
use vyre_wgpu::Gpu;

/// The device, or `None` after printing why the test is skipped.
pub fn require_gpu(test: &str) -> Option<Arc<Gpu>> {
    match vyre_wgpu::device() {
        Ok(gpu) => Some(gpu),
        Err(e) => {
            if std::env::var("VYRE_REQUIRE_WGPU").is_ok_and(|v| v == "1") {
                panic!("{test}: VYRE_REQUIRE_WGPU=1 but the wgpu backend is unavailable: {e}");
            }
            // Straight to the stderr handle: libtest captures print!/eprint! of passing tests,
            // and a skip must be seen.
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "{test}: skipped: no wgpu adapter ({e})");
            None
        }
    }
}
