"""The worker side of webhooks: each worker's main process sends the due events.

A duty (worker/scheduler.py) claims due events (with a lease, renewed by another while their
attempts run: see core/webhooks.py) and posts each from a small thread pool. An attempt ends by
WEBHOOK_TIMEOUT_SECONDS by the clock and reads a few KiB of the answer (worker/webhook_http.py); at
most WEBHOOK_MAX_PER_RECEIVER attempts per receiver run at once across the nodes
(core/webhook_receivers.py), so a slow receiver holds a few senders, never all. Each event is
signed with its job owner's secret (core/webhook_secrets.py).
Outcomes:
- 2xx: delivered; a terminal event marks the job's webhook `delivered`.
- 410 Gone: the receiver wants no more; this and every later event of the job are dropped.
- anything else (another status, a timeout, a refused address): a terminal event is retried
  after WEBHOOK_RETRY_SECONDS' next step with jitter (or the receiver's Retry-After, if later);
  other events are sent once. The job shows attempts, last status, the error's class, next attempt.
- the receiver at its cap: the event is due again a moment later; not an attempt.
"""

import email.utils
import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from core import metrics
from core.config import Settings
from core.job_json import JobOut  # the job exactly as GET /jobs/{id} shows it
from core.jobs import JobStore
from core.webhook_addresses import UnsafeURL, parse
from core.webhook_receivers import ReceiverSlots, receiver_key
from core.webhook_secrets import NoSecret, SigningSecrets
from core.webhook_state import WebhookState
from core.webhooks import TERMINAL_EVENTS, Outbox, lease_seconds, payload
from worker import webhook_http

log = logging.getLogger(__name__)

