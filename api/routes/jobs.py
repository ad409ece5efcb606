"""Submit a job, follow it, read its results, cancel it."""

import csv
import io
import json
import re
from collections.abc import Iterator, Mapping
from enum import StrEnum
from typing import Annotated

from fastapi import APIRouter, File, Form, Header, Query, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse

from api.deps import BlobStoreDep, CallerDep, FairShareDep, JobStoreDep, SubmissionDep, WebhookStateDep
from api.options import MAX_WAIT_SECONDS, parse_metadata, parse_prefer_wait, parse_webhook
from api.problems import ProblemError, over_quota
from api.schemas import ItemOut, ItemStatus, JobList, JobOut, JobWithResults, Problem, ResultsPage
from api.waiting import get_completions
from core import listing, metrics, submission, webhooks
from core.idempotency import CLAIM_SECONDS
from core.jobs import TERMINAL, ItemResult, Job, JobStatus, JobStore, is_job_id
from core.labels import get_labels
from core.quotas import QuotaExceeded, tenant_of
from core.submission import Submission
from core.uploads import ACCEPTED, Item, UploadError, list_upload

router = APIRouter(prefix="/jobs", tags=["jobs"])
PROBLEMS = {
    code: {"model": Problem, "content": {"application/problem+json": {}}, "description": text}
    for code, text in {
        400: "Nothing to do: no files, an empty file, an unreadable zip, or a zip with no images",
        401: "Missing or wrong API key (only when API_KEYS is set)",
        403: "Without API_KEYS: a client beyond loopback, a non-loopback Host, or a cross-site request",
        404: "No such job (or it expired)",
        409: "A submission with this Idempotency-Key is still being created",
        413: "The upload, an image, or the number of images is over the limit",
        415: "A part that is neither an image nor a zip",
        422: "A malformed parameter or metadata",
        429: "Over a quota of the API key: MAX_QUEUED_IMAGES_PER_KEY, or its share of "
        "SUBMISSION_IMAGES_PER_SECOND while other keys wait",
    }.items()
}
CSV_PAGE = 1000
FILTER_BUDGET = 10_000  # items one filtered results page may read (the page may then be short)
INLINE_RESULTS = 1000  # a job that ends while its submission waits carries its results up to this size
MAX_OFFSET = 2**31 - 1  # Redis list indices are 64-bit; anything near is past every job's end


def job_or_404(store: JobStore, job_id: str, caller: str | None) -> Job:
    # Every /jobs/{id} route comes here first: an id we could not have made is never looked up
    # in Redis (`<id>:names` would be another key type) nor used in a path (cancel's delete).
    if not is_job_id(job_id):
        raise ProblemError(404, "Not found", "there is no such job: job ids are 32 hexadecimal characters")
    return visible(store.get(job_id), job_id, caller)


def visible(job: Job | None, job_id: str, caller: str | None) -> Job:
    """The job if the caller may see it. Another key's job is "not found" too: its existence is
    not the caller's business."""
    if job is None or (caller is not None and job.owner is not None and job.owner != caller):
        raise ProblemError(404, "Not found", f"there is no job {job_id!r} (jobs expire after a week)")
    return job


def list_items(
    files: list[UploadFile], max_image_bytes: int, max_items: int, keep_part_errors: bool = False
) -> list[Item]:
    """`list_upload` of the parts (named as uploaded); an unusable upload is a problem."""
    parts = [(upload.file, upload.filename or f"file-{part + 1}") for part, upload in enumerate(files)]
    try:
        return list_upload(parts, max_image_bytes, max_items, keep_part_errors)
    except UploadError as exc:
        raise ProblemError(exc.status, "Unusable upload", str(exc)) from exc


def create_job(
    sub: Submission,
    files: list[UploadFile],
    items: list[Item],
    extra: Mapping[str, str | int] | None = None,
    idempotency_key: str | None = None,
    job_id: str | None = None,
) -> tuple[str, bool]:
    """core/submission.py `create_job` of the uploaded parts; over a quota is a 429 naming the limit."""
    parts = [upload.file for upload in files]
    try:
        return submission.create_job(sub, parts, items, extra, idempotency_key, job_id)
    except QuotaExceeded as exc:
        raise over_quota(exc) from None


