"""The Python package against a real server: the walkthrough, encrypted answers, refusals,
tampered answers, the production policy, and artefacts exchanged with the Rust CLI."""

import json
import subprocess

import pytest

from conftest import BIN, ROOT, clean_env, sample
from tee_risk_client import (
    AttestationPolicy,
    Credential,
    RawAnswer,
    TeeRiskClient,
    TeeRiskError,
    verify_answer,
)


@pytest.fixture(scope="module")
def client(server):
    return TeeRiskClient.attest(
        server.url,
        AttestationPolicy.load(server.dev_policy),
        Credential.from_file("dev", server.client_key),
    )


def test_attestation_binds_the_identity_the_server_wrote(server, client):
    attestation = client.attestation()
    assert attestation.tee == "sim"
    assert attestation.debug is True
    pinned = TeeRiskClient.pinned(server.url, server.identity_pem, None)
    assert attestation.identity_kid == client.identity_kid() == pinned.identity_kid()
    assert client.encryption_kid() == pinned.encryption_kid()
    assert client.encryption_valid_until() > 0


def test_production_policy_refuses_simulated_evidence(server):
    with pytest.raises(TeeRiskError.Untrusted) as refused:
        TeeRiskClient.attest(server.url, AttestationPolicy.load(server.production_policy), None)
    assert refused.value.check == "tee_kind", refused.value
    assert "sim" in str(refused.value)


def test_enrol_assess_identify_erase(client):
    enrolled = client.enroll("py-alice", sample("alice-enrol.json"), None, "phone-1", False)
    assert enrolled.outcome == "enrolled" and enrolled.templates == 1, enrolled
    assert json.loads(enrolled.extra_json) == {}, enrolled

    # Identify first: an accepted assessment makes its probe "recent", and identify refuses a
    # copy of a recent probe (replayed_probe).
    identified = client.identify(sample("alice-probe.json"), None, None, 3)
    assert identified.mode == "decide" and identified.decision == "match", identified
    assert identified.candidates[0].user_id == "py-alice", identified
    assert identified.candidates[0].rank is None, identified

    # The investigative mode (the dev client holds `investigate`): ranked leads, no decision.
    leads = client.investigate(sample("alice-probe.json"), None, None, 5)
    assert leads.mode == "investigate" and leads.decision == "candidates", leads
    assert leads.candidates[0].rank == 1, leads
    assert leads.candidates[0].user_id == "py-alice", leads
    assert 0 < leads.candidates[0].pair_fmr <= leads.candidates[0].fmr, leads

    genuine = client.assess("py-alice", sample("alice-probe.json"), 0.97, "phone-1", False)
    assert genuine.decision == "allow" and 0 <= genuine.score <= 1, genuine

    impostor = client.assess("py-alice", sample("mallory-probe.json"), None, None, False)
    assert impostor.decision == "deny" and "no_match" in impostor.reasons, impostor

    erased = client.erase("py-alice", True)
    assert erased.templates == 1, erased

    after = client.assess("py-alice", sample("alice-probe.json"), None, None, False)
    assert after.decision == "deny" and after.reasons == ["no_enrolment"], after


def test_encrypted_answer_is_unreadable_on_the_way(client):
    sealed = client.seal(json.dumps({"user_id": "py-nobody", "features": sample("alice-probe.json")}), True)
    assert sealed.encrypted_answer()
    answer = client.post_raw("POST", "/v1/assess", sealed.body())
    assert answer.status == 200
    on_the_wire = json.loads(answer.body)
    assert "payload" not in on_the_wire and b"py-nobody" not in answer.body
    payload = json.loads(client.open_answer(sealed, answer))
    assert payload["rid"] == sealed.rid() and payload["reasons"] == ["no_enrolment"]


def test_tampered_answers_are_refused(client):
    sealed = client.seal(json.dumps({"user_id": "py-bob", "features": sample("alice-probe.json")}), False)
    answer = client.post_raw("POST", "/v1/assess", sealed.body())
    assert answer.status == 200
    signed = json.loads(answer.body)
    # Flip one bit of the signed payload: the SM2 signature no longer verifies.
    payload = bytearray(signed["payload"].encode())
    payload[10] = ord("A") if payload[10] != ord("A") else ord("B")
    forged = RawAnswer(status=200, body=json.dumps({**signed, "payload": payload.decode()}).encode())
    with pytest.raises(TeeRiskError.Untrusted) as refused:
        client.open_answer(sealed, forged)
    assert refused.value.check == "signature", refused.value
    # A genuine answer to another request is refused too (rid and req_sm3).
    other = client.seal(json.dumps({"user_id": "py-bob", "features": sample("alice-probe.json")}), False)
    with pytest.raises(TeeRiskError.Untrusted) as refused:
        client.open_answer(other, answer)
    assert "another request" in str(refused.value)
    assert refused.value.check == "request_id", refused.value
    # And the untouched answer passes.
    assert json.loads(client.open_answer(sealed, answer))["decision"] == "deny"


