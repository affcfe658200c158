"""Schemathesis hooks for the contract test (`tests/contract/run.sh`): every request to an
encrypted endpoint is signed as the development client would sign it (PROTOCOL.md, client
authentication: SM2 over "tee-risk/client-request/v1" ‖ 0 ‖ id ‖ 0 ‖ method ‖ 0 ‖ path ‖ 0 ‖
SM3(body)), so that generated bodies reach past authentication to the envelope and payload
checks. The signing is the independent client's (tests/independent/client.py, gmssl)."""

import json
import os
import sys

import schemathesis
from schemathesis.core import NotSet

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "independent"))
from client import b64, sm2_sign_der, sm3_digest  # noqa: E402

CLIENT_ID = os.environ.get("CONTRACT_CLIENT_ID", "dev")
KEY_HEX = open(os.environ["CONTRACT_CLIENT_KEY"]).read().strip()
# (The operator endpoints' bearer token is schemathesis's own auth: schemathesis.toml.)
SIGNED = {("POST", "/v1/enroll"), ("POST", "/v1/assess"), ("POST", "/v1/identify"),
          ("DELETE", "/v1/users")}


@schemathesis.hook
def before_call(context, case, kwargs):
    method, path = case.method.upper(), case.formatted_path
    headers = dict(case.headers or {})
    # A case that leaves the credential out (schemathesis tests that it is required) keeps
    # it out; one that carries a generated credential gets a real one.
    if "Authorization" not in headers or (method, path) not in SIGNED:
        return
    # The exact bytes sent are the bytes signed: serialise the generated body here and hand
    # it to the transport as is.
    if isinstance(case.body, NotSet):
        body = b""
    elif isinstance(case.body, (bytes, bytearray)):
        body = bytes(case.body)
    else:
        body = json.dumps(case.body).encode()
    kwargs["data"] = body
    message = b"\x00".join([b"tee-risk/client-request/v1", CLIENT_ID.encode(), method.encode(),
                            path.encode(), sm3_digest(body)])
    headers["Authorization"] = f"TR-SM2 {CLIENT_ID}:{b64(sm2_sign_der(KEY_HEX, message))}"
    headers["Content-Type"] = "application/json"
    case.headers = headers
