"""The FastAPI application: `uvicorn api.main:app`."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from api import openapi, problems
from api.deps import require_api_key
from api.gate import Gate
from api.limits import MAX_FORM_FIELD_BYTES, MAX_FORM_FIELDS, BodyLimits
from api.routes import health, items, jobs, labels, ops, predict, ui, webhook_secret
from core.config import get_settings, open_api_refusal

log = logging.getLogger(__name__)

DESCRIPTION = """
Recognise handwritten digits in images, one at a time or tens of thousands in a zip.

1. `POST /jobs` with one or more multipart parts named `files` (images or zips) → `202` and a job.
2. Poll `GET /jobs/{id}` until `status` is `succeeded`, `failed` or `cancelled` — or pass a
   `webhook` URL and receive the job's events, signed per Standard Webhooks.
3. Read `GET /jobs/{id}/results` (paged JSON), `?format=csv` or `?format=jsonl`; `?status=failed`
   keeps only the errors.

`GET /jobs` lists your jobs, newest first (`metadata` sent with a job is echoed there).

Review and correct: `GET /jobs/{id}/items/{index}/image` shows an item (`?view=model`: the 28x28
the model saw), `PUT /jobs/{id}/items/{index}/label` or `POST /jobs/{id}/labels` record the right
digits; labelled items are kept as training data (`DELETE /labels` removes your key's).

Answers in the same request: `Prefer: wait=N` on `POST /jobs` (`200` with the results if the job
ends within N s), and the old service's `POST /predict` (one part `file`) and `POST /predict_batch`
(parts `files`), which go through the same queue.

Errors are [RFC 9457](https://www.rfc-editor.org/rfc/rfc9457) problem details
(`application/problem+json`); each problem's `type`, `/problems/<name>`, is a page that explains it.
When `API_KEYS` is set, job routes need `Authorization: Bearer <key>` or `X-API-Key: <key>`
(without, the API answers loopback clients only); `/admin` needs one of `ADMIN_API_KEYS`.
Each key has quotas (images not finished yet; a share of the service's images per second, which
slows a key only while other keys have work waiting): over one, `429` with `Retry-After`.
Jobs of a few images go ahead of big ones; big jobs of different keys share the workers evenly.
"""


@asynccontextmanager
async def refuse_open_exposure(app: FastAPI) -> AsyncIterator[None]:
    """Startup: no API_KEYS and API_HOST not loopback (the container's command listens on
    API_HOST) means refusing to start, unless ALLOW_OPEN_API. A server started on another
    address than API_HOST is still covered per request (api/deps.py: open = loopback clients)."""
    settings = get_settings()
    if refusal := open_api_refusal(settings, settings.api_host):
        log.critical(refusal)
        raise SystemExit(refusal)
    yield


def create_app() -> FastAPI:
    settings = get_settings()
    app = FastAPI(
        title="digitq",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=refuse_open_exposure,
        generate_unique_id_function=openapi.operation_id,  # createJob, getJob, ... (api/openapi.py)
        form_limits={"max_fields": MAX_FORM_FIELDS, "max_part_size": MAX_FORM_FIELD_BYTES},
    )
    app.add_middleware(
        BodyLimits,
        max_bytes=settings.max_upload_bytes,
        read_timeout=settings.body_read_timeout_seconds,
        max_concurrent=settings.max_concurrent_uploads,
    )
    app.add_middleware(Gate)  # added last, so it runs first: no body slot before the key is checked
    problems.install(app)
    app.include_router(health.router)
    app.include_router(jobs.router, dependencies=[Depends(require_api_key)])
    app.include_router(predict.router, dependencies=[Depends(require_api_key)])
    app.include_router(webhook_secret.router, dependencies=[Depends(require_api_key)])
    app.include_router(items.router, dependencies=[Depends(require_api_key)])
    app.include_router(labels.router)  # its own: DELETE /labels is not under /jobs
    ops.install(app)  # /ready, /metrics, /admin/reload, logging, Sentry
    ui.install(app)  # the web page at / and its static files
    openapi.install(app)  # problems, statuses and headers documented for every route
    return app


app = create_app()
