"""Model registry: trained models on S3 (or any S3-compatible store), fetched into a local cache.

Layout under `s3://BUCKET/PREFIX/`:

    <version>/model.joblib
    <version>/metadata.json   # written last: a version exists once its metadata does
    latest                    # text object naming the default version

boto3 finds its endpoint (AWS_ENDPOINT_URL: MinIO, moto, or AWS when unset) and credentials in
the environment. A fetched version lives in `<cache_dir>/<version>/`, written to a temporary
sibling, sha256-verified against its metadata and only then renamed into place, so a version
directory in the cache is always complete and verified: a restart with the same version
downloads nothing. Verified means trusted too (ml/trust.py): a version is cached, and so ever
unpickled, only if its metadata's signature or the TRUSTED_MODEL_SHA256 allow-list vouches for it
— the sha256 alone proves nothing, the bucket's writers write the metadata too. `push` signs.

A local models dir (`models/` with `LATEST`, or `models/<version>`) works through the same
interface (LocalModels), so the worker does not care where its models come from.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from ml.artifacts import (
    LATEST_FILE,
    METADATA_FILE,
    MODEL_FILE,
    ModelIntegrityError,
    read_metadata,
    resolve_local_model_dir,
    verify,
)
from ml.trust import ModelTrust

log = logging.getLogger(__name__)
LATEST_KEY = "latest"


class RegistryUnavailable(Exception):
    """The registry could not be reached (network, endpoint down, credentials): worth retrying."""


def _valid_version(version: str) -> str:
    if not version or "/" in version or version.startswith(".") or version == LATEST_KEY:
        raise ValueError(f"invalid model version name {version!r}")
    return version


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> ("bucket", "some/prefix")."""
    url = urlparse(uri)
    if url.scheme != "s3" or not url.netloc:
        raise ValueError(f"expected s3://bucket/prefix, got {uri!r}")
    return url.netloc, url.path.strip("/")


class ModelSource(Protocol):
    def resolve(self, ref: str) -> str:
        """`latest` (or a version) -> a version name."""
        ...

    def fetch(self, version: str) -> Path:
        """A local, verified directory holding this version."""
        ...

    def is_local(self, version: str) -> bool:
        """The version can be loaded without any download."""
        ...


