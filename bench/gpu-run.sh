#!/usr/bin/env bash
# Runs on the GPU machine (see bench/README.md): carried binaries in .bin/, nothing is built.
# Checks the cuda backend against the cpu oracle, then benchmarks; everything lands in $OUT.
#
# Build and stage the binaries first, on the development machine (.bin/ is git-ignored via
# .git/info/exclude and travels as a carried path):
#   cargo build --release -p vyre-cli
#   cargo test --release -p vyre-cuda --no-run     # prints target/release/deps/cuda-<hash>
#   mkdir -p .bin && cp target/release/vyre .bin/vyre && cp target/release/deps/cuda-<hash> .bin/cuda-test
#   strip .bin/vyre .bin/cuda-test
# Usage there: bash bench/gpu-run.sh {smoke|test|bench|all}
set -uo pipefail
OUT=${OUT:-/tmp/vyre-out}; mkdir -p "$OUT"
export VYRE_CONFORMANCE_DIR=$PWD/conformance RUST_LOG=${RUST_LOG:-warn}
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; nvcc --version | tail -2; uname -r; nproc; } > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"
step() { echo "== $*"; }
case "${1:-all}" in
  smoke)
    step info; timeout 120 ./.bin/vyre info 2>&1 | tee "$OUT/info.log"
    step run; timeout 60 ./.bin/vyre run --backend cuda examples/hello.vasm 2>&1 | tee "$OUT/run.log"
    ;;
  test)
    step "cuda conformance vs cpu oracle"; VYRE_CONFORMANCE_PROGRESS=1 timeout ${TEST_TIMEOUT:-400} ./.bin/cuda-test 2>&1 | tee "$OUT/cuda-test.log"
    ;;
  bench)
    step "bench ring"; timeout 500 ./.bin/vyre bench ring --backend cuda --seconds "${SECONDS_PER_CELL:-1}" --round-trips 20000 --out "$OUT/ring-cuda.md" 2>&1 | tail -40
    ;;
  all)
    "$0" smoke; "$0" test; "$0" bench
    ;;
esac
