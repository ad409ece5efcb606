"""Process-wide clients built from the settings (redis-py pools are fork-safe)."""

from functools import lru_cache

import redis

from core.blobs import BlobStore, make_blob_store
from core.config import get_settings
from core.jobs import JobStore


@lru_cache
def get_redis() -> redis.Redis:
    url = get_settings().redis_url
    if not url:
        raise RuntimeError("REDIS_URL is not set (make run sets it for the embedded Redis)")
    return redis.Redis.from_url(url, health_check_interval=30)


@lru_cache
def get_job_store() -> JobStore:
    return JobStore(get_redis(), get_settings().job_ttl_seconds)


@lru_cache
def get_blob_store() -> BlobStore:
    return make_blob_store(get_settings())


def reset_clients() -> None:
    """Forget the cached settings and clients (tests that change settings between apps)."""
    from core.queue import get_celery

    for cached in (get_settings, get_redis, get_job_store, get_blob_store, get_celery):
        cached.cache_clear()
