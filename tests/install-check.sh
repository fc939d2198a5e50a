#!/bin/bash
# Runs `./install.sh --deps-only` in fresh chroots of other Debian machines
# and checks that QEMU installs beside whatever qemu-utils is there:
#   trixie                          -> trixie's qemu-system-x86, no backports
#   bookworm                        -> bookworm's qemu-system-x86
#   bookworm + qemu-utils from bpo  -> qemu-system-x86 from bookworm-backports
# The chroots are made with mmdebstrap from the host's apt sources (no archive
# host is written here). Needs root and the network; takes a few minutes.
#
#   bash tests/install-check.sh [trixie|bookworm|bookworm-bpo ...]
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
uri=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 'Created-By: Packages' |
  awk -v s="$(. /etc/os-release && echo "$VERSION_CODENAME")" '$2 == s { print $1; exit }')
[ -n "$uri" ] || { echo "error: cannot find the host's Debian source" >&2; exit 1; }
cases=${*:-trixie bookworm bookworm-bpo}
fail=0
for c in $cases; do
  suite=${c%-bpo}
  root=$(mktemp -d /tmp/kiln-install-check.XXXXXX)
  trap 'rm -rf "$root"' EXIT
  echo "== $c: making a $suite chroot" >&2
  mmdebstrap --quiet --variant=apt --include=ca-certificates \
    "$suite" "$root" "deb $uri $suite main" "deb ${uri%/}-security $suite-security main" 2>/dev/null ||
    mmdebstrap --quiet --variant=apt --include=ca-certificates "$suite" "$root" "deb $uri $suite main"
  mkdir -p "$root/src"
  cp -r "$top/install.sh" "$top/scripts" "$root/src/"
  if [ "$c" = bookworm-bpo ]; then
    # The machine this project runs on: qemu-utils from backports, and no
    # backports source configured.
    echo "deb $uri $suite-backports main" > "$root/etc/apt/sources.list.d/bpo.list"
    chroot "$root" sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends -t bookworm-backports qemu-utils >/dev/null'
    rm "$root/etc/apt/sources.list.d/bpo.list"
  fi
  mount --bind /proc "$root/proc"
  if chroot "$root" bash /src/install.sh --deps-only >"$root/log" 2>&1; then
    v=$(chroot "$root" dpkg-query -W -f '${Version}' qemu-system-x86)
    u=$(chroot "$root" dpkg-query -W -f '${Version}' qemu-utils)
    echo "$c: ok: qemu-system-x86 $v beside qemu-utils $u"
    case "$c" in
      bookworm-bpo) [[ $v == *bpo* ]] || { echo "$c: expected the backports QEMU" >&2; fail=1; } ;;
      *) [[ $v != *bpo* ]] || { echo "$c: backports used where not needed" >&2; fail=1; } ;;
    esac
  else
    echo "$c: FAILED" >&2; tail -20 "$root/log" >&2; fail=1
  fi
  umount "$root/proc"
  rm -rf "$root"
done
exit $fail
