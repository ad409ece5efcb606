"""Webhooks end to end: real workers send to a real HTTP receiver on 127.0.0.1 that checks every
signature with standardwebhooks' own verifier. Also JSONL and `status=failed` on a real job.

Hostile receivers (trickling, huge answers) and keys' own secrets are here too; their fast-tier
versions, and Sentry's trace headers, are in test_webhook_delivery.py and test_webhook_secrets.py."""

import csv
import io
import json
import signal
import time
from collections.abc import Iterator
from datetime import datetime

import httpx
import pytest
import redis

from devstack.stack import Stack
from tests.helpers import make_zip, png, running_stack, wait_for_job, wait_until
from tests.webhook_receiver import HUGE_BYTES, Receiver, verifies

pytestmark = pytest.mark.stack  # full stack: real workers (see tests/helpers.py)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {
        "WEBHOOK_ALLOW_PRIVATE": "true",  # the receiver is on 127.0.0.1
        "WEBHOOK_RETRY_SECONDS": "1,1,1",
        "WEBHOOK_TIMEOUT_SECONDS": "3",
        "WEBHOOK_PROGRESS_SECONDS": "1",
        "CHUNK_SIZE": "20",
    }
    with running_stack(tmp_path_factory.mktemp("webhooks"), **env) as s:
        yield s