def _submit(
    response: Response,
    sub: Submission,
    files: list[UploadFile] | None,
    idempotency_key: str | None,
    metadata: str | None,
    webhook: str | None,
    webhook_events: str | None,
) -> Job:
    settings = sub.settings
    labels = parse_metadata(metadata)
    hook = parse_webhook(webhook, webhook_events, settings)
    if not files:
        raise ProblemError(400, "No files", f"send one or more multipart parts named 'files': {ACCEPTED}")
    items = list_items(files, settings.max_image_bytes, settings.max_items_per_job)
    if not items:
        raise ProblemError(400, "No images", "the upload holds no images (only folders or hidden files)")
    if len(items) > settings.max_items_per_job:
        detail = f"{len(items)} images; a job takes at most {settings.max_items_per_job}: split the upload"
        raise ProblemError(413, "Too many images", detail)
    extra = {**hook, "metadata": json.dumps(labels)} if labels else hook
    job_id, replayed = create_job(sub, files, items, extra, idempotency_key=idempotency_key)
    if replayed:
        return _replayed(sub.store, job_id, response)
    response.headers["Location"] = f"/jobs/{job_id}"
    return job_or_404(sub.store, job_id, sub.caller)


def finished_job(store: JobStore, job_id: str, caller: str | None) -> JobWithResults:
    """The job with its results inline when it has at most INLINE_RESULTS items."""
    job = job_or_404(store, job_id, caller)
    results = _items(store, job_id, 0, job.total) if job.total <= INLINE_RESULTS else None
    return JobWithResults(**JobOut.of(job).model_dump(), results=results)


@router.post(
    "",
    status_code=202,
    response_model=JobOut,
    responses={
        200: {
            "model": JobWithResults,
            "description": "With `Prefer: wait=N`, the job ended within N seconds: the finished job, "
            f"with its results inline when it has at most {INLINE_RESULTS} images",
        },
        **{k: PROBLEMS[k] for k in (400, 401, 403, 409, 413, 415, 422, 429)},
    },
    summary="Submit images or zip archives",
)
async def submit_job(
    response: Response,
    sub: SubmissionDep,
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
    prefer: Annotated[
        str | None,
        Header(
            max_length=255,
            description=f"`wait=N` (RFC 7240; N <= {MAX_WAIT_SECONDS} s, `wait` alone: {MAX_WAIT_SECONDS}): "
            "hold the request until the job ends, then answer 200 with the job and its results; "
            "if it has not ended after N s, the usual 202. A malformed value is ignored.",
            examples=["wait=10"],
        ),
    ] = None,
    metadata: Annotated[
        str | None,
        Form(
            description="A JSON object of at most 16 string keys and values (<= 512 characters each), "
            'echoed on the job: {"batch": "2026-11-24", "customer": "acme"}'
        ),
    ] = None,
    webhook: Annotated[
        str | None,
        Form(description="An http(s) URL that receives the job's events, signed (Standard Webhooks)"),
    ] = None,
    webhook_events: Annotated[
        str | None,
        Form(
            description="Comma-separated, from job.running, job.progress, job.succeeded, job.failed, "
            "job.cancelled; default: the three terminal ones"
        ),
    ] = None,
) -> JobOut | JSONResponse:
    """Queue every image of the upload; answers at once with the job to poll.

    `curl -F files=@digits.zip -F files=@seven.png http://127.0.0.1:8000/jobs`

    With `Prefer: wait=10` the answer waits (up to 10 s) for the job to end: `200` with the
    finished job and its `results`, plus `Preference-Applied: wait=10`; else `202` as usual.
    """
    wait = parse_prefer_wait(prefer)
    job = await run_in_threadpool(
        _submit, response, sub, files, idempotency_key, metadata, webhook, webhook_events
    )
    if not wait:
        return JobOut.of(job)
    response.headers["Preference-Applied"] = f"wait={wait}"
    if job.status not in TERMINAL and not await get_completions().wait(job.id, wait):
        return JobOut.of(await run_in_threadpool(job_or_404, sub.store, job.id, sub.caller))
    finished = await run_in_threadpool(finished_job, sub.store, job.id, sub.caller)
    return JSONResponse(finished.model_dump(mode="json"), headers=dict(response.headers))


@router.get("", response_model=JobList, responses={k: PROBLEMS[k] for k in (400, 401, 403, 422)})
def list_jobs(
    store: JobStoreDep,
    caller: CallerDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(max_length=64, description="the previous page's last job id")] = None,
    status: JobStatus | None = None,
) -> JobList:
    """The caller's jobs, newest first (with API keys, only the jobs its key submitted).

    Follow `next` for the following page; with `status=`, a page may hold fewer than `limit` jobs
    while more follow (each request reads a bounded number of jobs).
    """
    try:
        found = listing.page(store, caller, limit, after=after, status=status)
    except listing.UnknownCursor:
        detail = f"after={after!r} is not one of your jobs (expired?); list again without 'after'"
        raise ProblemError(400, "Unknown cursor", detail) from None
    next_url = None
    if found.next_after:
        query = f"&status={status.value}" if status else ""
        next_url = f"/jobs?limit={limit}&after={found.next_after}{query}"
    return JobList(items=[JobOut.of(job) for job in found.jobs], next=next_url)


