"""Helpers every test module shares: images and zips to upload, stacks to run, waits on conditions.

Two tiers of tests:
- fast (no marker): the real API app in-process (FastAPI's TestClient) over a real embedded
  Redis, no workers: 4xx, auth, quotas, paging, schemas. Fixture `make_client` in conftest.py.
- full stack (`pytestmark = pytest.mark.stack`): real worker processes, HTTP, SIGKILLs, S3.
`make test-fast` runs the first tier, `make test` both.
"""

import io
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
from PIL import Image

from devstack.embedded_redis import free_port
from devstack.stack import Stack

DONE = {"succeeded", "failed", "cancelled"}
T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float = 30, every: float = 0.05, what: str = "") -> T:
    """Poll `condition` until it returns something truthy (returned); fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(every)


@contextmanager
def running_stack(data_dir: Path, flower: bool = False, **env: str) -> Iterator[Stack]:
    env = {
        "DATA_DIR": str(data_dir),
        "API_PORT": str(free_port()),
        "FLOWER_PORT": str(free_port()),
        "WORKER_PROCESSES": "2",
        "LOG_LEVEL": "WARNING",
        "REDIS_URL": "",  # an embedded redis-server of the test's own
        **env,
    }
    stack = Stack.from_env(env)
    try:
        stack.start(flower=flower)
        stack.wait_for_workers(stack.settings.workers)
        yield stack
    finally:
        stack.stop()


@contextmanager
def workers_paused(stack: Stack) -> Iterator[None]:
    """The workers stop taking chunks from both lanes (Celery remote control), bulk first, so
    work stays queued; they take them again on exit. Waits for every worker node's reply."""
    from core.queue import LANES, make_celery

    control = make_celery(stack.settings.model_copy(update={"redis_url": stack.redis_url})).control
    nodes = stack.settings.workers
    for lane in reversed(LANES):
        replies = control.cancel_consumer(lane, reply=True, timeout=10, limit=nodes)
        assert len(replies) == nodes, f"only {replies} stopped consuming {lane}"
    try:
        yield
    finally:
        for lane in LANES:
            control.add_consumer(lane, reply=True, timeout=10, limit=nodes)


def png(image: "np.ndarray | Image.Image", fmt: str = "PNG", **options: Any) -> bytes:
    """`image` encoded as PNG (or `fmt`, with Pillow's save `options`): a PIL image as it is, an
    array clipped to 0-255 as 8-bit grey."""
    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def upscale(digit: np.ndarray, side: int) -> np.ndarray:
    image = Image.fromarray(digit.astype(np.uint8)).resize((side, side), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.float64)


def paper(
    digit: np.ndarray, size: tuple[int, int] = (200, 160), at: tuple[int, int] = (20, 30), side: int = 100
) -> np.ndarray:
    """Dark ink on light paper: the digit scaled to `side` px placed at `at` (row, col)."""
    page = np.full(size, 235.0)
    r, c = at
    page[r : r + side, c : c + side] -= upscale(digit, side) * (200.0 / 255.0)
    return page


def make_zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def wait_for_job(client: httpx.Client, job_id: str, timeout: float = 120) -> dict:
    job: dict = {}

    def finished() -> dict | None:
        nonlocal job
        job = client.get(f"/jobs/{job_id}").json()
        return job if job["status"] in DONE else None

    return wait_until(finished, timeout, every=0.1, what=f"job {job_id} to finish (last: {job})")


def all_results(client: httpx.Client, job_id: str) -> list[dict]:
    items: list[dict] = []
    url: str | None = f"/jobs/{job_id}/results?limit=1000"
    while url:
        page = client.get(url).json()
        items += page["items"]
        url = page["next"]
    return items
