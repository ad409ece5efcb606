"""Webhooks: a job's events, signed per Standard Webhooks, queued in Redis for the workers to send.

- A job submitted with `webhook=<url>` keeps `webhook_*` fields in its hash (url, events, and the
  delivery state shown on the job). `notify()` is called where a job starts, progresses or closes
  (the chunk task, the cancel route): it queues an event if the job asked for that type.
- An event is a hash `digitq:webhook:msg:<id>` and a member of the sorted set `digitq:webhooks:due`
  scored by when it is due. Its id is the `webhook-id` header of every attempt; terminal and
  `job.running` ids are derived from the job (`<job>.succeeded`), so a hook called twice queues
  one event. Retries are rescheduled in that set, never as Celery countdowns (a long countdown is
  redelivered at the broker's visibility timeout: celery/celery #2599, #7009).
- Workers claim due events with a lease (`claim()` moves them LEASE seconds into the future in the
  same script), so a worker killed mid-delivery loses nothing: the event comes due again and
  another worker sends it with the same id (at least once; receivers dedupe on `webhook-id`).
  The lease is longer than an attempt's deadline (worker/webhook_http.py) and renewed while the
  attempt runs (`renew()`), so a slow attempt is never claimed a second time meanwhile.
- Every key expires: events after the retry horizon, the due set a horizon after the last event,
  the progress throttle after WEBHOOK_PROGRESS_SECONDS; job fields go with the job.
- SSRF: core/webhook_addresses.py, at submit and again before every attempt, whose connection
  goes to the addresses that were checked. Signing secrets: core/webhook_secrets.py (one per API
  key). Per-receiver concurrency: core/webhook_receivers.py.
"""

import base64
import json
import logging
import math
import secrets
import time
from collections.abc import Iterable

import redis
from standardwebhooks import Webhook

from core import scripts
from core.config import Settings, get_settings
from core.jobs import TERMINAL, JobStatus
from core.webhook_state import WebhookState

log = logging.getLogger(__name__)

EVENTS = ("job.running", "job.progress", "job.succeeded", "job.failed", "job.cancelled")
DEFAULT_EVENTS = ("job.succeeded", "job.failed", "job.cancelled")
TERMINAL_EVENTS = frozenset(DEFAULT_EVENTS)
DUE = "digitq:webhooks:due"
MSG_PREFIX = "digitq:webhook:msg:"
THROTTLE_PREFIX = "digitq:webhook:progress:"


MIN_SECRET_BYTES = 24  # Standard Webhooks: secrets of 24 to 64 random bytes


def signer(settings: Settings) -> Webhook | None:
    """The signer for WEBHOOK_SECRET, or None if it is unset or unusable (too short, not base64).

    The secret itself never appears in the log line or any error.
    """
    value = settings.webhook_secret.get_secret_value() if settings.webhook_secret else ""
    if not value:
        return None
    try:
        raw = value.removeprefix("whsec_")
        if len(base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)) < MIN_SECRET_BYTES:
            raise ValueError("too short")
        return Webhook(value)
    except ValueError as exc:
        log.error(
            "WEBHOOK_SECRET is unusable (%s): it must be whsec_ and the base64 of %d or more random bytes; "
            "webhooks are off",
            "too short" if str(exc) == "too short" else "not base64",
            MIN_SECRET_BYTES,
        )
        return None


def parse_events(raw: str | None) -> list[str]:
    if not raw or not raw.strip():
        return list(DEFAULT_EVENTS)
    events = [e.strip() for e in raw.split(",") if e.strip()]
    unknown = [e for e in events if e not in EVENTS]
    if unknown:
        raise ValueError(f"unknown event(s) {', '.join(unknown)[:200]}; choose from {', '.join(EVENTS)}")
    return list(dict.fromkeys(events))


def job_fields(url: str, events: Iterable[str]) -> dict[str, str]:
    """The fields a job with a webhook starts with (the delivery state is added as it goes)."""
    return {"webhook_url": url, "webhook_events": ",".join(events), "webhook_attempts": "0"}


def horizon_seconds(settings: Settings) -> int:
    """How long an event may live: every retry with the longest jitter, plus leases and margin."""
    return int(sum(settings.webhook_retry_delays) * 1.2) + 3600


def lease_seconds(settings: Settings) -> float:
    """How long a claimed event is left to its worker before another may send it: longer than an
    attempt's deadline (the lookup included), and renewed every third of it while the attempt runs."""
    return 2 * settings.webhook_timeout_seconds + 5


