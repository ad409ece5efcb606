"""Operations: readiness, Prometheus metrics, model reload; plus the API's logging, Sentry and
response counts.

Nothing here imports ml/ (or scikit-learn): worker state comes from Redis (core/fleet.py).
"""

import contextlib
import logging
import re
import threading
import time
from collections import Counter
from typing import Annotated, Any

import anyio
import redis
from fastapi import APIRouter, Body, Depends, FastAPI, Header, Response
from fastapi.responses import JSONResponse
from prometheus_client.core import CounterMetricFamily
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import metrics_token_ok, require_admin_key, require_metrics_token
from api.problems import PROBLEM_JSON, ProblemError
from api.schemas import Problem
from api.waiting import get_async_redis
from core import fleet, logs, metrics, promotion, sentry
from core.config import get_settings
from core.connections import get_redis
from core.queue import LANES, broker_key

router = APIRouter(tags=["operations"])
admin = APIRouter(prefix="/admin", tags=["operations"], dependencies=[Depends(require_admin_key)])
log = logging.getLogger(__name__)
JOB_PATH = re.compile(r"^/jobs/([0-9a-f]{32})(?:/|$)")


@router.get(
    "/ready",
    responses={
        503: {
            "description": "Not ready: Redis down, no live worker, or no model loaded (`reasons` says which)",
            "content": {"application/json": {}},
        }
    },
)
def ready(authorization: Annotated[str | None, Header(include_in_schema=False)] = None) -> JSONResponse:
    """200 when Redis answers and at least one live worker has a model loaded; else 503 with why.

    With METRICS_TOKEN set, the detail (workers by name, versions, reasons) needs it as a bearer
    token; without it only the verdict shows (what a load balancer's or kubelet's probe needs)."""
    detail = _readiness()
    status = 503 if detail.get("reasons") else 200
    if not metrics_token_ok(get_settings(), authorization):
        detail = {"status": detail["status"]}
    return JSONResponse(detail, status_code=status)


def _readiness() -> dict[str, Any]:
    detail: dict[str, Any] = {"redis": "down", "workers": [], "queue_depth": None}
    reasons: list[str] = []
    try:
        client = get_redis()
        client.ping()
        detail["redis"] = "ok"
        detail["queue_depth"] = sum(client.llen(broker_key(get_settings(), lane)) for lane in LANES)
        detail["model_version"] = fleet.current_version(client)
        detail["workers"] = [
            {
                "hostname": w["hostname"],
                "model_version": w.get("model_version"),
                "concurrency": w.get("concurrency"),
                "last_seen_seconds": round(time.time() - w["ts"], 1),
            }
            for w in fleet.workers(client)
        ]
    except (redis.RedisError, RuntimeError) as exc:
        reasons.append(f"redis unreachable: {type(exc).__name__}")
    if detail["redis"] == "ok":
        if not detail["workers"]:
            reasons.append("no live worker (none started, all down, or still loading their model)")
        elif not any(w["model_version"] for w in detail["workers"]):
            reasons.append("no worker has a model loaded")
    detail["status"] = "not ready" if reasons else "ready"
    if reasons:
        detail["reasons"] = reasons
    return detail


PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
_metrics_route = {
    "response_class": Response,
    "responses": {200: {"content": {"text/plain": {}}}, 401: {"description": "METRICS_TOKEN set, not sent"}},
    "dependencies": [Depends(require_metrics_token)],
}


@router.get("/metrics", **_metrics_route)  # type: ignore[arg-type]
@router.get("/metrics/jobs", operation_id="getJobMetrics", **_metrics_route)  # type: ignore[arg-type]
def prometheus_metrics() -> Response:
    """Prometheus text format: jobs, items, latencies, backlog, queue depth, workers and model
    versions. From Redis: every replica answers the same, so scrape ONE target (the Service),
    or sums count each number once per replica; /metrics/process is per replica."""
    try:
        response_counts.flush(get_redis())
        body = metrics.render(get_redis())
    except redis.RedisError as exc:
        raise ProblemError(503, "Redis unreachable", f"metrics live in Redis: {type(exc).__name__}") from exc
    return Response(body, media_type=PROMETHEUS_TEXT)


@router.get("/metrics/process", **_metrics_route)  # type: ignore[arg-type]
def process_metrics() -> Response:
    """This API process' own numbers (CPU, memory, file descriptors, the responses it sent):
    scrape every replica (pod discovery). Needs no Redis."""
    return Response(metrics.render_process(ProcessResponses()), media_type=PROMETHEUS_TEXT)


