#!/usr/bin/env bash
# Runs on the GPU machine with carried binaries (BIN, default .gpu: vyre and cuda-test, see
# bench/gpu-run.sh for how to stage them): the cuda tests against the cpu oracle, then the
# ring benchmark, then round trips by stage for kernel variants (VYRE_CUDA_DEFINES) and
# tunings, each variant re-measuring the baselines in its own process. Output in $OUT.
# Usage: bash bench/gpu-ring.sh [test] [bench] [stages] [ab]   (default: the first three)
# ab: ROUNDS rounds over ENTRIES, a list of LABEL=BINARY[:DEFINE,DEFINE...] (e.g.
# "A=.gpu/vyre-a B=.gpu/vyre BF=.gpu/vyre:-DVYRE_LINE_FENCE=1"), one process per entry and
# round: the full bench with SECONDS_PER_CELL (default 0.3), its key rows printed (RT_ONLY=1:
# the round trip alone).
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
    ab)
      : > "$OUT/ab-all.md"
      for r in $(seq "${ROUNDS:-3}"); do
        for e in ${ENTRIES:?ENTRIES=LABEL=BINARY[:DEFINES] ...}; do
          [[ $e == *=* ]] || { echo "ab: '$e' is not LABEL=BINARY[:DEFINES]"; exit 2; }
          label=${e%%=*}; rest=${e#*=}; bin=${rest%%:*}; defs=
          [ "$bin" != "$rest" ] && defs=${rest#*:}
          [[ $bin == /* ]] || bin=./$bin
          echo "== round $r: $label ($bin${defs:+, $defs})"
          VYRE_CUDA_DEFINES="${defs//,/ }" timeout 200 "$bin" bench ring --backend cuda \
            --seconds "${SECONDS_PER_CELL:-0.3}" --round-trips 20000 ${RT_ONLY:+--round-trip-only} \
            > "$OUT/ab-cur.md" 2>&1
          echo "exit $?"
          grep -E "round trip p50|^\| (vyre megakernel|raw mapped)|^\| NOP \| (32|65536) \||^\| HASH64 4 KiB \| 65536|^\| NOP \| [0-9.]+ ns|^\| (1|8) \| [0-9.]+ M/s" "$OUT/ab-cur.md"
          cat "$OUT/ab-cur.md" >> "$OUT/ab-all.md"
        done
      done
      rm -f "$OUT/ab-cur.md"
      ;;
  esac
done
