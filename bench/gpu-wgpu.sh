#!/usr/bin/env bash
# Runs the wgpu backend on the GPU machine (see bench/README.md): carried binaries in .bin/,
# nothing is built there (the GPU host has no Rust). Checks wgpu against the cpu oracle (the
# conformance suite and the backend tests), then benchmarks; everything lands in $OUT.
#
# Build and stage the binaries first, on the development machine (.bin/ is git-ignored via
# .git/info/exclude and travels as a carried path):
#   cargo build --release -p vyre-cli
#   cargo test --release -p vyre-wgpu --no-run
#       # prints target/release/deps/{conformance,backend,pipeline_cache}-<hash> (the lines
#       # "Executable tests/conformance.rs", "tests/backend.rs", "tests/pipeline_cache.rs")
#   mkdir -p .bin
#   cp target/release/vyre .bin/vyre
#   cp target/release/deps/conformance-<hash> .bin/wgpu-conformance
#   cp target/release/deps/backend-<hash> .bin/wgpu-backend
#   cp target/release/deps/pipeline_cache-<hash> .bin/wgpu-pipeline-cache
#   strip .bin/vyre .bin/wgpu-conformance .bin/wgpu-backend .bin/wgpu-pipeline-cache
# and carry .bin and .gl (the Vulkan loader and NVIDIA ICD packages, *.deb).
# Usage there: bash bench/gpu-wgpu.sh {smoke|test|bench|all}
set -uo pipefail
OUT=${OUT:-/tmp/vyre-out}; mkdir -p "$OUT"
export VYRE_CONFORMANCE_DIR=$PWD/conformance RUST_LOG=${RUST_LOG:-warn}
# Vulkan: unpack the loader and the NVIDIA ICD, and use only the NVIDIA driver.
if ls .gl/*.deb > /dev/null 2>&1; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
fi
export VK_DRIVER_FILES=${VK_DRIVER_FILES:-/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json}
# The tests must run on the GPU here, never skip.
export VYRE_REQUIRE_WGPU=1
# Keep the pipeline cache inside $OUT so that its blobs come back for inspection.
export VYRE_CACHE_DIR=${VYRE_CACHE_DIR:-$OUT/vyre-cache}
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; uname -r; nproc; echo "VK_DRIVER_FILES=$VK_DRIVER_FILES"; } > "$OUT/machine-wgpu.txt" 2>&1
cat "$OUT/machine-wgpu.txt"
step() { echo "== $*"; }
case "${1:-all}" in
  smoke)
    step info; timeout 120 ./.bin/vyre info 2>&1 | tee "$OUT/wgpu-info.log"
    step run; timeout 60 ./.bin/vyre run --backend wgpu examples/hello.vasm 2>&1 | tee "$OUT/wgpu-run.log"
    ;;
  test)
    step "wgpu conformance vs cpu oracle"
    timeout ${TEST_TIMEOUT:-300} ./.bin/wgpu-conformance --nocapture 2>&1 | tee "$OUT/wgpu-conformance.log"
    step "wgpu backend tests (pages, random slots vs cpu, concurrent publishers, shutdown)"
    timeout ${TEST_TIMEOUT:-300} ./.bin/wgpu-backend --nocapture --test-threads 1 2>&1 | tee "$OUT/wgpu-backend.log"
    step "driver pipeline cache through vyre's pipeline cache (cold, memory, disk, corrupt blob rebuilt)"
    timeout ${TEST_TIMEOUT:-300} ./.bin/wgpu-pipeline-cache --nocapture 2>&1 | tee "$OUT/wgpu-pipeline-cache.log"
    ;;
  bench)
    step "bench ring (wgpu epochs vs one dispatch + readback per op)"
    timeout 500 ./.bin/vyre bench ring --backend wgpu --seconds "${SECONDS_PER_CELL:-2}" --out "$OUT/ring-wgpu-h100.md" 2>&1 | tail -20
    ;;
  all)
    "$0" smoke; "$0" test; "$0" bench
    ;;
esac
