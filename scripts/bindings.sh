#!/usr/bin/env bash
# The Kotlin, Swift and Python bindings of clients/ffi, generated from the built library by
# the uniffi-bindgen of the same uniffi version, into target/bindings/<language>/. Then the
# Kotlin sources and clients/kotlin/Smoke.kt are compiled into target/bindings/kotlin-smoke.jar
# (run against a live server by clients/python/tests/test_kotlin.py) when a JDK and JNA are
# installed: the compiler is JetBrains' Kotlin distribution as published on the npm registry
# (`kotlin-compiler`), since Debian 12's `kotlin` (1.3.31) cannot compile uniffi's output.
# Swift has no toolchain in Debian 12's packages: its sources are generated, not compiled.
set -euo pipefail
cd "$(dirname "$0")/.."

KOTLIN_VERSION=2.4.20
ffi=clients/ffi
# The library as the Python package builds it (make python-test: dev profile, no bindgen,
# the hardware verifiers).
cargo build -q --manifest-path "$ffi/Cargo.toml" --lib --no-default-features --features hardware
library=$ffi/target/debug/libtee_risk_ffi.so
out=target/bindings
rm -rf "$out"
for language in kotlin swift python; do
  cargo run -q --manifest-path "$ffi/Cargo.toml" --bin uniffi-bindgen -- \
    generate --library "$library" --language "$language" --no-format --out-dir "$out/$language"
done
find "$out" -type f | sort

jna=/usr/share/java/jna.jar
kotlinc=target/kotlinc-$KOTLIN_VERSION/bin/kotlinc
if [[ ! -x $kotlinc ]] && command -v npm >/dev/null && command -v java >/dev/null; then
  echo "== fetching the Kotlin compiler $KOTLIN_VERSION (npm registry: kotlin-compiler)"
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack -q "kotlin-compiler@$KOTLIN_VERSION" >/dev/null)
  mkdir -p "target/kotlinc-$KOTLIN_VERSION"
  tar xzf "$tmp"/kotlin-compiler-*.tgz -C "target/kotlinc-$KOTLIN_VERSION" --strip-components=1
  chmod +x "target/kotlinc-$KOTLIN_VERSION"/bin/*
  rm -rf "$tmp"
fi
if [[ -x $kotlinc && -f $jna ]] && command -v java >/dev/null; then
  echo "== compiling the Kotlin bindings and clients/kotlin/Smoke.kt ($kotlinc)"
  mapfile -t sources < <(find "$out/kotlin" -name '*.kt')
  "$kotlinc" -nowarn "${sources[@]}" clients/kotlin/Smoke.kt -classpath "$jna" \
    -include-runtime -d "$out/kotlin-smoke.jar"
  cp "$library" "$out/"
  echo "Kotlin bindings compiled: $out/kotlin-smoke.jar (library: $out/libtee_risk_ffi.so)"
else
  echo "== Kotlin bindings NOT compiled: needs java, $jna and npm or $kotlinc" \
       "(apt-get install openjdk-17-jdk-headless libjna-java npm)"
  # CI sets this: there, not compiling them is a failure.
  [[ -z ${TEE_RISK_REQUIRE_KOTLIN:-} ]] || exit 1
fi
