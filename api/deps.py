"""Dependencies injected into the routes: settings, stores, the queue, and the API-key check."""

import hashlib
import hmac
from collections.abc import Mapping
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from api.problems import ProblemError
from core.blobs import BlobStore
from core.config import Settings, get_settings, is_loopback
from core.connections import (
    get_batcher,
    get_blob_store,
    get_fair_share,
    get_job_store,
    get_quotas,
    get_submission_claims,
    get_webhook_state,
)
from core.dispatch import FairShare
from core.jobs import JobStore
from core.queue import get_celery
from core.submission import Submission
from core.webhook_state import WebhookState

# `async def`: FastAPI runs a plain `def` dependency in the thread pool, a round trip to another
# thread per dependency and request (a third of /predict's API time before); these only read caches.


async def _settings() -> Settings:
    return get_settings()


async def _job_store() -> JobStore:
    return get_job_store()


async def _webhook_state() -> WebhookState:
    return get_webhook_state()


async def _blob_store() -> BlobStore:
    return get_blob_store()


async def _fair_share() -> FairShare:
    return get_fair_share()


SettingsDep = Annotated[Settings, Depends(_settings)]
JobStoreDep = Annotated[JobStore, Depends(_job_store)]
WebhookStateDep = Annotated[WebhookState, Depends(_webhook_state)]
BlobStoreDep = Annotated[BlobStore, Depends(_blob_store)]
FairShareDep = Annotated[FairShare, Depends(_fair_share)]


# FastAPI's security classes, so that the OpenAPI document has securitySchemes and each route its
# `security` (an Authorize button in /docs, keys in generated clients). auto_error=False: the
# checks below answer, as problems, and an open API (no API_KEYS) needs no key at all.
KEY_SCHEMES = (
    HTTPBearer(
        auto_error=False,
        scheme_name="bearerKey",
        description="`Authorization: Bearer <key>`, one of API_KEYS",
    ),
    APIKeyHeader(
        name="X-API-Key",
        auto_error=False,
        scheme_name="apiKey",
        description="`X-API-Key: <key>`, one of API_KEYS",
    ),
)
ADMIN_SCHEMES = (
    HTTPBearer(
        auto_error=False,
        scheme_name="adminBearerKey",
        description="`Authorization: Bearer <key>`, one of ADMIN_API_KEYS (not a client's key)",
    ),
    APIKeyHeader(
        name="X-API-Key",
        auto_error=False,
        scheme_name="adminApiKey",
        description="`X-API-Key: <key>`, one of ADMIN_API_KEYS (not a client's key)",
    ),
)
METRICS_SCHEME = HTTPBearer(
    auto_error=False,
    scheme_name="metricsToken",
    description="`Authorization: Bearer <METRICS_TOKEN>` (only when the server sets METRICS_TOKEN)",
)
Bearer = HTTPAuthorizationCredentials | None


def _presented_key(bearer: Bearer, x_api_key: str | None) -> str:
    return x_api_key or (bearer.credentials.strip() if bearer else "")


def _key_in_headers(headers: Mapping[str, str]) -> str:
    """The key a request presents, read from its headers alone (api/gate.py has no dependencies)."""
    authorization = headers.get("authorization") or ""
    scheme, _, credentials = authorization.partition(" ")
    bearer = credentials.strip() if scheme.lower() == "bearer" else ""
    return headers.get("x-api-key") or bearer


def _one_of(given: str, keys: frozenset[str]) -> bool:
    return any(hmac.compare_digest(given.encode(), key.encode()) for key in keys)


UNAUTHORIZED = "send a valid API key as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"


LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]"})


def _host_name(host: str) -> str:
    """The Host header without its port: `[::1]:8000` → `[::1]`, `localhost:8000` → `localhost`."""
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0].lower()


