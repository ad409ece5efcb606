"""Dependencies injected into the routes: settings, stores, the queue, and the API-key check."""

import hashlib
import hmac
from typing import Annotated

from celery import Celery
from fastapi import Depends, Header

from api.problems import ProblemError
from core.blobs import BlobStore
from core.config import Settings, get_settings
from core.connections import get_blob_store, get_job_store
from core.jobs import JobStore
from core.queue import get_celery

# `async def`: FastAPI runs a plain `def` dependency in the thread pool, a round trip to another
# thread per dependency and request (a third of /predict's API time before); these only read caches.


async def _settings() -> Settings:
    return get_settings()


async def _job_store() -> JobStore:
    return get_job_store()


async def _blob_store() -> BlobStore:
    return get_blob_store()


async def _celery() -> Celery:
    return get_celery()


SettingsDep = Annotated[Settings, Depends(_settings)]
JobStoreDep = Annotated[JobStore, Depends(_job_store)]
BlobStoreDep = Annotated[BlobStore, Depends(_blob_store)]
CeleryDep = Annotated[Celery, Depends(_celery)]


async def require_api_key(
    settings: SettingsDep,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    x_api_key: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> str | None:
    """When API_KEYS is set, every job route needs `Authorization: Bearer <key>` or `X-API-Key`.

    Returns the caller: a digest of its key (the key itself is never stored), or None when the
    service is open. A job belongs to the caller that submitted it.
    """
    keys = settings.api_key_set
    if not keys:
        return None
    given = x_api_key or (authorization or "").removeprefix("Bearer ").strip()
    if not any(hmac.compare_digest(given.encode(), key.encode()) for key in keys):
        raise ProblemError(
            401,
            "Unauthorized",
            "send a valid API key as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return hashlib.sha256(given.encode()).hexdigest()[:32]


CallerDep = Annotated[str | None, Depends(require_api_key)]
