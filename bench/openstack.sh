#!/bin/bash
# Benchmark publishing to OpenStack: the generic cloud image's disk.qcow2
# into OpenStack's real Glance behind its real Keystone (Debian's
# python3-glance and python3-keystone, on loopback, started by the tests'
# kiln-testkit), in one run:
#   kiln publish --to openstack://lab (log in, check and hash the file,
#   create the image, upload, check Glance's size and sha512)
# against the peer, a plain curl: POST the image record, then
# `curl -T disk.qcow2` PUT of the file. Each run uploads anew (the
# previous image is deleted outside the timing).
#
#   sudo bench/openstack.sh [RUNS]      (default 3; medians; needs python3-glance, python3-keystone)
set -euo pipefail
runs=${1:-3}
. "$(dirname "$0")/lib.sh"
use_bench_cache
/usr/bin/python3 -c 'import glance, keystone' 2>/dev/null ||
  { echo "bench/openstack.sh needs apt-get install python3-glance python3-keystone" >&2; exit 1; }

cp -r "$root/recipes/classes" "$root/recipes/debian-cloud.toml" "$work/"
printf 'include = ["debian-cloud.toml"]\n[output]\nformats = ["disk", "qcow2"]\n' > "$work/cloud.toml"
"$kiln" build -q "$work/cloud.toml" -o "$work/out"
q=$work/out/disk.qcow2

cargo build -q --release -p kiln-testkit --example openstack --manifest-path "$root/Cargo.toml"
lab=$work/lab
mkfifo "$work/hold"
"$root/target/release/examples/openstack" "$lab" < "$work/hold" > "$work/lab.log" 2>&1 &
lab_pid=$!
exec 3> "$work/hold"
trap 'exec 3>&-; wait "$lab_pid" 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 300); do [ -e "$lab/ready" ] && break; sleep 0.2; done
[ -e "$lab/ready" ] || { cat "$work/lab.log" >&2; exit 1; }
glance=$(cat "$lab/glance-url") token=$(cat "$lab/token")
export OS_CLIENT_CONFIG_FILE=$lab/clouds.yaml KILN_CATALOG=$work/catalog.sqlite

delete_all() {
  for id in $(curl -sf -H "X-Auth-Token: $token" "$glance/v2/images?limit=1000" |
      python3 -c 'import json,sys; print(" ".join(i["id"] for i in json.load(sys.stdin)["images"]))'); do
    curl -sf -X DELETE -H "X-Auth-Token: $token" "$glance/v2/images/$id"
  done
}
up_kiln() { "$kiln" publish "$work/out" --to openstack://lab --json > "$work/pub.json"; }
up_peer() {
  id=$(curl -sf -H "X-Auth-Token: $token" -H 'Content-Type: application/json' \
    -d '{"name":"peer","disk_format":"qcow2","container_format":"bare"}' "$glance/v2/images" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  curl -sf -X PUT -H "X-Auth-Token: $token" -H 'Content-Type: application/octet-stream' -T "$q" "$glance/v2/images/$id/file"
}
k=(); p=()
for _ in $(seq "$runs"); do
  delete_all; k+=("$(secs up_kiln)")
  python3 -c 'import json,sys; assert json.load(open(sys.argv[1]))["published"][0]["how"] == "uploaded"' "$work/pub.json"
  delete_all; p+=("$(secs up_peer)")
done
uk=$(printf '%s\n' "${k[@]}" | median); up=$(printf '%s\n' "${p[@]}" | median)
size=$(stat -c %s "$q")

echo
echo "generic cloud disk.qcow2: $(( size >> 20 )) MiB; median of $runs (wall s):"
printf '  upload to Glance: kiln publish openstack:// %6.2f   curl POST + PUT -T %6.2f   (kiln / peer %.2fx wall)\n' \
  "$uk" "$up" "$(echo "$uk / $up" | bc -l)"
printf '  throughput: kiln %.0f MiB/s, curl %.0f MiB/s (kiln / peer %.2fx)\n' \
  "$(echo "$size / 1048576 / $uk" | bc -l)" "$(echo "$size / 1048576 / $up" | bc -l)" "$(echo "$up / $uk" | bc -l)"
