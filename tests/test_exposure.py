"""Issue 8: nothing answers beyond loopback without a key, and /admin needs a key of its own.

Fast tier (the real app over a real Redis, requests from a chosen client address) for the rules;
real uvicorn processes for how the server is started (`--host 0.0.0.0`, API_HOST).
"""

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import pytest
from fastapi.testclient import TestClient

from core.config import PROJECT_ROOT
from devstack.embedded_redis import free_port
from devstack.stack import Stack, StackError
from tests.helpers import png, wait_until

REMOTE = "192.0.2.7"  # TEST-NET-1: some other machine
ADMIN, CLIENT = "admin-key-of-the-operators", "client-key-1"


def submit(client: TestClient, digits, **headers: str) -> httpx.Response:
    return client.post("/jobs", files=[("files", ("a.png", png(digits[0][0])))], headers=headers)


def test_an_open_api_answers_loopback_clients_only(make_client: Callable[..., TestClient], digits) -> None:
    remote = make_client(client=REMOTE)
    for response in (submit(remote, digits), remote.get("/jobs"), remote.get(f"/jobs/{'a' * 32}")):
        assert response.status_code == 403, response.text
        assert "API_KEYS" in response.json()["detail"] and "ALLOW_OPEN_API" in response.json()["detail"]
    assert remote.get("/health").status_code == 200  # liveness and readiness stay unauthenticated
    for loopback in ("127.0.0.1", "::1", "127.8.9.10"):
        assert submit(make_client(client=loopback), digits).status_code == 202, loopback


def test_an_open_api_refuses_other_sites_pages(make_client: Callable[..., TestClient], digits) -> None:
    """A page elsewhere, open in a local browser, can post a form to 127.0.0.1 (no preflight)."""
    client = make_client()
    forged = submit(client, digits, **{"Sec-Fetch-Site": "cross-site"})
    assert forged.status_code == 403 and "other sites" in forged.json()["detail"]
    assert submit(client, digits, **{"Sec-Fetch-Site": "same-origin"}).status_code == 202  # the page at /


def test_allow_open_api_or_keys_serve_other_machines(make_client: Callable[..., TestClient], digits) -> None:
    assert submit(make_client(client=REMOTE, ALLOW_OPEN_API="true"), digits).status_code == 202
    keyed = make_client(client=REMOTE, API_KEYS=CLIENT)
    assert submit(keyed, digits).status_code == 401
    assert submit(keyed, digits, **{"X-API-Key": CLIENT}).status_code == 202


@pytest.mark.parametrize(
    ("env", "key", "status", "says"),
    [
        ({}, None, 403, "ADMIN_API_KEYS"),  # disabled, loopback included
        ({"API_KEYS": CLIENT}, CLIENT, 403, "ADMIN_API_KEYS"),
        ({"API_KEYS": CLIENT, "ADMIN_API_KEYS": ADMIN}, None, 401, "API key"),
        ({"API_KEYS": CLIENT, "ADMIN_API_KEYS": ADMIN}, "wrong", 401, "API key"),
        ({"API_KEYS": CLIENT, "ADMIN_API_KEYS": ADMIN}, CLIENT, 403, "client API key cannot use /admin"),
        ({"ADMIN_API_KEYS": ADMIN}, None, 401, "API key"),  # open job routes, still not /admin
        ({"API_KEYS": CLIENT, "ADMIN_API_KEYS": ADMIN}, ADMIN, 409, "no live workers"),  # let through
    ],
)
def test_admin_needs_an_admin_key(
    make_client: Callable[..., TestClient], env: dict, key: str | None, status: int, says: str
) -> None:
    client = make_client(**env)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = client.post("/admin/reload", json={"version": "v2"}, headers=headers)
    assert response.status_code == status, response.text
    assert says in response.json()["detail"]
    assert ADMIN not in response.text


def test_an_admin_key_is_not_a_client_key(make_client: Callable[..., TestClient], digits) -> None:
    client = make_client(client=REMOTE, API_KEYS=CLIENT, ADMIN_API_KEYS=ADMIN)
    assert submit(client, digits, **{"X-API-Key": ADMIN}).status_code == 401


def own_address() -> str:
    """This machine's address on its default route: not loopback, but reachable from here."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("10.255.255.255", 1))  # UDP: nothing is sent
        address = probe.getsockname()[0]
    assert not address.startswith("127."), "the test needs a non-loopback interface"
    return address


@contextmanager
def uvicorn(redis_url: str, host: str, **env: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "api.main:app", "--host", host, "--port", str(port)]
    environ = {k: v for k, v in os.environ.items() if k not in ("API_KEYS", "ALLOW_OPEN_API", "API_HOST")}
    environ.update(REDIS_URL=redis_url, LOG_LEVEL="WARNING", **env)
    process = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=environ, stderr=subprocess.PIPE, text=True)
    try:
        yield process, port
    finally:
        process.terminate()
        process.wait(30)


@pytest.mark.stack
def test_uvicorn_on_every_interface_serves_an_open_api_to_loopback_only(redis_url: str, digits) -> None:
    with uvicorn(redis_url, "0.0.0.0") as (_, port):
        local = f"http://127.0.0.1:{port}"
        wait_until(lambda: _answers(f"{local}/health"), timeout=60, what="uvicorn")
        files = [("files", ("a.png", png(digits[0][0])))]
        outside = httpx.post(f"http://{own_address()}:{port}/jobs", files=files, timeout=30)
        assert outside.status_code == 403 and "API_KEYS" in outside.json()["detail"], outside.text
        assert httpx.post(f"{local}/jobs", files=files, timeout=30).status_code == 202


@pytest.mark.stack
@pytest.mark.parametrize(("env", "starts"), [({}, False), ({"ALLOW_OPEN_API": "true"}, True)])
def test_the_api_refuses_to_start_open_on_a_public_api_host(redis_url: str, env: dict, starts: bool) -> None:
    """The container's command listens on API_HOST=0.0.0.0: without API_KEYS it must not start."""
    with uvicorn(redis_url, "127.0.0.1", API_HOST="0.0.0.0", **env) as (process, port):
        if starts:
            wait_until(lambda: _answers(f"http://127.0.0.1:{port}/health"), timeout=60, what="uvicorn")
            return
        assert process.wait(60) == 3  # uvicorn: application startup failed
        assert process.stderr is not None
        assert "refusing to serve the API on 0.0.0.0 with API_KEYS empty" in process.stderr.read()


def test_make_run_refuses_a_public_api_host_without_keys(tmp_path) -> None:
    stack = Stack.from_env({"DATA_DIR": str(tmp_path), "API_HOST": "0.0.0.0", "API_KEYS": ""})
    try:
        with pytest.raises(StackError, match="ALLOW_OPEN_API"):
            stack.start()
    finally:
        stack.stop()
    assert not stack.processes and stack.redis is None  # refused before starting anything


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False
