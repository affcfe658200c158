"""One real `tee-risk serve --dev` on loopback for the whole session (the binary named by
TEE_RISK_BIN, default target/debug/tee-risk), in a throw-away folder."""

import dataclasses
import json
import os
import pathlib
import socket
import subprocess
import time
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]
BIN = os.environ.get("TEE_RISK_BIN", str(ROOT / "target" / "debug" / "tee-risk"))


@dataclasses.dataclass
class Server:
    url: str
    data: pathlib.Path
    keys: pathlib.Path
    dev_policy: str
    production_policy: str
    folder: pathlib.Path

    @property
    def client_key(self) -> str:
        return str(self.data / "dev-client-key.hex")

    @property
    def identity_pem(self) -> str:
        return (self.keys / "identity.pub.pem").read_text()

    def cli(self, *args, check=True):
        """Runs `tee-risk client …` against this server; returns the finished process."""
        done = subprocess.run(
            [BIN, "client", *args],
            capture_output=True,
            text=True,
            env=clean_env(),
            cwd=self.folder,
            timeout=60,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"tee-risk client {args}: {done.returncode}\n{done.stderr}")
        return done


def clean_env():
    """The environment without anything that would reconfigure the service or the CLI."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("TEE_RISK_", "DB_MASTER"))}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tee-risk")
    data, keys = folder / "data", folder / "keys"
    url = f"http://127.0.0.1:{free_port()}"
    log = open(folder / "server.log", "wb")
    process = subprocess.Popen(
        [BIN, "serve", "--dev", "--listen", url.removeprefix("http://"),
         "--data-dir", str(data), "--keys-dir", str(keys)],
        stdout=log, stderr=subprocess.STDOUT, env=clean_env(), cwd=folder,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"tee-risk serve exited: {(folder / 'server.log').read_text()}")
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("tee-risk serve did not answer /healthz within 60 s")
            time.sleep(0.1)
        # The dev policy of config/, with the sim platform key this server wrote.
        dev_policy = folder / "policy.dev.toml"
        dev_policy.write_text(
            (ROOT / "config" / "attestation-policy.dev.toml")
            .read_text()
            .replace("../keys/sim-platform.pub.pem", "keys/sim-platform.pub.pem")
        )
        yield Server(
            url=url,
            data=data,
            keys=keys,
            dev_policy=str(dev_policy),
            production_policy=str(ROOT / "config" / "attestation-policy.toml"),
            folder=folder,
        )
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()


def sample(name: str):
    """A real dlib embedding shipped in samples/."""
    return json.loads((ROOT / "samples" / name).read_text())["features"]
