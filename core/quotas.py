"""Quotas per API key (issue 9): images queued and submissions per minute.

The tenant is the caller (a digest of its API key, api/deps.py), or ANONYMOUS when the service
is open: then everybody shares one tenant's quotas.

- MAX_QUEUED_IMAGES_PER_KEY: `digitq:quota:queued:<tenant>` counts the tenant's images not yet
  finished. A submission reserves its images with one script that refuses it whole when they do
  not fit (nothing reserved); core/jobs.py's record script gives back each item as its result is
  stored, and cancel gives back the rest, in the same scripts that write them, so the count cannot
  drift from the results. The key expires JOB_TTL_SECONDS after the tenant's last submission.
- SUBMISSIONS_PER_MINUTE_PER_KEY: a sliding window, `digitq:quota:rate:<tenant>`: a list of at
  most that many submission times, newest first, expiring a minute after the last one (the
  `limits` package's moving window, done in the same script as the reservation: a submission's
  quotas cost one round trip, not three).

- Images outstanding per lane (issue 23): `digitq:quota:outstanding`, a HASH lane -> images
  accepted and not yet answered, the sum of the tenants' queued counts split by lane. The same
  scripts keep it (admit adds, core/jobs.py's record and cancel scripts take back by the job's
  `lane` field), so /metrics reads the whole backlog in one HGETALL: the broker's bulk list is
  capped by the fair-share window (core/dispatch.py) and says nothing of what waits behind it.
  It expires JOB_TTL_SECONDS after the last submission, like the counts it sums.
- REFUSED_REQUESTS_PER_MINUTE: uploads refused (a wrong key, too large, unusable) count in
  `digitq:quota:refused:<tenant or address>`, a counter that expires a minute after its first
  refusal; past the limit every upload of that key (or address, without a valid key) is answered
  429 before its body is read (api/gate.py), so repeating a refused request costs almost nothing.

`admit` checks both in one script: the submission is counted first (as it arrives; a submission
then refused for its images still counts), then its images are reserved, or none.
"""

import math
import time
from dataclasses import dataclass

import redis

from core.config import Settings
from core.queue import BULK

ANONYMOUS = "anonymous"
QUEUED_PREFIX = "digitq:quota:queued:"
RATE_PREFIX = "digitq:quota:rate:"
OUTSTANDING = "digitq:quota:outstanding"
REFUSED_PREFIX = "digitq:quota:refused:"
RATE_WINDOW_SECONDS = 60
QUEUED_RETRY_AFTER = 30  # seconds: work drains at a rate we do not promise; look again then

# KEYS: the tenant's submission times, its queued count, images outstanding per lane. ARGV: now,
# submissions per window (0: do not count this one), window seconds, images to reserve (0: none),
# queued limit, queued ttl, the job's lane.
# {'ok'}; {'rate', the window's oldest time} (nothing written); {'queued', count} (nothing reserved).
_ADMIT = """
local now, rate, window, images = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if rate > 0 then
  local oldest = redis.call('LINDEX', KEYS[1], rate - 1)
  if oldest and tonumber(oldest) >= now - window then return {'rate', oldest} end
  redis.call('LPUSH', KEYS[1], ARGV[1])
  redis.call('LTRIM', KEYS[1], 0, rate - 1)
  redis.call('EXPIRE', KEYS[1], window)
end
if images > 0 then
  local queued = tonumber(redis.call('GET', KEYS[2]) or '0')
  if queued + images > tonumber(ARGV[5]) then return {'queued', queued} end
  redis.call('INCRBY', KEYS[2], images)
  redis.call('EXPIRE', KEYS[2], ARGV[6])
  redis.call('HINCRBY', KEYS[3], ARGV[7], images)
  redis.call('EXPIRE', KEYS[3], ARGV[6])
end
return {'ok'}
"""

# KEYS: the counter. ARGV: its window. One more refusal; the window starts with the first one.
_REFUSED = """
local count = redis.call('INCR', KEYS[1])
if count == 1 or redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return count
"""

