"""One stack on S3 (models and uploads in moto), two worker nodes, Sentry to a local collector,
JSON logs: startup pull, readiness, metrics, logs, reload across workers, cache on restart.

The tests share the stack but not an order: each one states the fleet version it needs
(`serve`) and the registry versions it uses (`versions`), so each passes alone (`-k`) or in
any order."""

import base64
import io
import json
import os
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis

from core.config import PROJECT_ROOT
from core.jobs import TERMINAL, JobStore
from core.promotion import RegistryPointer
from core.queue import (
    INLINE_UPLOAD_BYTES,
    INTERACTIVE,
    PROCESS_BATCH,
    Chunk,
    ChunkItem,
    make_celery,
    send_chunks,
)
from ml.registry import S3Registry
from tests.helpers import png, wait_for_job, wait_until, workers_paused
from tests.ops.ops_helpers import (
    ADMIN_KEY,
    API_KEY,
    AWS_ENV,
    BUCKET,
    REGISTRY,
    SIGNING_KEY,
    TRUST,
    Collector,
    LoggedStack,
    copy_as_version,
    evil_metadata,
    logged_stack,
    upload,
    wait_ready,
)

pytestmark = pytest.mark.stack  # full stack: real workers (see tests/helpers.py)

V2 = "2099.03.03-hogsvm-reloaded"
BAD = "2099.03.04-hogsvm-corrupt"
EVIL = "2099.03.05-hogsvm-unsigned"


def digit_png(seed: int, pad: int = 0) -> bytes:
    """A noisy "1"; `pad` bytes of PNG text chunk make it bigger (readers skip it)."""
    from PIL import Image, PngImagePlugin

    rng = np.random.default_rng(seed)
    image = np.zeros((28, 28), np.uint8)
    image[5:23, 12:16] = 255  # a "1"
    image = np.clip(image.astype(int) + rng.integers(0, 30, image.shape), 0, 255).astype(np.uint8)
    if not pad:
        return png(image)
    info = PngImagePlugin.PngInfo()
    info.add_text("pad", "x" * pad)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG", pnginfo=info)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, pushed: str, sentry_collector: Collector
) -> Iterator[LoggedStack]:
    with logged_stack(
        tmp_path_factory.mktemp("fleet"),
        WORKERS="2",
        MODEL_URI=f"{REGISTRY}/latest",
        BLOB_URL=f"s3://{BUCKET}/uploads",
        SENTRY_DSN=sentry_collector.dsn,
        API_KEYS=API_KEY,
        ADMIN_API_KEYS=ADMIN_KEY,
        MODEL_REGISTRY=REGISTRY,  # /admin/models/{version}/promote and /admin/models/rollback
        LOG_JSON="1",
        CHUNK_SIZE="10",
    ) as stack:
        yield stack


@pytest.fixture(scope="module")
def api(fleet: LoggedStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fleet.api_url, timeout=60, headers={"X-API-Key": API_KEY}) as client:
        yield client


@pytest.fixture(scope="module")
def admin(fleet: LoggedStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fleet.api_url, timeout=120, headers={"X-API-Key": ADMIN_KEY}) as client:
        yield client


