"""Quotas per API key (core/quotas.py): 429 + Retry-After naming the limit, refused whole, given
back as work finishes or is cancelled. Fast tier: the real API over a real Redis, no workers; the
results a worker would store go through the same JobStore script the workers use."""

from collections.abc import Callable

import numpy as np
import redis
from fastapi.testclient import TestClient

from core import listing
from core.connections import get_job_store, get_quotas
from core.jobs import ItemResult
from core.quotas import ANONYMOUS
from tests.helpers import make_zip, png

KEYS = "key-a-0123456789,key-b-0123456789"
A = {"X-API-Key": "key-a-0123456789"}
B = {"X-API-Key": "key-b-0123456789"}


def zip_of(n: int) -> list[tuple[str, tuple[str, bytes]]]:
    image = png(np.zeros((28, 28), dtype=np.uint8))
    return [("files", ("batch.zip", make_zip({f"{i}.png": image for i in range(n)})))]


def assert_429(response, limit: str) -> int:
    assert response.status_code == 429, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["limit"] == limit and limit in body["detail"]
    retry_after = int(response.headers["Retry-After"])
    assert 1 <= retry_after <= 120
    return retry_after


def metric(client: TestClient, line_start: str) -> float:
    lines = [ln for ln in client.get("/metrics").text.splitlines() if ln.startswith(line_start)]
    return float(lines[0].rpartition(" ")[2])


def test_queued_images_over_the_quota_are_refused_whole(
    make_client: Callable[..., TestClient], redis_client: redis.Redis
) -> None:
    client = make_client(API_KEYS=KEYS, MAX_QUEUED_IMAGES_PER_KEY="30", SUBMISSION_IMAGES_PER_SECOND="1e6")
    first = client.post("/jobs", files=zip_of(20), headers=A)
    assert first.status_code == 202, first.text
    tenant = get_job_store().get(first.json()["id"]).owner
    assert get_quotas().queued(tenant) == 20

    jobs_before = redis_client.zcard(listing.index_key(tenant))
    refused = client.post("/jobs", files=zip_of(11), headers=A)  # 31 > 30
    assert_429(refused, "MAX_QUEUED_IMAGES_PER_KEY")
    assert get_quotas().queued(tenant) == 20, "a refused submission reserved images"
    assert redis_client.zcard(listing.index_key(tenant)) == jobs_before == 1
    assert client.post("/jobs", files=zip_of(11), headers=B).status_code == 202  # another key's own quota
    assert metric(client, 'digitq_submissions_refused_total{reason="queued_images"}') == 1

    # The first job's images finish (as a worker stores them): the quota is given back...
    job_id = first.json()["id"]
    results = [ItemResult(i, 3, 0.9) for i in range(20)]
    assert get_job_store().record(job_id, results, tenant).closed_job
    assert get_quotas().queued(tenant) == 0
    assert client.post("/jobs", files=zip_of(30), headers=A).status_code == 202
    # ... and a cancel gives back what was left of a job.
    assert assert_429(client.post("/jobs", files=zip_of(1), headers=A), "MAX_QUEUED_IMAGES_PER_KEY")
    latest = client.get("/jobs?limit=1", headers=A).json()["items"][0]["id"]
    get_job_store().record(latest, [ItemResult(0, 1, 0.9)], tenant)  # one done, 29 left
    assert get_quotas().queued(tenant) == 29
    assert client.delete(f"/jobs/{latest}", headers=A).json()["status"] == "cancelled"
    assert get_quotas().queued(tenant) == 0
    assert client.post("/jobs", files=zip_of(30), headers=A).status_code == 202
    get_job_store().record(latest, [ItemResult(1, 1, 0.9)], tenant)  # a chunk finishing after the cancel
    assert get_quotas().queued(tenant) == 30, "the cancelled job's late result was given back twice"


def test_a_lone_key_at_full_speed_is_never_refused(make_client: Callable[..., TestClient]) -> None:
    """Defaults, as a new user gets them: 800 /predict-sized submissions as fast as one client can
    send them, nobody else waiting: not one 429 (the old 600 submissions a minute refused 200)."""
    client = make_client(API_KEYS=KEYS)
    image = [("files", ("a.png", png(np.zeros((28, 28), dtype=np.uint8))))]
    codes = [client.post("/jobs", files=image, headers=A).status_code for _ in range(800)]
    assert codes.count(202) == 800, {code: codes.count(code) for code in set(codes)}


