"""The webhook state kept on a job's hash: the `webhook_*` fields (url and events, set at the
job's creation; then the delivery state GET /jobs/{id} shows). The events themselves are queued
by core/webhooks.py and sent by worker/webhooks.py.
"""

import redis

from core import job_keys, scripts
from core.jobs import text


class WebhookState:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._attempted = scripts.register(client, "webhook_state_attempted")

    def trigger(self, job_id: str) -> tuple[str, str, str, str]:
        """What deciding on a webhook event needs: status, url, events, gone ('' when unset)."""
        fields = ["status", "webhook_url", "webhook_events", "webhook_gone"]
        raw = self.redis.hmget(job_keys.job(job_id), fields)
        status, url, events, gone = (text(v) if v else "" for v in raw)
        return status, url, events, gone

    def record_attempt(
        self, job_id: str, status: int | None, error: str, next_at: float | None, delivered: bool, gone: bool
    ) -> None:
        """One delivery attempt, shown on the job (nothing written for a job that expired)."""
        args: list[str | float] = [status or "", error[:500], next_at or "", int(delivered), int(gone)]
        self._attempted(keys=[job_keys.job(job_id)], args=args)
