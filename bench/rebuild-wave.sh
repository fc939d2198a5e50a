#!/bin/bash
# A rebuild wave after a one-library update, against rebuilding every
# image from scratch, in the same run.
#
#   bench/rebuild-wave.sh [LIBRARY]
#
# Five bookworm images (three full ones sharing an Essential set: minbase,
# + less, + curl; two distroless: libssl3 + ca-certificates, netbase) are
# locked from bookworm, -updates and -security, except that LIBRARY
# (default libssl3, which bookworm-security has a newer version of than
# bookworm) is held at bookworm's version: the lock as it was before the
# fix. They are built (the Essential tree cached, as a user's builds leave
# it) and catalogued. Then, timed:
#   - wave:    `kiln watch --rebuild` over the catalog: images without the
#              library cost a check; the others are locked again with
#              --update LIBRARY and rebuilt, on the cached Essential tree;
#   - scratch: every recipe locked afresh and built with
#              KILN_ESSENTIAL_CACHE=off (a rebuild-everything cron job; also
#              each image's clean build time).
set -euo pipefail
library=${1:-libssl3}
. "$(dirname "$0")/lib.sh"
use_bench_cache
repo() { apt-get indextargets --format '$(REPO_URI) $(RELEASE)' | awk -v s="$1" '$2 == s {print $1; exit}'; }
mirror=$(repo bookworm)
[ -n "$mirror" ] || { echo "the host's apt sources name no bookworm" >&2; exit 1; }
mirror=${mirror%/}
catalog=$work/catalog.sqlite
# recipe DIR NAME PACKAGES [distroless] [SUITES]: from the host's default
# sources, or from SUITES of its mirror alone.
recipe() {
  mkdir -p "$1"
  {
    printf '[image]\nname = "%s"\nsuite = "bookworm"\narchitectures = ["amd64"]\n' "$2"
    [ -z "${5:-}" ] || printf 'default-sources = false\n'
    if [ -n "${4:-}" ]; then
      printf '\n[packages]\ninclude = [%s]\n\n[container]\ndistroless = true\n\n' "$3"
    else
      printf '\n[packages]\npriority = "required"\ninclude = [%s]\n\n' "$3"
    fi
    printf '[output]\nformats = ["tar"]\n'
    [ -z "${5:-}" ] || printf '\n[[source]]\nuri = "%s"\nsuites = [%s]\n' "$mirror" "$5"
  } > "$1/$2.toml"
}
images() { # DIR [SUITES]
  recipe "$1/base" base '"apt"' "" "${2:-}"
  recipe "$1/tools" tools '"apt", "less"' "" "${2:-}"
  recipe "$1/net" net '"apt", "curl"' "" "${2:-}"
  recipe "$1/ssl" ssl '"libssl3", "ca-certificates"' distroless "${2:-}"
  recipe "$1/quiet" quiet '"netbase"' distroless "${2:-}"
}
names=(base tools net ssl quiet)
images "$work"
images "$work/scratch"
images "$work/old" '"bookworm"'
for n in "${names[@]}"; do
  "$kiln" -q --catalog none lock "$work/$n/$n.toml"
  "$kiln" -q --catalog none lock "$work/old/$n/$n.toml"
  # The library as bookworm has it: the lock before the fix landed.
  python3 - "$work/$n/$n.lock" "$work/old/$n/$n.lock" "$library" <<'PY'
import sys
new, old, lib = sys.argv[1], sys.argv[2], sys.argv[3]
def blocks(t):
    head, *pk = t.split("\n[[package]]\n")
    return head, pk
def name(b):
    return next(l.split("=", 1)[1].strip().strip('"') for l in b.splitlines() if l.startswith("name ="))
head, pk = blocks(open(new).read())
_, opk = blocks(open(old).read())
held = {name(b): b for b in opk}
out = [held[lib] if name(b) == lib and lib in held else b for b in pk]
open(new, "w").write("\n[[package]]\n".join([head] + out))
PY
  "$kiln" -q --catalog "$catalog" build --locked "$work/$n/$n.toml" >/dev/null
done
# Warm the suites' Release files and indexes (not timed on either side).
"$kiln" -q --catalog "$catalog" watch >/dev/null 2>&1 || true

s=$(date +%s.%N)
"$kiln" -q --catalog "$catalog" watch --rebuild --json > "$work/wave.json" 2>"$work/wave.err" || true
wave=$(echo "$(date +%s.%N) - $s" | bc -l)

# From scratch: every recipe locked afresh and built, no shared tree.
scratch=0
declare -A clean
for n in "${names[@]}"; do
  clean[$n]=$(KILN_ESSENTIAL_CACHE=off secs "$kiln" -q --catalog none build "$work/scratch/$n/$n.toml")
  scratch=$(echo "$scratch + ${clean[$n]}" | bc -l)
done

python3 - "$work/wave.json" "$wave" "$scratch" "${names[*]}" "$(for n in "${names[@]}"; do printf '%s=%s ' "$n" "${clean[$n]}"; done)" <<'PY'
import json, sys
w = json.load(open(sys.argv[1]))
wave, scratch = float(sys.argv[2]), float(sys.argv[3])
names = sys.argv[4].split()
clean = dict(kv.split("=") for kv in sys.argv[5].split())
rebuilt = {r["image"]: r for r in w.get("rebuilds", [])}
quiet = [n for n in names if n not in rebuilt]
spent = 0.0
for n in names:
    if n in rebuilt:
        r = rebuilt[n]
        t = r["finished-at"] - r["started-at"]
        spent += t
        pk = len(r["packages"])
        print(f"{n:6} rebuilt ({r['outcome']}, {pk} packages changed): {t:.0f}s vs clean build {float(clean[n]):.1f}s "
              f"({t / float(clean[n]):.2f}x)")
    else:
        print(f"{n:6} no fix: not rebuilt")
if quiet:
    print(f"images without a fix: {(wave - spent) / len(names):.2f}s each at most (the whole check, over {len(names)} images)")
print(f"wave {wave:.1f}s vs rebuilding everything from scratch {scratch:.1f}s ({wave / scratch:.2f}x)")
if not rebuilt:
    print(open(sys.argv[1].replace("wave.json", "wave.err")).read(), file=sys.stderr)
PY
