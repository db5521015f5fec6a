#!/usr/bin/env bash
# `vyre bench scan` on the GPU machine (no Rust, no internet there; everything is carried).
#
# Stage on the development machine (.bin/ is git-ignored via .git/info/exclude):
#   cargo build --release -p vyre-cli && cp target/release/vyre .bin/vyre && strip .bin/vyre  # ~11 MB
#   bash bench/scan-corpus.sh pack        # .bin/corpus/linux-subset.tar.xz (~31 MB) and .bin/rg (~4.6 MB)
# Carry exactly these three paths (~47 MB of the 64 MiB limit; don't carry all of .bin/):
#   .bin/vyre  .bin/rg  .bin/corpus
# Run there:  bash bench/gpu-scan.sh            (all steps, ~8 min on 16 cores + H100)
#             bash bench/gpu-scan.sh resident   (only the resident DFA_SCAN probe, ~1 min)
#             bash bench/gpu-scan.sh ab         (two vyre binaries alternated, cuda, literal sets)
#             bash bench/gpu-scan.sh sweep      (walk and driver thread counts, cuda, literal sets)
# Results in $OUT: scan-h100.md (the table), scan.log (also the rows of every finished rule set,
# if the 540 s timeout cuts the run short), machine.txt, rules/ (the generated rule files).
#
# Knobs (environment): GB (corpus size, default 1.4), COUNTS (default 10,1000,10000),
# BACKENDS (default cpu,cuda), MAX_COMPILE (seconds, default 90), WINDOW / BATCH / IN_FLIGHT
# / READERS (vyre file pipeline overrides; default: each backend's ScanOptions::for_backend), RESIDENT_MIB (default 1024), RESIDENT_WINDOW (bytes
# per DFA_SCAN slot, a list: one row each; default 65536,16384,4096).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/vyre-out}; mkdir -p "$OUT"
CORPUS=${CORPUS:-/tmp/vyre-corpus}
GB=${GB:-1.4} COUNTS=${COUNTS:-10,1000,10000} BACKENDS=${BACKENDS:-cpu,cuda}
MAX_COMPILE=${MAX_COMPILE:-90}
PIPE=(); [ -n "${WINDOW:-}" ] && PIPE+=(--window "$WINDOW"); [ -n "${BATCH:-}" ] && PIPE+=(--batch "$BATCH")
[ -n "${IN_FLIGHT:-}" ] && PIPE+=(--in-flight "$IN_FLIGHT"); [ -n "${READERS:-}" ] && PIPE+=(--readers "$READERS")
RESIDENT_MIB=${RESIDENT_MIB:-1024} RESIDENT_WINDOW=${RESIDENT_WINDOW:-65536,16384,4096}
VYRE=${VYRE:-.bin/vyre}
export RUST_LOG=${RUST_LOG:-warn}
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; lscpu | head -20; nproc; uname -r; } > "$OUT/machine.txt" 2>&1
head -3 "$OUT/machine.txt"
chmod +x "$VYRE" .bin/rg
if [ ! -d "$CORPUS/copy0" ]; then
  echo "== corpus"; time bash bench/scan-corpus.sh unpack "$CORPUS" "$GB"
fi
case "${1:-all}" in
  resident)
    timeout 300 "$VYRE" bench scan --corpus "$CORPUS" --backends "$BACKENDS" --rules-counts 1000 \
      --no-regex --resident-only --resident-mib "$RESIDENT_MIB" --resident-window "$RESIDENT_WINDOW" \
      --out "$OUT/scan-resident-h100.md" 2>&1 | tee "$OUT/scan-resident.log"
    ;;
  ab)
    # Two vyre binaries alternated (A B A B) on the same corpus and rule sets, cuda only, with
    # the driver thread's stage times (target vyre_scan::stages) of each run in ab.log.
    # VYRE_A / VYRE_B: the binaries (A defaults to .gpu/vyre-old, B to $VYRE); ROUNDS (default 2).
    A=${VYRE_A:-.gpu/vyre-old} B=${VYRE_B:-$VYRE}; chmod +x "$A" "$B"
    for round in $(seq "${ROUNDS:-2}"); do
      for bin in "$A" "$B"; do
        echo "== $bin (round $round)" | tee -a "$OUT/ab.log"
        RUST_LOG=warn,vyre_scan::stages=info timeout 200 "$bin" bench scan --corpus "$CORPUS" \
          --backends cuda --rg .bin/rg --rules-counts "$COUNTS" --no-regex --no-ra "${PIPE[@]}" \
          --rules-dir "$OUT/rules" --out "$OUT/ab-$(basename "$bin")-$round.md" 2>&1 \
          | grep -E "stages|^\| (10|1000|10000) words" | tee -a "$OUT/ab.log"
      done
    done
    ;;
  sweep)
    # One vyre binary ($VYRE), cuda, literal sets, once per "READERS,DRIVERS" pair in SWEEP
    # (default "16,2 14,2 16,3 13,3 16,4"), each pass side by side with ripgrep; the driver
    # threads' stage times of every run in sweep.log, the timed pass's rows in sweep.md.
    for pair in ${SWEEP:-16,2 14,2 16,3 13,3 16,4}; do
      r=${pair%,*} d=${pair#*,}
      echo "== readers $r, drivers $d" | tee -a "$OUT/sweep.log" >> "$OUT/sweep.md"
      RUST_LOG=warn,vyre_scan::stages=info timeout 200 "$VYRE" bench scan --corpus "$CORPUS" \
        --backends cuda --rg .bin/rg --rules-counts "$COUNTS" --no-regex --no-ra \
        --readers "$r" --drivers "$d" --rules-dir "$OUT/rules" 2>&1 \
        | sed -E 's/\x1b\[[0-9;]*m//g; s/^.*stages: //' | tee -a "$OUT/sweep.log" \
        | grep -E "^\| [0-9]+ words" >> "$OUT/sweep.md"
    done
    cat "$OUT/sweep.md"
    ;;
  all)
    timeout 540 "$VYRE" bench scan --corpus "$CORPUS" --backends "$BACKENDS" --rg .bin/rg \
      --rules-counts "$COUNTS" --max-compile-seconds "$MAX_COMPILE" "${PIPE[@]}" \
      --resident-mib "$RESIDENT_MIB" --resident-window "$RESIDENT_WINDOW" \
      --rules-dir "$OUT/rules" --out "$OUT/scan-h100.md" 2>&1 | tee "$OUT/scan.log"
    ;;
esac
