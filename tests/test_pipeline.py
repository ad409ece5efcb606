"""End to end over HTTP: the API, a real Redis, real Celery worker processes and the real model."""

import io
import time
import zipfile
from datetime import datetime

import httpx
import numpy as np
import pytest
import redis

from core.kept_uploads import KEPT
from devstack.stack import Stack
from tests.helpers import all_results, make_zip, png, running_api, wait_for_job, wait_until

pytestmark = pytest.mark.stack  # full stack: real workers (see tests/helpers.py)


@pytest.fixture(scope="module")
def holdout() -> tuple[np.ndarray, np.ndarray]:
    """The 1,000 held-out digits the model never saw (same split as `python -m ml train`)."""
    from ml.data import load_splits

    splits = load_splits()
    return splits.X_holdout.astype(np.uint8), splits.y_holdout


def submit(api: httpx.Client, *parts: tuple[str, bytes]) -> httpx.Response:
    return api.post("/jobs", files=[("files", (name, data)) for name, data in parts])


def test_one_image(api: httpx.Client, holdout) -> None:
    images, labels = holdout
    response = submit(api, ("seven.png", png(images[0])))
    assert response.status_code == 202, response.text
    job = response.json()
    # The 202 shows the job as it is read after its chunk was sent: a free worker may have started
    # (or finished) it already.
    assert job["status"] in {"queued", "running", "succeeded"}
    assert response.headers["location"] == f"/jobs/{job['id']}"

    done = wait_for_job(api, job["id"])
    assert done["status"] == "succeeded"
    assert done["counts"] == {"total": 1, "done": 1, "failed": 0}
    assert done["model_version"] and done["started_at"] and done["finished_at"]
    kept = datetime.fromisoformat(done["expires_at"]) - datetime.fromisoformat(done["created_at"])
    assert abs(kept.total_seconds() - 7 * 24 * 3600) < 60  # JOB_TTL_SECONDS' default
    [item] = all_results(api, job["id"])
    assert item["name"] == "seven.png" and item["error"] is None
    assert item["digit"] == labels[0] and 0 <= item["confidence"] <= 1


def test_upload_is_kept_for_review_then_due_for_deletion(stack: Stack, api: httpx.Client, holdout) -> None:
    """The worker that ends the job notes its upload (a small one, from its message) as kept for
    UPLOAD_KEEP_SECONDS; housekeeping deletes it when due (tests/test_review_fast.py)."""
    job = submit(api, ("a.png", png(holdout[0][0]))).json()
    done = wait_for_job(api, job["id"])
    client = redis.Redis.from_url(stack.redis_url or "")
    due = wait_until(lambda: client.zscore(KEPT, job["id"]), 10, 0.1, "the upload to be noted as kept")
    ended = datetime.fromisoformat(done["finished_at"]).timestamp()
    assert abs(due - ended - stack.settings.upload_keep_seconds) < 60
    assert (stack.settings.data_dir / "uploads" / job["id"] / "part-0").read_bytes() == png(holdout[0][0])


def test_thousand_image_zip_is_mostly_right(api: httpx.Client, holdout) -> None:
    images, labels = holdout
    entries = {f"batch/{i:04d}.png": png(img) for i, img in enumerate(images)}
    job = submit(api, ("digits.zip", make_zip(entries))).json()

    done = wait_for_job(api, job["id"])
    assert done["status"] == "succeeded" and done["counts"]["done"] == len(images)
    items = all_results(api, job["id"])
    assert [it["name"] for it in items] == list(entries)
    assert [it["index"] for it in items] == list(range(len(images)))
    accuracy = np.mean([it["digit"] == label for it, label in zip(items, labels, strict=True)])
    assert accuracy >= 0.95, accuracy


