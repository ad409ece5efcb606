"""A Python client for the digitq API over httpx (no server imports: OpenAPI is the contract).

`Client` is synchronous, `AsyncClient` (digitq/async_client.py) the same methods for asyncio;
both send the requests digitq/calls.py builds, so they share every request and retry decision.

Uploads are streamed: files are read in blocks and folders are zipped on the fly into the request
body (`digitq.multipart`), so a folder of 30,000 scans never sits in memory. Every submission
(`submit`, `predict`) carries an Idempotency-Key, and a retry (a network error, a 503, a 504)
sends the same key: the server answers it with the first attempt's job instead of a second one.
429 and 503 are retried after their Retry-After (at most MAX_RETRY_AFTER s, `retries` times).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx

from digitq import calls
from digitq.calls import MAX_RETRY_AFTER, Call, Pages, Retrying, Waiting
from digitq.calls import retry_after as _retry_after
from digitq.calls import retryable as _retryable
from digitq.models import DigitqError, Item, Job, Prediction, ProblemError, Unreachable

__all__ = [
    "MAX_RETRY_AFTER", "Client", "DigitqError", "Item", "Job", "Prediction", "ProblemError", "Unreachable",
    "_retry_after", "_retryable",
]  # fmt: skip

T = TypeVar("T")
USER_AGENT = "digitq-client/0.1"


def http_options(base_url: str, api_key: str | None, timeout: float) -> dict[str, Any]:
    """What both clients give httpx: the base URL, the key as a bearer token, the timeout."""
    headers = {"User-Agent": USER_AGENT}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return {"base_url": base_url.rstrip("/"), "headers": headers, "timeout": timeout}


class Client:
    """`Client("http://127.0.0.1:8000", api_key="...")`; use as a context manager or call close()."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float = 60.0,
        retries: int = 3,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.retries = retries
        self.longest_hold = calls.longest_hold(timeout)  # Prefer: wait, inside the read timeout
        self.http = httpx.Client(transport=transport, **http_options(base_url, api_key, timeout))

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    # The one place requests go out: network errors become Unreachable, error statuses ProblemError.
    def _call(self, call: Call[T]) -> T:
        retrying = Retrying(self.http.base_url, self.retries)
        while True:
            outcome: httpx.Response | httpx.TransportError
            try:
                content = call.body() if call.body else None  # a retry streams the files again
                outcome = self.http.request(call.method, call.url, content=content, **call.options())
            except httpx.TransportError as exc:
                outcome = exc
            delay = retrying.delay(outcome)
            if delay is None:
                assert isinstance(outcome, httpx.Response)
                return call.parse(outcome)
            time.sleep(delay)

    def _pages(self, pages: Pages[T]) -> Iterator[T]:
        page: Call[calls.Page[T]] | None = pages.first
        while page is not None:
            found = self._call(page)
            yield from found.items
            page = found.next

    def submit(
        self,
        paths: Iterable[str | Path],
        wait: bool = False,
        webhook: str | None = None,
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        upload_progress: Callable[[int, int], None] | None = None,
        progress: Callable[[Job], None] | None = None,
    ) -> Job:
        """Upload images, zips and folders (zipped on the fly) as one job.

        `upload_progress(sent_bytes, estimated_total)` follows the upload; with `wait=True` the call
        returns the finished job (`Prefer: wait`, then `wait()`), `progress(job)` following it. A
        network error mid-upload retries with the same Idempotency-Key: never a second job.
        """
        held = self.longest_hold if wait and progress is None else None
        job = self._call(calls.submit(paths, webhook, metadata, idempotency_key, upload_progress, held))
        return self.wait(job, progress=progress) if wait and not job.finished else job

    def get(self, job: Job | str) -> Job:
        return self._call(calls.get_job(job))

    def wait(
        self,
        job: Job | str,
        progress: Callable[[Job], None] | None = None,
        timeout: float | None = None,
        poll: float = 0.25,
    ) -> Job:
        """Until the job ends (succeeded, failed, cancelled): the server holds each request until
        then (`Prefer: wait`), else the client polls; `progress(job)` about every second."""
        waiting = Waiting(job, timeout, poll, progress is not None, self.longest_hold)
        while True:
            current = self._call(waiting.call())
            if progress:
                progress(current)
            delay = waiting.after(current)
            if delay is None:
                return current
            time.sleep(delay)

    def results(self, job: Job | str, status: str | None = None, page_size: int = 1000) -> Iterator[Item]:
        """Every item in input order, following `next` pages (`status="failed"`: only those)."""
        return self._pages(calls.results(job, status, page_size))

    def download_csv(self, job: Job | str, out: IO[bytes]) -> None:
        """Stream every item as the server's CSV into `out` (not retried: part may be written)."""
        call = calls.results_csv(job)
        try:
            with self.http.stream(call.method, call.url, **call.options()) as response:
                if not response.is_success:
                    response.read()
                    calls.raise_for_problem(response)
                for block in response.iter_bytes():
                    out.write(block)
        except httpx.TransportError as exc:
            raise Unreachable(f"cannot reach {self.http.base_url}: {exc}") from exc

    def cancel(self, job: Job | str) -> Job:
        return self._call(calls.cancel_job(job))

    def label(self, job: Job | str, labels: dict[int, int | None] | str | Path) -> dict[str, Any]:
        """Record the right digits: `{index: digit}` (None clears one), or a CSV file `name,digit`.
        All or nothing: a ProblemError lists the offenders."""
        return self._call(calls.label(job, labels))

    def list(
        self, status: str | None = None, limit: int | None = None, page_size: int = 100
    ) -> Iterator[Job]:
        """The caller's jobs, newest first, following `next` pages; at most `limit` when given."""
        return self._pages(calls.list_jobs(status, limit, page_size))

    def predict(self, image: str | Path | bytes, name: str = "image") -> Prediction:
        """One image, answered inline (`POST /predict`); retries answer with the same job."""
        return self._call(calls.predict(image, name))
