#!/bin/bash
# Benchmark the generic cloud disk image (recipes/debian-cloud.toml), warm
# caches, in one run:
#   - kiln: root filesystem tarball alone vs the bootable disk.raw vs disk.raw
#     + disk.qcow2: what the image step adds (qcow2 written in-process on
#     every core; bench/qcow2.sh compares that step with qemu-img);
#   - mmdebstrap making a tarball of the same package set (the peer has no
#     disk output; its tarball is the comparable part);
#   - power-on to login prompt under QEMU TCG (kiln test), and image sizes.
#
#   sudo bench/disk.sh [RUNS]          (default 3; medians; SKIP_MM=1 skips mmdebstrap)
set -euo pipefail
runs=${1:-3}
. "$(dirname "$0")/lib.sh"
use_bench_cache
use_mm_cache

# Two recipes over the same classes: tarball only, and the disk.
cp -r "$root/recipes/classes" "$work/"
for kind in tar raw disk; do
  case $kind in tar) formats='"tar"' ;; raw) formats='"disk"' ;; disk) formats='"disk", "qcow2"' ;; esac
  cat > "$work/$kind.toml" <<EOF
include = ["classes/base.toml", "classes/cloud.toml", "classes/initramfs-tools.toml"]
[image]
name = "bench-cloud"
[output]
formats = [$formats]
EOF
done
"$kiln" lock -q "$work/tar.toml"
cp "$work/tar.lock" "$work/disk.lock"; cp "$work/tar.lock" "$work/raw.lock"

# mmdebstrap: the same package set (every package of the lock), as a tarball.
pkgs=$(python3 - "$work/tar.lock" <<'PY'
import sys, tomllib
l = tomllib.load(open(sys.argv[1], 'rb'))
print(",".join(sorted(p['name'] for p in l['package'])))
PY
)
mm() { mm_cached --variant=essential --include="$pkgs" trixie "$work/mm.tar"; }
kb() { /usr/bin/time -f "%e %M" -o "$work/t" "$kiln" build -q --locked "$work/$1.toml" --output "$work/out-$1"; }

echo "warming caches…"
kb tar; kb raw; kb disk; [ -n "${SKIP_MM:-}" ] || mm
t=(); r=(); d=(); m=(0)
for _ in $(seq "$runs"); do
  read -r s _ < <(measure kb tar); t+=("$s")
  read -r s _ < <(measure kb raw); r+=("$s")
  read -r s _ < <(measure kb disk); d+=("$s")
  [ -n "${SKIP_MM:-}" ] || { read -r s _ < <(measure mm); m+=("$s"); }
done
[ "${#m[@]}" -gt 1 ] && m=("${m[@]:1}")
mt=$(printf '%s\n' "${t[@]}" | median)
mr=$(printf '%s\n' "${r[@]}" | median)
md=$(printf '%s\n' "${d[@]}" | median)
mm_=$(printf '%s\n' "${m[@]}" | median)
npk=$(echo "$pkgs" | tr ',' '\n' | wc -l)
echo
echo "generic cloud image, $npk packages, warm caches, median of $runs (wall s):"
printf '  kiln rootfs tarball      %6.2f\n' "$mt"
printf '  kiln disk.raw            %6.2f   (image step adds %.2f s, %.0f%%)\n' "$mr" \
  "$(echo "$mr - $mt" | bc -l)" "$(echo "($mr - $mt) * 100 / $mt" | bc -l)"
printf '  kiln disk.raw + qcow2    %6.2f   (image step + qcow2 add %.2f s, %.0f%%)\n' "$md" \
  "$(echo "$md - $mt" | bc -l)" "$(echo "($md - $mt) * 100 / $mt" | bc -l)"
[ -n "${SKIP_MM:-}" ] || printf '  mmdebstrap tarball       %6.2f   (kiln tarball / mmdebstrap = %.2f, kiln disk.raw / mmdebstrap tarball = %.2f)\n' \
  "$mm_" "$(echo "$mt / $mm_" | bc -l)" "$(echo "$mr / $mm_" | bc -l)"

raw=$work/out-disk/disk.raw
echo
echo "sizes:"
printf '  disk.raw    %5d MiB apparent, %5d MiB allocated\n' $(( $(stat -c %s "$raw") >> 20 )) $(( $(du -k "$raw" | cut -f1) >> 10 ))
printf '  disk.qcow2  %5d MiB\n' $(( $(stat -c %s "$work/out-disk/disk.qcow2") >> 20 ))
printf '  zstd -3     %5d MiB (raw, for comparison)\n' $(( $(zstd -q -3 -T0 -c "$raw" | wc -c) >> 20 ))
[ -n "${SKIP_MM:-}" ] || printf '  mmdebstrap tarball %5d MiB, ' $(( $(stat -c %s "$work/mm.tar") >> 20 ))
printf '  kiln tarball %5d MiB\n' $(( $(stat -c %s "$work/out-tar/rootfs.tar") >> 20 ))

echo
echo "boot under QEMU TCG (kiln test, $runs boots):"
for _ in $(seq "$runs"); do
  "$kiln" test "$raw" --skip-static 2>&1 | grep -E 'Timing|FAIL' || true
done
