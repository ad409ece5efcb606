"""A job as clients see it: the body of GET /jobs/{id} and of its webhook events (worker/webhooks.py).

One shape for both, so it lives below the API and the worker (api/schemas.py builds on it).
"""

from datetime import UTC, datetime

from pydantic import BaseModel, Field

from core.jobs import Job, JobStatus


def utc_time(ts: float | None) -> datetime | None:
    return datetime.fromtimestamp(ts, UTC) if ts is not None else None


class Counts(BaseModel):
    total: int = Field(description="images in the job")
    done: int = Field(description="images finished, with a digit or with an error")
    failed: int = Field(description="images finished with an error (a subset of done)")


class JobLinks(BaseModel):
    self: str
    results: str
    csv: str


class WebhookOut(BaseModel):
    url: str
    events: list[str] = Field(description="the events sent to this URL")
    delivered: bool = Field(description="the job's terminal event was answered with a 2xx")
    attempts: int = Field(description="delivery attempts so far, every event of the job")
    last_status: int | None = Field(description="HTTP status of the last attempt, if one was answered")
    last_error: str | None = Field(description="why the last attempt failed, if it did")
    next_attempt_at: datetime | None = Field(description="when the next retry is due, if one is")

    @classmethod
    def of(cls, state: dict[str, str] | None) -> "WebhookOut | None":
        if not state or "url" not in state:
            return None
        return cls(
            url=state["url"],
            events=state.get("events", "").split(","),
            delivered=state.get("delivered") == "1",
            attempts=int(state.get("attempts", 0)),
            last_status=int(state["last_status"]) if state.get("last_status") else None,
            last_error=state.get("last_error") or None,
            next_attempt_at=utc_time(float(state["next_at"])) if state.get("next_at") else None,
        )


class JobOut(BaseModel):
    id: str
    status: JobStatus
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    counts: Counts
    model_version: str | None = Field(description="the model that produced the results")
    error: str | None = Field(description="why the job failed, when it did")
    expires_at: datetime | None = Field(description="when the job and its results are deleted")
    metadata: dict[str, str] = Field(description="the labels sent with the job, as sent")
    webhook: WebhookOut | None = Field(description="where the job's events are sent, and how that went")
    links: JobLinks

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "id": "3f2a9c0e5b8d4e6f9a1b2c3d4e5f6a7b",
                    "status": "running",
                    "created_at": "2026-11-22T10:00:00Z",
                    "started_at": "2026-11-22T10:00:01Z",
                    "finished_at": None,
                    "counts": {"total": 10000, "done": 4250, "failed": 3},
                    "model_version": "2026.11.22-hogsvm-1a2b3c",
                    "error": None,
                    "expires_at": "2026-11-29T10:00:00Z",
                    "metadata": {"batch": "2026-11-22-scans"},
                    "webhook": None,
                    "links": {
                        "self": "/jobs/3f2a9c0e5b8d4e6f9a1b2c3d4e5f6a7b",
                        "results": "/jobs/3f2a9c0e5b8d4e6f9a1b2c3d4e5f6a7b/results",
                        "csv": "/jobs/3f2a9c0e5b8d4e6f9a1b2c3d4e5f6a7b/results?format=csv",
                    },
                }
            ]
        }
    }

    @classmethod
    def of(cls, job: Job) -> "JobOut":
        base = f"/jobs/{job.id}"
        return cls(
            id=job.id,
            status=job.status,
            created_at=utc_time(job.created_at),  # type: ignore[arg-type]
            started_at=utc_time(job.started_at),
            finished_at=utc_time(job.finished_at),
            counts=Counts(total=job.total, done=job.done, failed=job.failed),
            model_version=job.model_version,
            error=job.error,
            expires_at=utc_time(job.expires_at),
            metadata=job.metadata or {},
            webhook=WebhookOut.of(job.webhook),
            links=JobLinks(self=base, results=f"{base}/results", csv=f"{base}/results?format=csv"),
        )
