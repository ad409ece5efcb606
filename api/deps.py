"""Dependencies injected into the routes: settings, stores, the queue, and the API-key check."""

import hashlib
import hmac
from dataclasses import dataclass
from typing import Annotated

from celery import Celery
from fastapi import Depends, Header, Request

from api.problems import ProblemError
from core.batching import Batcher
from core.blobs import BlobStore
from core.config import Settings, get_settings, is_loopback
from core.connections import get_batcher, get_blob_store, get_fair_share, get_job_store, get_quotas
from core.dispatch import FairShare
from core.jobs import JobStore
from core.queue import get_celery
from core.quotas import Quotas

# `async def`: FastAPI runs a plain `def` dependency in the thread pool, a round trip to another
# thread per dependency and request (a third of /predict's API time before); these only read caches.


async def _settings() -> Settings:
    return get_settings()


async def _job_store() -> JobStore:
    return get_job_store()


async def _blob_store() -> BlobStore:
    return get_blob_store()


async def _fair_share() -> FairShare:
    return get_fair_share()


SettingsDep = Annotated[Settings, Depends(_settings)]
JobStoreDep = Annotated[JobStore, Depends(_job_store)]
BlobStoreDep = Annotated[BlobStore, Depends(_blob_store)]
FairShareDep = Annotated[FairShare, Depends(_fair_share)]


def _presented_key(authorization: str | None, x_api_key: str | None) -> str:
    return x_api_key or (authorization or "").removeprefix("Bearer ").strip()


def _one_of(given: str, keys: frozenset[str]) -> bool:
    return any(hmac.compare_digest(given.encode(), key.encode()) for key in keys)


UNAUTHORIZED = "send a valid API key as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"


async def require_api_key(
    request: Request,
    settings: SettingsDep,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    x_api_key: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> str | None:
    """When API_KEYS is set, every job route needs `Authorization: Bearer <key>` or `X-API-Key`.

    Returns the caller: a digest of its key (the key itself is never stored), or None when the
    service is open. A job belongs to the caller that submitted it. Open (no API_KEYS) serves
    loopback clients only, unless ALLOW_OPEN_API: however the server was started (`uvicorn
    --host 0.0.0.0` included), nothing beyond the machine reaches the jobs without a key.
    """
    keys = settings.api_key_set
    if not keys:
        client = request.client.host if request.client else ""
        if not settings.allow_open_api and not is_loopback(client):
            raise ProblemError(
                403,
                "Open API on loopback only",
                "this API has no API_KEYS, so it answers loopback clients only: set API_KEYS "
                "(or ALLOW_OPEN_API=true to serve anyone who can reach it without a key)",
            )
        if request.headers.get("sec-fetch-site") == "cross-site":
            # A web page elsewhere, open in a local user's browser, posting a form to 127.0.0.1
            # (with keys it could not: it has no key to send). The page at / is same-origin.
            raise ProblemError(403, "Cross-site request", "an open API refuses requests from other sites")
        return None
    given = _presented_key(authorization, x_api_key)
    if not _one_of(given, keys):
        raise ProblemError(401, "Unauthorized", UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})
    return hashlib.sha256(given.encode()).hexdigest()[:32]


async def require_admin_key(
    settings: SettingsDep,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    x_api_key: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> None:
    """/admin/* needs one of ADMIN_API_KEYS: keys of their own, never a client's. Unset, /admin
    is disabled (loopback included: it is shared with every local user and process)."""
    admin_keys = settings.admin_key_set
    if not admin_keys:
        raise ProblemError(
            403,
            "Admin API disabled",
            "/admin is disabled: set ADMIN_API_KEYS (keys of their own, not the clients' API_KEYS) "
            "to enable it; `python -m ml reload` works with REDIS_URL meanwhile",
        )
    given = _presented_key(authorization, x_api_key)
    if _one_of(given, admin_keys):
        return
    if given and _one_of(given, settings.api_key_set):
        raise ProblemError(403, "Forbidden", "a client API key cannot use /admin: send one of ADMIN_API_KEYS")
    raise ProblemError(401, "Unauthorized", UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})


CallerDep = Annotated[str | None, Depends(require_api_key)]


@dataclass(frozen=True)
class Submission:
    """What creating a job needs: the settings, the stores, the queue, the quotas and the caller
    (one dependency for the routes that submit: /jobs, /predict, /predict_batch)."""

    settings: Settings
    store: JobStore
    blobs: BlobStore
    celery: Celery
    fair: FairShare
    quotas: Quotas
    caller: str | None
    batcher: Batcher | None = None  # one-trip chunks published together (core/batching.py)


async def _submission(settings: SettingsDep, caller: CallerDep) -> Submission:
    batcher = get_batcher() if settings.batch_max_images else None
    return Submission(
        settings,
        get_job_store(),
        get_blob_store(),
        get_celery(),
        get_fair_share(),
        get_quotas(),
        caller,
        batcher,
    )


SubmissionDep = Annotated[Submission, Depends(_submission)]
