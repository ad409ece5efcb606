"""Quotas per API key (issue 9): images queued and submissions per minute.

The tenant is the caller (a digest of its API key, api/deps.py), or ANONYMOUS when the service
is open: then everybody shares one tenant's quotas.

- MAX_QUEUED_IMAGES_PER_KEY: `digitq:quota:queued:<tenant>` counts the tenant's images not yet
  finished. A submission reserves its images with one script that refuses it whole when they do
  not fit (nothing reserved); core/jobs.py's record script gives back each item as its result is
  stored, and cancel gives back the rest, in the same scripts that write them, so the count cannot
  drift from the results. The key expires JOB_TTL_SECONDS after the tenant's last submission.
- SUBMISSIONS_PER_MINUTE_PER_KEY: a sliding window (the `limits` package's moving window on the
  same Redis: a list of at most that many timestamps per tenant, expiring after a minute).
"""

import math
import time
from dataclasses import dataclass

import redis
from limits import RateLimitItemPerMinute
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

from core.config import Settings

ANONYMOUS = "anonymous"
QUEUED_PREFIX = "digitq:quota:queued:"
RATE_PREFIX = "digitq:quota:rate"
QUEUED_RETRY_AFTER = 30  # seconds: work drains at a rate we do not promise; look again then

# KEYS: the tenant's queued count. ARGV: images, limit, ttl. {1, new count} or {0, count} (refused).
_RESERVE = """
local queued = tonumber(redis.call('GET', KEYS[1]) or '0')
if queued + tonumber(ARGV[1]) > tonumber(ARGV[2]) then return {0, queued} end
queued = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return {1, queued}
"""


def tenant_of(caller: str | None) -> str:
    return caller or ANONYMOUS


def queued_key(tenant: str) -> str:
    return QUEUED_PREFIX + tenant


@dataclass(frozen=True)
class QuotaExceeded(Exception):
    reason: str  # `queued_images` or `submission_rate`: the /metrics label
    limit: str  # the setting
    detail: str
    retry_after: int


class Quotas:
    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.redis = client
        self.settings = settings
        self._reserve = client.register_script(_RESERVE)
        storage = RedisStorage("redis://", connection_pool=client.connection_pool, key_prefix=RATE_PREFIX)
        self.limiter = MovingWindowRateLimiter(storage)
        self.rate = RateLimitItemPerMinute(settings.submissions_per_minute_per_key)

    def count_submission(self, tenant: str) -> None:
        """One more submission in the tenant's sliding minute, or QuotaExceeded."""
        if self.limiter.hit(self.rate, tenant):
            return
        reset_at, _ = self.limiter.get_window_stats(self.rate, tenant)
        limit = self.settings.submissions_per_minute_per_key
        raise QuotaExceeded(
            "submission_rate",
            "SUBMISSIONS_PER_MINUTE_PER_KEY",
            f"more than {limit} submissions in the last minute (SUBMISSIONS_PER_MINUTE_PER_KEY); "
            "retry after Retry-After seconds, or send more images per job",
            max(1, math.ceil(reset_at - time.time())),
        )

    def reserve(self, tenant: str, images: int) -> None:
        """Count `images` as queued for the tenant, or refuse them all with QuotaExceeded."""
        limit = self.settings.max_queued_images_per_key
        ok, queued = self._reserve(
            keys=[queued_key(tenant)], args=[images, limit, self.settings.job_ttl_seconds]
        )
        if ok:
            return
        raise QuotaExceeded(
            "queued_images",
            "MAX_QUEUED_IMAGES_PER_KEY",
            f"{images} more images would exceed the {limit} images this API key may have queued "
            f"(MAX_QUEUED_IMAGES_PER_KEY; {queued} are not finished yet): wait until some jobs finish",
            QUEUED_RETRY_AFTER,
        )

    def release(self, tenant: str, images: int) -> None:
        """Give back a reservation whose job could not be created."""
        self.redis.decrby(queued_key(tenant), images)

    def queued(self, tenant: str) -> int:
        return int(self.redis.get(queued_key(tenant)) or 0)
