"""A finished job's upload is kept for UPLOAD_KEEP_SECONDS, so that its items' images can be
shown and labelled (issue 20), then deleted.

What ends a job (the worker that stores its last result, the stuck-job sweep that fails its
lost items) calls `release`: with no keep time the upload goes at once, as it always did; else
the job is noted in one sorted set, scored by when its upload is due, and every worker's
housekeeping (worker/housekeeping.py) deletes the due ones. The set holds the jobs that ended
within the keep time, and expires should no worker ever sweep it again.
"""

import base64
import io
import time
from collections.abc import Mapping

import redis

from core.blobs import BlobStore, upload_key

KEPT = "digitq:uploads:kept"
# The set outlives its newest entry by this much: a sweep that runs late still finds it.
KEPT_EXTRA_SECONDS = 3600
SWEEP_BATCH = 500  # due uploads deleted per sweep at most (each may be an S3 listing)


def release(blobs: BlobStore, client: redis.Redis, job_id: str, keep_seconds: int) -> None:
    """The job ended: delete its upload now, or once `keep_seconds` have passed (the worker's
    record script notes it so itself when it closes the job: core/jobs.py `record`)."""
    if keep_seconds <= 0:
        blobs.delete_prefix(job_id)
        return
    pipe = client.pipeline(transaction=False)
    pipe.zadd(KEPT, {job_id: time.time() + keep_seconds})
    pipe.expire(KEPT, keep_seconds + KEPT_EXTRA_SECONDS)
    pipe.execute()


def is_kept(client: redis.Redis, job_id: str) -> bool:
    """Whether the ended job's upload is still within its keep time."""
    due = client.zscore(KEPT, job_id)
    return due is not None and float(due) > time.time()


def sweep(blobs: BlobStore, client: redis.Redis) -> list[str]:
    """Delete the uploads whose keep time is over; returns their job ids."""
    due = [
        member.decode() if isinstance(member, bytes) else str(member)
        for member in client.zrangebyscore(KEPT, "-inf", time.time(), start=0, num=SWEEP_BATCH)  # type: ignore[union-attr]
    ]
    for job_id in due:
        blobs.delete_prefix(job_id)
        client.zrem(KEPT, job_id)
    return due


def keep_inline(blobs: BlobStore, job_id: str, parts: Mapping[str, str]) -> None:
    """Store a small upload's parts, which travelled inside its chunks ({part: base64}, never
    written by the API: core/queue.py INLINE_UPLOAD_BYTES), where a stored upload's would be."""
    for part, data in parts.items():
        blobs.put(upload_key(job_id, int(part)), io.BytesIO(base64.b64decode(data)))
