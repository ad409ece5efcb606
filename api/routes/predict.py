"""The old synchronous service's routes, answered through the queue: `/predict` and `/predict_batch`.

Same paths, parts and field names as before, so an old client only changes its base URL (and
sends an API key when the server has them). Each request is a job like any other (listed,
owned by the caller's key, kept for JOB_TTL_SECONDS); the request waits for it to end, learning
of it by notification (api/waiting.py), for at most PREDICT_TIMEOUT_SECONDS, then answers 504
with the job's id so that the client can poll it.
"""

import json
from collections.abc import Callable
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, File, UploadFile
from fastapi.concurrency import run_in_threadpool

from api.deps import SubmissionDep
from api.options import IdempotencyKey
from api.problems import ProblemError
from api.routes.jobs import INLINE_RESULTS, PROBLEMS, create_job, list_items, visible
from api.schemas import BatchPrediction, Prediction
from api.waiting import get_completions
from core.jobs import ItemResult, JobStatus, new_job_id
from core.uploads import ACCEPTED, Item, UploadError, part_items, sniff

router = APIRouter(tags=["predict"])
ANSWER_PROBLEMS: dict[int | str, dict[str, Any]] = {
    409: {**PROBLEMS[409], "description": "The job was cancelled (DELETE /jobs/{id}) before it answered"},
    503: {**PROBLEMS[409], "description": "The job failed for an internal reason, or Redis is down: retry"},
}
TIMEOUT_PROBLEM = {
    "model": None,
    "content": {
        "application/problem+json": {
            "example": {
                "type": "/problems/still-running",
                "title": "Still running",
                "status": 504,
                "detail": "no answer within 30 s; the job goes on: poll /jobs/3f2a… and read its results",
                "job_id": "3f2a9c0e5b8d4e6f9a1b2c3d4e5f6a7b",
                "links": {"self": "/jobs/3f2a…", "results": "/jobs/3f2a…/results"},
            }
        }
    },
    "description": "No answer within PREDICT_TIMEOUT_SECONDS; `job_id` and `links` say what to poll",
}


class _Replayed(Exception):
    def __init__(self, job_id: str) -> None:
        self.job_id = job_id


async def _answer(
    create: Callable[..., tuple[str, bool]], items: int, caller: str | None, timeout: float
) -> tuple[str, str | None, list[ItemResult | None]]:
    """Create the job (`create(job_id=...)`, blocking: in the thread pool), wait for it, and
    answer (job id, model version, results): as its close published them (a small job closed in
    one call: core/jobs.py ANSWER_MAX_ITEMS), else read; 504 with the job's id when it takes
    longer than `timeout`. A request whose Idempotency-Key named an earlier job waits for that one."""
    job_id = new_job_id()
    completions = get_completions()

    async def submit() -> None:
        made, replayed = await run_in_threadpool(create, job_id=job_id)
        if replayed:
            raise _Replayed(made)

    try:
        ended = await completions.wait(job_id, timeout, submit)
    except _Replayed as earlier:  # a retry (same Idempotency-Key): the first request's job answers
        job_id = earlier.job_id
        ended = await completions.wait(job_id, timeout)
    if isinstance(ended, bytes):  # it succeeded, and these are all its results
        answer = json.loads(ended)
        published: list[ItemResult | None] = [ItemResult(i, *r) for i, r in enumerate(answer["results"])]
        return job_id, answer["model_version"] or None, published
    if not ended:
        base = f"/jobs/{job_id}"
        detail = f"no answer within {timeout:g} s; the job goes on: poll {base} and read {base}/results"
        links = {"self": base, "results": f"{base}/results"}
        extra = {"job_id": job_id, "links": links}
        raise ProblemError(504, "Still running", detail, headers={"Location": base}, extra=extra)
    found, results = await completions.read(job_id, items)
    job = visible(found, job_id, caller)
    if job.status is JobStatus.cancelled:
        raise ProblemError(409, "Cancelled", f"job {job_id} was cancelled before it answered")
    if job.error:  # an internal error, after retries: not the image's fault
        detail = f"job {job_id} failed ({job.error}); retry shortly"
        raise ProblemError(503, "Service unavailable", detail, headers={"Retry-After": "5"})
    return job_id, job.model_version, results