@pytest.fixture(scope="module")
def api(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.api_url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def receiver(stack: Stack) -> Iterator[Receiver]:
    r = Receiver(stack.env["WEBHOOK_SECRET"])  # generated into DATA_DIR by the launcher
    yield r
    r.close()


@pytest.fixture(scope="module")
def image(digits) -> bytes:
    return png(digits[0][0])


def submit(api: httpx.Client, files: list[tuple[str, bytes]], **form: str) -> dict:
    response = api.post("/jobs", files=[("files", f) for f in files], data=form)
    assert response.status_code == 202, response.text
    return response.json()


def webhook_state(api: httpx.Client, job_id: str) -> dict:
    return api.get(f"/jobs/{job_id}").json()["webhook"]


def test_the_terminal_event_arrives_once_signed(api, receiver: Receiver, image: bytes) -> None:
    labels = {"batch": "b-1"}
    job = submit(api, [("a.png", image)], webhook=receiver.url + "/ok", metadata=json.dumps(labels))
    wait_for_job(api, job["id"])
    state = wait_until(lambda: (s := webhook_state(api, job["id"]))["delivered"] and s, what="delivery")
    assert state["attempts"] == 1 and state["last_status"] == 200 and state["next_attempt_at"] is None
    time.sleep(2)  # an absence: no second delivery of the same event
    [call] = receiver.to("/ok")
    assert call["verified"] and call["id"] == f"{job['id']}.succeeded"
    payload = call["payload"]
    assert payload["type"] == "job.succeeded" and payload["timestamp"].endswith("Z")
    data = payload["data"]
    assert data["id"] == job["id"] and data["status"] == "succeeded" and data["metadata"] == labels
    assert data["counts"]["done"] == 1 and data["links"]["results"] == f"/jobs/{job['id']}/results"


def test_a_failed_delivery_is_retried_with_the_same_id(api, receiver: Receiver, image: bytes) -> None:
    receiver.plan["/flaky"] = [(500, {}), (503, {"Retry-After": "3"})]  # then 200
    job = submit(api, [("a.png", image)], webhook=receiver.url + "/flaky")
    failing = wait_until(
        lambda: (s := webhook_state(api, job["id"]))["attempts"] >= 1 and s, what="an attempt"
    )
    assert not failing["delivered"] and failing["last_status"] in (500, 503)
    assert failing["next_attempt_at"]
    assert failing["last_error"].startswith("http_5xx: the receiver answered 50")
    state = wait_until(lambda: (s := webhook_state(api, job["id"]))["delivered"] and s, what="a redelivery")
    assert state["attempts"] == 3 and state["last_status"] == 200 and state["last_error"] is None
    calls = receiver.to("/flaky")
    assert len(calls) == 3 and all(c["verified"] for c in calls)
    assert {c["id"] for c in calls} == {f"{job['id']}.succeeded"}
    assert calls[2]["at"] - calls[1]["at"] >= 2.5  # Retry-After: 3 beats the 1 s schedule


@pytest.fixture
def hostile(stack: Stack) -> Iterator[Receiver]:
    """A receiver of its own: its slow calls must not use the shared receiver's slots."""
    r = Receiver(stack.env["WEBHOOK_SECRET"])
    yield r
    r.close()


def test_a_trickling_receiver_is_cut_and_never_sent_twice_at_once(
    api, hostile: Receiver, image: bytes
) -> None:
    """A byte every 0.1 s for 30 s: each attempt ends at WEBHOOK_TIMEOUT_SECONDS (3) and the
    next comes after it, with the same id. Before, the attempt outlived its 11 s lease and a
    second sender sent the event alongside."""
    hostile.trickle["/slow"] = 30
    job = submit(api, [("a.png", image)], webhook=hostile.url + "/slow")
    ended = lambda: [c for c in hostile.to("/slow") if c["ended"]]  # noqa: E731
    wait_until(lambda: len(ended()) >= 2, 60, what="two attempts")
    assert hostile.peak["/slow"] == 1
    assert {c["id"] for c in hostile.to("/slow")} == {f"{job['id']}.succeeded"}
    assert all(c["sent"] < 30 * 10 for c in ended())  # each cut mid-trickle
    assert webhook_state(api, job["id"])["last_error"].startswith("timeout:")


def test_a_huge_answer_is_cut_after_a_few_kib(api, hostile: Receiver, image: bytes) -> None:
    hostile.huge.add("/huge")
    job = submit(api, [("a.png", image)], webhook=hostile.url + "/huge")
    state = wait_until(lambda: (s := webhook_state(api, job["id"]))["delivered"] and s, what="delivery")
    assert state["last_status"] == 200 and state["attempts"] == 1
    [call] = wait_until(lambda: [c for c in hostile.to("/huge") if c["ended"]], what="the cut")
    assert call["sent"] < HUGE_BYTES // 4, call["sent"]  # the worker read a few KiB and hung up


def test_keys_events_are_signed_with_their_own_secrets(keyed_stack: Stack, image: bytes) -> None:
    """With API_KEYS: each key's events verify with the secret GET /webhook-secret gives that key,
    never with another key's nor with WEBHOOK_SECRET."""
    keyed = keyed_stack
    with httpx.Client(base_url=keyed.api_url, timeout=30) as http:
        receiver = Receiver(None)
        try:
            secrets, calls = {}, {}
            for key in ("key-a", "key-b"):
                auth = {"X-API-Key": key}
                secrets[key] = http.get("/webhook-secret", headers=auth).json()["secret"]
                files = [("files", ("a.png", image))]
                form = {"webhook": f"{receiver.url}/{key}"}
                sent = http.post("/jobs", files=files, data=form, headers=auth)
                assert sent.status_code == 202, sent.text
                [calls[key]] = wait_until(lambda k=key: receiver.to(f"/{k}"), 60, what=f"{key}'s event")
            for key, other in (("key-a", "key-b"), ("key-b", "key-a")):
                assert verifies(calls[key], secrets[key]) and not verifies(calls[key], secrets[other])
            assert not any(verifies(c, keyed.env["WEBHOOK_SECRET"]) for c in calls.values())
        finally:
            receiver.close()


def test_410_stops_retries(api, receiver: Receiver, image: bytes) -> None:
    receiver.plan["/gone"] = [(410, {})] * 10
    job = submit(api, [("a.png", image)], webhook=receiver.url + "/gone")
    state = wait_until(lambda: (s := webhook_state(api, job["id"]))["attempts"] and s, what="an attempt")
    assert state["last_status"] == 410 and state["next_attempt_at"] is None and not state["delivered"]
    time.sleep(3)  # an absence: the 1 s retry schedule would have called again by now
    assert len(receiver.to("/gone")) == 1
    assert webhook_state(api, job["id"])["attempts"] == 1


def test_progress_is_throttled(api, receiver: Receiver, digits) -> None:
    images, _ = digits
    archive = make_zip({f"{i:04d}.png": png(images[i % 500]) for i in range(4000)})  # 200 chunks
    events = "job.running,job.progress,job.succeeded"
    job = submit(api, [("d.zip", archive)], webhook=receiver.url + "/progress", webhook_events=events)
    wait_for_job(api, job["id"], timeout=180)
    wait_until(lambda: webhook_state(api, job["id"])["delivered"], what="the terminal event")
    calls = receiver.to("/progress")
    assert all(c["verified"] for c in calls)
    kinds = [c["payload"]["type"] for c in calls]
    assert kinds.count("job.running") == 1 and kinds.count("job.succeeded") == 1
    progress = sorted(c["payload"]["timestamp"] for c in calls if c["payload"]["type"] == "job.progress")
    assert 1 <= len(progress) < 200 / 4, progress  # far fewer events than chunks
    times = [datetime.fromisoformat(t).timestamp() for t in progress]
    assert all(b - a >= 0.9 for a, b in zip(times, times[1:], strict=False)), times  # 1 s apart


def test_jsonl_and_failed_items_of_a_zip_with_corrupted_entries(api, image: bytes) -> None:
    archive = make_zip(
        {"a/0.png": image, "a/broken.png": image[:40], "a/notes.txt": b"not an image", "a/1.png": image}
    )
    job = submit(api, [("d.zip", archive)])
    assert wait_for_job(api, job["id"])["counts"] == {"total": 4, "done": 4, "failed": 2}
    base = f"/jobs/{job['id']}/results"
    lines = api.get(f"{base}?format=jsonl").text.splitlines()
    assert [json.loads(line)["status"] for line in lines] == ["done", "failed", "failed", "done"]
    failed = [json.loads(line) for line in api.get(f"{base}?format=jsonl&status=failed").text.splitlines()]
    assert [(f["index"], f["name"]) for f in failed] == [(1, "a/broken.png"), (2, "a/notes.txt")]
    assert all(f["error"] and f["digit"] is None for f in failed)
    rows = list(csv.DictReader(io.StringIO(api.get(f"{base}?format=csv&status=failed").text)))
    assert [r["name"] for r in rows] == ["a/broken.png", "a/notes.txt"]
    page = api.get(f"{base}?status=failed&limit=1").json()
    assert [i["index"] for i in page["items"]] == [1] and page["next"]
    assert [i["index"] for i in api.get(page["next"]).json()["items"]] == [2]


def test_a_chunk_redelivered_after_closing_its_job_sends_the_event(stack: Stack, receiver: Receiver) -> None:
    """A pool process that stored a job's last result and died before queuing the event: the job is
    closed, and its redelivered chunk (acks_late) is what queues the event."""
    from celery import Celery

    from core.jobs import ItemResult, JobStore, new_job_id
    from core.queue import Chunk, send_chunks
    from core.uploads import Item, chunks
    from core.webhooks import job_fields

    client = redis.Redis.from_url(stack.redis_url or "")
    store, job_id = JobStore(client, 3600), new_job_id()
    store.create(job_id, ["a.png"], extra=job_fields(receiver.url + "/redelivered", ["job.succeeded"]))
    assert store.record(job_id, [ItemResult(0, 3, 0.9)]).closed_job  # what the dead process did
    celery = Celery("digitq", broker=stack.redis_url)
    [chunk] = chunks([Item(name="a.png", part=0)], 250, 2**20)  # the API's own task payload
    send_chunks(celery, [Chunk(job_id, tuple(chunk))])  # the redelivery
    [call] = wait_until(lambda: receiver.to("/redelivered"), what="the event")
    assert call["verified"] and call["id"] == f"{job_id}.succeeded"


def test_webhook_and_listing_keys_expire(stack: Stack, api, receiver: Receiver, image: bytes) -> None:
    events = "job.running,job.progress,job.succeeded"
    job = submit(api, [("a.png", image)], webhook=receiver.url + "/keys", webhook_events=events)
    wait_until(lambda: webhook_state(api, job["id"])["delivered"], what="the terminal event")
    client = redis.Redis.from_url(stack.redis_url or "")
    keys = [
        k.decode() for pattern in ("digitq:webhook*", "digitq:owner:*") for k in client.scan_iter(pattern)
    ]
    assert any(k.startswith("digitq:webhook:msg:") for k in keys) and any("owner" in k for k in keys)
    assert [k for k in keys if client.ttl(k) < 0] == []


def test_a_worker_killed_mid_delivery_loses_no_event(
    stack: Stack, api, receiver: Receiver, image: bytes
) -> None:
    """Last in the module: it replaces the stack's worker."""
    receiver.hold.add("/hold")
    job = submit(api, [("a.png", image)], webhook=receiver.url + "/hold")
    assert receiver.arrived.wait(60), "the first delivery never came"
    stack.stop_process("worker1", signal.SIGKILL)  # mid-delivery: the receiver has not answered
    receiver.release.set()
    stack.start_worker("worker2")
    state = wait_until(lambda: (s := webhook_state(api, job["id"]))["delivered"] and s, 90, what="redelivery")
    calls = receiver.to("/hold")
    assert len(calls) == 2 and all(c["verified"] for c in calls)
    assert calls[0]["id"] == calls[1]["id"] == f"{job['id']}.succeeded"
    assert state["attempts"] == 1  # the killed worker never recorded its attempt
