"""Process-wide clients built from the settings (redis-py pools are fork-safe)."""

from functools import lru_cache
from typing import TYPE_CHECKING

import redis

from core.blobs import BlobStore, make_blob_store
from core.config import get_settings
from core.idempotency import SubmissionClaims
from core.jobs import JobStore
from core.redis_owner import client_options
from core.sweep_state import SweepState
from core.webhook_state import WebhookState

if TYPE_CHECKING:
    from core.batching import Batcher
    from core.dispatch import FairShare
    from core.labelled import LabelledStore
    from core.quotas import Quotas


@lru_cache
def get_redis() -> redis.Redis:
    settings = get_settings()
    if not settings.redis_url:
        raise RuntimeError("REDIS_URL is not set (make run sets it for the embedded Redis)")
    url = settings.redis_url
    return redis.Redis.from_url(url, health_check_interval=30, **client_options(url))


@lru_cache
def get_job_store() -> JobStore:
    return JobStore(get_redis(), get_settings().job_ttl_seconds)


@lru_cache
def get_submission_claims() -> SubmissionClaims:
    return SubmissionClaims(get_redis())


@lru_cache
def get_webhook_state() -> WebhookState:
    return WebhookState(get_redis())


@lru_cache
def get_sweep_state() -> SweepState:
    return SweepState(get_redis(), get_settings().job_ttl_seconds)


@lru_cache
def get_blob_store() -> BlobStore:
    return make_blob_store(get_settings())


@lru_cache
def get_fair_share() -> "FairShare":
    from core.dispatch import FairShare

    return FairShare(get_redis(), get_settings())


@lru_cache
def get_batcher() -> "Batcher":
    from core.batching import Batcher
    from core.queue import get_celery

    return Batcher(get_celery(), get_settings().batch_max_images)


@lru_cache
def get_quotas() -> "Quotas":
    from core.quotas import Quotas

    return Quotas(get_redis(), get_settings())


@lru_cache
def get_labelled_store() -> "LabelledStore":
    from core.blobs import make_labelled_store
    from core.labelled import LabelledStore

    settings = get_settings()
    return LabelledStore(make_labelled_store(settings), get_redis(), settings.max_labelled_items)


def reset_clients() -> None:
    """Forget the cached settings and clients (tests that change settings between apps)."""
    from core.queue import get_celery

    cached_clients = (
        get_redis,
        get_job_store,
        get_submission_claims,
        get_webhook_state,
        get_sweep_state,
        get_blob_store,
        get_celery,
        get_fair_share,
        get_quotas,
        get_labelled_store,
        get_batcher,
    )
    for cached in (get_settings, *cached_clients):
        cached.cache_clear()
