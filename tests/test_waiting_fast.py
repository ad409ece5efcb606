"""Answers in one request, where no worker is needed (fast tier: real Redis, no workers, so every
job stays queued): `Prefer: wait` that runs out, a cancel that wakes a waiter, the 504 of
/predict with its job id, API keys on the predict routes, the 4xx of malformed requests, and
small uploads sent inside the task message."""

import base64
import json
import threading
import time

import pytest
from fastapi.testclient import TestClient

from api.options import MAX_WAIT_SECONDS, parse_prefer_wait
from core.job_keys import CLOSED_CHANNEL
from core.jobs import ItemResult, JobStore
from core.queue import INLINE_UPLOAD_BYTES, LANES
from tests.helpers import make_zip, png, wait_until


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("wait=5", 5),
        ("wait", MAX_WAIT_SECONDS),
        ("respond-async, wait=7", 7),
        ('WAIT="3"; foo', 3),
        ("wait=3600", MAX_WAIT_SECONDS),
        ("wait=2, wait=9", 2),  # the first one counts (RFC 7240)
        ("wait=soon", None),  # malformed: ignored
        ("wait=1.5", None),  # delta-seconds are whole
        ("wait=-1", None),
        ("wait=٣", None),  # a non-ASCII digit
        ("respond-async", None),
        ("", None),
        (None, None),
    ],
)
def test_prefer_wait_is_parsed_per_rfc_7240(header: str | None, seconds: int | None) -> None:
    assert parse_prefer_wait(header) == seconds


def test_a_wait_that_runs_out_answers_202_after_the_wait(app_client: TestClient, digits) -> None:
    files = [("files", ("a.png", png(digits[0][0])))]
    started = time.monotonic()
    response = app_client.post("/jobs", files=files, headers={"Prefer": "wait=1"})
    elapsed = time.monotonic() - started
    assert response.status_code == 202, response.text
    assert response.headers["preference-applied"] == "wait=1"
    assert response.json()["status"] == "queued" and "results" not in response.json()
    assert elapsed >= 1


def test_a_malformed_prefer_is_ignored(app_client: TestClient, digits) -> None:
    response = app_client.post(
        "/jobs", files=[("files", ("a.png", png(digits[0][0])))], headers={"Prefer": "wait=x"}
    )
    assert response.status_code == 202
    assert "preference-applied" not in response.headers


class WaitingSubmission:
    """A `POST /jobs` with `Prefer: wait=60` in a thread, once it is waiting (subscribed)."""

    def __init__(self, client: TestClient, redis_client, image: bytes) -> None:
        self.answer: dict = {}
        files = [("files", ("a.png", image))]
        headers = {"Prefer": "wait=60"}

        def post() -> None:
            self.answer["response"] = client.post("/jobs", files=files, headers=headers)

        self.thread = threading.Thread(target=post)
        self.thread.start()
        self.job_id = wait_until(lambda: client.get("/jobs").json()["items"], what="the job")[0]["id"]
        # The submission is waiting once its event loop has subscribed to job closes.
        wait_until(lambda: redis_client.pubsub_numsub(CLOSED_CHANNEL)[0][1], what="the waiter's subscription")

    def result(self) -> dict:
        """Its answer (a 200: the job ended), given well within its 60 s wait."""
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the job's close did not wake the waiter"
        response = self.answer["response"]
        assert response.status_code == 200, response.text
        return response.json()


def test_a_cancel_wakes_the_waiting_submission(app_client: TestClient, redis_client, digits) -> None:
    """Without the PUBLISH in the cancel script the submission would wait its whole 60 s."""
    waiting = WaitingSubmission(app_client, redis_client, png(digits[0][0]))
    assert app_client.delete(f"/jobs/{waiting.job_id}").status_code == 200
    job = waiting.result()
    assert job["status"] == "cancelled" and job["results"][0]["status"] == "pending"


def test_a_close_published_while_the_subscription_was_down_is_not_missed(
    app_client: TestClient, redis_client, digits
) -> None:
    """The subscription is killed, the job is cancelled before it is back (its PUBLISH reaches no
    one): the waiter reads the job again once subscribed again, not at the end of its 60 s."""
    waiting = WaitingSubmission(app_client, redis_client, png(digits[0][0]))
    # The listener is back RECONNECT_SECONDS after a kill; on a loaded machine this thread may not
    # run again before that: kill until the channel is seen without a subscriber right after.
    for _ in range(20):
        redis_client.client_kill_filter(_type="pubsub")
        if redis_client.pubsub_numsub(CLOSED_CHANNEL)[0][1] == 0:
            break
    else:
        raise AssertionError("the job-closed subscription could not be seen down")
    assert JobStore(redis_client, 3600).cancel(waiting.job_id)  # published to no one
    job = waiting.result()
    assert job["status"] == "cancelled"


