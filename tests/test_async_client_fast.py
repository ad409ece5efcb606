"""`AsyncClient` over the real API app in-process (httpx's ASGITransport; a real Redis, no worker,
so jobs stay queued), and the decisions both clients share (digitq/calls.py) on answers as the
API sends them. The stack tier runs both clients against real workers (tests/test_client.py)."""

import asyncio
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from digitq import AsyncClient, Client, ProblemError
from digitq.calls import LONG_POLL, PROGRESS_POLL, Retrying, Waiting
from tests.helpers import png


def run(make_client: Callable[..., TestClient], scenario: Callable[[AsyncClient], Any], **env: str) -> Any:
    app = make_client(**env).app

    async def main() -> Any:
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
        # Host 127.0.0.1: an open API answers requests addressed to loopback names only.
        async with AsyncClient("http://127.0.0.1", transport=transport, retries=1) as dq:
            return await scenario(dq)

    return asyncio.run(main())


def test_the_async_client_has_the_clients_methods() -> None:
    public = {name for name in dir(Client) if not name.startswith("_")} - {"http", "retries"}
    assert public <= set(dir(AsyncClient))
    for name in public - {"results", "list"}:  # those two are async iterators, not coroutines
        assert inspect.iscoroutinefunction(getattr(AsyncClient, name)), name


def test_submit_follow_list_results_cancel(make_client, tmp_path: Path, digits) -> None:
    (tmp_path / "seven.png").write_bytes(png(digits[0][0]))

    async def scenario(dq: AsyncClient) -> None:
        job = await dq.submit([tmp_path / "seven.png"], metadata={"batch": "b1"})
        assert job.status == "queued" and job.counts.total == 1 and not job.replayed
        assert (await dq.get(job.id)).id == job.id
        assert [j.id async for j in dq.list()] == [job.id]
        assert [(i.name, i.status) async for i in dq.results(job)] == [("seven.png", "pending")]
        cancelled = await dq.cancel(job)
        assert cancelled.status == "cancelled"
        assert (await dq.wait(job, timeout=5)).status == "cancelled"
        again = await dq.submit([tmp_path / "seven.png"], idempotency_key="same")
        assert (await dq.submit([tmp_path / "seven.png"], idempotency_key="same")).replayed
        assert again.id != job.id

    run(make_client, scenario)


def test_a_retried_predict_makes_one_job(make_client, digits) -> None:
    """No worker: /predict answers 504; the client retries with the same Idempotency-Key."""

    async def scenario(dq: AsyncClient) -> list[str]:
        with pytest.raises(ProblemError) as timed_out:
            await dq.predict(png(digits[0][0]))
        assert timed_out.value.status == 504
        return [job.id async for job in dq.list()]

    jobs = run(make_client, scenario, PREDICT_TIMEOUT_SECONDS="0.3")
    assert len(jobs) == 1, "the retry created a second job"


def response(status: int, headers: dict[str, str] | None = None, json: Any = None) -> httpx.Response:
    return httpx.Response(status, headers=headers or {}, json=json)


def test_retries_follow_retry_after_and_are_bounded() -> None:
    retrying = Retrying("http://x", retries=2)
    assert retrying.delay(response(429, {"Retry-After": "3"})) == 3
    assert retrying.delay(response(503, {"Retry-After": "1"})) == 1
    with pytest.raises(ProblemError):  # the third answer is the last
        retrying.delay(response(503, {"Retry-After": "1"}))
    assert Retrying("http://x", retries=2).delay(response(200, json={})) is None


def job(status: str) -> dict[str, Any]:
    return {"id": "a" * 32, "status": status, "counts": {"total": 1, "done": 0, "failed": 0}}


def test_waiting_long_polls_and_falls_back_to_polling() -> None:
    waiting = Waiting("a" * 32, timeout=None, poll=0.25, progress=False)
    call = waiting.call()
    assert call.headers["Prefer"] == f"wait={LONG_POLL}"
    held = call.parse(response(200, {"Preference-Applied": f"wait={LONG_POLL}"}, job("running")))
    assert waiting.after(held) == 0  # the server held it: ask again at once
    old_server = call.parse(response(200, {}, job("running")))
    assert waiting.after(old_server) == 0.25  # it did not: poll, with backoff
    assert waiting.after(old_server) > 0.25
    assert waiting.after(call.parse(response(200, {}, job("succeeded")))) is None
    with_progress = Waiting("a" * 32, timeout=None, poll=0.25, progress=True)
    assert with_progress.call().headers["Prefer"] == f"wait={PROGRESS_POLL}"


def test_a_held_request_stays_inside_the_clients_timeout() -> None:
    """A `Prefer: wait` longer than the read timeout would end in the client's own timeout."""
    with Client("http://digitq.test", timeout=10) as dq:
        assert dq.longest_hold == 5
        waiting = Waiting("a" * 32, timeout=None, poll=0.25, progress=False, longest=dq.longest_hold)
        assert waiting.call().headers["Prefer"] == "wait=5"
    assert Client("http://digitq.test").longest_hold == LONG_POLL  # the default 60 s timeout
