"""One task for the one-trip chunks of concurrent submissions (issue 22): `/predict` and small
`Prefer: wait` jobs, each a chunk of a few images, are published together instead of one task each.

Each API process has one `Batcher`: the request's thread hands it the job's chunk (already tracked
in the MULTI/EXEC that created the job, core/dispatch.py) and returns; the batcher's thread takes
the first waiting chunk and whatever else has arrived meanwhile, up to BATCH_MAX_IMAGES images,
and publishes them as one `digitq.process_batch` task (Celery's `send_task`). While other
submissions of the process are on their way (between reading their upload and handing over their
chunk), it waits up to WINDOW_SECONDS for them. Alone (nothing waiting, no publish in flight), a
chunk is published at once by the request's own thread. Under load the chunks that arrive while
one publish is in flight go together in the next (group commit). The
worker classifies every image of the batch in one call of the model and then records each job on
its own (worker/tasks.py), so each job keeps its own state, results (per item, HSETNX: exactly
once), poison count and published answer.

Lost in between (the API process dies with chunks in the batcher, or the publish fails): each
chunk is tracked on its own, so the sweeper publishes it again, alone, after 2 x the visibility
timeout (core/dispatch.py).
"""

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator, Sequence

from celery import Celery

from core.queue import INTERACTIVE, PROCESS_BATCH, Chunk

log = logging.getLogger(__name__)
# How long a batch waits for submissions already on their way (`Batcher.arriving`): a few ms of
# latency under concurrency, against one task (a consume, an ack, a model call) per image.
WINDOW_SECONDS = 0.003


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

    def __init__(
        self, celery: Celery, max_images: int, window: float = WINDOW_SECONDS, publish: bool = True
    ) -> None:
        self.celery, self.max_images, self.window = celery, max_images, window
        self.publish = publish  # False: nothing publishes, the caller `take`s (tests)
        self._queue: queue.SimpleQueue[Chunk] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pid = 0  # the process whose thread runs (a forked child starts its own)
        self._arriving = 0  # submissions of this process on their way to `submit` (see `arriving`)
        self._publishing = 0  # publishes in flight (the thread's, or a lone submission's own)
        self._local = threading.local()

    @contextlib.contextmanager
    def arriving(self) -> Iterator[None]:
        """Around a submission that may hand over a chunk: while others are on their way, a batch
        waits up to `window` for them (alone, a chunk never waits). `submit` ends it early."""
        with self._lock:
            self._arriving += 1
        self._local.arriving = True
        try:
            yield
        finally:
            self._arrived()

    def _arrived(self) -> None:
        if getattr(self._local, "arriving", False):
            self._local.arriving = False
            with self._lock:
                self._arriving -= 1

    def submit(self, chunk: Chunk) -> None:
        """Hand over a tracked one-trip chunk; the batcher's thread publishes it soon after.
        Alone (nothing waiting, no publish in flight, no other submission on its way), it is
        published here at once: there is nothing to group it with, and handing it to another
        thread cost a lone client ~0.3 ms of CPU and ~0.8 ms of latency (the thread's wake-up)."""
        self._arrived()  # before the put: the batch that takes it does not wait for it
        if self.publish and self._claim_alone():
            try:
                send_batch(self.celery, [chunk])
            finally:
                self._published()
            return
        self.put(chunk)
        if self.publish:
            self.start()

    def _claim_alone(self) -> bool:
        """Whether nothing else is on its way; if so, this caller publishes (counted as in flight:
        submissions meanwhile go to the thread, and group there)."""
        with self._lock:
            if self._arriving > 0 or self._publishing > 0 or not self._queue.empty():
                return False
            self._publishing += 1
            return True

    def _published(self) -> None:
        with self._lock:
            self._publishing -= 1

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
        or arrives within `window` while other submissions are on their way, until the batch
        holds max_images images or more. A batch taken is a publish in flight until `_published`."""
        try:
            batch = [self._queue.get(block=block)]
        except queue.Empty:
            return []
        with self._lock:  # a publish in flight from here (`_published` ends it): not alone
            self._publishing += 1
        images, until = len(batch[0].items), time.monotonic() + self.window
        while images < self.max_images:
            try:
                chunk = self._queue.get_nowait()
            except queue.Empty:
                left = until - time.monotonic()
                if self._arriving <= 0 or left <= 0:
                    break
                try:
                    chunk = self._queue.get(timeout=left)
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
            finally:
                self._published()
