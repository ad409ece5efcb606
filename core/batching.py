"""One task for the one-trip chunks of concurrent submissions (issue 22): `/predict` and small
`Prefer: wait` jobs, each a chunk of a few images, are published together instead of one task each.

Each API process has one `Batcher`: the request's thread hands it the job's chunk (already tracked
in the MULTI/EXEC that created the job, core/dispatch.py) and returns; the batcher's thread takes
the first waiting chunk and whatever else has arrived meanwhile, up to BATCH_MAX_IMAGES images,
and publishes them as one `digitq.process_batch` task (Celery's `send_task`). So nothing waits for
a window: alone, a chunk goes out at once; under load, the chunks that arrive while one publish is
in flight go together in the next (group commit). The worker classifies every image of the batch
in one call of the model and then records each job on its own (worker/tasks.py), so each job keeps
its own state, results (per item, HSETNX: exactly once), poison count and published answer.

Lost in between (the API process dies with chunks in the batcher, or the publish fails): each
chunk is tracked on its own, so the sweeper publishes it again, alone, after 2 x the visibility
timeout (core/dispatch.py).
"""

import logging
import os
import queue
import threading
from collections.abc import Sequence

from celery import Celery

from core.queue import INTERACTIVE, PROCESS_BATCH, Chunk

log = logging.getLogger(__name__)


def send_batch(celery: Celery, chunks: Sequence[Chunk]) -> None:
    """One task carrying one-trip chunks of several jobs, in the interactive lane."""
    celery.send_task(
        PROCESS_BATCH,
        args=[[chunk.to_json() for chunk in chunks]],
        queue=INTERACTIVE,
        argsrepr=f"(batch of {len(chunks)}: {chunks[0].id}...,)",
    )


class Batcher:
    """Publishes the one-trip chunks handed to it, grouped (see above); a thread per process."""

    def __init__(self, celery: Celery, max_images: int) -> None:
        self.celery, self.max_images = celery, max_images
        self._queue: queue.SimpleQueue[Chunk] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pid = 0  # the process whose thread runs (a forked child starts its own)

    def submit(self, chunk: Chunk) -> None:
        """Hand over a tracked one-trip chunk; the batcher's thread publishes it soon after."""
        self.put(chunk)
        self.start()

    def put(self, chunk: Chunk) -> None:
        self._queue.put(chunk)

    def start(self) -> None:
        """The publishing thread of this process, started once (again in a forked child)."""
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._pid = os.getpid()
                    threading.Thread(target=self._run, name="digitq-batcher", daemon=True).start()

    def take(self, block: bool = True) -> list[Chunk]:
        """The first waiting chunk (waiting for one when `block`), then whatever else is waiting,
        until the batch holds max_images images or more."""
        try:
            batch = [self._queue.get(block=block)]
        except queue.Empty:
            return []
        images = len(batch[0].items)
        while images < self.max_images:
            try:
                chunk = self._queue.get_nowait()
            except queue.Empty:
                break
            batch.append(chunk)
            images += len(chunk.items)
        return batch

    def _run(self) -> None:
        while True:
            batch = self.take()
            try:
                send_batch(self.celery, batch)
            except Exception:
                log.warning(
                    "a batch of %d chunk(s) could not be published; the sweeper will",
                    len(batch),
                    exc_info=True,
                )
