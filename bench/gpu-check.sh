#!/usr/bin/env bash
# On the GPU machine: the cuda test binary (conformance included), then fresh `vyre scan --count`
# processes on cpu, cuda and wgpu (through Vulkan) whose sorted outputs must agree (md5, first
# 8 hex digits), with each process's wall time and the scan's own summary.
#
# Stage on the development machine (.gpu/ and .gl/ are listed in .git/info/exclude):
#   cargo build --release -p vyre-cli && cargo test --release -p vyre-cuda --no-run
#   cp target/release/vyre .gpu/vyre; cp target/release/deps/cuda-<hash> .gpu/cuda-test
#   strip .gpu/vyre .gpu/cuda-test; xz .gpu/vyre .gpu/cuda-test
#   rule files as .gpu/<name>.toml (e.g. from `vyre bench scan --rules-dir`), and the Vulkan
#   loader's packages in .gl/ (bench/README.md); carry .gpu .gl .bin/corpus .bin/rg.
# Run there: RULES="1000-words secrets 10000-words" bash bench/gpu-check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/vyre-out}; mkdir -p "$OUT"
for f in .gl/*.deb; do [ -e "$f" ] && dpkg -x "$f" /; done; ldconfig
export VK_DRIVER_FILES=${VK_DRIVER_FILES:-/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json}
(cd .gpu && for f in vyre cuda-test; do [ -e $f.xz ] && unxz -kf $f.xz; chmod +x $f; done)
[ -d /tmp/vyre-corpus/copy0 ] || bash bench/scan-corpus.sh unpack /tmp/vyre-corpus 1.4 > /dev/null
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/machine.txt"
(cd crates/vyre-cuda && timeout 300 ../../.gpu/cuda-test --test-threads 1) > "$OUT/cuda-tests.log" 2>&1
grep -E "passed|skipped|FAILED|panicked" "$OUT/cuda-tests.log" | tail -5
export VYRE_CACHE_DIR=${VYRE_CACHE_DIR:-/tmp/vyre-cache-check}; .gpu/vyre info > "$OUT/info.txt" 2>&1
for rules in ${RULES:-1000-words secrets}; do for b in cpu cuda wgpu cuda; do
  s=$EPOCHREALTIME
  .gpu/vyre scan --rules ".gpu/$rules.toml" --count --backend $b /tmp/vyre-corpus 2>"$OUT/e.txt" > "$OUT/o.txt"
  e=$EPOCHREALTIME
  echo "$(sort "$OUT/o.txt" | md5sum | cut -c1-8) $rules $b $(awk "BEGIN{printf \"%.3f\", $e-$s}") s | $(tail -1 "$OUT/e.txt")"
done; done
rm -f "$OUT/o.txt"
