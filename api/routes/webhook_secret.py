"""The calling API key's webhook signing secret, and its rotation (core/webhook_secrets.py)."""

import time
from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from api.deps import CallerDep, JobStoreDep, SettingsDep
from api.problems import ProblemError
from api.schemas import Problem, WebhookSecretOut
from core.webhook_secrets import KeySecrets, SigningSecrets

router = APIRouter(prefix="/webhook-secret", tags=["webhooks"])
PROBLEMS: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "content": {"application/problem+json": {}}, "description": text}
    for code, text in {
        401: "Missing or wrong API key",
        403: "The server has no API_KEYS (its webhooks are signed with WEBHOOK_SECRET), or a client "
        "beyond loopback",
    }.items()
}


def _owner(caller: str | None) -> str:
    if caller is None:
        raise ProblemError(
            403,
            "Webhook secrets need API keys",
            "this server runs without API_KEYS: its webhooks are signed with its WEBHOOK_SECRET "
            "(`make run` keeps it in DATA_DIR/webhook-secret), which this route does not hand out",
        )
    return caller


def _out(secrets: KeySecrets) -> WebhookSecretOut:
    until = secrets.previous_until
    return WebhookSecretOut.of(secrets.current, until if until and until > time.time() else None)


@router.get("", response_model=WebhookSecretOut, responses=PROBLEMS)
async def get_webhook_secret(
    caller: CallerDep, settings: SettingsDep, store: JobStoreDep
) -> WebhookSecretOut:
    """The secret your receiver verifies this key's webhook events with (created on first use).

    Each API key has its own: events of another key never verify with it."""
    owner = _owner(caller)
    return _out(await run_in_threadpool(SigningSecrets(store.redis, settings).of, owner))


@router.post("/rotate", response_model=WebhookSecretOut, responses=PROBLEMS)
async def rotate_webhook_secret(
    caller: CallerDep, settings: SettingsDep, store: JobStoreDep
) -> WebhookSecretOut:
    """Replace this key's secret. Until `previous_valid_until` (WEBHOOK_SECRET_GRACE_SECONDS) every
    event carries two signatures (`webhook-signature: v1,<new> v1,<old>`), so a receiver still
    holding the old secret keeps verifying while you give it the new one."""
    owner = _owner(caller)
    return _out(await run_in_threadpool(SigningSecrets(store.redis, settings).rotate, owner))
