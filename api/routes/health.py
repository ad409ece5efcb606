"""Liveness."""

from fastapi import APIRouter

router = APIRouter(tags=["health"])


@router.get("/health")
def health() -> dict[str, str]:
    """The API process is up (it says nothing about Redis, workers or the model)."""
    return {"status": "ok"}