def authenticate(settings: Settings, client: str, headers: Mapping[str, str]) -> str | None:
    """The caller of a request, from its headers and address alone (no body): a digest of its
    key (the key itself is never stored), or None when the service is open; ProblemError when
    refused. api/gate.py calls it before the body is read, `require_api_key` for the routes."""
    keys = settings.api_key_set
    if not keys:
        if not settings.allow_open_api and not is_loopback(client):
            raise ProblemError(
                403,
                "Open API on loopback only",
                "this API has no API_KEYS, so it answers loopback clients only: set API_KEYS "
                "(or ALLOW_OPEN_API=true to serve anyone who can reach it without a key)",
            )
        if not settings.allow_open_api and _host_name(headers.get("host", "")) not in LOCAL_HOSTS:
            # DNS rebinding: a page at evil.example whose name now resolves to 127.0.0.1 is
            # same-origin to us (no Sec-Fetch-Site: cross-site), but its Host still says evil.example.
            detail = "an open API answers only Host: 127.0.0.1, localhost or [::1] (any port); set API_KEYS"
            raise ProblemError(403, "Unknown host", detail)
        if headers.get("sec-fetch-site") == "cross-site":
            # A web page elsewhere, open in a local user's browser, posting a form to 127.0.0.1
            # (with keys it could not: it has no key to send). The page at / is same-origin.
            raise ProblemError(403, "Cross-site request", "an open API refuses requests from other sites")
        return None
    given = _key_in_headers(headers)
    if not _one_of(given, keys):
        raise ProblemError(401, "Unauthorized", UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})
    return hashlib.sha256(given.encode()).hexdigest()[:32]


async def require_api_key(
    request: Request,
    settings: SettingsDep,
    _bearer: Annotated[Bearer, Depends(KEY_SCHEMES[0])],
    _x_api_key: Annotated[str | None, Depends(KEY_SCHEMES[1])],
) -> str | None:
    """When API_KEYS is set, every job route needs `Authorization: Bearer <key>` or `X-API-Key`.

    Returns the caller (`authenticate`). A job belongs to the caller that submitted it. Open (no
    API_KEYS) serves loopback clients only, unless ALLOW_OPEN_API: however the server was started
    (`uvicorn --host 0.0.0.0` included), nothing beyond the machine reaches the jobs without a key.
    """
    # The security schemes put the keys in the OpenAPI document; the check reads the headers, as
    # the gate before the body does (one way to read a key).
    return authenticate(settings, request.client.host if request.client else "", request.headers)


async def require_admin_key(
    settings: SettingsDep,
    bearer: Annotated[Bearer, Depends(ADMIN_SCHEMES[0])],
    x_api_key: Annotated[str | None, Depends(ADMIN_SCHEMES[1])],
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
    given = _presented_key(bearer, x_api_key)
    if _one_of(given, admin_keys):
        return
    if given and _one_of(given, settings.api_key_set):
        raise ProblemError(403, "Forbidden", "a client API key cannot use /admin: send one of ADMIN_API_KEYS")
    raise ProblemError(401, "Unauthorized", UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})


def metrics_token_ok(settings: Settings, authorization: str | None) -> bool:
    """Whether the request may read the operations detail: METRICS_TOKEN unset, or sent as a
    bearer token (Prometheus' `authorization: credentials_file`)."""
    if settings.metrics_token is None:
        return True
    given = (authorization or "").removeprefix("Bearer ").strip()
    return hmac.compare_digest(given.encode(), settings.metrics_token.get_secret_value().encode())


async def require_metrics_token(
    settings: SettingsDep, bearer: Annotated[Bearer, Depends(METRICS_SCHEME)] = None
) -> None:
    """/metrics* behind METRICS_TOKEN when it is set (core/config.py)."""
    if not metrics_token_ok(settings, f"Bearer {bearer.credentials}" if bearer else None):
        detail = "send METRICS_TOKEN as 'Authorization: Bearer <token>'"
        raise ProblemError(401, "Unauthorized", detail, headers={"WWW-Authenticate": "Bearer"})


CallerDep = Annotated[str | None, Depends(require_api_key)]


async def _submission(settings: SettingsDep, caller: CallerDep) -> Submission:
    batcher = get_batcher() if settings.batch_max_images else None
    return Submission(
        settings=settings,
        store=get_job_store(),
        claims=get_submission_claims(),
        blobs=get_blob_store(),
        celery=get_celery(),
        fair=get_fair_share(),
        quotas=get_quotas(),
        caller=caller,
        batcher=batcher,
    )


SubmissionDep = Annotated[Submission, Depends(_submission)]
