"""Optional fields of `POST /jobs` besides the files: `metadata`, the webhook fields, `Prefer: wait`.

Each parser answers a 4xx problem that says what to fix, never a 500 (a `Prefer` it cannot read
is ignored instead, as RFC 7240 asks of preferences).
"""

import json
from typing import Annotated

from fastapi import Header

from api.problems import ProblemError
from core import webhook_addresses, webhooks
from core.config import Settings

MAX_METADATA_KEYS = 16
MAX_METADATA_CHARS = 512
MAX_WAIT_SECONDS = 60
# A webhook host's lookup at submit waits this long at most (on an API thread); a slower one is
# left to the delivery, which checks the address before every attempt anyway.
SUBMIT_LOOKUP_SECONDS = 2.0

# On every route that creates a job: a retry with the key answers with the first attempt's job.
IdempotencyKey = Annotated[
    str | None,
    Header(
        max_length=255,
        description="Any unique string; a retry with the same key answers with the same job "
        "instead of creating another (kept as long as jobs are)",
    ),
]


def _bad_metadata(detail: str) -> ProblemError:
    return ProblemError(422, "Invalid metadata", f"metadata: {detail}")


def parse_metadata(raw: str | None) -> dict[str, str]:
    """A JSON object of at most 16 string keys and string values of at most 512 characters each."""
    if raw is None or raw == "":
        return {}
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise _bad_metadata(f'not valid JSON ({exc}); send an object like {{"batch": "42"}}') from None
    if not isinstance(value, dict):
        raise _bad_metadata(f"a JSON object is needed, not {type(value).__name__}")
    if len(value) > MAX_METADATA_KEYS:
        raise _bad_metadata(f"{len(value)} keys; at most {MAX_METADATA_KEYS}")
    for key, item in value.items():
        if not isinstance(item, str):
            raise _bad_metadata(f"the value of {key[:40]!r} is {type(item).__name__}; values must be strings")
        for what, text in (("key", key), ("value", item)):
            if len(text) > MAX_METADATA_CHARS:
                raise _bad_metadata(
                    f"{what} of {len(text)} characters ({key[:40]!r}); at most {MAX_METADATA_CHARS}"
                )
    return value


def parse_webhook(url: str | None, events: str | None, settings: Settings) -> dict[str, str]:
    """The job fields of a webhook, or {}; the URL must not reach the service's own network."""
    if not url:
        if events:
            raise ProblemError(422, "Invalid webhook", "webhook_events needs a webhook URL")
        return {}
    if not settings.api_key_set and webhooks.signer(settings) is None:  # with keys: a secret per key
        detail = "webhooks are not enabled on this server (no usable WEBHOOK_SECRET); poll the job instead"
        raise ProblemError(400, "Webhooks disabled", detail)
    try:
        kinds = webhooks.parse_events(events)
    except ValueError as exc:
        raise ProblemError(422, "Invalid webhook", f"webhook_events: {exc}") from None
    try:
        webhook_addresses.check_url(url, settings.webhook_allow_private, SUBMIT_LOOKUP_SECONDS)
    except webhook_addresses.UnsafeURL as exc:
        raise ProblemError(400, "Webhook refused", f"webhook {url[:200]!r}: {exc}") from None
    except webhook_addresses.SlowLookup:
        pass  # checked again before every attempt
    return webhooks.job_fields(url, kinds)


def parse_prefer_wait(header: str | None) -> int | None:
    """Seconds to hold the request from RFC 7240's `Prefer: wait=N` (`wait` alone: the most), or None.

    At most MAX_WAIT_SECONDS. A malformed value (`wait=soon`, `wait=1.5`: delta-seconds are whole
    numbers) is ignored like any preference the server does not understand: the usual 202. Of
    several `wait`s the first counts; other preferences (`respond-async`, ...) are ignored.
    """
    for preference in (header or "").split(","):
        token, equals, value = preference.split(";")[0].strip().partition("=")
        if token.strip().lower() != "wait":
            continue
        value = value.strip().strip('"')
        if not equals:
            return MAX_WAIT_SECONDS
        return min(int(value), MAX_WAIT_SECONDS) if value.isascii() and value.isdigit() else None
    return None
