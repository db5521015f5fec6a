#!/usr/bin/env bash
# Session 9's A/B on the GPU machine: `vyre scan --backend cuda --count` with
# --hit-regions packed and fixed, alternating, N passes per rule set; prints each pass's
# time, and with STAGES=1 the driver thread's stage log and the sorted output's md5.
#   VYRE=.bin/vyre N=5 STAGES=1 bash bench/gpu-scan-stages.sh RULES.toml...
# (rule files as `vyre bench scan` writes them, e.g. its 1,000 words and secrets). Needs the
# vyre binary (a release build, carried as in bench/gpu-scan.sh) and the corpus of
# bench/scan-corpus.sh. BACKEND=cpu tries it on a machine without a GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
CORPUS=${CORPUS:-/tmp/vyre-corpus}
[ -d "$CORPUS" ] || bash bench/scan-corpus.sh unpack "$CORPUS" 1.4 > /dev/null 2>&1
OUTDIR=${OUT:-/tmp}
VYRE=${VYRE:-.bin/vyre}
[ $# -gt 0 ] || { echo "usage: bash bench/gpu-scan-stages.sh RULES.toml..." >&2; exit 2; }
for r in "$@"; do
    for i in $(seq 1 "${N:-5}"); do
      for l in packed fixed; do
        log=$($VYRE scan --backend "${BACKEND:-cuda}" --count --rules "$r" --hit-regions $l \
          --log vyre_scan::stages=info "$CORPUS" 2>&1 > "$OUTDIR/stages.out" | sed 's/\x1b\[[0-9;]*m//g')
        echo "$(basename "$r" .toml) $l pass $i: $(grep -o 'in [0-9.]* s' <<< "$log" | tail -1)"
        if [ -n "${STAGES:-}" ]; then
          grep "driver thread" <<< "$log" | sed 's/.*driver thread:/  driver:/'
          echo "  sorted output md5 $(sort "$OUTDIR/stages.out" | md5sum | cut -d' ' -f1)"
        fi
      done
    done
done
