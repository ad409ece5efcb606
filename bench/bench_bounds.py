"""What the chunk bounds cost and what they bound (issue 8), in one process.

1. Listing a zip at submission (`core.uploads.part_items`: directory, entry count check, each
   image's header): microseconds per entry for 28x28 PNGs.
2. The worst a chunk may cost a worker: seconds to decode and shrink one 40-megapixel image
   (the most an image may have) per format, and from the slowest, the time of a chunk at the
   CHUNK_MAX_PIXELS default, against its deadline (half of VISIBILITY_TIMEOUT).
Medians of a few runs (the machine is shared). Run: .venv/bin/python bench/bench_bounds.py
"""

from __future__ import annotations

import io
import statistics
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.config import Settings  # noqa: E402
from core.queue import chunk_time_limits  # noqa: E402
from core.uploads import part_items  # noqa: E402
from ml.preprocess import preprocess_bytes  # noqa: E402

ENTRIES = 20_000
REPEATS = 3
FORMATS = [  # (label, Pillow format, mode, save options)
    ("PNG 8-bit", "PNG", "L", {}),
    ("PNG 1-bit", "PNG", "1", {}),
    ("TIFF float, deflate", "TIFF", "F", {"compression": "tiff_adobe_deflate"}),
    ("JPEG", "JPEG", "L", {"quality": 90}),
    ("GIF", "GIF", "L", {}),
    ("WebP lossless", "WEBP", "L", {"lossless": True}),
    ("BMP 1-bit", "BMP", "1", {}),
]


def median_seconds(fn) -> float:
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def listing() -> None:
    rng = np.random.default_rng(0)
    blobs = []
    for _ in range(500):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(buffer, "PNG")
        blobs.append(buffer.getvalue())
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(ENTRIES):
            z.writestr(f"d/{i:05d}.png", blobs[i % len(blobs)])
    data = archive.getvalue()
    seconds = median_seconds(lambda: part_items(io.BytesIO(data), "a.zip", 0, 20 << 20))
    print(f"listing a zip of {ENTRIES} 28x28 PNGs: {seconds / ENTRIES * 1e6:.1f} us per entry")


def decoding() -> None:
    image = np.zeros((5000, 8000), np.uint8)
    image[1000:4000, 3500:4500] = 255
    worst = 0.0
    print("decode + shrink one 40-megapixel image (median):")
    for label, fmt, mode, options in FORMATS:
        source = image.astype(np.float32) if mode == "F" else image
        picture = Image.fromarray(source) if mode == "F" else Image.fromarray(source).convert(mode)
        buffer = io.BytesIO()
        picture.save(buffer, fmt, **options)
        blob = buffer.getvalue()
        seconds = median_seconds(lambda: preprocess_bytes(blob))  # noqa: B023 - called at once
        worst = max(worst, seconds)
        print(f"  {label:<22}{len(blob) / 1e3:>9.0f} KB {seconds:>7.3f} s")
    settings = Settings()
    deadline, hard = chunk_time_limits(settings)
    chunk = worst * settings.chunk_max_pixels / 40e6
    megapixels, visibility = settings.chunk_max_pixels / 1e6, settings.visibility_timeout
    print(f"a chunk of {megapixels:.0f} megapixels of the slowest format: ~{chunk:.1f} s;")
    print(f"  deadline {deadline:.0f} s, hard limit {hard:.0f} s, visibility timeout {visibility} s")


if __name__ == "__main__":
    listing()
    decoding()
