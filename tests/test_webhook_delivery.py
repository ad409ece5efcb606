"""Fast tier (real Redis, real HTTP receivers on 127.0.0.1, the worker's own sender in this
process, no Celery workers): a receiver cannot hold or flood the sender (issue 26, item 3).

Each test attacks one bound: a receiver that trickles its answer (deadline), one that answers
64 MiB (size cap), a slow receiver against a healthy one (per-receiver cap), a slow attempt
against the lease (never sent twice at once), and a receiver whose answer is not HTTP (the job
shows an error class, not the remote's bytes). The full-stack versions are in test_webhooks.py.
"""

import os
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient

from core.config import get_settings
from core.connections import get_job_store
from core.queue import get_celery
from core.webhook_receivers import ReceiverSlots, receiver_key
from core.webhooks import DUE, Outbox, lease_seconds
from devstack.embedded_redis import free_port
from tests.helpers import png, wait_until
from tests.webhook_receiver import HUGE_BYTES, Receiver
from worker import webhook_http
from worker.models import FleetMember
from worker.scheduler import Scheduler, duties
from worker.webhooks import Deliverer, Sender

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(SECRET)
    yield r
    r.close()


@pytest.fixture
def one_png(digits) -> bytes:
    return png(digits[0][0])


def hooks(make_client, **env: str) -> TestClient:
    return make_client(WEBHOOK_SECRET=SECRET, WEBHOOK_ALLOW_PRIVATE="true", **env)


def cancelled_event(client: TestClient, image: bytes, url: str) -> tuple[str, str]:
    """A job with a webhook, cancelled: its `job.cancelled` event is queued. (job id, event id)"""
    response = client.post("/jobs", files=[("files", ("a.png", image))], data={"webhook": url})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    client.delete(f"/jobs/{job_id}")
    return job_id, f"{job_id}.cancelled"


def webhook_duties(deliverer: Deliverer) -> Scheduler:
    """The worker's webhook duties (claims, lease renewals: worker/scheduler.py), alone."""
    settings = get_settings()
    table = duties(FleetMember("test-worker", settings), deliverer, get_celery(), settings)
    return Scheduler([duty for duty in table if duty.name.startswith("webhook-")])


def webhook_state(client: TestClient, job_id: str) -> dict:
    return client.get(f"/jobs/{job_id}").json()["webhook"]


def test_a_trickling_receiver_is_cut_at_the_deadline(make_client, receiver: Receiver, one_png: bytes) -> None:
    """A byte every 0.1 s: every read gets something in time, so per-read timeouts never fire."""
    client = hooks(make_client, WEBHOOK_TIMEOUT_SECONDS="1")
    receiver.trickle["/slow"] = 20
    job_id, event_id = cancelled_event(client, one_png, receiver.url + "/slow")
    Sender(get_job_store(), get_settings()).deliver(event_id)
    [call] = wait_until(lambda: [c for c in receiver.to("/slow") if c["ended"]], 10, what="the cut")
    assert 0 < call["sent"] < 20 * 10  # cut mid-trickle, long before its 20 s
    state = webhook_state(client, job_id)
    assert not state["delivered"] and state["last_status"] is None and state["next_attempt_at"]
    assert state["last_error"].startswith("timeout:")


def test_a_huge_answer_is_cut_after_a_few_kib(make_client, receiver: Receiver, one_png: bytes) -> None:
    client = hooks(make_client)
    receiver.huge.add("/huge")
    job_id, event_id = cancelled_event(client, one_png, receiver.url + "/huge")
    sender = Sender(get_job_store(), get_settings())
    tracemalloc.start()
    try:
        sender.deliver(event_id)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    [call] = wait_until(lambda: [c for c in receiver.to("/huge") if c["ended"]], 30, what="the cut")
    assert call["sent"] < HUGE_BYTES // 4, call["sent"]  # the rest never left the receiver
    assert peak < 4 * 2**20, peak  # the sender read a few KiB of it, not 64 MiB
    state = webhook_state(client, job_id)
    assert state["delivered"] and state["last_status"] == 200 and state["attempts"] == 1


