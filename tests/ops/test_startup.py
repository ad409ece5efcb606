"""Worker start-up against S3: a corrupt model is refused, an unreachable S3 is waited for."""

import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from moto.server import ThreadedMotoServer

from devstack.embedded_redis import free_port
from ml.registry import S3Registry
from tests.helpers import png, wait_until
from tests.ops.ops_helpers import BUCKET, REGISTRY, copy_as_version, make_stack, wait_ready

pytestmark = pytest.mark.stack  # full stack: real workers (see tests/helpers.py)

CORRUPT = "2099.04.04-hogsvm-tampered"


def test_worker_refuses_a_model_whose_checksum_does_not_match(s3_server: str, tmp_path: Path) -> None:
    bad = copy_as_version(tmp_path / "src", CORRUPT, corrupt=True)
    s3 = S3Registry(REGISTRY).s3
    s3.upload_file(str(bad / "model.joblib"), BUCKET, f"registry/{CORRUPT}/model.joblib")
    s3.put_object(
        Bucket=BUCKET, Key=f"registry/{CORRUPT}/metadata.json", Body=(bad / "metadata.json").read_bytes()
    )

    stack = make_stack(tmp_path / "stack", MODEL_URI=f"{REGISTRY}/{CORRUPT}")
    try:
        stack.start_redis()
        worker = stack.start_worker("worker1")
        code = worker.wait(timeout=90)
    finally:
        stack.stop()
    log = stack.log("worker1")
    assert code == 3, log[-3000:]
    assert "REFUSING the model" in log and "sha256" in log
    assert not (stack.settings.model_cache_dir / CORRUPT).exists()


def test_worker_waits_for_an_unreachable_s3_and_takes_no_work_meanwhile(pushed: str, tmp_path: Path) -> None:
    port = free_port()
    stack = make_stack(
        tmp_path / "stack", MODEL_URI=f"{REGISTRY}/latest", AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}"
    )
    server = None
    try:
        stack.start(flower=False)  # waits for the API only
        api = httpx.Client(base_url=stack.api_url, timeout=30)
        wait_until(lambda: "retrying" in stack.log("worker1"), 30, 0.2, "the worker to retry S3")
        r = api.get("/ready")
        assert r.status_code == 503, r.text
        assert r.json()["redis"] == "ok" and r.json()["workers"] == []
        assert any("no live worker" in reason for reason in r.json()["reasons"])
        job = api.post("/jobs", files=[("files", ("one.png", _png(), "image/png"))]).json()
        time.sleep(2)  # an absence: a worker taking jobs would have done this one by now
        assert api.get(f"/jobs/{job['id']}").json()["status"] == "queued"  # nobody took it
        assert api.get("/ready").json()["queue_depth"] == 1
        assert "model not loaded (attempt 1" in stack.log("worker1")
        assert "taking no work until it is" in stack.log("worker1")

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()  # same in-process S3 state as the session server: the model is there
        body = wait_ready(stack, timeout=90)
        assert body["workers"][0]["model_version"] == pushed
        wait_until(lambda: api.get(f"/jobs/{job['id']}").json()["status"] == "succeeded", 60, 0.2, "the job")
        assert api.get(f"/jobs/{job['id']}").json()["model_version"] == pushed

        # A worker that stops takes its heartbeat with it: not ready at once.
        stack.stop_process("worker1")
        r = api.get("/ready")
        assert r.status_code == 503 and r.json()["workers"] == []
    except BaseException:
        print(stack.log("worker1")[-5000:])
        raise
    finally:
        stack.stop()
        if server is not None:
            server.stop()


def test_ready_is_503_when_redis_is_down(tmp_path: Path) -> None:
    stack = make_stack(tmp_path / "stack", REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    try:
        stack.start_api()
        stack.wait_for(f"{stack.api_url}/health")
        r = httpx.get(f"{stack.api_url}/ready", timeout=30)
        assert r.status_code == 503 and r.json()["redis"] == "down"
        assert "redis unreachable" in r.json()["reasons"][0]
        assert httpx.get(f"{stack.api_url}/metrics", timeout=30).status_code == 503
    finally:
        stack.stop()


def _png() -> bytes:
    image = np.zeros((28, 28), np.uint8)
    image[5:23, 12:16] = 255  # a "1"
    return png(image)
