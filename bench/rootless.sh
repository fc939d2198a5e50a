#!/bin/bash
# Benchmark a rootless `kiln build` against `mmdebstrap --mode=unshare`, both
# run by the same ordinary user on the same package set, warm caches for
# both (mmdebstrap keeps its .debs through sync-in/sync-out hooks).
#
#   bench/rootless.sh [RUNS] [RECIPE]   (default: 3 runs of recipes/minbase.toml)
#
# Run as root: it makes the user ($BENCH_USER, default kiln-bench) with a
# subordinate id range when missing, then runs both tools as that user
# (runuser). Prints median wall times, the ratio, and peak memory (max RSS).
set -euo pipefail
runs=${1:-3}
. "$(dirname "$0")/lib.sh"
recipe=${2:-$root/recipes/minbase.toml}
user=${BENCH_USER:-kiln-bench}
[ "$(id -u)" = 0 ] || { echo "error: run as root (it sets up and becomes $user)" >&2; exit 64; }
command -v newuidmap >/dev/null || { echo "error: newuidmap is missing" >&2; echo "hint: apt-get install uidmap" >&2; exit 1; }
command -v mmdebstrap >/dev/null || { echo "error: mmdebstrap is missing" >&2; echo "hint: apt-get install mmdebstrap" >&2; exit 1; }
if ! id -u "$user" >/dev/null 2>&1; then
  useradd -M -U -s /usr/sbin/nologin -K SUB_UID_COUNT=0 -K SUB_GID_COUNT=0 "$user"
fi
if ! grep -q "^$user:" /etc/subuid; then
  usermod --add-subuids 500000-565535 --add-subgids 500000-565535 "$user"
fi

# Everything the user touches lives in a directory it owns.
chmod 755 "$work"
home=$work/home
mkdir -p "$home/cache" "$home/debs"
cp "$kiln" "$work/kiln" && chmod 755 "$work/kiln"
cp "$recipe" "$home/recipe.toml"
[ -d "$(dirname "$recipe")/classes" ] && cp -r "$(dirname "$recipe")/classes" "$home/"
chown -R "$user": "$home"
as_user() { runuser -u "$user" -- env HOME="$home" KILN_CACHE_DIR="$home/cache" KILN_CATALOG=none "$@"; }
as_user "$work/kiln" lock -q "$home/recipe.toml"
read -r suite includes < <(recipe_request "$home/recipe.toml")
mm() {
  as_user /usr/bin/time -f "%e %M" -o "$home/t" mmdebstrap --quiet --mode=unshare \
    --variant=minbase --include="$includes" --skip=essential/unlink \
    --setup-hook='mkdir -p "$1"/var/cache/apt/archives/' \
    --setup-hook="sync-in $home/debs /var/cache/apt/archives/" \
    --customize-hook="sync-out /var/cache/apt/archives $home/debs" \
    "$suite" "$home/mm.tar"
  cp "$home/t" "$work/t"
}
kb() {
  as_user /usr/bin/time -f "%e %M" -o "$home/t" "$work/kiln" build -q --locked "$home/recipe.toml" --output "$home/out"
  cp "$home/t" "$work/t"
}
echo "warming caches…"
kb; mm
k=(); m=(); kr=0; mr=0
for _ in $(seq "$runs"); do
  read -r t r < <(measure kb); k+=("$t"); kr=$(( r > kr ? r : kr ))
  read -r t r < <(measure mm); m+=("$t"); mr=$(( r > mr ? r : mr ))
done
km=$(printf '%s\n' "${k[@]}" | median); mmm=$(printf '%s\n' "${m[@]}" | median)
printf 'recipe: %s (%s packages), both as %s\n' "$(basename "$recipe")" "$(grep -c '^\[\[package' "$home/recipe.lock")" "$user"
printf '%-28s %8s %12s\n' tool median_s peak_rss_MB
printf '%-28s %8.2f %12d\n' "kiln (user namespace)" "$km" $((kr / 1024)) "mmdebstrap --mode=unshare" "$mmm" $((mr / 1024))
printf 'ratio kiln/mmdebstrap: %.2fx\n' "$(echo "$km / $mmm" | bc -l)"
# The same lock built by root: the same bytes.
use_bench_cache
KILN_CATALOG=none "$kiln" build -q --locked "$home/recipe.toml" --output "$work/root-out"
if cmp -s "$home/out/rootfs.tar" "$work/root-out/rootfs.tar"; then
  echo "rootless rootfs.tar = root's rootfs.tar"
else
  echo "rootless rootfs.tar differs from root's" >&2; exit 1
fi
# What the user's namespace left in its cache belongs to subordinate ids:
# remove the work directory as root (the trap does).
