"""The bulk lane's sweeper: a thread in each worker's main process (core/dispatch.py `sweep`).

Every SWEEP_SECONDS it sends again the in-flight chunks whose send was lost, and refills the
window if a process died between a chunk finishing and its refill. Several workers sweeping at
once is fine: the scripts claim what each one sends.
"""

import logging
import threading

from celery import Celery

from core import dispatch
from core.dispatch import FairShare

log = logging.getLogger(__name__)
SWEEP_SECONDS = 2.0


class Sweeper:
    def __init__(self, celery: Celery, fair: FairShare, every: float = SWEEP_SECONDS) -> None:
        self.celery = celery
        self.fair = fair
        self.every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="digitq-fair-sweeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                dispatch.sweep(self.celery, self.fair)
            except Exception as exc:  # Redis down: the next sweep catches up
                log.warning("fair-share sweep failed: %s", exc)
