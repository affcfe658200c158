#!/usr/bin/env python3
"""After `make bench-smoke` (or `make bench`): every row docs/PERFORMANCE.md reports exists in
the reports the benches wrote, with a number in it. The figures are not judged (a smoke run's
are meaningless); a missing row means a bench stopped measuring what the document quotes.

Reports read: target/load-report.json, target/replicas-report.json,
target/reference-report.json, target/identify-report.json, target/constant-time-report.json,
and criterion's rows under target/criterion/<row>/new/estimates.json.
"""

import json
import sys
from pathlib import Path

TARGET = Path(__file__).resolve().parent.parent / "target"

# The primitives rows the document quotes: the one-off and table verifiers beside the
# RustCrypto one they replaced, the floor, and the in-process request.
CRITERION_ROWS = [
    "sm2_sign", "sm2_sign_rustcrypto", "sm2_verify", "sm2_verify_table", "sm2_verify_rustcrypto", "sm2_decrypt_16B", "sm2_decrypt_16B_rustcrypto",
    "crypto_floor_per_request", "crypto_floor_per_request_rustcrypto", "sm4_gcm_seal_4KiB", "sm4_gcm_seal_4KiB_sm4crate", "response_sign", "record_seal", "service_assess_with_flush",
]
# The stages of a request the load bench times (wall and CPU each).
STAGES = ["client_auth", "envelope_parse", "sm2_unwrap", "sm4_gcm_open", "payload_parse",
          "score", "store_write", "durable", "sign", "queue"]

problems = []


def number(value, where):
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        problems.append(f"{where}: {value!r} is not a number")


def need_number(document, path, where):
    """The number at `path` in `document` (a missing key or a non-number is a problem)."""
    value = dig(document, path, where)
    if value is not None:
        number(value, f"{where} {'.'.join(path)}")


def dig(document, path, where):
    value = document
    for key in path:
        if not isinstance(value, dict) or key not in value:
            problems.append(f"{where}: no {'.'.join(path)}")
            return None
        value = value[key]
    return value


def load(name):
    path = TARGET / name
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        problems.append(f"{path}: {error}")
        return None


def check_load():
    report = load("load-report.json")
    if report is None:
        return
    where = "load-report.json"
    for path in [("floor", "floor_us"), ("floor", "floor_vs_old_path"),
                 ("floor", "throughput_vs_floor"),
                 ("floor", "server_cpu_vs_floor"), ("durability", "durable_wall_us"),
                 ("durability", "fsync_us"), ("durability", "durable_vs_fsync"),
                 ("open_at_half_best", "rate"), ("open_at_half_best", "p99_ms")]:
        need_number(report, path, where)
    phases = report.get("phases", [])
    kinds = {phase.get("kind") for phase in phases}
    for kind in ("closed", "open"):
        if kind not in kinds:
            problems.append(f"{where}: no {kind}-loop phase")
    for phase in phases:
        name = f"{where} phase {phase.get('phase')}"
        need_number(phase, ("latency_ms", "p99"), name)
        need_number(phase, ("server_cpu_us_per_request",), name)
        if phase.get("kind") == "closed":
            stages = phase.get("stage_mean_us", {})
            for stage in STAGES:
                if stage not in stages:
                    problems.append(f"{name}: no stage {stage}")


def check_replicas():
    report = load("replicas-report.json")
    if report is None:
        return
    where = "replicas-report.json"
    for key in ("postgres_over_sled", "tls_over_plain", "propagation_ms",
                "cpu_sled_over_postgres"):
        need_number(report, (key,), where)
    phases = {phase.get("setup"): phase for phase in report.get("phases", [])}
    for setup in ("sled, 1 process", "postgres, 1 replica", "postgres, 2 replicas",
                  "postgres, 1 replica, no TLS"):
        if setup not in phases:
            problems.append(f"{where}: no phase `{setup}`")
            continue
        for key in ("req_per_s", "p99_ms", "service_cpu_us_per_request",
                    "postgres_cpu_us_per_request", "client_cpu_us_per_request"):
            need_number(phases[setup], (key,), f"{where} `{setup}`")


def check_reference():
    report = load("reference-report.json")
    if report is None:
        return
    rows = report.get("rows", [])
    if not rows:
        problems.append("reference-report.json: no rows")
    for row in rows:
        need_number(row, ("ratio",), f"reference-report.json {row.get('operation')}")


def check_constant_time():
    report = load("constant-time-report.json")
    if report is None:
        return
    rows = {row.get("operation"): row for row in report.get("rows", [])}
    for operation in ("sm2_unwrap 1", "sm2_sign 1", "sm4_gcm", "control"):
        if operation not in rows:
            problems.append(f"constant-time-report.json: no row {operation}")
            continue
        need_number(rows[operation], ("max_abs_t",), f"constant-time-report.json {operation}")


def check_identify():
    report = load("identify-report.json")
    if report is None:
        return
    if not report.get("searches"):
        problems.append("identify-report.json: no searches")
    if not report.get("startup"):
        problems.append("identify-report.json: no startup")


def check_criterion():
    for row in CRITERION_ROWS:
        path = TARGET / "criterion" / row / "new" / "estimates.json"
        estimates = load(f"criterion/{row}/new/estimates.json") if path.exists() else None
        if estimates is None:
            if not path.exists():
                problems.append(f"criterion: no row {row}")
            continue
        need_number(estimates, ("mean", "point_estimate"), f"criterion {row}")


def main():
    check_load()
    check_constant_time()
    check_replicas()
    check_reference()
    check_identify()
    check_criterion()
    if problems:
        print("bench reports: rows missing:\n  " + "\n  ".join(problems))
        sys.exit(1)
    print("bench reports: every row docs/PERFORMANCE.md quotes is there")


if __name__ == "__main__":
    main()
