#!/bin/bash
# Benchmark the A/B update of the immutable cloud image
# (recipes/debian-cloud-immutable.toml), warm caches, in one run:
#   - the extra build step: the same lock built without and with [update]
#     (the split artifacts: /usr and its hash tree as xz, the UKI), against
#     doing that step by hand with xz(1) -T0 -1 on the same files (the peer);
#   - the update payload against the full disk image (apparent, allocated
#     and qcow2 sizes);
#   - under QEMU TCG, `kiln test --upgrade`: seconds from the update
#     starting (systemd-sysupdate on the machine) to the new version
#     running, and the whole session.
#
#   sudo bench/update.sh [RUNS]        (default 3 builds each; medians; SKIP_BOOT=1 skips QEMU)
set -euo pipefail
runs=${1:-3}
. "$(dirname "$0")/lib.sh"
use_bench_cache

cp -r "$root/recipes/classes" "$root/recipes/debian-cloud-immutable.toml" "$work/"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$work/imm.toml" <<EOF
include = ["debian-cloud-immutable.toml"]
[image]
name = "bench-upd"
version = "1"
EOF
cat > "$work/upd.toml" <<EOF
include = ["imm.toml"]
[update]
url = "http://10.0.2.2:$port/"
tries = 2
EOF
openssl genpkey -algorithm ed25519 -out "$work/key.pem" 2>/dev/null
"$kiln" lock -q "$work/imm.toml"
cp "$work/imm.lock" "$work/upd.lock"

build() { "$kiln" build -q "$work/$1.toml" -o "$work/out-$1${3:-}" --sign-key "$work/key.pem" --image-version "${2:-1}"; }
imm=$(times "$runs" build imm)
upd=$(times "$runs" build upd)
out=$work/out-upd
ls -l "$out/update"

# The peer: the same step by hand, from the same /usr image and hash tree
# (cut out of disk.raw by the manifest's partition table).
python3 - "$out" "$work" <<'PY'
import json, sys
out, work = sys.argv[1], sys.argv[2]
m = json.load(open(f"{out}/manifest.json"))
d = m["disk"]["amd64"]
parts = {p["label"]: p for p in d["partitions"]}
v = d["update"]["version"]
with open(f"{out}/disk.raw", "rb") as f, open(f"{work}/cuts", "w") as c:
    for label, name, size in [(f"usr_{v}", "usr.img", d["usr"]["size"]), (f"usr-verity_{v}", "verity.img", None)]:
        p = parts[label]
        f.seek(p["offset"])
        n = size if size else p["size"]
        open(f"{work}/{name}", "wb").write(f.read(n))
PY
peer() { xz -T0 -1 -k -f "$work/usr.img"; xz -T0 -1 -k -f "$work/verity.img"; cp "$out/update/"*.efi "$work/uki.efi"; }
by_hand=$(times "$runs" peer)

size() { stat -c %s "$1"; }
payload=$(cat "$out/update/"* | wc -c)
raw=$(size "$out/disk.raw")
alloc=$(( $(stat -c %b "$out/disk.raw") * 512 ))
qcow=$(size "$out/disk.qcow2")
step=$(echo "$upd - $imm" | bc -l)

echo
echo "immutable cloud image, $runs builds each (median seconds):"
printf '  disk build without [update]        %7.1f s\n' "$imm"
printf '  disk build with [update]           %7.1f s   (%.2fx; the update step %.1f s)\n' "$upd" "$(echo "$upd / $imm" | bc -l)" "$step"
printf '  peer: xz -T0 -1 + cp, same files   %7.1f s   (kiln step / peer: %.2fx)\n' "$by_hand" "$(echo "$step / $by_hand" | bc -l)"
echo "update payload against the disk:"
printf '  payload (usr.xz + verity.xz + UKI) %7.1f MiB\n' "$(echo "$payload / 1048576" | bc -l)"
printf '  disk.raw apparent / allocated      %7.1f / %.1f MiB (payload %.2fx / %.2fx)\n' \
  "$(echo "$raw / 1048576" | bc -l)" "$(echo "$alloc / 1048576" | bc -l)" \
  "$(echo "$payload / $raw" | bc -l)" "$(echo "$payload / $alloc" | bc -l)"
printf '  disk.qcow2                         %7.1f MiB (payload %.2fx)\n' "$(echo "$qcow / 1048576" | bc -l)" "$(echo "$payload / $qcow" | bc -l)"

if [ -z "${SKIP_BOOT:-}" ]; then
  build upd 2 -v2
  "$kiln" test --upgrade "$work/out-upd" "$work/out-upd-v2" --sign-key "$work/key.pem" \
    --timeout 1800 --json > "$work/up.json" 2>"$work/up.err" || { tail -40 "$work/up.err"; exit 1; }
  python3 - "$work/up.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print("QEMU TCG, kiln test --upgrade 1 -> 2:")
print(f"  update start -> new version running  {r['update-to-new-seconds']:7.1f} s")
print(f"  whole session (2 boots)              {r['seconds']:7.1f} s")
PY
fi
