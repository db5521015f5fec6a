//! The driver's pipeline-cache data goes through vyre's pipeline cache: cold build, memory hit,
//! disk hit (the blob handed back to the driver), and a corrupt blob rebuilt, never trusted.

mod common;

use vyre_runtime::pipeline_cache::{CacheConfig, PipelineCache};

#[test]
fn megakernel_pipeline_cache_round_trip_and_corrupt_blob_rebuilt() {
    let Some(gpu) = common::require_gpu("megakernel_pipeline_cache_round_trip") else {
        return;
    };
    let Some(key) = gpu.pipeline_cache_key() else {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "skipped: adapter {} has no driver pipeline cache (Features::PIPELINE_CACHE)",
            gpu.describe()
        );
        return;
    };
    let dir = std::env::temp_dir().join(format!("vyre-wgpu-cache-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cache = PipelineCache::new(CacheConfig::in_dir(&dir));
    let cold = gpu.build_pipeline_through(&cache).unwrap();
    assert!(cold.contains("cold start"), "{cold}");
    let path = cache.blob_path(&key).expect("disk cache");
    assert!(path.exists(), "blob written to {}", path.display());
    let warm = gpu.build_pipeline_through(&cache).unwrap();
    assert!(warm.contains("memory hit"), "{warm}");
    cache.clear_memory();
    let disk = gpu.build_pipeline_through(&cache).unwrap();
    assert!(disk.contains("disk hit"), "{disk}");
    // Flip a payload byte: the content hash rejects it, the pipeline is rebuilt from scratch.
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    cache.clear_memory();
    let rebuilt = gpu.build_pipeline_through(&cache).unwrap();
    assert!(
        rebuilt.contains("cold start") && rebuilt.contains("corrupt"),
        "{rebuilt}"
    );
    assert_eq!(cache.stats().rejected, 1);
    println!("{cold}\n{warm}\n{disk}\n{rebuilt}");
    let _ = std::fs::remove_dir_all(&dir);
}
