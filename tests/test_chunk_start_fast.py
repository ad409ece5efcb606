"""JobStore.start_chunk on a real Redis (fast tier): one script counts the start and says
whether the job has a webhook, so a chunk's start is one round trip (worker/tasks.py)."""

import redis

from core import fleet
from core.job_keys import PREFIX
from core.jobs import ItemResult, JobStatus, JobStore, new_job_id


def test_a_start_with_work_is_counted_per_delivery_and_expires_with_the_job(
    redis_client: redis.Redis,
) -> None:
    store = JobStore(redis_client, 3600)
    job_id = new_job_id()
    store.create(job_id, ["a.png", "b.png"])
    first = store.start_chunk(job_id, [0, 1], "v1", "0:0")
    assert (first.status, first.model_version, first.todo, first.deliveries) == (
        JobStatus.running,
        "v1",
        [0, 1],
        1,
    )
    assert store.start_chunk(job_id, [0, 1], "v2", "0:0").deliveries == 2  # redelivered: the same field
    assert store.start_chunk(job_id, [0, 1], "v2", "0:1").deliveries == 1  # a retry counts apart
    assert redis_client.hget(PREFIX + job_id + ":deliveries", "0:0") == b"2"
    assert 3500 < redis_client.ttl(PREFIX + job_id + ":deliveries") <= 3600


def test_a_start_with_nothing_left_to_do_is_not_counted(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client, 3600)
    job_id = new_job_id()
    store.create(job_id, ["a.png", "b.png"])
    store.record(job_id, [ItemResult(0, 3, 0.9)])
    assert store.start_chunk(job_id, [0], "v1", "0:0").deliveries == 0
    assert store.start_chunk(job_id, [0, 1], "v1", "0:0").todo == [1]
    assert redis_client.hget(PREFIX + job_id + ":deliveries", "0:0") == b"1"  # only the start with work
    store.record(job_id, [ItemResult(1, 3, 0.9)])  # closed
    closed = store.start_chunk(job_id, [0, 1], "v1", "0:0")
    assert (closed.status, closed.todo, closed.deliveries) == (JobStatus.succeeded, [], 0)
    assert store.start_chunk(new_job_id(), [0], "v1", "0:0").status is None  # expired or unknown


def test_the_start_says_whether_the_job_has_a_webhook(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client, 3600)
    plain, hooked = new_job_id(), new_job_id()
    store.create(plain, ["a.png"])
    store.create(hooked, ["a.png"], extra={"webhook_url": "https://example.org/hook"})
    assert not store.start_chunk(plain, [0], "v1", "0:0").has_webhook
    assert store.start_chunk(hooked, [0], "v1", "0:0").has_webhook


def test_a_start_that_follows_the_fleet_stops_at_a_reload_before_writing(redis_client: redis.Redis) -> None:
    """The start script reads the fleet's version (no GET of its own per chunk): when a reload
    moved it, the caller learns it before anything is pinned or counted, switches, starts again."""
    store = JobStore(redis_client, 3600)
    job_id = new_job_id()
    store.create(job_id, ["a.png"])
    assert store.start_chunk(job_id, [0], "v1", "0:0", follow=True).fleet_version is None  # no reload yet
    other = new_job_id()
    store.create(other, ["a.png"])
    redis_client.set(fleet.CURRENT_KEY, "v2")
    moved = store.start_chunk(other, [0], "v1", "0:0", follow=True)
    assert (moved.fleet_version, moved.todo, moved.deliveries) == ("v2", [], 0)
    assert store.status(other) is JobStatus.queued and not redis_client.exists(PREFIX + other + ":deliveries")
    again = store.start_chunk(other, [0], "v2", "0:0", follow=True)
    assert (again.fleet_version, again.model_version, again.todo) == (None, "v2", [0])
    # A process that could not switch starts on its own version without following.
    third = new_job_id()
    store.create(third, ["a.png"])
    assert store.start_chunk(third, [0], "v1", "0:0").model_version == "v1"


def test_a_one_trip_chunks_uncounted_first_start_is_counted_with_its_second(
    redis_client: redis.Redis,
) -> None:
    """A one-trip chunk's first delivery starts in its record (not counted); back after a death,
    its start counts both, so the poison limit holds at the same number of deaths."""
    store = JobStore(redis_client, 3600)
    job_id = new_job_id()
    store.create(job_id, ["a.png"])
    assert store.start_chunk(job_id, [0], "v1", "0:0", uncounted=1).deliveries == 2
    assert store.start_chunk(job_id, [0], "v1", "0:0", uncounted=1).deliveries == 3  # once only
