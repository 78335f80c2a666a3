# Shared by the project's scripts: where things are, and idempotent installs.
# shellcheck shell=bash

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# ../shared beside the clone holds the conformance corpus and the benchmark generator.
SHARED=${DROVER_SHARED:-$ROOT/../shared}
# shellcheck disable=SC2034 # used by the scripts that source this file
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

# maven_fetch GROUP:ARTIFACT:VERSION[:TYPE[:CLASSIFIER]] DIR: copies that one artifact (not its
# dependencies) into DIR through Maven (the machine's repositories and its ~/.m2 cache), with
# checksums enforced. Runs in an empty directory, so no project's pom.xml is picked up.
maven_fetch() {
  local artifact=$1 dest=$2 work out rc=0
  command -v mvn >/dev/null || apt_install maven
  mkdir -p "$dest"
  work=$(mktemp -d)
  # Maven's output only when it fails (-q still prints colour codes).
  out=$(cd "$work" && mvn -B -q -C -Dstyle.color=never dependency:copy \
    -Dartifact="$artifact" -DoutputDirectory="$dest" 2>&1) || rc=$?
  rm -rf "$work"
  [ "$rc" -eq 0 ] || printf 'error: Maven could not fetch %s:\n%s\n' "$artifact" "$out" >&2
  return "$rc"
}

# java_home: prints the JDK directory of $JAVA_HOME, or else of the `java` on the PATH.
java_home() {
  if [ -n "${JAVA_HOME:-}" ] && [ -x "$JAVA_HOME/bin/java" ]; then
    echo "$JAVA_HOME"
    return 0
  fi
  local java
  java=$(command -v java) || { echo "error: no java on the PATH and no JAVA_HOME" >&2; return 1; }
  java=$(readlink -f "$java")
  dirname "$(dirname "$java")"
}

# port_in_use PORT: true when something accepts TCP connections on 127.0.0.1:PORT.
port_in_use() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# python_tools REQ…: makes sure the project's Python virtualenv ($CACHE/venv) has the given
# requirements (pip specifiers, pinned), installing only what is missing; prints nothing else.
# Put "$CACHE/venv/bin" first on the PATH to use them.
python_tools() {
  local venv=$CACHE/venv
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  if ! "$venv/bin/python" - "$@" <<'PY' 2>/dev/null; then
import sys
from importlib.metadata import version, PackageNotFoundError
for req in sys.argv[1:]:
    name, _, want = req.partition("==")
    if version(name) != want:
        sys.exit(1)
PY
    say "installing Python tools: $*"
    "$venv/bin/pip" install -q --disable-pip-version-check "$@"
  fi
}

# go_tool MODULE@VERSION: installs a Go command into $CACHE/bin (once) through the Go module
# proxy; prints its path.
go_tool() {
  local module=$1 name
  name=$(basename "${module%@*}")
  # .../kustomize/v5 → kustomize: a major-version suffix is not the command's name.
  [[ $name =~ ^v[0-9]+$ ]] && name=$(basename "$(dirname "${module%@*}")")
  local bin=$CACHE/bin/$name stamp=$CACHE/bin/.$name.version
  if [ ! -x "$bin" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$module" ]; then
    say "installing $module" >&2
    mkdir -p "$CACHE/bin"
    GOBIN=$CACHE/bin GOFLAGS=-mod=mod go install "$module" >&2
    echo "$module" >"$stamp"
  fi
  echo "$bin"
}
