"""The models a worker serves.

Start-up (`load_default`, from the worker_init signal in the main process before the pool
forks, so no chunk is taken before a model is loaded and the pool shares its memory): the
version is `digitq:model:current` in Redis if a reload set one, else MODEL_URI's (`latest`
or a version, on S3 or local disk). S3 versions are downloaded once into MODEL_CACHE_DIR,
sha256-verified, checked against MODEL_SIGNING_KEY / TRUSTED_MODEL_SHA256 before anything is
unpickled (ml/trust.py), and reused across restarts. An unreachable registry (or Redis) is retried
with backoff, logged on every attempt; a model that fails its checksum, or that nothing vouches
for, is refused and the worker exits with code 3 (restarting cannot fix a corrupt or untrusted
artifact; an operator must push again or point MODEL_URI elsewhere).

Reload (see core/fleet.py): the main process' `reload` duty (worker/scheduler.py) prepares a
candidate version (download + verify + test load) and its heartbeat reports how it went; once
`digitq:model:current` moves, each pool process switches before its next chunk (its start script
reads the key: `follow`), loading the version from the local cache. A job's version is pinned by
its first chunk, and `get(version)` loads an older pinned version on demand (cache, else S3), so a
job never mixes versions even while workers switch.
"""

import contextlib
import logging
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path

import redis

from core import fleet, logs
from core.config import Settings
from ml import DigitModel, ModelIntegrityError
from ml.registry import ModelSource, RegistryUnavailable, open_model_uri
from ml.trust import ModelTrust

log = logging.getLogger(__name__)

KEEP_LOADED = 3  # versions held in memory per process (the current one is never evicted)
INTEGRITY_EXIT_CODE = 3
RETRYABLE = (
    RegistryUnavailable,
    FileNotFoundError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)

_loaded: "OrderedDict[str, DigitModel]" = OrderedDict()
_current: str | None = None
_source: ModelSource | None = None
_lock = threading.RLock()


def _redis() -> redis.Redis:
    from core.connections import get_redis

    return get_redis()


def _remember(model: DigitModel) -> DigitModel:
    with _lock:
        _loaded[model.version] = model
        _loaded.move_to_end(model.version)
        while len(_loaded) > KEEP_LOADED:
            oldest = next(v for v in _loaded if v != _current)
            del _loaded[oldest]
    return model


def _load(version: str) -> DigitModel:
    assert _source is not None, "load_default() first"
    path = _source.fetch(version)
    model = DigitModel.load(Path(path))
    if model.version != version:
        raise ModelIntegrityError(f"{path} holds version {model.version}, not {version}")
    return model


def load_default(settings: Settings, max_delay: float = 30.0) -> DigitModel:
    """Load the version to serve, retrying while the registry or Redis is unreachable."""
    global _source, _current
    trust = ModelTrust.from_settings(settings)
    source, ref = open_model_uri(settings.model_uri, settings.model_cache_dir, trust)
    _source = source
    delay, attempt = 1.0, 0
    while True:
        attempt += 1
        try:
            desired = fleet.current_version(_redis()) if settings.redis_url else None
            version = desired or source.resolve(ref)
            model = _remember(_load(version))
            break
        except RETRYABLE as exc:
            log.warning(
                "model not loaded (attempt %d, %s %s): %s; taking no work until it is, retrying in %.0fs",
                attempt,
                source,
                ref,
                exc,
                delay,
            )
            time.sleep(delay)
            delay = min(delay * 2, max_delay)
    _current = model.version
    how = "reload (digitq:model:current)" if desired else f"MODEL_URI {ref}"
    log.info("model %s loaded from %s, chosen by %s", model.version, source, how)
    return model


def current_version() -> str:
    """The version this process serves new jobs with."""
    if _current is None:
        raise RuntimeError("no model loaded")
    return _current


def follow(desired: str) -> str:
    """Switch to the fleet's version (`digitq:model:current`, read by each chunk's start script)
    if it is ready here, else stay; returns the version served from now on."""
    global _current
    current = current_version()
    if desired != current and _source is not None and _source.is_local(desired):
        try:
            model = get(desired)
        except Exception:
            log.exception("could not switch to model %s; staying on %s", desired, current)
        else:
            log.info("switched from model %s to %s", current, model.version)
            _current = model.version
    return current_version()


def get(version: str) -> DigitModel:
    """The model of this version; a job keeps the version its first chunk used."""
    with _lock:
        model = _loaded.get(version)
        if model is not None:
            _loaded.move_to_end(version)
    if model is None:
        log.info("loading model %s on demand", version)
        model = _remember(_load(version))
    logs.bind(model_version=version)
    return model


def serving() -> str | None:
    return _current


class FleetMember:
    """This worker in the fleet (core/fleet.py): its heartbeat and its answers to reload requests.
    The main process runs both as duties (worker/scheduler.py)."""

    def __init__(self, hostname: str, settings: Settings) -> None:
        self.hostname = hostname
        self.settings = settings
        self.started_at = time.time()
        self.candidate: dict = {}  # the last reload request handled, as the heartbeat reports it
        self._handled: str | None = None

    def beat(self) -> None:
        """Say this worker is alive, which model it serves and how its reload candidate went."""
        global _current
        client = _redis()
        desired = fleet.current_version(client)
        if desired and desired != _current and _source and _source.is_local(desired):
            log.info("fleet model is now %s (was %s)", desired, _current)
            _current = desired  # what this node reports; pool processes switch per chunk
        fleet.beat(
            client,
            self.hostname,
            {
                "pid": os.getpid(),
                "model_version": _current,
                "model_source": str(_source),
                "concurrency": self.settings.worker_processes,
                "started_at": self.started_at,
                "candidate": self.candidate,
            },
        )

    def check_reload(self) -> None:
        """Prepare a new reload request's version: download, verify, test load (slow: a duty
        runs in its own thread, and the heartbeat reports `ok: false` until it is done)."""
        request = fleet.candidate(_redis())
        if not request or request.get("id") == self._handled:
            return
        self._handled = request["id"]
        self.candidate = {**request, "ok": False}
        version = request["version"]
        try:
            _load(version)  # download if needed, verify the sha256, unpickle; then let it go
            self.candidate = {**request, "ok": True}
            log.info("reload candidate %s downloaded and verified", version)
        except Exception as exc:
            self.candidate = {**request, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
            log.error("reload candidate %s refused: %s", version, exc)

    def leave(self) -> None:
        """Drop the heartbeat at shutdown: /ready stops counting this worker at once."""
        with contextlib.suppress(redis.exceptions.RedisError):
            fleet.forget(_redis(), self.hostname)
