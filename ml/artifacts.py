"""Model artifacts on local disk: `models/<version>/{model.joblib,metadata.json}` + `LATEST`."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import joblib

MODEL_FILE = "model.joblib"
METADATA_FILE = "metadata.json"
LATEST_FILE = "LATEST"
REQUIRED_METADATA = (
    "version",
    "sha256",
    "created_at",
    "training_data",
    "params",
    "metrics",
    "library_versions",
    "low_confidence_threshold",
)


class ModelIntegrityError(Exception):
    """model.joblib does not match the sha256 recorded in metadata.json (or is missing)."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def make_version(sha256: str, kind: str = "hogsvm", when: dt.datetime | None = None) -> str:
    when = when or dt.datetime.now(dt.UTC)
    return f"{when:%Y.%m.%d}-{kind}-{sha256[:6]}"


def save_model(
    pipeline,
    metadata: dict,
    models_dir: Path,
    version: str | None = None,
    set_latest: bool = True,
) -> Path:
    """Write the pipeline and its metadata to `models_dir/<version>/` and return that dir.

    Written to a temporary sibling first and renamed, so a reader never sees half a model.
    `sha256`, `version` and `created_at` in the metadata are filled in here.
    """
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".saving-", dir=models_dir))
    try:
        joblib.dump(pipeline, tmp / MODEL_FILE)
        sha = sha256_file(tmp / MODEL_FILE)
        version = version or make_version(sha)
        meta = {
            **metadata,
            "version": version,
            "sha256": sha,
            "created_at": metadata.get("created_at") or dt.datetime.now(dt.UTC).isoformat(),
        }
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        target = models_dir / version
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if set_latest:
        write_latest(models_dir, version)
    return target


def write_latest(models_dir: Path, version: str) -> None:
    tmp = Path(models_dir) / f".{LATEST_FILE}.tmp"
    tmp.write_text(version + "\n")
    os.replace(tmp, Path(models_dir) / LATEST_FILE)


def read_metadata(model_dir: Path) -> dict:
    path = Path(model_dir) / METADATA_FILE
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ModelIntegrityError(f"no {METADATA_FILE} in {model_dir}") from exc
    missing = [k for k in REQUIRED_METADATA if k not in meta]
    if missing:
        raise ModelIntegrityError(f"{path} lacks {', '.join(missing)}")
    return meta


def resolve_local_model_dir(path: Path) -> Path:
    """`models/` -> the version dir named by `models/LATEST`; `models/<version>` -> itself."""
    path = Path(path)
    if (path / MODEL_FILE).exists() or (path / METADATA_FILE).exists():
        return path
    latest = path / LATEST_FILE
    if latest.exists():
        version = latest.read_text().strip()
        if not version or "/" in version or version.startswith("."):
            raise FileNotFoundError(f"{latest} holds an invalid version name {version!r}")
        return path / version
    raise FileNotFoundError(f"{path} is neither a model dir nor a models dir with {LATEST_FILE}")


def verify(model_dir: Path, metadata: dict) -> None:
    """Raise ModelIntegrityError unless model.joblib's sha256 matches the metadata."""
    model_path = Path(model_dir) / MODEL_FILE
    if not model_path.exists():
        raise ModelIntegrityError(f"no {MODEL_FILE} in {model_dir}")
    actual = sha256_file(model_path)
    if actual != metadata["sha256"]:
        raise ModelIntegrityError(
            f"{model_path} sha256 {actual[:12]}... != metadata {str(metadata['sha256'])[:12]}..."
        )


def load_pipeline(model_dir: Path):
    """Verify then unpickle. Only load models you trust: joblib files can run code."""
    meta = read_metadata(model_dir)
    verify(model_dir, meta)
    return joblib.load(Path(model_dir) / MODEL_FILE), meta