@router.post(
    "/predict",
    response_model=Prediction,
    responses={
        422: {**PROBLEMS[422], "description": "The image could not be read, or a malformed request"},
        504: TIMEOUT_PROBLEM,
        **ANSWER_PROBLEMS,
        **{k: PROBLEMS[k] for k in (400, 401, 403, 413, 415, 429)},
    },
    summary="Recognise one image, answered inline",
)
async def predict(
    sub: SubmissionDep,
    file: Annotated[UploadFile | None, File(description="One image: PNG, JPEG, BMP, GIF, TIFF, WebP")] = None,
    idempotency_key: IdempotencyKey = None,
) -> Prediction:
    """The old service's `POST /predict`: one part named `file`.

    `curl -F file=@seven.png http://127.0.0.1:8000/predict`
    """
    if file is None:
        raise ProblemError(400, "No file", "send one image as a multipart part named 'file'")

    def create(job_id: str) -> tuple[str, bool]:  # one thread-pool hop for the sniff and the job
        items = _single_image(file, sub.settings.max_image_bytes)
        return create_job(sub, [file], items, idempotency_key=idempotency_key, job_id=job_id)

    timeout = sub.settings.predict_timeout_seconds
    job_id, model_version, (result,) = await _answer(create, 1, sub.caller, timeout)
    if result is None:  # cannot happen for a job that ended other than cancelled; never a 500
        raise ProblemError(503, "Service unavailable", f"job {job_id} ended without a result; retry")
    if result.error or result.digit is None or result.confidence is None:
        detail = f"{file.filename or 'the image'}: {result.error} (job {job_id})"
        raise ProblemError(422, "Unreadable image", detail, extra={"job_id": job_id})
    return Prediction(
        digit=result.digit,
        confidence=result.confidence,
        low_confidence=result.low_confidence,
        model_version=model_version,
        job_id=job_id,
    )


def _single_image(upload: UploadFile, max_image_bytes: int) -> list[Item]:
    """The one image of /predict; a zip is refused from its first bytes, never listed. Blocking
    (an image's header is read): in the thread pool."""
    if sniff(upload.file.read(16)) == "zip":
        detail = "/predict takes one image; send zips (and several images) to /predict_batch as 'files'"
        raise ProblemError(415, "Not an image", detail)
    upload.file.seek(0)
    try:
        return part_items(upload.file, upload.filename or "image", 0, max_image_bytes)[1]
    except UploadError as exc:
        raise ProblemError(exc.status, "Unusable upload", str(exc)) from exc


@router.post(
    "/predict_batch",
    response_model=list[BatchPrediction],
    responses={
        504: TIMEOUT_PROBLEM,
        **ANSWER_PROBLEMS,
        **{k: PROBLEMS[k] for k in (400, 401, 403, 413, 422, 429)},
    },
    summary="Recognise several images or zips, answered inline",
)
async def predict_batch(
    sub: SubmissionDep,
    files: Annotated[
        list[UploadFile] | None,
        File(description=f"Parts named 'files': {ACCEPTED}; at most {INLINE_RESULTS} images in all"),
    ] = None,
    idempotency_key: IdempotencyKey = None,
) -> list[BatchPrediction]:
    """The old service's `POST /predict_batch`: one item per image, in input order.

    A part or zip member that cannot be read is an item with an `error`, never the whole request.
    For more than 1,000 images, submit a job (`POST /jobs`) and page its results.

    `curl -F files=@seven.png -F files=@digits.zip http://127.0.0.1:8000/predict_batch`
    """
    if not files:
        raise ProblemError(400, "No files", f"send one or more multipart parts named 'files': {ACCEPTED}")
    # Every part's items (a part the service cannot take is an item with its error, as in a zip),
    # listed within /jobs' budgets for the whole request, off the event loop.
    settings = sub.settings
    items = await run_in_threadpool(
        list_items, files, settings.max_image_bytes, settings.max_items_per_job, True
    )
    if not items:
        raise ProblemError(400, "No images", "the upload holds no images (only folders or hidden files)")
    if len(items) > INLINE_RESULTS:
        detail = f"{len(items)} images; /predict_batch answers at most {INLINE_RESULTS}: POST /jobs for more"
        raise ProblemError(413, "Too many images", detail)
    create = partial(create_job, sub, files, items, idempotency_key=idempotency_key)
    *_, results = await _answer(create, len(items), sub.caller, sub.settings.predict_timeout_seconds)
    return [_batch_item(item, result) for item, result in zip(items, results, strict=True)]


def _batch_item(item: Item, result: ItemResult | None) -> BatchPrediction:
    if result is None:
        return BatchPrediction(name=item.name, error="no result (the job ended without this item)")
    return BatchPrediction(
        name=item.name,
        digit=result.digit,
        confidence=result.confidence,
        low_confidence=result.low_confidence,
        error=result.error,
    )
