"""The API as other code meets it, against the running stack: a client generated from the schema
the API serves (openapi-python-client, offline), the client's examples (sync and async, which
mypy also checks in `make lint`), and the command in a pipeline whose reader leaves early."""

import importlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from devstack.stack import Stack
from tests.helpers import make_zip, png

pytestmark = pytest.mark.stack  # full stack: real workers (see tests/helpers.py)

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def seven(digits: tuple[np.ndarray, np.ndarray]) -> bytes:
    X, y = digits
    return png(255 - X[int(np.flatnonzero(y == 7)[0])])


@pytest.fixture(scope="module")
def generated(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The package openapi-python-client generates from the served /openapi.json, importable."""
    where = tmp_path_factory.mktemp("generated")
    schema = where / "openapi.json"
    schema.write_text(httpx.get(f"{stack.api_url}/openapi.json").text)
    # The item images are image/png: the generator reads them as bytes when told so (its own
    # documented setting), as a user generating a client would configure it.
    config = "package_name_override: digitq_generated\npost_hooks: []\n"
    config += "content_type_overrides:\n  image/png: application/octet-stream\n"
    (where / "config.yml").write_text(config)
    made = subprocess.run(
        [BIN / "openapi-python-client", "generate", "--path", schema, "--meta", "none",
         "--output-path", where / "digitq_generated", "--config", where / "config.yml"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert made.returncode == 0 and "Warning" not in made.stdout + made.stderr, made.stdout + made.stderr
    sys.path.insert(0, str(where))
    importlib.invalidate_caches()
    return "digitq_generated"


def test_a_generated_client_submits_a_job_and_reads_its_results(
    stack: Stack, generated: str, seven: bytes
) -> None:
    from digitq_generated import AuthenticatedClient  # type: ignore[import-not-found]
    from digitq_generated.api.jobs import create_job, get_job, get_results  # type: ignore[import-not-found]
    from digitq_generated.models import BodyCreateJob, JobWithResults, Problem  # type: ignore[import-not-found]
    from digitq_generated.types import File  # type: ignore[import-not-found]

    # The stack is open (no API_KEYS): any token passes. With keys, it would be one of them.
    client = AuthenticatedClient(base_url=stack.api_url, token="unused", timeout=httpx.Timeout(90))
    body = BodyCreateJob(files=[File(payload=io.BytesIO(seven), file_name="seven.png")])
    answer = create_job.sync_detailed(client=client, body=body, prefer="wait=60", idempotency_key="gen-1")
    assert answer.status_code == 200, answer.content
    job = answer.parsed
    assert isinstance(job, JobWithResults) and job.status == "succeeded"
    assert answer.headers["Location"] == f"/jobs/{job.id}"
    assert job.results[0].digit == 7  # type: ignore[index]
    assert get_job.sync(job.id, client=client).counts.done == 1
    assert get_results.sync(job.id, client=client).items[0].name == "seven.png"
    missing = get_job.sync("0" * 32, client=client)  # a problem, parsed as the schema's Problem
    assert isinstance(missing, Problem) and missing.type_ == "/problems/not-found"


def run_example(stack: Stack, *args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DIGITQ_URL": stack.api_url}
    return subprocess.run(
        [sys.executable, *map(str, args)], env=env, capture_output=True, text=True, timeout=120
    )


def test_the_examples_run(stack: Stack, tmp_path: Path, seven: bytes) -> None:
    folder = tmp_path / "scans"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        (folder / name).write_bytes(seven)
    synced = run_example(stack, ROOT / "examples" / "recognise.py", folder, folder / "a.png")
    assert synced.returncode == 0, synced.stderr
    assert "succeeded, 2/2 done" in synced.stdout and f"{folder / 'a.png'}: 7" in synced.stdout
    asynced = run_example(
        stack, ROOT / "examples" / "recognise_async.py", folder / "a.png", folder / "b.png", folder
    )
    assert asynced.returncode == 0, asynced.stderr
    assert f"{folder / 'b.png'}: 7" in asynced.stdout and "succeeded, 2 items" in asynced.stdout


def test_a_reader_that_leaves_early_ends_the_command_quietly(stack: Stack, seven: bytes) -> None:
    """`digitq results JOB | head -1`: 3,000 lines are more than a pipe holds, so the command is
    still writing when the reader closes its end."""
    archive = make_zip({f"{i}.png": seven for i in range(3000)})
    job = httpx.post(f"{stack.api_url}/jobs", files=[("files", ("many.zip", archive))], timeout=60).json()
    env = {**os.environ, "DIGITQ_URL": stack.api_url}
    command = subprocess.Popen([BIN / "digitq", "results", job["id"]], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert command.stdout is not None and command.stderr is not None
    assert json.loads(command.stdout.readline())["index"] == 0
    command.stdout.close()  # as `head -1` exits
    errors = command.stderr.read()
    assert command.wait(timeout=60) == 141 and errors == "", errors
    httpx.delete(f"{stack.api_url}/jobs/{job['id']}")


def test_version() -> None:
    shown = subprocess.run([BIN / "digitq", "--version"], capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0 and shown.stdout.strip() == "digitq 0.1.0"
