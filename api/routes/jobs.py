"""Submit a job, follow it, read its results, cancel it."""

import csv
import hashlib
import io
import logging
from collections.abc import Iterator
from enum import StrEnum
from typing import Annotated

from fastapi import APIRouter, File, Header, Query, Response, UploadFile
from fastapi.responses import StreamingResponse

from api.deps import BlobStoreDep, CallerDep, CeleryDep, JobStoreDep, SettingsDep
from api.problems import ProblemError
from api.schemas import ItemOut, ItemStatus, JobOut, Problem, ResultsPage
from api.uploads import ACCEPTED, Item, UploadError, chunks, part_items
from core import logs, metrics
from core.blobs import upload_key
from core.jobs import Job, JobStore, is_job_id, new_job_id
from core.queue import PROCESS_CHUNK

router = APIRouter(prefix="/jobs", tags=["jobs"])
log = logging.getLogger(__name__)
PROBLEMS = {
    code: {"model": Problem, "content": {"application/problem+json": {}}, "description": text}
    for code, text in {
        400: "Nothing to do: no files, an empty file, an unreadable zip, or a zip with no images",
        401: "Missing or wrong API key (only when API_KEYS is set)",
        404: "No such job (or it expired)",
        409: "A submission with this Idempotency-Key is still being created",
        413: "The upload, an image, or the number of images is over the limit",
        415: "A part that is neither an image nor a zip",
        422: "A malformed parameter",
    }.items()
}
CSV_PAGE = 1000
MAX_OFFSET = 2**31 - 1  # Redis list indices are 64-bit; anything near is past every job's end


def _job_or_404(store: JobStore, job_id: str, caller: str | None) -> Job:
    # Every /jobs/{id} route comes here first: an id we could not have made is never looked up
    # in Redis (`<id>:names` would be another key type) nor used in a path (cancel's delete).
    if not is_job_id(job_id):
        raise ProblemError(404, "Not found", "there is no such job: job ids are 32 hexadecimal characters")
    job = store.get(job_id)
    # Another key's job is "not found" too: its existence is not the caller's business.
    if job is None or (caller is not None and job.owner is not None and job.owner != caller):
        raise ProblemError(404, "Not found", f"there is no job {job_id!r} (jobs expire after a week)")
    return job


def _list_items(files: list[UploadFile], max_image_bytes: int) -> list[Item]:
    items: list[Item] = []
    for part, upload in enumerate(files):
        try:
            _, found = part_items(upload.file, upload.filename or f"file-{part + 1}", part, max_image_bytes)
        except UploadError as exc:
            raise ProblemError(exc.status, "Unusable upload", str(exc)) from exc
        items += found
    return items


@router.post(
    "",
    status_code=202,
    response_model=JobOut,
    responses={k: PROBLEMS[k] for k in (400, 401, 409, 413, 415, 422)},
    summary="Submit images or zip archives",
)
def submit_job(
    response: Response,
    settings: SettingsDep,
    store: JobStoreDep,
    blobs: BlobStoreDep,
    celery: CeleryDep,
    caller: CallerDep,
    files: Annotated[
        list[UploadFile] | None,
        File(description=f"One or more parts named 'files': {ACCEPTED}. Folders inside zips are fine."),
    ] = None,
    idempotency_key: Annotated[
        str | None,
        Header(
            max_length=255,
            description="Any unique string; a retry with the same key answers with the same job "
            "instead of creating another (kept as long as jobs are)",
        ),
    ] = None,
) -> JobOut:
    """Queue every image of the upload; answers at once with the job to poll.

    `curl -F files=@digits.zip -F files=@seven.png http://127.0.0.1:8000/jobs`
    """
    if not files:
        raise ProblemError(400, "No files", f"send one or more multipart parts named 'files': {ACCEPTED}")
    items = _list_items(files, settings.max_image_bytes)
    if not items:
        raise ProblemError(400, "No images", "the upload holds no images (only folders or hidden files)")
    if len(items) > settings.max_items_per_job:
        detail = f"{len(items)} images; a job takes at most {settings.max_items_per_job}: split the upload"
        raise ProblemError(413, "Too many images", detail)

    job_id = new_job_id()
    claim = None
    if idempotency_key:
        claim = idempotency_claim(caller, idempotency_key)
        earlier = store.claim_submission(claim, job_id)
        if earlier:
            return _replayed(store, earlier, response)
    try:
        for part, upload in enumerate(files):
            upload.file.seek(0)
            blobs.put(upload_key(job_id, part), upload.file)
        store.create(job_id, [item.name for item in items], owner=caller)
        for chunk in chunks(items, settings.chunk_size, settings.chunk_max_bytes):
            celery.send_task(PROCESS_CHUNK, args=[job_id, chunk])
    except Exception:
        if claim:
            store.release_submission(claim)
        raise
    with logs.bound(job_id=job_id):
        metrics.job_submitted(store.redis, len(items))
        log.info("job submitted")
    response.headers["Location"] = f"/jobs/{job_id}"
    return JobOut.of(_job_or_404(store, job_id, caller))


