"""The client's retry decisions, on responses as the API sends them (no server needed)."""

import httpx
import pytest

from digitq.client import MAX_RETRY_AFTER, _retry_after, _retryable


def response(status: int, retry_after: str | None = None) -> httpx.Response:
    return httpx.Response(status, headers={"Retry-After": retry_after} if retry_after else {})


@pytest.mark.parametrize("status", [502, 503, 504])
def test_transient_statuses_are_retried(status: int) -> None:
    assert _retryable(response(status))


def test_a_conflict_is_retried_only_when_it_asks_to_come_back() -> None:
    assert _retryable(response(409, "1"))  # a submission with this Idempotency-Key is being stored
    assert not _retryable(response(409))  # the job was cancelled: asking again changes nothing


def test_a_quota_is_waited_out_only_when_it_asks_for_a_short_wait() -> None:
    assert _retryable(response(429, "3"))  # the rate window frees a slot in 3 s
    assert not _retryable(response(429, "30"))  # a full queue: the caller decides
    assert not _retryable(response(429))  # no hint: do not hammer


@pytest.mark.parametrize("status", [400, 401, 404, 413, 415, 422])
def test_client_errors_are_not_retried(status: int) -> None:
    assert not _retryable(response(status, "1"))


def test_the_wait_follows_retry_after_up_to_its_cap() -> None:
    assert _retry_after(response(429, "3"), 0) == 3
    assert _retry_after(response(503, "600"), 0) == MAX_RETRY_AFTER
    assert _retry_after(response(503), 2) == 2.0  # backoff without a hint
