"""What an upload contains: sniff each part, list a zip's images, and split the work in chunks.

Nothing is extracted here: a zip is stored as uploaded and workers read its members by name,
so entry names (absolute paths, `..`) never become file system paths.

What a chunk costs a worker is bounded here, before anything is queued: by item count, by
uncompressed bytes (the zip's `file_size`, which the worker's read cannot exceed) and by decoded
pixels, read from each image's header (the first bytes of the entry; nothing is decoded).
"""

import base64
import io
import struct
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from PIL import Image

from core.config import Settings
from core.queue import INLINE_UPLOAD_BYTES, Chunk, ChunkItem
from core.reading import entry_prefix
from ml.preprocess import ACCEPTED_FORMATS, MAX_PIXELS

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
# Pillow reads a header with the accepted formats' decoders only, and no image costs a chunk more
# than MAX_PIXELS: ml/preprocess.py refuses larger ones before decoding them (one place for both).
HEADER_BYTES = 64 * 1024  # enough for every header but a TIFF's whose directory is at the end
# Workers read stored and deflated entries only: bzip2 and lzma decompress ~10-100x slower
# per byte and reach ratios (20 MiB from 37 KB) that make the compressed size meaningless.
READABLE_COMPRESSION = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED}
COMPRESSION_NAMES = {zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "lzma", 9: "deflate64"}


class UploadError(ValueError):
    """A part the service cannot take; `status` is the HTTP status that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class OverBudget(UploadError):
    """The whole upload is refused (not one part): its zips hold more entries than a job may list."""


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
    size: int = 0  # uncompressed bytes
    pixels: int = 0  # decoded pixels, from the header (MAX_PIXELS when unknown)
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


def listed(archive: zipfile.ZipFile) -> Iterator[zipfile.ZipInfo]:
    """A zip's entries that are items of the job, in item order (folders and junk are not)."""
    return (info for info in archive.infolist() if not (info.is_dir() or is_junk(info.filename)))


def unsafe_reason(name: str) -> str | None:
    """Why an entry name would escape an extraction folder (zips made on Windows may use '\\')."""
    path = name.replace("\\", "/")
    if path.startswith("/") or (len(path) > 1 and path[1] == ":"):
        return "unsafe path in archive (absolute path); entry skipped"
    if ".." in path.split("/"):
        return "unsafe path in archive ('..'); entry skipped"
    return None


def header_pixels(head: bytes) -> int:
    """Pixels of the image whose first bytes are `head`, from its header alone; MAX_PIXELS when
    the header cannot be read there (the worker then finds out, and bounds it the same way)."""
    if len(head) >= 24 and head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":  # ~1 us
        width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
        return min(width * height, MAX_PIXELS)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a decompression-bomb warning: the size is what we want
            width, height = Image.open(io.BytesIO(head), formats=ACCEPTED_FORMATS).size
    except Exception:  # noqa: BLE001 - truncated, unknown or broken: assume the worst
        return MAX_PIXELS
    return min(width * height, MAX_PIXELS)


# End of central directory record, and zip64's locator and record (APPNOTE 4.3.14-16).
END = struct.Struct("<4s4H2LH")  # signature, disk numbers, entries (disk, total), size, offset, comment
END64_LOCATOR = struct.Struct("<4sLQL")
END64 = struct.Struct("<4sQ2H2L4Q")  # ..., entries (disk, total), directory size, offset
ENTRY_SIGNATURE = b"PK\x01\x02"  # starts every central directory entry


def _declared_entries(data: BinaryIO) -> int:
    """The entry count the zip's end record declares (zip64's when there is one), found as
    zipfile finds it: the last signature in the final 64 KiB + 22 bytes; 0 if none."""
    data.seek(0, 2)
    tail_start = max(0, data.tell() - END.size - 0xFFFF)
    data.seek(tail_start)
    tail = data.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < END.size:
        return 0
    entries = END.unpack_from(tail, at)[4]
    locator = at - END64_LOCATOR.size
    if locator >= END64.size and tail[locator : locator + 4] == b"PK\x06\x07":
        record = tail[locator - END64.size : locator]
        if record.startswith(b"PK\x06\x06"):
            entries = END64.unpack(record)[7]
    return entries


def _count_entries(data: BinaryIO, most: int) -> int:
    """How many central directory entries zipfile would build (~400 B and ~5 us apiece), known
    before it builds any; counting stops once past `most`.

    The end record declares the count: an honest huge zip is refused from it at once. As it may
    lie, the entry signatures in the whole file are counted too, 1 MiB at a time (zipfile
    refuses an entry without one, so no more can be listed; a chance match in image data can
    only overcount, by one in ~4 GB).
    """
    declared = _declared_entries(data)
    if declared > most:
        return declared
    data.seek(0)
    counted, tail = 0, b""
    while counted <= most and (block := data.read(1 << 20)):
        counted += (tail + block).count(ENTRY_SIGNATURE)
        tail = block[-3:]
    data.seek(0)
    return max(declared, counted)


def _entry_head(data: BinaryIO, info: zipfile.ZipInfo) -> bytes:
    """The first HEADER_BYTES of a stored or deflated entry (core/reading.py `entry_prefix`: at a
    third of the cost of `ZipFile.open`, as this runs once per entry)."""
    return entry_prefix(data, info, HEADER_BYTES, HEADER_BYTES)


def _entry_pixels(data: BinaryIO, info: zipfile.ZipInfo) -> int:
    try:
        return header_pixels(_entry_head(data, info))
    except Exception:  # noqa: BLE001 - a corrupt entry: the worker reports it on the item
        return MAX_PIXELS


