"""Quotas per API key (issues 9 and 22): images queued, and a submission rate in images per second
that slows a key only when it takes more than its share while other keys have work waiting.

The tenant is the caller (a digest of its API key, api/deps.py), or ANONYMOUS when the service
is open: then everybody shares one tenant's quotas.

- MAX_QUEUED_IMAGES_PER_KEY: `digitq:quota:queued:<tenant>` counts the tenant's images not yet
  finished. A submission reserves its images with one script that refuses it whole when they do
  not fit (nothing reserved); core/jobs.py's record script gives back each item as its result is
  stored, and cancel gives back the rest, in the same scripts that write them, so the count cannot
  drift from the results. The key expires JOB_TTL_SECONDS after the tenant's last submission.
- The submission rate: a token bucket of images per tenant, `digitq:quota:bucket:<tenant>`
  (HASH tokens, at; expires after BUCKET_TTL idle seconds, then starts full again). It refills at
  the tenant's share of what the fleet can serve: SUBMISSION_IMAGES_PER_SECOND, by default sized
  from the workers' heartbeats (pool processes x the images per second a process has measured,
  `capacity`), divided among the tenants with work waiting; it holds SUBMISSION_BURST_SECONDS of
  the fleet's work. Every submission takes its images from it, but only while another tenant has
  images waiting (`digitq:quota:waiting`: ZSET tenant -> last submission, pruned of tenants with
  nothing queued; bounded by the API keys) is one refused for an empty bucket: a lone user at the
  machine's full capacity is never refused, and when a second key arrives the first has already
  spent its tokens and gets its share. A job bigger than the burst passes on a full bucket and
  leaves it in debt (the next waits longer). Retry-After: when the bucket will hold enough.

- Images outstanding per lane: `digitq:quota:outstanding`, a HASH lane -> images accepted and not
  yet answered, the sum of the tenants' queued counts split by lane. The same scripts keep it
  (admit adds, core/jobs.py's record and cancel scripts take back by the job's `lane` field), so
  /metrics reads the whole backlog in one HGETALL: the broker's bulk list is capped by the
  fair-share window (core/dispatch.py) and says nothing of what waits behind it. It expires
  JOB_TTL_SECONDS after the last submission, like the counts it sums.
- REFUSED_REQUESTS_PER_MINUTE: uploads refused (a wrong key, too large, unusable) count in
  `digitq:quota:refused:<tenant or address>`, a counter that expires a minute after its first
  refusal; past the limit every upload of that key (or address, without a valid key) is answered
  429 before its body is read (api/gate.py), so repeating a refused request costs almost nothing.

`admit` checks both quotas in one script: the rate first, then the images are reserved, or none.
api/gate.py calls it with no images before the body is read (may this key submit now?), in the
same round trip as the refusal count (`may_upload`); the submission with its images once they
are counted.
"""

import json
import math
import time
from dataclasses import dataclass
from typing import Any

import redis
from redis.client import Pipeline

from core import fleet, scripts
from core.config import Settings
from core.queue import BULK

ANONYMOUS = "anonymous"
QUEUED_PREFIX = "digitq:quota:queued:"
BUCKET_PREFIX = "digitq:quota:bucket:"
WAITING = "digitq:quota:waiting"
OUTSTANDING = "digitq:quota:outstanding"
REFUSED_PREFIX = "digitq:quota:refused:"
REFUSED_WINDOW_SECONDS = 60
BUCKET_TTL = 3600  # seconds idle: a bucket that old would be full again anyway (bar tiny shares)
QUEUED_RETRY_AFTER = 30  # seconds: work drains at a rate we do not promise; look again then
# When no worker has measured its speed yet (metrics `item_seconds`): images per second one pool
# process serves, single-image chunks included (bench/bench_latency.py: ~250/s on one core).
DEFAULT_IMAGES_PER_SECOND_PER_PROCESS = 250.0
MIN_IMAGES_PER_SECOND = 10.0  # no worker alive: still a rate, not a division by zero
MEASURED_AFTER = 100  # images processed before the measured speed replaces the default


def tenant_of(caller: str | None) -> str:
    return caller or ANONYMOUS


def queued_key(tenant: str) -> str:
    return QUEUED_PREFIX + tenant


# Not frozen: an exception leaving a @contextmanager block (core/batching.py `arriving`) gets its
# __traceback__ set by contextlib, which a frozen dataclass refuses (FrozenInstanceError, a 500).
@dataclass
class QuotaExceeded(Exception):
    reason: str  # `queued_images`, `submission_rate` or `refused_requests`: the /metrics label
    limit: str  # the setting
    detail: str
    retry_after: int


