"""Every request the clients make, built once for both (`Client` and `AsyncClient` only send them).

A `Call` says what to send and how to read the answer; `Retrying` decides whether and when to
send it again; `Waiting` and `Pages` hold the state of a job being waited on and of a paged
listing. None of them does I/O, so the sync and the async client share every decision and
differ only in `send`/`sleep`. A new endpoint is a function here returning a `Call`, plus one
line in each client.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import httpx

from digitq.models import Item, Job, Prediction, ProblemError, Unreachable, job_id
from digitq.multipart import Upload, multipart_body

T = TypeVar("T")
RETRY_STATUSES = frozenset({502, 503, 504})
MAX_RETRY_AFTER = 10.0  # seconds: the longest Retry-After the client waits out by itself
LONG_POLL = 20  # seconds a `Prefer: wait` request may be held (well inside the client's timeout)
PROGRESS_POLL = 1  # ... when a progress callback wants news every second


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request and how to read its answer."""

    method: str
    url: str
    parse: Callable[[httpx.Response], T]
    params: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    files: dict[str, tuple[str, bytes]] | None = None
    json: Any = None
    body: Callable[[], Iterator[bytes]] | None = None  # a fresh stream per attempt

    def options(self) -> dict[str, Any]:
        """httpx's keyword arguments, bar a streamed body (each client wraps that its own way)."""
        return {"params": self.params, "headers": self.headers, "files": self.files, "json": self.json}


def longest_hold(timeout: float | None) -> int:
    """The longest `Prefer: wait` to ask for: LONG_POLL, but well inside the client's read timeout
    (a held request must never end in the client's own timeout)."""
    return LONG_POLL if timeout is None else max(1, min(LONG_POLL, int(timeout / 2)))


