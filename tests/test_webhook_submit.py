"""Fast tier (real Redis, no workers): webhook fields at submit, the SSRF guard, the job's webhook
state, the events queued by the cancel route, and the generated secret."""

import socket
import stat
import threading
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
        # IPv6 forms that carry a private IPv4 address a gateway delivers to (issue 26)
        "http://[64:ff9b::a00:1]/hook",  # NAT64: 10.0.0.1
        "http://[64:ff9b:1::a9fe:a9fe]/hook",  # local-use NAT64: 169.254.169.254
        "http://[::7f00:1]/hook",  # IPv4-compatible: 127.0.0.1
        "http://[2002:7f00:1::]/hook",  # 6to4: 127.0.0.1
        "http://[2002:a9fe:a9fe::1]/hook",  # 6to4: the metadata address
        "http://[::ffff:0:7f00:1]/hook",  # IPv4-translated: 127.0.0.1
        "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/hook",  # Teredo, client 127.0.0.1
    ],
)
def test_private_addresses_are_refused_at_submit(client: TestClient, one_png: bytes, url: str) -> None:
    response = post(client, one_png, webhook=url)
    assert response.status_code == 400, response.text
    assert "non-public address" in response.json()["detail"]
    assert client.get("/jobs").json()["items"] == []


def test_a_6to4_address_of_a_public_ipv4_is_accepted(client: TestClient, one_png: bytes) -> None:
    """The check reads the embedded address; it does not refuse every 6to4 address."""
    assert post(client, one_png, webhook="http://[2002:5db8:d822::1]/hook").status_code == 202


def test_a_slow_lookup_does_not_hold_the_submission(
    client: TestClient, one_png: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resolver that does not answer (it stands in for a slow DNS server): the submission
    answers before the lookup does, and leaves the check to the delivery."""
    release, answered = threading.Event(), threading.Event()
    real = socket.getaddrinfo

    def slow(host: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        if host == "slow-dns.example":
            release.wait(20)
            answered.set()
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow)
    try:
        response = post(client, one_png, webhook="https://slow-dns.example/hook")
        assert not answered.is_set()  # the API answered while the lookup still hangs
        assert response.status_code == 202, response.text
    finally:
        release.set()


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
        assert state["last_error"].startswith("refused_address:")
        assert "non-public address" in state["last_error"]
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
