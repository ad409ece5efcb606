"""Errors as RFC 9457 problem details, so every 4xx says what to fix.

Each kind of problem has a name, and its `type` is the relative URI `/problems/<name>`, a page the
API serves (`GET /problems/quota-exceeded`) that says what the problem means and what to do.
CATALOGUE below is the one list of them: a problem raised with a title not in it is typed
`about:blank` with the HTTP status phrase as its title, as RFC 9457 asks (and
tests/test_openapi_fast.py fails, naming it, so that it gets an entry).
"""

import html
import re
from http import HTTPStatus
from typing import Any

import kombu.exceptions
import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.blobs import BlobStoreUnavailable
from core.quotas import QuotaExceeded

PROBLEM_JSON = "application/problem+json"
TITLES = {  # Starlette's own errors (HTTPException): the problem each is
    401: "Unauthorized",
    404: "Not found",
    405: "Method not allowed",
    408: "Request timeout",
    413: "Upload too large",
}
# Title -> what it means and what to do; its page is /problems/<slug of the title>.
CATALOGUE = {
    "Unauthorized": "The API has API_KEYS and the request carried none of them: send one as "
    "`Authorization: Bearer <key>` or `X-API-Key: <key>` (for /admin, one of ADMIN_API_KEYS).",
    "Forbidden": "A client API key was sent to /admin, which takes only ADMIN_API_KEYS.",
    "Open API on loopback only": "The API has no API_KEYS, so it answers clients on its own machine only. "
    "Its operator sets API_KEYS (or ALLOW_OPEN_API=true).",
    "Unknown host": "An API without keys answers only requests addressed to 127.0.0.1, localhost or [::1] "
    "(a page of another site may point its own name at this machine: DNS rebinding). Use one of those "
    "names, or have the operator set API_KEYS.",
    "Cross-site request": "An API without keys refuses requests a web page of another site makes from "
    "your browser. Use the page the API serves, or a client that is not a browser.",
    "Admin API disabled": "/admin is off until ADMIN_API_KEYS is set (keys of their own).",
    "Not found": "No such job or path. Jobs expire JOB_TTL_SECONDS after they end (a week by default), "
    "and another key's jobs are not found either.",
    "Method not allowed": "The path exists, but not with this HTTP method: see /docs.",
    "Request timeout": "The request body did not arrive within BODY_READ_TIMEOUT_SECONDS: retry, on a "
    "faster connection or with a smaller upload.",
    "Upload too large": "The request body is over MAX_UPLOAD_BYTES: split the upload into several jobs.",
    "Too many images": "More images than one request takes (MAX_ITEMS_PER_JOB for a job, 1,000 for "
    "/predict_batch): split the upload, or POST /jobs and page the results.",
    "Unusable upload": "A part could not be used: an empty file, an image over MAX_IMAGE_BYTES or "
    "too many pixels, a broken or too large zip, or a type that is neither image nor zip.",
    "No files": "The request had no multipart parts named `files`: send images or zips as `files`.",
    "No file": "POST /predict takes one image as a multipart part named `file`.",
    "No images": "The upload holds no images (only folders, hidden files or other files).",
    "Not an image": "POST /predict takes one image; send zips and several images to /predict_batch.",
    "Invalid request": "A parameter, header or form field is malformed; `errors` lists each one.",
    "Invalid metadata": "`metadata` must be a JSON object of at most 16 string keys and values.",
    "Invalid webhook": "`webhook_events` names unknown events, or comes without a `webhook` URL.",
    "Webhooks disabled": "The server has no usable WEBHOOK_SECRET, so it sends no webhooks: poll the job.",
    "Webhook refused": "The webhook URL is not http(s), or reaches the service's own network.",
    "Unknown cursor": "`after` names no job of yours (it expired?): list again without it.",
    "Unreadable image": "The image could not be decoded; `job_id` names the job it ran as.",
    "Quota exceeded": "Over a quota of your API key (`limit` says which): wait `Retry-After` seconds.",
    "Submission in progress": "A submission with this Idempotency-Key is still being stored: retry after "
    "`Retry-After` seconds to get its job.",
    "Cancelled": "The job was cancelled (DELETE /jobs/{id}) before it answered.",
    "Reload refused": "The model version is unknown, corrupt or untrusted, no worker is up, or another "
    "reload is in progress: nothing changed.",
    "No model registry": "Promotion and rollback move the registry's `latest` pointer: the API needs "
    "MODEL_REGISTRY (and its S3 credentials) to do that.",
    "Registry unavailable": "The model registry (S3) did not answer or refused the request: retry after "
    "`Retry-After` seconds, or check the API's S3 credentials.",
    "Unknown model version": "The registry holds no such model version: `python -m ml list` shows them.",
    "Promotion refused": "The candidate has no comparison with the current model on its held-out items, "
    "or it is significantly worse (McNemar's exact test): run `python -m ml compare`, or promote with "
    "`force` (logged).",
    "Rollback refused": "There is no earlier version in the registry's history to go back to, or the "
    "fleet refused it (see `detail`).",
    "Service unavailable": "Not your request's fault: the job store or the upload store is unreachable, "
    "or the job failed for an internal reason. Retry after `Retry-After` seconds.",
    "Too many uploads": "The API process is receiving as many uploads as it may at once "
    "(MAX_CONCURRENT_UPLOADS): retry after `Retry-After` seconds.",
    "Redis unreachable": "The metrics live in Redis, which does not answer: retry shortly.",
    "Unreadable item": "The item's stored image could not be decoded for display (it failed classification "
    "too: its `error` in the results says why).",
    "Upload expired": "The job's upload is no longer kept (UPLOAD_KEEP_SECONDS after the job ended, or the "
    "job was cancelled): its images are gone and its items can no longer be labelled.",
    "Image not stored yet": "A small job's upload is written to the store just after its answer: retry "
    "after `Retry-After` seconds.",
    "Invalid labels": "Some labels name no item of the job, or a digit outside 0-9; `offenders` lists the "
    "first few. Nothing was applied: fix them and send the whole batch again.",
    "No labels": 'Send at least one label: JSON `{"labels": [{"index": 0, "digit": 7}]}` or a CSV '
    "part `file` with the header name,digit.",
    "Too many labels": "One request takes at most 1,000 labels (and a CSV of at most 1 MiB): split them.",
    "Labelled-data store full": "The labelled-data store holds MAX_LABELLED_ITEMS items: its operator "
    "exports and clears it (or raises the bound), or you delete your labels (DELETE /labels).",
    "Webhook secrets need API keys": "Without API_KEYS every client shares WEBHOOK_SECRET, which the "
    "operator hands out: there is no per-key secret to show or rotate.",
    "Still running": "No answer within PREDICT_TIMEOUT_SECONDS. The job goes on: poll `links.self`, or "
    "repeat the request with the same Idempotency-Key to wait for that same job again.",
}


def slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


NAMED = {slug(title): title for title in CATALOGUE}


def type_and_title(status: int, title: str) -> tuple[str, str]:
    """The problem's `type` URI and title: its own page when catalogued, else RFC 9457's default."""
    if title in CATALOGUE:
        return f"/problems/{slug(title)}", title
    return "about:blank", HTTPStatus(status).phrase


# Starlette's multipart parser stops at 1,000 parts (its message says so, not what to do instead).
HINTS = {"Too many files": "send more images in a .zip archive: one part can hold them all"}


def problem(status: int, title: str, detail: str, **extra: Any) -> JSONResponse:
    kind, title = type_and_title(status, title)
    body = {"type": kind, "title": title, "status": status, "detail": detail, **extra}
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
        title = TITLES.get(exc.status_code, HTTPStatus(exc.status_code).phrase)
        detail = str(exc.detail)
        hint = next((h for prefix, h in HINTS.items() if detail.startswith(prefix)), None)
        response = problem(exc.status_code, title, f"{detail} {hint}" if hint else detail)
        response.headers.update(exc.headers or {})
        return response

    @app.get("/problems/{name}", include_in_schema=False)
    async def _page(name: str) -> HTMLResponse:
        """The page a problem's `type` names."""
        title = NAMED.get(name)
        if title is None:
            raise ProblemError(404, "Not found", f"no problem type {name[:60]!r}")
        page = _PAGE.format(title=html.escape(title), text=html.escape(CATALOGUE[title]))
        return HTMLResponse(page, headers={"Content-Security-Policy": "default-src 'none'"})


_PAGE = """<!doctype html><html lang="en"><meta charset="utf-8"><title>{title} - digitq</title>
<h1>{title}</h1><p>{text}</p>
<p>The problem's <code>detail</code> says what happened in your request.</p></html>
"""
