#!/bin/bash
# Benchmark `kiln lock` against apt's own resolution on the same requests.
#
#   bench/lock.sh [RUNS]
#
# For each request: Kiln with a warm index cache, `apt-get install -s` with
# warm package lists (apt's resolver alone), and `mmdebstrap --simulate`
# (what a user runs today; it always downloads its indexes). Prints medians
# and ratios. Also times parsing trixie main amd64 Packages.
set -euo pipefail
runs=${1:-5}
. "$(dirname "$0")/lib.sh"
cargo build --release -q -p kiln-deb --example parse_index --manifest-path "$root/Cargo.toml"
use_bench_cache

declare -A requests=(
  [minbase]="apt"
  [web]="apt nginx python3"
  [cloud]="apt linux-image-cloud-amd64 systemd-sysv openssh-server cloud-init"
  [db]="apt postgresql"
)
printf '%-8s %10s %12s %10s %14s %10s\n' request kiln_s apt-get_-s ratio mmdebstrap_s ratio
for name in minbase web cloud db; do
  pkgs=${requests[$name]}
  list=$(printf '"%s", ' $pkgs)
  mkdir -p "$work/$name"
  printf '[image]\nname = "%s"\nsuite = "trixie"\narchitectures = ["amd64"]\n[packages]\npriority = "required"\ninclude = [%s]\n' \
    "$name" "${list%, }" > "$work/$name/recipe.toml"
  "$kiln" lock -q "$work/$name/recipe.toml"            # warm the index cache
  k=$(times "$runs" "$kiln" lock -q "$work/$name/recipe.toml")
  # apt with warm lists: the oracle's second phase alone is apt's resolver time.
  lists="$work/lists"; mkdir -p "$lists"
  APT_ORACLE_LISTS=$lists "$root/tests/apt-oracle" --from-empty "$work/$name/kiln.lock" trixie amd64 '?priority(required)' $pkgs >/dev/null 2>&1
  a=$(APT_ORACLE_LISTS=$lists times "$runs" "$root/tests/apt-oracle" --from-empty "$work/$name/kiln.lock" trixie amd64 '?priority(required)' $pkgs)
  m=$(times 1 mmdebstrap --simulate --variant=minbase --include="$(echo $pkgs | tr ' ' ,)" trixie /dev/null)
  printf '%-8s %10.3f %12.3f %9.2fx %14.3f %9.2fx\n' "$name" "$k" "$a" "$(echo "$k / $a" | bc -l)" "$m" "$(echo "$k / $m" | bc -l)"
done
echo "(ratio = kiln time / peer time; below 1 means Kiln is faster. apt-get -s column: two apt-get -s runs (Essential + request) on warm lists, including apt's cache build.)"
echo
main=$(grep -l '^Package: ' "$KILN_CACHE_DIR"/indexes/* | xargs ls -S | head -1)
"$root/target/release/examples/parse_index" "$main"
KILN_TIMING=1 "$kiln" lock -q --offline "$work/cloud/recipe.toml" 2>&1 | sed 's/^/cloud lock, /'
