#!/bin/bash
# Runs every fuzz target for a bounded time (FUZZ_SECONDS each, default 30),
# from a seed corpus made here from real Debian data on this machine: the
# host's dpkg status and apt lists, and a .deb and data tarball built with
# dpkg-deb. Crashes are kept in fuzz/artifacts/TARGET/ and fail the run.
#
#   fuzz/run.sh                 all targets
#   fuzz/run.sh version deb822  some
#   FUZZ_SECONDS=600 fuzz/run.sh unpack
set -euo pipefail
cd "$(dirname "$0")"
seconds=${FUZZ_SECONDS:-30}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(version relation deb822 debfile unpack openpgp sdversion rollout)

# cargo-fuzz needs nightly flags (-Zsanitizer); a stable toolchain takes them
# with RUSTC_BOOTSTRAP.
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz" >&2
  cargo install --locked --quiet cargo-fuzz
fi
export RUSTC_BOOTSTRAP=1

seeds=$(mktemp -d)
trap 'rm -rf "$seeds"' EXIT
mkdir -p corpus
for t in "${targets[@]}"; do mkdir -p "corpus/$t" "$seeds/$t"; done

# deb822: the first paragraphs of the dpkg status file and of an apt list.
if [ -d "$seeds/deb822" ]; then
  awk 'BEGIN{RS="";ORS="\n\n"} NR<=20' /var/lib/dpkg/status > "$seeds/deb822/status"
  for l in /var/lib/apt/lists/*_Packages /var/lib/apt/lists/*Release; do
    [ -f "$l" ] || continue
    head -c 65536 "$l" > "$seeds/deb822/$(basename "$l")"
  done
fi
# sdversion: image versions as systemd orders them.
if [ -d "$seeds/sdversion" ]; then
  printf '13\n13.1' > "$seeds/sdversion/a"; printf '14~rc1\n14' > "$seeds/sdversion/b"
  printf '2^p\n2.0' > "$seeds/sdversion/c"; printf '20261207.1\n20261207-2' > "$seeds/sdversion/d"
fi
# rollout: channel rollout documents as kiln release writes them.
if [ -d "$seeds/rollout" ]; then
  printf 'kiln-rollout 1 stable\nrelease img 2 1796601600 1000 86400 active -\n' > "$seeds/rollout/a"
  printf 'kiln-rollout 1 beta\nrelease img 2 5 10000 0 paused barrier\nrelease img 10 7 2500 3600 active -\n' > "$seeds/rollout/b"
fi
# version and relation: the real fields of the installed packages.
if [ -d "$seeds/version" ]; then
  # (awk, not head: head would close the pipe early and, under pipefail, the
  # SIGPIPE of sort would fail the run where many packages are installed)
  dpkg-query -W -f='${Version}\n' | sort -u | awk 'NR<=200' | split -l 2 - "$seeds/version/v"
fi
if [ -d "$seeds/relation" ]; then
  n=0
  while IFS= read -r line; do
    [ -n "$line" ] || continue
    printf '%s' "$line" > "$seeds/relation/r$n"; n=$((n + 1))
  done < <(dpkg-query -W -f='${Depends}\n${Pre-Depends}\n${Provides}\n' | sort -u | awk 'NR<=300')
fi
# debfile and unpack: a small package with a directory, a file, a symlink,
# a hard link and a relative link pointing up.
if [ -d "$seeds/debfile" ] || [ -d "$seeds/unpack" ]; then
  pkg=$(mktemp -d)
  mkdir -p "$pkg/DEBIAN" "$pkg/etc/kiln" "$pkg/usr/bin"
  printf 'Package: seed\nVersion: 1.0-1\nArchitecture: all\nMaintainer: Kiln <kiln@localhost>\nDescription: seed\n' > "$pkg/DEBIAN/control"
  echo 'echo configured' > "$pkg/DEBIAN/postinst"; chmod 0755 "$pkg/DEBIAN/postinst"
  echo hello > "$pkg/etc/kiln/file"
  ln "$pkg/etc/kiln/file" "$pkg/etc/kiln/hard"
  ln -s ../../etc/kiln/file "$pkg/usr/bin/up"
  ln -s /etc/passwd "$pkg/etc/kiln/abs"
  for comp in xz gzip zstd none; do
    dpkg-deb -Z"$comp" --root-owner-group --build "$pkg" "$seeds/seed-$comp.deb" >/dev/null 2>&1 || true
  done
  if [ -d "$seeds/debfile" ]; then cp "$seeds"/seed-*.deb "$seeds/debfile/"; fi
  if [ -d "$seeds/unpack" ]; then
    tar -C "$pkg" --exclude=DEBIAN --owner=0 --group=0 -cf "$seeds/unpack/data.tar" .
  fi
  rm -rf "$pkg"
fi

echo "fuzz: building ${targets[*]}" >&2
for t in "${targets[@]}"; do cargo fuzz build --release "$t"; done

failed=0
for t in "${targets[@]}"; do
  echo "fuzz: $t for ${seconds}s" >&2
  if ! cargo fuzz run --release "$t" "corpus/$t" "$seeds/$t" -- \
      -max_total_time="$seconds" -max_len=262144 -rss_limit_mb=2048 -timeout=20 \
      -print_final_stats=1 2>"$seeds/$t.log"; then
    echo "fuzz: $t FAILED; the crash input is in fuzz/artifacts/$t/" >&2
    tail -60 "$seeds/$t.log" >&2
    failed=1
  else
    grep -E '^(stat::number_of_executed_units|stat::new_units_added)' "$seeds/$t.log" \
      | sed "s/^/fuzz: $t /" >&2 || true
  fi
done
exit $failed
