"""The API's JSON shapes (separate from how jobs are stored)."""

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field

from core.job_json import JobOut, utc_time
from core.jobs import JobStatus


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
        return cls(secret=secret, previous_valid_until=utc_time(previous_until))


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
