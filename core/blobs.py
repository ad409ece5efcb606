"""Where uploads live between the API and the workers.

The API and the workers may run on different machines, so an upload is stored under a key
that every worker can read: a directory in the embedded default, an S3 bucket when BLOB_URL
is `s3://bucket/prefix`.

Workers read a part with `open`: a local file, or for S3 a seekable view of the object that
fetches only the byte ranges read (`RangedObject`, ranged GETs). A zip's reader seeks to the end
of central directory, reads the directory (one GET), and then each entry at the offset the
directory gives: a chunk of 250 entries costs the directory and about its entries' bytes, not
the whole part. One 200 MB zip spread over 5 worker hosts used to cost each host the whole
200 MB of transfer and disk (issue 23). A process keeps a few zips open (core/reading.py); one
it opens again (fair share interleaves jobs, so a process may alternate between more zips than it
keeps open) reads its directory from a bounded per-process cache of zip tails, not from S3 again.
`local_path` (a whole-part download into the machine's
cache) remains for what needs a file.
"""

import io
import os
import shutil
import time
from collections import OrderedDict
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
    def open(self, key: str) -> BinaryIO: ...
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
        """`path`'s folder, owner-only like every folder up to the root. One mkdir in the usual
        case (a worker stores every /predict image for review: this runs per image)."""
        try:
            os.mkdir(path.parent, 0o700)
        except FileExistsError:
            pass
        except FileNotFoundError:  # the root or a folder between is missing too
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            for folder in reversed(path.parent.relative_to(self.root).parents[:-1]):
                (self.root / folder).mkdir(mode=0o700, exist_ok=True)
            path.parent.mkdir(mode=0o700, exist_ok=True)

    def local_path(self, key: str) -> Path:
        path = self._path(key)
        if not path.exists():
            raise FileNotFoundError(f"upload {key} is missing from {self.root}")
        return path

    def open(self, key: str) -> BinaryIO:
        try:
            return self._path(key).open("rb")
        except FileNotFoundError:
            raise FileNotFoundError(f"upload {key} is missing from {self.root}") from None

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

    def open(self, key: str) -> BinaryIO:
        """The object, read by ranged GETs as it is read (nothing on disk)."""
        from botocore.exceptions import ClientError

        name = f"{self.bucket}/{self._key(key)}"
        size = _tails[name][0] if name in _tails else None  # uploads are never rewritten
        try:
            if size is None:
                size = self.s3.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise FileNotFoundError(f"upload {key} is missing from s3://{self.bucket}") from None
            raise
        raw = RangedObject(self.s3, self.bucket, self._key(key), int(size), name)
        return io.BufferedReader(raw, RANGE_BYTES)  # type: ignore[return-value]

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


# The smallest GET: a zip entry's local header and its data usually come in one (small images), and
# neighbouring entries of a chunk (stored in order) share it. Bigger reads go straight through.
RANGE_BYTES = 64 * 1024
# Zip tails (central directory and end records) kept per process: name -> (object size, offset of
# the tail, its bytes). A 100,000-entry zip's directory is ~6 MB; a chunk of it reads ~250 entries.
TAIL_CACHE_BYTES = 32 * 1024 * 1024
_tails: "OrderedDict[str, tuple[int, int, bytes]]" = OrderedDict()


def _remember_tail(name: str, size: int, offset: int, data: bytes) -> None:
    _tails[name] = (size, offset, data)
    _tails.move_to_end(name)
    while sum(len(t[2]) for t in _tails.values()) > TAIL_CACHE_BYTES and len(_tails) > 1:
        _tails.popitem(last=False)


class RangedObject(io.RawIOBase):
    """A seekable, read-only view of one S3 object: each read is a GET with a Range header.

    Wrapped in a BufferedReader by `S3BlobStore.open`, so small reads share one GET. Counts its
    GETs and bytes (`requests`, `fetched`): the tests and the sizing figures read them."""

    def __init__(self, s3: object, bucket: str, key: str, size: int, name: str = "") -> None:
        super().__init__()
        self.s3, self.bucket, self.key, self.size = s3, bucket, key, size
        self.name = name  # in the tail cache
        self.position = 0
        self.requests = 0
        self.fetched = 0
        self._opening: list[tuple[int, bytes]] | None = []  # what was read until `keep_tail`

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise OSError("negative seek position")
        self.position = base + offset
        return self.position

    def _get(self, start: int, length: int) -> bytes:
        end = min(self.size, start + length) - 1
        if end < start:
            return b""
        tail = _tails.get(self.name)
        if tail and tail[0] == self.size and start >= tail[1]:
            _tails.move_to_end(self.name)
            return tail[2][start - tail[1] : end + 1 - tail[1]]
        reply = self.s3.get_object(Bucket=self.bucket, Key=self.key, Range=f"bytes={start}-{end}")  # type: ignore[attr-defined]
        data: bytes = reply["Body"].read()
        self.requests += 1
        self.fetched += len(data)
        if self._opening is not None:
            self._opening.append((start, data))
        return data

    def keep_tail(self, offset: int) -> None:
        """The zip's directory starts at `offset`: keep [offset, end) for the next open of this
        object in this process, if what was read so far covers it (and it is not too big)."""
        blocks, self._opening = self._opening or [], None
        length = self.size - offset
        if not self.name or length <= 0 or length > TAIL_CACHE_BYTES // 4:
            return
        tail, seen = bytearray(length), bytearray(length)
        for start, data in blocks:
            lo, hi = max(start, offset), min(start + len(data), self.size)
            if lo < hi:
                tail[lo - offset : hi - offset] = data[lo - start : hi - start]
                seen[lo - offset : hi - offset] = b"\x01" * (hi - lo)
        if all(seen):
            _remember_tail(self.name, self.size, offset, bytes(tail))

    def readinto(self, buffer: "bytearray | memoryview") -> int:  # type: ignore[override]
        data = self._get(self.position, len(buffer))
        memoryview(buffer).cast("B")[: len(data)] = data
        self.position += len(data)
        return len(data)

    def readall(self) -> bytes:
        data = self._get(self.position, self.size - self.position)  # one GET, not one per 8 KiB
        self.position += len(data)
        return data


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
