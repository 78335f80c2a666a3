# Shared by the project's scripts: where things are, and idempotent installs.
# shellcheck shell=bash

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# ../shared beside the clone holds the conformance corpus and the benchmark generator.
SHARED=${DROVER_SHARED:-$ROOT/../shared}
CACHE=${DROVER_CACHE:-$ROOT/.cache}

say() { printf '\n== %s\n' "$*"; }

# apt_install PKG…: installs the Debian packages that are missing (runs apt-get update once).
apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
}

require_shared() {
  if [ ! -f "$SHARED/conformance/run.py" ]; then
    echo "error: $SHARED/conformance/run.py not found: the shared test material must lie beside the clone (or set DROVER_SHARED)" >&2
    exit 2
  fi
}