def test_refusals_are_typed(server, client):
    sealed = client.seal(json.dumps({"user_id": "py-bob", "features": sample("alice-probe.json")}), False)
    envelope = json.loads(sealed.body())
    envelope["tag"] = "A" * 22  # a 16-byte tag of zeros: authentication fails
    answer = client.post_raw("POST", "/v1/assess", json.dumps(envelope).encode())
    with pytest.raises(TeeRiskError.Refused) as refused:
        client.open_answer(sealed, answer)
    assert (refused.value.status, refused.value.code) == (400, "decryption_failed")

    anonymous = TeeRiskClient.pinned(server.url, server.identity_pem, None)
    with pytest.raises(TeeRiskError.Refused) as refused:
        anonymous.assess("py-bob", sample("alice-probe.json"), None, None, False)
    assert (refused.value.status, refused.value.code) == (401, "unauthenticated")

    with pytest.raises(TeeRiskError.Refused) as refused:
        client.enroll("py-bob", [0.0] * 128, None, None, False)
    assert (refused.value.status, refused.value.code) == (422, "zero_norm")


def test_bad_arguments_and_other_identities(server):
    with pytest.raises(TeeRiskError.InvalidArgument):
        Credential("dev", "not a key")
    with pytest.raises(TeeRiskError.InvalidArgument):
        AttestationPolicy.load("/nonexistent/policy.toml")
    stranger = Credential("stranger", "11" * 32).public_key_pem()
    # Another identity than the pinned one: typed, with both kids (how to re-pin in detail).
    with pytest.raises(TeeRiskError.IdentityChanged) as refused:
        TeeRiskClient.pinned(server.url, stranger, None)
    assert refused.value.presented != refused.value.pinned
    assert "pin the new key" in refused.value.detail


def test_a_request_sealed_in_python_is_posted_by_the_cli(server, client, tmp_path):
    sealed = client.seal(json.dumps({"user_id": "interop-py", "features": sample("alice-enrol.json")}), False)
    request = tmp_path / "request.json"
    request.write_bytes(sealed.body())
    answer_file = tmp_path / "answer.json"
    done = server.cli("post", "--url", server.url, "--path", "/v1/enroll", "--request", str(request),
                      "--client-key", server.client_key, "--pin-keys", str(server.keys),
                      "--save-answer", str(answer_file))
    assert json.loads(done.stdout)["outcome"] == "enrolled"
    # The answer the CLI received and verified verifies here too, against the same request.
    answer = RawAnswer(status=200, body=answer_file.read_bytes())
    payload = json.loads(verify_answer(server.identity_pem, request.read_bytes(), answer))
    assert payload["rid"] == sealed.rid() and payload["outcome"] == "enrolled"
    assert json.loads(client.open_answer(sealed, answer))["outcome"] == "enrolled"


def test_a_request_sealed_by_the_cli_is_posted_in_python(server, client, tmp_path):
    request = tmp_path / "request.json"
    features = tmp_path / "probe.json"
    features.write_text(json.dumps(sample("alice-probe.json")))
    rid = server.cli("seal", "--url", server.url, "--user", "interop-py", "--features", str(features),
                     "--pin-keys", str(server.keys), "--out", str(request)).stdout.strip()
    answer = client.post_raw("POST", "/v1/assess", request.read_bytes())
    payload = json.loads(verify_answer(server.identity_pem, request.read_bytes(), answer))
    assert payload["rid"] == rid and payload["decision"] == "allow", payload
    answer_file = tmp_path / "answer.json"
    answer_file.write_bytes(answer.body)
    identity = str(server.keys / "identity.pub.pem")
    verified = server.cli("verify-answer", "--request", str(request), "--answer", str(answer_file),
                          "--identity", identity)
    assert json.loads(verified.stdout)["rid"] == rid
    # A byte changed in the answer: both refuse it.
    forged = bytearray(answer.body)
    forged[forged.index(b'"signature":"') + 14] ^= 0x01
    answer_file.write_bytes(forged)
    refused = server.cli("verify-answer", "--request", str(request), "--answer", str(answer_file),
                         "--identity", identity, check=False)
    assert refused.returncode == 3, refused.stderr
    with pytest.raises(TeeRiskError.Untrusted):
        verify_answer(server.identity_pem, request.read_bytes(), RawAnswer(status=200, body=bytes(forged)))
    # Leave no one enrolled with this face for the tests that follow.
    assert client.erase("interop-py", False).templates == 1


