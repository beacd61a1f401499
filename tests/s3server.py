"""A real S3-compatible server for the tests: moto's standalone server in a process of its
own on a free loopback port, spoken to over HTTP like any remote.

MotoServer.start() may be called again after stop() (same port, empty state): the tests
that kill the server mid-upload use that.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

# moto accepts any key unless told to authenticate; these are what the tests give pgvault.
KEY_ID = "AKIAPGVAULTTESTKEY01"
SECRET = "pgvault-test-secret-key-0123456789abcdef"
REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MotoServer:
    def __init__(self, log_dir: Path, *, authenticate_after: int | None = None) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = log_dir / f"moto-{self.port}.log"
        # INITIAL_NO_AUTH_ACTION_COUNT: after that many requests moto checks credentials
        # against its IAM users (the wrong-credentials test).
        self.authenticate_after = authenticate_after
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET}
        if self.authenticate_after is not None:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(self.authenticate_after)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto exited: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(urllib.error.URLError, ConnectionError, OSError):
                urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=1).close()
                return
            time.sleep(0.1)
        raise RuntimeError("moto did not start in 30 s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)
        self.proc = None

    def client(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=KEY_ID,
            aws_secret_access_key=SECRET,
        )

    def env(self) -> dict[str, str]:
        """What pgvault's environment needs to reach it (credentials from the environment,
        as most users give them)."""
        return {
            "AWS_ACCESS_KEY_ID": KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_DEFAULT_REGION": REGION,
            # No ~/.aws of the machine's user leaks into a test.
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """One S3 server for the session; tests make buckets of their own names."""
    server = MotoServer(tmp_path_factory.mktemp("moto"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(s3_server: MotoServer, request: pytest.FixtureRequest) -> str:
    """A new empty bucket for one test."""
    name = (
        "t-" + format(abs(hash(request.node.nodeid)), "x")[:12] + f"-{time.monotonic_ns() % 10**6}"
    )
    s3_server.client().create_bucket(Bucket=name)
    return name
