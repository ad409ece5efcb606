"""A large stand-in data set for `make model-full` measurements when MNIST cannot be downloaded:
the 4,000 bundled training digits, each distorted COPIES times (ml.data.augment, seed 77),
written as an MNIST IDX folder for `python -m ml train --data DIR` (docs/model-data.md).
The bundled held-out digits are never used. Accuracies measured on it are not MNIST figures.
Run: .venv/bin/python bench/synth_idx.py OUT_DIR [--copies 16]
"""

from __future__ import annotations

import argparse
import gzip
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ml.data import augment, load_splits  # noqa: E402
from ml.sources import IMAGES_MAGIC, LABELS_MAGIC  # noqa: E402


def write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    pixels = np.clip(np.rint(array), 0, 255).astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(header + pixels))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--copies", type=int, default=16)
    args = parser.parse_args()
    splits = load_splits()
    X = augment(splits.X_train, args.copies, seed=77, max_rotate=12.0, elastic=1.0, progress=True)
    y = np.tile(splits.y_train, args.copies)
    args.out.mkdir(parents=True, exist_ok=True)
    write_idx(args.out / "train-images-idx3-ubyte.gz", X, IMAGES_MAGIC)
    write_idx(args.out / "train-labels-idx1-ubyte.gz", y, LABELS_MAGIC)
    print(f"{len(y)} digits in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
