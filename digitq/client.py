"""A Python client for the digitq API over httpx (no server imports: OpenAPI is the contract).

Uploads are streamed: files are read in blocks and folders are zipped on the fly into the request
body (`digitq.multipart`), so a folder of 30,000 scans never sits in memory. Every submission
carries an Idempotency-Key, and a submission that failed on the network is retried with the same
key: the server answers a retry with the first attempt's job instead of creating a second one.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import httpx

from digitq.multipart import Upload, multipart_body

FINISHED = frozenset({"succeeded", "failed", "cancelled", "expired"})
RETRY_STATUSES = frozenset({409, 502, 503, 504})  # 409: the first attempt is still storing
MAX_RETRY_AFTER = 10.0  # seconds: the longest Retry-After the client waits out by itself


class DigitqError(Exception):
    """Anything the client raises."""


class ProblemError(DigitqError):
    """The server answered with an RFC 9457 problem (or another error status)."""

    def __init__(self, status: int, title: str, detail: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status} {title}: {detail}")
        self.status, self.title, self.detail, self.body = status, title, detail, body or {}


class Unreachable(DigitqError):
    """The server could not be reached (connection refused, DNS, timeouts) after retries."""


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


@dataclass(frozen=True)
class Counts:
    total: int
    done: int
    failed: int


@dataclass(frozen=True)
class Job:
    id: str
    status: str
    counts: Counts
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    expires_at: datetime | None = None
    model_version: str | None = None
    error: str | None = None
    metadata: dict[str, Any] | None = None
    replayed: bool = False  # the server answered a retried submission with this earlier job
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @classmethod
    def of(cls, data: dict[str, Any], replayed: bool = False) -> Job:
        counts = data.get("counts") or {}
        return cls(
            id=data["id"],
            status=data["status"],
            counts=Counts(counts.get("total", 0), counts.get("done", 0), counts.get("failed", 0)),
            created_at=_time(data.get("created_at")),
            started_at=_time(data.get("started_at")),
            finished_at=_time(data.get("finished_at")),
            expires_at=_time(data.get("expires_at")),
            model_version=data.get("model_version"),
            error=data.get("error"),
            metadata=data.get("metadata"),
            replayed=replayed,
            raw=data,
        )


@dataclass(frozen=True)
class Item:
    index: int
    name: str
    status: str  # pending, done or failed
    digit: int | None = None
    confidence: float | None = None
    low_confidence: bool = False
    error: str | None = None
    label: int | None = None  # the digit a person gave it (`Client.label`)

    @classmethod
    def of(cls, data: dict[str, Any]) -> Item:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in names})

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True)
class Prediction:
    digit: int
    confidence: float
    low_confidence: bool
    model_version: str | None = None
    job_id: str | None = None

    @classmethod
    def of(cls, data: dict[str, Any]) -> Prediction:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in names})


def _job_id(job: Job | str) -> str:
    return job.id if isinstance(job, Job) else job


def _raise_for_problem(response: httpx.Response) -> None:
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
        headers = {"User-Agent": "digitq-client/0.1"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.retries = retries
        self.http = httpx.Client(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    # The one place requests go out: network errors become Unreachable, error statuses ProblemError.
    def _request(self, method: str, url: str, retry: bool = True, **kwargs: Any) -> httpx.Response:
        attempts = self.retries + 1 if retry else 1
        for attempt in range(attempts):
            try:
                response = self.http.request(method, url, **kwargs)
            except httpx.TransportError as exc:
                if attempt + 1 >= attempts:
                    raise Unreachable(f"cannot reach {self.http.base_url}: {exc}") from exc
                time.sleep(min(0.5 * 2**attempt, 5))
                continue
            if _retryable(response) and attempt + 1 < attempts:
                time.sleep(_retry_after(response, attempt))
                continue
            _raise_for_problem(response)
            return response
        raise AssertionError("unreachable")  # pragma: no cover

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
        returns the finished job, `progress(job)` following it. A network error mid-upload retries
        with the same Idempotency-Key, so it never creates a second job.
        """
        uploads = [Upload.of(Path(p)) for p in paths]
        if not uploads:
            raise ValueError("nothing to submit: give one or more images, zips or folders")
        fields: dict[str, str] = {}
        if webhook:
            fields["webhook"] = webhook
        if metadata:
            fields["metadata"] = json.dumps(metadata)
        key = idempotency_key or str(uuid.uuid4())
        boundary = uuid.uuid4().hex

        def body() -> Iterator[bytes]:  # a fresh stream per attempt: a retry re-reads the files
            return multipart_body(boundary, fields, uploads, upload_progress)

        response = self._request(
            "POST",
            "/jobs",
            content=_Replayable(body),
            headers={
                "Idempotency-Key": key,
                "Content-Type": f"multipart/form-data; boundary={boundary}",
            },
        )
        job = Job.of(response.json(), replayed=response.headers.get("Idempotent-Replayed") == "true")
        return self.wait(job, progress=progress) if wait else job

    def get(self, job: Job | str) -> Job:
        return Job.of(self._request("GET", f"/jobs/{_job_id(job)}").json())

    def wait(
        self,
        job: Job | str,
        progress: Callable[[Job], None] | None = None,
        timeout: float | None = None,
        poll: float = 0.25,
    ) -> Job:
        """Poll until the job finishes (succeeded, failed, cancelled); `progress(job)` on each poll."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = poll
        while True:
            current = self.get(job)
            if progress:
                progress(current)
            if current.finished:
                return current
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {current.id} still {current.status} after {timeout}s")
            time.sleep(delay)
            delay = min(delay * 1.5, 2.0)  # quick for small jobs, gentle on the server for big ones

    def results(self, job: Job | str, status: str | None = None, page_size: int = 1000) -> Iterator[Item]:
        """Every item in input order, following `next` pages (`status="failed"`: only those)."""
        url: str | None = f"/jobs/{_job_id(job)}/results"
        params: dict[str, Any] | None = {"limit": page_size, **({"status": status} if status else {})}
        while url:
            page = self._request("GET", url, params=params).json()
            for data in page["items"]:
                yield Item.of(data)
            url, params = page.get("next"), None  # `next` carries its own query

    def download_csv(self, job: Job | str, out: IO[bytes]) -> None:
        """Stream every item as the server's CSV into `out`."""
        url = f"/jobs/{_job_id(job)}/results"
        try:
            with self.http.stream("GET", url, params={"format": "csv"}) as response:
                if not response.is_success:
                    response.read()
                    _raise_for_problem(response)
                for block in response.iter_bytes():
                    out.write(block)
        except httpx.TransportError as exc:  # not retried: part of the file may be written already
            raise Unreachable(f"cannot reach {self.http.base_url}: {exc}") from exc

    def cancel(self, job: Job | str) -> Job:
        return Job.of(self._request("DELETE", f"/jobs/{_job_id(job)}").json())

    def list(
        self, status: str | None = None, limit: int | None = None, page_size: int = 100
    ) -> Iterator[Job]:
        """The caller's jobs, newest first, following `next` pages; at most `limit` when given."""
        url: str | None = "/jobs"
        params: dict[str, Any] | None = {"limit": page_size, **({"status": status} if status else {})}
        seen = 0
        while url:
            page = self._request("GET", url, params=params).json()
            for data in page["items"]:
                if limit is not None and seen >= limit:
                    return
                seen += 1
                yield Job.of(data)
            url, params = page.get("next"), None

    def label(self, job: Job | str, labels: dict[int, int | None] | str | Path) -> dict[str, Any]:
        """Record the right digits: `{index: digit}` (None clears one), or a CSV file `name,digit`
        (names as the results show them). All or nothing: a ProblemError lists the offenders."""
        url = f"/jobs/{_job_id(job)}/labels"
        if isinstance(labels, dict):
            body = [{"index": index, "digit": digit} for index, digit in labels.items()]
            return self._request("POST", url, json={"labels": body}).json()
        path = Path(labels)
        return self._request("POST", url, files={"file": (path.name, path.read_bytes(), "text/csv")}).json()

    def predict(self, image: str | Path | bytes, name: str = "image") -> Prediction:
        """One image, answered inline (`POST /predict`)."""
        if isinstance(image, bytes):
            data, filename = image, name
        else:
            path = Path(image)
            data, filename = path.read_bytes(), path.name
        response = self._request("POST", "/predict", files={"file": (filename, data)})
        return Prediction.of(response.json())


class _Replayable:
    """An iterable request body that starts over on each iteration (httpx re-iterates on retry)."""

    def __init__(self, make: Callable[[], Iterator[bytes]]) -> None:
        self.make = make

    def __iter__(self) -> Iterator[bytes]:
        return self.make()


def _retryable(response: httpx.Response) -> bool:
    """A transient refusal; a quota's 429 only when it asks for a short wait (a full queue that
    frees up in minutes is the caller's to handle, with the Retry-After in the error)."""
    if response.status_code == 429:
        try:
            return float(response.headers.get("Retry-After", "")) <= MAX_RETRY_AFTER
        except ValueError:
            return False
    return response.status_code in RETRY_STATUSES


def _retry_after(response: httpx.Response, attempt: int) -> float:
    try:
        return min(float(response.headers.get("Retry-After", "")), MAX_RETRY_AFTER)
    except ValueError:
        return min(0.5 * 2**attempt, 5)