class Quotas:
    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.redis = client
        self.settings = settings
        self._admit = scripts.register(client, "quotas_admit")
        self._refused = scripts.register(client, "quotas_refused")
        self._release = scripts.register(client, "quotas_release")
        self._capacity, self._capacity_until = MIN_IMAGES_PER_SECOND, 0.0

    def capacity(self) -> float:
        """Images per second the fleet can serve: SUBMISSION_IMAGES_PER_SECOND, or the live pool
        processes (heartbeats) x the images per second a process has measured (read at most once
        per heartbeat period: it is called per submission)."""
        if self.settings.submission_images_per_second:
            return self.settings.submission_images_per_second
        now = time.monotonic()
        if now >= self._capacity_until:
            from core.metrics import KEY  # core.metrics imports the queue; quotas stay light

            seconds, count = (
                float(v or 0) for v in self.redis.hmget(KEY, "item_seconds:sum", "item_seconds:count")
            )
            per_process = count / seconds if count >= MEASURED_AFTER and seconds > 0 else None
            rate = fleet.processes(self.redis) * (per_process or DEFAULT_IMAGES_PER_SECOND_PER_PROCESS)
            self._capacity = max(MIN_IMAGES_PER_SECOND, rate)
            self._capacity_until = now + fleet.HEARTBEAT_SECONDS
        return self._capacity

    def admit(self, tenant: str, images: int = 0, lane: str = BULK) -> None:
        """One round trip: the submission's images taken from the tenant's bucket (refused only
        while others wait, see above), then reserved as queued, all or none; QuotaExceeded when
        over either. `images` 0: only whether the tenant may submit now (`may_upload`).
        The images count as outstanding in `lane`."""
        if exceeded := self._admitted(self._call_admit(self.redis, tenant, images, lane), images):
            raise exceeded

    def may_upload(self, who: str, tenant: str | None) -> QuotaExceeded | None:
        """Before an upload's body is read (api/gate.py), in one round trip: whether `who` (a
        tenant, or `addr:<client address>`) is over its refused uploads, and whether `tenant`
        (None: no valid key) may submit now. Nothing is taken."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(REFUSED_PREFIX + who)
        pipe.ttl(REFUSED_PREFIX + who)
        if tenant is not None:
            self._call_admit(pipe, tenant, 0, BULK)
        count, ttl, *admitted = pipe.execute()
        return self._refusals_exceeded(count, ttl) or (self._admitted(admitted[0], 0) if admitted else None)

    def _call_admit(self, client: redis.Redis | Pipeline, tenant: str, images: int, lane: str) -> Any:
        """The admission script called on `client` (a pipeline queues it: its reply comes later)."""
        rate = self.capacity()
        burst = max(1.0, rate * self.settings.submission_burst_seconds)
        keys = [BUCKET_PREFIX + tenant, WAITING, queued_key(tenant), OUTSTANDING]
        args: list[str | int | float] = [
            repr(time.time()), tenant, QUEUED_PREFIX, rate, burst, images,
            self.settings.max_queued_images_per_key, self.settings.job_ttl_seconds, BUCKET_TTL, lane,
        ]  # fmt: skip
        return self._admit(keys=keys, args=args, client=client)

    def _admitted(self, raw: bytes | str, images: int) -> QuotaExceeded | None:
        """The admission script's verdict (its JSON reply): None when admitted."""
        reply = json.loads(raw)
        verdict = reply["verdict"]
        if verdict == "rate":
            return QuotaExceeded(
                "submission_rate",
                "SUBMISSION_IMAGES_PER_SECOND",
                f"other API keys have work waiting and this key has used its share of the service "
                f"({self.capacity():.0f} images/s shared, SUBMISSION_IMAGES_PER_SECOND); retry after "
                "Retry-After seconds",
                max(1, math.ceil(float(reply["retry_after"]))),
            )
        if verdict == "queued":
            limit = self.settings.max_queued_images_per_key
            return QuotaExceeded(
                "queued_images",
                "MAX_QUEUED_IMAGES_PER_KEY",
                f"{images} more images would exceed the {limit} images this API key may have queued "
                f"(MAX_QUEUED_IMAGES_PER_KEY; {int(reply['queued'])} are not finished yet): wait until "
                "some jobs finish",
                QUEUED_RETRY_AFTER,
            )
        return None

    def release(self, tenant: str, images: int, lane: str = BULK) -> None:
        """Give back a reservation whose job could not be created."""
        self._release(keys=[queued_key(tenant), OUTSTANDING], args=[images, lane])

    def refused(self, who: str) -> None:
        """Count one refused upload of `who` (a tenant, or `addr:<client address>`)."""
        self._refused(keys=[REFUSED_PREFIX + who], args=[REFUSED_WINDOW_SECONDS])

    def _refusals_exceeded(self, count: bytes | None, ttl: int) -> QuotaExceeded | None:
        """Whether a refusal counter (its value and TTL) is past REFUSED_REQUESTS_PER_MINUTE."""
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