class LocalModels:
    """A local models dir: `<root>/<version>/` plus `<root>/LATEST`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"LocalModels({str(self.root)!r})"

    def resolve(self, ref: str) -> str:
        if ref == LATEST_KEY:
            return resolve_local_model_dir(self.root).name
        return _valid_version(ref)

    def fetch(self, version: str) -> Path:
        path = self.root / _valid_version(version)
        if not (path / METADATA_FILE).exists():
            raise FileNotFoundError(f"model version {version} is not in {self.root}")
        verify(path, read_metadata(path))
        return path

    def is_local(self, version: str) -> bool:
        return (self.root / version / METADATA_FILE).exists()


@dataclass(frozen=True)
class VersionInfo:
    version: str
    metadata: dict


class S3Registry:
    def __init__(
        self, uri: str, cache_dir: Path | None = None, client=None, trust: ModelTrust | None = None
    ) -> None:
        import boto3
        from botocore.config import Config

        self.trust = trust or ModelTrust()  # trusts nothing: every fetch is refused
        self.uri = uri.rstrip("/")
        self.bucket, self.prefix = parse_s3_uri(uri)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        # Fail fast: the caller (the worker) does the retrying, with its own backoff and log lines.
        config = Config(connect_timeout=3, read_timeout=30, retries={"max_attempts": 2, "mode": "standard"})
        self.s3 = client or boto3.client("s3", config=config)

    def __repr__(self) -> str:
        return f"S3Registry({self.uri!r})"

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def _call(self, what: str, fn, *args, **kwargs):
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(*args, **kwargs)
        except S3UploadFailedError as exc:  # upload_file wraps the ClientError (AccessDenied, ...)
            raise RegistryUnavailable(f"{what}: {exc}") from None
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise FileNotFoundError(f"{what}: not found in {self.uri}") from None
            if code in ("NoSuchBucket",):
                raise FileNotFoundError(f"{what}: bucket {self.bucket} does not exist") from None
            raise RegistryUnavailable(f"{what}: {code or exc}") from None
        except BotoCoreError as exc:  # connection refused, timeouts, no credentials, ...
            raise RegistryUnavailable(f"{what}: {exc}") from None

    # Reading.
    def latest(self) -> str:
        body = self._call("latest pointer", self.s3.get_object, Bucket=self.bucket, Key=self._key(LATEST_KEY))
        return _valid_version(body["Body"].read().decode().strip())

    def resolve(self, ref: str) -> str:
        return self.latest() if ref == LATEST_KEY else _valid_version(ref)

    def metadata(self, version: str) -> dict:
        key = self._key(_valid_version(version), METADATA_FILE)
        body = self._call(f"metadata of {version}", self.s3.get_object, Bucket=self.bucket, Key=key)
        return json.loads(body["Body"].read())

    def versions(self) -> list[VersionInfo]:
        """Every version with its metadata, oldest first (by created_at)."""
        found: list[VersionInfo] = []
        prefix = self._key("") + "/" if self.prefix else ""
        pages = self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix, Delimiter="/"
        )
        for page in self._call("listing", list, pages):
            for common in page.get("CommonPrefixes", []):
                version = common["Prefix"][len(prefix) :].strip("/")
                try:
                    found.append(VersionInfo(version, self.metadata(version)))
                except FileNotFoundError:
                    continue  # an interrupted push: no metadata, so not a version
        return sorted(found, key=lambda v: (str(v.metadata.get("created_at", "")), v.version))

    # Writing.
    def push(self, model_dir: Path, set_latest: bool = True) -> str:
        """Upload a verified version dir (or a models dir: its LATEST), signed with the trust's
        key if it has one, and optionally move `latest`."""
        model_dir = resolve_local_model_dir(Path(model_dir))
        meta = read_metadata(model_dir)
        verify(model_dir, meta)  # never publish a model that does not match its metadata
        meta = self.trust.sign(meta)
        version = _valid_version(meta["version"])
        self._call(
            "upload",
            self.s3.upload_file,
            str(model_dir / MODEL_FILE),
            self.bucket,
            self._key(version, MODEL_FILE),
        )
        self._call(
            "upload",
            self.s3.put_object,
            Bucket=self.bucket,
            Key=self._key(version, METADATA_FILE),
            Body=(json.dumps(meta, indent=2, sort_keys=True) + "\n").encode(),
            ContentType="application/json",
        )
        if set_latest:
            self.set_latest(version)
        return version

    def set_latest(self, version: str) -> None:
        self.metadata(version)  # it must exist
        self._call(
            "latest pointer",
            self.s3.put_object,
            Bucket=self.bucket,
            Key=self._key(LATEST_KEY),
            Body=(version + "\n").encode(),
            ContentType="text/plain",
        )

    # The local cache.
    def cached_dir(self, version: str) -> Path:
        if self.cache_dir is None:
            raise RuntimeError("this registry has no cache dir")
        return self.cache_dir / _valid_version(version)

    def is_local(self, version: str) -> bool:
        return (self.cached_dir(version) / METADATA_FILE).exists()

    def _cache_hit(self, version: str) -> bool:
        """A cached copy that today's trust still vouches for (a rotated key or a shorter
        allow-list disowns older copies: those are dropped and downloaded again)."""
        target = self.cached_dir(version)
        if not self.is_local(version):
            return False
        try:
            self.trust.check(read_metadata(target), str(target))
        except ModelIntegrityError as exc:
            log.warning("model %s: cached copy dropped: %s", version, exc)
            shutil.rmtree(target, ignore_errors=True)
            return False
        return True

    def fetch(self, version: str) -> Path:
        """The cached version dir, downloading and verifying it first if needed.

        Raises ModelIntegrityError if the download does not match its metadata's sha256, or
        UntrustedModelError (a ModelIntegrityError) if neither its signature nor the allow-list
        vouches for it — nothing is cached then, nothing unpickled; RegistryUnavailable when S3
        cannot be reached, FileNotFoundError for an unknown version.
        """
        target = self.cached_dir(version)
        if self._cache_hit(version):
            log.info("model %s: cache hit in %s", version, target)
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".fetching-{version}-", dir=target.parent))
        try:
            log.info("model %s: downloading from %s", version, self.uri)
            meta = self.metadata(version)
            self._call(
                f"download of {version}",
                self.s3.download_file,
                self.bucket,
                self._key(version, MODEL_FILE),
                str(tmp / MODEL_FILE),
            )
            (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
            try:
                verify(tmp, read_metadata(tmp))
                self.trust.check(meta, f"{self.uri}/{version}")
            except ModelIntegrityError as exc:  # the same class: UntrustedModelError stays one
                raise type(exc)(f"model {version} from {self.uri} refused: {exc}") from None
            try:
                os.replace(tmp, target)
            except OSError:
                if not self.is_local(version):  # not just another process that got there first
                    raise
            log.info("model %s: downloaded and verified into %s", version, target)
            return target
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def open_model_uri(uri: str, cache_dir: Path, trust: ModelTrust | None = None) -> tuple[ModelSource, str]:
    """MODEL_URI -> (where versions come from, the reference to start with).

    - `s3://bucket/prefix/<version>` or `s3://bucket/prefix/latest` -> the registry at
      s3://bucket/prefix and that version (or `latest`).
    - `models/` (with LATEST) -> LocalModels(models/), `latest`; `models/<version>` ->
      LocalModels(models/), `<version>`. Local dirs are the operator's own files: `trust`
      (what vouches for registry models) applies to S3 only.
    """
    if uri.startswith("s3://"):
        bucket, key = parse_s3_uri(uri)
        root, _, ref = key.rpartition("/")
        if not ref:
            raise ValueError(f"MODEL_URI {uri!r} must end in /<version> or /latest")
        return S3Registry(f"s3://{bucket}/{root}", cache_dir, trust=trust), ref
    path = Path(uri)
    if (path / MODEL_FILE).exists() or (path / METADATA_FILE).exists():
        return LocalModels(path.parent), path.name
    if (path / LATEST_FILE).exists():
        return LocalModels(path), LATEST_KEY
    raise FileNotFoundError(f"MODEL_URI {uri!r} is neither s3://..., a model dir nor a models dir")
