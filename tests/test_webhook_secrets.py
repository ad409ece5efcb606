"""Fast tier (real Redis, a real receiver, the worker's own sender in this process): a webhook
signing secret per API key (issue 26, item 4). With one secret for every tenant, tenant A could
forge events to B's receiver; here each key's events verify with its own secret only, and a
rotation keeps the old secret valid (a second signature) for a grace period, then not."""

import time
from collections.abc import Iterator
from datetime import datetime

import pytest
from fastapi.testclient import TestClient
from standardwebhooks import Webhook

from core.config import get_settings
from core.connections import get_job_store
from tests.helpers import png, wait_until
from tests.webhook_receiver import Receiver, verifies
from worker.webhooks import Sender

OPEN_SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
K1, K2 = {"Authorization": "Bearer key-one"}, {"X-API-Key": "key-two"}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(None)  # verified below, with each key's secret
    yield r
    r.close()


@pytest.fixture
def one_png(digits) -> bytes:
    return png(digits[0][0])


def keyed(make_client, **env: str) -> TestClient:
    # WEBHOOK_SECRET is set too: it must sign none of the keys' events.
    base = {"API_KEYS": "key-one,key-two", "WEBHOOK_ALLOW_PRIVATE": "true", "WEBHOOK_SECRET": OPEN_SECRET}
    env = base | env
    return make_client(**env)


def send_event(client: TestClient, headers: dict, image: bytes, receiver: Receiver, path: str) -> dict:
    """Submit a job with a webhook as this key, cancel it, and send its event now: the call."""
    form = {"webhook": receiver.url + path}
    response = client.post("/jobs", files=[("files", ("a.png", image))], data=form, headers=headers)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    client.delete(f"/jobs/{job_id}", headers=headers)
    Sender(get_job_store(), get_settings()).deliver(f"{job_id}.cancelled")
    [call] = receiver.to(path)
    assert call["id"] == f"{job_id}.cancelled"
    return call


def secret_of(client: TestClient, headers: dict) -> dict:
    response = client.get("/webhook-secret", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def test_each_key_has_its_own_secret(make_client) -> None:
    client = keyed(make_client)
    one, two = secret_of(client, K1), secret_of(client, K2)
    assert one["secret"].startswith("whsec_") and two["secret"].startswith("whsec_")
    assert one["secret"] != two["secret"] and OPEN_SECRET not in (one["secret"], two["secret"])
    assert secret_of(client, K1) == one  # kept
    Webhook(one["secret"])  # a secret standardwebhooks accepts
    assert one["previous_valid_until"] is None
    assert client.get("/webhook-secret").status_code == 401
    assert client.get("/webhook-secret", headers={"X-API-Key": "nope"}).status_code == 401
    assert client.post("/webhook-secret/rotate").status_code == 401


def test_the_open_api_hands_out_no_secret(make_client) -> None:
    response = make_client(WEBHOOK_SECRET=OPEN_SECRET).get("/webhook-secret")
    assert response.status_code == 403 and "WEBHOOK_SECRET" in response.json()["detail"]
    assert OPEN_SECRET not in response.text


def test_events_verify_with_their_own_key_secret_only(
    make_client, receiver: Receiver, one_png: bytes
) -> None:
    client = keyed(make_client)
    one, two = secret_of(client, K1)["secret"], secret_of(client, K2)["secret"]
    call_one = send_event(client, K1, one_png, receiver, "/one")
    call_two = send_event(client, K2, one_png, receiver, "/two")
    assert verifies(call_one, one) and not verifies(call_one, two)
    assert verifies(call_two, two) and not verifies(call_two, one)
    assert not verifies(call_one, OPEN_SECRET) and not verifies(call_two, OPEN_SECRET)
    assert len(call_one["headers"]["webhook-signature"].split()) == 1


def test_a_key_without_a_secret_yet_gets_one_at_its_first_event(
    make_client, receiver: Receiver, one_png: bytes
) -> None:
    client = keyed(make_client)
    call = send_event(client, K1, one_png, receiver, "/first")
    assert verifies(call, secret_of(client, K1)["secret"])


def test_rotation_signs_with_both_during_the_grace_then_the_new_only(
    make_client, receiver: Receiver, one_png: bytes
) -> None:
    client = keyed(make_client, WEBHOOK_SECRET_GRACE_SECONDS="2")
    old = secret_of(client, K1)["secret"]
    rotated = client.post("/webhook-secret/rotate", headers=K1)
    assert rotated.status_code == 200, rotated.text
    new, until = rotated.json()["secret"], rotated.json()["previous_valid_until"]
    assert new != old and until is not None and secret_of(client, K1)["secret"] == new

    during = send_event(client, K1, one_png, receiver, "/during")
    assert verifies(during, new) and verifies(during, old)  # a receiver not yet switched keeps working
    assert len(during["headers"]["webhook-signature"].split()) == 2

    ends = datetime.fromisoformat(until.replace("Z", "+00:00")).timestamp()
    wait_until(lambda: time.time() > ends, 10, what="the end of the grace period")
    after = send_event(client, K1, one_png, receiver, "/after")
    assert verifies(after, new) and not verifies(after, old)
    assert secret_of(client, K1)["previous_valid_until"] is None
    assert secret_of(client, K2)["secret"] not in (old, new)  # the other key is untouched
