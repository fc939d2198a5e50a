#!/bin/bash
# `kiln watch` over a fleet of catalogued images against apt doing the same
# check image by image (`apt list --upgradable` with each image's package list
# as its dpkg status, over the same bookworm, -updates and -security
# indexes): which installed packages have a newer candidate.
#
#   bench/watch.sh [IMAGES] [RUNS]
#
# One bookworm distroless image (locked from bookworm alone, so the point
# and security releases since have fixes for it) is built; IMAGES copies of
# it (default 100) under other names are catalogued. Indexes are cached
# first (neither side is timed downloading them); kiln reads its cached
# Release files with --offline, apt its lists directory. Prints the median
# of RUNS (default 3) for each side, the ratio, and whether both found the
# same updates.
set -euo pipefail
images=${1:-100}
runs=${2:-3}
. "$(dirname "$0")/lib.sh"
use_bench_cache
# KEEP_WORK=1 keeps the work directory (its path on stderr) to look into.
[ -z "${KEEP_WORK:-}" ] || { trap - EXIT; echo "work: $work" >&2; }

# The host's mirrors, from its apt configuration (never written down here).
repo() { apt-get indextargets --format '$(REPO_URI) $(RELEASE)' | awk -v s="$1" '$2 == s {print $1; exit}'; }
mirror=$(repo bookworm)
security=$(repo bookworm-security)
[ -n "$mirror" ] && [ -n "$security" ] || {
  echo "the host's apt sources name no bookworm and bookworm-security" >&2
  exit 1
}
mirror=${mirror%/}
security=${security%/}

base=$work/base
mkdir -p "$base"
cat > "$base/img.toml" <<EOF
[image]
name = "img"
suite = "bookworm"
architectures = ["amd64"]
default-sources = false

[packages]
include = ["libssl3", "zlib1g", "tzdata", "libpcre2-8-0", "libc6", "libexpat1", "libcurl4"]

[container]
distroless = true

[output]
formats = ["tar"]

[[source]]
uri = "$mirror"
suites = ["bookworm"]
EOF
"$kiln" --catalog none build -q "$base/img.toml" --output "$base/out"
catalog=$work/catalog.sqlite
echo "cataloguing $images images…" >&2
for i in $(seq "$images"); do
  d=$work/fleet/img$i
  mkdir -p "$d/out"
  cp "$base/img.toml" "$base/img.lock" "$d/"
  ln "$base/out/rootfs.tar" "$d/out/rootfs.tar"
  cp "$base/out/"*.json "$d/out/"
  # Another image name: another catalog entry.
  python3 - "$d/out/manifest.json" "img$i" <<'PY'
import json, sys
p, name = sys.argv[1], sys.argv[2]
m = json.load(open(p))
m["image"] = name
json.dump(m, open(p, "w"))
PY
done
"$kiln" --catalog "$catalog" catalog import "$work/fleet" >/dev/null 2>&1

# The peer: apt over the same suites, its lists downloaded once.
apt=$work/apt
mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/etc/preferences.d" "$apt/etc/apt.conf.d"
cat > "$apt/etc/sources.list" <<EOF
deb [arch=amd64] $mirror bookworm main
deb [arch=amd64] $mirror bookworm-updates main
deb [arch=amd64] $security bookworm-security main
EOF
aptopts=(-o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o "Dir::Etc::SourceList=$apt/etc/sources.list"
  -o "Dir::Etc::SourceParts=$apt/none" -o "Dir::Etc::Preferences=$apt/none" -o "Dir::Etc::PreferencesParts=$apt/etc/preferences.d"
  -o "APT::Architecture=amd64" -o "APT::Architectures=amd64" -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root")
apt-get "${aptopts[@]}" -qq update
# Each image's installed packages as a dpkg status file: the image's own
# records (a distroless image has one per package in status.d).
python3 - "$base/out/rootfs.tar" "$apt/status" <<'PY'
import sys, tarfile
with tarfile.open(sys.argv[1]) as t, open(sys.argv[2], "w") as out:
    for m in sorted(t.getmembers(), key=lambda m: m.name):
        if m.isfile() and "var/lib/dpkg/status.d/" in m.name and not m.name.endswith(".md5sums"):
            out.write(t.extractfile(m).read().decode().rstrip("\n") + "\n\n")
PY
# apt takes about a second an image: it is timed on PEER_SAMPLE images
# (default 10) and scaled to the fleet.
sample=${PEER_SAMPLE:-10}
[ "$sample" -le "$images" ] || sample=$images
peer() {
  for _ in $(seq "$sample"); do
    apt "${aptopts[@]}" -o "Dir::State::status=$apt/status" list --upgradable 2>/dev/null
  done
}
# Warm both once (kiln fetching and caching the suites' Release files and
# indexes), and keep what each found.
"$kiln" -q --catalog "$catalog" watch --json > /dev/null || true
"$kiln" --catalog "$catalog" watch --offline --json > "$work/kiln.json" || true
peer > "$work/apt.txt"
k=$(times "$runs" "$kiln" --catalog "$catalog" watch --offline --json)
a=$(echo "$(times "$runs" peer) * $images / $sample" | bc -l)
same=$(python3 - "$work/kiln.json" "$work/apt.txt" "$images" <<'PY'
import json, sys
k = json.load(open(sys.argv[1]))
imgs = k["images"]
n = int(sys.argv[3])
found = {tuple(sorted((u["package"], u["candidate"]) for u in i["updates"])) for i in imgs}
apt = set()
for line in open(sys.argv[2]):
    # NAME/SUITE CANDIDATE ARCH [upgradable from: INSTALLED]
    w = line.split()
    if "upgradable" in line and "/" in w[0]:
        apt.add((w[0].split("/")[0], w[1]))
ok = len(imgs) == n and len(found) == 1 and set(next(iter(found))) == apt
for i in imgs[:1]:
    if i["error"]:
        print(f"kiln: {i['name']}: {i['error']}", file=sys.stderr)
print(f"{'same' if ok else 'DIFFERENT'} updates ({len(apt)} packages per image)")
PY
)
printf 'watch %s images: kiln %.2fs, apt list --upgradable per image %.2fs (%s images timed, scaled; kiln %.1fx faster); %s\n' \
  "$images" "$k" "$a" "$sample" "$(echo "$a / $k" | bc -l)" "$same"
