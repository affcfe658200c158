#!/usr/bin/env python3
"""An independent tee-risk client, written from docs/PROTOCOL.md alone.

It shares no code with the project: SM2 and SM3 come from `gmssl` (PyPI, pure Python), SM4-GCM
from `cryptography` (OpenSSL), HTTP from the standard library. tests/cluster.rs runs it
against the cluster through the load balancer; a disagreement with the Rust implementation
about any byte of the protocol fails there.

  client.py send --url URL --path /v1/enroll --client-id dev --client-key HEX \
      --pin IDENTITY_PEM --user USER --features FILE.json [--face-model ID]

prints the verified answer's payload (JSON) on stdout; exit 1 with a reason on stderr when
the service refuses or anything does not verify.
"""

import argparse
import base64
import json
import os
import sys
import time
import urllib.error
import urllib.request

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from gmssl import sm2, sm3, func

# GB/T 32918.5 curve, as gmssl names its parameters.
CURVE = sm2.default_ecc_table


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    if "=" in text or "+" in text or "/" in text:
        raise ValueError("not base64url without padding")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sm3_digest(data: bytes) -> bytes:
    return bytes.fromhex(sm3.sm3_hash(func.bytes_to_list(data)))


def kid(x: bytes, y: bytes) -> str:
    # §1: lowercase hex of the first 16 bytes of SM3(0x04 ‖ x ‖ y).
    return sm3_digest(b"\x04" + x + y)[:16].hex()


