"""Fast tier (real Redis, no workers): webhook fields at submit, the SSRF guard, the job's webhook
state, the events queued by the cancel route, and the generated secret."""

import stat
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from standardwebhooks import Webhook

from core.config import Settings, get_settings
from core.connections import get_job_store
from core.logs import redact, secret_values
from core.webhooks import DUE, MSG_PREFIX, new_secret
from devstack.secret_files import read_or_create
from tests.helpers import png
from tests.webhook_receiver import Receiver
from worker.webhooks import Sender

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # Standard Webhooks' example secret


@pytest.fixture
def client(make_client) -> TestClient:
    return make_client(WEBHOOK_SECRET=SECRET)


@pytest.fixture
def one_png(digits) -> bytes:
    return png(digits[0][0])


def post(client: TestClient, data: bytes, **form: str):
    return client.post("/jobs", files=[("files", ("a.png", data))], data=form)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",  # a name that resolves to loopback
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata (link-local)
        "http://100.100.100.200/",  # shared address space (another cloud's metadata)
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",  # IPv4-mapped loopback
        "http://[fd00:ec2::254]/",  # unique-local (AWS' IPv6 metadata)
        "http://0.0.0.0/hook",
        "http://224.0.0.1/hook",
    ],
)
def test_private_addresses_are_refused_at_submit(client: TestClient, one_png: bytes, url: str) -> None:
    response = post(client, one_png, webhook=url)
    assert response.status_code == 400, response.text
    assert "non-public address" in response.json()["detail"]
    assert client.get("/jobs").json()["items"] == []


def test_private_addresses_are_allowed_with_the_flag(make_client, one_png: bytes) -> None:
    client = make_client(WEBHOOK_SECRET=SECRET, WEBHOOK_ALLOW_PRIVATE="true")
    assert post(client, one_png, webhook="http://127.0.0.1:9/hook").status_code == 202


@pytest.mark.parametrize(
    ("form", "says"),
    [
        ({"webhook": "ftp://93.184.216.34/x"}, "http:// or https://"),
        ({"webhook": "http:///nohost"}, "http:// or https://"),
        ({"webhook": "http://93.184.216.34:99999/"}, "not a valid URL"),
        ({"webhook": "http://93.184.216.34/" + "a" * 2100}, "at most 2048"),
        ({"webhook": "http://93.184.216.34/", "webhook_events": "job.done"}, "unknown event(s) job.done"),
        ({"webhook_events": "job.succeeded"}, "needs a webhook URL"),
        ({"webhook": "http://no-such-host.invalid/"}, "does not resolve"),
    ],
)
def test_bad_webhook_fields_say_what_to_fix(client: TestClient, one_png: bytes, form, says) -> None:
    response = post(client, one_png, **form)
    assert response.status_code in (400, 422), response.text
    assert says in response.json()["detail"]


def test_the_job_shows_its_webhook(client: TestClient, one_png: bytes) -> None:
    url = "https://93.184.216.34/digitq?token=abc"  # a public address: accepted
    job = post(client, one_png, webhook=url).json()
    assert job["webhook"] == {
        "url": url,
        "events": ["job.succeeded", "job.failed", "job.cancelled"],
        "delivered": False,
        "attempts": 0,
        "last_status": None,
        "last_error": None,
        "next_attempt_at": None,
    }
    chosen = post(client, one_png, webhook=url, webhook_events="job.running, job.progress,job.running").json()
    assert chosen["webhook"]["events"] == ["job.running", "job.progress"]
    assert client.get("/jobs").json()["items"][0]["webhook"]["url"] == url


@pytest.mark.parametrize("secret", ["", "whsec_c2hvcnQ=", "whsec_not base64!"])
def test_without_a_usable_secret_webhooks_are_refused(make_client, one_png: bytes, secret, caplog) -> None:
    response = post(make_client(WEBHOOK_SECRET=secret), one_png, webhook="https://93.184.216.34/")
    assert response.status_code == 400 and "WEBHOOK_SECRET" in response.json()["detail"]
    assert not secret or secret not in response.text + caplog.text


def test_the_secret_is_redacted_from_logs() -> None:
    assert SECRET in secret_values(Settings(webhook_secret=SECRET))  # type: ignore[arg-type]
    assert SECRET not in redact(f"signing with {SECRET}", secret_values(Settings(webhook_secret=SECRET)))  # type: ignore[arg-type]


def test_cancel_queues_one_signed_event(
    client: TestClient, one_png: bytes, redis_client: redis.Redis
) -> None:
    job = post(client, one_png, webhook="https://93.184.216.34/").json()
    quiet = post(client, one_png, webhook="https://93.184.216.34/", webhook_events="job.succeeded").json()
    for job_id in (job["id"], quiet["id"], job["id"]):
        client.delete(f"/jobs/{job_id}")
    assert [m.decode() for m in redis_client.zrange(DUE, 0, -1)] == [f"{job['id']}.cancelled"]
    event = redis_client.hgetall(MSG_PREFIX + f"{job['id']}.cancelled")
    assert event[b"type"] == b"job.cancelled" and event[b"job"] == job["id"].encode()
    for key in (DUE, MSG_PREFIX + f"{job['id']}.cancelled"):
        assert redis_client.ttl(key) > 0  # everything webhooks keep expires


def test_make_run_generates_a_private_secret(tmp_path: Path) -> None:
    path = tmp_path / "data" / "webhook-secret"
    secret = read_or_create(path, new_secret)
    assert secret.startswith("whsec_") and stat.S_IMODE(path.stat().st_mode) == 0o600
    Webhook(secret)  # a secret standardwebhooks accepts
    assert read_or_create(path, new_secret) == secret  # kept across runs


def test_delivery_checks_the_address_again(make_client, one_png: bytes) -> None:
    """A URL accepted at submit (here: with the flag on at the API) is refused by a sender whose
    settings forbid private addresses, as when DNS changed meanwhile: nothing is sent."""
    receiver = Receiver(SECRET)
    try:
        client = make_client(WEBHOOK_SECRET=SECRET, WEBHOOK_ALLOW_PRIVATE="true")
        job = post(client, one_png, webhook=receiver.url + "/private").json()
        client.delete(f"/jobs/{job['id']}")  # queues job.cancelled
        event_id = f"{job['id']}.cancelled"
        strict = get_settings().model_copy(update={"webhook_allow_private": False})
        Sender(get_job_store(), strict).deliver(event_id)
        assert receiver.to("/private") == []
        state = client.get(f"/jobs/{job['id']}").json()["webhook"]
        assert state["attempts"] == 1 and state["last_status"] is None and state["next_attempt_at"]
        assert state["last_error"].startswith("refused_address:") and "non-public address" in state["last_error"]
        # the same event, once the address is allowed: sent, signed, with the same id
        Sender(get_job_store(), get_settings()).deliver(event_id)
        [call] = receiver.to("/private")
        assert call["verified"] and call["id"] == event_id and call["payload"]["type"] == "job.cancelled"
        assert client.get(f"/jobs/{job['id']}").json()["webhook"]["delivered"]
        exported = client.get("/metrics").text
        for outcome in ("retried", "delivered"):
            assert f'digitq_webhook_deliveries_total{{outcome="{outcome}"}} 1.0' in exported
    finally:
        receiver.close()
