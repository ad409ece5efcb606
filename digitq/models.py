"""What the client hands back: jobs, items, predictions, and the errors it raises (no I/O here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

FINISHED = frozenset({"succeeded", "failed", "cancelled", "expired"})


class DigitqError(Exception):
    """Anything the client raises."""


class ProblemError(DigitqError):
    """The server answered with an RFC 9457 problem (or another error status)."""

    def __init__(self, status: int, title: str, detail: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status} {title}: {detail}")
        self.status, self.title, self.detail, self.body = status, title, detail, body or {}


class Unreachable(DigitqError):
    """The server could not be reached (connection refused, DNS, timeouts) after retries."""


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


@dataclass(frozen=True)
class Counts:
    total: int
    done: int
    failed: int


@dataclass(frozen=True)
class Job:
    id: str
    status: str
    counts: Counts
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    expires_at: datetime | None = None
    model_version: str | None = None
    error: str | None = None
    metadata: dict[str, Any] | None = None
    replayed: bool = False  # the server answered a retried submission with this earlier job
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @classmethod
    def of(cls, data: dict[str, Any], replayed: bool = False) -> Job:
        counts = data.get("counts") or {}
        return cls(
            id=data["id"],
            status=data["status"],
            counts=Counts(counts.get("total", 0), counts.get("done", 0), counts.get("failed", 0)),
            created_at=_time(data.get("created_at")),
            started_at=_time(data.get("started_at")),
            finished_at=_time(data.get("finished_at")),
            expires_at=_time(data.get("expires_at")),
            model_version=data.get("model_version"),
            error=data.get("error"),
            metadata=data.get("metadata"),
            replayed=replayed,
            raw=data,
        )


@dataclass(frozen=True)
class Item:
    index: int
    name: str
    status: str  # pending, done or failed
    digit: int | None = None
    confidence: float | None = None
    low_confidence: bool = False
    error: str | None = None
    label: int | None = None  # the digit a person gave it (`Client.label`)

    @classmethod
    def of(cls, data: dict[str, Any]) -> Item:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in names})

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True)
class Prediction:
    digit: int
    confidence: float
    low_confidence: bool
    model_version: str | None = None
    job_id: str | None = None

    @classmethod
    def of(cls, data: dict[str, Any]) -> Prediction:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in names})


def job_id(job: Job | str) -> str:
    return job.id if isinstance(job, Job) else job
