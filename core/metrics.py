"""Service metrics kept in Redis, exported by the API's GET /metrics in Prometheus format.

The work happens in many processes on many machines (API processes, each worker's prefork
pool), so process-local prometheus_client counters would each tell a part of the story.
Instead every process adds to one Redis hash with HINCRBY/HINCRBYFLOAT (one pipelined round
trip per job submission; a chunk's figures are counted by the script that stores its
results), and /metrics, on any API replica, reads it back as counters and histograms.
Histogram buckets are stored non-cumulative and summed on export.
Counters survive process restarts; they reset only if Redis loses its data, which Prometheus'
rate() handles like any counter reset.

What counts where:
- jobs submitted / items submitted: the API, when a job is accepted.
- items processed / items failed, chunk and per-item latency: the script that stores a chunk's
  results (core/jobs.py), in the same step. Processed counts only results stored for the first
  time (a redelivered chunk adds nothing).
- jobs finished by status: the Lua script that closes the job (core/jobs.py), in the same atomic
  step, so a scrape never sees a closed job uncounted; exactly once per job.
- job latency (created -> finished): the script that stores the job's last result, or the API
  right after a cancel; once per job.
- submissions refused by a quota, by reason: the API.
- labels set / cleared by people: the script that writes them (core/labels.py).
- queue depth per lane (the broker's lists) and the tenants waiting in the bulk lane: read live.
  The bulk list is capped by the fair-share window, so it is no backlog measure: images
  outstanding per lane (accepted, not yet answered: core/quotas.py) are, and the autoscaler and
  the backlog alert read those.

Replicas (issue 23): everything here lives in Redis, so every API replica serves the same
numbers, and scraping each replica would count them once per replica. `render` is therefore
scraped from ONE target (`GET /metrics/jobs`, or `/metrics`, the same answer, for one replica),
and `render_process` (`GET /metrics/process`) holds what is per process, scraped per replica.
- HTTP responses by status class: each API process counts them and adds them to the hash at
  most once a second and before each /metrics answer (api/routes/ops.py `ResponseCounts`).
"""

import bisect
from collections.abc import Iterable, Iterator

