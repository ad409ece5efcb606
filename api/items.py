"""One item of a job, read back from its stored upload and drawn for a person (issue 20).

The bytes come through the workers' own reader (core/reading.py `PartReader`: the same zip
entry checks and MAX_IMAGE_BYTES bound), and the drawing through `ml.views`, which decodes as
classification does. Which part and zip member an index is follows the API's own listing
(core/uploads.py `listed`), so the indices are the ones the results show.
"""

import asyncio
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from core.blobs import BlobStore
from core.reading import PartReader
from core.uploads import listed
from ml.preprocess import ImageError
from ml.views import model_png, upload_png

MEMBER_CACHE = 8  # (job, part) member lists kept per process: a page shows 50 items of one zip
_members: "OrderedDict[tuple[str, int], list[str] | None]" = OrderedDict()
# The reader keeps a process's last zips open and reads them by seeking a shared file: one
# thread at a time (reading an entry is fast; decoding, the slow part, happens outside).
_reading = threading.Lock()
T = TypeVar("T")


class UploadGone(Exception):
    """The job's upload is no longer stored (its keep time is over, or it was cancelled)."""


def _part_members(reader: PartReader, job_id: str, part: int) -> list[str] | None:
    """The zip member of each of the part's items, or None when the part is one image."""
    cached = (job_id, part)
    if cached not in _members:
        archive = reader.archive(part)
        _members[cached] = None if archive is None else [info.filename for info in listed(archive)]
        while len(_members) > MEMBER_CACHE:
            _members.popitem(last=False)
    _members.move_to_end(cached)
    return _members[cached]


def item_bytes(blobs: BlobStore, job_id: str, parts: int, index: int, max_image_bytes: int) -> bytes:
    """The item's bytes as uploaded. Raises UploadGone, IndexError (no such item), or ValueError
    with a message for the user (a bad zip entry)."""
    reader = PartReader(blobs, job_id, max_image_bytes)
    start = 0
    with _reading:
        try:
            for part in range(parts):
                members = _part_members(reader, job_id, part)
                count = 1 if members is None else len(members)
                if index < start + count:
                    return reader.read(part, None if members is None else members[index - start])
                start += count
        except FileNotFoundError as exc:
            raise UploadGone(job_id) from exc
    raise IndexError(index)


def render(data: bytes, view: str) -> bytes:
    """The item as a PNG: `upload` (at most 256 px) or `model` (the 28x28 the model saw).
    Raises ImageError (ValueError) as classification would."""
    return model_png(data) if view == "model" else upload_png(data)


__all__ = ["ImageError", "UploadGone", "item_bytes", "off_loop", "render"]


DECODES_AT_ONCE = 2  # per API process: images decode in the thread pool without crowding /predict out
_limiters: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, anyio.CapacityLimiter]" = (
    weakref.WeakKeyDictionary()
)


async def off_loop(work: Callable[..., T], *args: Any) -> T:
    """Run blocking work (reads, decodes) in the thread pool, at most DECODES_AT_ONCE at a time."""
    loop = asyncio.get_running_loop()
    limiter = _limiters.get(loop)
    if limiter is None:
        limiter = _limiters[loop] = anyio.CapacityLimiter(DECODES_AT_ONCE)
    return await anyio.to_thread.run_sync(partial(work, *args), limiter=limiter)