def _replayed(store: JobStore, job_id: str, response: Response) -> Job:
    """The answer to a retried submission: the job the first attempt created."""
    job = store.get(job_id)
    if job is None:
        detail = (
            "a job with this Idempotency-Key is still being created; retry in a moment "
            f"(if its first attempt failed, the key is free again within {CLAIM_SECONDS // 60} minutes)"
        )
        raise ProblemError(409, "Submission in progress", detail, headers={"Retry-After": "1"})
    response.headers["Location"] = f"/jobs/{job_id}"
    response.headers["Idempotent-Replayed"] = "true"
    return job


@router.get("/{job_id}", response_model=JobOut, responses={k: PROBLEMS[k] for k in (401, 403, 404)})
async def get_job(
    job_id: str,
    store: JobStoreDep,
    caller: CallerDep,
    response: Response,
    prefer: Annotated[
        str | None,
        Header(
            max_length=255,
            description=f"`wait=N` (N <= {MAX_WAIT_SECONDS} s): hold the request until the job ends or N s "
            "pass, then answer as usual (`Preference-Applied: wait=N`): a long poll",
            examples=["wait=20"],
        ),
    ] = None,
) -> JobOut:
    """The job's status, progress counts, times and model version."""
    job = await run_in_threadpool(job_or_404, store, job_id, caller)
    wait = parse_prefer_wait(prefer)
    if wait is None:
        return JobOut.of(job)
    response.headers["Preference-Applied"] = f"wait={wait}"
    if job.status in TERMINAL:
        return JobOut.of(job)
    await get_completions().wait(job_id, wait)  # ended or not: the job as it is now (its progress)
    return JobOut.of(await run_in_threadpool(job_or_404, store, job_id, caller))


@router.delete("/{job_id}", response_model=JobOut, responses={k: PROBLEMS[k] for k in (401, 403, 404)})
def cancel_job(
    job_id: str,
    store: JobStoreDep,
    hooks: WebhookStateDep,
    blobs: BlobStoreDep,
    fair: FairShareDep,
    caller: CallerDep,
) -> JobOut:
    """Stop a queued or running job; results already written stay readable."""
    job_or_404(store, job_id, caller)
    if store.cancel(job_id, tenant_of(caller)):  # a job that already finished keeps its status
        fair.forget(job_id)  # its chunks still waiting for the bulk window are never sent
        blobs.delete_prefix(job_id)
        webhooks.notify(hooks, job_id)  # job.cancelled
        job = job_or_404(store, job_id, caller)
        metrics.job_finished(store.redis, (job.finished_at or 0) - job.created_at)
        return JobOut.of(job)
    return JobOut.of(job_or_404(store, job_id, caller))


class ResultFormat(StrEnum):
    json = "json"
    csv = "csv"
    jsonl = "jsonl"


Row = tuple[int, str, ItemStatus, ItemResult | None, int | None]  # ..., result, label


def _rows(store: JobStore, job_id: str, offset: int, limit: int) -> list[Row]:
    """(index, name, status, result, label) of up to `limit` items from `offset`: three Redis reads."""
    names = store.names(job_id, offset, limit)
    indices = list(range(offset, offset + len(names)))
    results = store.results(job_id, indices)
    marks = get_labels(store.redis, job_id, indices)
    out: list[Row] = []
    for index, name, result, label in zip(indices, names, results, marks, strict=True):
        status = (
            ItemStatus.pending if result is None else ItemStatus.failed if result.error else ItemStatus.done
        )
        out.append((index, name, status, result, label))
    return out


def _item(row: Row) -> ItemOut:
    index, name, status, result, label = row
    if result is None:
        return ItemOut(index=index, name=name, status=status, label=label)
    return ItemOut(
        index=index,
        name=name,
        status=status,
        digit=result.digit,
        confidence=result.confidence,
        low_confidence=result.low_confidence,
        error=result.error,
        label=label,
    )


def _items(store: JobStore, job_id: str, offset: int, limit: int) -> list[ItemOut]:
    return [_item(row) for row in _rows(store, job_id, offset, limit)]


