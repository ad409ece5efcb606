"""A multipart/form-data body as a stream of blocks: files read in blocks, folders zipped on the fly.

Nothing here holds a whole file or a whole zip: a folder becomes a zip written entry by entry into
a small buffer that is drained after every block (zipfile writes data descriptors when its output
cannot seek), so memory stays at about one block whatever the folder's size.
"""

from __future__ import annotations

import mimetypes
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

BLOCK = 64 * 1024


@dataclass(frozen=True)
class Upload:
    """One `files` part: a file sent as it is, or a folder sent as `<folder>.zip`."""

    path: Path
    filename: str
    content_type: str
    size_estimate: int  # for the upload progress bar (a folder's zip adds headers)

    @classmethod
    def of(cls, path: Path) -> Upload:
        if path.is_dir():
            size = sum(p.stat().st_size + 100 for p in _folder_files(path))
            return cls(path, f"{path.resolve().name or 'folder'}.zip", "application/zip", size)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file or folder")
        guessed = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return cls(path, path.name, guessed, path.stat().st_size)

    def blocks(self) -> Iterator[bytes]:
        if self.path.is_dir():
            yield from zip_folder(self.path)
            return
        with self.path.open("rb") as source:
            while block := source.read(BLOCK):
                yield block


def _folder_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


class _Drain:
    """A write-only sink zipfile writes into; `take()` hands over what it holds."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes, /) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def take(self) -> bytes:
        data = b"".join(self.parts)
        self.parts.clear()
        return data


def zip_folder(folder: Path) -> Iterator[bytes]:
    """The folder as a zip, in blocks; entry names keep the folder's name (`scans/a/1.png`).

    Entries are stored, not deflated: images are compressed already, and the server reads stored
    entries without inflating them.
    """
    root = folder.resolve().name or "folder"
    sink = _Drain()
    with zipfile.ZipFile(sink, mode="w", compression=zipfile.ZIP_STORED) as archive:
        for path in _folder_files(folder):
            info = zipfile.ZipInfo.from_file(path, f"{root}/{path.relative_to(folder).as_posix()}")
            info.compress_type = zipfile.ZIP_STORED
            with path.open("rb") as source, archive.open(info, "w") as entry:
                while block := source.read(BLOCK):
                    entry.write(block)
                    if data := sink.take():
                        yield data
            if data := sink.take():
                yield data
    yield sink.take()  # the central directory, written on close


def _escape(value: str) -> str:
    # Quotes and line breaks would end the header early (the HTML form encoding, as browsers do).
    return value.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


def multipart_body(
    boundary: str,
    fields: dict[str, str],
    uploads: list[Upload],
    progress: Callable[[int, int], None] | None = None,
) -> Iterator[bytes]:
    """The whole body: form fields first, then one `files` part per upload."""
    total = sum(u.size_estimate for u in uploads)
    sent = 0
    dash = f"--{boundary}\r\n".encode()
    for name, value in fields.items():
        yield dash + f'Content-Disposition: form-data; name="{_escape(name)}"\r\n\r\n{value}\r\n'.encode()
    for upload in uploads:
        yield (
            dash
            + (
                f'Content-Disposition: form-data; name="files"; filename="{_escape(upload.filename)}"\r\n'
                f"Content-Type: {upload.content_type}\r\n\r\n"
            ).encode()
        )
        for block in upload.blocks():
            sent += len(block)
            if progress:
                progress(sent, max(total, sent))
            yield block
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()
    if progress:
        progress(sent, sent)