def test_a_slow_receiver_does_not_hold_every_sender(make_client, one_png: bytes) -> None:
    """Eight events to a receiver that trickles for 20 s, then one to a healthy receiver: it is
    delivered while the slow one still holds its (at most WEBHOOK_MAX_PER_RECEIVER) senders."""
    client = hooks(make_client, WEBHOOK_TIMEOUT_SECONDS="30")
    slow, healthy = Receiver(SECRET), Receiver(SECRET)
    slow.trickle["/slow"] = 20
    deliverer = Deliverer(get_job_store(), get_settings())
    scheduler = webhook_duties(deliverer)
    try:
        for _ in range(8):
            cancelled_event(client, one_png, slow.url + "/slow")
        scheduler.start()
        wait_until(lambda: len(slow.to("/slow")) >= 2, 10, what="the slow receiver's first calls")
        job_id, _ = cancelled_event(client, one_png, healthy.url + "/ok")
        [call] = wait_until(lambda: healthy.to("/ok"), 10, what="the healthy receiver's event")
        assert call["verified"] and call["id"] == f"{job_id}.cancelled"
        assert not any(c["ended"] for c in slow.to("/slow"))  # the slow ones were still held
        assert slow.peak["/slow"] == get_settings().webhook_max_per_receiver == 2
    finally:
        slow.close()  # ends the trickles
        healthy.close()
        scheduler.stop()
        deliverer.stop(wait=True)


def test_a_slow_attempt_is_never_sent_twice_at_once(make_client, receiver: Receiver, one_png: bytes) -> None:
    """Before the deadline, a 20 s trickle outlived the 7 s lease and another sender claimed the
    event meanwhile. Now each attempt ends at 1 s and the next comes after it, same id."""
    client = hooks(make_client, WEBHOOK_TIMEOUT_SECONDS="1", WEBHOOK_RETRY_SECONDS="1,1,1")
    receiver.trickle["/slow"] = 20
    job_id, event_id = cancelled_event(client, one_png, receiver.url + "/slow")
    deliverer = Deliverer(get_job_store(), get_settings())
    scheduler = webhook_duties(deliverer)
    try:
        scheduler.start()
        ended = lambda: [c for c in receiver.to("/slow") if c["ended"]]  # noqa: E731
        wait_until(lambda: len(ended()) >= 2, 40, what="two attempts")
    finally:
        receiver.close()
        scheduler.stop()
        deliverer.stop(wait=True)
    assert receiver.peak["/slow"] == 1
    assert {c["id"] for c in receiver.to("/slow")} == {event_id}
    assert webhook_state(client, job_id)["last_error"].startswith("timeout:")


def test_leases_are_renewed_while_held(make_client, redis_client: redis.Redis) -> None:
    hooks(make_client)
    settings = get_settings()
    outbox, lease = Outbox(redis_client, settings), lease_seconds(settings)
    now = time.time()
    outbox.enqueue("e1", "job", "job.cancelled", now=now - 1)
    assert outbox.claim(5, now) == ["e1"]
    assert outbox.renew({"e1": now + lease}, now + 2 * lease) == ["e1"]
    assert outbox.claim(5, now + lease + 1) == []  # its first lease has ended: renewed, not due
    assert outbox.renew({"e1": now + lease}, now + 3 * lease) == []  # a lease it no longer holds
    outbox.finish("e1")
    assert outbox.renew({"e1": now + 2 * lease}, now + 3 * lease) == []  # settled: never again
    assert redis_client.zscore(DUE, "e1") is None


def test_receiver_slots_are_capped_and_expire(make_client, redis_client: redis.Redis) -> None:
    hooks(make_client, WEBHOOK_MAX_PER_RECEIVER="2")
    slots, key = ReceiverSlots(redis_client, get_settings()), receiver_key("hooks.example", 443)
    assert slots.take(key, "a") and slots.take(key, "b")
    assert not slots.take(key, "c")  # at the cap, on every node (the count is in Redis)
    assert slots.take(key, "a")  # one it holds already (a redelivery)
    slots.give_back(key, "a")
    assert slots.take(key, "c")
    assert 0 < redis_client.ttl(key) <= 2 * lease_seconds(get_settings()) + 1
    assert receiver_key("HOOKS.example", 443) == key != receiver_key("hooks.example", 8443)


