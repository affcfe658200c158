#!/usr/bin/env bash
# The contract test nobody here wrote: schemathesis (PyPI, in target/pyenv) generates requests
# from docs/openapi.yaml and runs every check against a live `tee-risk serve --dev` on
# loopback, its hooks signing requests as the development client (tests/contract/hooks.py).
# Documented exclusions: tests/contract/schemathesis.toml. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")"
root=$(cd ../.. && pwd)
bin=${TEE_RISK_BIN:-$root/target/debug/tee-risk}
python=$root/target/pyenv/bin/python
dir=$(mktemp -d)
port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
token=$("$python" -c 'import secrets; print(secrets.token_hex(16))')
TEE_RISK_ADMIN_TOKEN=$token "$bin" serve --dev --data-dir "$dir/data" --keys-dir "$dir/keys" \
  --listen "127.0.0.1:$port" >"$dir/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break
  sleep 0.1
done
export CONTRACT_CLIENT_KEY=$dir/data/dev-client-key.hex CONTRACT_ADMIN_TOKEN=$token
status=0
"$root/target/pyenv/bin/schemathesis" --config-file schemathesis.toml run "$root/docs/openapi.yaml" \
  --url "http://127.0.0.1:$port" --checks all --max-examples "${CONTRACT_EXAMPLES:-50}" \
  --seed "${CONTRACT_SEED:-1}" || status=$?
# Not vacuous: the signed bodies got past authentication to the envelope checks (a refusal
# that comes only after the signature verified), and were refused as the protocol says.
metrics=$(curl -sf -H "Authorization: Bearer $token" "http://127.0.0.1:$port/metrics")
echo "$metrics" | grep '^tee_risk_refusals_total' || true
past_auth=$(echo "$metrics" | awk '/^tee_risk_refusals_total\{code="(malformed_envelope|bad_base64|bad_length|bad_header|unsupported_algorithm|unknown_kid|decryption_failed)"\}/ {n += $2} END {print n + 0}')
if [[ $past_auth -lt 10 ]]; then
  echo "only $past_auth generated requests reached the envelope checks: the signing hook is not working" >&2
  status=1
fi
if grep -q panicked "$dir/server.log"; then
  echo "the server panicked:" >&2
  grep -A5 panicked "$dir/server.log" >&2
  status=1
fi
exit $status
