#!/usr/bin/env bash
# Installs what `make test` needs and this machine lacks (Debian packages, as root), so that
# the README's two commands are the whole set-up. `make test` runs it first; `.ci/run` runs
# it through `make test`. Installs nothing that is already there, and says what it installs.
set -euo pipefail

"$(dirname "$0")/toolchain.sh"

missing=()
need() { # need PACKAGE WHY CHECK...: queue PACKAGE when the check fails
  local package=$1 why=$2
  shift 2
  if ! "$@" >/dev/null 2>&1; then
    echo "== setup: $package ($why)"
    missing+=("$package")
  fi
}
has() { command -v "$1"; }

need openssl "the interop tests use its CLI" has openssl
# The PostgreSQL tests start a throw-away cluster (initdb, postgres, pg_dump).
need postgresql "the PostgreSQL store's tests run a real cluster" \
  bash -c 'ls /usr/lib/postgresql/*/bin/initdb'
need haproxy "the reference cluster's load balancer (tests/cluster.rs)" has haproxy
need python3-venv "make test makes target/pyenv for the independent client" \
  python3 -c 'import venv, ensurepip'
# The `csv` feature builds OpenSSL from source; the fuzz crate's check builds libFuzzer.
need perl "csv builds OpenSSL from source" has perl
need make "csv builds OpenSSL from source" has make
need gcc "C compiler for csv and libFuzzer" has cc
need g++ "C++ compiler for libFuzzer" has c++
# The Kotlin bindings are compiled and run against the server: a JDK, JNA, and npm to fetch
# JetBrains' Kotlin compiler from the npm registry (docs/CLIENTS.md).
need openjdk-17-jdk-headless "the Kotlin bindings are compiled and run" has javac
need libjna-java "the Kotlin bindings load the library through JNA" test -f /usr/share/java/jna.jar
need npm "fetches the Kotlin compiler from the npm registry" has npm

if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup: missing ${missing[*]}; install them (apt-get install ${missing[*]}) or run as root" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
for component in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$component" || rustup component add "$component"
done
