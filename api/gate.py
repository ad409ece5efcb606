"""What an upload is refused for before its body is read: the key, and the caller's budgets.

FastAPI reads (and spools) a whole multipart form before it solves a route's dependencies, so a
key checked there comes after up to MAX_UPLOAD_BYTES, BODY_READ_TIMEOUT_SECONDS and one of the
MAX_CONCURRENT_UPLOADS slots. This middleware sits in front of api/limits.py's BodyLimits and
answers from the request's headers alone, on the upload routes (POST /jobs, /predict,
/predict_batch):

- a missing or wrong key (or, open, a client beyond loopback, another Host, a cross-site page):
  the same problem as the routes' dependency (api/deps.py `authenticate`), its body never read;
- a caller over REFUSED_REQUESTS_PER_MINUTE (its refused uploads, counted per key, or per client
  address without a valid key): 429 + Retry-After;
- a caller whose submission bucket is empty while other keys have work waiting
  (SUBMISSION_IMAGES_PER_SECOND, core/quotas.py): 429 + Retry-After; nothing is taken here, the
  images are taken and reserved once the upload is listed.

Every 4xx an upload route answers (here, in BodyLimits, or in the route) but 409 and 429 counts as
one refusal: repeating a refused upload is throttled. Redis is called in the thread pool.
"""

import logging

import redis
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import authenticate
from api.problems import STORE_UNAVAILABLE, ProblemError, is_out_of_memory, over_quota
from core import metrics
from core.config import get_settings
from core.connections import get_quotas
from core.quotas import tenant_of

log = logging.getLogger(__name__)
UPLOAD_ROUTES = frozenset({"/jobs", "/predict", "/predict_batch"})
NOT_REFUSALS = frozenset({409, 429})  # a submission still being created; a refusal already counted


def _admit(who: str, tenant: str | None) -> ProblemError | None:
    """Blocking (Redis, one round trip): the refusal budget of `who`, then (`tenant`) the
    submission rate. This runs outside FastAPI's exception handlers: Redis down, slow or full is
    answered here (503)."""
    quotas = get_quotas()
    try:
        exceeded = quotas.may_upload(who, tenant)
        if exceeded is None:
            return None
        metrics.refused(quotas.redis, exceeded.reason)
    except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as exc:
        if isinstance(exc, redis.ResponseError) and not is_out_of_memory(exc):
            raise
        log.warning("quotas unavailable: %s", type(exc).__name__)
        return STORE_UNAVAILABLE
    return over_quota(exceeded)


def _count_refusal(who: str) -> None:
    try:
        get_quotas().refused(who)
    except redis.RedisError as exc:  # the answer is sent: a refusal not counted is all we lose
        log.warning("refusal not counted: %s", type(exc).__name__)


class Gate:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in UPLOAD_ROUTES:
            await self.app(scope, receive, send)
        else:
            await self._gated(scope, receive, send)

    async def _gated(self, scope: Scope, receive: Receive, send: Send) -> None:
        address = scope["client"][0] if scope.get("client") else ""
        try:
            caller = authenticate(get_settings(), address, Headers(scope=scope))
        except ProblemError as refusal:  # counted against the address: a wrong key is no tenant
            who = f"addr:{address}"
            exceeded = await run_in_threadpool(_admit, who, None)
            await (exceeded or refusal).response()(scope, receive, send)
            if exceeded is None:
                await run_in_threadpool(_count_refusal, who)
            return
        who = tenant_of(caller) if caller else f"addr:{address}"
        if exceeded := await run_in_threadpool(_admit, who, tenant_of(caller)):
            await exceeded.response()(scope, receive, send)
            return
        status = 0

        async def watched(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.app(scope, receive, watched)
        if 400 <= status < 500 and status not in NOT_REFUSALS:
            await run_in_threadpool(_count_refusal, who)
