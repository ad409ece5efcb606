"""One item of a job: its image as uploaded, or the 28x28 digit the model saw (issue 20)."""

import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response

from api.deps import BlobStoreDep, CallerDep, JobStoreDep, SettingsDep
from api.items import UploadGone, item_bytes, off_loop, render
from api.problems import ProblemError
from api.routes.jobs import MAX_OFFSET, PROBLEMS, job_or_404
from core.blobs import BlobStore
from core.config import Settings
from core.jobs import TERMINAL, Job, JobStatus, JobStore
from ml.preprocess import ImageError

router = APIRouter(prefix="/jobs", tags=["items"])
# Every PNG of an item is the same for as long as it can be served: let the browser keep it,
# but never a shared cache (the image is the key owner's).
CACHE_CONTROL = "private, max-age=3600"
# A small job's only chunk stores its upload right after publishing its answer (worker/tasks.py).
JUST_ENDED_SECONDS = 10
IndexPath = Annotated[int, Path(ge=0, le=MAX_OFFSET, description="the item's `index` in the results")]


class View(StrEnum):
    upload = "upload"
    model = "model"


@dataclass(frozen=True)
class Items:
    """What reading a job's items needs: the stores, the settings and the caller."""

    store: JobStore
    blobs: BlobStore
    settings: Settings
    caller: str | None

    def job(self, job_id: str, index: int) -> Job:
        """The caller's job, if it has an item `index`; else a 404."""
        job = job_or_404(self.store, job_id, self.caller)
        if index >= job.total:
            raise ProblemError(404, "Not found", f"job {job.id} has {job.total} item(s): no index {index}")
        return job

    def read(self, job: Job, index: int) -> bytes:
        """The item's bytes from the job's stored upload, or the problem that says why not."""
        parts, inline = self.store.upload_parts(job.id)
        try:
            if parts == 0:
                raise UploadGone(job.id)
            return item_bytes(self.blobs, job.id, parts, index, self.settings.max_image_bytes)
        except UploadGone:
            raise _gone(job, inline, self.settings.upload_keep_seconds) from None
        except ValueError as exc:  # a bad zip entry, as the worker found it
            raise ProblemError(422, "Unreadable item", f"item {index}: {exc}") from None


def _gone(job: Job, inline: bool, keep_seconds: int) -> ProblemError:
    just_ended = inline and time.time() - (job.finished_at or 0) < JUST_ENDED_SECONDS
    if job.status in TERMINAL and not (just_ended and job.status is not JobStatus.cancelled):
        detail = (
            f"the upload of job {job.id} has expired: uploads are kept {keep_seconds / 3600:g} h after "
            "their job ends (UPLOAD_KEEP_SECONDS), or deleted when it is cancelled; its results stay readable"
        )
        return ProblemError(404, "Upload expired", detail)
    detail = "a small upload is stored as its job runs: retry in a moment"
    return ProblemError(404, "Image not stored yet", detail, headers={"Retry-After": "1"})


async def _items(store: JobStoreDep, blobs: BlobStoreDep, settings: SettingsDep, caller: CallerDep) -> Items:
    return Items(store, blobs, settings, caller)


ItemsDep = Annotated[Items, Depends(_items)]


def _image(items: Items, job_id: str, index: int, view: View) -> bytes:
    data = items.read(items.job(job_id, index), index)
    try:
        return render(data, view.value)
    except ImageError as exc:
        raise ProblemError(422, "Unreadable image", f"item {index}: {exc}") from None


@router.get(
    "/{job_id}/items/{index}/image",
    response_class=Response,
    responses={
        200: {
            "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
            "description": "The item as a grey PNG: at most 256 px on its long side, or 28x28 (`view=model`)",
        },
        404: {
            **PROBLEMS[404],
            "description": "No such job or item, or the job's upload has expired (the detail says which)",
            "content": {
                "application/problem+json": {
                    "example": {
                        "type": "about:blank",
                        "title": "Upload expired",
                        "status": 404,
                        "detail": "the upload of job 5f0c... has expired: uploads are kept 24 h after their "
                        "job ends (UPLOAD_KEEP_SECONDS), or deleted when it is cancelled; "
                        "its results stay readable",
                    }
                }
            },
        },
        422: {
            **PROBLEMS[422],
            "description": "The item is not a readable image (its result says so too)",
            "content": {
                "application/problem+json": {
                    "example": {
                        "type": "about:blank",
                        "title": "Unreadable image",
                        "status": 422,
                        "detail": "item 3: image too large: 50000x50000 pixels exceeds 40000000",
                    }
                }
            },
        },
        **{k: PROBLEMS[k] for k in (401, 403)},
    },
    summary="An item's image",
)
async def item_image(
    job_id: str,
    index: IndexPath,
    items: ItemsDep,
    view: Annotated[
        View,
        Query(description="`upload`: the image as uploaded (scaled down); `model`: the 28x28 the model saw"),
    ] = View.upload,
) -> Response:
    """The item as a PNG, while the job's upload is kept (UPLOAD_KEEP_SECONDS after the job ends).

    `curl -H "X-API-Key: $KEY" -o 3.png http://127.0.0.1:8000/jobs/$JOB/items/3/image?view=model`

    Decoded as classification decodes it (formats, pixels and bytes bounded the same way).
    """
    png = await off_loop(_image, items, job_id, index, view)
    return Response(png, media_type="image/png", headers={"Cache-Control": CACHE_CONTROL})
