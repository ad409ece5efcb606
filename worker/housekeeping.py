"""Local copies of uploads never outlive their jobs (nor their keep time).

The worker that stores a job's last result deletes its upload, or notes it as kept for
UPLOAD_KEEP_SECONDS (core/kept_uploads.py: deleted here once due), and a cancel deletes it.
Copies can still outlive a job: S3 parts cached on the other worker machines, a part a worker
downloaded while the job was being cancelled, and the upload of a job that expired
(JOB_TTL_SECONDS) before it finished. Each worker's main process sweeps its machine now and then
(the `upload-sweep` duty, worker/scheduler.py).
"""

import logging

from core import kept_uploads
from core.blobs import BlobStore
from core.jobs import TERMINAL, JobStore

log = logging.getLogger(__name__)

# An unknown job may be one the API is submitting right now: it stores the upload first,
# then creates the job. Only copies untouched for this long are orphans.
ORPHAN_AFTER_SECONDS = 3600.0


def sweep_uploads(blobs: BlobStore, store: JobStore, orphan_after: float = ORPHAN_AFTER_SECONDS) -> list[str]:
    """Delete the uploads whose keep time is over, and this machine's copies for finished jobs
    (past their keep time) and long-unknown ones; return their ids."""
    swept = kept_uploads.sweep(blobs, store.redis)
    for job_id, idle_seconds in list(blobs.local_jobs()):
        status = store.status(job_id)
        ended = status in TERMINAL and not kept_uploads.is_kept(store.redis, job_id)
        if ended or (status is None and idle_seconds > orphan_after):
            blobs.forget_local(job_id)
            swept.append(job_id)
    if swept:
        log.info("deleted local upload copies of %d finished or expired job(s)", len(swept))
    return swept
