"""Small labelled data sets for the data-source, compare and promotion tests: IDX files, digit
folders and zips built from the bundled digits, and models trained on a few hundred of them."""

from __future__ import annotations

import gzip
import io
import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from ml import sources
from ml.data import load_splits


@lru_cache(maxsize=1)
def _training_digits() -> tuple[np.ndarray, np.ndarray]:
    s = load_splits()  # ~2 s of CSV parsing: once per test process
    return s.X_train, s.y_train


def digits(n: int, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n bundled training digits (all ten classes) from `start` on."""
    X, y = _training_digits()
    return X[start : start + n].copy(), y[start : start + n].copy()


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.clip(np.rint(array), 0, 255).astype(np.uint8).tobytes()


def write_idx(folder: Path, X: np.ndarray, y: np.ndarray, prefix: str = "train", gz: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for name, blob in (
        (f"{prefix}-images-idx3-ubyte{suffix}", idx_bytes(X, sources.IMAGES_MAGIC)),
        (f"{prefix}-labels-idx1-ubyte{suffix}", idx_bytes(y, sources.LABELS_MAGIC)),
    ):
        (folder / name).write_bytes(gzip.compress(blob) if gz else blob)
    return folder


def png(digit: np.ndarray, dark_on_light: bool = False) -> bytes:
    pixels = np.clip(digit, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(255 - pixels if dark_on_light else pixels).save(buf, format="PNG")
    return buf.getvalue()


def write_digit_folder(folder: Path, X: np.ndarray, y: np.ndarray) -> Path:
    for i, (digit, label) in enumerate(zip(X, y, strict=True)):
        sub = folder / str(int(label))
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"d{i}.png").write_bytes(png(digit, dark_on_light=i % 2 == 0))
    return folder


def write_zip(path: Path, X: np.ndarray, y: np.ndarray) -> tuple[Path, Path]:
    """archive.zip of PNGs + labels.csv (with a header row) naming each entry."""
    rows = ["name,digit"]
    with zipfile.ZipFile(path, "w") as zf:
        for i, (digit, label) in enumerate(zip(X, y, strict=True)):
            zf.writestr(f"img/{i}.png", png(digit))
            rows.append(f"img/{i}.png,{int(label)}")
    labels = path.with_suffix(".csv")
    labels.write_text("\n".join(rows) + "\n")
    return path, labels


def tiny_model(models_dir: Path, n: int, copies: int = 0, start: int = 0) -> Path:
    """A model trained on `n` bundled digits only (no bundled set, no copies): seconds to fit."""
    from ml.train import DEFAULT_AUGMENT, train

    X, y = digits(n, start)
    source = sources.Source("idx", f"tiny-{n}-{start}", X, y, {"tiny": "0" * 64})
    return train(
        models_dir,
        augment={**DEFAULT_AUGMENT, "copies": copies},
        set_latest=False,
        extra_sources=[source],
        bundled=False,
    )
