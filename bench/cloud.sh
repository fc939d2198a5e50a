#!/bin/bash
# Benchmark cloud publishing on the generic cloud disk (recipes/debian-cloud.toml),
# in one run, on the same disk.raw:
#   - conversions: `kiln convert --format vhd` against
#     `qemu-img convert -O vpc -o subformat=fixed,force_size` (the peer), and
#     `kiln convert --format gce` against `tar --format=gnu | pigz -6`;
#   - the upload into moto (the AWS emulator) on loopback: `kiln publish
#     --to aws://eu-west-1` (EBS direct APIs, zero blocks skipped, a fresh
#     moto each run) against a plain `curl -T disk.raw` PUT of the whole file
#     into moto's S3 (the peer): wall time, and bytes per second sent.
#
#   sudo bench/cloud.sh [RUNS]          (default 3; medians; needs moto[server] and pigz)
set -euo pipefail
runs=${1:-3}
. "$(dirname "$0")/lib.sh"
use_bench_cache
command -v pigz >/dev/null || { echo "bench/cloud.sh needs pigz (apt-get install pigz)" >&2; exit 1; }
python3 -c 'import moto' 2>/dev/null || { echo "bench/cloud.sh needs moto: pip install 'moto[server]'" >&2; exit 1; }

cp -r "$root/recipes/classes" "$root/recipes/debian-cloud.toml" "$work/"
printf 'include = ["debian-cloud.toml"]\n[output]\nformats = ["disk"]\n' > "$work/cloud.toml"
"$kiln" build -q "$work/cloud.toml" -o "$work/out"
raw=$work/out/disk.raw

vhd_kiln() { "$kiln" convert "$raw" --format vhd -o "$work/k.vhd" --epoch 0; }
vhd_peer() { qemu-img convert -q -f raw -O vpc -o subformat=fixed,force_size "$raw" "$work/q.vhd"; }
gce_kiln() { "$kiln" convert "$raw" --format gce -o "$work/k.tar.gz" --epoch 0; }
gce_peer() { tar --format=gnu -C "$work/out" -cf - disk.raw | pigz -6 > "$work/p.tar.gz"; }
kv=$(times "$runs" vhd_kiln); qv=$(times "$runs" vhd_peer)
kg=$(times "$runs" gce_kiln); pg=$(times "$runs" gce_peer)

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
moto_pid=
start_moto() {
  if [ -n "$moto_pid" ]; then kill "$moto_pid"; wait "$moto_pid" 2>/dev/null || true; fi
  python3 -m moto.server -H 127.0.0.1 -p "$port" >/dev/null 2>&1 &
  moto_pid=$!
  for _ in $(seq 150); do curl -s -o /dev/null "http://127.0.0.1:$port/" && return; sleep 0.2; done
  echo "moto did not start" >&2; exit 1
}
trap 'if [ -n "$moto_pid" ]; then kill "$moto_pid"; fi; rm -rf "$work"' EXIT
export AWS_ENDPOINT_URL=http://127.0.0.1:$port AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench
export KILN_CATALOG=$work/catalog.sqlite
# Each run against a fresh moto (started outside the timing).
up_kiln() { "$kiln" publish "$work/out" --to aws://eu-west-1 --json > "$work/pub.json"; }
up_peer() { curl -sf -X PUT "http://127.0.0.1:$port/bench" && curl -sf -T "$raw" "http://127.0.0.1:$port/bench/disk.raw"; }
k=(); p=()
for _ in $(seq "$runs"); do
  start_moto; k+=("$(secs up_kiln)")
  start_moto; p+=("$(secs up_peer)")
done
uk=$(printf '%s\n' "${k[@]}" | median); up=$(printf '%s\n' "${p[@]}" | median)
sent=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["published"][0]["bytes-sent"])' "$work/pub.json")
size=$(stat -c %s "$raw")

echo
echo "generic cloud disk.raw: $(( size >> 20 )) MiB apparent, $(( $(du -k "$raw" | cut -f1) >> 10 )) MiB allocated; median of $runs (wall s):"
printf '  fixed VHD:  kiln convert %6.2f   qemu-img convert %6.2f   (kiln / peer %.2fx)\n' "$kv" "$qv" "$(echo "$kv / $qv" | bc -l)"
printf '  GCE tar.gz: kiln convert %6.2f   tar | pigz -6    %6.2f   (kiln / peer %.2fx; %d vs %d MiB)\n' "$kg" "$pg" \
  "$(echo "$kg / $pg" | bc -l)" $(( $(stat -c %s "$work/k.tar.gz") >> 20 )) $(( $(stat -c %s "$work/p.tar.gz") >> 20 ))
printf '  upload to moto: kiln publish aws:// %6.2f (%d MiB sent)   curl -T to S3 %6.2f (%d MiB)   (kiln / peer %.2fx wall)\n' \
  "$uk" $(( sent >> 20 )) "$up" $(( size >> 20 )) "$(echo "$uk / $up" | bc -l)"
printf '  throughput of what is sent: kiln %.0f MiB/s, curl %.0f MiB/s (kiln / peer %.2fx)\n' \
  "$(echo "$sent / 1048576 / $uk" | bc -l)" "$(echo "$size / 1048576 / $up" | bc -l)" \
  "$(echo "($sent / $uk) / ($size / $up)" | bc -l)"
