#!/usr/bin/env bash
# The corpus for `vyre bench scan`: Debian's Linux kernel source (real code, the corpus of
# the ripgrep numbers in design.md "Measured reference points").
#
# On the development machine (has apt and internet):
#   apt-get install -y linux-source-6.1 ripgrep xz-utils        # gives /usr/src/linux-source-6.1.tar.xz
#   bash bench/scan-corpus.sh full DIR [GB]     # the whole tree in DIR/copy0 (~1.3 GB), replicated to GB if given
#   bash bench/scan-corpus.sh pack [RAW_MB]     # .bin/corpus/linux-subset.tar.xz: every Nth file of the
#                                               # sorted tree up to RAW_MB (default 300) uncompressed, about
#                                               # 35 MiB packed; plus .bin/rg (Debian's ripgrep 13, static-pie)
#   bash bench/scan-corpus.sh unpack DIR [GB]   # the pack unpacked into DIR/copy0, replicated to GB if given
#
# The GPU machine has no internet and carries at most 64 MiB: carry .bin/ (vyre, rg, the pack);
# bench/gpu-scan.sh runs `unpack /tmp/vyre-corpus 1.4` there. .bin/ is git-ignored via
# .git/info/exclude. Replicas are byte-identical copies (copy1, copy2, ...): every engine reads
# every byte of every copy, and the page cache is warm, so replication costs no realism in
# bytes/s, only in the number of distinct words.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=${LINUX_SOURCE:-$(ls /usr/src/linux-source-*.tar.xz 2>/dev/null | sort -V | tail -1 || true)}
PACK=.bin/corpus/linux-subset.tar.xz

replicate() { # DIR GB: copy DIR/copy0 to DIR/copy1.. until the total reaches GB
  local dir=$1 gb=$2 one total n=1
  one=$(du -sb "$dir/copy0" | cut -f1)
  total=$one
  while awk -v t="$total" -v g="$gb" 'BEGIN { exit !(t < g * 1e9) }'; do
    cp -r "$dir/copy0" "$dir/copy$n"
    total=$((total + one)); n=$((n + 1))
  done
  echo "corpus $dir: $n copies, $(du -sb "$dir" | cut -f1) bytes, $(find "$dir" -type f | wc -l) files"
}

need_src() {
  [ -n "$SRC" ] && [ -f "$SRC" ] || { echo "no /usr/src/linux-source-*.tar.xz: apt-get install -y linux-source-6.1 (or set LINUX_SOURCE)" >&2; exit 2; }
}

case "${1:-}" in
  full)
    need_src; dir=${2:?DIR}; rm -rf "$dir"; mkdir -p "$dir/copy0"
    tar -xJf "$SRC" -C "$dir/copy0" --strip-components=1
    [ -n "${3:-}" ] && replicate "$dir" "$3" || true
    ;;
  pack)
    need_src; raw_mb=${2:-300}; tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
    tar -xJf "$SRC" -C "$tmp"
    top=$(ls "$tmp"); total=$(du -sb "$tmp/$top" | cut -f1)
    stride=$(( (total + raw_mb * 1000000 - 1) / (raw_mb * 1000000) ))
    (cd "$tmp" && find "$top" -type f | LC_ALL=C sort | awk -v s="$stride" 'NR % s == 0' > list)
    mkdir -p .bin/corpus
    tar -cf - -C "$tmp" --transform "s|^$top|linux-subset|" -T "$tmp/list" | xz -6 -T0 > "$PACK"
    echo "$PACK: $(wc -l < "$tmp/list") files (every ${stride}th of $top), $(stat -c %s "$PACK") bytes packed"
    if [ ! -x .bin/rg ]; then
      (cd "$tmp" && apt-get download ripgrep >/dev/null && dpkg-deb -x ripgrep_*.deb deb)
      cp "$tmp/deb/usr/bin/rg" .bin/rg && strip .bin/rg 2>/dev/null || true
      echo ".bin/rg: $(.bin/rg --version | head -1), $(stat -c %s .bin/rg) bytes"
    fi
    ;;
  unpack)
    dir=${2:?DIR}; [ -f "$PACK" ] || { echo "no $PACK: run 'bash bench/scan-corpus.sh pack' first" >&2; exit 2; }
    rm -rf "$dir"; mkdir -p "$dir/copy0"
    tar -xJf "$PACK" -C "$dir/copy0" --strip-components=1
    if [ -n "${3:-}" ]; then replicate "$dir" "$3"; else replicate "$dir" 0; fi
    ;;
  *)
    sed -n '2,17p' "$0"; exit 2
    ;;
esac