def der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def der_integer(value: int) -> bytes:
    body = value.to_bytes((value.bit_length() + 8) // 8, "big")  # a leading 0 keeps it positive
    return b"\x02" + der_length(len(body)) + body


def der_octets(value: bytes) -> bytes:
    return b"\x04" + der_length(len(value)) + value


def der_sequence(*items: bytes) -> bytes:
    body = b"".join(items)
    return b"\x30" + der_length(len(body)) + body


def sm2_encrypt_der(x: bytes, y: bytes, message: bytes) -> bytes:
    """§2.3: SM2-Encrypt in the GM/T 0009 DER form SEQUENCE {x1, y1, C3, C2}."""
    cipher = sm2.CryptSM2(private_key=None, public_key=(x + y).hex(), mode=1)
    raw = cipher.encrypt(message)  # C1 (x1 ‖ y1, 64 bytes) ‖ C3 (32) ‖ C2
    x1, y1, c3, c2 = raw[:32], raw[32:64], raw[64:96], raw[96:]
    return der_sequence(
        der_integer(int.from_bytes(x1, "big")),
        der_integer(int.from_bytes(y1, "big")),
        der_octets(c3),
        der_octets(c2),
    )


def point_of(private_hex: str) -> str:
    signer = sm2.CryptSM2(private_key=private_hex, public_key="")
    return signer._kg(int(private_hex, 16), CURVE["g"])  # x ‖ y, hex


def sm2_sign_der(private_hex: str, message: bytes) -> bytes:
    """SM2 with the default ID 1234567812345678 (gmssl's _sm3_z), DER SEQUENCE {r, s}."""
    signer = sm2.CryptSM2(private_key=private_hex, public_key=point_of(private_hex), asn1=True)
    return bytes.fromhex(signer.sign_with_sm3(message))


def sm2_verify_der(x: bytes, y: bytes, signature: bytes, message: bytes) -> bool:
    verifier = sm2.CryptSM2(private_key=None, public_key=(x + y).hex(), asn1=True)
    return bool(verifier.verify_with_sm3(signature.hex(), message))


def verify_signed(identity, signed: dict) -> dict:
    """§3: the signature with the identity key, over protected ‖ "." ‖ payload."""
    header = json.loads(unb64(signed["protected"]))
    if header != {"alg": "SM2-SM3", "kid": kid(*identity)}:
        raise ValueError(f"signed by another key or algorithm: {header}")
    message = f'{signed["protected"]}.{signed["payload"]}'.encode()
    if not sm2_verify_der(*identity, unb64(signed["signature"]), message):
        raise ValueError("the signature does not verify")
    return json.loads(unb64(signed["payload"]))


def pem_point(path: str):
    """x, y of an SM2 SubjectPublicKeyInfo PEM: its BIT STRING ends with 0x04 ‖ x ‖ y."""
    lines = [l for l in open(path).read().splitlines() if l and not l.startswith("-----")]
    der = base64.b64decode("".join(lines))
    point = der[-65:]
    if point[0] != 4:
        raise ValueError(f"{path} is not an uncompressed SM2 point")
    return point[1:33], point[33:]


def http(method: str, url: str, body: bytes = None, headers=None):
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as refusal:
        return refusal.code, refusal.read()


def encryption_key(url: str, identity):
    """§1: the certified encryption key valid now with the latest not_before."""
    status, body = http("GET", f"{url}/v1/keys")
    if status != 200:
        raise ValueError(f"GET /v1/keys answered {status}")
    keys = json.loads(body)["keys"]
    published = [k for k in keys if k["use"] == "sig"]
    if len(published) != 1 or (unb64(published[0]["x"]), unb64(published[0]["y"])) != identity:
        raise ValueError("the service presents another identity than the pinned one")
    now, best = int(time.time()), None
    for key in keys:
        if key["use"] != "enc":
            continue
        x, y = unb64(key["x"]), unb64(key["y"])
        if kid(x, y) != key["kid"]:
            raise ValueError("a kid does not match its key")
        statement = verify_signed(identity, key["cert"])
        expected = {"typ": "tee-risk/encryption-key/v1", "kid": key["kid"], "crv": "SM2",
                    "x": key["x"], "y": key["y"]}
        if any(statement.get(k) != v for k, v in expected.items()):
            raise ValueError("a certificate names another key")
        if statement["not_before"] <= now <= statement["not_after"]:
            if best is None or statement["not_before"] > best[2]:
                best = (x, y, statement["not_before"], key["kid"])
    if best is None:
        raise ValueError("no certified encryption key is valid now")
    return best


def send(args) -> dict:
    identity = pem_point(args.pin)
    x, y, _, enc_kid = encryption_key(args.url, identity)
    header = {"alg": "SM2", "enc": "SM4-GCM", "kid": enc_kid, "rid": b64(os.urandom(16)),
              "iat": int(time.time())}
    protected = b64(json.dumps(header, separators=(",", ":")).encode())
    features = json.load(open(args.features))
    if isinstance(features, dict):
        features = features.get("features") or features["embedding"]
    payload = {"user_id": args.user, "features": features, "liveness": 0.95,
               "device_id": "independent-client"}
    if args.face_model:  # PROTOCOL v1.3 §2c; absent: the service's default model
        payload["face_model"] = args.face_model
    session_key, iv = os.urandom(16), os.urandom(12)
    encryptor = Cipher(algorithms.SM4(session_key), modes.GCM(iv)).encryptor()
    encryptor.authenticate_additional_data(protected.encode("ascii"))
    ciphertext = encryptor.update(json.dumps(payload).encode()) + encryptor.finalize()
    body = json.dumps({
        "protected": protected,
        "encrypted_key": b64(sm2_encrypt_der(x, y, session_key)),
        "iv": b64(iv),
        "ciphertext": b64(ciphertext),
        "tag": b64(encryptor.tag),
    }).encode()
    key_hex = open(args.client_key).read().strip()
    # §2, client authentication: id ‖ 0 ‖ method ‖ 0 ‖ path ‖ 0 ‖ SM3(body), with a label.
    signed = b"\x00".join([b"tee-risk/client-request/v1", args.client_id.encode(), b"POST",
                           args.path.encode(), sm3_digest(body)])
    authorization = f"TR-SM2 {args.client_id}:{b64(sm2_sign_der(key_hex, signed))}"
    status, answer = http("POST", f"{args.url}{args.path}", body, {
        "Content-Type": "application/json", "Authorization": authorization})
    if status != 200:
        raise ValueError(f"refused: {status} {answer.decode(errors='replace')}")
    result = verify_signed(identity, json.loads(answer))
    if result["rid"] != header["rid"] or result["req_sm3"] != sm3_digest(body).hex():
        raise ValueError("the answer is for another request")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("send")
    for name in ("--url", "--path", "--client-id", "--client-key", "--pin", "--user",
                 "--features"):
        command.add_argument(name, required=True)
    command.add_argument("--face-model", default=None)
    args = parser.parse_args()
    try:
        print(json.dumps(send(args)))
    except (ValueError, KeyError, OSError) as failure:
        print(f"independent client: {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
