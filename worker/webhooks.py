"""The worker side of webhooks: a thread in each worker's main process sends the due events.

It claims due events (with a lease: see core/webhooks.py) and posts each from a small thread
pool, so one slow receiver (up to WEBHOOK_TIMEOUT_SECONDS) does not hold the others. Outcomes:
- 2xx: delivered; a terminal event marks the job's webhook `delivered`.
- 410 Gone: the receiver wants no more; this and every later event of the job are dropped.
- anything else (another status, a timeout, a refused address): a terminal event is retried
  after WEBHOOK_RETRY_SECONDS' next step with jitter (or the receiver's Retry-After, if later);
  other events are sent once. The job shows attempts, last status and error, next attempt.
"""

import email.utils
import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import httpx

from core import metrics
from core.config import Settings
from core.jobs import JobStore
from core.webhooks import TERMINAL_EVENTS, Outbox, UnsafeURL, check_url, payload, signer

log = logging.getLogger(__name__)

SENDERS = 4  # concurrent deliveries per worker node
POLL_SECONDS = 0.5
MAX_RETRY_AFTER = 24 * 3600.0


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
        self.signer = signer(settings)
        self.http = httpx.Client(timeout=settings.webhook_timeout_seconds, follow_redirects=False)

    def _body(self, event_id: str, event: dict[str, str]) -> str | None:
        """The event's body: kept from its first attempt, else rendered from the job now."""
        if event.get("body"):
            return event["body"]
        from api.schemas import JobOut  # the job exactly as GET /jobs/{id} shows it

        job = self.store.get(event["job"])
        if job is None:
            return None
        body = payload(event["type"], float(event["created"]), JobOut.of(job).model_dump(mode="json"))
        self.outbox.keep_body(event_id, body)
        return body

    def _post(self, url: str, event_id: str, body: str) -> httpx.Response:
        if self.signer is None:
            raise RuntimeError("no usable WEBHOOK_SECRET on the workers: events cannot be signed")
        check_url(url, self.settings.webhook_allow_private)  # again: DNS may have changed
        now = datetime.now(UTC)
        headers = {
            "webhook-id": event_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": self.signer.sign(event_id, now, body),
            "content-type": "application/json",
            "user-agent": "digitq-webhooks/1",
        }
        return self.http.post(url, content=body.encode(), headers=headers)

    def deliver(self, event_id: str) -> None:
        event = self.outbox.event(event_id)
        if not event:
            self.outbox.finish(event_id)  # expired
            return
        job_id, kind = event["job"], event["type"]
        state = self.store.get(job_id)
        hook = state.webhook if state else None
        if not hook or not hook.get("url") or hook.get("gone"):
            self.outbox.finish(event_id)  # the job expired, or its receiver answered 410
            return
        body = self._body(event_id, event)
        if body is None:
            self.outbox.finish(event_id)
            return
        status: int | None = None
        retry_after: float | None = None
        try:
            response = self._post(hook["url"], event_id, body)
            status = response.status_code
            retry_after = retry_after_seconds(response.headers.get("retry-after"))
            error = "" if response.is_success else f"answered {status}"
        except UnsafeURL as exc:
            error = f"refused: {exc}"
        except (httpx.HTTPError, RuntimeError) as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        self._settle(event_id, event, kind, status, error, retry_after)

    def _count(self, outcome: str) -> None:
        try:
            metrics.webhook_attempt(self.store.redis, outcome)
        except Exception:
            log.warning("could not count a webhook attempt", exc_info=True)

    def _settle(
        self,
        event_id: str,
        event: dict[str, str],
        kind: str,
        status: int | None,
        error: str,
        retry_after: float | None,
    ) -> None:
        job_id = event["job"]
        terminal = kind in TERMINAL_EVENTS
        if not error:
            self._count("delivered")
            self.outbox.finish(event_id)
            self.store.record_webhook_attempt(job_id, status, "", None, delivered=terminal, gone=False)
            log.info("webhook %s delivered (%s)", event_id, status)
            return
        if status == 410:
            self._count("gone")
            self.outbox.finish(event_id)
            error = "410 Gone: the receiver wants no more events of this job"
            self.store.record_webhook_attempt(job_id, status, error, None, delivered=False, gone=True)
            log.info("webhook %s: receiver answered 410, no more events for job %s", event_id, job_id)
            return
        attempt = int(event.get("attempts", 0)) + 1
        delays = self.settings.webhook_retry_delays
        if not terminal or attempt > len(delays):
            self._count("gave_up" if terminal else "failed")
            self.outbox.finish(event_id)
            if terminal:
                error = f"{error}; gave up after {attempt} attempts"
            self.store.record_webhook_attempt(job_id, status, error, None, delivered=False, gone=False)
            log.warning("webhook %s not delivered, no more attempts: %s", event_id, error)
            return
        delay = delays[attempt - 1] * random.uniform(0.8, 1.2)  # jitter: receivers recovering together
        if retry_after is not None:
            delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
        when = time.time() + delay
        self._count("retried")
        self.outbox.retry_at(event_id, when)
        self.store.record_webhook_attempt(job_id, status, error, when, delivered=False, gone=False)
        log.info("webhook %s failed (%s), attempt %d; next in %.0fs", event_id, error, attempt, delay)


class Deliverer:
    """The worker main process' thread that sends due webhook events."""

    def __init__(self, store: JobStore, settings: Settings) -> None:
        self.sender = Sender(store, settings)
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(SENDERS, thread_name_prefix="digitq-webhook")
        self._free = threading.Semaphore(SENDERS)
        self._thread = threading.Thread(target=self._run, name="digitq-webhooks", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)  # unsent claims come due again

    def _send(self, event_id: str) -> None:
        try:
            self.sender.deliver(event_id)
        except Exception:
            log.warning("webhook %s: delivery failed; due again after its lease", event_id, exc_info=True)
        finally:
            self._free.release()

    def _run(self) -> None:
        while not self._stop.is_set():
            free = 0
            while self._free.acquire(blocking=False):
                free += 1
            claimed: list[str] = []
            try:
                claimed = self.sender.outbox.claim(free) if free else []
            except Exception as exc:  # Redis down: the events wait in Redis
                log.warning("webhook sweep failed: %s", exc)
            for _ in range(free - len(claimed)):
                self._free.release()
            for event_id in claimed:
                self._pool.submit(self._send, event_id)
            self._stop.wait(0.05 if claimed else POLL_SECONDS)
