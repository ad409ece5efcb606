"""`AsyncClient`: `Client`'s methods for asyncio, sending the same calls (digitq/calls.py).

    async with AsyncClient("http://127.0.0.1:8000", api_key="...") as dq:
        job = await dq.submit(["scans/"], wait=True)
        async for item in dq.results(job):
            print(item.name, item.digit)

Uploads stream like the sync client's; the files are read in 64 KiB blocks on the event loop
(short reads of local files), the network part is asynchronous.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx

from digitq import calls
from digitq.calls import Call, Pages, Retrying, Waiting
from digitq.client import http_options
from digitq.models import Item, Job, Prediction, Unreachable

T = TypeVar("T")


async def _stream(blocks: Iterator[bytes]) -> AsyncIterator[bytes]:
    for block in blocks:
        yield block


class AsyncClient:
    """`AsyncClient("http://127.0.0.1:8000", api_key="...")`; `async with`, or `await close()`."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float = 60.0,
        retries: int = 3,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.retries = retries
        self.longest_hold = calls.longest_hold(timeout)  # Prefer: wait, inside the read timeout
        self.http = httpx.AsyncClient(transport=transport, **http_options(base_url, api_key, timeout))

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.http.aclose()

    async def _call(self, call: Call[T]) -> T:
        retrying = Retrying(self.http.base_url, self.retries)
        while True:
            outcome: httpx.Response | httpx.TransportError
            try:
                content = _stream(call.body()) if call.body else None
                outcome = await self.http.request(call.method, call.url, content=content, **call.options())
            except httpx.TransportError as exc:
                outcome = exc
            delay = retrying.delay(outcome)
            if delay is None:
                assert isinstance(outcome, httpx.Response)
                return call.parse(outcome)
            await asyncio.sleep(delay)

    async def _pages(self, pages: Pages[T]) -> AsyncIterator[T]:
        page: Call[calls.Page[T]] | None = pages.first
        while page is not None:
            found = await self._call(page)
            for item in found.items:
                yield item
            page = found.next

    async def submit(
        self,
        paths: Iterable[str | Path],
        wait: bool = False,
        webhook: str | None = None,
        metadata: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
        upload_progress: Callable[[int, int], None] | None = None,
        progress: Callable[[Job], None] | None = None,
    ) -> Job:
        """`Client.submit`."""
        held = self.longest_hold if wait and progress is None else None
        job = await self._call(calls.submit(paths, webhook, metadata, idempotency_key, upload_progress, held))
        return await self.wait(job, progress=progress) if wait and not job.finished else job

    async def get(self, job: Job | str) -> Job:
        return await self._call(calls.get_job(job))

    async def wait(
        self,
        job: Job | str,
        progress: Callable[[Job], None] | None = None,
        timeout: float | None = None,
        poll: float = 0.25,
    ) -> Job:
        """`Client.wait`."""
        waiting = Waiting(job, timeout, poll, progress is not None, self.longest_hold)
        while True:
            current = await self._call(waiting.call())
            if progress:
                progress(current)
            delay = waiting.after(current)
            if delay is None:
                return current
            await asyncio.sleep(delay)

    def results(
        self, job: Job | str, status: str | None = None, page_size: int = 1000
    ) -> AsyncIterator[Item]:
        """`Client.results`: `async for item in dq.results(job)`."""
        return self._pages(calls.results(job, status, page_size))

    async def download_csv(self, job: Job | str, out: IO[bytes]) -> None:
        """`Client.download_csv`."""
        call = calls.results_csv(job)
        try:
            async with self.http.stream(call.method, call.url, **call.options()) as response:
                if not response.is_success:
                    await response.aread()
                    calls.raise_for_problem(response)
                async for block in response.aiter_bytes():
                    out.write(block)
        except httpx.TransportError as exc:
            raise Unreachable(f"cannot reach {self.http.base_url}: {exc}") from exc

    async def cancel(self, job: Job | str) -> Job:
        return await self._call(calls.cancel_job(job))

    async def label(self, job: Job | str, labels: dict[int, int | None] | str | Path) -> dict[str, Any]:
        """Record the right digits (see `Client.label`)."""
        return await self._call(calls.label(job, labels))

    def list(
        self, status: str | None = None, limit: int | None = None, page_size: int = 100
    ) -> AsyncIterator[Job]:
        """`Client.list`: `async for job in dq.list()`."""
        return self._pages(calls.list_jobs(status, limit, page_size))

    async def predict(self, image: str | Path | bytes, name: str = "image") -> Prediction:
        """`Client.predict`."""
        return await self._call(calls.predict(image, name))
