#!/bin/bash
# Container image benchmarks, same run, warm caches:
#  1. a distroless python3 OCI image (target: under 1 s);
#  2. a full OCI image of trixie minbase against the root filesystem tarball
#     alone (target: at most 20% more);
#  3. image sizes next to the same package set as an mmdebstrap tarball.
#
#   bench/oci.sh [RUNS]
set -euo pipefail
runs=${1:-3}
. "$(dirname "$0")/lib.sh"
use_bench_cache

cat > "$work/python.toml" <<'R'
[image]
name = "python"
suite = "trixie"
architectures = ["amd64"]
[packages]
include = ["python3"]
[container]
distroless = true
entrypoint = ["/usr/bin/python3"]
[output]
formats = ["oci"]
R
sed -e 's/^formats = .*/formats = ["tar"]/' "$root/recipes/minbase.toml" > "$work/tar.toml"
sed -e 's/^formats = .*/formats = ["oci"]/' "$root/recipes/minbase.toml" > "$work/oci.toml"
for r in python tar oci; do "$kiln" build -q "$work/$r.toml" --output "$work/out-$r"; done   # warm up, lock
p=$(times "$runs" "$kiln" build -q --locked "$work/python.toml" --output "$work/out-python")
t=$(times "$runs" "$kiln" build -q --locked "$work/tar.toml" --output "$work/out-tar")
o=$(times "$runs" "$kiln" build -q --locked "$work/oci.toml" --output "$work/out-oci")
printf 'distroless python3 OCI image: %.2fs (median of %s)\n' "$p" "$runs"
printf 'minbase: rootfs tarball %.2fs, full OCI image %.2fs (+%.0f%%)\n' "$t" "$o" "$(echo "($o / $t - 1) * 100" | bc -l)"

layer_sizes() { # compressed, uncompressed (bytes) of the single layer
  python3 - "$1" <<'PY'
import json, sys, os, gzip
d = sys.argv[1]
idx = json.load(open(f"{d}/index.json"))
m = json.load(open(f"{d}/blobs/sha256/" + idx["manifests"][0]["digest"].split(":")[1]))
lay = m["layers"][0]["digest"].split(":")[1]
comp = os.path.getsize(f"{d}/blobs/sha256/{lay}")
raw = sum(len(c) for c in iter(lambda f=gzip.open(f"{d}/blobs/sha256/{lay}"): f.read(1 << 20), b""))
print(comp, raw)
PY
}
read -r pc pu < <(layer_sizes "$work/out-python/oci")
read -r oc ou < <(layer_sizes "$work/out-oci/oci")
mmdebstrap --quiet --variant=minbase --include=apt trixie "$work/mm.tar"
gzip -6 -c "$work/mm.tar" > "$work/mm.tar.gz"
mib() { echo "scale=1; $1 / 1048576" | bc; }
printf '%-34s %12s %14s\n' image compressed_MiB uncompressed_MiB
printf '%-34s %12s %14s\n' "kiln distroless python3 (OCI)" "$(mib "$pc")" "$(mib "$pu")"
printf '%-34s %12s %14s\n' "kiln minbase (OCI)" "$(mib "$oc")" "$(mib "$ou")"
printf '%-34s %12s %14s\n' "mmdebstrap minbase tarball (gzip -6)" "$(mib "$(stat -c %s "$work/mm.tar.gz")")" "$(mib "$(stat -c %s "$work/mm.tar")")"
