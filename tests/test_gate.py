"""Issue 26: what is refused before an upload's body is read (api/gate.py), the budget of refused
uploads, one bounded listing for every upload route, and the open API's Host check.

Fast tier (the app in-process over a real Redis); the real-HTTP side (stalled bodies, the event
loop during a listing) is in tests/test_gate_http.py.
"""

from collections.abc import Callable

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.helpers import empty_entries_zip, png

IMAGE = png(np.zeros((28, 28), np.uint8))


def _upload(client: TestClient, key: str | None, data: bytes = IMAGE, route: str = "/jobs"):
    headers = {"X-API-Key": key} if key else {}
    return client.post(route, files=[("files", ("a.png", data))], headers=headers)


def test_refused_uploads_are_throttled_per_address_then_per_key(
    make_client: Callable[..., TestClient],
) -> None:
    """A refused upload was free to repeat: wrong keys, oversize bodies, any number a minute."""
    client = make_client(API_KEYS="k1,k2", REFUSED_REQUESTS_PER_MINUTE="3", MAX_UPLOAD_BYTES="2000")
    for _ in range(3):
        assert _upload(client, "wrong").status_code == 401
    throttled = _upload(client, "wrong")
    assert throttled.status_code == 429, throttled.text
    assert int(throttled.headers["Retry-After"]) >= 1
    assert throttled.json()["limit"] == "REFUSED_REQUESTS_PER_MINUTE"
    assert _upload(client, None).status_code == 429  # no key: the same address' budget
    # A valid key has a budget of its own: the address' refusals are not its.
    assert _upload(client, "k1").status_code == 202
    for _ in range(3):
        assert _upload(client, "k1", b"\x89PNG" + b"x" * 3000).status_code == 413  # too large
    assert _upload(client, "k1").status_code == 429  # even a good upload, for a minute
    assert _upload(client, "k2").status_code == 202  # another key is not throttled
    assert client.get("/metrics").text.count(
        'digitq_submissions_refused_total{reason="refused_requests"} 3.0'
    )


def test_a_keyless_upload_is_refused_without_reading_its_body(make_client: Callable[..., TestClient]) -> None:
    """The body of a request without a key is never read: a body that would fail (413) if read
    gets the 401 instead. A key over its submission rate is refused before its body too."""
    client = make_client(
        API_KEYS="k1,k2",
        MAX_UPLOAD_BYTES="2000",
        SUBMISSION_IMAGES_PER_SECOND="1",
        SUBMISSION_BURST_SECONDS="1",
    )
    refused = _upload(client, None, b"x" * 5000)
    assert refused.status_code == 401, refused.text
    assert refused.headers["WWW-Authenticate"] == "Bearer"
    assert _upload(client, "k2").status_code == 202  # k2 has work waiting: k1 now shares the rate
    assert _upload(client, "k1").status_code == 202  # its burst
    over = _upload(client, "k1", b"x" * 5000)  # would be a 413 if its body were read
    assert over.status_code == 429 and over.json()["limit"] == "SUBMISSION_IMAGES_PER_SECOND", over.text


@pytest.mark.parametrize("route", ["/jobs", "/predict_batch"])
def test_a_zip_flood_is_the_same_413_on_every_upload_route(
    make_client: Callable[..., TestClient], route: str
) -> None:
    """/predict_batch listed every zip with a fresh budget per part (600,000 entries for 4 parts)."""
    client = make_client(MAX_ITEMS_PER_JOB="1")  # a budget of 2 x 1 + 1000 entries per request
    parts = [("files", (f"{i}.zip", empty_entries_zip(600))) for i in range(2)]  # 1,200 in all
    answer = client.post(route, files=parts)
    assert answer.status_code == 413, answer.text
    assert answer.json()["title"] == "Unusable upload"
    assert "part 2 holds more than 402 zip entries" in answer.json()["detail"]


def test_predict_refuses_a_zip_from_its_first_bytes(make_client: Callable[..., TestClient]) -> None:
    client = make_client(MAX_ITEMS_PER_JOB="1")
    answer = client.post("/predict", files=[("file", ("a.zip", empty_entries_zip(5000)))])
    assert answer.status_code == 415 and answer.json()["title"] == "Not an image", answer.text


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example", "[::2]:80"])
def test_an_open_api_refuses_other_hosts(make_client: Callable[..., TestClient], host: str) -> None:
    """DNS rebinding: a page whose name now resolves to 127.0.0.1 is same-origin to an open API."""
    client = make_client()
    for answer in (client.get("/jobs", headers={"Host": host}), _upload_with_host(client, host)):
        assert answer.status_code == 403, answer.text
        assert answer.json()["title"] == "Unknown host"


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.1:8000", "localhost:1", "LOCALHOST", "[::1]:8000"])
def test_an_open_api_answers_loopback_hosts(make_client: Callable[..., TestClient], host: str) -> None:
    client = make_client()
    assert client.get("/jobs", headers={"Host": host}).status_code == 200
    assert _upload_with_host(client, host).status_code == 202


def test_the_host_check_is_for_the_open_api_only(make_client: Callable[..., TestClient]) -> None:
    keyed = make_client(API_KEYS="k1")
    assert keyed.get("/jobs", headers={"Host": "api.example", "X-API-Key": "k1"}).status_code == 200
    anyone = make_client(API_KEYS="", ALLOW_OPEN_API="true")
    assert anyone.get("/jobs", headers={"Host": "api.example"}).status_code == 200


def _upload_with_host(client: TestClient, host: str):
    return client.post("/jobs", files=[("files", ("a.png", IMAGE))], headers={"Host": host})