SENDERS = 4  # concurrent deliveries per worker node
MAX_RETRY_AFTER = 24 * 3600.0
BUSY_SECONDS = 1.0  # an event whose receiver is at its cap is due again after this (x 0.5-1.5)


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds or an HTTP date (RFC 9110), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class Sender:
    def __init__(self, store: JobStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.outbox = Outbox(store.redis, settings)
        self.secrets = SigningSecrets(store.redis, settings)
        self.slots = ReceiverSlots(store.redis, settings)
        self.hooks = WebhookState(store.redis)  # the delivery state shown on the job
        self._holding: dict[str, str] = {}  # event id: its receiver's slot key, while it is sent
        self._lock = threading.Lock()

    def _body(self, event_id: str, event: dict[str, str]) -> str | None:
        """The event's body: kept from its first attempt, else rendered from the job now."""
        if event.get("body"):
            return event["body"]
        job = self.store.get(event["job"])
        if job is None:
            return None
        body = payload(event["type"], float(event["created"]), JobOut.of(job).model_dump(mode="json"))
        self.outbox.keep_body(event_id, body)
        return body

    def _post(self, url: str, event_id: str, body: str, owner: str | None) -> webhook_http.Answer:
        now = datetime.now(UTC)
        try:
            signature = self.secrets.signature(owner, event_id, now, body)
        except NoSecret:
            return webhook_http.Answer(error="not_signed")
        headers = {
            "webhook-id": event_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": signature,
            "content-type": "application/json",
            "user-agent": "digitq-webhooks/1",
        }
        settings = self.settings
        return webhook_http.post(
            url, body.encode(), headers, settings.webhook_timeout_seconds, settings.webhook_allow_private
        )

    def deliver(self, event_id: str) -> None:
        event = self.outbox.event(event_id)
        if not event:
            self.outbox.finish(event_id)  # expired
            return
        job_id, kind = event["job"], event["type"]
        state = self.store.get(job_id)
        hook = state.webhook if state else None
        if not state or not hook or not hook.get("url") or hook.get("gone"):
            self.outbox.finish(event_id)  # the job expired, or its receiver answered 410
            return
        try:
            slot = receiver_key(*parse(hook["url"]))
        except UnsafeURL:
            self._settle(event_id, event, kind, webhook_http.Answer(error="invalid_url"))
            return
        if not self.slots.take(slot, event_id):
            when = time.time() + BUSY_SECONDS * random.uniform(0.5, 1.5)
            self.outbox.postpone(event_id, when)
            log.debug("webhook %s: its receiver is at its cap; due again in a moment", event_id)
            return
        with self._lock:
            self._holding[event_id] = slot
        try:
            body = self._body(event_id, event)
            if body is None:
                self.outbox.finish(event_id)
                return
            self._settle(event_id, event, kind, self._post(hook["url"], event_id, body, state.owner))
        finally:
            with self._lock:
                self._holding.pop(event_id, None)
            self.slots.give_back(slot, event_id)

    def renew_slots(self) -> None:
        """Keep the receiver slots of the attempts still running."""
        with self._lock:
            holding = list(self._holding.items())
        for event_id, slot in holding:
            self.slots.renew(slot, event_id)

    def _count(self, outcome: str) -> None:
        try:
            metrics.webhook_attempt(self.store.redis, outcome)
        except Exception:
            log.warning("could not count a webhook attempt", exc_info=True)

    def _settle(self, event_id: str, event: dict[str, str], kind: str, answer: webhook_http.Answer) -> None:
        job_id = event["job"]
        status = answer.status
        error = webhook_http.describe(answer.error, status) if answer.error else ""
        retry_after = retry_after_seconds(answer.retry_after)
        terminal = kind in TERMINAL_EVENTS
        if not error:
            self._count("delivered")
            self.outbox.finish(event_id)
            self.hooks.record_attempt(job_id, status, "", None, delivered=terminal, gone=False)
            log.info("webhook %s delivered (%s)", event_id, status)
            return
        if status == 410:
            self._count("gone")
            self.outbox.finish(event_id)
            error = "410 Gone: the receiver wants no more events of this job"
            self.hooks.record_attempt(job_id, status, error, None, delivered=False, gone=True)
            log.info("webhook %s: receiver answered 410, no more events for job %s", event_id, job_id)
            return
        attempt = int(event.get("attempts", 0)) + 1
        delays = self.settings.webhook_retry_delays
        if not terminal or attempt > len(delays):
            self._count("gave_up" if terminal else "failed")
            self.outbox.finish(event_id)
            if terminal:
                error = f"{error}; gave up after {attempt} attempts"
            self.hooks.record_attempt(job_id, status, error, None, delivered=False, gone=False)
            log.warning("webhook %s not delivered, no more attempts: %s", event_id, error)
            return
        delay = delays[attempt - 1] * random.uniform(0.8, 1.2)  # jitter: receivers recovering together
        if retry_after is not None:
            delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
        when = time.time() + delay
        self._count("retried")
        self.outbox.retry_at(event_id, when)
        self.hooks.record_attempt(job_id, status, error, when, delivered=False, gone=False)
        log.info("webhook %s failed (%s), attempt %d; next in %.0fs", event_id, error, attempt, delay)


class Deliverer:
    """Sends due webhook events from a small pool of senders, and renews the leases of those being
    sent, so none is claimed again while its attempt runs. Its `claim` and `renew` are duties of
    the worker main process (worker/scheduler.py)."""

    def __init__(self, store: JobStore, settings: Settings) -> None:
        self.sender = Sender(store, settings)
        self.lease = lease_seconds(settings)
        self._leases: dict[str, float] = {}  # event id: the lease end it holds, while it is sent
        self._lock = threading.Lock()
        # A pool, not a duty: sends run concurrently, each up to WEBHOOK_TIMEOUT_SECONDS.
        self._pool = ThreadPoolExecutor(SENDERS, thread_name_prefix="digitq-webhook")
        self._free = threading.Semaphore(SENDERS)

    def stop(self, wait: bool = False) -> None:
        """Send no more; `wait` for the attempts in flight to end (else they come due again)."""
        self._pool.shutdown(wait=wait, cancel_futures=True)  # unsent claims come due again

    def _send(self, event_id: str) -> None:
        try:
            self.sender.deliver(event_id)
        except Exception:
            log.warning("webhook %s: delivery failed; due again after its lease", event_id, exc_info=True)
        finally:
            with self._lock:
                self._leases.pop(event_id, None)
            self._free.release()

    def renew(self) -> None:
        """Extend the leases (and receiver slots) of the events being sent."""
        with self._lock:
            leases = dict(self._leases)
        until = time.time() + self.lease
        renewed = self.sender.outbox.renew(leases, until)
        self.sender.renew_slots()
        with self._lock:
            for event_id in renewed:
                if event_id in self._leases:  # not settled meanwhile
                    self._leases[event_id] = until

    def claim(self) -> int:
        """Claim as many due events as there are free senders and hand them over; returns how many."""
        free = 0
        while self._free.acquire(blocking=False):
            free += 1
        claimed: list[str] = []
        now = time.time()
        try:
            claimed = self.sender.outbox.claim(free, now) if free else []
        finally:  # Redis down: the events wait in Redis, the senders stay free
            for _ in range(free - len(claimed)):
                self._free.release()
        with self._lock:
            self._leases.update((event_id, now + self.lease) for event_id in claimed)
        for event_id in claimed:
            self._pool.submit(self._send, event_id)
        return len(claimed)
