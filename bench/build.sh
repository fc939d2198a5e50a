#!/bin/bash
# Benchmark `kiln build` against mmdebstrap on the same package set, warm
# caches for both (mmdebstrap keeps its .debs through sync-in/sync-out hooks).
#
#   bench/build.sh [RUNS] [RECIPE]     (default: 3 runs of recipes/minbase.toml)
#
# Prints median wall times, the ratio, and peak memory (max RSS) of each.
set -euo pipefail
runs=${1:-3}
. "$(dirname "$0")/lib.sh"
recipe=${2:-$root/recipes/minbase.toml}
use_bench_cache
use_mm_cache

# The same request for mmdebstrap, from the lock Kiln made.
"$kiln" lock -q "$recipe"
lock="${recipe%.toml}.lock"
read -r suite includes < <(recipe_request "$recipe")
mm() { mm_cached --variant=minbase --include="$includes" --skip=essential/unlink "$suite" "$work/mm.tar"; }
kb() { /usr/bin/time -f "%e %M" -o "$work/t" "$kiln" build -q --locked "$recipe" --output "$work/kiln"; }
echo "warming caches…"
kb; mm
k=(); m=(); s=(); kr=0; mr=0
for _ in $(seq "$runs"); do
  read -r t r < <(measure kb); k+=("$t"); kr=$(( r > kr ? r : kr ))
  read -r t r < <(measure mm); m+=("$t"); mr=$(( r > mr ? r : mr ))
  # mmdebstrap with its temporary root on tmpfs too, as Kiln builds by default.
  read -r t r < <(TMPDIR=/dev/shm measure mm); s+=("$t")
done
km=$(printf '%s\n' "${k[@]}" | median); mmm=$(printf '%s\n' "${m[@]}" | median); mms=$(printf '%s\n' "${s[@]}" | median)
printf 'recipe: %s (%s packages)\n' "$(basename "$recipe")" "$(grep -c '^\[\[package' "$lock")"
printf '%-12s %8s %12s\n' tool median_s peak_rss_MB
printf '%-12s %8.2f %12d\n' kiln "$km" $((kr / 1024)) mmdebstrap "$mmm" $((mr / 1024))
printf '%-12s %8.2f\n' "mmdebstrap (TMPDIR=/dev/shm)" "$mms"
printf 'ratio kiln/mmdebstrap: %.2fx (against mmdebstrap on tmpfs too: %.2fx)\n' "$(echo "$km / $mmm" | bc -l)" "$(echo "$km / $mms" | bc -l)"
echo "(peak RSS of mmdebstrap is its own process tree's largest single process as /usr/bin/time reports it)"
KILN_TIMING=1 "$kiln" build -q --locked "$recipe" --output "$work/kiln" 2>&1 | sed 's/^/kiln /'
