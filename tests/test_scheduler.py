"""Fast tier (no Redis, no workers): the worker main process' scheduler (worker/scheduler.py) with
real threads and tiny intervals. Every wait is on a condition; nothing asserts on the clock, bar
intervals an hour long that no test outlives."""

import logging
import threading
from collections.abc import Callable, Iterator

import pytest
import redis

from core import fleet
from core.config import Settings
from core.jobs import JobStore
from core.queue import make_celery
from worker.models import FleetMember
from worker.scheduler import Duty, Scheduler, duties
from worker.webhooks import Deliverer

OFTEN = 0.001
HOUR = 3600.0


class Counter:
    """A duty's body that counts its runs and sets `reached` at the `target`-th."""

    def __init__(self, target: int = 5, then: Callable[[], object] = lambda: None) -> None:
        self.count = 0
        self.target = target
        self.then = then
        self.reached = threading.Event()
        self._lock = threading.Lock()

    def __call__(self) -> object:
        with self._lock:
            self.count += 1
            if self.count >= self.target:
                self.reached.set()
        return self.then()


def wait(event: threading.Event, what: str) -> None:
    assert event.wait(30), f"timed out waiting for {what}"


@pytest.fixture
def run() -> Iterator[Callable[[list[Duty]], Scheduler]]:
    """Start a scheduler over these duties; stopped after the test."""
    started: list[Scheduler] = []

    def start(table: list[Duty]) -> Scheduler:
        scheduler = Scheduler(table)
        scheduler.start()
        started.append(scheduler)
        return scheduler

    yield start
    for scheduler in started:
        scheduler.stop(timeout=5)


def test_each_duty_runs_at_start_then_when_due(run) -> None:
    often, hourly = Counter(), Counter(target=1)
    run([Duty("often", OFTEN, "test", often), Duty("hourly", HOUR, "test", hourly)])
    wait(hourly.reached, "the hourly duty's run at start")
    wait(often.reached, "five runs of the frequent duty")
    assert hourly.count == 1  # not due again for an hour


def test_a_slow_duty_does_not_delay_a_fast_one(run) -> None:
    release, entered = threading.Event(), threading.Event()

    def slow() -> None:
        entered.set()
        release.wait(30)  # a model download, an S3 sweep

    fast = Counter(target=20)
    scheduler = run([Duty("slow", OFTEN, "test", slow), Duty("fast", OFTEN, "test", fast)])
    try:
        wait(entered, "the slow duty's start")
        wait(fast.reached, "the fast duty's runs while the slow one runs")
        assert scheduler.runs("slow") == 0  # still in its first run
    finally:
        release.set()


def test_a_duty_never_runs_twice_at_once(run) -> None:
    lock, inside, most = threading.Lock(), [0], [0]
    first_entered, release = threading.Event(), threading.Event()

    def body() -> None:
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        first_entered.set()
        release.wait(30)  # the first run outlives many of its intervals
        with lock:
            inside[0] -= 1

    runs = Counter(target=5, then=body)
    other = Counter(target=20)
    scheduler = run([Duty("long", OFTEN, "test", runs), Duty("other", OFTEN, "test", other)])
    wait(first_entered, "the first run")
    wait(other.reached, "the scheduler going round while the first run lasts")
    assert runs.count == 1
    release.set()
    wait(runs.reached, "more runs once the first ended")
    assert most[0] == 1
    assert scheduler.runs("long") >= 4


def test_a_failing_duty_is_logged_and_counted_and_the_others_go_on(run, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="worker.scheduler")

    def broken() -> None:
        raise ConnectionError("Redis is down")

    failing, healthy = Counter(then=broken), Counter()
    scheduler = run([Duty("broken", OFTEN, "test", failing), Duty("healthy", OFTEN, "test", healthy)])
    wait(failing.reached, "five failed runs")
    wait(healthy.reached, "five runs of the healthy duty")
    assert scheduler.failures("broken") >= 4 and scheduler.failures("healthy") == 0
    failures = [r for r in caplog.records if "duty broken failed" in r.getMessage()]
    assert failures and "Redis is down" in failures[0].getMessage()
    traced = {"(1 in a row" in r.getMessage(): r.exc_info is not None for r in failures}
    assert traced == {True: True, False: False}  # the first failure's traceback, not every one's


def test_a_duty_that_found_work_comes_again_sooner(run) -> None:
    """The webhook claims: right after a claim, more events are probably due."""
    busy = Counter(target=4, then=lambda: busy.count < 4)  # finds work thrice, then none
    scheduler = run([Duty("claims", HOUR, "test", busy, after_work=OFTEN)])
    wait(busy.reached, "the runs after the ones that found work")
    assert busy.count == 4  # the fourth found none: the next is an hour away
    assert scheduler.runs("claims") >= 3


def test_stop_starts_no_more_runs_and_waits_for_the_running_ones(run) -> None:
    release, entered = threading.Event(), threading.Event()

    def slow() -> None:
        entered.set()
        release.wait(30)

    often = Counter()
    scheduler = run([Duty("slow", OFTEN, "test", slow), Duty("often", OFTEN, "test", often)])
    wait(entered, "the slow duty's start")
    wait(often.reached, "the frequent duty's runs")
    assert not scheduler.stop(timeout=0.01)  # the slow run is still going
    release.set()
    assert scheduler.stop(timeout=30)
    assert "digitq-scheduler" not in {t.name for t in threading.enumerate()}  # it launches runs
    assert scheduler.runs("often") == often.count  # and none is left running


def test_the_workers_duties() -> None:
    """Each has a name of its own, an interval and its reason; the heartbeat outpaces its TTL."""
    settings = Settings(redis_url="redis://localhost:1/0", webhook_timeout_seconds=10)
    store = JobStore(redis.Redis(port=1), settings.job_ttl_seconds)  # never connects
    table = {
        d.name: d
        for d in duties(
            FleetMember("w1", settings), Deliverer(store, settings), make_celery(settings), settings
        )
    }
    assert set(table) == {
        "heartbeat",
        "reload",
        "webhook-claims",
        "webhook-leases",
        "fair-share-sweep",
        "upload-sweep",
        "stuck-job-sweep",
    }
    assert all(d.every > 0 and len(d.why) > 20 for d in table.values())
    assert table["heartbeat"].every * 3 <= fleet.HEARTBEAT_TTL
    assert (table["webhook-claims"].every, table["webhook-claims"].after_work) == (0.5, 0.05)
    assert table["webhook-leases"].every == pytest.approx((2 * 10 + 5) / 3)  # a third of a lease