def test_mixed_valid_and_invalid_files(api: httpx.Client, holdout) -> None:
    images, labels = holdout
    good = png(images[1])
    archive = make_zip(
        {
            "a/one.png": good,
            "a/notes.txt": b"shopping list",
            "a/broken.png": good[:40],
            "__MACOSX/a/._one.png": b"junk",
            ".DS_Store": b"junk",
            "a/.hidden.png": good,
            "/etc/evil.png": good,
            "../../evil.png": good,
            "a/three.jpg": png(images[2], "JPEG"),
        }
    )
    job = submit(api, ("mixed.zip", archive), ("plain.bmp", png(images[3], "BMP"))).json()
    done = wait_for_job(api, job["id"])
    assert done["status"] == "succeeded"
    items = {it["name"]: it for it in all_results(api, job["id"])}
    assert list(items) == [
        "a/one.png", "a/notes.txt", "a/broken.png", "/etc/evil.png", "../../evil.png",
        "a/three.jpg", "plain.bmp",
    ]  # fmt: skip
    assert items["a/one.png"]["digit"] == labels[1]
    assert items["a/three.jpg"]["digit"] == labels[2]
    assert items["plain.bmp"]["digit"] == labels[3]
    for name in ("a/notes.txt", "a/broken.png", "/etc/evil.png", "../../evil.png"):
        assert items[name]["status"] == "failed" and items[name]["digit"] is None, items[name]
        assert items[name]["error"]
    assert "unsafe path" in items["../../evil.png"]["error"]
    assert done["counts"] == {"total": 7, "done": 7, "failed": 4}


def test_corrupted_zip_entry_is_an_item_error(api: httpx.Client, holdout) -> None:
    images, labels = holdout
    data = bytearray(make_zip({"ok.png": png(images[4]), "bad.png": png(images[5]) * 3}))
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        info = archive.getinfo("bad.png")
    start = info.header_offset + 30 + len(info.filename) + 10  # inside the compressed data
    data[start : start + 20] = bytes(20)
    job = submit(api, ("corrupt.zip", bytes(data))).json()
    done = wait_for_job(api, job["id"])
    items = {it["name"]: it for it in all_results(api, job["id"])}
    assert items["ok.png"]["digit"] == labels[4]
    assert items["bad.png"]["status"] == "failed" and "corrupt" in items["bad.png"]["error"]
    assert done["counts"]["failed"] == 1


def test_results_paging_and_csv(api: httpx.Client, holdout) -> None:
    images, _ = holdout
    entries = {f"{i}.png": png(images[i]) for i in range(25)}
    job = submit(api, ("p.zip", make_zip(entries))).json()
    wait_for_job(api, job["id"])
    page = api.get(f"/jobs/{job['id']}/results", params={"offset": 10, "limit": 10}).json()
    assert [it["index"] for it in page["items"]] == list(range(10, 20))
    assert page["next"] == f"/jobs/{job['id']}/results?offset=20&limit=10"
    last = api.get(page["next"]).json()
    assert len(last["items"]) == 5 and last["next"] is None

    csv = api.get(f"/jobs/{job['id']}/results", params={"format": "csv"})
    assert csv.headers["content-type"].startswith("text/csv")
    lines = csv.text.strip().splitlines()
    assert lines[0].split(",")[:4] == ["index", "name", "status", "digit"]
    assert "name" in lines[0] and "confidence" in lines[0] and "error" in lines[0]
    assert len(lines) == 26 and lines[1].startswith("0,0.png,done,")


def test_unknown_job_is_404_problem(api: httpx.Client) -> None:
    unknown = "0123456789abcdef" * 2  # well-formed, never issued
    for path in (f"/jobs/{unknown}", f"/jobs/{unknown}/results"):
        response = api.get(path)
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/problem+json"
        assert unknown in response.json()["detail"]


@pytest.mark.parametrize(
    ("files", "status", "hint"),
    [
        (None, 400, "parts named 'files'"),
        ([("files", ("empty.png", b""))], 400, "empty"),
        ([("files", ("notes.txt", b"hello, not an image"))], 415, "neither an image nor a zip"),
        ([("files", ("x.zip", b"PK\x03\x04 this is not really a zip"))], 400, "not a readable zip"),
        ([("files", ("junk.zip", make_zip({"__MACOSX/x": b"1", ".DS_Store": b"2"})))], 400, "no images"),
        ([("files", (f"{i}.png", b"\x89PNG")) for i in range(1001)], 400, "in a .zip"),
    ],
)
def test_bad_requests_are_4xx_that_say_what_to_fix(api: httpx.Client, files, status, hint) -> None:
    response = api.post("/jobs", files=files) if files else api.post("/jobs", data={"x": "1"})
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert hint in response.json()["detail"]


