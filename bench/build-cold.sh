#!/bin/bash
# Cold build: an empty package cache, so everything is downloaded.
# Compares `kiln build` with the time to download the same bytes alone
# (`kiln fetch` into another empty cache, and curl fetching the same URLs
# six at a time), in the same run.
#
#   bench/build-cold.sh [RECIPE]
set -euo pipefail
. "$(dirname "$0")/lib.sh"
recipe=${1:-$root/recipes/minbase.toml}
"$kiln" lock -q "$recipe"
lock="${recipe%.toml}.lock"
python3 - "$lock" > "$work/urls" <<'PY'
import sys, tomllib
l = tomllib.load(open(sys.argv[1], 'rb'))
rel = {r['suite']: r['uri'] for r in l['release']}
for p in l['package']:
    print(f"{rel[p['release']]}/{p['filename']}")
PY
bytes=$(python3 -c "import tomllib,sys; print(sum(p['size'] for p in tomllib.load(open(sys.argv[1],'rb'))['package']))" "$lock")
c=$(secs sh -c "cd $work && mkdir -p curl && cd curl && xargs -P 6 -n 1 curl -sfO < ../urls")
f=$(KILN_CACHE_DIR=$work/c1 secs "$kiln" fetch -q --locked "$recipe")
b=$(KILN_CACHE_DIR=$work/c2 secs "$kiln" build -q --locked "$recipe" --output "$work/out")
# The same build again, its packages now cached: what the cold build adds to
# it is the download time the build did not hide.
rm -rf "$work/out"
w=$(KILN_CACHE_DIR=$work/c2 secs "$kiln" build -q --locked "$recipe" --output "$work/out")
printf 'download %s MiB: curl -P6 %.2fs, kiln fetch %.2fs (%.2fx curl)\n' \
  "$((bytes / 1048576))" "$c" "$f" "$(echo "$f / $c" | bc -l)"
printf 'cold kiln build %.2fs = %.2fx the kiln download alone, %.2fx curl'"'"'s; warm build %.2fs, so the cold build adds %.2fs\n' \
  "$b" "$(echo "$b / $f" | bc -l)" "$(echo "$b / $c" | bc -l)" "$w" "$(echo "$b - $w" | bc -l)"
