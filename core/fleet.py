"""What the workers are doing, shared through Redis: heartbeats and the model version to serve.

Keys (all small):
- `digitq:worker:<hostname>`: JSON heartbeat written every HEARTBEAT_SECONDS by each worker's
  main process once its model is loaded, expiring after HEARTBEAT_TTL: hostname, pid,
  model_version, and the state of the last reload request it handled.
- `digitq:workers`: the index of heartbeats, a sorted set of hostnames scored by their last
  beat, so that /ready and /metrics read the workers without SCANning the whole keyspace (which
  costs O(every job key) on a busy Redis). Stale members are pruned on every beat and read, and
  the set expires with the last heartbeat: it is bounded by the live workers.
- `digitq:model:current`: the version every worker serves (set by a successful reload). Pool
  processes compare it with their model before each chunk; new workers start on it.
- `digitq:model:candidate`: `{"id", "version"}` of a reload in progress. Each worker's main
  process downloads and verifies it, then reports ok/error in its heartbeat; only when every
  live worker reports ok does `current` move. A bad version therefore never becomes current.
  It is also the reload lock: set only if absent (SET NX, expiring after the reload's timeout
  + 60 s), so a second reload is refused (ReloadInProgress) instead of replacing the first's.

Only redis here: the API, the workers and `python -m ml reload` all use it.
"""

import contextlib
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis

from core import scripts

WORKER_PREFIX = "digitq:worker:"
WORKERS_INDEX = "digitq:workers"
CURRENT_KEY = "digitq:model:current"
CANDIDATE_KEY = "digitq:model:candidate"
HEARTBEAT_SECONDS = 2.0
HEARTBEAT_TTL = 10


def beat(client: redis.Redis, hostname: str, info: dict[str, Any]) -> None:
    now = time.time()
    payload = {**info, "hostname": hostname, "ts": now}
    pipe = client.pipeline(transaction=False)
    pipe.set(WORKER_PREFIX + hostname, json.dumps(payload), ex=HEARTBEAT_TTL)
    pipe.zadd(WORKERS_INDEX, {hostname: now})
    pipe.zremrangebyscore(WORKERS_INDEX, "-inf", now - HEARTBEAT_TTL)
    pipe.expire(WORKERS_INDEX, HEARTBEAT_TTL)
    pipe.execute()


def forget(client: redis.Redis, hostname: str) -> None:
    pipe = client.pipeline(transaction=False)
    pipe.delete(WORKER_PREFIX + hostname)
    pipe.zrem(WORKERS_INDEX, hostname)
    pipe.execute()


def workers(client: redis.Redis) -> list[dict[str, Any]]:
    """Live workers (those whose heartbeat has not expired), by hostname."""
    client.zremrangebyscore(WORKERS_INDEX, "-inf", time.time() - HEARTBEAT_TTL)
    hostnames = sorted(text(h) or "" for h in client.zrange(WORKERS_INDEX, 0, -1))
    if not hostnames:
        return []
    found = []
    for raw in client.mget([WORKER_PREFIX + h for h in hostnames]):
        if raw:
            found.append(json.loads(raw))
    return sorted(found, key=lambda w: w["hostname"])


def processes(client: redis.Redis) -> int:
    """The live workers' pool processes, from their heartbeats."""
    return sum(int(w.get("concurrency") or 0) for w in workers(client))


def text(raw: Any) -> str | None:
    """A Redis reply as text (clients here do not decode responses)."""
    if raw is None:
        return None
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def current_version(client: redis.Redis) -> str | None:
    return text(client.get(CURRENT_KEY)) or None


def candidate(client: redis.Redis) -> dict[str, str] | None:
    raw = client.get(CANDIDATE_KEY)
    return json.loads(raw) if raw else None


class ReloadError(Exception):
    def __init__(self, message: str, workers: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.workers = workers or []


class ReloadInProgress(ReloadError):
    """Another reload holds the candidate: one at a time, so none silently replaces another's."""


@dataclass
class ReloadResult:
    version: str
    previous: str | None
    workers: list[dict[str, Any]] = field(default_factory=list)


POLL_SECONDS = 0.2


@dataclass
class PendingReload:
    """A reload whose candidate is published: `poll()` until it returns the result or raises.

    Each poll is a few quick Redis calls, so a caller can wait without holding a thread (the
    API awaits between polls; the CLI sleeps).
    """

    version: str
    request: str  # the candidate's JSON, as stored: the token for releasing it
    alive: list[dict[str, Any]]
    deadline: float
    timeout: float

    def poll(self, client: redis.Redis) -> ReloadResult | None:
        request_id = json.loads(self.request)["id"]
        states = {w["hostname"]: (w.get("candidate") or {}) for w in workers(client)}
        answered = {h: s for h, s in states.items() if s.get("id") == request_id}
        failed = {h: s["error"] for h, s in answered.items() if s.get("error")}
        if failed:
            self.release(client)
            detail = "; ".join(f"{h}: {e}" for h, e in failed.items())
            raise ReloadError(f"version {self.version} refused: {detail}", workers(client))
        # Workers that were alive at the start and are still alive must all be ready.
        pending = [
            w["hostname"]
            for w in self.alive
            if w["hostname"] in states and not answered.get(w["hostname"], {}).get("ok")
        ]
        if pending:
            if time.monotonic() > self.deadline:
                self.release(client)
                raise ReloadError(
                    f"version {self.version} not ready after {self.timeout:.0f}s on {', '.join(pending)}",
                    workers(client),
                )
            return None
        previous = client.getset(CURRENT_KEY, self.version)
        self.release(client)
        return ReloadResult(self.version, text(previous), workers(client))

    def release(self, client: redis.Redis) -> None:
        scripts.register(client, "fleet_release")(keys=[CANDIDATE_KEY], args=[self.request])


def start_reload(client: redis.Redis, version: str, timeout: float = 120.0) -> PendingReload:
    """Publish `version` as the candidate, unless another reload is in progress (ReloadInProgress)."""
    version = version.strip()
    if not version or "/" in version or version.startswith("."):
        raise ReloadError(f"invalid version name {version!r}")
    alive = workers(client)
    if not alive:
        raise ReloadError("no live workers to download and verify the model; start a worker first")
    request = json.dumps({"id": uuid.uuid4().hex, "version": version})
    if not client.set(CANDIDATE_KEY, request, ex=int(timeout) + 60, nx=True):
        other = candidate(client) or {}
        raise ReloadInProgress(
            f"a reload to {other.get('version', 'another version')} is in progress; "
            "retry once it has finished (one reload at a time)"
        )
    return PendingReload(version, request, alive, time.monotonic() + timeout, timeout)


def point_idle_fleet(client: redis.Redis, version: str) -> bool:
    """With no live worker there is nobody to reload, but `current` still names the version a
    starting worker serves: point it at `version` (a promotion or rollback must not be undone by
    the next restart). False, changing nothing, if any worker is alive."""
    if workers(client):
        return False
    if client.exists(CURRENT_KEY):
        client.set(CURRENT_KEY, version)
    return True


def request_reload(client: redis.Redis, version: str, timeout: float = 120.0) -> ReloadResult:
    """Move every live worker to `version`, or raise ReloadError and change nothing.

    Work in flight is never mixed: a job keeps the version its first chunk pinned, and pool
    processes switch between chunks.
    """
    reload = start_reload(client, version, timeout)
    try:
        while (result := reload.poll(client)) is None:
            time.sleep(POLL_SECONDS)
    except BaseException:
        with contextlib.suppress(redis.RedisError):
            reload.release(client)  # Ctrl-C: let the next reload start
        raise
    return result
