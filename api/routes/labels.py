"""People's labels on items (issue 20): one at a time, in batches (JSON or CSV), and the
labelled-data store's records of a key deleted.

A batch is checked whole before anything is written (an unknown index or name, a digit that is
not 0-9, an item without a readable image: a 422 naming the first few), then each labelled item
is copied into the labelled-data store (core/labelled.py: all of them or, when it is full, none)
and the labels are written by one script (core/labels.py).
"""

import csv
import io
import json
import time
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.deps import CallerDep, require_api_key
from api.items import off_loop, render
from api.problems import ProblemError
from api.routes.items import IndexPath, Items, ItemsDep
from api.routes.jobs import PROBLEMS, job_or_404, uncell
from api.routes.jobs import _items as results_page
from api.schemas import ItemOut, LabelIn, LabelsApplied, LabelsDeleted
from core.connections import get_labelled_store
from core.jobs import Job
from core.labelled import OPEN_KEY_ID, LabelledStore, Record, StoreFull
from core.labels import JobGone, set_labels
from ml.preprocess import ImageError

router = APIRouter(tags=["labels"], dependencies=[Depends(require_api_key)])
MAX_LABELS = 1_000  # per request: each label set decodes its item's image and holds its PNG (<= 256 px)
MAX_CSV_BYTES = 1 << 20
OFFENDERS_SHOWN = 5
Labels = dict[int, int | None]

_STORE_FULL = {
    "model": PROBLEMS[404]["model"],
    "content": {"application/problem+json": {}},
    "description": "The labelled-data store holds MAX_LABELLED_ITEMS items: nothing was applied",
}
_INVALID = {
    **PROBLEMS[422],
    "description": "Unknown items, digits outside 0-9, or items without a readable image: "
    "nothing was applied",
    "content": {
        "application/problem+json": {
            "example": {
                "type": "about:blank",
                "title": "Invalid labels",
                "status": 422,
                "detail": "2 of 3 labels are invalid; nothing was applied",
                "offenders": [
                    {"row": 2, "name": "scan/12.png", "error": "no item has this name"},
                    {"row": 3, "index": 1, "error": "digit must be 0-9 or empty, got '12'"},
                ],
            }
        }
    },
}


def key_id(caller: str | None) -> str:
    """Whose labels these are in the store: the caller's key digest (never the key)."""
    return caller or OPEN_KEY_ID


def _records(items: Items, job: Job, digits: Labels) -> list[Record]:
    """A labelled-store record per digit set; the items without a readable image are offenders."""
    indices = [i for i, digit in digits.items() if digit is not None]
    records, offenders = [], []
    for index, result in zip(indices, items.store.results(job.id, indices), strict=True):
        try:
            png = render(items.read(job, index), "upload")
        except (ProblemError, ImageError) as exc:
            if isinstance(exc, ProblemError) and exc.status == 404:
                raise  # the upload is gone: about the job, not this item
            offenders.append({"index": index, "error": f"no readable image to keep: {exc}"})
            continue
        predicted = None if result is None else result.digit
        confidence = None if result is None else result.confidence
        digit = digits[index]
        assert digit is not None
        model = job.model_version
        records.append(
            Record(job.id, index, digit, png, model, predicted, confidence, key_id(items.caller), time.time())
        )
    _refuse(offenders, len(digits))
    return records


def _refuse(offenders: list[dict[str, Any]], total: int) -> None:
    if offenders:
        detail = f"{len(offenders)} of {total} label(s) are invalid; nothing was applied"
        raise ProblemError(422, "Invalid labels", detail, extra={"offenders": offenders[:OFFENDERS_SHOWN]})


def apply(items: Items, labelled: LabelledStore, job: Job, digits: Labels) -> LabelsApplied:
    """Copy the labelled items into the store, then write every label at once."""
    records = _records(items, job, digits)
    try:
        labelled.put(records)
    except StoreFull as exc:
        raise ProblemError(507, "Labelled-data store full", str(exc), extra={"limit": exc.limit}) from None
    try:
        added, cleared = set_labels(items.store.redis, job.id, digits)
    except JobGone:
        raise ProblemError(404, "Not found", f"there is no job {job.id!r} (it expired)") from None
    labelled.remove(key_id(items.caller), job.id, [i for i, digit in digits.items() if digit is None])
    return LabelsApplied(job_id=job.id, set=added, cleared=cleared, stored=labelled.count())


@router.put(
    "/jobs/{job_id}/items/{index}/label",
    response_model=ItemOut,
    responses={**{k: PROBLEMS[k] for k in (401, 403, 404)}, 422: _INVALID, 507: _STORE_FULL},
    summary="Label one item",
)
async def put_label(
    job_id: str,
    index: IndexPath,
    body: LabelIn,
    items: ItemsDep,
) -> ItemOut:
    """Set the digit the item really shows (`{"digit": 7}`), or clear it (`{"digit": null}`).

    The item, with its image, is kept in the labelled-data store as training data (it outlives
    the job); the results show it as `label`. Needs the job's upload (kept UPLOAD_KEEP_SECONDS).
    """
    return await off_loop(_one, items, job_id, index, body.digit)


def _one(items: Items, job_id: str, index: int, digit: int | None) -> ItemOut:
    apply(items, get_labelled_store(), items.job(job_id, index), {index: digit})
    return results_page(items.store, job_id, index, 1)[0]


def _digit(value: object) -> int | None:
    """A label's digit: 0-9, or None (clear); raises ValueError."""
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if type(value) is int and 0 <= value <= 9:
        return value
    raise ValueError(f"digit must be 0-9 or empty, got {value!r}")


