#!/usr/bin/env bash
# Session 9's A/B on the GPU machine: `vyre scan --backend cuda --count` with
# --hit-regions packed and fixed, alternating, N passes per rule set; prints each pass's
# time, and with STAGES=1 the driver thread's stage log and the sorted output's md5.
#   bash bench/gpu-scan-stages.sh [RULES.toml...]   (default: .gpu/1000-words.toml .gpu/secrets.toml)
# Needs .gpu/vyre (a release build, carried) and the corpus of bench/scan-corpus.sh.
set -uo pipefail
cd "$(dirname "$0")/.."
CORPUS=${CORPUS:-/tmp/vyre-corpus}
[ -d "$CORPUS" ] || bash bench/scan-corpus.sh unpack "$CORPUS" 1.4 > /dev/null 2>&1
OUTDIR=${OUT:-/tmp}
for rules in "${@:-.gpu/1000-words.toml .gpu/secrets.toml}"; do
  for r in $rules; do
    for i in $(seq 1 "${N:-5}"); do
      for l in packed fixed; do
        log=$(.gpu/vyre scan --backend cuda --count --rules "$r" --hit-regions $l \
          --log vyre_scan::stages=info "$CORPUS" 2>&1 > "$OUTDIR/stages.out" | sed 's/\x1b\[[0-9;]*m//g')
        echo "$(basename "$r" .toml) $l pass $i: $(grep -o 'in [0-9.]* s' <<< "$log" | tail -1)"
        if [ -n "${STAGES:-}" ]; then
          grep "driver thread" <<< "$log" | sed 's/.*driver thread:/  driver:/'
          echo "  sorted output md5 $(sort "$OUTDIR/stages.out" | md5sum | cut -d' ' -f1)"
        fi
      done
    done
  done
done
