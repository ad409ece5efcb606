"""JobStore.record on a real Redis (fast tier): the one script that stores a chunk's results
counts its metrics, and, for a one-trip chunk (core/queue.py), starts its job too; a small job's
close is published with its answer (api/waiting.py)."""

import json

import pytest
import redis

from core import fleet, metrics
from core.job_keys import CLOSED_CHANNEL
from core.jobs import ANSWER_MAX_ITEMS, ItemResult, JobStatus, JobStore, new_job_id


@pytest.fixture
def store(redis_client: redis.Redis) -> JobStore:
    redis_client.flushall()
    return JobStore(redis_client, 3600)


def _figures(client: redis.Redis, prefix: str) -> dict[str, float]:
    raw = client.hgetall(metrics.KEY)
    return {k.decode(): float(v) for k, v in raw.items() if k.decode().startswith(prefix)}


@pytest.mark.parametrize("seconds", [0.0, 0.004, 0.01, 0.0100001, 0.3, 29.9, 31.0])
def test_the_scripts_observations_are_those_of_the_python_helper(
    store: JobStore, redis_client: redis.Redis, seconds: float
) -> None:
    """Bucket edges included: the Lua `observe` names the fields and picks the bucket as `_observe`."""
    job_id = new_job_id()
    store.create(job_id, ["a.png", "b.png"])
    store.record(job_id, [ItemResult(0, 1, 0.9), ItemResult(1, error="bad")], seconds=seconds)
    by_script = {**_figures(redis_client, "chunk_seconds"), **_figures(redis_client, "item_seconds")}
    assert _figures(redis_client, "items_") == {"items_processed": 2, "items_failed": 1}
    redis_client.delete(metrics.KEY)
    pipe = redis_client.pipeline()
    metrics._observe(pipe, "chunk_seconds", seconds)
    metrics._observe(pipe, "item_seconds", seconds / 2, 2)
    pipe.execute()
    by_python = {**_figures(redis_client, "chunk_seconds"), **_figures(redis_client, "item_seconds")}
    assert by_script.keys() == by_python.keys()
    assert by_script == pytest.approx(by_python)


def test_a_redelivered_chunk_counts_nothing_twice(store: JobStore, redis_client: redis.Redis) -> None:
    job_id = new_job_id()
    store.create(job_id, ["a.png", "b.png"])
    results = [ItemResult(0, 1, 0.9), ItemResult(1, 2, 0.8)]
    assert store.record(job_id, results, seconds=0.02).closed_job
    again = store.record(job_id, results, seconds=0.02)
    assert (again.added, again.closed_job) == (0, False)
    assert _figures(redis_client, "items_processed") == {"items_processed": 2}
    assert _figures(redis_client, "chunk_seconds:count") == {"chunk_seconds:count": 1}
    assert _figures(redis_client, "job_seconds:count") == {"job_seconds:count": 1}
    assert _figures(redis_client, "jobs_finished") == {"jobs_finished:succeeded": 1}


def test_a_one_trip_record_starts_stores_and_closes_its_job(store: JobStore) -> None:
    job_id = new_job_id()
    store.create(job_id, ["a.png"])
    recorded = store.record(job_id, [ItemResult(0, 7, 0.99)], start=(1234.5, "v1"), follow=True)
    assert (recorded.added, recorded.closed_job, recorded.status, recorded.moved) == (
        1,
        True,
        JobStatus.succeeded,
        None,
    )
    job = store.get(job_id)
    assert job is not None
    assert (job.model_version, job.started_at, job.status) == ("v1", 1234.5, JobStatus.succeeded)


