"""Issue 8 finding 3: reloads hold no thread while they wait, and one runs at a time.

The real API (uvicorn) over the real embedded Redis. The worker is a heartbeat this test writes
through core/fleet.py, as a worker's main process does: a worker that is alive but slow to
prepare the candidate, so a reload waits for as long as the test wants.
"""

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis

from core import fleet
from devstack.embedded_redis import free_port
from devstack.stack import Stack
from tests.helpers import wait_until

pytestmark = pytest.mark.stack  # real uvicorn, real Redis (no Celery worker needed)

ADMIN = "reload-lock-admin-key"
WORKER = "slow@reload-test"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[Stack, redis.Redis]]:
    stack = Stack.from_env(
        {"DATA_DIR": str(tmp_path), "API_PORT": str(free_port()), "REDIS_URL": "", "ADMIN_API_KEYS": ADMIN}
    )
    try:
        stack.start_redis()
        stack.start_api()
        stack.wait_for(f"{stack.api_url}/health")
        yield stack, redis.Redis.from_url(stack.redis_url or "")
    finally:
        stack.stop()


class SlowWorker:
    """Beats like a worker; answers the candidate only once `ready` is set."""

    def __init__(self, client: redis.Redis) -> None:
        self.client, self.ready, self.stop = client, threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            request = fleet.candidate(self.client)
            answer = {**request, "ok": True} if request and self.ready.is_set() else {}
            fleet.beat(self.client, WORKER, {"model_version": "v1", "candidate": answer})
            self.stop.wait(0.2)


def test_concurrent_reloads_hold_no_thread_and_only_one_runs(api: tuple[Stack, redis.Redis]) -> None:
    stack, client = api
    worker = SlowWorker(client)
    worker.thread.start()
    wait_until(lambda: fleet.workers(client), what="the heartbeat")
    headers = {"X-API-Key": ADMIN}
    answers: list[httpx.Response] = []

    def reload(n: int) -> httpx.Response:
        body = {"version": f"2099.06.{n:02d}-hogsvm-v{n}", "timeout": 600}
        response = httpx.post(f"{stack.api_url}/admin/reload", json=body, headers=headers, timeout=700)
        answers.append(response)
        return response

    pool = ThreadPoolExecutor(max_workers=45)
    try:
        futures = [pool.submit(reload, n) for n in range(45)]  # more than AnyIO's 40 threads
        wait_until(lambda: client.get(fleet.CANDIDATE_KEY), timeout=60, what="a reload to start")

        # While 45 reloads were sent and one waits, sync routes answer (no thread is held: a held
        # one would keep them waiting for the reload's 600 s, past these requests' timeout).
        for _ in range(20):
            assert httpx.get(f"{stack.api_url}/health", timeout=10).status_code == 200
        assert httpx.get(f"{stack.api_url}/ready", timeout=10).status_code == 200

        wait_until(lambda: len(answers) >= 44, timeout=60, what="44 refused reloads")
        refused = [r for r in answers if r.status_code == 409]
        assert len(refused) == 44, [r.text for r in answers]
        assert all("is in progress" in r.json()["detail"] for r in refused)
        waiting = json.loads(client.get(fleet.CANDIDATE_KEY) or b"{}")["version"]

        worker.ready.set()  # the worker has the candidate: the reload completes
        done = [f.result(timeout=120) for f in futures]
    finally:
        worker.stop.set()
        worker.thread.join(5)
        pool.shutdown(wait=False, cancel_futures=True)  # on failure: the fixture's stop ends them
    succeeded = [r for r in done if r.status_code == 200]
    assert len(succeeded) == 1 and succeeded[0].json()["version"] == waiting, succeeded[0].text
    assert fleet.current_version(client) == waiting
    assert client.get(fleet.CANDIDATE_KEY) is None  # the lock is released: the next reload may start
