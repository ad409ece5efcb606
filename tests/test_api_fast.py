"""The API in-process over a real Redis, no workers: answers that need no worker."""

from fastapi.testclient import TestClient

from tests.helpers import png


def test_unknown_job_is_404(app_client: TestClient) -> None:
    response = app_client.get("/jobs/" + "0" * 32)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


def test_a_submitted_job_waits_in_the_queue(app_client: TestClient, digits) -> None:
    images, _ = digits
    response = app_client.post("/jobs", files=[("files", ("a.png", png(images[0])))])
    assert response.status_code == 202, response.text
    job = app_client.get(response.headers["location"]).json()
    assert job["status"] == "queued" and job["counts"]["total"] == 1


def test_keys_are_required_when_configured(make_client) -> None:
    client = make_client(API_KEYS="k1,k2")
    assert client.get("/jobs/" + "0" * 32).status_code == 401
    assert client.get("/jobs/" + "0" * 32, headers={"X-API-Key": "k2"}).status_code == 404


def test_an_idempotency_claim_whose_attempt_died_frees_itself(
    app_client: TestClient, redis_client, digits
) -> None:
    """The attempt that claimed a key died before creating its job: the claim is short-lived (a
    retry gets 409 for minutes, not a week); once the job exists, the key lasts as long as it."""
    from core.idempotency import CLAIM_SECONDS, SubmissionClaims
    from core.job_keys import IDEMPOTENCY_PREFIX
    from core.jobs import new_job_id
    from core.submission import idempotency_claim

    claims = SubmissionClaims(redis_client)
    dead = IDEMPOTENCY_PREFIX + idempotency_claim(None, "died")
    assert claims.claim(idempotency_claim(None, "died"), new_job_id()) is None
    assert 0 < redis_client.ttl(dead) <= CLAIM_SECONDS < 3600
    files = [("files", ("a.png", png(digits[0][0])))]
    assert app_client.post("/jobs", files=files, headers={"Idempotency-Key": "died"}).status_code == 409
    redis_client.delete(dead)  # what its TTL does after CLAIM_SECONDS
    retried = app_client.post("/jobs", files=files, headers={"Idempotency-Key": "died"})
    assert retried.status_code == 202
    claim = IDEMPOTENCY_PREFIX + idempotency_claim(None, "died")
    assert redis_client.ttl(claim) > CLAIM_SECONDS  # extended to the job's TTL with the job
    again = app_client.post("/jobs", files=files, headers={"Idempotency-Key": "died"})
    assert again.json()["id"] == retried.json()["id"]


def test_open_jobs_are_indexed_for_the_sweep_until_they_close(
    app_client: TestClient, redis_client, digits
) -> None:
    from core.job_keys import ACTIVE
    from core.jobs import ItemResult, JobStore
    from core.sweep_state import SweepState

    files = [("files", ("a.png", png(digits[0][0])))]
    first, second = (app_client.post("/jobs", files=files).json()["id"] for _ in range(2))
    store, sweep = JobStore(redis_client, 7 * 24 * 3600), SweepState(redis_client, 7 * 24 * 3600)
    assert [job_id for job_id, _ in sweep.active()] == [first, second]
    assert 0 < redis_client.ttl(ACTIVE) <= 7 * 24 * 3600
    # What the sweep re-lists: nothing for a small upload, which travels in its task messages.
    assert redis_client.hget(f"digitq:job:{first}", "parts") == b"0"
    store.record(first, [ItemResult(0, 3, 0.9)])  # its last item: closed
    assert app_client.delete(f"/jobs/{second}").json()["status"] == "cancelled"
    assert sweep.active() == []
