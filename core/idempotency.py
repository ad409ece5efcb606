"""Idempotency-Key claims: a retried submission names the job its first attempt created.

`digitq:idempotency:<claim>` (core/job_keys.py; the claim is scoped to the caller,
core/submission.py `idempotency_claim`) holds the job's id. It is first claimed for CLAIM_SECONDS
only, then kept as long as its job once the job exists (core/jobs.py `create`).
"""

import redis

from core import job_keys, scripts
from core.jobs import text

# An Idempotency-Key is first claimed for this long only: if the attempt that claimed it dies
# before its job exists (API killed mid-upload), a retry may create the job after this. Storing
# a 200 MB upload takes seconds; creating the job extends the claim to the job's TTL.
CLAIM_SECONDS = 300


class SubmissionClaims:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._claim = scripts.register(client, "idempotency_claim")

    def claim(self, claim: str, job_id: str) -> str | None:
        """Reserve an idempotency claim for a new job (for CLAIM_SECONDS, until `create` extends
        it); returns the job it already names, if any."""
        earlier = self._claim(keys=[job_keys.idempotency(claim)], args=[job_id, CLAIM_SECONDS])
        return text(earlier) if earlier else None

    def release(self, claim: str) -> None:
        """Free a claim whose job could not be created, so that a retry can create it."""
        self.redis.delete(job_keys.idempotency(claim))
