"""Lanes and fair share (issue 9): what another key's bulk work costs a single image, and what
the bulk window costs bulk throughput. `make bench-fairness` runs it.

1. Time-to-result of one image (key B: POST → status succeeded, polled every 10 ms) with 0, 1 and
   3 10,000-image jobs of key A ahead (running, then cancelled), median of SINGLES images per
   case; once with the defaults
   (lanes + window) and once configured as before issue 9 (one FIFO queue, every chunk sent at
   submission: INTERACTIVE_MAX_ITEMS=0, BULK_IN_FLIGHT_CHUNKS=1000000).
2. Bulk throughput on the 10k zip end to end (upload → CSV read), median of REPEATS runs, with
   the window and with send-everything: both stacks up at once, their runs alternating.
"""

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_e2e import digit_pngs, end_to_end, zip_of  # noqa: E402

from devstack.embedded_redis import free_port  # noqa: E402
from devstack.stack import Stack  # noqa: E402

IMAGES = int(os.environ.get("BENCH_IMAGES", "10000"))
REPEATS = int(os.environ.get("BENCH_REPEATS", "5"))
SINGLES = int(os.environ.get("BENCH_SINGLES", "5"))
KEYS = {"a": "bench-key-a-000000", "b": "bench-key-b-000000"}
BEFORE = {"INTERACTIVE_MAX_ITEMS": "0", "BULK_IN_FLIGHT_CHUNKS": "1000000"}


def started_stack(data_dir: str, **env: str) -> Stack:
    base = {"DATA_DIR": data_dir, "REDIS_URL": "", "LOG_LEVEL": "WARNING", "API_PORT": str(free_port())}
    stack = Stack.from_env({**base, "API_KEYS": ",".join(KEYS.values()), **env})
    stack.start(flower=False)
    stack.wait_for_workers(stack.settings.workers)
    return stack


def as_key(who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[who]}"}


def time_to_result(client: httpx.Client, image: bytes) -> float:
    start = time.perf_counter()
    job = client.post("/jobs", files=[("files", ("one.png", image))], headers=as_key("b")).json()
    while client.get(f"/jobs/{job['id']}", headers=as_key("b")).json()["status"] != "succeeded":
        time.sleep(0.01)
    return time.perf_counter() - start


def single_behind(client: httpx.Client, archive: bytes, image: bytes, ahead: int) -> float:
    """One image's time-to-result once `ahead` bulk jobs of key A are running; then they are cancelled."""
    bulk = [
        client.post("/jobs", files=[("files", ("a.zip", archive))], headers=as_key("a")).json()["id"]
        for _ in range(ahead)
    ]
    while bulk and client.get(f"/jobs/{bulk[0]}", headers=as_key("a")).json()["counts"]["done"] == 0:
        time.sleep(0.01)
    seconds = time_to_result(client, image)
    left = sum(IMAGES - client.get(f"/jobs/{j}", headers=as_key("a")).json()["counts"]["done"] for j in bulk)
    if ahead and left == 0:
        print(f"  (warning: key A's {ahead} job(s) finished before the single image)")
    for job_id in bulk:  # the next measurement starts from an empty queue
        client.delete(f"/jobs/{job_id}", headers=as_key("a"))
    while client.get("/ready").json()["queue_depth"]:  # cancelled chunks drain (skipped) quickly
        time.sleep(0.05)
    return seconds


def latency_table(label: str, archive: bytes, image: bytes, **env: str) -> dict[int, float]:
    out = {}
    with tempfile.TemporaryDirectory() as data_dir:
        stack = started_stack(data_dir, **env)
        try:
            with httpx.Client(base_url=stack.api_url, timeout=120) as client:
                time_to_result(client, image)  # warm-up
                for ahead in (0, 1, 3):
                    times = [single_behind(client, archive, image, ahead) for _ in range(SINGLES)]
                    out[ahead] = statistics.median(times)
                    runs = [round(t, 3) for t in times]
                    print(f"  {label}, {ahead} job(s) ahead: median {out[ahead]:.3f} s of {runs}")
        finally:
            stack.stop()
    return out


def throughputs(archive: bytes, blobs: list[bytes], configs: dict[str, dict[str, str]]) -> dict[str, float]:
    """Both stacks up at once and their runs interleaved, so that the shared machine's load
    changes weigh on both alike."""
    dirs = {label: tempfile.TemporaryDirectory() for label in configs}
    stacks = {label: started_stack(dirs[label].name, **env) for label, env in configs.items()}
    runs: dict[str, list[float]] = {label: [] for label in configs}
    try:
        clients = {
            label: httpx.Client(base_url=stack.api_url, timeout=120, headers=as_key("a"))
            for label, stack in stacks.items()
        }
        for client in clients.values():
            end_to_end(client, zip_of(blobs[:500]), 500)  # warm-up
        for _ in range(REPEATS):
            for label, client in clients.items():
                runs[label].append(end_to_end(client, archive, IMAGES))
    finally:
        for stack in stacks.values():
            stack.stop()
        for d in dirs.values():
            d.cleanup()
    rates = {}
    for label, times in runs.items():
        rates[label] = IMAGES / statistics.median(times)
        print(f"  {label}: {rates[label]:.0f} images/s (median of {[round(t, 2) for t in times]} s)")
    return rates


def main() -> None:
    blobs = digit_pngs(IMAGES)
    archive = zip_of(blobs)
    print(f"{IMAGES} PNG digits per bulk job, {os.cpu_count()} CPUs, {SINGLES} single images per case")
    print("time-to-result of one image of key B with key A's bulk jobs ahead:")
    now = latency_table("lanes + window", archive, blobs[0])
    before = latency_table("one FIFO, all sent", archive, blobs[0], **BEFORE)
    print("bulk throughput on the zip, end to end:")
    rates = throughputs(
        archive, blobs, {"window (default)": {}, "send everything": {"BULK_IN_FLIGHT_CHUNKS": "1000000"}}
    )
    window, everything = rates["window (default)"], rates["send everything"]
    print()
    print("| jobs of 10k images ahead | lanes + window | one FIFO (before) |")
    print("| --- | --- | --- |")
    for ahead in (0, 1, 3):
        print(f"| {ahead} | {now[ahead]:.2f} s | {before[ahead]:.2f} s |")
    print(f"bulk: window {window:.0f} images/s, send-everything {everything:.0f} images/s, "
          f"window / send-everything {window / everything:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