import redis
from prometheus_client import (
    PROCESS_COLLECTOR,
    CollectorRegistry,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.registry import Collector

from core import fleet, quotas
from core.config import get_settings
from core.dispatch import TENANTS
from core.queue import BULK, INTERACTIVE, broker_key

KEY = "digitq:metrics"
BUCKETS = {
    "job_seconds": (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
    "chunk_seconds": (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    "item_seconds": (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
}
HELP = {
    "job_seconds": "Time from submission to the last result, per finished job",
    "chunk_seconds": "Time a worker spends on one chunk (read, classify, store)",
    "item_seconds": "Worker time per item (a chunk's time shared among its items)",
}


def _observe(pipe: "redis.client.Pipeline", name: str, seconds: float, count: int = 1) -> None:
    buckets = BUCKETS[name]
    i = bisect.bisect_left(buckets, seconds)
    label = str(buckets[i]) if i < len(buckets) else "+Inf"
    pipe.hincrby(KEY, f"{name}:bucket:{label}", count)
    pipe.hincrby(KEY, f"{name}:count", count)
    pipe.hincrbyfloat(KEY, f"{name}:sum", seconds * count)


# The same observations in Lua, for the script that stores a chunk's results (core/jobs.py
# `record`), so that a chunk's results and its figures cost one round trip: core/lua/lib/observe.lua
# names the fields `_observe` does; these buckets are written into it by the loader (core/scripts.py).
LUA_VALUES = {
    "METRIC_BUCKETS": "{"
    + ", ".join(f"{name} = {{{', '.join(repr(str(b)) for b in bounds)}}}" for name, bounds in BUCKETS.items())
    + "}"
}


def job_submitted(pipe: "redis.client.Pipeline", items: int) -> None:
    """A job created: counted in the pipeline that creates it (JobStore.create's `also`)."""
    pipe.hincrby(KEY, "jobs_submitted", 1)
    pipe.hincrby(KEY, "items_submitted", items)


def job_finished(client: redis.Redis, seconds: float) -> None:
    """A job closed (its last result stored, or cancelled): its latency, observed once, by the one
    call that closed it. The count by status is the closing script's own (core/jobs.py)."""
    pipe = client.pipeline(transaction=False)
    _observe(pipe, "job_seconds", max(0.0, seconds))
    pipe.execute()


REFUSALS = ("queued_images", "submission_rate", "refused_requests")


def refused(client: redis.Redis, reason: str) -> None:
    """A submission refused by a quota (core/quotas.py)."""
    client.hincrby(KEY, f"refusals:{reason}", 1)


WEBHOOK_OUTCOMES = ("delivered", "retried", "gone", "gave_up", "failed")
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


def http_response_field(status: int) -> str:
    """The field that counts an API response by status class (the 4xx/5xx rates of the dashboard
    and alerts); the API's middleware increments it (api/routes/ops.py)."""
    return f"http_responses:{status // 100}xx"


def webhook_attempt(client: redis.Redis, outcome: str) -> None:
    """One webhook delivery attempt (worker/webhooks.py): `failed` is a non-terminal event's only try."""
    client.hincrby(KEY, f"webhook_deliveries:{outcome}", 1)


JOB_ENDS = ("succeeded", "failed", "cancelled")


class RedisCollector(Collector):
    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def collect(self) -> Iterator:
        raw = {fleet.text(k): fleet.text(v) for k, v in self.client.hgetall(KEY).items()}

        def num(name: str) -> float:
            return float(raw.get(name) or 0)

        yield CounterMetricFamily("digitq_jobs_submitted", "Jobs accepted by the API", num("jobs_submitted"))
        yield CounterMetricFamily("digitq_items_submitted", "Images in accepted jobs", num("items_submitted"))

        def by(name: str, help: str, label: str, values: Iterable[str], field: str) -> CounterMetricFamily:
            """A counter with one label: `field` names each value's hash field (`{}`: the value)."""
            family = CounterMetricFamily(name, help, labels=[label])
            for value in values:
                family.add_metric([value], num(field.format(value)))
            return family

        yield by(
            "digitq_jobs_finished", "Jobs closed, by final status", "status", JOB_ENDS, "jobs_finished:{}"
        )
        yield CounterMetricFamily(
            "digitq_jobs_succeeded", "Jobs that succeeded", num("jobs_finished:succeeded")
        )
        yield CounterMetricFamily("digitq_jobs_failed", "Jobs that failed", num("jobs_finished:failed"))
        yield CounterMetricFamily(
            "digitq_items_processed", "Item results stored (digits and errors)", num("items_processed")
        )
        yield CounterMetricFamily("digitq_items_failed", "Item results that are errors", num("items_failed"))
        yield by(
            "digitq_labels", "Item labels written by people, by action", "action", ("set", "cleared"),
            "labels_{}",
        )  # fmt: skip
        yield by(
            "digitq_webhook_deliveries", "Webhook delivery attempts, by outcome", "outcome",
            WEBHOOK_OUTCOMES, "webhook_deliveries:{}",
        )  # fmt: skip
        yield by(
            "digitq_http_responses", "API responses, by status class", "status_class",
            STATUS_CLASSES, "http_responses:{}",
        )  # fmt: skip
        for name, buckets in BUCKETS.items():
            cumulative, out = 0.0, []
            for bound in (*buckets, "+Inf"):
                cumulative += num(f"{name}:bucket:{bound}")
                out.append((str(bound) if bound == "+Inf" else repr(float(bound)), cumulative))
            yield HistogramMetricFamily(
                f"digitq_{name}", HELP[name], buckets=out, sum_value=num(f"{name}:sum")
            )
        yield by(
            "digitq_submissions_refused", "Submissions refused by a quota, by reason", "reason",
            REFUSALS, "refusals:{}",
        )  # fmt: skip
        depth = GaugeMetricFamily(
            "digitq_queue_depth", "Chunks waiting in the broker, by lane", labels=["lane"]
        )
        for lane, queue in (("interactive", INTERACTIVE), ("bulk", BULK)):
            depth.add_metric([lane], self.client.llen(broker_key(get_settings(), queue)))
        yield depth
        backlog = quotas.outstanding(self.client)
        outstanding = GaugeMetricFamily(
            "digitq_images_outstanding",
            "Images accepted and not yet answered, by lane (what autoscaling reads)",
            labels=["lane"],
        )
        for lane, queue in (("interactive", INTERACTIVE), ("bulk", BULK)):
            outstanding.add_metric([lane], backlog.get(queue, 0))
        yield outstanding
        yield GaugeMetricFamily(
            "digitq_images_outstanding_all",
            "Images accepted and not yet answered, every lane",
            sum(backlog.get(queue, 0) for queue in (INTERACTIVE, BULK)),
        )
        yield GaugeMetricFamily(
            "digitq_bulk_tenants_waiting",
            "API keys with bulk chunks waiting for the window (core/dispatch.py)",
            self.client.llen(TENANTS),
        )
        alive = fleet.workers(self.client)
        yield GaugeMetricFamily("digitq_workers", "Workers with a live heartbeat", len(alive))
        info = InfoMetricFamily(
            "digitq_worker_model", "Model version each live worker serves", labels=["worker"]
        )
        for w in alive:
            info.add_metric([w["hostname"]], {"version": str(w.get("model_version"))})
        yield info
        current = fleet.current_version(self.client)
        if current:
            yield InfoMetricFamily(
                "digitq_model", "Model version set by the last reload", {"version": current}
            )


def render(client: redis.Redis) -> bytes:
    """The deployment's numbers (from Redis): the same on every replica, scraped from one."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RedisCollector(client))
    return generate_latest(registry)


def render_process(*collectors: Collector) -> bytes:
    """This process' own numbers (CPU, memory, file descriptors, and `collectors`): per replica."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PROCESS_COLLECTOR)
    for collector in collectors:
        registry.register(collector)
    return generate_latest(registry)
