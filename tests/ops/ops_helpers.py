"""Helpers of the operations tests only (images, zips, waits and plain stacks are in tests/helpers.py):
a Sentry envelope collector over HTTP, stacks whose processes log to files the tests can read,
model versions to push."""

import gzip
import json
import os
import shutil
import subprocess
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import joblib

from core.config import PROJECT_ROOT
from devstack.embedded_redis import free_port
from devstack.stack import Stack
from ml.artifacts import sha256_file
from ml.registry import S3Registry
from ml.trust import ModelTrust
from tests.helpers import wait_until

BUCKET = "digitq-ops"
REGISTRY = f"s3://{BUCKET}/registry"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing-access-key-id",
    "AWS_SECRET_ACCESS_KEY": "testing-aws-secret-value-0123456789",
    "AWS_DEFAULT_REGION": "us-east-1",
}
API_KEY = "ops-test-api-key-5f2c9d"
ADMIN_KEY = "ops-test-admin-key-81b0e4"
# The deployer's key: `ml push` signs with it, the workers verify with it (ml/trust.py).
SIGNING_KEY = "ops-test-model-signing-key-7c1d0a5e93b2"
TRUST = ModelTrust.of(SIGNING_KEY)


def local_model_dir() -> Path:
    models = PROJECT_ROOT / "models"
    version = (models / "LATEST").read_text().strip()
    return models / version


def copy_as_version(tmp: Path, version: str, corrupt: bool = False) -> Path:
    """The local model under another version name (same weights): a second version to reload to."""
    source = local_model_dir()
    target = tmp / version
    target.mkdir(parents=True)
    meta = json.loads((source / "metadata.json").read_text())
    meta["version"] = version
    if corrupt:
        meta["sha256"] = "0" * 64
    (target / "metadata.json").write_text(json.dumps(meta))
    os.link(source / "model.joblib", target / "model.joblib")  # no 34 MB copy
    return target


# A bucket writer's attack (issue 8, finding 2): a pickle that runs code, with matching metadata.
class RunsCode:
    """Unpickling this calls os.mkdir(marker): a stand-in for any command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def evil_metadata(tmp: Path, version: str, marker: Path) -> dict:
    """Write the pickle into `tmp`; the metadata an attacker would publish with it (unsigned)."""
    tmp.mkdir(parents=True, exist_ok=True)
    joblib.dump(RunsCode(marker), tmp / "model.joblib")
    meta = json.loads((local_model_dir() / "metadata.json").read_text())
    return {**meta, "version": version, "sha256": sha256_file(tmp / "model.joblib")}


def upload(tmp: Path, meta: dict) -> None:
    """Straight to the bucket, as anyone with write access to it can."""
    s3 = S3Registry(REGISTRY).s3
    version = meta["version"]
    s3.upload_file(str(tmp / "model.joblib"), BUCKET, f"registry/{version}/model.joblib")
    s3.put_object(Bucket=BUCKET, Key=f"registry/{version}/metadata.json", Body=json.dumps(meta).encode())


# Sentry: a local endpoint that receives envelopes the way sentry.io would.
class Collector:
    def __init__(self) -> None:
        self.envelopes: list[bytes] = []
        self._lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                if self.path.endswith("/envelope/"):
                    with collector._lock:
                        collector.envelopes.append(body)
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.dsn = f"http://public@127.0.0.1:{self.port}/1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[dict]:
        """Every event item of every envelope received so far."""
        found = []
        with self._lock:
            envelopes = list(self.envelopes)
        for raw in envelopes:
            lines = raw.split(b"\n")
            i = 1
            while i < len(lines):
                if not lines[i].strip():
                    i += 1
                    continue
                header = json.loads(lines[i])
                payload = lines[i + 1] if i + 1 < len(lines) else b""
                if header.get("type") == "event":
                    found.append(json.loads(payload))
                i += 2
        return found

    def raw(self) -> bytes:
        with self._lock:
            return b"\n".join(self.envelopes)

    def wait_for(self, predicate, timeout: float = 60) -> dict:
        found = lambda: next((event for event in self.events() if predicate(event)), None)  # noqa: E731
        return wait_until(found, timeout, 0.2, "a matching Sentry event")

    def close(self) -> None:
        self.server.shutdown()


# Stacks whose processes write their logs to files.
class LoggedStack(Stack):
    def __init__(self, *args, log_dir: Path, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)

    def _spawn(self, name: str, args: list[str], **popen) -> subprocess.Popen[bytes]:
        with (self.log_dir / f"{name}.log").open("ab") as out:
            return super()._spawn(name, args, stdout=out, stderr=subprocess.STDOUT, **popen)

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def json_log(self, name: str) -> list[dict]:
        lines = []
        for line in self.log(name).splitlines():
            if line.startswith("{"):
                with suppress(ValueError):
                    lines.append(json.loads(line))
        return lines


def stack_env(data_dir: Path, **env: str) -> dict[str, str]:
    return {
        "DATA_DIR": str(data_dir),
        "API_PORT": str(free_port()),
        "FLOWER_PORT": str(free_port()),
        "WORKER_PROCESSES": "1",
        "LOG_LEVEL": "INFO",
        "REDIS_URL": "",
        "MODEL_CACHE_DIR": str(data_dir / "model-cache"),
        "MODEL_SIGNING_KEY": SIGNING_KEY,
        **AWS_ENV,
        "AWS_ENDPOINT_URL": os.environ.get("AWS_ENDPOINT_URL", ""),
        **env,
    }


def make_stack(data_dir: Path, **env: str) -> LoggedStack:
    full = stack_env(data_dir, **env)
    settings_env = {k: v for k, v in full.items() if not k.startswith("AWS_")}
    from core.config import Settings

    settings = Settings(**{k.lower(): v for k, v in settings_env.items()})  # type: ignore[arg-type]
    return LoggedStack(settings, full, log_dir=data_dir / "logs")


@contextmanager
def logged_stack(data_dir: Path, **env: str) -> Iterator[LoggedStack]:
    stack = make_stack(data_dir, **env)
    try:
        stack.start(flower=False)
        wait_ready(stack)
        yield stack
    except BaseException:
        for name in list(stack.processes):
            print(f"----- {name} log -----\n{stack.log(name)[-5000:]}")
        raise
    finally:
        stack.stop()


def wait_ready(stack: Stack, workers: int | None = None, timeout: float = 90) -> dict:
    """Until /ready is 200 with `workers` live workers (default: as many as the stack started)."""
    want = workers or stack.settings.workers

    def ready() -> dict | None:
        stack.check_alive()
        try:
            r = httpx.get(f"{stack.api_url}/ready", timeout=5)
        except httpx.HTTPError:
            return None
        body = r.json()
        return body if r.status_code == 200 and len(body["workers"]) >= want else None

    return wait_until(ready, timeout, 0.3, f"/ready with {want} worker(s)")


def clear_cache(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
