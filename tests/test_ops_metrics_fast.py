"""Operations endpoints for a deployment of several hosts (issue 23), fast tier (the real API over
a real Redis, no workers; results go through the JobStore scripts the workers use):

- the backlog as images outstanding per lane and in total, which the bulk lane's broker list
  (capped by the fair-share window) cannot show;
- /metrics/jobs (the deployment's numbers, one scrape target) vs /metrics/process (this process);
- METRICS_TOKEN protecting /metrics* and /ready's detail.
"""

from collections.abc import Callable

import numpy as np
from fastapi.testclient import TestClient

from core.connections import get_job_store
from core.jobs import ItemResult
from tests.helpers import make_zip, png

TOKEN = "metrics-token-0123456789"


def zip_of(n: int) -> list[tuple[str, tuple[str, bytes]]]:
    image = png(np.zeros((28, 28), dtype=np.uint8))
    return [("files", ("batch.zip", make_zip({f"{i}.png": image for i in range(n)})))]


def gauges(client: TestClient, path: str = "/metrics/jobs", **headers: str) -> dict[str, float]:
    text = client.get(path, headers=headers).text
    return {
        line.rpartition(" ")[0]: float(line.rpartition(" ")[2])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def backlog(client: TestClient) -> tuple[float, float, float]:
    g = gauges(client)
    return (
        g['digitq_images_outstanding{lane="bulk"}'],
        g['digitq_images_outstanding{lane="interactive"}'],
        g["digitq_images_outstanding_all"],
    )


def test_images_outstanding_per_lane_beyond_the_bulk_window(make_client: Callable[..., TestClient]) -> None:
    client = make_client(CHUNK_SIZE="5", BULK_IN_FLIGHT_CHUNKS="2")
    bulk = [client.post("/jobs", files=zip_of(40)).json()["id"] for _ in range(3)]
    small = client.post("/jobs", files=zip_of(3)).json()["id"]  # <= INTERACTIVE_MAX_ITEMS
    g = gauges(client)
    # The window holds 2 bulk chunks in the broker whatever waits: the old backlog measure.
    assert g['digitq_queue_depth{lane="bulk"}'] == 2
    assert backlog(client) == (120, 3, 123)

    store = get_job_store()
    store.record(bulk[0], [ItemResult(i, 1, 0.9) for i in range(10)], "anonymous")
    store.record(bulk[0], [ItemResult(i, 1, 0.9) for i in range(10)], "anonymous")  # redelivered: once
    store.record(small, [ItemResult(i, 1, 0.9) for i in range(3)], "anonymous")
    assert backlog(client) == (110, 0, 110)
    assert client.delete(f"/jobs/{bulk[1]}").json()["status"] == "cancelled"  # its 40 go back
    assert backlog(client) == (70, 0, 70)
    store.record(bulk[1], [ItemResult(0, 1, 0.9)], "anonymous")  # a late chunk after the cancel
    assert backlog(client) == (70, 0, 70)


def test_jobs_and_process_metrics_are_apart(make_client: Callable[..., TestClient]) -> None:
    client = make_client()
    assert client.post("/jobs", files=zip_of(2)).status_code == 202
    jobs = client.get("/metrics/jobs").text
    assert "digitq_jobs_submitted_total 1.0" in jobs
    assert "process_resident_memory_bytes" not in jobs  # a per-replica number would be summed wrong
    process = client.get("/metrics/process").text
    assert "process_resident_memory_bytes" in process or "process_cpu_seconds_total" in process
    assert "digitq_jobs_submitted" not in process  # a deployment number, scraped once per replica
    before = gauges(client, "/metrics/process")['digitq_api_process_responses_total{status_class="2xx"}']
    for _ in range(3):
        client.get("/health")
    after = gauges(client, "/metrics/process")['digitq_api_process_responses_total{status_class="2xx"}']
    assert after >= before + 4  # three /health and the scrape before


def test_metrics_token_guards_metrics_and_readiness_detail(make_client: Callable[..., TestClient]) -> None:
    client = make_client(METRICS_TOKEN=TOKEN)
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    for path in ("/metrics", "/metrics/jobs", "/metrics/process"):
        refused = client.get(path)
        assert refused.status_code == 401, path
        assert refused.headers["content-type"] == "application/problem+json"
        assert client.get(path, headers={"Authorization": "Bearer wrong-token-000000"}).status_code == 401
        assert client.get(path, headers=bearer).status_code == 200, path
    # /ready: the verdict for probes (no worker here: 503), the detail for the token holder.
    bare = client.get("/ready")
    assert bare.status_code == 503 and bare.json() == {"status": "not ready"}
    detailed = client.get("/ready", headers=bearer)
    assert detailed.status_code == 503 and "reasons" in detailed.json() and "workers" in detailed.json()


def test_without_a_token_metrics_stay_open(make_client: Callable[..., TestClient]) -> None:
    client = make_client()
    assert client.get("/metrics/jobs").status_code == 200
    assert "reasons" in client.get("/ready").json()