def raise_for_problem(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        title = str(body.get("title") or response.reason_phrase)
        detail = str(body.get("detail") or response.text[:500])
        raise ProblemError(response.status_code, title, detail, body)
    raise ProblemError(response.status_code, response.reason_phrase, response.text[:500])


def retryable(response: httpx.Response) -> bool:
    """A transient refusal: 502/503/504, a 409 that asks to come back (a submission with this
    Idempotency-Key still being stored), a quota's 429 that asks for a short wait (a full queue
    that frees up in minutes is the caller's to handle, with the Retry-After in the error)."""
    if response.status_code in (409, 429):
        hint = retry_after_header(response)
        return hint is not None and hint <= MAX_RETRY_AFTER
    return response.status_code in RETRY_STATUSES


def retry_after_header(response: httpx.Response) -> float | None:
    try:
        return float(response.headers.get("Retry-After", ""))
    except ValueError:
        return None


def retry_after(response: httpx.Response, attempt: int) -> float:
    """Retry-After (up to MAX_RETRY_AFTER), else exponential backoff."""
    hint = retry_after_header(response)
    return backoff(attempt) if hint is None else min(max(hint, 0.0), MAX_RETRY_AFTER)


def backoff(attempt: int) -> float:
    return min(0.5 * 2**attempt, 5.0)


class Retrying:
    """The attempts of one call: `delay(outcome)` is how long to sleep before the next attempt,
    or None when `outcome` is the answer; it raises when the call has failed for good."""

    def __init__(self, base_url: object, retries: int) -> None:
        self.base_url, self.attempts, self.attempt = base_url, retries + 1, 0

    def delay(self, outcome: httpx.Response | httpx.TransportError) -> float | None:
        self.attempt += 1
        last = self.attempt >= self.attempts
        if isinstance(outcome, httpx.TransportError):
            if last:
                raise Unreachable(f"cannot reach {self.base_url}: {outcome}") from outcome
            return backoff(self.attempt - 1)
        if retryable(outcome) and not last:
            return retry_after(outcome, self.attempt - 1)
        raise_for_problem(outcome)
        return None


def _job(response: httpx.Response) -> Job:
    return Job.of(response.json(), replayed=response.headers.get("Idempotent-Replayed") == "true")


def get_job(job: Job | str, wait: int | None = None) -> Call[Job]:
    headers = {"Prefer": f"wait={wait}"} if wait else {}
    return Call("GET", f"/jobs/{job_id(job)}", _job, headers=headers)


def cancel_job(job: Job | str) -> Call[Job]:
    return Call("DELETE", f"/jobs/{job_id(job)}", _job)


def submit(
    paths: Iterable[str | Path],
    webhook: str | None = None,
    metadata: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
    upload_progress: Callable[[int, int], None] | None = None,
    wait: int | None = None,
) -> Call[Job]:
    """POST /jobs, streamed: files in blocks, folders zipped on the fly (digitq/multipart.py).
    One Idempotency-Key for every attempt, so a retry never creates a second job."""
    uploads = [Upload.of(Path(p)) for p in paths]
    if not uploads:
        raise ValueError("nothing to submit: give one or more images, zips or folders")
    fields: dict[str, str] = {}
    if webhook:
        fields["webhook"] = webhook
    if metadata:
        fields["metadata"] = json.dumps(metadata)
    boundary = uuid.uuid4().hex
    headers = {
        "Idempotency-Key": idempotency_key or str(uuid.uuid4()),
        "Content-Type": f"multipart/form-data; boundary={boundary}",
        **({"Prefer": f"wait={wait}"} if wait else {}),
    }
    body = lambda: multipart_body(boundary, fields, uploads, upload_progress)  # noqa: E731
    return Call("POST", "/jobs", _job, headers=headers, body=body)


def predict(
    image: str | Path | bytes, name: str = "image", idempotency_key: str | None = None
) -> Call[Prediction]:
    """POST /predict with an Idempotency-Key: a retry (after a 504, a 503, a dropped connection)
    is answered by the first attempt's job, never by a second one."""
    if isinstance(image, bytes):
        data, filename = image, name
    else:
        path = Path(image)
        data, filename = path.read_bytes(), path.name
    headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
    return Call(
        "POST",
        "/predict",
        lambda r: Prediction.of(r.json()),
        headers=headers,
        files={"file": (filename, data)},
    )


def label(job: Job | str, labels: dict[int, int | None] | str | Path) -> Call[dict[str, Any]]:
    """POST /jobs/{id}/labels: `{index: digit}` (None clears one), or a CSV file `name,digit`
    (names as the results show them). All or nothing: a ProblemError lists the offenders."""
    url = f"/jobs/{job_id(job)}/labels"
    if isinstance(labels, dict):
        body = [{"index": index, "digit": digit} for index, digit in labels.items()]
        return Call("POST", url, lambda r: r.json(), json={"labels": body})
    path = Path(labels)
    return Call("POST", url, lambda r: r.json(), files={"file": (path.name, path.read_bytes())})


def results_csv(job: Job | str) -> Call[None]:
    return Call("GET", f"/jobs/{job_id(job)}/results", lambda r: None, params={"format": "csv"})


@dataclass
class Page(Generic[T]):
    items: list[T]
    next: Call[Page[T]] | None


class Pages(Generic[T]):
    """A paged listing followed through its `next` links, at most `limit` entries in all."""

    def __init__(
        self, url: str, params: dict[str, Any], of: Callable[[dict[str, Any]], T], limit: int | None
    ) -> None:
        self.of, self.limit, self.seen = of, limit, 0
        self.first: Call[Page[T]] = Call("GET", url, self._page, params=params)

    def _page(self, response: httpx.Response) -> Page[T]:
        data = response.json()
        room = len(data["items"]) if self.limit is None else max(self.limit - self.seen, 0)
        items = [self.of(entry) for entry in data["items"][:room]]
        self.seen += len(items)
        done = not data.get("next") or (self.limit is not None and self.seen >= self.limit)
        return Page(items, None if done else Call("GET", data["next"], self._page))  # `next` has its query


def results(job: Job | str, status: str | None = None, page_size: int = 1000) -> Pages[Item]:
    params = {"limit": page_size, **({"status": status} if status else {})}
    return Pages(f"/jobs/{job_id(job)}/results", params, Item.of, None)


def list_jobs(status: str | None = None, limit: int | None = None, page_size: int = 100) -> Pages[Job]:
    params = {"limit": page_size, **({"status": status} if status else {})}
    return Pages("/jobs", params, Job.of, limit)


class Waiting:
    """Following a job to its end: `Prefer: wait` requests that the server holds until the job
    ends (or LONG_POLL s pass), falling back to polling with backoff when the server does not
    apply the preference (no `Preference-Applied`: an older server)."""

    def __init__(
        self, job: Job | str, timeout: float | None, poll: float, progress: bool, longest: int = LONG_POLL
    ) -> None:
        self.job = job_id(job)
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.timeout, self.delay = timeout, poll
        self.hold = min(PROGRESS_POLL, longest) if progress else longest
        self.long_polls = True  # until the server says otherwise

    def call(self) -> Call[Job]:
        hold = self.hold
        if self.deadline is not None:
            hold = max(1, min(hold, int(self.deadline - time.monotonic())))
        return Call("GET", f"/jobs/{self.job}", self._parse, headers={"Prefer": f"wait={hold}"})

    def _parse(self, response: httpx.Response) -> Job:
        self.long_polls = "Preference-Applied" in response.headers
        return _job(response)

    def after(self, current: Job) -> float | None:
        """None when the job has ended; else seconds to sleep before the next request."""
        if current.finished:
            return None
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise TimeoutError(f"job {current.id} still {current.status} after {self.timeout}s")
        if self.long_polls:
            return 0.0
        delay, self.delay = self.delay, min(self.delay * 1.5, 2.0)  # quick for small jobs, gentle for big
        return delay