# KEYS: the tenant's queued count, the outstanding hash. ARGV: images to give back, the lane.
# Never below zero, never without a TTL (a DECRBY of a count that expired meanwhile would create a
# negative count that never expires, and grant extra quota).
_RELEASE = """
local left = tonumber(redis.call('GET', KEYS[1]) or '0') - tonumber(ARGV[1])
if left > 0 then redis.call('SET', KEYS[1], left, 'KEEPTTL') else redis.call('DEL', KEYS[1]) end
local lane = tonumber(redis.call('HGET', KEYS[2], ARGV[2]) or '0') - tonumber(ARGV[1])
if lane > 0 then redis.call('HSET', KEYS[2], ARGV[2], lane) else redis.call('HDEL', KEYS[2], ARGV[2]) end
return left
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
        self._admit = client.register_script(_ADMIT)
        self._refused = client.register_script(_REFUSED)
        self._release = client.register_script(_RELEASE)

    def admit(self, tenant: str, images: int = 0, count: bool = True, lane: str = BULK) -> None:
        """One round trip: count a submission in the tenant's sliding minute (`count`), then
        reserve `images` queued images for it (outstanding in `lane`), all or none; QuotaExceeded
        when over either."""
        rate = self.settings.submissions_per_minute_per_key if count else 0
        now = time.time()
        keys = [RATE_PREFIX + tenant, queued_key(tenant), OUTSTANDING]
        limit = self.settings.max_queued_images_per_key
        args: list[str | int] = [
            repr(now),
            rate,
            RATE_WINDOW_SECONDS,
            images,
            limit,
            self.settings.job_ttl_seconds,
            lane,
        ]
        reply = self._admit(keys=keys, args=args)
        verdict, found = (reply[0].decode() if isinstance(reply[0], bytes) else reply[0]), reply[1:]
        if verdict == "rate":
            raise QuotaExceeded(
                "submission_rate",
                "SUBMISSIONS_PER_MINUTE_PER_KEY",
                f"more than {rate} submissions in the last minute (SUBMISSIONS_PER_MINUTE_PER_KEY); "
                "retry after Retry-After seconds, or send more images per job",
                max(1, math.ceil(float(found[0]) + RATE_WINDOW_SECONDS - now)),
            )
        if verdict == "queued":
            raise QuotaExceeded(
                "queued_images",
                "MAX_QUEUED_IMAGES_PER_KEY",
                f"{images} more images would exceed the {limit} images this API key may have queued "
                f"(MAX_QUEUED_IMAGES_PER_KEY; {int(found[0])} are not finished yet): wait until some jobs "
                "finish",
                QUEUED_RETRY_AFTER,
            )

    def release(self, tenant: str, images: int, lane: str = BULK) -> None:
        """Give back a reservation whose job could not be created."""
        self._release(keys=[queued_key(tenant), OUTSTANDING], args=[images, lane])

    def refused(self, who: str) -> None:
        """Count one refused upload of `who` (a tenant, or `addr:<client address>`)."""
        self._refused(keys=[REFUSED_PREFIX + who], args=[RATE_WINDOW_SECONDS])

    def refusals_exceeded(self, who: str) -> QuotaExceeded | None:
        """Whether `who` had more refused uploads this minute than REFUSED_REQUESTS_PER_MINUTE."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(REFUSED_PREFIX + who)
        pipe.ttl(REFUSED_PREFIX + who)
        count, ttl = pipe.execute()
        limit = self.settings.refused_requests_per_minute
        if int(count or 0) < limit:
            return None
        return QuotaExceeded(
            "refused_requests",
            "REFUSED_REQUESTS_PER_MINUTE",
            f"more than {limit} refused uploads in the last minute (REFUSED_REQUESTS_PER_MINUTE): "
            "fix the request (key, size, content) before sending it again",
            max(1, int(ttl)),
        )

    def queued(self, tenant: str) -> int:
        return int(self.redis.get(queued_key(tenant)) or 0)


def outstanding(client: redis.Redis) -> dict[str, int]:
    """Images accepted and not yet answered, per lane (a lane never counted reads 0)."""
    raw = client.hgetall(OUTSTANDING)
    return {(k.decode() if isinstance(k, bytes) else k): max(0, int(v)) for k, v in raw.items()}
