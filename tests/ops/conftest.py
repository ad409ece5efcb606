"""Fixtures for the operations tests: moto's S3 server over HTTP, a Sentry envelope collector."""

import logging
import os
import subprocess
import sys
from collections.abc import Iterator

import boto3
import pytest
from moto.server import ThreadedMotoServer

from core.config import PROJECT_ROOT
from devstack.embedded_redis import free_port
from tests.ops.ops_helpers import AWS_ENV, BUCKET, REGISTRY, SIGNING_KEY, Collector, local_model_dir


@pytest.fixture(scope="session")
def aws_env() -> Iterator[dict[str, str]]:
    saved = {k: os.environ.get(k) for k in (*AWS_ENV, "AWS_ENDPOINT_URL")}
    os.environ.update(AWS_ENV)
    yield AWS_ENV
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


class _Requests(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


_requests = _Requests()


@pytest.fixture(scope="session")
def s3_requests() -> list[str]:
    """Every HTTP request line moto's server has answered (it runs in this process)."""
    return _requests.lines


@pytest.fixture(scope="session")
def s3_server(aws_env: dict[str, str]) -> Iterator[str]:
    """moto's S3 on a free port; its state is per test process, shared by every server instance."""
    port = free_port()
    werkzeug = logging.getLogger("werkzeug")
    werkzeug.setLevel(logging.INFO)
    werkzeug.propagate = False  # no request lines in the test output...
    werkzeug.addHandler(_requests)  # ...but the tests can see them
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    yield endpoint
    server.stop()


@pytest.fixture(scope="session")
def s3(s3_server: str):
    return boto3.client("s3", endpoint_url=s3_server)


@pytest.fixture(scope="session")
def pushed(s3_server: str) -> str:
    """The local model pushed (signed) to the registry as latest; its version."""
    env = {**os.environ, "MODEL_REGISTRY": REGISTRY, "MODEL_SIGNING_KEY": SIGNING_KEY}
    out = subprocess.run(
        [sys.executable, "-m", "ml", "push", str(PROJECT_ROOT / "models")],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "pushed" in out.stdout
    return local_model_dir().name


@pytest.fixture(scope="session")
def sentry_collector() -> Iterator[Collector]:
    collector = Collector()
    yield collector
    collector.close()
