# Shell functions shared by install.sh and .ci/run (source it, do not run it).
#
# apt_install PKG...        install packages, never removing or downgrading
#                           anything already installed.
# apt_install_beside PKG... the same, and where the host's own suite cannot
#                           supply them beside what is installed (e.g. the
#                           machine ships qemu-utils from CODENAME-backports,
#                           and CODENAME's qemu-system-x86 would downgrade it),
#                           take them from CODENAME-backports. Its URI is
#                           derived from the host's apt sources, never written
#                           down here.

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive

apt_update() {
  $SUDO apt-get update -qq
}

# True when installing would remove something or fails outright.
_apt_would_break() {
  local out
  if ! out=$(LC_ALL=C apt-get install -s -y --no-install-recommends "$@" 2>&1); then
    return 0
  fi
  grep -q '^Remv ' <<<"$out"
}

apt_install() {
  if _apt_would_break "$@"; then
    echo "error: installing $* would remove or downgrade installed packages:" >&2
    LC_ALL=C apt-get install -s -y --no-install-recommends "$@" 2>&1 | grep -E '^(Remv|E:)' >&2 || true
    echo >&2
    echo "hint: install them by hand with apt, choosing versions that fit what is installed" >&2
    return 1
  fi
  $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# The host's Debian codename (bookworm, trixie, ...).
host_codename() {
  (. /etc/os-release && echo "${VERSION_CODENAME:-}")
}

# The URI of the host's apt source that carries the suite named by $1.
host_suite_uri() {
  apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 'Created-By: Packages' 2>/dev/null |
    awk -v s="$1" '$2 == s { print $1; exit }'
}

# Adds CODENAME-backports from the same URI as the host's CODENAME source.
add_backports() {
  local codename uri file keyring
  codename=$(host_codename)
  [ -n "$codename" ] || { echo "error: /etc/os-release names no VERSION_CODENAME" >&2; return 1; }
  if apt-get indextargets --format '$(RELEASE)' 'Created-By: Packages' 2>/dev/null | grep -qx "$codename-backports"; then
    return 0
  fi
  uri=$(host_suite_uri "$codename")
  if [ -z "$uri" ]; then
    echo "error: no apt source for $codename is configured, so $codename-backports cannot be derived from it" >&2
    echo >&2
    echo "hint: add $codename-backports from your Debian mirror to /etc/apt/sources.list.d/ and run this again" >&2
    return 1
  fi
  file=/etc/apt/sources.list.d/kiln-$codename-backports.sources
  keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  echo "adding $codename-backports from ${uri%/} ($file)" >&2
  {
    echo "Types: deb"
    echo "URIs: ${uri%/}"
    echo "Suites: $codename-backports"
    echo "Components: main"
    [ -f "$keyring" ] && echo "Signed-By: $keyring"
  } | $SUDO tee "$file" >/dev/null
  $SUDO apt-get update -qq
}

apt_install_beside() {
  if ! _apt_would_break "$@"; then
    $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
    return
  fi
  local codename
  codename=$(host_codename)
  echo "$* from $codename would replace installed packages; trying $codename-backports" >&2
  add_backports
  if _apt_would_break -t "$codename-backports" "$@"; then
    echo "error: $* cannot be installed beside what is installed, neither from $codename nor from $codename-backports:" >&2
    LC_ALL=C apt-get install -s -y --no-install-recommends -t "$codename-backports" "$@" 2>&1 | grep -E '^(Remv|E:)' >&2 || true
    return 1
  fi
  $SUDO apt-get install -y -qq --no-install-recommends -t "$codename-backports" "$@" >/dev/null
}