@pytest.fixture(scope="module")
def versions(fleet: LoggedStack, pushed: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The registry's versions: `pushed` (latest), V2 (staged, signed) and BAD (sha256 mismatch)."""
    tmp = tmp_path_factory.mktemp("versions")
    registry = S3Registry(REGISTRY, trust=TRUST)
    registry.push(copy_as_version(tmp, V2), set_latest=False)
    bad = copy_as_version(tmp, BAD, corrupt=True)  # push() refuses it: upload the files as they are
    registry.s3.upload_file(str(bad / "model.joblib"), BUCKET, f"registry/{BAD}/model.joblib")
    registry.s3.put_object(
        Bucket=BUCKET, Key=f"registry/{BAD}/metadata.json", Body=(bad / "metadata.json").read_bytes()
    )
    return {"pushed": pushed, "v2": V2, "bad": BAD}


def served(fleet: LoggedStack) -> list[str]:
    return [w["model_version"] for w in httpx.get(f"{fleet.api_url}/ready", timeout=30).json()["workers"]]


def serve(admin: httpx.Client, fleet: LoggedStack, version: str) -> None:
    """Put both workers on `version` (a reload, unless they are on it already)."""
    if served(fleet) != [version, version]:
        r = admin.post("/admin/reload", json={"version": version, "timeout": 60})
        assert r.status_code == 200, r.text
    # Each worker's next heartbeat reports the switch.
    wait_until(lambda: served(fleet) == [version, version], 30, 0.2, f"both workers on {version}")


def submit(api: httpx.Client, n: int, seed: int = 0, pad: int = 0) -> str:
    files = [("files", (f"d{i}.png", digit_png(seed + i, pad), "image/png")) for i in range(n)]
    r = api.post("/jobs", files=files)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def test_workers_pull_the_latest_model_and_report_ready(
    admin: httpx.Client, fleet: LoggedStack, pushed: str
) -> None:
    serve(admin, fleet, pushed)  # what they pulled at startup (unless another test reloaded since)
    r = httpx.get(f"{fleet.api_url}/ready")  # no API key needed
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ready" and body["redis"] == "ok" and body["queue_depth"] == 0
    assert [w["model_version"] for w in body["workers"]] == [pushed, pushed]
    assert {w["hostname"].split("@")[0] for w in body["workers"]} == {"worker1", "worker2"}
    cached = fleet.settings.model_cache_dir / pushed
    assert (cached / "model.joblib").exists() and (cached / "metadata.json").exists()
    assert "downloading from s3://" in fleet.log("worker1") + fleet.log("worker2")


def test_job_on_s3_uploads_records_its_model_version(
    api: httpx.Client, admin: httpx.Client, fleet: LoggedStack, s3_requests: list[str], pushed: str
) -> None:
    serve(admin, fleet, pushed)
    job_id = submit(api, 25, pad=INLINE_UPLOAD_BYTES // 20)  # over the inline limit: through the store
    job = wait_for_job(api, job_id)
    assert job["status"] == "succeeded" and job["counts"]["done"] == 25 and job["model_version"] == pushed
    # The uploads went through S3BlobStore: the API PUT each part, a worker GET it.
    requests = [r for r in s3_requests if f"/{BUCKET}/uploads/{job_id}/" in r]
    for part in range(25):
        assert any(f"PUT /{BUCKET}/uploads/{job_id}/part-{part} " in r for r in requests), part
        assert any(f"GET /{BUCKET}/uploads/{job_id}/part-{part} " in r for r in requests), part
    assert not (fleet.settings.data_dir / "uploads" / job_id).exists()
    items = api.get(f"/jobs/{job_id}/results?limit=100").json()["items"]
    assert all(i["status"] == "done" and i["digit"] is not None for i in items)


def test_metrics_count_jobs_items_latency_and_versions(
    api: httpx.Client, fleet: LoggedStack, pushed: str
) -> None:
    def scrape() -> tuple[str, dict[str, float]]:
        text = httpx.get(f"{fleet.api_url}/metrics").text
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return text, values

    def settled() -> tuple[str, dict[str, float]]:
        """A scrape after the job-latency histogram caught up with the jobs counted as closed (the
        script that closes a job counts it; the worker observes its latency right after)."""

        def caught_up() -> bool:
            values = scrape()[1]
            closed = sum(values[f'digitq_jobs_finished_total{{status="{s}"}}'] for s in TERMINAL)
            return values["digitq_job_seconds_count"] == closed

        wait_until(caught_up, 30, 0.05, "job latencies observed for every closed job")
        return scrape()

    before = settled()[1]  # other tests' jobs count too: compare with what they left
    job_id = submit(api, 3, seed=100)
    wait_for_job(api, job_id)
    broken = ("files", ("broken.png", b"\x89PNG\r\n\x1a\n" + b"not the rest of a png", "image/png"))
    one = [("files", ("d.png", digit_png(103), "image/png"))]
    wait_for_job(api, api.post("/jobs", files=[broken, *one]).json()["id"])
    text, values = settled()
    added = {name: value - before.get(name, 0) for name, value in values.items()}
    assert added["digitq_jobs_submitted_total"] == 2
    assert added["digitq_items_submitted_total"] == 5
    assert added["digitq_jobs_succeeded_total"] == 2  # an item's error does not fail its job
    assert added['digitq_jobs_finished_total{status="succeeded"}'] == 2
    assert added["digitq_items_processed_total"] == 5
    assert added["digitq_items_failed_total"] == 1  # the broken PNG, counted once
    assert added["digitq_job_seconds_count"] == 2
    assert values['digitq_job_seconds_bucket{le="+Inf"}'] == values["digitq_job_seconds_count"]
    assert added["digitq_item_seconds_count"] == 5
    assert added["digitq_chunk_seconds_count"] >= 2
    assert values['digitq_queue_depth{lane="interactive"}'] == 0
    assert values['digitq_queue_depth{lane="bulk"}'] == 0
    assert values["digitq_workers"] == 2
    assert f'version="{served(fleet)[0]}"' in text


def test_logs_are_json_and_correlated_by_job_id(api: httpx.Client, fleet: LoggedStack, pushed: str) -> None:
    job_id = submit(api, 12, seed=200)
    version = wait_for_job(api, job_id)["model_version"]
    api_lines = [line for line in fleet.json_log("api") if line.get("job_id") == job_id]
    assert any(line["message"] == "job submitted" for line in api_lines)

    def chunk_lines() -> list[dict]:
        return [
            line
            for name in ("worker1", "worker2")
            for line in fleet.json_log(name)
            if line.get("job_id") == job_id and line["message"].startswith("chunk done")
        ]

    # Logged right after each chunk's results are stored.
    chunks = wait_until(lambda: len(c := chunk_lines()) >= 2 and c, 30, 0.1, "both chunks' log lines")
    assert {line["chunk"] for line in chunks} == {"0-9", "10-11"}
    assert {line["model_version"] for line in chunks} == {version}
    everything = "".join(fleet.log(n) for n in ("api", "worker1", "worker2"))
    for secret in (API_KEY, ADMIN_KEY, SIGNING_KEY, AWS_ENV["AWS_SECRET_ACCESS_KEY"]):
        assert secret not in everything


def test_reload_needs_the_admin_key_and_refuses_a_corrupt_version(
    api: httpx.Client, admin: httpx.Client, fleet: LoggedStack, versions: dict[str, str]
) -> None:
    assert httpx.post(f"{fleet.api_url}/admin/reload", json={"version": "x"}).status_code == 401
    assert api.post("/admin/reload", json={"version": "x"}).status_code == 403  # a client key
    before = served(fleet)
    r = admin.post("/admin/reload", json={"version": BAD, "timeout": 60})
    assert r.status_code == 409 and "sha256" in r.json()["detail"], r.text
    r = admin.post("/admin/reload", json={"version": "1999.01.01-hogsvm-unknown", "timeout": 60})
    assert r.status_code == 409 and "not found" in r.json()["detail"], r.text
    assert served(fleet) == before  # nothing changed
    assert not (fleet.settings.model_cache_dir / BAD).exists()


def test_reload_refuses_a_model_nothing_vouches_for_and_runs_none_of_it(
    admin: httpx.Client, fleet: LoggedStack, pushed: str, tmp_path: Path
) -> None:
    """Finding 2 through the fleet: a bucket writer's pickle, checksum right, no signature."""
    marker = tmp_path / "pwned"
    upload(tmp_path, evil_metadata(tmp_path, EVIL, marker))
    before = served(fleet)
    r = admin.post("/admin/reload", json={"version": EVIL, "timeout": 60})
    assert r.status_code == 409 and "is not trusted" in r.json()["detail"], r.text
    assert not marker.exists(), "a worker unpickled the candidate"
    assert served(fleet) == before  # nothing changed
    assert not (fleet.settings.model_cache_dir / EVIL).exists()
    assert "not trusted" in fleet.log("worker1") + fleet.log("worker2")


def test_reload_moves_every_worker_without_mixing_versions_inside_a_job(
    api: httpx.Client, admin: httpx.Client, fleet: LoggedStack, pushed: str, versions: dict[str, str]
) -> None:
    serve(admin, fleet, pushed)
    # A job in flight while the fleet switches: 300 chunks of 10, in one zip.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for i in range(3000):
            archive.writestr(f"d{i}.png", digit_png(i % 50))
    r = api.post("/jobs", files=[("files", ("big.zip", buffer.getvalue(), "application/zip"))])
    assert r.status_code == 202, r.text
    big = r.json()["id"]
    wait_until(lambda: api.get(f"/jobs/{big}").json()["counts"]["done"], 30, 0.05, "the big job to start")
    # Hold the rest of the job in the queue while the fleet switches (chunks take milliseconds,
    # a reload seconds): the workers stop consuming, through Celery's own remote control.
    with workers_paused(fleet):
        r = admin.post("/admin/reload", json={"version": V2, "timeout": 60})
        assert r.status_code == 200, r.text
        assert r.json()["previous"] in (None, pushed) and r.json()["version"] == V2
        in_flight = api.get(f"/jobs/{big}").json()
        assert in_flight["status"] == "running", "the test needs the job to span the reload"
        # /predict's one-trip chunks (core/queue.py) wait in the interactive lane, taken first once
        # the workers resume by pool processes still on the old version: each classifies, finds
        # at its record that the fleet moved, switches, and works again.
        predicted: list[httpx.Response] = []
        predicting = [
            threading.Thread(target=lambda i=i: predicted.append(_predict(fleet, digit_png(i))))
            for i in range(2)
        ]
        for thread in predicting:
            thread.start()
        lane = redis.Redis.from_url(fleet.redis_url or "")

        def queued_chunks() -> int:
            """One-trip chunks waiting in the lane: a task each, or several in one batch task
            (core/batching.py groups concurrent /predicts)."""
            count = 0
            for raw in lane.lrange(INTERACTIVE, 0, -1):
                message = json.loads(raw)
                (args, *_) = json.loads(base64.b64decode(message["body"]))
                count += len(args[0]) if message["headers"]["task"] == PROCESS_BATCH else 1
            return count

        wait_until(lambda: queued_chunks() == 2, 30, 0.02, "the predictions to be queued")
    for thread in predicting:
        thread.join(timeout=60)
    assert [(p.status_code, p.json()["model_version"]) for p in predicted] == [(200, V2)] * 2

    done = wait_for_job(api, big)
    assert (
        done["status"] == "succeeded" and done["counts"]["done"] == 3000 and done["model_version"] == pushed
    )

    def chunk_versions() -> list[str]:
        return [
            line["model_version"]
            for name in ("worker1", "worker2")
            for line in fleet.json_log(name)
            if line.get("job_id") == big and line["message"].startswith("chunk done")
        ]

    logged = wait_until(lambda: len(v := chunk_versions()) >= 300 and v, 30, 0.2, "300 chunks' log lines")
    assert set(logged) == {pushed}, "a job must keep the version its first chunk pinned"

    after = submit(api, 30, seed=2000)  # 3 chunks, whichever pool processes take them
    assert wait_for_job(api, after)["model_version"] == V2
    # The workers' next heartbeats report the switch.
    wait_until(lambda: served(fleet) == [V2, V2], 30, 0.2, "both workers to report V2")
    assert httpx.get(f"{fleet.api_url}/ready").json()["model_version"] == V2


def _predict(stack: LoggedStack, image: bytes) -> httpx.Response:
    """A /predict on a connection of its own (one per thread)."""
    files = {"file": ("a.png", image)}
    return httpx.post(f"{stack.api_url}/predict", files=files, headers={"X-API-Key": API_KEY}, timeout=60)


def test_admin_promote_moves_latest_and_the_fleet_and_rollback_brings_both_back(
    admin: httpx.Client, fleet: LoggedStack, pushed: str, versions: dict[str, str]
) -> None:
    serve(admin, fleet, pushed)
    pointer = RegistryPointer(REGISTRY)
    assert pointer.latest() == pushed
    # V2 has the same weights as `pushed`: what `ml compare` records for such a pair.
    verdict = {"verdict": "no significant difference", "b": 0, "c": 0, "p_value": 1.0, "items": 1000}
    pointer.record_comparison({"candidate": V2, "against": pushed, **verdict})
    r = admin.post(f"/admin/models/{V2}/promote", json={"timeout": 60})
    assert r.status_code == 200, r.text
    assert (r.json()["version"], r.json()["previous"], r.json()["forced"]) == (V2, pushed, False)
    assert len(r.json()["workers"]) == 2 and pointer.latest() == V2
    wait_until(lambda: served(fleet) == [V2, V2], 30, 0.2, "both workers on the promoted version")

    r = admin.post("/admin/models/rollback", json={"timeout": 60})
    assert r.status_code == 200, r.text
    assert (r.json()["version"], r.json()["previous"]) == (pushed, V2) and pointer.latest() == pushed
    wait_until(lambda: served(fleet) == [pushed, pushed], 30, 0.2, "both workers back")


def test_ml_reload_cli_drives_the_same_protocol(fleet: LoggedStack, versions: dict[str, str]) -> None:
    def reload(version: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "REDIS_URL": fleet.redis_url or ""}
        cmd = [sys.executable, "-m", "ml", "reload", version, "--timeout", "60"]
        return subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120)

    refused = reload(BAD)
    assert refused.returncode == 1 and "reload refused" in refused.stderr and "sha256" in refused.stderr
    again = reload(V2)
    assert again.returncode == 0, again.stderr
    assert f"-> {V2} on 2 worker(s)" in again.stdout


def test_failed_job_reaches_sentry_with_its_job_id_and_no_secrets(
    fleet: LoggedStack, sentry_collector: Collector
) -> None:
    # The fleet's version (what a chunk runs with); a worker's heartbeat may lag a reload by a beat.
    version = httpx.get(f"{fleet.api_url}/ready", timeout=30).json()["model_version"]
    # A job whose upload is missing: the chunk fails three retries, then the job fails.
    client = fleet.redis_url
    import redis

    store = JobStore(redis.Redis.from_url(client), 3600)
    job_id = os.urandom(16).hex()  # a job of its own each run
    store.create(job_id, ["missing.png"])
    celery = make_celery(fleet.settings.model_copy(update={"redis_url": client}))
    send_chunks(celery, [Chunk(job_id, (ChunkItem(0, 0),))])
    event = sentry_collector.wait_for(lambda e: e.get("tags", {}).get("job_id") == job_id, timeout=90)
    assert event["tags"]["model_version"] == version
    assert event["tags"]["role"] == "worker"
    assert event["tags"]["chunk"] == "0-0"
    raw = sentry_collector.raw()
    for secret in (API_KEY, AWS_ENV["AWS_SECRET_ACCESS_KEY"]):
        assert secret.encode() not in raw
    wait_until(lambda: store.status(job_id) == "failed", 30, 0.2, "the job to fail")
    job = store.get(job_id)
    assert job is not None and job.status == "failed" and job.failed == 1


def test_restarted_worker_uses_the_cache_and_the_fleet_version(
    admin: httpx.Client, fleet: LoggedStack, versions: dict[str, str], s3, tmp_path: Path
) -> None:
    serve(admin, fleet, V2)  # a reload: V2 is in both workers' cache and is the fleet's version
    cached = fleet.settings.model_cache_dir / V2 / "model.joblib"
    before = cached.stat()
    # Remove V2 from S3: a restart that downloaded anything would now fail.
    for key in (f"registry/{V2}/model.joblib", f"registry/{V2}/metadata.json"):
        s3.delete_object(Bucket=BUCKET, Key=key)
    try:
        fleet.stop_process("worker1")
        log_before = len(fleet.log("worker1"))
        fleet.start_worker("worker1")
        loaded = f"model {V2} loaded"
        new = wait_until(lambda: loaded in (n := fleet.log("worker1")[log_before:]) and n, 60, 0.3, loaded)
    finally:  # for the other tests
        S3Registry(REGISTRY, trust=TRUST).push(copy_as_version(tmp_path, V2), set_latest=False)
    lines = [json.loads(x) for x in new.splitlines() if x.startswith("{")]
    messages = [x["message"] for x in lines]
    assert any(f"model {V2}: cache hit" in m for m in messages), messages
    assert any(f"model {V2} loaded" in m and "reload" in m for m in messages), messages
    assert not any("downloading" in m for m in messages)
    after = cached.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    wait_ready(fleet, workers=2)