class ProcessResponses:
    """A collector of the responses this process sent, by status class (the deployment's total is
    digitq_http_responses_total on /metrics/jobs)."""

    def collect(self) -> Any:
        family = CounterMetricFamily(
            "digitq_api_process_responses",
            "Responses this API process sent, by status class",
            labels=["status_class"],
        )
        counts = response_counts.process_totals()
        for status_class in metrics.STATUS_CLASSES:
            family.add_metric([status_class], counts.get(f"http_responses:{status_class}", 0))
        yield family


class ReloadIn(BaseModel):
    version: str = Field(description="a version pushed to the registry (see `python -m ml list`)")
    timeout: float = Field(default=120, gt=0, le=600, description="seconds to wait for every worker")


@admin.post(
    "/reload",
    responses={
        code: {"model": Problem, "content": {PROBLEM_JSON: {}}, "description": text}
        for code, text in {
            401: "Missing or wrong admin key",
            403: "/admin disabled (no ADMIN_API_KEYS), or a client API key",
            409: "Refused: unknown/corrupt/untrusted version, no worker, or a reload in progress",
        }.items()
    },
)
async def reload_model(body: Annotated[ReloadIn, Body()]) -> dict[str, Any]:
    """Move every running worker to another model version, without a restart.

    Each worker downloads and verifies the version first; only when all are ready does the
    fleet switch (between chunks; a job keeps the version its first chunk used). On any
    refusal nothing changes. One reload at a time: a second one while the first waits is 409.
    """
    try:
        result = await _reload_fleet(body.version, body.timeout)
    except fleet.ReloadError as exc:
        log.warning("reload to %s refused: %s", body.version, exc)
        raise ProblemError(409, "Reload refused", str(exc)) from exc
    log.info("model reloaded: %s -> %s", result.previous, result.version)
    return {"version": result.version, "previous": result.previous, "workers": result.workers}


async def _reload_fleet(version: str, timeout: float) -> fleet.ReloadResult:
    """Every live worker to `version`, or fleet.ReloadError and nothing changes."""
    # Async, polling Redis in short thread hops: a reload waits up to `timeout` seconds without
    # holding one of AnyIO's 40 threads (45 such waits used to hang every sync route, /health too).
    client = get_redis()
    pending = await anyio.to_thread.run_sync(fleet.start_reload, client, version, timeout)
    try:
        while (result := await anyio.to_thread.run_sync(pending.poll, client)) is None:
            await anyio.sleep(fleet.POLL_SECONDS)
    except BaseException:  # the request was cancelled, or Redis failed: free the lock
        with contextlib.suppress(redis.RedisError):
            pending.release(client)
        raise
    return result


class PromoteIn(BaseModel):
    force: bool = Field(default=False, description="promote even without a passing comparison (logged)")
    timeout: float = Field(default=120, gt=0, le=600, description="seconds to wait for every worker")

    model_config = {"json_schema_extra": {"examples": [{"force": False, "timeout": 120}]}}


class RollbackIn(BaseModel):
    timeout: float = Field(default=120, gt=0, le=600, description="seconds to wait for every worker")

    model_config = {"json_schema_extra": {"examples": [{"timeout": 120}]}}


def _pointer() -> promotion.RegistryPointer:
    uri = get_settings().model_registry
    if not uri:
        raise ProblemError(409, "No model registry", "set MODEL_REGISTRY=s3://bucket/prefix")
    return promotion.RegistryPointer(uri)


async def _switch(version: str, timeout: float, move) -> dict[str, Any]:
    """Reload the fleet to `version` (or point an idle one at it), then `move()` the registry's
    latest: a version the workers refuse never becomes latest."""
    try:
        if await anyio.to_thread.run_sync(fleet.point_idle_fleet, get_redis(), version):
            workers: list[dict[str, Any]] = []
        else:
            workers = (await _reload_fleet(version, timeout)).workers
    except fleet.ReloadError as exc:
        raise ProblemError(409, "Reload refused", str(exc)) from exc
    previous = await anyio.to_thread.run_sync(move)
    return {"version": version, "previous": previous, "workers": workers}


PROMOTION_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "content": {PROBLEM_JSON: {}}, "description": text}
    for code, text in {
        401: "Missing or wrong admin key",
        403: "/admin disabled (no ADMIN_API_KEYS), or a client API key",
        404: "No such version in the registry",
        409: "Refused: no passing comparison, no earlier version, no registry, or the fleet refused it",
        503: "The registry is unreachable",
    }.items()
}


