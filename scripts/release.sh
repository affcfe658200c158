#!/usr/bin/env bash
# The TEE binary, built so that anyone rebuilds the same bytes from the same commit, and its
# signed manifest (docs/ATTESTATION.md, "From measurement to source").
#
#   scripts/release.sh build     the binary only: target/tee/tee-risk
#   scripts/release.sh manifest  sign target/tee-release/release.json for that binary
#   scripts/release.sh           both (`make release`)
#
# RELEASE_KEY: the SM2 release key (default release/test-key.pem, the committed test key:
# such a release proves nothing to anyone; the real key's custody is in release/README.md).
# RELEASE_BINARY, RELEASE_OUT: the binary `manifest` signs for (default target/tee/tee-risk)
# and where it writes (default target/tee-release/).
# RELEASE_ALLOW_DIRTY=1 builds a tree with uncommitted changes (the manifest then names a
# commit whose source it was not built from: for trying the build only).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=${RELEASE_OUT:-target/tee-release}
binary=${RELEASE_BINARY:-target/tee/tee-risk}

# What reproducibility rests on, each for a reason the comparison showed or the toolchain
# documents:
#  - the toolchain rust-toolchain.toml pins (rustup selects it; checked here);
#  - Cargo.lock as committed (--locked);
#  - paths: the checkout and CARGO_HOME (registry sources) differ between builders and end up
#    in panic messages and symbol paths; remapped to fixed names;
#  - time: SOURCE_DATE_EPOCH = the commit's time, TZ and locale fixed;
#  - no GNU build id (a hash of the linker's inputs, which would carry any difference on);
#  - the `tee` profile: no debug info (paths, sizes), the symbol table kept for backtraces.
FEATURES=server,cli,postgres
build() {
  local pinned actual
  pinned=$(sed -n 's/^channel = "\(.*\)"$/\1/p' rust-toolchain.toml)
  actual=$(rustc --version | awk '{print $2}')
  if [[ $actual != "$pinned" ]]; then
    echo "rustc is $actual, rust-toolchain.toml pins $pinned" >&2
    exit 1
  fi
  if [[ ${RELEASE_ALLOW_DIRTY:-} != 1 && -n $(git status --porcelain --untracked-files=no) ]]; then
    echo "uncommitted changes: a release is built from a commit (RELEASE_ALLOW_DIRTY=1 to try)" >&2
    exit 1
  fi
  local cargo_home=${CARGO_HOME:-$HOME/.cargo}
  (
    export SOURCE_DATE_EPOCH
    SOURCE_DATE_EPOCH=$(git log -1 --format=%ct)
    export TZ=UTC LC_ALL=C CARGO_INCREMENTAL=0
    export RUSTFLAGS="--remap-path-prefix=$root=/build/tee-risk --remap-path-prefix=$cargo_home=/cargo -C link-arg=-Wl,--build-id=none"
    export CFLAGS="-ffile-prefix-map=$root=/build/tee-risk -ffile-prefix-map=$cargo_home=/cargo"
    unset RUSTC_WRAPPER CARGO_BUILD_RUSTFLAGS CARGO_ENCODED_RUSTFLAGS
    cargo build --locked --profile tee --no-default-features --features "$FEATURES" --bin tee-risk \
      --target-dir target
  )
  echo "built target/tee/tee-risk: sha256 $(sha256sum target/tee/tee-risk | cut -d' ' -f1)"
}

manifest() {
  local key=${RELEASE_KEY:-release/test-key.pem}
  mkdir -p "$out"
  # The compiler, and the C compiler and linker it drove (Debian's), in the manifest.
  { rustc -vV; cc --version | head -1; ld --version | head -1; } > "$out/toolchain.txt"
  local extra=()
  if scripts/snp-reference.sh "$binary" "$out/snp.json"; then
    extra+=(--incomplete "$out/snp.json")
  else
    echo "no SEV-SNP reference value: scripts/snp-reference.sh failed (see above)" >&2
  fi
  # The signing tool is the default build of this checkout (not the TEE binary: it carries
  # no release tooling).
  cargo build --quiet --locked --bin tee-risk
  "${CARGO_TARGET_DIR:-target}/debug/tee-risk" release manifest \
    --binary "$binary" --cargo-lock Cargo.lock \
    --commit "$(git rev-parse HEAD)" --source-date-epoch "$(git log -1 --format=%ct)" \
    --toolchain "$out/toolchain.txt" \
    --build "cargo build --locked --profile tee --no-default-features --features $FEATURES --bin tee-risk (scripts/release.sh)" \
    "${extra[@]}" --key "$key" --out "$out/release.json"
  cp "$binary" "$out/tee-risk"
  echo "release: $out/release.json, $out/tee-risk"
}

case ${1:-all} in
  build) build ;;
  manifest) manifest ;;
  all) build; manifest ;;
  *) echo "usage: $0 [build|manifest]" >&2; exit 2 ;;
esac
