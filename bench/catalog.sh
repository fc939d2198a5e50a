#!/bin/bash
# Benchmark the catalog on SQLite and on PostgreSQL, against the way without
# a catalog (grep over the builds' manifest.json files: a lower bound for any
# file-scanning tool, since it compares no versions and prints no record).
#
#   bench/catalog.sh [VERSIONS] [RUNS]
#
# Generates VERSIONS image versions (default 10000) of 200 packages each
# (about 2 million package rows) into both catalogs and as manifests on
# disk, then times:
#   - recording one more build of 216 packages (median of RUNS×4),
#   - `kiln find --package rare --json` (100 matching versions),
#   - `kiln find --package 'openssl<<3.5.4-1' --json` (half the versions),
# and prints medians and the ratios kiln/grep. PostgreSQL runs on loopback
# from a throwaway initdb, as in the tests.
set -euo pipefail
versions=${1:-10000}
runs=${2:-5}
. "$(dirname "$0")/lib.sh"
cargo build --release -q -p kiln-catalog --example populate --manifest-path "$root/Cargo.toml"
populate=$root/target/release/examples/populate

pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -n "$pgbin" ] || { echo "PostgreSQL is needed: apt-get install postgresql" >&2; exit 1; }
as_pg() { if [ "$(id -u)" = 0 ]; then setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"; else "$@"; fi; }
pgdir=$work/pg
mkdir -p "$pgdir" && [ "$(id -u)" != 0 ] || chown postgres: "$pgdir" "$work"
echo kiln > "$pgdir/pw" && { [ "$(id -u)" != 0 ] || chown postgres: "$pgdir/pw"; }
as_pg "$pgbin/initdb" -U kiln --auth=scram-sha-256 --pwfile="$pgdir/pw" -E UTF8 --locale=C -D "$pgdir/data" >/dev/null
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
server=("$pgbin/postgres" -D "$pgdir/data" -c listen_addresses=127.0.0.1 -c unix_socket_directories="$pgdir" -p "$port")
[ "$(id -u)" != 0 ] || server=(setpriv --reuid=postgres --regid=postgres --init-groups -- "${server[@]}")
# exec: $! is the server itself, which the trap stops.
(exec "${server[@]}" 2>"$pgdir/log") &
pgpid=$!
trap 'kill $pgpid 2>/dev/null; wait $pgpid 2>/dev/null; rm -rf "$work"' EXIT
until "$pgbin/pg_isready" -q -h 127.0.0.1 -p "$port"; do sleep 0.1; done
PGPASSWORD=kiln "$pgbin/createdb" -h 127.0.0.1 -p "$port" -U kiln kiln
pg=postgres://kiln:kiln@127.0.0.1:$port/kiln
lite=$work/catalog.sqlite

echo "generating $versions versions of 200 packages (SQLite, PostgreSQL, manifests)…" >&2
"$populate" "$lite" "$versions" 200 "$work/manifests" 2>/dev/null
"$populate" "$pg" "$versions" 200 2>/dev/null

peer() { grep -rl --include=manifest.json -F "\"name\":\"$1\"" "$work/manifests" | wc -l; }
printf '%-34s %10s %12s %10s %s\n' what sqlite_s postgres_s grep_s "ratio kiln/grep (sqlite/postgres)"
for q in rare 'openssl<<3.5.4-1'; do
  name=${q%%<*}
  s=$(times "$runs" "$kiln" --catalog "$lite" find --package "$q" --json)
  p=$(times "$runs" "$kiln" --catalog "$pg" find --package "$q" --json)
  g=$(times "$runs" peer "$name")
  found=$("$kiln" --catalog "$lite" find --package "$q" --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["images"]))')
  printf '%-34s %10.3f %12.3f %10.3f %8.2fx/%.2fx\n' "find $q ($found found)" "$s" "$p" "$g" \
    "$(echo "$s / $g" | bc -l)" "$(echo "$p / $g" | bc -l)"
done
rs=$("$populate" "$lite" --record 216 $((runs * 4)))
rp=$("$populate" "$pg" --record 216 $((runs * 4)))
printf '%-34s %10.1f %12.1f   (ms, median of %d; target < 50 ms)\n' "record a 216-package build" "$rs" "$rp" $((runs * 4))
