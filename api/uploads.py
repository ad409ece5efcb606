"""What an upload contains: sniff each part, list a zip's images, and split the work in chunks.

Nothing is extracted here: a zip is stored as uploaded and workers read its members by name,
so entry names (absolute paths, `..`) never become file system paths.
"""

import base64
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from core.queue import INLINE_UPLOAD_BYTES, ChunkItem

# Magic numbers of the image formats we accept, and of zip archives.
IMAGE_SIGNATURES: dict[bytes, str] = {
    b"\x89PNG\r\n\x1a\n": "png",
    b"\xff\xd8\xff": "jpeg",
    b"BM": "bmp",
    b"GIF87a": "gif",
    b"GIF89a": "gif",
    b"II*\x00": "tiff",
    b"MM\x00*": "tiff",
}
ZIP_SIGNATURES = (b"PK\x03\x04", b"PK\x05\x06")  # a zip, or an empty zip
ACCEPTED = "PNG, JPEG, BMP, GIF, TIFF, WebP images or .zip archives of them"
JUNK_NAMES = {"thumbs.db", "desktop.ini"}


class UploadError(ValueError):
    """A part the service cannot take; `status` is the HTTP status that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def sniff(head: bytes) -> str | None:
    """'zip', an image format name, or None."""
    if head.startswith(ZIP_SIGNATURES):
        return "zip"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return next((fmt for sig, fmt in IMAGE_SIGNATURES.items() if head.startswith(sig)), None)


@dataclass(frozen=True)
class Item:
    """One image to classify: a whole part, or one member of a zip part."""

    name: str
    part: int
    member: str | None = None
    size: int = 0
    error: str | None = None  # known before any worker looks at it

    def to_task(self, index: int) -> ChunkItem:
        return ChunkItem(index, self.part, self.member, self.error)


def is_junk(name: str) -> bool:
    parts = name.split("/")
    base = parts[-1]
    return (
        name.endswith("/")
        or "__MACOSX" in parts
        or any(p.startswith(".") and p not in (".", "..") for p in parts)
        or base.lower() in JUNK_NAMES
    )


def unsafe_reason(name: str) -> str | None:
    """Why an entry name would escape an extraction folder (zips made on Windows may use '\\')."""
    path = name.replace("\\", "/")
    if path.startswith("/") or (len(path) > 1 and path[1] == ":"):
        return "unsafe path in archive (absolute path); entry skipped"
    if ".." in path.split("/"):
        return "unsafe path in archive ('..'); entry skipped"
    return None


def zip_items(data: BinaryIO, part: int, max_image_bytes: int) -> Iterator[Item]:
    try:
        archive = zipfile.ZipFile(data)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UploadError(400, f"part {part + 1} is not a readable zip archive ({exc})") from exc
    with archive:
        for info in archive.infolist():
            name = info.filename
            if info.is_dir() or is_junk(name):
                continue
            error = unsafe_reason(name)
            if error is None and info.flag_bits & 0x1:
                error = "encrypted zip entry; cannot be read"
            if error is None and info.file_size > max_image_bytes:
                error = f"entry is {info.file_size} bytes; the limit per image is {max_image_bytes}"
            yield Item(name=name, part=part, member=name, size=info.compress_size, error=error)


def part_items(data: BinaryIO, filename: str, part: int, max_image_bytes: int) -> tuple[str, list[Item]]:
    """Sniff one uploaded part and list its items; raises UploadError for a part we can't take."""
    head = data.read(16)
    data.seek(0, 2)
    size = data.tell()
    data.seek(0)
    label = f"part {part + 1} ({filename!r})"
    if size == 0:
        raise UploadError(400, f"{label} is empty; send a non-empty image or zip")
    kind = sniff(head)
    if kind is None:
        raise UploadError(415, f"{label} is neither an image nor a zip; send {ACCEPTED}")
    if kind == "zip":
        items = list(zip_items(data, part, max_image_bytes))
        data.seek(0)
        return kind, items
    if size > max_image_bytes:
        raise UploadError(413, f"{label} is {size} bytes; the limit per image is {max_image_bytes}")
    return kind, [Item(name=filename, part=part, size=size)]


def chunks(
    items: list[Item], max_items: int, max_bytes: int, only: set[int] | None = None
) -> Iterator[list[ChunkItem]]:
    """Split items in index order into task payloads bounded by count and compressed bytes
    (`only`: just these indices, as the stuck-job sweep re-queues lost items)."""
    chunk: list[ChunkItem] = []
    chunk_bytes = 0
    for index, item in enumerate(items):
        if only is not None and index not in only:
            continue
        if chunk and (len(chunk) >= max_items or chunk_bytes + item.size > max_bytes):
            yield chunk
            chunk, chunk_bytes = [], 0
        chunk.append(item.to_task(index))
        chunk_bytes += item.size
    if chunk:
        yield chunk


def inline_parts(parts: Sequence[BinaryIO], limit: int = INLINE_UPLOAD_BYTES) -> dict[int, str] | None:
    """Every part as base64, when they add up to at most `limit` bytes (they then travel inside
    the task messages instead of the blob store); None for a bigger upload."""
    sizes = []
    for data in parts:
        data.seek(0, 2)
        sizes.append(data.tell())
        if sum(sizes) > limit:
            return None
    encoded = {}
    for part, data in enumerate(parts):
        data.seek(0)
        encoded[part] = base64.b64encode(data.read()).decode()
    return encoded
