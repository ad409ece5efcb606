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

Only redis here: the API, the workers and `python -m ml reload` all use it.
"""

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis

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


@dataclass
class ReloadResult:
    version: str
    previous: str | None
    workers: list[dict[str, Any]] = field(default_factory=list)


def request_reload(client: redis.Redis, version: str, timeout: float = 120.0) -> ReloadResult:
    """Move every live worker to `version`, or raise ReloadError and change nothing.

    Work in flight is never mixed: a job keeps the version its first chunk pinned, and pool
    processes switch between chunks.
    """
    version = version.strip()
    if not version or "/" in version or version.startswith("."):
        raise ReloadError(f"invalid version name {version!r}")
    alive = workers(client)
    if not alive:
        raise ReloadError("no live workers to download and verify the model; start a worker first")
    request = {"id": uuid.uuid4().hex, "version": version}
    client.set(CANDIDATE_KEY, json.dumps(request), ex=int(timeout) + 60)
    deadline = time.monotonic() + timeout
    while True:
        states = {w["hostname"]: (w.get("candidate") or {}) for w in workers(client)}
        answered = {h: s for h, s in states.items() if s.get("id") == request["id"]}
        failed = {h: s["error"] for h, s in answered.items() if s.get("error")}
        if failed:
            client.delete(CANDIDATE_KEY)
            detail = "; ".join(f"{h}: {e}" for h, e in failed.items())
            raise ReloadError(f"version {version} refused: {detail}", workers(client))
        # Workers that were alive at the start and are still alive must all be ready.
        pending = [
            w["hostname"]
            for w in alive
            if w["hostname"] in states and not answered.get(w["hostname"], {}).get("ok")
        ]
        if not pending:
            break
        if time.monotonic() > deadline:
            client.delete(CANDIDATE_KEY)
            raise ReloadError(
                f"version {version} not ready after {timeout:.0f}s on {', '.join(pending)}", workers(client)
            )
        time.sleep(0.2)
    previous = client.getset(CURRENT_KEY, version)
    client.delete(CANDIDATE_KEY)
    return ReloadResult(version, text(previous), workers(client))
