"""Read the bytes of a chunk's items from the stored upload parts."""

import zipfile
from contextlib import ExitStack
from pathlib import Path

from core.blobs import BlobStore, upload_key


class PartReader:
    """Opens each part (and each zip) once per chunk."""

    def __init__(self, blobs: BlobStore, job_id: str, max_image_bytes: int) -> None:
        self.blobs = blobs
        self.job_id = job_id
        self.max_bytes = max_image_bytes
        self._stack = ExitStack()
        self._zips: dict[int, zipfile.ZipFile] = {}

    def __enter__(self) -> "PartReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _path(self, part: int) -> Path:
        return self.blobs.local_path(upload_key(self.job_id, part))

    def _zip(self, part: int) -> zipfile.ZipFile:
        if part not in self._zips:
            self._zips[part] = self._stack.enter_context(zipfile.ZipFile(self._path(part)))
        return self._zips[part]

    def read(self, part: int, member: str | None) -> bytes:
        """The item's bytes; raises ValueError with a message for the user on a bad entry."""
        if member is None:
            return self._path(part).read_bytes()
        try:
            with self._zip(part).open(member) as entry:
                data = entry.read(self.max_bytes + 1)  # headers can lie about sizes
        except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError) as exc:
            raise ValueError(f"corrupted zip entry ({exc})") from exc
        if len(data) > self.max_bytes:
            raise ValueError(f"entry expands beyond {self.max_bytes} bytes")
        return data
