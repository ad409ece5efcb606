"""What the clients rely on from the API, in the fast tier (real Redis, no worker: jobs stay
queued): `Prefer: wait` on `GET /jobs/{id}` (a long poll), and an Idempotency-Key on /predict and
/predict_batch, so that a retried request answers with the first one's job."""

import threading
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from core.job_keys import CLOSED_CHANNEL
from tests.helpers import png, wait_until


def submitted(client: TestClient, image: bytes) -> str:
    return client.post("/jobs", files=[("files", ("a.png", image))]).json()["id"]


def test_a_job_read_with_prefer_wait_says_it_was_applied(app_client: TestClient, digits) -> None:
    job_id = submitted(app_client, png(digits[0][0]))
    held = app_client.get(f"/jobs/{job_id}", headers={"Prefer": "wait=1"})
    assert held.status_code == 200 and held.headers["preference-applied"] == "wait=1"
    assert held.json()["status"] == "queued"  # nothing ended it within the second
    plain = app_client.get(f"/jobs/{job_id}")
    assert "preference-applied" not in plain.headers


def test_a_long_poll_answers_when_the_job_ends(app_client: TestClient, redis_client, digits) -> None:
    """Without the wait, the GET would answer `queued` at once, before the cancel."""
    job_id = submitted(app_client, png(digits[0][0]))
    answer: dict = {}
    reader = threading.Thread(
        target=lambda: answer.update(r=app_client.get(f"/jobs/{job_id}", headers={"Prefer": "wait=60"}))
    )
    reader.start()
    wait_until(lambda: redis_client.pubsub_numsub(CLOSED_CHANNEL)[0][1], what="the long poll's subscription")
    assert app_client.delete(f"/jobs/{job_id}").status_code == 200
    reader.join(timeout=90)
    assert answer["r"].json()["status"] == "cancelled"


@pytest.mark.parametrize(("path", "part"), [("/predict", "file"), ("/predict_batch", "files")])
def test_a_retried_prediction_answers_with_the_first_attempts_job(
    make_client: Callable[..., TestClient], digits, path: str, part: str
) -> None:
    client = make_client(PREDICT_TIMEOUT_SECONDS="0.3")  # no worker: each attempt ends in a 504
    image = png(digits[0][0])
    attempts = [
        client.post(path, files=[(part, ("seven.png", image))], headers={"Idempotency-Key": "k-1"})
        for _ in range(2)
    ]
    assert [a.status_code for a in attempts] == [504, 504]
    assert attempts[0].json()["job_id"] == attempts[1].json()["job_id"]
    assert len(client.get("/jobs").json()["items"]) == 1, "the retry created a second job"
    other = client.post(path, files=[(part, ("seven.png", image))], headers={"Idempotency-Key": "k-2"})
    assert other.json()["job_id"] != attempts[0].json()["job_id"]
