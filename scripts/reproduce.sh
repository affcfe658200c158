#!/usr/bin/env bash
# `make reproduce` (CI runs it): is the release build reproducible, and is the release that
# runs the one its manifest names?
#  1. Two fresh clones of HEAD at different paths, each built by `scripts/release.sh build`
#     with its own CARGO_HOME (so the registry's sources sit at different paths too), umask
#     and time zone, the second (when run as root) by another user with its own copy of the
#     toolchain; the binaries must be byte-identical (diffoscope shows where they are not).
#  2. The first clone's release signed with the test key; the binary started in sim mode
#     (`serve --dev`) must report the manifest's sim measurement, and `tee-risk client attest
#     --manifest` must accept it and name the commit.
# Needs the default build of this checkout (target/debug/tee-risk, which `make test` built)
# as the client.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=$root/target/reproduce
rm -rf "$work"
mkdir -p "$work/one"
a=$work/one/tee-risk
git clone -q "$root" "$a"
commit=$(git -C "$a" rev-parse HEAD)
# The second build: another folder (under /tmp, deeper), and, when this runs as root, another
# user with its own copy of the pinned toolchain (root's rustup is not readable by others).
two=$(mktemp -d /tmp/tee-risk-reproduce.XXXXXX)
chmod 755 "$two"
b=$two/deeper/path/src
mkdir -p "$two/deeper/path"
git clone -q "$root" "$b"
trap 'rm -rf "$two"' EXIT
echo "== reproduce: commit $commit, built in $a and in $b"

start=$SECONDS
(cd "$a" && umask 022 && scripts/release.sh build)
echo "== reproduce: first build $((SECONDS - start)) s"
start=$SECONDS
builder=tee-risk-builder
if [[ $(id -u) == 0 ]] && command -v useradd > /dev/null; then
  id -u "$builder" > /dev/null 2>&1 || useradd --system --no-create-home --shell /bin/bash "$builder"
  cp -a "$(readlink -f "$(rustc --print sysroot)")" "$two/toolchain"
  chown -R "$builder" "$two"
  echo "== reproduce: second build as user $builder, toolchain copied to $two/toolchain"
  runuser -u "$builder" -- env -i PATH="$two/toolchain/bin:/usr/local/bin:/usr/bin:/bin" \
    HOME="$two" CARGO_HOME="$two/cargo-home" TZ=Asia/Shanghai LANG=C.UTF-8 \
    bash -c "cd '$b' && umask 077 && scripts/release.sh build"
else
  (cd "$b" && umask 077 && CARGO_HOME=$two/cargo-home TZ=Asia/Shanghai scripts/release.sh build)
fi
echo "== reproduce: second build $((SECONDS - start)) s"

if cmp "$a/target/tee/tee-risk" "$b/target/tee/tee-risk"; then
  echo "== reproduce: identical, sha256 $(sha256sum "$a/target/tee/tee-risk" | cut -d' ' -f1)"
else
  echo "== reproduce: the two builds differ; diffoscope says where" >&2
  command -v diffoscope > /dev/null || apt-get install -y -q diffoscope-minimal > /dev/null 2>&1 || true
  diffoscope --max-report-size 200000 "$a/target/tee/tee-risk" "$b/target/tee/tee-risk" | head -200 >&2 || true
  exit 1
fi
rm -rf "$two"

# 2. The release that runs is the one its manifest names.
cargo build --quiet --locked --bin tee-risk
client=$root/target/debug/tee-risk
# Signed here (the same commit as the clones), for the first clone's binary.
RELEASE_BINARY=$a/target/tee/tee-risk RELEASE_OUT=$work/release scripts/release.sh manifest
release=$work/release/release.json
rm -rf "$a/target" # the binary was copied beside its manifest
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
run=$work/run
mkdir -p "$run"
"$work/release/tee-risk" serve --dev --listen "127.0.0.1:$port" \
  --data-dir "$run/data" --keys-dir "$run/keys" --operator-listen 127.0.0.1:0 \
  > "$run/serve.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; rm -rf "$two"' EXIT
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$port/healthz" > /dev/null && break
  sleep 0.1
done
sed "s|^platform_key = .*|platform_key = \"$run/keys/sim-platform.pub.pem\"|" \
  config/attestation-policy.dev.toml > "$run/policy.toml"
"$client" client attest --url "http://127.0.0.1:$port" --policy "$run/policy.toml" \
  --manifest "$release" --release-key release/test-key.pub.pem > "$run/attest.json"
python3 - "$run/attest.json" "$release" "$commit" <<'EOF'
import base64, json, sys
attest = json.load(open(sys.argv[1]))
signed = json.load(open(sys.argv[2]))
manifest = json.loads(base64.urlsafe_b64decode(signed["payload"] + "=" * (-len(signed["payload"]) % 4)))
assert attest["tee"] == "sim", attest
assert attest["measurement"] == manifest["binary_sm3"], (attest["measurement"], manifest["binary_sm3"])
assert attest["release"]["commit"] == sys.argv[3] == manifest["commit"], attest["release"]
print(f"== reproduce: the running release reports {attest['measurement']}, "
      f"the manifest's; client attest --manifest names commit {attest['release']['commit']}")
EOF