def test_predict_times_out_with_a_504_that_names_the_job(make_client, digits) -> None:
    client = make_client(PREDICT_TIMEOUT_SECONDS="0.5")
    response = client.post("/predict", files={"file": ("seven.png", png(digits[0][0]))})
    assert response.status_code == 504, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    job_id = problem["job_id"]
    assert problem["links"]["self"] == f"/jobs/{job_id}" == response.headers["location"]
    assert job_id in problem["detail"]
    assert client.get(problem["links"]["self"]).json()["status"] == "queued"  # the client can poll it


def test_predict_batch_times_out_with_a_504_too(make_client, digits) -> None:
    client = make_client(PREDICT_TIMEOUT_SECONDS="0.5")
    response = client.post("/predict_batch", files=[("files", ("a.png", png(digits[0][0])))])
    assert response.status_code == 504
    assert client.get(f"/jobs/{response.json()['job_id']}").status_code == 200


def test_the_predict_routes_need_an_api_key_when_keys_are_set(make_client, digits) -> None:
    client = make_client(API_KEYS="k1,k2", PREDICT_TIMEOUT_SECONDS="0.2")
    image = png(digits[0][0])
    for path, files in (
        ("/predict", {"file": ("a.png", image)}),
        ("/predict_batch", {"files": ("a.png", image)}),
    ):
        assert client.post(path, files=files).status_code == 401
        assert client.post(path, files=files, headers={"X-API-Key": "wrong"}).status_code == 401
        response = client.post(path, files=files, headers={"Authorization": "Bearer k1"})
        assert response.status_code == 504  # accepted: queued (no worker here)
        job = f"/jobs/{response.json()['job_id']}"
        assert client.get(job, headers={"X-API-Key": "k1"}).status_code == 200  # the key's own job
        assert client.get(job, headers={"X-API-Key": "k2"}).status_code == 404  # not another key's


