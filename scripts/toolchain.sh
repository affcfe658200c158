#!/usr/bin/env bash
# The toolchain rust-toolchain.toml pins, under its pinned name. Where rustup holds that version
# only as `stable` (and may not download: RUSTUP_AUTO_INSTALL=0, no network), it is linked
# under the pinned name; where neither exists, says so. `make run` and `make test` run it first.
set -euo pipefail
pinned=$(sed -n 's/^channel = "\(.*\)"$/\1/p' "$(dirname "$0")/../rust-toolchain.toml")
if command -v rustup >/dev/null && ! rustup toolchain list | grep -q "^$pinned-"; then
  host=$(rustup run stable rustc -vV 2>/dev/null | sed -n 's/^host: //p')
  if [[ $(rustup run stable rustc --version 2>/dev/null | awk '{print $2}') == "$pinned" ]]; then
    echo "== setup: toolchain $pinned is this machine's stable; linking it under its pinned name"
    ln -s "stable-$host" "${RUSTUP_HOME:-$HOME/.rustup}/toolchains/$pinned-$host"
  fi
fi
rustup run "$pinned" rustc --version >/dev/null 2>&1 || {
  echo "the toolchain $pinned (rust-toolchain.toml) is not installed: rustup toolchain install $pinned" >&2
  exit 1
}
