#!/bin/bash
# Sets Kiln up on a Debian machine (bookworm or newer), as root or as a user
# with sudo: the apt packages Kiln uses at run time, then the `kiln` binary,
# built from this checkout and installed as /usr/local/bin/kiln.
#
#   ./install.sh              packages + binary
#   ./install.sh --deps-only  packages only
set -euo pipefail
cd "$(dirname "$0")"
. scripts/apt-lib.sh

deps_only=0
case "${1:-}" in
  "") ;;
  --deps-only) deps_only=1 ;;
  -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "error: unknown option '$1'" >&2; echo >&2; echo "hint: ./install.sh [--deps-only]" >&2; exit 64 ;;
esac

apt_update
# gpgv checks Release signatures (as apt does); the keyring holds Debian's keys.
apt_install gpgv debian-archive-keyring ca-certificates gcc libc6-dev
# Rootless builds: newuidmap/newgidmap map a user's /etc/subuid range.
apt_install uidmap
# Disk images (mkfs without mounting, dm-verity, qcow2) and `kiln test` / `kiln boot`
# (UEFI firmware, an SSH key for the test user).
apt_install dosfstools mtools e2fsprogs erofs-utils cryptsetup-bin qemu-utils ovmf openssh-client
# QEMU must match the qemu-utils already there (some machines ship it from backports).
apt_install_beside qemu-system-x86
[ "$deps_only" = 1 ] && exit 0

if ! command -v cargo >/dev/null; then
  apt_install cargo || true
fi
need=1.85
have=$(cargo --version 2>/dev/null | awk '{print $2}' || true)
if [ -z "$have" ] || [ "$(printf '%s\n' "$need" "$have" | sort -V | head -1)" != "$need" ]; then
  echo "error: Kiln needs Rust $need or newer to build (found: ${have:-none})" >&2
  echo >&2
  echo "hint: install a current toolchain with rustup, or use Debian trixie's cargo" >&2
  exit 1
fi
# Built as the calling user (whose toolchain it is); only the copy needs root.
cargo build --quiet --locked --release -p kiln ${CARGO_BUILD_ARGS:-}
$SUDO install -m 0755 target/release/kiln /usr/local/bin/kiln
echo "installed: /usr/local/bin/kiln ($(/usr/local/bin/kiln --version))"
