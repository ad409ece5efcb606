"""Issue 26, 6: Redis bounded in memory (a full one is a 503, not a 500), every client with a
socket timeout, and no key written without a TTL on the rare paths (a vanished job, a release).

Fast tier: the app in-process over real embedded Redis servers (one of its own when full).
"""

import contextlib
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from core.config import get_settings
from core.connections import get_job_store, get_quotas, get_redis, get_sweep_state
from core.quotas import queued_key
from core.redis_owner import listener_uids
from core.webhooks import DUE, MSG_PREFIX, Outbox
from devstack.embedded_redis import EmbeddedRedis, free_port
from tests.helpers import png

IMAGE = png(np.zeros((28, 28), np.uint8))


@pytest.fixture
def small_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path / "redis", persist=False, maxmemory="4mb")
    server.start()
    yield server
    server.stop()


def _fill(client: redis.Redis) -> None:
    """Fill Redis to 1 MB over its maxmemory: a write is checked before it runs, so one small
    command that allocates all of it (SETRANGE far into a new string) gets in. From then on Redis
    refuses every write."""
    memory = client.info("memory")
    client.setrange("filler", memory["maxmemory"] - memory["used_memory"] + 1_000_000, "x")
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        client.set("one-more", 1)


def test_the_embedded_redis_is_bounded_and_refuses_writes_when_full(redis_client: redis.Redis) -> None:
    memory = redis_client.info("memory")
    assert memory["maxmemory"] > 0 and memory["maxmemory_policy"] == "noeviction"


def test_a_full_redis_is_a_503_with_retry_after_not_a_500(
    small_redis: EmbeddedRedis, make_client: Callable[..., TestClient]
) -> None:
    client = make_client(REDIS_URL=small_redis.url)
    submitted = client.post("/jobs", files=[("files", ("a.png", IMAGE))])
    assert submitted.status_code == 202, submitted.text
    _fill(redis.Redis.from_url(small_redis.url))
    for answer in (
        client.post("/jobs", files=[("files", ("a.png", IMAGE))]),  # refused in api/gate.py
        client.post("/predict", files=[("file", ("a.png", IMAGE))]),
        client.delete(f"/jobs/{submitted.json()['id']}"),  # refused in a route's script
    ):
        assert answer.status_code == 503, answer.text
        assert answer.headers["Retry-After"] == "5"
        assert answer.json()["title"] == "Service unavailable"
    assert client.get(f"/jobs/{submitted.json()['id']}").status_code == 200  # reads still work


def test_every_request_client_has_a_socket_timeout(make_client: Callable[..., TestClient]) -> None:
    make_client(REDIS_SOCKET_TIMEOUT_SECONDS="7")
    kwargs = get_redis().connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == 7 and kwargs["socket_connect_timeout"] == 7


def test_writes_to_a_vanished_job_create_no_key(
    make_client: Callable[..., TestClient], redis_client: redis.Redis
) -> None:
    """JobStore.fail and SweepState.mark_swept on a job that expired mid-sweep recreated its hash without a
    TTL nor status: GET and listings then answered 500."""
    make_client()
    store, sweep = get_job_store(), get_sweep_state()
    store.fail("0" * 32, "lost")
    assert sweep.mark_swept("1" * 32) == 0
    assert redis_client.keys("digitq:job:*") == []
    store.create("2" * 32, ["a.png"])
    assert sweep.mark_swept("2" * 32) == 1 and sweep.mark_swept("2" * 32) == 2
    store.fail("2" * 32, "lost")
    assert store.get("2" * 32).error == "lost"  # type: ignore[union-attr]
    assert redis_client.ttl("digitq:job:" + "2" * 32) > 0


