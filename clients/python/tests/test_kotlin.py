"""The Kotlin bindings (generated from the same Rust library as this package) against the
same real server: scripts/bindings.sh compiles them with clients/kotlin/Smoke.kt into
target/bindings/kotlin-smoke.jar; `make python-test` passes its path. Without it (no JDK or
JNA here) the test is skipped, saying so."""

import json
import os
import pathlib
import subprocess

import pytest

from conftest import ROOT, clean_env
from tee_risk_client import TeeRiskClient

JAR = os.environ.get("TEE_RISK_KOTLIN_JAR")


def test_kotlin_client_against_the_server(server):
    if not JAR:
        # CI sets TEE_RISK_REQUIRE_KOTLIN: there a skip would hide a broken toolchain.
        assert not os.environ.get("TEE_RISK_REQUIRE_KOTLIN"), "the Kotlin bindings were not compiled"
        pytest.skip("TEE_RISK_KOTLIN_JAR unset: the Kotlin bindings were not compiled (scripts/bindings.sh)")
    jar = pathlib.Path(JAR)
    done = subprocess.run(
        ["java", f"-Djna.library.path={jar.parent}", "-cp", f"{jar}:/usr/share/java/jna.jar", "SmokeKt",
         server.url, server.dev_policy, server.production_policy, server.client_key,
         str(ROOT / "samples" / "alice-enrol.json"), str(ROOT / "samples" / "alice-probe.json")],
        capture_output=True, text=True, env=clean_env(), timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    attested, enrolled, identified, assessed, erased, refused = lines
    assert attested["attested"] == "sim"
    # The same identity as this package sees, pinned from the file the server wrote.
    assert attested["identity_kid"] == TeeRiskClient.pinned(server.url, server.identity_pem, None).identity_kid()
    assert enrolled == {"outcome": "enrolled", "templates": 1}, enrolled
    assert assessed["decision"] == "allow", assessed
    assert identified["decision"] == "match" and identified["best"] == "kotlin-user", identified
    assert erased["templates"] == 1, erased
    assert refused == {"production_policy": "refused", "check": "tee_kind"}
