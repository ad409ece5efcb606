"""Errors as RFC 9457 problem details, so every 4xx says what to fix."""

from typing import Any

import kombu.exceptions
import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.blobs import BlobStoreUnavailable
from core.quotas import QuotaExceeded

PROBLEM_JSON = "application/problem+json"
TITLES = {
    401: "Unauthorized",
    404: "Not found",
    405: "Method not allowed",
    408: "Request timeout",
    413: "Upload too large",
}
# Starlette's multipart parser stops at 1,000 parts (its message says so, not what to do instead).
HINTS = {"Too many files": "send more images in a .zip archive: one part can hold them all"}


def problem(status: int, title: str, detail: str, **extra: Any) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON)


class ProblemError(Exception):
    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,  # more members of the problem object
    ):
        super().__init__(detail)
        self.status, self.title, self.detail, self.headers = status, title, detail, headers
        self.extra = extra or {}

    def response(self) -> JSONResponse:
        response = problem(self.status, self.title, self.detail, **self.extra)
        response.headers.update(self.headers or {})
        return response


def over_quota(exc: QuotaExceeded) -> ProblemError:
    """A 429 naming the quota's setting, with Retry-After."""
    headers = {"Retry-After": str(exc.retry_after)}
    return ProblemError(429, "Quota exceeded", exc.detail, headers=headers, extra={"limit": exc.limit})


# Redis unreachable, too slow (socket_timeout) or full (maxmemory): not the user's fault and not
# a bug of theirs to fix: say so, and when to come back.
STORE_UNAVAILABLE = ProblemError(
    503, "Service unavailable", "the job store is unavailable; retry shortly", headers={"Retry-After": "5"}
)


def store_unavailable() -> JSONResponse:
    return STORE_UNAVAILABLE.response()


def is_out_of_memory(exc: Exception) -> bool:
    """Redis refused a write at `maxmemory` (noeviction), however redis-py surfaced it."""
    return isinstance(exc, redis.exceptions.OutOfMemoryError) or "OOM command not allowed" in str(exc)


def _describe(error: dict[str, Any]) -> str:
    where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
    return f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg"))


def install(app: FastAPI) -> None:
    @app.exception_handler(ProblemError)
    async def _problem(_: Request, exc: ProblemError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [_describe(e) for e in exc.errors()]
        return problem(422, "Invalid request", "; ".join(errors), errors=errors)

    @app.exception_handler(redis.ConnectionError)
    @app.exception_handler(redis.TimeoutError)
    @app.exception_handler(redis.exceptions.OutOfMemoryError)
    @app.exception_handler(kombu.exceptions.OperationalError)
    async def _unavailable(_: Request, exc: Exception) -> JSONResponse:
        return store_unavailable()

    @app.exception_handler(redis.ResponseError)
    async def _refused_write(_: Request, exc: redis.ResponseError) -> JSONResponse:
        if is_out_of_memory(exc):  # in a script or a MULTI: not mapped to OutOfMemoryError
            return store_unavailable()
        raise exc  # a bug: 500

    @app.exception_handler(BlobStoreUnavailable)
    async def _no_blobs(_: Request, exc: BlobStoreUnavailable) -> JSONResponse:
        response = problem(503, "Service unavailable", "the upload store is unreachable; retry shortly")
        response.headers["Retry-After"] = "5"
        return response

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        title = TITLES.get(exc.status_code, "Error")
        detail = str(exc.detail)
        hint = next((h for prefix, h in HINTS.items() if detail.startswith(prefix)), None)
        response = problem(exc.status_code, title, f"{detail} {hint}" if hint else detail)
        response.headers.update(exc.headers or {})
        return response
