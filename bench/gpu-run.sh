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
# Usage there: bash bench/gpu-run.sh {smoke|test|bench|scan|all}
set -uo pipefail
OUT=${OUT:-/tmp/vyre-out}; mkdir -p "$OUT"
export VYRE_CONFORMANCE_DIR=$PWD/conformance RUST_LOG=${RUST_LOG:-warn}
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; nvcc --version | tail -2; uname -r; nproc; } > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"
step() { echo "== $*"; }
case "${1:-all}" in
  smoke)
    step info; timeout 120 ./${BIN:-.bin}/vyre info 2>&1 | tee "$OUT/info.log"
    step run; timeout 60 ./${BIN:-.bin}/vyre run --backend cuda examples/hello.vasm 2>&1 | tee "$OUT/run.log"
    ;;
  test)
    step "cuda conformance vs cpu oracle"; VYRE_CONFORMANCE_PROGRESS=1 timeout ${TEST_TIMEOUT:-400} ./${BIN:-.bin}/cuda-test 2>&1 | tee "$OUT/cuda-test.log"
    ;;
  bench)
    step "bench ring"; timeout 500 ./${BIN:-.bin}/vyre bench ring --backend cuda --seconds "${SECONDS_PER_CELL:-1}" --round-trips 20000 --out "$OUT/ring-cuda.md" 2>&1 | tail -40
    ;;
  scan)
    # A generated corpus (base64 text) and 1,000 literal rules cut from it; vyre scan on
    # cuda and on cpu (all cores) must print the same counts; times for both.
    step "scan corpus"; mkdir -p /tmp/vc
    for i in 0 1 2 3; do [ -s /tmp/vc/f$i ] || head -c $((192 << 20)) /dev/urandom | base64 -w 100 > /tmp/vc/f$i; done
    du -sh /tmp/vc
    awk 'NR % 997 == 1 && n < 1000 { printf "[[rule]]\nname = \"w%d\"\nliteral = \"%s\"\n", n, substr($0, 11, 9); n++ }' /tmp/vc/f0 > "$OUT/w1000.toml"
    cat /tmp/vc/* > /dev/null
    for b in cuda cpu; do
      step "vyre scan --backend $b"
      /usr/bin/time -v ./${BIN:-.bin}/vyre scan --backend "$b" --count --rules "$OUT/w1000.toml" /tmp/vc ${SCAN_ARGS:-} > "$OUT/scan-$b.txt" 2> "$OUT/scan-$b.err"
      echo "exit $?"; grep -E "vyre scan:|Elapsed|Maximum resident" "$OUT/scan-$b.err"
    done
    if cmp -s "$OUT/scan-cuda.txt" "$OUT/scan-cpu.txt"; then echo "cuda and cpu counts agree ($(wc -l < "$OUT/scan-cpu.txt") lines)"; else echo "DISAGREE"; diff "$OUT/scan-cuda.txt" "$OUT/scan-cpu.txt" | head; fi
    ;;
  all)
    "$0" smoke; "$0" test; "$0" bench
    ;;
esac
