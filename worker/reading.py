"""Read the bytes of a chunk's items from the upload parts: stored, or inside the task message."""

import base64
import io
import os
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

from core.blobs import BlobStore, upload_key

# Opening a zip parses its whole central directory: ~25 ms for 10,000 entries, as long as
# classifying 70 of them. A pool process keeps its last few zips open, so a big zip's
# directory is parsed once per process instead of once per chunk.
KEEP_OPEN = 2
_open_zips: "OrderedDict[Path, zipfile.ZipFile]" = OrderedDict()


def _open_zip(path: Path) -> zipfile.ZipFile:
    archive = _open_zips.get(path)
    if archive is None:
        archive = _open_zips[path] = zipfile.ZipFile(path)
        while len(_open_zips) > KEEP_OPEN:
            _open_zips.popitem(last=False)[1].close()
    _open_zips.move_to_end(path)
    return archive


def close_deleted_zips() -> None:
    """Let go of zips whose upload was deleted (job over): an open file keeps its disk space."""
    for path, archive in list(_open_zips.items()):
        if archive.fp is None or os.fstat(archive.fp.fileno()).st_nlink == 0:
            archive.close()
            del _open_zips[path]


class PartReader:
    """Reads a job's items: plain image parts from their file, zip entries by name.

    `inline`: the parts a small upload sent inside the task message ({part: base64},
    core/queue.py INLINE_UPLOAD_BYTES); the blob store is not touched for those.
    """

    def __init__(
        self, blobs: BlobStore, job_id: str, max_image_bytes: int, inline: Mapping[str, str] | None = None
    ) -> None:
        self.blobs = blobs
        self.job_id = job_id
        self.max_bytes = max_image_bytes
        self.inline = {int(part): base64.b64decode(data) for part, data in (inline or {}).items()}

    def _path(self, part: int) -> Path:
        return self.blobs.local_path(upload_key(self.job_id, part))

    def _zip(self, part: int) -> zipfile.ZipFile:
        if part in self.inline:
            return zipfile.ZipFile(io.BytesIO(self.inline[part]))  # small: parsed once per chunk is cheap
        return _open_zip(self._path(part))

    def read(self, part: int, member: str | None) -> bytes:
        """The item's bytes; raises ValueError with a message for the user on a bad entry."""
        if member is None:
            return self.inline[part] if part in self.inline else self._path(part).read_bytes()
        try:
            archive = self._zip(part)
            if archive.getinfo(member).compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise ValueError("entry is not stored or deflated; only those are read")  # as the API says
            with archive.open(member) as entry:
                data = entry.read(self.max_bytes + 1)  # headers can lie about sizes
        except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError) as exc:
            raise ValueError(f"corrupted zip entry ({exc})") from exc
        if len(data) > self.max_bytes:
            raise ValueError(f"entry expands beyond {self.max_bytes} bytes")
        return data