@dataclass
class EntryBudget:
    """Zip directory entries (folders and junk included) a job may still list: listing costs
    per entry, whatever the entry is. Twice MAX_ITEMS_PER_JOB leaves room for the `__MACOSX/`
    twin macOS adds to every file; the exact image count is checked after listing."""

    max_items: int
    left: int = -1

    def __post_init__(self) -> None:
        if self.left < 0:
            self.left = 2 * self.max_items + 1000

    def take(self, part: int, entries: int) -> None:
        if entries > self.left:
            raise OverBudget(
                413,
                f"part {part + 1} holds more than {self.left} zip entries; a job takes at most "
                f"{self.max_items} images: split the upload",
            )
        self.left -= entries


def zip_items(data: BinaryIO, part: int, max_image_bytes: int, budget: EntryBudget) -> Iterator[Item]:
    budget.take(part, _count_entries(data, budget.left))
    try:
        archive = zipfile.ZipFile(data)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UploadError(400, f"part {part + 1} is not a readable zip archive ({exc})") from exc
    with archive:
        for info in listed(archive):
            name = info.filename
            error = unsafe_reason(name)
            if error is None and info.flag_bits & 0x1:
                error = "encrypted zip entry; cannot be read"
            if error is None and info.compress_type not in READABLE_COMPRESSION:
                method = COMPRESSION_NAMES.get(info.compress_type, f"method {info.compress_type}")
                error = f"entry is compressed with {method}; only stored and deflate entries are read"
            if error is None and info.file_size > max_image_bytes:
                error = f"entry is {info.file_size} bytes; the limit per image is {max_image_bytes}"
            if error:  # costs a worker nothing: no chunk is cut for it
                yield Item(name=name, part=part, member=name, error=error)
            else:
                pixels = _entry_pixels(data, info)
                yield Item(name=name, part=part, member=name, size=info.file_size, pixels=pixels)


def part_items(
    data: BinaryIO, filename: str, part: int, max_image_bytes: int, budget: EntryBudget | None = None
) -> tuple[str, list[Item]]:
    """Sniff one uploaded part and list its items; raises UploadError for a part we can't take.

    `budget` bounds what listing zips may cost (shared by a job's parts)."""
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
        budget = budget or EntryBudget(100_000)
        items = list(zip_items(data, part, max_image_bytes, budget))
        data.seek(0)
        return kind, items
    if size > max_image_bytes:
        raise UploadError(413, f"{label} is {size} bytes; the limit per image is {max_image_bytes}")
    pixels = header_pixels(data.read(HEADER_BYTES))
    data.seek(0)
    return kind, [Item(name=filename, part=part, size=size, pixels=pixels)]


def list_upload(
    parts: Sequence[tuple[BinaryIO, str]],
    max_image_bytes: int,
    max_items: int,
    keep_part_errors: bool = False,
) -> list[Item]:
    """Every item of an upload's parts (file, name), listed within one EntryBudget for the whole
    upload: the one listing path of every upload route (/jobs, /predict_batch). Blocking (it
    reads every zip's directory): routes run it in the thread pool.

    A part that cannot be taken raises UploadError, or with `keep_part_errors` becomes an item
    with its error; an upload over the entry budget always raises (OverBudget)."""
    items: list[Item] = []
    budget = EntryBudget(max_items)  # refuses a huge zip before listing it
    for part, (data, name) in enumerate(parts):
        try:
            items += part_items(data, name, part, max_image_bytes, budget)[1]
        except OverBudget:
            raise
        except UploadError as exc:
            if not keep_part_errors:
                raise
            items.append(Item(name=name, part=part, error=str(exc)))
    return items


def chunks(
    items: list[Item],
    max_items: int,
    max_bytes: int,
    max_pixels: int = MAX_PIXELS,
    only: set[int] | None = None,
) -> Iterator[list[ChunkItem]]:
    """Split items in index order into task payloads bounded by count, uncompressed bytes and
    decoded pixels (an item over a bound alone is a chunk of its own); `only`: just these
    indices, as the stuck-job sweep re-queues lost items."""
    chunk: list[ChunkItem] = []
    chunk_bytes = chunk_pixels = 0
    for index, item in enumerate(items):
        if only is not None and index not in only:
            continue
        over = chunk_bytes + item.size > max_bytes or chunk_pixels + item.pixels > max_pixels
        if chunk and (len(chunk) >= max_items or over):
            yield chunk
            chunk, chunk_bytes, chunk_pixels = [], 0, 0
        chunk.append(item.to_task(index))
        chunk_bytes += item.size
        chunk_pixels += item.pixels
    if chunk:
        yield chunk


def job_chunks(
    job_id: str,
    items: list[Item],
    tenant: str,
    lane: str,
    settings: Settings,
    inline: dict[int, str] | None = None,
    only: set[int] | None = None,
) -> list[Chunk]:
    """The job's task payloads, `chunks` within the settings' bounds: at submission (with the
    `inline` parts each chunk's items are in, for a small upload) and when the stuck-job sweep
    re-queues its lost items (`only`)."""
    runs = chunks(items, settings.chunk_size, settings.chunk_max_bytes, settings.chunk_max_pixels, only=only)
    if inline is None:
        return [Chunk(job_id, tuple(run), tenant, lane) for run in runs]
    return [
        Chunk(job_id, tuple(run), tenant, lane, {str(i.part): inline[i.part] for i in run}) for run in runs
    ]


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
