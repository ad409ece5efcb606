"""Issue 8, API side (fast tier: the real app over a real embedded Redis, no workers).

Each test attacks one defence: it fails on the code before the fix.
"""

from collections.abc import Callable

import pytest
import redis
from fastapi.testclient import TestClient

from core import fleet
from core.jobs import MAX_ERROR_CHARS, MAX_NAME_CHARS, ItemResult, JobStore
from core.queue import INLINE_UPLOAD_BYTES
from devstack.embedded_redis import free_port
from tests.helpers import make_zip, png


def _submit(client: TestClient, digits, **kw) -> str:
    response = client.post("/jobs", files=[("files", ("a.png", png(digits[0][0])))], **kw)
    assert response.status_code == 202, response.text
    return response.json()["id"]


@pytest.mark.parametrize(
    "suffix", [":names", ":results", ":names/results", ":results/results?format=csv", "0", "X" * 32]
)
def test_job_ids_that_digitq_cannot_have_made_are_404(app_client: TestClient, digits, suffix: str) -> None:
    """`<real id>:names` named the job's list key: HGETALL on it raised WRONGTYPE (a 500)."""
    job_id = _submit(app_client, digits)
    path = f"/jobs/{job_id}{suffix}" if suffix[0] in ":0" else f"/jobs/{suffix}"
    answer = app_client.get(path)
    assert answer.status_code == 404, answer.text
    assert "32 hexadecimal" in answer.json()["detail"]
    assert app_client.delete(path.split("?")[0].removesuffix("/results")).status_code == 404
    assert app_client.get(f"/jobs/{job_id}").json()["status"] == "queued"  # untouched


def test_long_names_are_capped(app_client: TestClient, digits) -> None:
    """A 65 KB name was stored in full for a week."""
    long_name = "d/" + "x" * 65_000 + ".png"
    archive = make_zip({long_name: png(digits[0][0]), "ok.png": png(digits[0][1])})
    response = app_client.post("/jobs", files=[("files", ("a.zip", archive))])
    assert response.status_code == 202, response.text
    items = app_client.get(f"/jobs/{response.json()['id']}/results").json()["items"]
    assert len(items[0]["name"]) <= MAX_NAME_CHARS and items[0]["name"].endswith("[truncated]")
    assert items[1]["name"] == "ok.png"


def test_error_texts_are_capped(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client, 3600)
    store.create("a" * 32, ["x.png"])
    store.record("a" * 32, [ItemResult(0, error="bad " * 50_000)])
    store.fail("a" * 32, "worse " * 50_000)
    (result,) = store.results("a" * 32, [0])
    assert result is not None and result.error is not None
    assert len(result.error) <= MAX_ERROR_CHARS and result.error.endswith("[truncated]")
    job = store.get("a" * 32)
    assert job is not None and job.error is not None and len(job.error) <= MAX_ERROR_CHARS


def test_results_expire_with_their_job(redis_client: redis.Redis) -> None:
    """The EXPIRE on `:results` ran before HSETNX created the key, so results never expired."""
    store = JobStore(redis_client, 3600)
    store.create("b" * 32, ["x.png", "y.png"])
    store.record("b" * 32, [ItemResult(0, digit=3, confidence=0.9)])
    ttl = redis_client.ttl(f"digitq:job:{'b' * 32}:results")
    assert 3500 < ttl <= 3600


def test_a_failing_s3_put_is_503(make_client: Callable[..., TestClient], digits) -> None:
    """boto3's error used to escape as a 500; the client should retry, not report a bug."""
    client = make_client(
        BLOB_URL="s3://uploads/digitq",
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}",  # nothing listens there
        AWS_ACCESS_KEY_ID="test-access-key",
        AWS_SECRET_ACCESS_KEY="test-secret-key",
        AWS_DEFAULT_REGION="us-east-1",
    )
    big = png(digits[0][0]) + bytes(INLINE_UPLOAD_BYTES)  # over the inline limit: goes to the store
    response = client.post("/jobs", files=[("files", ("a.png", big))])
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"] and "upload store" in response.json()["detail"]
    assert "test-secret-key" not in response.text


def test_an_s3_put_refused_by_the_server_is_503(make_client: Callable[..., TestClient], digits) -> None:
    """A real S3 server that answers, with an error (the bucket is gone): a ClientError, not a 500."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        client = make_client(
            BLOB_URL="s3://no-such-bucket/digitq",
            AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
            AWS_ACCESS_KEY_ID="test-access-key",
            AWS_SECRET_ACCESS_KEY="test-secret-key",
            AWS_DEFAULT_REGION="us-east-1",
        )
        big = png(digits[0][0]) + bytes(INLINE_UPLOAD_BYTES)  # over the inline limit: goes to the store
        response = client.post("/jobs", files=[("files", ("a.png", big))])
    finally:
        server.stop()
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"] and "upload store" in response.json()["detail"]
    assert "test-secret-key" not in response.text


def _scans(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_scan", {}).get("calls", 0))


def test_ready_and_metrics_read_the_worker_index_not_scan(
    app_client: TestClient, redis_client: redis.Redis
) -> None:
    """SCAN over every key per /ready or /metrics scrape costs O(keyspace) on a busy Redis."""
    fleet.beat(redis_client, "w1@host", {"model_version": "v1", "concurrency": 2})
    fleet.beat(redis_client, "w2@host", {"model_version": "v1", "concurrency": 2})
    pipe = redis_client.pipeline(transaction=False)
    for i in range(100_000):  # a busy Redis: the routes' cost must not depend on these
        pipe.set(f"unrelated:{i}", 1, ex=60)
    pipe.execute()
    before = _scans(redis_client)
    ready = app_client.get("/ready").json()
    assert [w["hostname"] for w in ready["workers"]] == ["w1@host", "w2@host"]
    assert "digitq_workers 2.0" in app_client.get("/metrics").text
    assert _scans(redis_client) == before
    # The index is bounded: a forgotten or stale worker leaves it, and it expires with the last beat.
    fleet.forget(redis_client, "w2@host")
    redis_client.zadd(fleet.WORKERS_INDEX, {"ghost@host": 1.0})  # a beat from long ago
    assert [w["hostname"] for w in fleet.workers(redis_client)] == ["w1@host"]
    assert redis_client.zcard(fleet.WORKERS_INDEX) == 1
    assert 0 < redis_client.ttl(fleet.WORKERS_INDEX) <= fleet.HEARTBEAT_TTL