@admin.post("/models/{version}/promote", responses=PROMOTION_RESPONSES)
async def promote_model(version: str, body: Annotated[PromoteIn | None, Body()] = None) -> dict[str, Any]:
    """Make `version` the registry's latest and move the fleet to it.

    Refused unless `python -m ml compare <version>` recorded a comparison against the current
    latest that did not find it significantly worse (McNemar, held-out digits); `force`
    overrides that, and is logged.
    """
    body = body or PromoteIn()
    pointer = _pointer()
    try:
        await anyio.to_thread.run_sync(pointer.allow, version, body.force)
        result = await _switch(version, body.timeout, lambda: pointer.move_latest(version))
    except promotion.PromotionRefused as exc:
        raise ProblemError(409, "Promotion refused", str(exc)) from exc
    except promotion.UnknownVersion as exc:
        raise ProblemError(404, "Unknown model version", str(exc)) from exc
    except promotion.PointerError as exc:
        raise ProblemError(503, "Registry unavailable", str(exc)) from exc
    forced = " WITH FORCE (comparison check skipped)" if body.force else ""
    log.warning("model promoted%s: %s -> %s", forced, result["previous"], version)
    return {**result, "forced": body.force}


@admin.post("/models/rollback", responses=PROMOTION_RESPONSES)
async def rollback_model(body: Annotated[RollbackIn | None, Body()] = None) -> dict[str, Any]:
    """Latest back to the version before it, and the fleet with it."""
    body = body or RollbackIn()
    pointer = _pointer()
    try:
        target = await anyio.to_thread.run_sync(pointer.previous)
        result = await _switch(target, body.timeout, lambda: pointer.rollback().previous)
    except promotion.PointerError as exc:
        no_history = "no earlier version" in str(exc)
        raise ProblemError(409 if no_history else 503, "Rollback refused", str(exc)) from exc
    log.warning("model rolled back: %s -> %s", result["previous"], target)
    return result


class JobContext:
    """Log lines of a /jobs/{id} request carry its job id, and every response is counted in Redis
    by status class. Plain ASGI: `@app.middleware("http")` (BaseHTTPMiddleware) costs a task and
    a memory stream per request, and a thread-pool hop for a synchronous count."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        match = JOB_PATH.match(scope["path"])
        logs.clear()
        logs.bind(job_id=match.group(1) if match else None)
        status = 500  # an exception escaping the app: Starlette answers 500 outside this

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            await count_response(status)


class ResponseCounts:
    """The API's responses by status class, counted in the process and added to Redis in one
    round trip at most every FLUSH_SECONDS (by the response that finds them due) and before each
    /metrics answer: a round trip per response was a tenth of /predict's API time. A process
    killed loses its last second of counts; an idle replica's last counts wait for its next
    response or scrape."""

    FLUSH_SECONDS = 1.0

    def __init__(self) -> None:
        self._pending: Counter[str] = Counter()
        self._totals: Counter[str] = Counter()  # since this process started (/metrics/process)
        self._lock = threading.Lock()  # /metrics flushes from the thread pool
        self._due = 0.0

    def add(self, status: int) -> dict[str, int] | None:
        """Count one response; the counts to write now, when they are due."""
        with self._lock:
            field = metrics.http_response_field(status)
            self._pending[field] += 1
            self._totals[field] += 1
            now = time.monotonic()
            if now < self._due:
                return None
            self._due = now + self.FLUSH_SECONDS
            return self._take()

    def _take(self) -> dict[str, int]:
        counts, self._pending = dict(self._pending), Counter()
        return counts

    def process_totals(self) -> dict[str, int]:
        with self._lock:
            return dict(self._totals)

    def flush(self, client: redis.Redis) -> None:
        """Write what is pending now (before /metrics reads the hash)."""
        with self._lock:
            counts = self._take()
        pipe = client.pipeline(transaction=False)
        for field, n in counts.items():
            pipe.hincrby(metrics.KEY, field, n)
        pipe.execute()


response_counts = ResponseCounts()


async def count_response(status: int) -> None:
    """Count a response (async: a slow Redis must not stall the event loop); never fails the
    request (with Redis down, the answer is a 503 and the counts are lost)."""
    counts = response_counts.add(status)
    if not counts:
        return
    try:
        async with get_async_redis().pipeline(transaction=False) as pipe:
            for field, n in counts.items():
                pipe.hincrby(metrics.KEY, field, n)
            await pipe.execute()
    except (redis.RedisError, OSError, RuntimeError) as exc:
        log.debug("responses not counted: %s", exc)


def install(app: FastAPI) -> None:
    """Logging, Sentry, the job-id log context, and the routes above."""
    settings = get_settings()
    logs.configure(settings, "api")
    sentry.init(settings, "api")

    app.add_middleware(JobContext)
    app.include_router(router)
    app.include_router(admin)
