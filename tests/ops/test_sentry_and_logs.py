"""Sentry's scrubbing through the real SDK to a local envelope endpoint; the log formatters."""

import io
import json
import logging
import os
import subprocess
import sys

import pytest

from core import logs
from core.config import PROJECT_ROOT, Settings
from tests.ops.ops_helpers import API_KEY, AWS_ENV, Collector

pytestmark = pytest.mark.stack  # subprocesses and a local Sentry endpoint

SCRIPT = f"""
import sentry_sdk
from core import logs, sentry
from core.config import Settings

assert sentry.init(Settings(), "api")
with logs.bound(job_id="{"a" * 32}", model_version="v-test"):
    sentry_sdk.capture_event({{
        "message": "boom with {API_KEY} and {AWS_ENV["AWS_SECRET_ACCESS_KEY"]}",
        "level": "error",
        "request": {{
            "url": "http://x/jobs",
            "method": "POST",
            "headers": {{"Authorization": "Bearer {API_KEY}", "X-API-Key": "{API_KEY}", "Accept": "*/*"}},
            "data": "PNG image bytes",
        }},
    }})
    try:
        raise RuntimeError("failed with key {API_KEY}")
    except RuntimeError:
        sentry_sdk.capture_exception()
sentry_sdk.flush(5)
"""


def test_sentry_events_carry_job_tags_and_no_secrets(sentry_collector: Collector) -> None:
    env = {
        **os.environ,
        **AWS_ENV,
        "SENTRY_DSN": sentry_collector.dsn,
        "API_KEYS": f"other-key-1234,{API_KEY}",
        "REDIS_URL": "",
    }
    before = len(sentry_collector.events())
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    events = sentry_collector.events()[before:]
    assert len(events) == 2
    message, exception = events
    for event in events:
        assert event["tags"]["job_id"] == "a" * 32 and event["tags"]["model_version"] == "v-test"
        assert event["tags"]["role"] == "api"
    assert message["request"]["headers"] == {"Accept": "*/*"}
    assert "data" not in message["request"]
    assert "[redacted]" in message["message"] or "[redacted]" in json.dumps(message.get("logentry", {}))
    assert "[redacted]" in exception["exception"]["values"][0]["value"]
    raw = sentry_collector.raw()
    assert API_KEY.encode() not in raw and AWS_ENV["AWS_SECRET_ACCESS_KEY"].encode() not in raw


def _record(message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("digitq.test", logging.WARNING, __file__, 1, message, args, None)


def test_json_log_lines_carry_the_job_context_and_hide_secrets() -> None:
    settings = Settings(api_keys=API_KEY, redis_url="redis://:redis-pass-9876@127.0.0.1:6379/0")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter(logs.secret_values(settings)))
    handler.addFilter(logs.ContextFilter())
    with logs.bound(job_id="b" * 32, chunk="0-9"):
        handler.handle(_record("key %s and redis-pass-9876 here", API_KEY))
    handler.handle(_record("outside any job"))
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["job_id"] == "b" * 32 and first["chunk"] == "0-9" and first["level"] == "WARNING"
    assert first["message"] == "key [redacted] and [redacted] here"
    assert "job_id" not in second


def test_text_log_lines_show_the_context() -> None:
    formatter = logs.TextFormatter([API_KEY])
    record = _record("hello %s", API_KEY)
    with logs.bound(job_id="c" * 32):
        logs.ContextFilter().filter(record)
    line = formatter.format(record)
    assert line.endswith(f"digitq.test: hello [redacted] [job_id={'c' * 32}]")