def test_the_face_model_is_named_per_request(client):
    """PROTOCOL v1.3: `face_model` (a keyword argument, default None: the service's default
    model) picks the model; each model's templates are searched apart."""
    # A 192-d MobileFaceNet vector (any direction will do for the plumbing; accuracy is
    # measured by tee-risk eval): enrolled under that model, found only there.
    face = [((i * 7) % 13) / 13.0 - 0.5 for i in range(192)]
    enrolled = client.enroll("py-mfn", face, None, "phone-9", False, face_model="mobilefacenet192")
    assert (enrolled.outcome, enrolled.face_model) == ("enrolled", "mobilefacenet192")
    found = client.identify(face, None, None, 1, face_model="mobilefacenet192")
    assert found.face_model == "mobilefacenet192"
    assert found.searched == 1
    # The same vector without a model is the default (128-d dlib): the wrong dimension.
    with pytest.raises(TeeRiskError.Refused) as refused:
        client.assess("py-mfn", face, None, None, False)
    assert (refused.value.status, refused.value.code) == (422, "wrong_dimension")
    with pytest.raises(TeeRiskError.Refused) as refused:
        client.assess("py-mfn", face, None, None, False, face_model="arcface")
    assert (refused.value.status, refused.value.code) == (422, "invalid_field")
    assert "mobilefacenet192 (192-d)" in refused.value.detail
    client.erase("py-mfn", False)


def release_manifest(tmp_path, binary, name):
    """`tee-risk release manifest` for `binary`, signed with the committed test release key."""
    toolchain = tmp_path / "toolchain.txt"
    toolchain.write_text("rustc (test)\n")
    out = tmp_path / name
    done = subprocess.run(
        [BIN, "release", "manifest", "--binary", str(binary), "--cargo-lock", str(ROOT / "Cargo.lock"),
         "--commit", "89abcdef" * 5, "--source-date-epoch", "1765000000",
         "--toolchain", str(toolchain), "--build", "the Python test's",
         "--key", str(ROOT / "release" / "test-key.pem"), "--out", str(out)],
        capture_output=True, text=True, env=clean_env(), timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return out.read_text()


def test_a_policy_that_requires_releases(server, tmp_path):
    """Accepts the running binary only when a manifest signed by the release key lists it, and
    names the commit; another build's manifest, a tampered one and a manifest missing from the
    release log are refused with their checks."""
    release_key = (ROOT / "release" / "test-key.pub.pem").read_text()
    dev = AttestationPolicy.load(server.dev_policy)
    ours = release_manifest(tmp_path, BIN, "ours.json")
    attested = TeeRiskClient.attest(server.url, dev.require_releases([ours], release_key, None), None)
    assert attested.attestation().release_commit == "89abcdef" * 5
    assert attested.attestation().measurement == json.loads(ours)["manifest"]["binary_sm3"]

    other = release_manifest(tmp_path, ROOT / "Cargo.toml", "other.json")
    with pytest.raises(TeeRiskError.Untrusted) as refused:
        TeeRiskClient.attest(server.url, dev.require_releases([other], release_key, None), None)
    assert refused.value.check == "measurement", refused.value

    tampered = json.loads(ours)
    tampered["manifest"]["commit"] = "0" * 40
    with pytest.raises(TeeRiskError.Untrusted) as refused:
        dev.require_releases([json.dumps(tampered)], release_key, None)
    assert refused.value.check == "release_copy", refused.value

    stranger = Credential("stranger", "11" * 32).public_key_pem()
    with pytest.raises(TeeRiskError.Untrusted) as refused:
        dev.require_releases([ours], stranger, None)
    assert refused.value.check == "release_key", refused.value

    log = tmp_path / "releases.log"
    done = subprocess.run(
        [BIN, "release", "append", "--manifest", str(tmp_path / "other.json"),
         "--release-key", str(ROOT / "release" / "test-key.pub.pem"), "--log", str(log)],
        capture_output=True, text=True, env=clean_env(), timeout=60,
    )
    assert done.returncode == 0, done.stderr
    with pytest.raises(TeeRiskError.Untrusted) as refused:
        dev.require_releases([ours], release_key, log.read_text())
    assert refused.value.check == "release_log", refused.value
