"""Sentry for the API and the workers, on when SENTRY_DSN is set.

Events are tagged with the job id, chunk and model version of the work in hand (from the log
context, see core/logs.py) and never carry uploads, image bytes, API keys or AWS keys: no
request bodies, no PII, no local variables, and a scrubber that drops credential headers and
replaces any configured secret wherever it appears in the event.

No trace headers leave the service: sentry-sdk adds `sentry-trace` and `baggage` (trace id,
environment, the DSN's public key) to every outgoing HTTP request its integrations see (httpx,
http.client: webhooks to clients' receivers, S3), unless `trace_propagation_targets` says where.
It is empty: no URL matches, nothing is propagated.
"""

import logging
from typing import Any

from core import logs
from core.config import Settings

log = logging.getLogger(__name__)
SENSITIVE_HEADERS = {"authorization", "x-api-key", "cookie", "set-cookie", "proxy-authorization"}
_secrets: list[str] = []


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return logs.redact(value, _secrets)
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def _drop_headers(headers: Any) -> Any:
    if isinstance(headers, dict):
        return {k: v for k, v in headers.items() if k.lower() not in SENSITIVE_HEADERS}
    if isinstance(headers, list):
        return [
            h for h in headers if not (isinstance(h, list | tuple) and str(h[0]).lower() in SENSITIVE_HEADERS)
        ]
    return headers


def before_send(event: dict[str, Any], _hint: dict[str, Any] | None = None) -> dict[str, Any]:
    request = event.get("request")
    if isinstance(request, dict):
        request.pop("data", None)
        request.pop("cookies", None)
        if "headers" in request:
            request["headers"] = _drop_headers(request["headers"])
    tags = event.setdefault("tags", {})
    for name, value in logs.context().items():
        tags.setdefault(name, value)
    return _scrub(event)


def before_breadcrumb(crumb: dict[str, Any], _hint: dict[str, Any] | None = None) -> dict[str, Any]:
    return _scrub(crumb)


def init(settings: Settings, role: str) -> bool:
    """Start sentry-sdk for `role` ("api" or "worker"); False when SENTRY_DSN is unset."""
    if not settings.sentry_dsn or not settings.sentry_dsn.get_secret_value():
        return False
    import sentry_sdk

    integrations: list[Any] = []
    if role == "worker":
        from sentry_sdk.integrations.celery import CeleryIntegration

        integrations.append(CeleryIntegration())
    else:
        from sentry_sdk.integrations.fastapi import FastApiIntegration
        from sentry_sdk.integrations.starlette import StarletteIntegration

        integrations += [StarletteIntegration(), FastApiIntegration()]
    _secrets[:] = logs.secret_values(settings)
    sentry_sdk.init(
        dsn=settings.sentry_dsn.get_secret_value(),
        environment=settings.sentry_environment,
        integrations=integrations,
        send_default_pii=False,
        max_request_body_size="never",
        include_local_variables=False,
        before_send=before_send,  # type: ignore[arg-type]
        before_breadcrumb=before_breadcrumb,  # type: ignore[arg-type]
        traces_sample_rate=0.0,
        trace_propagation_targets=[],  # no trace headers to third parties (receivers, S3)
    )
    sentry_sdk.set_tag("role", role)
    log.info("sentry enabled (%s)", role)
    return True
