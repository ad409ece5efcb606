"""Logging for the API and the workers: text or JSON (LOG_JSON=1), level from LOG_LEVEL, every
line carrying the job id, chunk and model version of the work it is about, secrets redacted.

The context lives in contextvars: the API sets it per request, the workers per task (Celery's
task_prerun/task_postrun signals), so one `job_id` follows a job from the upload to its last
chunk across processes and machines.
"""

import contextvars
import json
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlparse

from core.config import Settings

CONTEXT_FIELDS = ("job_id", "chunk", "model_version")
_context: dict[str, contextvars.ContextVar[str | None]] = {
    name: contextvars.ContextVar(name, default=None) for name in CONTEXT_FIELDS
}
REDACTED = "[redacted]"
HANDLER_NAME = "digitq"
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "FLOWER_BASIC_AUTH")


def bind(**values: str | None) -> None:
    for name, value in values.items():
        _context[name].set(value)


def clear() -> None:
    for var in _context.values():
        var.set(None)


@contextmanager
def bound(**values: str | None) -> Iterator[None]:
    tokens = [(_context[k], _context[k].set(v)) for k, v in values.items()]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def context() -> dict[str, str]:
    return {name: value for name, var in _context.items() if (value := var.get()) is not None}


def secret_values(settings: Settings) -> list[str]:
    """Every configured secret, longest first (so a secret containing another is fully hidden)."""
    found = set(settings.api_key_set | settings.admin_key_set)
    if settings.model_signing_key:
        found.add(settings.model_signing_key.get_secret_value())
    if settings.sentry_dsn:
        found.add(settings.sentry_dsn.get_secret_value())
    if settings.webhook_secret:
        found.add(settings.webhook_secret.get_secret_value())
    for url in (settings.redis_url, settings.blob_url, settings.model_uri, settings.model_registry):
        if url and "://" in url and (password := urlparse(url).password):
            found.add(password)
    for name in SECRET_ENV:
        if value := os.environ.get(name):
            found.add(value)
            found.update(value.split(":", 1)[1:])  # FLOWER_BASIC_AUTH=user:password
    return sorted((s for s in found if len(s) >= 4), key=len, reverse=True)


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


class ContextFilter(logging.Filter):
    """Puts the job context on every record (as attributes, for both formatters)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name in CONTEXT_FIELDS:
            if not hasattr(record, name):
                setattr(record, name, _context[name].get())
        return True


class _Base(logging.Formatter):
    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = secrets

    def _message(self, record: logging.LogRecord) -> tuple[str, str | None]:
        message = record.getMessage()
        exc = self.formatException(record.exc_info) if record.exc_info else None
        if record.stack_info:
            exc = (exc + "\n" if exc else "") + self.formatStack(record.stack_info)
        return redact(message, self.secrets), redact(exc, self.secrets) if exc else None


class TextFormatter(_Base):
    def format(self, record: logging.LogRecord) -> str:
        message, exc = self._message(record)
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        ctx = " ".join(f"{n}={v}" for n in CONTEXT_FIELDS if (v := getattr(record, n, None)))
        line = f"{when},{int(record.msecs):03d} {record.levelname:<7} {record.processName}/{record.process} "
        line += f"{record.name}: {message}" + (f" [{ctx}]" if ctx else "")
        return line + ("\n" + exc if exc else "")


class JsonFormatter(_Base):
    def format(self, record: logging.LogRecord) -> str:
        message, exc = self._message(record)
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
            "process": record.process,
        }
        for name in CONTEXT_FIELDS:
            if value := getattr(record, name, None):
                out[name] = value
        if exc:
            out["exception"] = exc
        return json.dumps(out, ensure_ascii=False)


def configure(settings: Settings, role: str) -> None:
    """Root logger -> stderr in the chosen format; uvicorn's and celery's loggers go through it."""
    formatter: logging.Formatter = (
        JsonFormatter(secret_values(settings))
        if settings.log_json
        else TextFormatter(secret_values(settings))
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    handler.addFilter(ContextFilter())
    handler.set_name(HANDLER_NAME)
    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == HANDLER_NAME:  # ours, from an earlier call; others' handlers stay
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "celery.task"):
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
        logger.propagate = True
    logging.getLogger("botocore").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("boto3").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("urllib3").setLevel(max(logging.WARNING, root.level))
    logging.getLogger(__name__).debug("logging configured for %s", role)