def _text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")


class Outbox:
    """The Redis side of webhooks: queue, claim, reschedule and record events."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.redis = client
        self.settings = settings
        self._enqueue = scripts.register(client, "webhooks_enqueue")
        self._claim = scripts.register(client, "webhooks_claim")
        self._renew = scripts.register(client, "webhooks_renew")
        self._update = scripts.register(client, "webhooks_update")

    def enqueue(self, event_id: str, job_id: str, kind: str, now: float | None = None) -> bool:
        """Queue an event once (an id already queued is not queued again)."""
        ttl = horizon_seconds(self.settings)
        args: list[str | float] = [event_id, job_id, kind, now or time.time(), ttl, ttl]
        return self._enqueue(keys=[MSG_PREFIX + event_id, DUE], args=args) == 1

    def claim(self, count: int, now: float | None = None) -> list[str]:
        now = now or time.time()
        ids = self._claim(keys=[DUE], args=[now, now + lease_seconds(self.settings), count])
        return [_text(i) for i in ids]

    def renew(self, leases: dict[str, float], until: float) -> list[str]:
        """Extend the leases of events still being sent (id: the lease end each holds) to `until`;
        the ids renewed (an event settled meanwhile is not)."""
        if not leases:
            return []
        pairs = [v for event_id, end in leases.items() for v in (event_id, repr(end))]
        return [_text(i) for i in self._renew(keys=[DUE], args=[repr(until), *pairs])]

    def postpone(self, event_id: str, when: float) -> None:
        """Due again at `when`, not counted as an attempt (its receiver was busy)."""
        self.redis.zadd(DUE, {event_id: when}, xx=True)

    def event(self, event_id: str) -> dict[str, str]:
        return {_text(k): _text(v) for k, v in self.redis.hgetall(MSG_PREFIX + event_id).items()}

    def keep_body(self, event_id: str, body: str) -> None:
        """The first attempt's body, sent again on every retry (same id, same content)."""
        self._update(keys=[MSG_PREFIX + event_id, DUE], args=[event_id, body, "", 0])

    def finish(self, event_id: str) -> None:
        """No more attempts: delivered, refused for good, or given up."""
        self.redis.zrem(DUE, event_id)

    def retry_at(self, event_id: str, when: float) -> None:
        args: list[str | int] = [event_id, "", repr(when), horizon_seconds(self.settings)]
        self._update(keys=[MSG_PREFIX + event_id, DUE], args=args)


def notify(state: WebhookState, job_id: str, progressed: bool = False) -> None:
    """Queue the events a job asked for, after it may have started, progressed or closed.

    Called from the chunk task and the cancel route; never raises (a webhook problem must not
    fail a chunk), but logs.
    """
    try:
        _notify(state, job_id, progressed, get_settings())
    except Exception:
        log.warning("could not queue the webhook event of job %s", job_id, exc_info=True)


def _notify(state: WebhookState, job_id: str, progressed: bool, settings: Settings) -> None:
    client = state.redis
    status, url, events, gone = state.trigger(job_id)
    if not url or gone or not status:
        return
    wanted = set(events.split(","))
    outbox = Outbox(client, settings)
    if JobStatus(status) in TERMINAL:
        if f"job.{status}" in wanted:
            outbox.enqueue(f"{job_id}.{status}", job_id, f"job.{status}")
        return
    if status != JobStatus.running.value:
        return
    if "job.running" in wanted:
        outbox.enqueue(f"{job_id}.running", job_id, "job.running")
    throttle_ms = math.ceil(settings.webhook_progress_seconds * 1000)
    if (
        progressed
        and "job.progress" in wanted
        and client.set(THROTTLE_PREFIX + job_id, 1, nx=True, px=throttle_ms)
    ):
        outbox.enqueue(f"{job_id}.progress.{time.time_ns()}", job_id, "job.progress")


def payload(kind: str, created: float, job: dict) -> str:
    """Standard Webhooks' thin payload: type, timestamp, and the job as GET /jobs/{id} shows it."""
    from datetime import UTC, datetime

    when = datetime.fromtimestamp(created, UTC).isoformat().replace("+00:00", "Z")
    return json.dumps({"type": kind, "timestamp": when, "data": job}, separators=(",", ":"))


def new_secret() -> str:
    """A Standard Webhooks secret: `whsec_` + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