def test_bad_query_is_422_problem(api: httpx.Client, holdout) -> None:
    job = submit(api, ("a.png", png(holdout[0][0]))).json()
    response = api.get(f"/jobs/{job['id']}/results", params={"limit": 0, "format": "xml"})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "limit" in detail and "format" in detail
    huge = api.get(f"/jobs/{job['id']}/results", params={"offset": 10**20})
    assert huge.status_code == 422 and "offset" in huge.json()["detail"]


def test_redis_outage_is_503_not_500(tmp_path) -> None:
    with running_api(tmp_path) as stack:  # no worker needed: the API alone over its Redis
        client = httpx.Client(base_url=stack.api_url)
        assert stack.redis is not None
        stack.redis.stop()
        response = client.get("/jobs/" + "ab" * 16)  # a well-formed id: the store is asked
        assert response.status_code == 503 and response.headers["retry-after"]
        assert response.headers["content-type"] == "application/problem+json"


def test_cancel_stops_remaining_chunks(api: httpx.Client, holdout) -> None:
    images, _ = holdout
    archive = make_zip({f"{i}.png": png(images[i % len(images)]) for i in range(3000)})
    job = submit(api, ("big.zip", archive)).json()
    cancelled = api.delete(f"/jobs/{job['id']}").json()
    assert cancelled["status"] == "cancelled"
    # The workers drain the job's remaining chunks without working on them.
    wait_until(lambda: api.get("/ready").json()["queue_depth"] == 0, 60, 0.1, "the queue to drain")
    after = api.get(f"/jobs/{job['id']}").json()
    assert after["status"] == "cancelled" and after["counts"]["done"] < 3000


def test_job_state_survives_api_restart(stack: Stack, api: httpx.Client, holdout) -> None:
    job = submit(api, ("a.png", png(holdout[0][0]))).json()
    wait_for_job(api, job["id"])
    stack.stop_process("api")
    stack.start_api()
    stack.wait_for(f"{stack.api_url}/health")
    again = api.get(f"/jobs/{job['id']}").json()
    assert again["status"] == "succeeded" and again["counts"]["done"] == 1


def test_flower_sees_the_worker(stack: Stack) -> None:
    login = tuple(stack.flower_basic_auth().split(":", 1))
    workers = httpx.get(f"{stack.flower_url}/api/workers", params={"refresh": "true"}, auth=login, timeout=30)
    assert workers.status_code == 200
    assert any(name.startswith("worker1@") for name in workers.json()), workers.text


def test_openapi_documents_the_routes(api: httpx.Client) -> None:
    spec = api.get("/openapi.json").json()
    assert {"/jobs", "/jobs/{job_id}", "/jobs/{job_id}/results", "/health"} <= set(spec["paths"])
    assert api.get("/docs").status_code == 200


def test_a_retried_submission_with_an_idempotency_key_is_one_job(api: httpx.Client, holdout) -> None:
    files = [("files", ("a.png", png(holdout[0][0])))]
    key = {"Idempotency-Key": f"upload-{time.time_ns()}"}
    refused = api.post("/jobs", files=[("files", ("notes.txt", b"not an image"))], headers=key)
    assert refused.status_code == 415  # a refused request reserves nothing
    first = api.post("/jobs", files=files, headers=key)
    again = api.post("/jobs", files=files, headers=key)
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"] and again.headers["idempotent-replayed"] == "true"
    assert again.headers["location"] == first.headers["location"]
    other = api.post("/jobs", files=files, headers={"Idempotency-Key": key["Idempotency-Key"] + "-2"})
    assert other.json()["id"] != first.json()["id"] and "idempotent-replayed" not in other.headers


def test_a_retry_while_the_first_attempt_is_still_storing_is_409(
    stack: Stack, api: httpx.Client, holdout
) -> None:
    import redis

    from core.idempotency import SubmissionClaims
    from core.jobs import new_job_id
    from core.submission import idempotency_claim

    key = f"slow-{time.time_ns()}"
    claims = SubmissionClaims(redis.Redis.from_url(stack.redis_url or ""))
    # The first attempt has claimed the key and is still storing its upload: no job yet.
    assert claims.claim(idempotency_claim(None, key), new_job_id()) is None
    response = api.post(
        "/jobs", files=[("files", ("a.png", png(holdout[0][0])))], headers={"Idempotency-Key": key}
    )
    assert response.status_code == 409 and response.headers["retry-after"] == "1"
    assert "still being created" in response.json()["detail"]
