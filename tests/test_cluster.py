"""Several hosts, nothing shared but Redis and S3 (issue 23): the `make run-cluster` topology
(devstack/cluster.py) on free ports. Two API processes; worker hosts `host1`…`host3`, each its own
process group, data directory and model cache, pulling the signed model from moto's S3 and reading
uploads from it by ranged GETs.

ONE cluster serves every test here (starting it costs most of the time). Each test needs only
what it states: at least two live hosts, the APIs, Redis; none depends on another's order. A host
killed by a test stays dead (a lost machine); a test that needs a host starts one of its own.
"""

import io
import os
import signal
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import redis

from core.config import Settings
from core.job_keys import PREFIX
from devstack.cluster import Cluster
from devstack.embedded_redis import free_port
from tests.helpers import all_results, make_zip, png, wait_for_job, wait_until

pytestmark = pytest.mark.stack  # full stack: real workers (see tests/helpers.py)

IMAGES = 1500


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    env = {
        "DATA_DIR": str(tmp_path_factory.mktemp("cluster")),
        "FLOWER_PORT": str(free_port()),
        "WORKER_PROCESSES": "1",
        "CHUNK_SIZE": "50",
        "VISIBILITY_TIMEOUT": "5",  # a lost host's chunk comes back after 5 s
        "LOG_LEVEL": "WARNING",
        "REDIS_URL": "",
    }
    settings = Settings(**{key.lower(): value for key, value in env.items()})  # type: ignore[arg-type]
    cluster = Cluster(settings, env, api_ports=[free_port(), free_port()])
    try:
        cluster.start()
        wait_until(lambda: len(ready(cluster)) >= 3, 120, 0.2, "three hosts with a model")
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def big_zip(digits) -> bytes:
    images, _ = digits
    return make_zip({f"{i:05d}.png": png(images[i % len(images)]) for i in range(IMAGES)})


def ready(cluster: Cluster) -> dict[str, str | None]:
    """The live hosts /ready lists (through the second API), with the model each serves."""
    workers = httpx.get(f"{cluster.api_urls[1]}/ready", timeout=10).json().get("workers", [])
    return {w["hostname"]: w["model_version"] for w in workers if w["model_version"]}


def counter(api_url: str, name: str, path: str = "/metrics/jobs") -> float:
    for line in httpx.get(f"{api_url}{path}", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.rpartition(" ")[2])
    raise AssertionError(f"{name} not in {path}")


def live_hosts(cluster: Cluster) -> list[str]:
    return [
        h for h in cluster.hosts if h in cluster.stack.processes and cluster.stack.processes[h].poll() is None
    ]


def submit_and_wait_until_started(api: httpx.Client, archive: bytes) -> str:
    job_id = api.post("/jobs", files=[("files", ("big.zip", archive))]).json()["id"]
    wait_until(lambda: api.get(f"/jobs/{job_id}").json()["counts"]["done"], 60, 0.02, "the job to start")
    return job_id


def assert_every_item_once(cluster: Cluster, api: httpx.Client, job_id: str, processed_before: float) -> None:
    job = wait_for_job(api, job_id, timeout=180)
    assert job["status"] == "succeeded", job
    assert job["counts"] == {"total": IMAGES, "done": IMAGES, "failed": 0}
    assert redis.Redis.from_url(cluster.stack.redis_url or "").hlen(f"{PREFIX}{job_id}:results") == IMAGES
    assert [it["index"] for it in all_results(api, job_id)] == list(range(IMAGES))
    # Stored once each: a redelivered chunk's items are not counted (nor stored) again.
    processed = counter(cluster.api_urls[0], "digitq_items_processed_total")
    assert processed - processed_before == IMAGES


def test_a_job_through_one_api_is_followed_and_read_through_the_other(cluster: Cluster, digits) -> None:
    first, second = (httpx.Client(base_url=url, timeout=30) for url in cluster.api_urls)
    images, labels = digits
    archive = make_zip({f"{i}.png": png(images[i]) for i in range(40)})
    job_id = first.post("/jobs", files=[("files", ("a.zip", archive))]).json()["id"]
    job = wait_for_job(second, job_id)
    assert job["status"] == "succeeded" and job["counts"]["done"] == 40
    digits_read = [it["digit"] for it in all_results(second, job_id)]
    assert np.mean(np.array(digits_read) == labels[:40]) > 0.9
    # The hosts by name, in /ready (either API) and in Flower.
    assert {f"worker@{h}" for h in live_hosts(cluster)} <= set(ready(cluster))
    login = (cluster.stack.flower_auth_file.read_text().strip()).split(":", 1)
    flower = httpx.get(f"{cluster.stack.flower_url}/api/workers?refresh=1", auth=tuple(login), timeout=30)
    assert {f"worker@{h}" for h in live_hosts(cluster)} <= set(flower.json())
    first.close()
    second.close()
    # One secret set for the deployment, given to every host: none generated its own.
    for host in live_hosts(cluster):
        assert (
            not (cluster.root / host / "secrets").exists()
            and not (cluster.root / host / "webhook-secret").exists()
        )


