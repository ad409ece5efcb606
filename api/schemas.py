"""The API's JSON shapes (separate from how jobs are stored)."""

from datetime import UTC, datetime
from enum import StrEnum

from pydantic import BaseModel, Field

from core.jobs import Job, JobStatus


def _time(ts: float | None) -> datetime | None:
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
            next_attempt_at=_time(float(state["next_at"])) if state.get("next_at") else None,
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
            created_at=_time(job.created_at),  # type: ignore[arg-type]
            started_at=_time(job.started_at),
            finished_at=_time(job.finished_at),
            counts=Counts(total=job.total, done=job.done, failed=job.failed),
            model_version=job.model_version,
            error=job.error,
            expires_at=_time(job.expires_at),
            metadata=job.metadata or {},
            webhook=WebhookOut.of(job.webhook),
            links=JobLinks(self=base, results=f"{base}/results", csv=f"{base}/results?format=csv"),
        )


class ItemStatus(StrEnum):
    pending = "pending"
    done = "done"
    failed = "failed"


class ItemOut(BaseModel):
    index: int = Field(description="position in the upload, from 0")
    name: str = Field(description="file name, or path inside the zip")
    status: ItemStatus
    digit: int | None = Field(None, ge=0, le=9)
    confidence: float | None = Field(None, ge=0, le=1, description="calibrated probability")
    low_confidence: bool = Field(False, description="confidence below the model's threshold")
    error: str | None = Field(None, description="why this image could not be read")
    label: int | None = Field(
        None, ge=0, le=9, description="the digit a person gave it (PUT .../label); null: none"
    )


class JobWithResults(JobOut):
    """A job that ended while its submission waited (`Prefer: wait`)."""

    results: list[ItemOut] | None = Field(
        description="every item, as GET /jobs/{id}/results shows them; null above 1,000 images (page them)"
    )


class ResultsPage(BaseModel):
    job_id: str
    status: JobStatus
    offset: int
    limit: int
    total: int
    items: list[ItemOut]
    next: str | None = Field(description="URL of the next page, if any")


class JobList(BaseModel):
    items: list[JobOut] = Field(description="the caller's jobs, newest first")
    next: str | None = Field(description="URL of the next page, if any")


class Problem(BaseModel):
    """RFC 9457 problem details; some carry more members (`errors`, `limit`, `job_id`, `links`)."""

    type: str = Field(
        "about:blank",
        description="names the problem: a relative URI (`/problems/quota-exceeded`) to its page",
    )
    title: str = Field(description="the problem's name, the same for every occurrence")
    status: int = Field(description="the HTTP status")
    detail: str = Field(description="what happened in this request, and what to do")

    model_config = {
        "extra": "allow",
        "json_schema_extra": {
            "examples": [
                {
                    "type": "/problems/quota-exceeded",
                    "title": "Quota exceeded",
                    "status": 429,
                    "detail": "10000 images of this key are queued; at most 10000: wait for some to finish",
                    "limit": "MAX_QUEUED_IMAGES_PER_KEY",
                }
            ]
        },
    }


class Prediction(BaseModel):
    """`POST /predict`: one image, answered inline (the old service's fields, plus the job)."""

    digit: int = Field(ge=0, le=9)
    confidence: float = Field(ge=0, le=1, description="calibrated probability")
    low_confidence: bool = Field(description="confidence below the model's threshold")
    model_version: str | None = Field(description="the model that answered")
    job_id: str = Field(description="the job it ran as: GET /jobs/{id} shows it for a week")

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "digit": 7,
                    "confidence": 0.993,
                    "low_confidence": False,
                    "model_version": "2026.11.25-hogsvm-be5404",
                    "job_id": "3f2a9c0e5b8d4e6f9a1b2c3d4e5f6a7b",
                }
            ]
        }
    }


class BatchPrediction(BaseModel):
    """One item of `POST /predict_batch`, in input order (zip members in archive order)."""

    name: str = Field(description="file name, or path inside the zip")
    digit: int | None = Field(None, ge=0, le=9)
    confidence: float | None = Field(None, ge=0, le=1, description="calibrated probability")
    low_confidence: bool = Field(False, description="confidence below the model's threshold")
    error: str | None = Field(None, description="why this item could not be read (then no digit)")

    model_config = {
        "json_schema_extra": {
            "examples": [
                {"name": "7.png", "digit": 7, "confidence": 0.993, "low_confidence": False, "error": None},
                {
                    "name": "scans/notes.txt",
                    "digit": None,
                    "confidence": None,
                    "low_confidence": False,
                    "error": "not a readable image",
                },
            ]
        }
    }


class WebhookSecretOut(BaseModel):
    """`GET /webhook-secret`: the secret that signs the calling API key's webhook events."""

    secret: str = Field(description="Standard Webhooks secret (`whsec_` + base64): give it to your receiver")
    previous_valid_until: datetime | None = Field(
        description="after a rotation: until when events are also signed with the previous secret"
    )

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwv2pUJsN7eCQ=",
                    "previous_valid_until": None,
                },
                {
                    "secret": "whsec_2b8kHQv0p3aJ1T0yq5mA7xGq8YfM4cJt9x1l2N3oP4Q=",
                    "previous_valid_until": "2026-11-23T10:00:00Z",
                },
            ]
        }
    }

    @classmethod
    def of(cls, secret: str, previous_until: float | None) -> "WebhookSecretOut":
        return cls(secret=secret, previous_valid_until=_time(previous_until))


class LabelIn(BaseModel):
    """One item's label: the digit it really shows, or null to clear it."""

    model_config = {"json_schema_extra": {"examples": [{"digit": 7}, {"digit": None}]}}

    digit: int | None = Field(ge=0, le=9)


class LabelsApplied(BaseModel):
    job_id: str
    set: int = Field(description="labels set (or set again)")
    cleared: int = Field(description="labels cleared")
    stored: int = Field(description="labelled items kept in the labelled-data store, all jobs and keys")


class LabelsDeleted(BaseModel):
    deleted: int = Field(description="labelled items of this API key removed from the labelled-data store")
