"""The model registry against moto's S3 server over HTTP: push, list, fetch, cache, checksums."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.config import PROJECT_ROOT
from ml import ModelIntegrityError
from ml.registry import RegistryUnavailable, S3Registry, open_model_uri
from tests.ops.ops_helpers import BUCKET, REGISTRY, SIGNING_KEY, TRUST, copy_as_version, local_model_dir

pytestmark = pytest.mark.stack  # full stack: real workers (see tests/helpers.py)


def ml_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ml", *args],
        cwd=PROJECT_ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_push_then_list_shows_versions_with_metrics(pushed: str, tmp_path: Path) -> None:
    second = copy_as_version(tmp_path, "2099.01.01-hogsvm-second")
    out = ml_cli("push", str(second), "--no-latest", MODEL_REGISTRY=REGISTRY, MODEL_SIGNING_KEY=SIGNING_KEY)
    assert out.returncode == 0, out.stderr
    assert "2099.01.01-hogsvm-second" in out.stdout

    listed = ml_cli("list", "--json", MODEL_REGISTRY=REGISTRY)
    assert listed.returncode == 0, listed.stderr
    rows = {r["version"]: r for r in json.loads(listed.stdout)}
    assert {pushed, "2099.01.01-hogsvm-second"} <= set(rows)
    assert rows[pushed]["latest"] is True  # --no-latest left the pointer alone
    assert rows["2099.01.01-hogsvm-second"]["latest"] is False
    assert rows[pushed]["metrics"]["holdout"]["accuracy"] > 0.9
    assert rows[pushed]["sha256"] == json.loads((local_model_dir() / "metadata.json").read_text())["sha256"]

    text = ml_cli("list", MODEL_REGISTRY=REGISTRY)
    assert f"* {pushed}" in text.stdout and "holdout accuracy" in text.stdout


def test_push_without_registry_says_what_to_set() -> None:
    env = {k: v for k, v in os.environ.items() if k != "MODEL_REGISTRY"}
    out = subprocess.run(
        [sys.executable, "-m", "ml", "list"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode != 0 and "MODEL_REGISTRY" in out.stderr


def test_fetch_downloads_verifies_and_then_uses_the_cache(pushed: str, s3, tmp_path: Path) -> None:
    source, ref = open_model_uri(f"{REGISTRY}/latest", tmp_path / "cache", TRUST)
    assert ref == "latest" and source.resolve(ref) == pushed
    path = source.fetch(pushed)
    assert (path / "model.joblib").stat().st_size == (local_model_dir() / "model.joblib").stat().st_size
    inode = (path / "model.joblib").stat().st_ino

    # A second fetch must not touch S3: point the registry at a bucket that does not exist.
    offline = S3Registry(f"s3://no-such-bucket-{os.getpid()}/registry", tmp_path / "cache", trust=TRUST)
    assert offline.fetch(pushed) == path
    assert (path / "model.joblib").stat().st_ino == inode


def test_corrupt_model_is_refused_and_not_cached(s3_server: str, tmp_path: Path) -> None:
    bad = copy_as_version(tmp_path / "src", "2099.02.02-hogsvm-corrupt", corrupt=True)
    registry = S3Registry(REGISTRY, tmp_path / "cache", trust=TRUST)
    with pytest.raises(ModelIntegrityError):
        registry.push(bad)  # push verifies too: a corrupt model is never published by us...
    # ...but someone else's upload can be corrupt: the worker side must refuse it.
    key = "registry/2099.02.02-hogsvm-corrupt/model.joblib"
    registry.s3.upload_file(str(bad / "model.joblib"), BUCKET, key)
    registry.s3.put_object(
        Bucket=BUCKET,
        Key="registry/2099.02.02-hogsvm-corrupt/metadata.json",
        Body=(bad / "metadata.json").read_bytes(),
    )
    with pytest.raises(ModelIntegrityError, match="refused"):
        registry.fetch("2099.02.02-hogsvm-corrupt")
    assert not (tmp_path / "cache" / "2099.02.02-hogsvm-corrupt").exists()
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".fetching")]


def test_unreachable_registry_fails_fast_with_a_retryable_error(aws_env, tmp_path: Path, monkeypatch) -> None:
    from devstack.embedded_redis import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    registry = S3Registry(REGISTRY, tmp_path / "cache")
    with pytest.raises(RegistryUnavailable):
        registry.latest()


def test_unknown_version_is_not_found(s3_server: str, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        S3Registry(REGISTRY, tmp_path).fetch("1999.01.01-hogsvm-nothere")