def idempotency_claim(caller: str | None, idempotency_key: str) -> str:
    """Scoped to the caller: two API keys may pick the same string."""
    return hashlib.sha256(f"{caller or ''}:{idempotency_key}".encode()).hexdigest()


def _replayed(store: JobStore, job_id: str, response: Response) -> JobOut:
    """The answer to a retried submission: the job the first attempt created."""
    job = store.get(job_id)
    if job is None:
        detail = "a job with this Idempotency-Key is still being created; retry in a moment"
        raise ProblemError(409, "Submission in progress", detail, headers={"Retry-After": "1"})
    response.headers["Location"] = f"/jobs/{job_id}"
    response.headers["Idempotent-Replayed"] = "true"
    return JobOut.of(job)


@router.get("/{job_id}", response_model=JobOut, responses={k: PROBLEMS[k] for k in (401, 404)})
def get_job(job_id: str, store: JobStoreDep, caller: CallerDep) -> JobOut:
    """The job's status, progress counts, times and model version."""
    return JobOut.of(_job_or_404(store, job_id, caller))


@router.delete("/{job_id}", response_model=JobOut, responses={k: PROBLEMS[k] for k in (401, 404)})
def cancel_job(job_id: str, store: JobStoreDep, blobs: BlobStoreDep, caller: CallerDep) -> JobOut:
    """Stop a queued or running job; results already written stay readable."""
    _job_or_404(store, job_id, caller)
    if store.cancel(job_id):  # a job that already finished keeps its status
        blobs.delete_prefix(job_id)
    return JobOut.of(_job_or_404(store, job_id, caller))


class ResultFormat(StrEnum):
    json = "json"
    csv = "csv"


def _items(store: JobStore, job_id: str, offset: int, limit: int) -> list[ItemOut]:
    names = store.names(job_id, offset, limit)
    indices = list(range(offset, offset + len(names)))
    out = []
    for index, name, result in zip(indices, names, store.results(job_id, indices), strict=True):
        if result is None:
            out.append(ItemOut(index=index, name=name, status=ItemStatus.pending))
            continue
        status = ItemStatus.failed if result.error else ItemStatus.done
        out.append(
            ItemOut(
                index=index,
                name=name,
                status=status,
                digit=result.digit,
                confidence=result.confidence,
                low_confidence=result.low_confidence,
                error=result.error,
            )
        )
    return out


def _csv_rows(store: JobStore, job: Job) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["index", "name", "status", "digit", "confidence", "low_confidence", "error"])
    for offset in range(0, job.total, CSV_PAGE):
        for item in _items(store, job.id, offset, CSV_PAGE):
            confidence = "" if item.confidence is None else f"{item.confidence:.4f}"
            digit = "" if item.digit is None else item.digit
            writer.writerow(
                [item.index, item.name, item.status.value, digit, confidence,
                 str(item.low_confidence).lower(), item.error or ""]
            )  # fmt: skip
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()


@router.get(
    "/{job_id}/results",
    response_model=ResultsPage,
    responses={
        200: {"content": {"text/csv": {}}, "description": "A page of results, or all as CSV"},
        **{k: PROBLEMS[k] for k in (401, 404, 422)},
    },
)
def get_results(
    job_id: str,
    store: JobStoreDep,
    caller: CallerDep,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    format: ResultFormat = ResultFormat.json,
) -> ResultsPage | StreamingResponse:
    """One item per input image, in input order. `?format=csv` streams every item as CSV."""
    job = _job_or_404(store, job_id, caller)
    if format is ResultFormat.csv:
        headers = {"Content-Disposition": f'attachment; filename="digitq-{job_id}.csv"'}
        return StreamingResponse(_csv_rows(store, job), media_type="text/csv", headers=headers)
    items = _items(store, job_id, offset, limit)
    end = offset + len(items)
    next_url = f"/jobs/{job_id}/results?offset={end}&limit={limit}" if end < job.total else None
    return ResultsPage(
        job_id=job_id, status=job.status, offset=offset, limit=limit, total=job.total,
        items=items, next=next_url,
    )  # fmt: skip
