"""Helpers every test module shares: images and zips to upload, stacks to run, waits on conditions.

Two tiers of tests:
- fast (no marker): the real API app in-process (FastAPI's TestClient) over a real embedded
  Redis, no workers: 4xx, auth, quotas, paging, schemas. Fixture `make_client` in conftest.py.
- full stack (`pytestmark = pytest.mark.stack`): real worker processes, HTTP, SIGKILLs, S3.
`make test-fast` runs the first tier, `make test` both (several processes, pytest-xdist: ports come
from `free_port`, directories from `tmp_path`). Bounds in seconds or bytes are `perf` tests, run
by `make test-perf` only: in the gate, assert an order or a count (waits time out generously).
"""

import io
import os
import socket
import struct
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


def wait_until(
    condition: Callable[[], T], timeout: float = 30, every: float = 0.05, what: str | Callable[[], str] = ""
) -> T:
    """Poll `condition` until it returns something truthy (returned); fail after `timeout` s.
    `what` names the wait in the failure; a callable is asked then (to show the last state seen)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            said = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout}s waiting for {said or condition}")
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
def running_api(data_dir: Path, **env: str) -> Iterator[Stack]:
    """The API alone (uvicorn over an embedded Redis, no workers): real HTTP for the API's own
    defences (slow bodies, memory), a process whose memory the test can read."""
    base = {"DATA_DIR": str(data_dir), "API_PORT": str(free_port()), "LOG_LEVEL": "WARNING", "REDIS_URL": ""}
    env = base | env
    stack = Stack.from_env(env)
    try:
        stack.settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        stack.start_redis()
        stack.start_api()
        stack.wait_for(f"{stack.api_url}/health")
        yield stack
    finally:
        stack.stop()


def read_response(sock: socket.socket) -> bytes:
    """A whole HTTP response (head and Content-Length bytes of body) read from `sock`."""
    answer = b""
    while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < _content_length(answer):
        more = sock.recv(65536)
        if not more:
            break
        answer += more
    return answer


def _content_length(answer: bytes) -> int:
    head = answer.split(b"\r\n\r\n", 1)[0].lower()
    found = [line for line in head.split(b"\r\n") if line.startswith(b"content-length:")]
    return int(found[0].split(b":")[1]) if found else 0


def peak_rss_bytes(pid: int) -> int:
    """A process' peak resident memory (VmHWM), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for process {pid}")


def pool_children(pid: int) -> list[int]:
    """A Celery worker's pool processes."""
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def cpu_seconds(pid: int) -> float:
    """CPU time a process has used (user + system); 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


def empty_entries_zip(count: int, declared: int | None = None) -> bytes:
    """A zip of `count` empty stored entries, written with struct in a second or two (zipfile
    takes far longer for a million); zip64 records when the count needs them. `declared` is the
    count its end record claims (a liar's zip), by default the true one."""
    local, central, offset = [], [], 0
    for i in range(count):
        name = b"%x" % i
        sizes = (0, 0, 0, 0, 0, 0, 0, len(name), 0)  # flags, method, time, date, crc, sizes, name, extra
        local.append(struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, *sizes) + name)
        central.append(struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, *sizes, 0, 0, 0, 0, offset) + name)
        offset += 30 + len(name)
    directory = b"".join(central)
    n = count if declared is None else declared
    end = b""
    if n > 0xFFFF:  # zip64: the count lives in the zip64 end record, the classic one says 0xFFFF
        record = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, n, n, len(directory), offset)
        end = record + struct.pack("<4sLQL", b"PK\x06\x07", 0, offset + len(directory), 1)
        n = 0xFFFF
    end += struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, n, n, len(directory), offset, 0)
    return b"".join(local) + directory + end


def wait_for_job(client: httpx.Client, job_id: str, timeout: float = 120) -> dict:
    job: dict = {}

    def finished() -> dict | None:
        nonlocal job
        job = client.get(f"/jobs/{job_id}").json()
        return job if job["status"] in DONE else None

    return wait_until(finished, timeout, every=0.1, what=lambda: f"job {job_id} to finish (last: {job})")


def all_results(client: httpx.Client, job_id: str) -> list[dict]:
    items: list[dict] = []
    url: str | None = f"/jobs/{job_id}/results?limit=1000"
    while url:
        page = client.get(url).json()
        items += page["items"]
        url = page["next"]
    return items
