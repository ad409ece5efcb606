"""Where uploads live between the API and the workers.

The API and the workers may run on different machines, so an upload is stored under a key
that every worker can read: a directory in the embedded default, an S3 bucket when BLOB_URL
is `s3://bucket/prefix`. Workers read a part through a local path; for S3 it is downloaded
once per worker machine and reused by every chunk of the job.
"""

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import urlparse

from core.config import Settings


class BlobStoreUnavailable(Exception):
    """The blob store could not take an upload (S3 down, credentials, bucket): not the client's fault."""


_MISSING = ("NoSuchKey", "404")  # S3's codes for an object that is not there


def upload_key(job_id: str, part: int) -> str:
    """Where part `part` (0-based) of a job's upload is stored."""
    return f"{job_id}/part-{part}"


class BlobStore(Protocol):
    def put(self, key: str, data: BinaryIO) -> None: ...
    def get(self, key: str) -> bytes: ...
    def delete(self, key: str) -> None: ...
    def keys(self, prefix: str) -> Iterator[str]: ...
    def local_path(self, key: str) -> Path: ...
    def delete_prefix(self, prefix: str) -> None: ...
    def local_jobs(self) -> Iterator[tuple[str, float]]: ...
    def forget_local(self, job_id: str) -> None: ...


class LocalBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        # Keys are built by digitq from validated job ids; refuse anything else all the same.
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"invalid blob key {key!r}")
        return self.root / key

    def put(self, key: str, data: BinaryIO) -> None:
        path = self._path(key)
        self._private_parent(path)
        tmp = path.with_suffix(".part")
        # Uploads are other people's images: owner-only (0600 in 0700 dirs), whatever the umask.
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:
            shutil.copyfileobj(data, out, 1 << 20)
        tmp.replace(path)

    def get(self, key: str) -> bytes:
        """A small blob's bytes (labelled records); raises FileNotFoundError."""
        return self._path(key).read_bytes()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def keys(self, prefix: str) -> Iterator[str]:
        """Every stored key under the folder `prefix` ("": all of them), sorted."""
        base = self._path(prefix) if prefix else self.root
        if base.is_dir():
            for path in sorted(base.rglob("*")):
                if path.is_file() and not path.name.endswith(".part"):
                    yield path.relative_to(self.root).as_posix()

    def _private_parent(self, path: Path) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)

    def local_path(self, key: str) -> Path:
        path = self._path(key)
        if not path.exists():
            raise FileNotFoundError(f"upload {key} is missing from {self.root}")
        return path

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self._path(prefix), ignore_errors=True)

    def local_jobs(self) -> Iterator[tuple[str, float]]:
        """Each job with files on this machine, and seconds since its files last changed."""
        if not self.root.is_dir():
            return
        now = time.time()
        for path in self.root.iterdir():
            if path.is_dir():
                yield path.name, now - path.stat().st_mtime

    def forget_local(self, job_id: str) -> None:
        """Delete this machine's copy of a job's upload (here, the upload itself)."""
        self.delete_prefix(job_id)


class S3BlobStore:
    def __init__(self, bucket: str, prefix: str, cache_dir: Path) -> None:
        import boto3  # only when S3 is configured
        from botocore.config import Config

        # Endpoint from AWS_ENDPOINT_URL, credentials from env. Fail in seconds, not minutes: the
        # client is waiting on the other end of a POST and gets a 503 to retry.
        config = Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 2, "mode": "standard"})
        self.s3 = boto3.client("s3", config=config)
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.cache = LocalBlobStore(cache_dir)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, data: BinaryIO) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.s3.upload_fileobj(data, self.bucket, self._key(key))
        except (BotoCoreError, ClientError) as exc:
            # The message names the endpoint or the error code, never the credentials.
            raise BlobStoreUnavailable(f"{type(exc).__name__}") from exc

    def get(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        try:
            return self.s3.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING:
                raise FileNotFoundError(key) from exc
            raise

    def delete(self, key: str) -> None:
        self.s3.delete_object(Bucket=self.bucket, Key=self._key(key))

    def keys(self, prefix: str) -> Iterator[str]:
        start = len(self._key(""))
        for page in self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._key(prefix.rstrip("/") + "/" if prefix else "")
        ):
            for found in page.get("Contents", []):
                yield found["Key"][start:]

    def local_path(self, key: str) -> Path:
        from botocore.exceptions import ClientError

        path = self.cache._path(key)
        if not path.exists():
            self.cache._private_parent(path)
            tmp = path.with_suffix(f".{id(self)}.part")
            try:
                self.s3.download_file(self.bucket, self._key(key), str(tmp))
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in _MISSING:
                    raise FileNotFoundError(f"upload {key} is missing from the bucket") from exc
                raise
            tmp.chmod(0o600)
            tmp.replace(path)
        return path

    def local_jobs(self) -> Iterator[tuple[str, float]]:
        return self.cache.local_jobs()

    def forget_local(self, job_id: str) -> None:
        self.cache.delete_prefix(job_id)  # the bucket keeps it: another machine may need it

    def delete_prefix(self, prefix: str) -> None:
        self.cache.delete_prefix(prefix)
        listing = self.s3.get_paginator("list_objects_v2")
        for page in listing.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
            objects = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if objects:
                self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": objects})


def _bucket(settings: Settings) -> tuple[str, str] | None:
    """BLOB_URL's (bucket, prefix), or None for the local store."""
    if not settings.blob_url:
        return None
    url = urlparse(settings.blob_url)
    if url.scheme != "s3" or not url.netloc:
        raise ValueError(f"BLOB_URL must look like s3://bucket/prefix, got {settings.blob_url!r}")
    return url.netloc, url.path.strip("/")


def make_blob_store(settings: Settings) -> BlobStore:
    bucket = _bucket(settings)
    if bucket:
        return S3BlobStore(*bucket, settings.data_dir / "blob-cache")
    return LocalBlobStore(settings.data_dir / "uploads")


def make_labelled_store(settings: Settings) -> BlobStore:
    """Where labelled items are kept (core/labelled.py): beside the uploads, never among them
    (the upload sweeps delete what is not a live job's)."""
    bucket = _bucket(settings)
    if bucket:
        return S3BlobStore(
            bucket[0], f"{bucket[1]}/labelled".lstrip("/"), settings.data_dir / "labelled-cache"
        )
    return LocalBlobStore(settings.data_dir / "labelled")