def test_a_one_trip_record_after_a_reload_writes_nothing_and_names_the_fleets_version(
    store: JobStore, redis_client: redis.Redis
) -> None:
    job_id = new_job_id()
    store.create(job_id, ["a.png"])
    redis_client.set(fleet.CURRENT_KEY, "v2")
    moved = store.record(job_id, [ItemResult(0, 7, 0.99)], start=(1.0, "v1"), follow=True)
    assert (moved.moved, moved.added) == ("v2", 0)
    job = store.get(job_id)
    assert job is not None and (job.status, job.model_version, job.done) == (JobStatus.queued, None, 0)
    assert not redis_client.exists(metrics.KEY)
    # A process that could not switch records on its own version, without following.
    kept = store.record(job_id, [ItemResult(0, 7, 0.99)], start=(1.0, "v1"))
    assert kept.closed_job and store.get(job_id).model_version == "v1"  # type: ignore[union-attr]


def test_a_one_trip_record_of_a_cancelled_job_writes_nothing(store: JobStore) -> None:
    job_id = new_job_id()
    store.create(job_id, ["a.png"])
    assert store.cancel(job_id)
    recorded = store.record(job_id, [ItemResult(0, 7, 0.99)], start=(1.0, "v1"))
    assert (recorded.added, recorded.closed_job, recorded.status) == (0, False, JobStatus.cancelled)
    job = store.get(job_id)
    assert job is not None and (job.done, job.model_version) == (0, None)


def _published(redis_client: redis.Redis, record) -> bytes:
    """What the closed channel carried while `record()` ran."""
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(CLOSED_CHANNEL)
    pubsub.get_message(timeout=1)  # the subscribe confirmation
    record()
    message = pubsub.get_message(timeout=5)
    pubsub.close()
    assert message is not None, "nothing published"
    return message["data"]


def test_a_small_job_closed_in_one_call_is_published_with_its_answer(
    store: JobStore, redis_client: redis.Redis
) -> None:
    job_id = new_job_id()
    store.create(job_id, ["a.png", "b.png"])
    results = [ItemResult(0, 7, 0.99), ItemResult(1, error="not an image")]
    data = _published(redis_client, lambda: store.record(job_id, results, start=(1.0, "v1")))
    published_id, _, answer = data.partition(b" ")
    assert published_id.decode() == job_id
    assert json.loads(answer) == {
        "model_version": "v1",
        "results": [json.loads(r.to_json()) for r in results],
    }


@pytest.mark.parametrize(
    "case", ["closed over two calls", "results out of item order", "too many items", "an internal error"]
)
def test_a_close_without_every_result_in_order_is_published_as_its_id_alone(
    store: JobStore, redis_client: redis.Redis, case: str
) -> None:
    job_id = new_job_id()
    total = ANSWER_MAX_ITEMS + 1 if case == "too many items" else 2
    store.create(job_id, [f"{i}.png" for i in range(total)])
    results = [ItemResult(i, 1, 0.9) for i in range(total)]
    if case == "closed over two calls":
        store.record(job_id, results[:1])
        results = results[1:]
    elif case == "results out of item order":
        results.reverse()
    elif case == "an internal error":
        store.fail(job_id, "some items could not be processed")
    data = _published(redis_client, lambda: store.record(job_id, results))
    assert data == job_id.encode()  # the waiter reads the job and its results


def test_a_redelivered_chunk_changes_no_result(store: JobStore) -> None:
    """The same chunk twice (as after a visibility-timeout redelivery): each item's first result
    stays. Redeliveries themselves, with workers killed: tests/test_reliability.py."""
    from core.jobs import Recorded

    store.create("dup", ["a.png", "b.png"])
    first = [ItemResult(0, 3, 0.9), ItemResult(1, error="not a readable image")]
    recorded = store.record("dup", first)
    assert (recorded.added, recorded.failed, recorded.closed_job) == (2, 1, True)
    assert recorded.status == "succeeded" and recorded.job_seconds is not None
    again = store.record("dup", [ItemResult(0, 5, 0.1), ItemResult(1, 1, 0.8)])
    assert again == Recorded(0, 0, False, JobStatus.succeeded)
    job = store.get("dup")
    assert job and (job.status, job.done, job.failed) == ("succeeded", 2, 1)
    assert store.results("dup", [0, 1]) == first
    assert list(store.missing("dup", [0, 1])) == []
