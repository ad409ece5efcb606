"""Answers in one request through the real queue: `Prefer: wait` on POST /jobs, /predict, /predict_batch."""

import httpx
import pytest

from tests.helpers import all_results, make_zip, png

pytestmark = pytest.mark.stack  # full stack: real workers (see tests/helpers.py)


def test_prefer_wait_answers_200_with_the_results_inline(api: httpx.Client, digits) -> None:
    images, labels = digits
    archive = make_zip({f"d/{i}.png": png(images[i]) for i in range(5)} | {"d/bad.png": b"not an image"})
    files = [("files", ("a.zip", archive)), ("files", ("b.png", png(images[5])))]
    # Woken by the job's close, not by the end of the wait: no answer within 30 s is a timeout.
    response = api.post("/jobs", files=files, headers={"Prefer": "wait=60"}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["preference-applied"] == "wait=60"
    job = response.json()
    assert response.headers["location"] == job["links"]["self"] == f"/jobs/{job['id']}"
    assert job["status"] == "succeeded" and job["counts"] == {"total": 7, "done": 7, "failed": 1}
    assert job["results"] == all_results(api, job["id"])  # the results endpoint's items, all of them
    assert [r["digit"] for r in job["results"][:5]] == list(labels[:5])


def test_prefer_wait_leaves_out_the_results_of_a_big_job(api: httpx.Client, digits) -> None:
    images, _ = digits
    archive = make_zip({f"{i}.png": png(images[i % 100]) for i in range(1001)})
    response = api.post("/jobs", files=[("files", ("a.zip", archive))], headers={"Prefer": "wait=60"})
    assert response.status_code == 200, response.text
    assert response.json()["counts"]["done"] == 1001
    assert response.json()["results"] is None  # above 1,000 images: page them


def test_predict_answers_the_old_services_fields(api: httpx.Client, digits) -> None:
    images, labels = digits
    for i in (0, 1000, 2500):
        response = api.post("/predict", files={"file": (f"{i}.png", png(images[i]))})
        assert response.status_code == 200, response.text
        answer = response.json()
        assert set(answer) == {"digit", "confidence", "low_confidence", "model_version", "job_id"}
        assert answer["digit"] == labels[i]
        assert 0 <= answer["confidence"] <= 1 and isinstance(answer["low_confidence"], bool)
        job = api.get(f"/jobs/{answer['job_id']}").json()  # a job like any other
        assert job["status"] == "succeeded" and job["model_version"] == answer["model_version"]


def test_predict_answers_422_with_the_items_error_for_an_unreadable_image(api: httpx.Client) -> None:
    response = api.post("/predict", files={"file": ("broken.png", b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)})
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert "broken.png: not a readable image" in problem["detail"]
    assert api.get(f"/jobs/{problem['job_id']}/results").json()["items"][0]["status"] == "failed"


def test_predict_batch_answers_every_item_in_input_order(api: httpx.Client, digits) -> None:
    images, labels = digits
    archive = make_zip({"z/1.png": png(images[1000]), "z/bad.png": b"nope", "z/2.png": png(images[2000])})
    files = [
        ("files", ("first.png", png(images[0]))),
        ("files", ("digits.zip", archive)),
        ("files", ("notes.txt", b"hello")),  # not an image: an error on this item, not the request
        ("files", ("empty.png", b"")),
        ("files", ("last.jpg", png(images[3000], "JPEG"))),
    ]
    response = api.post("/predict_batch", files=files)
    assert response.status_code == 200, response.text
    items = response.json()
    assert [i["name"] for i in items] == [
        "first.png",
        "z/1.png",
        "z/bad.png",
        "z/2.png",
        "notes.txt",
        "empty.png",
        "last.jpg",
    ]
    assert all(set(i) == {"name", "digit", "confidence", "low_confidence", "error"} for i in items)
    assert [i["digit"] for i in items] == [
        labels[0],
        labels[1000],
        None,
        labels[2000],
        None,
        None,
        labels[3000],
    ]
    assert items[2]["error"] == "not a readable image"
    assert "neither an image nor a zip" in items[4]["error"]
    assert "empty" in items[5]["error"]
    assert all(i["error"] is None for i in (items[0], items[1], items[3], items[6]))


def test_the_python_client_predicts_through_the_route(stack, digits) -> None:
    from digitq import Client

    images, labels = digits
    with Client(stack.api_url) as client:
        prediction = client.predict(png(images[42]))
    assert prediction.digit == labels[42] and prediction.job_id and prediction.model_version
