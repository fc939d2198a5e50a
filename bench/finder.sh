#!/bin/bash
# The finder's first render in a real headless Chromium: from navigation to
# the first results painted (the page's `kiln-first-results` mark), with a
# catalog of VERSIONS image versions against one of 5 (the page's own cost,
# the floor on this machine), served by `kiln serve` and exported as static
# files (`kiln serve --export`, on Python's http.server).
#
#   bench/finder.sh [VERSIONS] [RUNS]
#
# VERSIONS defaults to 10000 (×200 packages, as bench/catalog.sh); the
# target is a first render under 1 s. KILN_BENCH_CATALOG=PATH reuses a
# catalog generated earlier (its generation takes minutes).
set -euo pipefail
versions=${1:-10000}
runs=${2:-5}
. "$(dirname "$0")/lib.sh"
cargo build --release -q -p kiln-catalog --example populate --manifest-path "$root/Cargo.toml"
cargo build --release -q -p kiln-serve --example first_render --manifest-path "$root/Cargo.toml"
populate=$root/target/release/examples/populate
render=$root/target/release/examples/first_render
command -v chromium >/dev/null || { echo "chromium is needed: apt-get install chromium" >&2; exit 1; }

big=${KILN_BENCH_CATALOG:-$work/big.sqlite}
if [ ! -s "$big" ]; then
  echo "generating $versions versions of 200 packages…" >&2
  "$populate" "$big" "$versions" 200 2>/dev/null
fi
"$populate" "$work/small.sqlite" 5 200 2>/dev/null

pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
# Servers start here, not in $(…), so that the trap knows their pids.
serve() { # CATALOG NAME: kiln serve on it, its URL in $work/url.NAME
  "$kiln" --catalog "$1" serve --listen 127.0.0.1:0 > "$work/url.$2" 2>/dev/null &
  pids+=($!)
}
url_of() { # NAME
  until [ -s "$work/url.$1" ]; do sleep 0.1; done
  local url; url=$(head -c 200 "$work/url.$1" | tr -d '\n')
  echo "${url%/}/"
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mkdir -p "$work/www"
"$kiln" --catalog "$big" serve --export "$work/www/big" >/dev/null 2>&1
"$kiln" --catalog "$work/small.sqlite" serve --export "$work/www/small" >/dev/null 2>&1
port=$(free_port)
python3 -m http.server --bind 127.0.0.1 --directory "$work/www" "$port" >/dev/null 2>&1 &
pids+=($!)
until python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/')" 2>/dev/null; do sleep 0.1; done
found=$("$kiln" --catalog "$big" find --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["images"]))')
serve "$big" big
serve "$work/small.sqlite" small
s_big=$(url_of big)
s_small=$(url_of small)
e_big=http://127.0.0.1:$port/big/
e_small=http://127.0.0.1:$port/small/
"$render" "$runs" "$s_big" "$s_small" "$e_big" "$e_small" > "$work/times"
ms() { awk -v u="$1" '$2 == u { print $1 }' "$work/times"; }
printf '%-28s %12s %12s %s\n' "first render ($found versions)" big_ms small_ms "ratio big/small"
row() { printf '%-28s %12s %12s %8.2fx\n' "$1" "$(ms "$2")" "$(ms "$3")" "$(echo "$(ms "$2") / $(ms "$3")" | bc -l)"; }
row "kiln serve" "$s_big" "$s_small"
row "kiln serve --export" "$e_big" "$e_small"
echo "(median of $runs loads each; target: under 1000 ms with 10,000 versions)"
