# Shared setup of the benchmarks in bench/. Each script sources it after
# `set -euo pipefail`:
#
#   . "$(dirname "$0")/lib.sh"
#
# It builds Kiln in release mode and sets
#   root   the workspace,
#   kiln   the release binary,
#   work   a temporary directory, removed when the script exits.
# The functions below are for the scripts to call.

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cargo build --release -q -p kiln --manifest-path "$root/Cargo.toml"
kiln=$root/target/release/kiln
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Kiln's warm cache, shared by the benchmarks and kept between runs
# (an exported KILN_CACHE_DIR wins).
use_bench_cache() { export KILN_CACHE_DIR=${KILN_CACHE_DIR:-$root/target/bench-cache}; }

# mmdebstrap's .debs, kept between runs in $mmcache (MM_CACHE wins).
use_mm_cache() {
  mmcache=${MM_CACHE:-$root/target/bench-mmdebstrap-debs}
  mkdir -p "$mmcache"
}

# mmdebstrap with the options and arguments given (SUITE TARGET last) and its .debs synced in from and out
# to $mmcache (see use_mm_cache), timed by /usr/bin/time into $work/t.
mm_cached() {
  /usr/bin/time -f "%e %M" -o "$work/t" mmdebstrap --quiet \
    --setup-hook='mkdir -p "$1"/var/cache/apt/archives/' \
    --setup-hook="sync-in $mmcache /var/cache/apt/archives/" \
    --customize-hook="sync-out /var/cache/apt/archives $mmcache" \
    "$@"
}

# The median of the numbers on stdin, one a line.
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# Wall seconds of a command, its output discarded.
secs() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N); echo "$e - $s" | bc -l; }

# times N CMD...: the median wall seconds of N runs of CMD.
times() { local n=$1; shift; for _ in $(seq "$n"); do secs "$@"; done | median; }

# Runs a function that times itself into $work/t with /usr/bin/time -f "%e %M"
# (kiln or mmdebstrap) and prints "seconds maxrss_kb"; on failure shows its
# stderr and exits.
measure() {
  "$@" >/dev/null 2>"$work/err" || { cat "$work/err" >&2; exit 1; }
  cat "$work/t"
}

# The suite and the comma-separated [packages] include list of a recipe,
# its included classes' first (what mmdebstrap is asked for the same set).
recipe_request() {
  python3 - "$1" <<'PY'
import sys, tomllib, os
def layers(path):
    d = tomllib.load(open(path, 'rb'))
    out = []
    for inc in d.get('include', []):
        out += layers(os.path.join(os.path.dirname(path), inc))
    return out + [d]
inc, suite = [], None
for l in layers(sys.argv[1]):
    suite = l.get('image', {}).get('suite', suite)
    for p in l.get('packages', {}).get('include', []):
        if p not in inc: inc.append(p)
print(suite, ",".join(inc))
PY
}
