#!/usr/bin/env bash
# Runs on the GPU machine with carried binaries (BIN, default .gpu: vyre and cuda-test, see
# bench/gpu-run.sh for how to stage them): the cuda tests against the cpu oracle, then the
# ring benchmark, then round trips by stage for kernel variants (VYRE_CUDA_DEFINES) and
# tunings, each variant re-measuring the baselines in its own process. Output in $OUT.
# Usage: bash bench/gpu-ring.sh [test] [bench] [stages]   (default: all three)
set -uo pipefail
OUT=${OUT:-/tmp/vyre-out}; mkdir -p "$OUT"
BIN=${BIN:-.gpu}
export VYRE_CONFORMANCE_DIR=$PWD/conformance RUST_LOG=${RUST_LOG:-warn}
export XDG_CACHE_HOME=${XDG_CACHE_HOME:-/tmp/vyre-cache}
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; uname -r; nproc; grep -m1 "model name" /proc/cpuinfo; } > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"
parts=${*:-test bench stages}
for part in $parts; do
  case $part in
    test)
      echo "== cuda tests vs the cpu oracle"
      timeout ${TEST_TIMEOUT:-300} "./$BIN/cuda-test" 2>&1 | tee "$OUT/cuda-test.log" | tail -15
      ;;
    bench)
      echo "== vyre bench ring --backend cuda"
      timeout 300 "./$BIN/vyre" bench ring --backend cuda --seconds "${SECONDS_PER_CELL:-1}" \
        --round-trips 20000 --out "$OUT/ring-cuda.md" > "$OUT/ring-cuda.log" 2>&1
      echo "exit $?"; tail -30 "$OUT/ring-cuda.log"
      ;;
    stages)
      for v in ${VARIANTS:-"-DVYRE_TICKET=1" "-DVYRE_TICKET=0"}; do
        for shift in ${SHIFTS:-6}; do
          echo "== round trip: VYRE_CUDA_DEFINES='$v' VYRE_CUDA_WORKER_SLEEP_SHIFT=$shift"
          VYRE_CUDA_TRACE=1 VYRE_CUDA_DEFINES="$v" VYRE_CUDA_WORKER_SLEEP_SHIFT=$shift timeout 120 \
            "./$BIN/vyre" bench ring --backend cuda --round-trip-only --round-trips 20000 \
            > "$OUT/rt-$shift-${v//[^A-Za-z0-9]/_}.md" 2>&1
          grep -E "round trip p50|SM clock|^\| (host|gpu|rest|total)" "$OUT/rt-$shift-${v//[^A-Za-z0-9]/_}.md"
        done
      done
      ;;
  esac
done
