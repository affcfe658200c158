#!/usr/bin/env python3
"""`cargo test` with its test binaries run side by side: builds them with `cargo test --no-run`
and the cargo arguments given here (default `--all-targets`), then runs TEST_JOBS (default 3)
at a time.

Why: most of the suite's time is spent waiting (servers starting, a key expiring, fsyncs,
PostgreSQL), and `cargo test` runs its binaries one after the other. Each binary still keeps
its one server or database cluster (tests within a binary share it, as under `cargo test`).

Each binary's output is printed whole when it ends, with its wall time; a binary that runs
longer than TEST_TIMEOUT seconds (default 900) is killed and counts as failed. Exit status 1
if any binary failed (all run, as with `--no-fail-fast`). Times are kept in
target/test-times.json so that the next run starts the longest first.
"""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TIMES = ROOT / "target" / "test-times.json"
# Before any recorded run: the binaries known to take longest (seconds on 2 cores), so that
# the wait for a key's expiry or a cluster overlaps the many short ones.
HINTS = {f"tests/{name}.rs": seconds for name, seconds in [
    ("error_table", 70), ("postgres", 55), ("cluster", 50), ("rotation", 48),
    ("calibration", 36), ("evaluation", 33), ("startup", 25), ("custody", 23),
    ("server", 21)]}


def build(cargo_args):
    """Builds the test targets; returns [(label, executable)] of the binaries to run."""
    command = ["cargo", "test", "--no-run", "--message-format=json-render-diagnostics",
               *cargo_args]
    print("== " + " ".join(command), flush=True)
    out = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if out.returncode != 0:
        sys.exit(out.returncode)
    binaries = []
    for line in out.stdout.splitlines():
        message = json.loads(line)
        if message.get("reason") != "compiler-artifact" or not message.get("executable"):
            continue
        if not message["profile"]["test"]:
            continue
        target = message["target"]
        kind = target["kind"][0]
        # tests/identify.rs and benches/identify.rs share a name: the label tells them apart.
        folder = {"test": "tests", "bench": "benches"}.get(kind)
        label = f"{folder}/{target['name']}.rs" if folder else f"{kind} {target['name']}"
        binaries.append((label, message["executable"]))
    return binaries


def main():
    jobs = int(os.environ.get("TEST_JOBS", "3"))
    timeout = float(os.environ.get("TEST_TIMEOUT", "900"))
    binaries = build(sys.argv[1:] or ["--all-targets"])
    try:
        past = json.loads(TIMES.read_text())
    except (OSError, ValueError):
        past = {}
    queue = sorted(binaries, key=lambda b: -past.get(b[0], HINTS.get(b[0], 5)))
    print(f"== running {len(queue)} test binaries, {jobs} at a time", flush=True)

    lock = threading.Lock()
    failed, times = [], {}
    # What cargo sets for a test it runs (the tests read files relative to the package).
    env = dict(os.environ, CARGO_MANIFEST_DIR=str(ROOT), CARGO_PKG_NAME="tee-risk")

    def worker():
        while True:
            with lock:
                if not queue:
                    return
                label, executable = queue.pop(0)
            start = time.monotonic()
            try:
                run = subprocess.run([executable], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, timeout=timeout)
                output, code = run.stdout, run.returncode
            except subprocess.TimeoutExpired as expired:
                output = (expired.stdout or b"") + f"\nkilled after {timeout:.0f} s\n".encode()
                code = "timeout"
            took = time.monotonic() - start
            with lock:
                times[label] = round(took, 1)
                status = "ok" if code == 0 else f"FAILED ({code})"
                print(f"== {label}: {status} in {took:.1f} s", flush=True)
                sys.stdout.buffer.write(output)
                sys.stdout.flush()
                if code != 0:
                    failed.append(label)

    started = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    TIMES.write_text(json.dumps(dict(past, **times), indent=1, sort_keys=True))
    total = sum(times.values())
    print(f"== test binaries: {len(times)} in {time.monotonic() - started:.0f} s "
          f"({total:.0f} s one after the other)", flush=True)
    if failed:
        print("== failed: " + ", ".join(failed), flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