def _filtered(
    store: JobStore, job: Job, offset: int, limit: int, status: ItemStatus | None, budget: int
) -> tuple[list[ItemOut], int]:
    """Up to `limit` items from `offset` on (of `status` only, if given), reading at most `budget`
    items; returns them and the offset where reading stopped."""
    if status is None:
        items = _items(store, job.id, offset, limit)
        return items, offset + len(items)
    found: list[ItemOut] = []
    position = offset
    while position < job.total and position - offset < budget and len(found) < limit:
        page = _items(store, job.id, position, min(CSV_PAGE, budget))
        if not page:
            break
        for item in page:
            position = item.index + 1
            if item.status is status:
                found.append(item)
                if len(found) == limit:
                    break
    return found, position


def _all_rows(store: JobStore, job: Job, status: ItemStatus | None) -> Iterator[list[Row]]:
    for offset in range(0, job.total, CSV_PAGE):
        yield [row for row in _rows(store, job.id, offset, CSV_PAGE) if status in (None, row[2])]


# A formula start at the beginning of a cell, or after a `;` or `,` inside it: a spreadsheet in a
# semicolon locale splits `x;=1+2;.png` into three cells, the second a formula (quotes don't help:
# the cell's quote is not where its `;`-field starts).
FORMULA_START = re.compile(r"(^|[;,])(\s*)(?=[=+\-@\t\r])")


def _cell(text: str) -> str:
    """A spreadsheet opening the CSV must not run a name as a formula (CSV injection): `'` before
    every formula start, in whichever cell a spreadsheet may split it into."""
    return FORMULA_START.sub(r"\1\2'", text)


GUARDED_START = re.compile(r"(^|[;,])(\s*)'(?=[=+\-@\t\r])")


def uncell(text: str) -> str:
    """`_cell` undone: a name as the results CSV shows it, back to the name (api/routes/labels.py
    reads label CSVs made from the results CSV)."""
    return GUARDED_START.sub(r"\1\2", text)


def _csv_rows(store: JobStore, job: Job, status: ItemStatus | None) -> Iterator[str]:
    # Straight from the stored results (no ItemOut per row: building and validating those was
    # half of a 10,000-row CSV's time, `make bench`).
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["index", "name", "status", "digit", "confidence", "low_confidence", "error", "label"])
    for rows in _all_rows(store, job, status):
        for index, name, state, result, label in rows:
            mark = "" if label is None else label
            if result is None:
                writer.writerow([index, _cell(name), state.value, "", "", "false", "", mark])
                continue
            confidence = "" if result.confidence is None else f"{result.confidence:.4f}"
            digit = "" if result.digit is None else result.digit
            writer.writerow(
                [index, _cell(name), state.value, digit, confidence,
                 str(result.low_confidence).lower(), _cell(result.error or ""), mark]
            )  # fmt: skip
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()


def _jsonl_rows(store: JobStore, job: Job, status: ItemStatus | None) -> Iterator[str]:
    for rows in _all_rows(store, job, status):
        yield "".join(_item(row).model_dump_json() + "\n" for row in rows)


@router.get(
    "/{job_id}/results",
    response_model=ResultsPage,
    responses={
        200: {
            "content": {"text/csv": {}, "application/jsonl": {}},
            "description": "A page of results, or all of them as CSV or JSON Lines",
        },
        **{k: PROBLEMS[k] for k in (401, 403, 404, 422)},
    },
)
def get_results(
    job_id: str,
    store: JobStoreDep,
    caller: CallerDep,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    format: ResultFormat = ResultFormat.json,
    status: Annotated[
        ItemStatus | None, Query(description="only the items in this state: `failed` reads the errors alone")
    ] = None,
) -> ResultsPage | StreamingResponse:
    """One item per input image, in input order. `?format=csv` or `?format=jsonl` streams every
    item (one JSON object per line); `?status=failed` keeps only the items that failed, in any format.

    With `status=`, a JSON page may hold fewer than `limit` items while `next` says more follow.
    """
    job = job_or_404(store, job_id, caller)
    if format is not ResultFormat.json:
        rows, media_type = {
            ResultFormat.csv: (_csv_rows, "text/csv"),
            ResultFormat.jsonl: (_jsonl_rows, "application/jsonl"),
        }[format]
        headers = {"Content-Disposition": f'attachment; filename="digitq-{job_id}.{format.value}"'}
        return StreamingResponse(rows(store, job, status), media_type=media_type, headers=headers)
    items, end = _filtered(store, job, offset, limit, status, FILTER_BUDGET)
    query = f"&status={status.value}" if status else ""
    next_url = f"/jobs/{job_id}/results?offset={end}&limit={limit}{query}" if end < job.total else None
    return ResultsPage(
        job_id=job_id, status=job.status, offset=offset, limit=limit, total=job.total,
        items=items, next=next_url,
    )  # fmt: skip
