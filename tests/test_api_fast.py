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