def test_predict_refuses_what_is_not_one_image(app_client: TestClient, digits) -> None:
    cases = [
        ({}, 400, "'file'"),
        ({"file": ("empty.png", b"")}, 400, "empty"),
        ({"file": ("notes.txt", b"hello")}, 415, "neither an image nor a zip"),
        ({"file": ("d.zip", make_zip({"a.png": png(digits[0][0])}))}, 415, "/predict_batch"),
    ]
    for files, status, words in cases:
        response = app_client.post("/predict", files=files or {"other": ("x", b"1")})
        assert response.status_code == status, (files, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert words in response.json()["detail"]


def test_predict_batch_refuses_an_empty_request_and_too_many_images(app_client: TestClient, digits) -> None:
    assert app_client.post("/predict_batch", files={"other": ("x", b"1")}).status_code == 400
    archive = make_zip({f"{i}.png": png(digits[0][0]) for i in range(1001)})
    response = app_client.post("/predict_batch", files=[("files", ("d.zip", archive))])
    assert response.status_code == 413
    assert "POST /jobs" in response.json()["detail"]


def _queued_chunks(redis_client) -> list[dict]:
    """The chunks of every task message waiting in the broker's lanes (kombu's JSON envelope): a
    chunk, or a batch of them (core/batching.py), published by then."""
    wait_until(lambda: sum(redis_client.llen(lane) for lane in LANES), what="a task in the broker")
    messages = [json.loads(raw) for lane in LANES for raw in redis_client.lrange(lane, 0, -1)]
    found = [json.loads(base64.b64decode(m["body"]))[0][0] for m in messages]
    return [chunk for arg in found for chunk in (arg if isinstance(arg, list) else [arg])]


def test_a_small_upload_travels_inside_the_task_message(make_client, redis_client, tmp_path, digits) -> None:
    client = make_client()
    image = png(digits[0][0])
    response = client.post("/jobs", files=[("files", ("a.png", image)), ("files", ("b.png", image))])
    assert response.status_code == 202
    (chunk,) = _queued_chunks(redis_client)
    sent = {part: base64.b64decode(data) for part, data in chunk["parts"].items()}
    assert sent == {"0": image, "1": image}
    assert not (tmp_path / "uploads" / response.json()["id"]).exists()  # nothing written to the blob store


def test_a_bigger_upload_goes_through_the_blob_store(make_client, redis_client, tmp_path, digits) -> None:
    client = make_client()
    archive = make_zip({f"{i}.png": png(digits[0][i]) for i in range(400)})
    assert len(archive) > INLINE_UPLOAD_BYTES
    response = client.post("/jobs", files=[("files", ("a.zip", archive))])
    assert response.status_code == 202
    assert all("parts" not in chunk for chunk in _queued_chunks(redis_client))
    assert (tmp_path / "uploads" / response.json()["id"] / "part-0").read_bytes() == archive


def test_openapi_documents_the_interactive_routes_with_examples(app_client: TestClient) -> None:
    spec = app_client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    assert schemas["Prediction"]["examples"][0]["digit"] == 7
    assert schemas["BatchPrediction"]["examples"][1]["error"]
    for path in ("/predict", "/predict_batch"):
        timeout = spec["paths"][path]["post"]["responses"]["504"]["content"]["application/problem+json"]
        assert timeout["example"]["job_id"]
    submit = spec["paths"]["/jobs"]["post"]
    assert "prefer" in [p["name"] for p in submit["parameters"]]
    finished = submit["responses"]["200"]["content"]["application/json"]["schema"]
    assert finished["$ref"].endswith("JobWithResults")


def test_predict_refuses_an_image_over_the_limit(make_client, digits) -> None:
    client = make_client(MAX_IMAGE_BYTES="1000", PREDICT_TIMEOUT_SECONDS="0.3")
    response = client.post("/predict", files={"file": ("big.png", png(digits[0][0]) + bytes(2000))})
    assert response.status_code == 413 and "1000" in response.json()["detail"]
    batch = client.post("/predict_batch", files=[("files", ("big.png", png(digits[0][0]) + bytes(2000)))])
    assert batch.status_code == 504  # accepted: the big part is an item with its error (no worker here)


def test_quotas_apply_to_the_predict_routes(make_client, digits) -> None:
    client = make_client(API_KEYS="k1", MAX_QUEUED_IMAGES_PER_KEY="2")
    key = {"X-API-Key": "k1"}
    image = png(digits[0][0])
    three = [("files", (f"{i}.png", image)) for i in range(3)]
    refused = client.post("/predict_batch", files=three, headers=key)  # 3 images queued > 2
    assert refused.status_code == 429 and refused.json()["limit"] == "MAX_QUEUED_IMAGES_PER_KEY"
    env = {"SUBMISSION_IMAGES_PER_SECOND": "0.1", "SUBMISSION_BURST_SECONDS": "10"}  # a burst of 1 image
    client = make_client(API_KEYS="k2,k3", PREDICT_TIMEOUT_SECONDS="0.2", **env)
    assert (
        client.post("/jobs", files={"files": ("a.png", image)}, headers={"X-API-Key": "k3"}).status_code
        == 202
    )
    other = {"X-API-Key": "k2"}  # a key with no submission yet, while k3's image waits
    assert client.post("/predict", files={"file": ("a.png", image)}, headers=other).status_code == 504
    refused = client.post("/predict", files={"file": ("a.png", image)}, headers=other)
    assert refused.status_code == 429 and refused.json()["limit"] == "SUBMISSION_IMAGES_PER_SECOND"
    assert refused.headers["Retry-After"]


def _predict_in_thread(client: TestClient, redis_client, image: bytes) -> tuple[threading.Thread, dict, str]:
    """A /predict waiting (subscribed) for its job, and that job's id."""
    answer: dict = {}

    def post() -> None:
        answer["response"] = client.post("/predict", files={"file": ("a.png", image)})

    thread = threading.Thread(target=post)
    thread.start()
    job_id = wait_until(lambda: client.get("/jobs").json()["items"], what="the job")[0]["id"]
    wait_until(lambda: redis_client.pubsub_numsub(CLOSED_CHANNEL)[0][1], what="the waiter's subscription")
    return thread, answer, job_id


def test_predict_answers_from_the_close_that_carried_its_results(
    app_client: TestClient, redis_client, digits
) -> None:
    """The published answer is the whole answer: here it names a digit the job never stored (the
    job is still queued), so only an answer taken from the message gives 3."""
    thread, answer, job_id = _predict_in_thread(app_client, redis_client, png(digits[0][0]))
    redis_client.publish(CLOSED_CHANNEL, job_id + ' {"model_version":"vX","results":[[3,0.5,true,null]]}')
    thread.join(timeout=30)
    response = answer["response"]
    assert response.status_code == 200, response.text
    assert response.json() == {
        "digit": 3,
        "confidence": 0.5,
        "low_confidence": True,
        "model_version": "vX",
        "job_id": job_id,
    }


def test_predict_answers_from_a_one_trip_record(app_client: TestClient, redis_client, digits) -> None:
    """What a worker's one-trip chunk does (worker/tasks.py), without the worker: one record call
    starts, stores and closes the job, and the waiting /predict answers with it."""
    thread, answer, job_id = _predict_in_thread(app_client, redis_client, png(digits[0][0]))
    JobStore(redis_client, 3600).record(job_id, [ItemResult(0, 7, 0.99)], start=(time.time(), "v1"))
    thread.join(timeout=30)
    assert answer["response"].status_code == 200, answer["response"].text
    assert answer["response"].json()["digit"] == 7 and answer["response"].json()["model_version"] == "v1"
    assert app_client.get(f"/jobs/{job_id}").json()["status"] == "succeeded"
