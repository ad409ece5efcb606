"""Size limits and API keys, on an API configured with small limits and two keys."""

from collections.abc import Iterator

import httpx
import pytest

from devstack.stack import Stack
from tests.helpers import make_zip, png, running_stack

pytestmark = pytest.mark.stack  # full stack: real workers (see tests/helpers.py)

KEY = "s3cret-key-1"


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {
        "MAX_UPLOAD_BYTES": "60000",
        "MAX_IMAGE_BYTES": "20000",
        "MAX_ITEMS_PER_JOB": "5",
        "API_KEYS": f"other-key, {KEY}",
        "WORKER_PROCESSES": "1",
    }
    with running_stack(tmp_path_factory.mktemp("limits"), **env) as stack:
        yield stack


@pytest.fixture
def client(limited: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=limited.api_url, headers={"X-API-Key": KEY}, timeout=30) as c:
        yield c


def detail(response: httpx.Response) -> str:
    assert response.headers["content-type"] == "application/problem+json"
    return response.json()["detail"]


def test_upload_over_the_limit_is_413(client: httpx.Client) -> None:
    response = client.post("/jobs", files=[("files", ("big.png", b"\x89PNG\r\n\x1a\n" + bytes(70000)))])
    assert response.status_code == 413
    assert "60000" in detail(response)


def test_streamed_upload_over_the_limit_is_413(client: httpx.Client, digits) -> None:
    """No Content-Length (chunked): the limit is enforced while the body streams in."""
    body = httpx.Request("POST", "/", files=[("files", ("a.png", bytes(90000)))])
    headers = {"Content-Type": body.headers["Content-Type"], "X-API-Key": KEY}
    chunks = iter([body.read()[i : i + 8192] for i in range(0, len(body.read()), 8192)])
    response = client.post("/jobs", content=chunks, headers=headers)
    assert response.status_code == 413
    assert "60000" in detail(response)


def test_image_over_the_limit_is_413(client: httpx.Client) -> None:
    response = client.post("/jobs", files=[("files", ("big.png", b"\x89PNG\r\n\x1a\n" + bytes(30000)))])
    assert response.status_code == 413
    assert "20000" in detail(response)


def test_too_many_images_is_413(client: httpx.Client, digits) -> None:
    archive = make_zip({f"{i}.png": png(digits[0][i]) for i in range(6)})
    response = client.post("/jobs", files=[("files", ("six.zip", archive))])
    assert response.status_code == 413
    assert "at most 5" in detail(response)


def test_oversized_zip_entry_is_an_item_error(client: httpx.Client, digits) -> None:
    archive = make_zip({"ok.png": png(digits[0][0]), "huge.png": bytes(30000)})  # deflates small
    response = client.post("/jobs", files=[("files", ("a.zip", archive))])
    assert response.status_code == 202, response.text
    from tests.helpers import all_results, wait_for_job

    wait_for_job(client, response.json()["id"])
    items = {it["name"]: it for it in all_results(client, response.json()["id"])}
    assert items["ok.png"]["digit"] == digits[1][0]
    assert "limit per image is 20000" in items["huge.png"]["error"]


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}])
def test_job_routes_need_a_key(limited: Stack, headers: dict[str, str]) -> None:
    response = httpx.get(f"{limited.api_url}/jobs/any", headers=headers)
    assert response.status_code == 401
    assert "API key" in detail(response) and "wrong" not in response.text


def test_bearer_key_and_open_health(limited: Stack) -> None:
    bearer = httpx.get(f"{limited.api_url}/jobs/any", headers={"Authorization": f"Bearer {KEY}"})
    assert bearer.status_code == 404  # authorised, just no such job
    assert httpx.get(f"{limited.api_url}/health").status_code == 200


def test_a_job_belongs_to_the_key_that_submitted_it(limited: Stack, client: httpx.Client, digits) -> None:
    response = client.post("/jobs", files=[("files", ("a.png", png(digits[0][0])))])
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    with httpx.Client(base_url=limited.api_url, headers={"X-API-Key": "other-key"}) as other:
        for path in (f"/jobs/{job_id}", f"/jobs/{job_id}/results", f"/jobs/{job_id}/results?format=csv"):
            answer = other.get(path)
            assert answer.status_code == 404, path
            assert detail(answer) == f"there is no job {job_id!r} (jobs expire after a week)"
        assert other.delete(f"/jobs/{job_id}").status_code == 404
        # The same Idempotency-Key under another API key is another submission.
        retry = [("files", ("a.png", png(digits[0][0])))]
        mine = client.post("/jobs", files=retry, headers={"Idempotency-Key": "k1"}).json()["id"]
        theirs = other.post("/jobs", files=retry, headers={"Idempotency-Key": "k1"}).json()["id"]
        assert mine != theirs
    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] != "cancelled" and "owner" not in job
    assert client.get(f"/jobs/{job_id}/results").status_code == 200