def test_a_release_never_goes_below_zero_nor_lives_without_a_ttl(
    make_client: Callable[..., TestClient], redis_client: redis.Redis
) -> None:
    """Quotas.release DECRBY of an expired count left a negative count for ever: extra quota."""
    make_client()
    quotas = get_quotas()
    quotas.release("t1", 5)  # nothing reserved (the count expired meanwhile)
    assert redis_client.get(queued_key("t1")) is None
    quotas.admit("t1", 10)
    quotas.release("t1", 4)
    assert quotas.queued("t1") == 6 and redis_client.ttl(queued_key("t1")) > 0
    quotas.release("t1", 9)
    assert redis_client.get(queued_key("t1")) is None


def test_the_outbox_never_recreates_an_expired_event(
    make_client: Callable[..., TestClient], redis_client: redis.Redis
) -> None:
    make_client()
    outbox = Outbox(get_redis(), get_settings())
    outbox.keep_body("gone", '{"type": "job.succeeded"}')
    outbox.retry_at("gone", 1e12)
    assert redis_client.exists(MSG_PREFIX + "gone") == 0
    assert redis_client.zscore(DUE, "gone") is None
    assert outbox.enqueue("ev1", "0" * 32, "job.succeeded")
    outbox.keep_body("ev1", "{}")
    outbox.retry_at("ev1", 1e12)
    assert outbox.event("ev1")["body"] == "{}" and outbox.event("ev1")["attempts"] == "1"
    assert redis_client.ttl(MSG_PREFIX + "ev1") > 0 and redis_client.ttl(DUE) > 0


def test_a_client_refuses_a_loopback_redis_another_user_listens_on(
    make_client: Callable[..., TestClient], redis_url: str
) -> None:
    """A crashed embedded Redis restarts on its port after a backoff: another local user who
    listens there meanwhile collected the AUTH password of every reconnecting client."""
    port = redis.Redis.from_url(redis_url).connection_pool.connection_kwargs["port"]
    assert listener_uids(port) == {os.getuid()}
    client = make_client(REDIS_LISTENER_UID=str(os.getuid() + 1))  # as if the port were another's
    answer = client.get("/jobs")
    assert answer.status_code == 503, answer.text
    with pytest.raises(redis.ConnectionError, match="not sending it the password"):
        get_redis().ping()
    # The broker's connections are kombu's own (public APIs only: no connection class of ours),
    # so they do not check: SECURITY.md says so (the fix is a unix socket for the embedded Redis).
    make_client(REDIS_LISTENER_UID=str(os.getuid()))
    assert get_redis().ping()


def _listen_as_nobody(port: int) -> tuple[int, int]:
    """A forked child that becomes `nobody`, listens on `port`, and writes to a pipe "ready", then
    all one connection sent it. (pid, the pipe's read end)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no pytest, no exceptions escaping
        try:
            os.close(read_end)
            os.setgid(65534)
            os.setuid(65534)
            server = socket.socket()
            server.bind(("127.0.0.1", port))
            server.listen()
            os.write(write_end, b"ready\n")
            server.settimeout(30)
            connection, _ = server.accept()
            connection.settimeout(2)
            with contextlib.suppress(OSError):
                while chunk := connection.recv(4096):
                    os.write(write_end, chunk)
        finally:
            os._exit(0)
    os.close(write_end)
    return pid, read_end


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to listen as another user")
def test_the_password_never_reaches_another_users_listener(make_client: Callable[..., TestClient]) -> None:
    """The attack itself: `nobody` listens on the port; a client connects, and sends nothing."""
    port = free_port()
    pid, pipe = _listen_as_nobody(port)
    try:
        with os.fdopen(pipe, "rb") as heard:
            assert heard.readline() == b"ready\n"
            make_client(REDIS_URL=f"redis://:hunter2-password@127.0.0.1:{port}/0", REDIS_LISTENER_UID="0")
            with pytest.raises(redis.ConnectionError, match="not sending it the password"):
                get_redis().ping()
            get_redis().connection_pool.disconnect()
            received = heard.read()
        assert b"hunter2" not in received, received
    finally:
        os.waitpid(pid, 0)
