#!/bin/bash
# Sets Kiln up on a Debian machine: the apt packages it uses at run time and
# the `kiln` binary (built from this checkout into /usr/local/bin).
set -euo pipefail
cd "$(dirname "$0")"
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# gpgv checks Release signatures (as apt does); the keyring holds Debian's keys.
$SUDO apt-get install -y -qq --no-install-recommends gpgv debian-archive-keyring ca-certificates gcc libc6-dev >/dev/null
# Disk images (mkfs without mounting, dm-verity, qcow2) and `kiln test` / `kiln boot`
# (QEMU with UEFI firmware, an SSH key for the test user).
$SUDO apt-get install -y -qq --no-install-recommends dosfstools mtools e2fsprogs erofs-utils \
  cryptsetup-bin qemu-utils qemu-system-x86 ovmf openssh-client >/dev/null
if ! command -v cargo >/dev/null; then
  $SUDO apt-get install -y -qq --no-install-recommends cargo >/dev/null || true
fi
need=1.85
have=$(cargo --version 2>/dev/null | awk '{print $2}' || true)
if [ -z "$have" ] || [ "$(printf '%s\n' "$need" "$have" | sort -V | head -1)" != "$need" ]; then
  echo "error: Kiln needs Rust $need or newer to build (found: ${have:-none})" >&2
  echo >&2
  echo "hint: install a current toolchain with rustup, or use Debian trixie's cargo" >&2
  exit 1
fi
cargo install --quiet --locked --path crates/kiln --root /usr/local ${CARGO_INSTALL_ARGS:-}
echo "installed: $(command -v kiln) ($(kiln --version))"