def test_a_key_over_its_share_is_slowed_only_while_another_waits(
    make_client: Callable[..., TestClient],
) -> None:
    """2 images/s shared by the keys with work waiting, a 5 s burst (10 images): with B's image
    waiting, A gets 1 image/s after its burst and a 429 + Retry-After beyond; B still gets in.
    Once B's work is done, A alone is admitted again whatever it took before."""
    client = make_client(API_KEYS=KEYS, SUBMISSION_IMAGES_PER_SECOND="2", SUBMISSION_BURST_SECONDS="5")
    waiting = client.post("/jobs", files=zip_of(1), headers=B)
    assert waiting.status_code == 202
    responses = [client.post("/jobs", files=zip_of(1), headers=A) for _ in range(40)]
    refused = [r for r in responses if r.status_code == 429]
    assert refused and all(r.status_code == 202 for r in responses[: len(responses) - len(refused)])
    assert_429(refused[0], "SUBMISSION_IMAGES_PER_SECOND")
    assert metric(client, 'digitq_submissions_refused_total{reason="submission_rate"}') == len(refused)
    owner = get_job_store().get(client.get("/jobs?limit=1", headers=A).json()["items"][0]["id"]).owner
    assert get_quotas().queued(owner) == len(responses) - len(refused)  # the refused reserved nothing
    assert client.post("/jobs", files=zip_of(1), headers=B).status_code == 202  # B's own bucket
    # B's work finishes (as a worker stores it): A is alone again, and never refused alone.
    for job in client.get("/jobs", headers=B).json()["items"]:
        get_job_store().record(job["id"], [ItemResult(0, 3, 0.9)], get_job_store().get(job["id"]).owner)
    assert all(client.post("/jobs", files=zip_of(1), headers=A).status_code == 202 for _ in range(20))


def test_a_job_bigger_than_the_burst_passes_on_a_full_bucket(make_client: Callable[..., TestClient]) -> None:
    client = make_client(API_KEYS=KEYS, SUBMISSION_IMAGES_PER_SECOND="1", SUBMISSION_BURST_SECONDS="3")
    assert client.post("/jobs", files=zip_of(1), headers=B).status_code == 202  # B waits
    assert client.post("/jobs", files=zip_of(20), headers=A).status_code == 202  # 20 > the burst of 3
    retry_after = assert_429(client.post("/jobs", files=zip_of(1), headers=A), "SUBMISSION_IMAGES_PER_SECOND")
    assert retry_after >= 20  # its debt: 17 images at 0.5 image/s, before one more


def test_open_mode_is_one_anonymous_tenant(make_client: Callable[..., TestClient]) -> None:
    client = make_client(SUBMISSION_IMAGES_PER_SECOND="1", MAX_QUEUED_IMAGES_PER_KEY="5")
    assert client.post("/jobs", files=zip_of(3)).status_code == 202
    assert_429(client.post("/jobs", files=zip_of(3)), "MAX_QUEUED_IMAGES_PER_KEY")
    assert get_quotas().queued(ANONYMOUS) == 3
    assert client.post("/jobs", files=zip_of(2)).status_code == 202  # alone: never slowed by the rate


def test_a_refused_submission_leaves_its_idempotency_key_free(make_client: Callable[..., TestClient]) -> None:
    client = make_client(MAX_QUEUED_IMAGES_PER_KEY="5")
    first = client.post("/jobs", files=zip_of(5))
    key = {"Idempotency-Key": "retry-me"}
    assert_429(client.post("/jobs", files=zip_of(1), headers=key), "MAX_QUEUED_IMAGES_PER_KEY")
    client.delete(f"/jobs/{first.json()['id']}")  # drained
    retried = client.post("/jobs", files=zip_of(1), headers=key)
    assert retried.status_code == 202 and "Idempotent-Replayed" not in retried.headers
    assert client.post("/jobs", files=zip_of(1), headers=key).headers["Idempotent-Replayed"] == "true"
