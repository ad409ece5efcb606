"""The worker main process' background duties, and the one thread that runs each when it is due.

`duties` below is the whole list: what each duty does, how often, and why that often. The
`Scheduler` thread only keeps time: each run of a duty happens in a thread of its own, so a slow
one (a model download for a reload, an S3 upload sweep) never delays another (the heartbeat,
whose lapse makes /ready drop the worker). One duty never runs twice at once: its next run is
timed from the end of the last. A duty that raises is logged and counted, and runs again at its
next time; the others go on.

Runs are daemon threads, not a ThreadPoolExecutor's: the interpreter joins an executor's threads
at exit, and a model download in flight must not hold up the worker's shutdown. At most one per
duty exists at a time, so they are as few as the duties.
"""

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from celery import Celery

from core import dispatch, fleet
from core.config import Settings
from worker.housekeeping import sweep_uploads
from worker.stuck_jobs import StuckJobs, sweep_every

if TYPE_CHECKING:
    from worker.models import FleetMember
    from worker.webhooks import Deliverer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Duty:
    name: str
    every: float  # seconds from the end of one run to the start of the next
    why: str  # the reason for that interval
    run: Callable[[], object]
    # When set, a run that returns something truthy (it found work) is followed after this many
    # seconds instead: more of that work is probably waiting.
    after_work: float | None = None


@dataclass
class _State:
    duty: Duty
    due: float
    running: bool = False
    runs: int = 0
    failures: int = 0
    failing: int = 0  # failures in a row: the first one's traceback is logged, not every one's


def duties(member: "FleetMember", webhooks: "Deliverer", celery: Celery, settings: Settings) -> list[Duty]:
    """Everything the worker main process does in the background, each at its interval."""
    return [
        Duty(
            "heartbeat",
            fleet.HEARTBEAT_SECONDS,
            "/ready and reloads see a worker while its heartbeat lives (fleet.HEARTBEAT_TTL): "
            "several beats per TTL, so one lost beat never drops it",
            member.beat,
        ),
        Duty(
            "reload",
            fleet.HEARTBEAT_SECONDS,
            "an /admin/reload waits for every worker's answer, which rides the heartbeat: "
            "noticing a request more often would not answer it sooner",
            member.check_reload,
        ),
        Duty(
            "webhook-claims",
            0.5,
            "an event is sent within half a second of coming due, for one small Redis call per "
            "idle half second; right after a claim, again in 0.05 s while events keep coming",
            webhooks.claim,
            after_work=0.05,
        ),
        Duty(
            "webhook-leases",
            webhooks.lease / 3,
            "a third of a lease: two renewals may fail before an event in flight is claimed again",
            webhooks.renew,
        ),
        Duty(
            "fair-share-sweep",
            2.0,
            "a refill missed by a crashed process stalls its tenant's bulk window until then; "
            "a lost send waits 2 x VISIBILITY_TIMEOUT anyway (core/dispatch.py)",
            lambda: dispatch.sweep(celery, _fair_share()),
        ),
        Duty(
            "upload-sweep",
            60.0,
            "local upload copies only cost disk, and a kept upload's deletion may be a minute late: "
            "listing this machine's uploads once a minute is cheap",
            _sweep_uploads,
        ),
        Duty(
            "stuck-job-sweep",
            sweep_every(settings),
            "a quarter of STUCK_JOB_SECONDS (1-30 s): a stuck job is caught soon after it counts "
            "as stuck; one worker per period does it (the sweep's lock)",
            lambda: _sweep_stuck_jobs(member.hostname, celery, settings),
        ),
    ]


def _fair_share() -> dispatch.FairShare:
    from core.connections import get_fair_share

    return get_fair_share()


def _sweep_uploads() -> None:
    from core.connections import get_blob_store, get_job_store

    sweep_uploads(get_blob_store(), get_job_store())


def _sweep_stuck_jobs(hostname: str, celery: Celery, settings: Settings) -> None:
    from core.connections import get_blob_store, get_fair_share, get_job_store

    StuckJobs(get_job_store(), get_blob_store(), celery, settings, get_fair_share()).sweep(hostname)


class Scheduler:
    """Runs each duty when due, each run in its own thread; every duty is due at start (a worker
    restarted after a crash sweeps up after it at once)."""

    def __init__(self, table: list[Duty]) -> None:
        self._states = {duty.name: _State(duty, due=0.0) for duty in table}
        self._changed = threading.Condition()  # a run ended, or stop(): the next due time may move
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="digitq-scheduler", daemon=True)

    def start(self) -> None:
        now = time.monotonic()
        for state in self._states.values():
            state.due = now
            log.info("duty %s every %gs: %s", state.duty.name, state.duty.every, state.duty.why)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Start no more runs; wait up to `timeout` for those running. False if some still are
        (they are left to end on their own)."""
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
            ended = self._changed.wait_for(self._idle, timeout)
        if self._thread.ident is not None:  # started
            self._thread.join(timeout)
        if not ended:
            running = [s.duty.name for s in self._states.values() if s.running]
            log.warning("stopping with duties still running: %s", ", ".join(running))
        return ended

    def runs(self, name: str) -> int:
        return self._states[name].runs

    def failures(self, name: str) -> int:
        return self._states[name].failures

    def _idle(self) -> bool:
        return not any(state.running for state in self._states.values())

    def _loop(self) -> None:
        with self._changed:
            while not self._stopping:
                now = time.monotonic()
                waiting = [s for s in self._states.values() if not s.running]
                for state in sorted((s for s in waiting if s.due <= now), key=lambda s: s.due):
                    self._launch(state)
                next_due = min((s.due for s in self._states.values() if not s.running), default=None)
                self._changed.wait(None if next_due is None else max(0.0, next_due - now))

    def _launch(self, state: _State) -> None:
        state.running = True
        name = f"digitq-{state.duty.name}"
        threading.Thread(target=self._run, args=(state,), name=name, daemon=True).start()

    def _run(self, state: _State) -> None:
        found_work, error = False, None
        try:
            found_work = bool(state.duty.run())
        except Exception as exc:
            error = exc
        finally:  # whatever happened, the duty is due again
            self._settle(state, found_work, error)

    def _settle(self, state: _State, found_work: bool, error: Exception | None) -> None:
        duty = state.duty
        with self._changed:
            state.runs += 1
            recovered_after = state.failing if error is None else 0
            state.failing = 0 if error is None else state.failing + 1
            state.failures += error is not None
            failing, failures = state.failing, state.failures
        if error is not None:  # logged before its next run can start: the log reads in order
            first = failing == 1  # its traceback once, not every few seconds while Redis is down
            log.warning(
                "duty %s failed (%d in a row, %d in all): %s",
                *(duty.name, failing, failures, error),
                exc_info=error if first else None,
            )
        elif recovered_after:
            log.info("duty %s works again after %d failure(s)", duty.name, recovered_after)
        delay = duty.after_work if found_work and duty.after_work is not None else duty.every
        with self._changed:
            state.due = time.monotonic() + delay
            state.running = False
            self._changed.notify_all()
