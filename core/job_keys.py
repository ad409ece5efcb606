"""The names of a job's Redis keys, in one place.

Only core/jobs.py and its sibling modules (core/idempotency.py, core/webhook_state.py,
core/sweep_state.py, core/labels.py) read or write them; other code (api/waiting.py) reads the
job hash through them. Every per-job key expires with its job (JOB_TTL_SECONDS).

- `digitq:job:<id>`: the job hash (`status`, `total`, `done`, ..., `webhook_*`, `lane`, `parts`).
- `<job>:names`: the item names in input order (LIST).
- `<job>:results`: one result per item (HASH index -> result JSON).
- `<job>:deliveries`: how often each chunk was started (HASH delivery -> count), kept apart from
  the job hash, which the API reads whole.
- `<job>:labels`: people's labels (HASH index -> digit, core/labels.py).
"""

PREFIX = "digitq:job:"
NAMES_SUFFIX = ":names"
RESULTS_SUFFIX = ":results"
DELIVERIES_SUFFIX = ":deliveries"
LABELS_SUFFIX = ":labels"
# Pub/sub channel: the id of every job that ends (last item recorded, or cancelled), published by
# the Lua scripts that end it, so `Prefer: wait` and /predict learn of it without polling.
CLOSED_CHANNEL = "digitq:jobs:closed"
# Jobs not yet closed, scored by creation time: what the stuck-job sweep (worker/stuck_jobs.py) reads
# instead of a SCAN. A job leaves it when it closes; entries older than the TTL are pruned.
ACTIVE = "digitq:jobs:active"
# An Idempotency-Key's claim (core/idempotency.py): the id of the job it created.
IDEMPOTENCY_PREFIX = "digitq:idempotency:"


def job(job_id: str) -> str:
    return PREFIX + job_id


def names(job_id: str) -> str:
    return PREFIX + job_id + NAMES_SUFFIX


def results(job_id: str) -> str:
    return PREFIX + job_id + RESULTS_SUFFIX


def deliveries(job_id: str) -> str:
    return PREFIX + job_id + DELIVERIES_SUFFIX


def labels(job_id: str) -> str:
    return PREFIX + job_id + LABELS_SUFFIX


def idempotency(claim: str) -> str:
    return IDEMPOTENCY_PREFIX + claim