def test_the_job_shows_an_error_class_not_the_remote_answer(make_client, one_png: bytes) -> None:
    """A service that is not HTTP (here an SSH banner): its bytes must not reach the job, or a
    webhook becomes a port scanner that reads banners."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def banner() -> None:
        for _ in range(2):
            conn, _ = server.accept()
            with conn:
                conn.sendall(b"SSH-2.0-OpenSSH_9.2p1 secret-build-42\r\n")
                conn.recv(65536)

    threading.Thread(target=banner, daemon=True).start()
    try:
        client = hooks(make_client)
        job_id, event_id = cancelled_event(client, one_png, f"http://127.0.0.1:{port}/")
        Sender(get_job_store(), get_settings()).deliver(event_id)
        state = webhook_state(client, job_id)
        assert state["last_error"].split(":")[0] in ("protocol_error", "connection_lost"), state
        assert "SSH" not in state["last_error"] and "secret-build" not in state["last_error"]
    finally:
        server.close()


def test_the_connection_goes_to_the_checked_address(make_client, receiver: Receiver) -> None:
    """The name is resolved once, by the check; the connection goes to that address whatever
    the name would resolve to now (here: nothing), and the Host header names the name."""
    hooks(make_client)
    port = int(receiver.url.rsplit(":", 1)[1])
    url = f"http://rebinding.invalid:{port}/pinned"
    headers = {"webhook-id": "e1", "webhook-timestamp": "0", "webhook-signature": "v1,x"}
    answer = webhook_http.send(url, ("127.0.0.1",), b"{}", headers, time.monotonic() + 5)
    assert answer.status == 200 and not answer.error
    [call] = receiver.to("/pinned")
    assert call["headers"]["host"] == f"rebinding.invalid:{port}"


SEND_UNDER_SENTRY = """
import sys
import sentry_sdk
from core import sentry
from core.config import get_settings
from core.connections import get_job_store
from worker.webhooks import Sender

assert sentry.init(get_settings(), "worker")
# as inside a Celery task, whose integration opens a transaction: a trace is active
with sentry_sdk.start_transaction(op="queue.task.celery", name="digitq.process_chunk"):
    Sender(get_job_store(), get_settings()).deliver(sys.argv[1])
"""


def test_receivers_get_no_sentry_trace_headers(
    make_client, receiver: Receiver, one_png: bytes, redis_url: str, tmp_path
) -> None:
    """With SENTRY_DSN set, sentry-sdk adds `sentry-trace` and `baggage` (trace id, release,
    environment, the DSN's public key) to outgoing requests while a trace is active, unless
    `trace_propagation_targets` says where. A client's receiver must get none. The sender runs
    in a process of its own (Sentry is process-wide); its DSN is a closed port on this machine,
    named `localhost` because sentry-sdk never adds headers to URLs containing its DSN's host."""
    client = hooks(make_client)
    _, event_id = cancelled_event(client, one_png, receiver.url + "/traced")
    env = os.environ | {
        "REDIS_URL": redis_url,
        "DATA_DIR": str(tmp_path),
        "WEBHOOK_SECRET": SECRET,
        "WEBHOOK_ALLOW_PRIVATE": "true",
        "SENTRY_DSN": f"http://public@localhost:{free_port()}/1",
        "LOG_LEVEL": "WARNING",
    }
    done = subprocess.run([sys.executable, "-c", SEND_UNDER_SENTRY, event_id], env=env, timeout=60)
    assert done.returncode == 0
    [call] = receiver.to("/traced")
    assert call["verified"]
    assert not {"sentry-trace", "baggage", "traceparent"} & set(call["headers"]), call["headers"]