def test_two_apis_count_the_deployment_once_and_themselves_apart(cluster: Cluster) -> None:
    """/metrics/jobs: the same from either replica (scrape one); /metrics/process: each its own."""
    a, b = cluster.api_urls
    submitted = [counter(url, "digitq_jobs_submitted_total") for url in (a, b)]
    assert submitted[0] == submitted[1]
    job = httpx.post(f"{a}/jobs", files=[("files", ("x.png", png(np.zeros((28, 28), np.uint8))))], timeout=30)
    assert job.status_code == 202
    assert [counter(url, "digitq_jobs_submitted_total") for url in (a, b)] == [submitted[0] + 1] * 2

    ok = 'digitq_api_process_responses_total{status_class="2xx"}'
    before = [counter(url, ok, "/metrics/process") for url in (a, b)]
    for _ in range(20):
        httpx.get(f"{a}/health")
    after = [counter(url, ok, "/metrics/process") for url in (a, b)]
    assert after[0] - before[0] >= 20
    assert after[1] - before[1] < 20, "replica b counted a's responses: a sum over replicas would double"


def test_a_host_killed_mid_job_every_item_answered_once(cluster: Cluster, big_zip: bytes) -> None:
    hosts = live_hosts(cluster)
    assert len(hosts) >= 2
    victim = hosts[-1]
    leader = int(cluster.pid_file(victim).read_text())
    assert leader == cluster.stack.processes[victim].pid and os.getpgid(leader) == leader
    with httpx.Client(base_url=cluster.api_urls[0], timeout=30) as api:
        processed = counter(cluster.api_urls[0], "digitq_items_processed_total")
        job_id = submit_and_wait_until_started(api, big_zip)
        os.killpg(leader, signal.SIGKILL)  # the machine is lost: main process and pool at once
        cluster.stack.processes[victim].wait()
        wait_until(lambda: f"worker@{victim}" not in ready(cluster), 30, 0.2, "/ready to drop the host")
        assert_every_item_once(cluster, api, job_id, processed)
    assert cluster.stack.processes[victim].poll() is not None  # nothing restarted it


def test_redis_restarted_mid_job_loses_nothing(cluster: Cluster, big_zip: bytes) -> None:
    assert cluster.stack.redis is not None
    with httpx.Client(base_url=cluster.api_urls[1], timeout=30) as api:
        processed = counter(cluster.api_urls[0], "digitq_items_processed_total")
        job_id = submit_and_wait_until_started(api, big_zip)
        cluster.stack.redis.stop()  # SIGTERM: the append-only file is flushed
        assert api.get(f"/jobs/{job_id}").status_code == 503
        cluster.stack.redis.start()
        assert_every_item_once(cluster, api, job_id, processed)


def test_a_late_host_with_an_empty_cache_pulls_the_model_and_joins(cluster: Cluster, digits) -> None:
    host = f"host{len(cluster.hosts) + 1}"
    cache = cluster.root / host / "model-cache"
    assert not cache.exists()
    cluster.start_host(host)
    wait_until(lambda: f"worker@{host}" in ready(cluster), 120, 0.2, f"{host} in /ready")
    version = ready(cluster)[f"worker@{host}"]
    assert (cache / str(version) / "model.joblib").is_file()  # pulled from S3 into its own cache
    # It takes work: the other hosts stop taking chunks for a moment, so only it can answer.
    from core.queue import LANES, make_celery

    app = make_celery(cluster.settings.model_copy(update={"redis_url": cluster.stack.redis_url}))
    others = [f"worker@{h}" for h in live_hosts(cluster) if h != host]
    for lane in LANES:
        app.control.cancel_consumer(lane, destination=others, reply=True, timeout=10)
    try:
        with httpx.Client(base_url=cluster.api_urls[0], timeout=60) as api:
            image = io.BytesIO(png(digits[0][7]))
            answer = api.post("/predict", files=[("file", ("d.png", image.getvalue()))])
            assert answer.status_code == 200, answer.text
    finally:
        for lane in LANES:
            app.control.add_consumer(lane, destination=others, reply=True, timeout=10)
