#!/bin/bash
# Benchmark the compressed qcow2 step on the generic cloud disk.raw
# (recipes/debian-cloud.toml), in one run, on the same file:
#   kiln's in-process writer (every core, the same bytes every run; the
#   kiln-image example `qcow2`, which `kiln build` calls)
# against the peer, `qemu-img convert -c -O qcow2` (what Kiln ran before,
# single-threaded compression), and qemu-img with 8 coroutines and
# out-of-order writes (`-m 8 -W`, faster but its layout changes run to run).
# Wall time and peak memory, medians.
#
#   sudo bench/qcow2.sh [RUNS]          (default 3)
set -euo pipefail
runs=${1:-3}
. "$(dirname "$0")/lib.sh"
use_bench_cache
cp -r "$root/recipes/classes" "$root/recipes/debian-cloud.toml" "$work/"
printf 'include = ["debian-cloud.toml"]\n[output]\nformats = ["disk"]\n' > "$work/cloud.toml"
"$kiln" build -q "$work/cloud.toml" -o "$work/out"
raw=$work/out/disk.raw
cargo build -q --release -p kiln-image --example qcow2 --manifest-path "$root/Cargo.toml"
writer=$root/target/release/examples/qcow2

run() { /usr/bin/time -f "%e %M" -o "$work/t" "$@" >/dev/null 2>&1; cat "$work/t"; }
kiln_q() { run "$writer" "$raw" "$work/k.qcow2"; }
peer_q() { run qemu-img convert -q -c -f raw -O qcow2 "$raw" "$work/q.qcow2"; }
peer_w() { run qemu-img convert -q -c -m 8 -W -f raw -O qcow2 "$raw" "$work/w.qcow2"; }
k=(); p=(); w=()
for _ in $(seq "$runs"); do k+=("$(kiln_q)"); p+=("$(peer_q)"); w+=("$(peer_w)"); done
med() { printf '%s\n' "$@" | awk '{print $1}' | median; }
rss() { printf '%s\n' "$@" | awk '{print $2}' | median; }
cp "$work/k.qcow2" "$work/k1.qcow2"; kiln_q >/dev/null
cmp -s "$work/k.qcow2" "$work/k1.qcow2" && same=yes || same=NO
qemu-img check -q "$work/k.qcow2" && qemu-img compare -q -f raw -F qcow2 "$raw" "$work/k.qcow2"
mib() { echo $(( $(stat -c %s "$1") >> 20 )); }
kt=$(med "${k[@]}"); pt=$(med "${p[@]}"); wt=$(med "${w[@]}")
echo
echo "generic cloud disk.raw: $(( $(stat -c %s "$raw") >> 20 )) MiB apparent, $(( $(du -k "$raw" | cut -f1) >> 10 )) MiB allocated; $(nproc) cores; median of $runs"
printf '  %-34s %7s %8s %9s\n' tool wall_s peak_MB size_MiB
printf '  %-34s %7.2f %8d %9d\n' "kiln (in-process, all cores)" "$kt" $(( $(rss "${k[@]}") / 1024 )) "$(mib "$work/k.qcow2")"
printf '  %-34s %7.2f %8d %9d\n' "qemu-img convert -c" "$pt" $(( $(rss "${p[@]}") / 1024 )) "$(mib "$work/q.qcow2")"
printf '  %-34s %7.2f %8d %9d\n' "qemu-img convert -c -m 8 -W" "$wt" $(( $(rss "${w[@]}") / 1024 )) "$(mib "$work/w.qcow2")"
printf '  kiln / qemu-img: %.2fx (against -m 8 -W: %.2fx); kiln reproducible: %s; qemu-img check and compare: clean\n' \
  "$(echo "$kt / $pt" | bc -l)" "$(echo "$kt / $wt" | bc -l)" "$same"