def _resolve(entries: Sequence[dict[str, Any]], job: Job, names: list[str] | None) -> Labels:
    """{index: digit} of entries ({"row", "index" or "name", "digit"}); a 422 with the offenders."""
    by_name: dict[str, list[int]] = {}
    for index, name in enumerate(names or []):
        by_name.setdefault(name, []).append(index)
    out: Labels = {}
    offenders: list[dict[str, Any]] = []
    for entry in entries:
        where: dict[str, Any] = {k: entry[k] for k in ("row", "index", "name") if k in entry}
        try:
            digit = _digit(entry.get("digit"))
            index = (
                _by_name(by_name, str(entry["name"])) if "name" in entry else _index(entry.get("index"), job)
            )
        except ValueError as exc:
            offenders.append({**where, "error": str(exc)})
            continue
        out[index] = digit
    _refuse(offenders, len(entries))
    if not out:
        raise ProblemError(422, "No labels", "send at least one label")
    return out


def _index(value: object, job: Job) -> int:
    if type(value) is not int or not 0 <= value < job.total:
        raise ValueError(f"no item has this index (the job has {job.total})")
    return value


def _by_name(by_name: dict[str, list[int]], name: str) -> int:
    found = by_name.get(name)
    if found is None:
        found = by_name.get(uncell(name))  # as the results CSV shows it (api/routes/jobs.py `_cell`)
    if not found:
        raise ValueError("no item has this name")
    if len(found) > 1:
        raise ValueError(f"{len(found)} items have this name: label them by index")
    return found[0]


def _json_entries(raw: bytes) -> list[dict[str, Any]]:
    try:
        body = json.loads(raw)
        labels = body["labels"]
        if not isinstance(labels, list) or not all(isinstance(e, dict) for e in labels):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        detail = 'send JSON {"labels": [{"index": 0, "digit": 7}, ...]} or a CSV part "file" (name,digit)'
        raise ProblemError(422, "Invalid labels", detail) from None
    return [{"row": row, **entry} for row, entry in enumerate(labels, 1)]


def _csv_entries(raw: bytes) -> list[dict[str, Any]]:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ProblemError(422, "Invalid labels", "the CSV is not UTF-8 text") from None
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or not {"name", "digit"} <= set(reader.fieldnames):
        raise ProblemError(422, "Invalid labels", "the CSV needs a header row with the columns name,digit")
    return [{"row": row, "name": line["name"], "digit": line["digit"]} for row, line in enumerate(reader, 2)]


async def _entries(request: Request) -> list[dict[str, Any]]:
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=1, max_fields=4)
        except StarletteHTTPException as exc:  # too many fields or files, a broken multipart body
            raise ProblemError(
                422, "Invalid labels", f"send one CSV part named 'file': {exc.detail}"
            ) from None
        part = form.get("file")
        if not isinstance(part, UploadFile):
            raise ProblemError(422, "Invalid labels", "send the CSV as a multipart part named 'file'")
        raw = await part.read(MAX_CSV_BYTES + 1)
        if len(raw) > MAX_CSV_BYTES:
            raise ProblemError(413, "Too many labels", f"the CSV is over {MAX_CSV_BYTES} bytes: split it")
        entries = _csv_entries(raw)
    else:
        entries = _json_entries(await request.body())
    if len(entries) > MAX_LABELS:
        detail = f"{len(entries)} labels; send at most {MAX_LABELS} per request"
        raise ProblemError(413, "Too many labels", detail)
    return entries


def _batch(items: Items, job_id: str, entries: Sequence[dict[str, Any]]) -> LabelsApplied:
    job = job_or_404(items.store, job_id, items.caller)
    names = items.store.names(job_id, 0, job.total) if any("name" in e for e in entries) else None
    return apply(items, get_labelled_store(), job, _resolve(entries, job, names))


@router.post(
    "/jobs/{job_id}/labels",
    response_model=LabelsApplied,
    responses={**{k: PROBLEMS[k] for k in (401, 403, 404, 413)}, 422: _INVALID, 507: _STORE_FULL},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"type": "object", "required": ["labels"]},
                    "example": {"labels": [{"index": 0, "digit": 7}, {"index": 4, "digit": None}]},
                },
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {"file": {"type": "string", "format": "binary"}},
                        "required": ["file"],
                    },
                    "example": {"file": "name,digit\nscan/0.png,7\nscan/4.png,\n"},
                },
            },
        }
    },
    summary="Label many items",
)
async def post_labels(
    job_id: str,
    request: Request,
    items: ItemsDep,
) -> LabelsApplied:
    """Set or clear up to 1,000 labels at once: all of them, or (a 422 naming the first few offenders) none.

    JSON `{"labels": [{"index": 0, "digit": 7}, {"index": 4, "digit": null}]}`, or a CSV file part
    named `file` with the header `name,digit` (names as the results show them; an empty digit clears):

    `curl -H "X-API-Key: $KEY" -F file=@labels.csv http://127.0.0.1:8000/jobs/$JOB/labels`
    """
    entries = await _entries(request)
    return await off_loop(_batch, items, job_id, entries)


@router.delete(
    "/labels",
    response_model=LabelsDeleted,
    responses={k: PROBLEMS[k] for k in (401, 403)},
    summary="Delete my labels",
)
def delete_labels(caller: CallerDep) -> LabelsDeleted:
    """Remove every item this API key labelled from the labelled-data store (the labels shown in
    results stay until their jobs expire)."""
    return LabelsDeleted(deleted=get_labelled_store().delete_key(key_id(caller)))
