"""Image-making helpers for the ml tests (imported by name: tests/ has no packages)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def encode(arr_or_img, fmt: str = "PNG", **kw) -> bytes:
    img = arr_or_img
    if not isinstance(img, Image.Image):
        img = Image.fromarray(np.clip(arr_or_img, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def upscale(digit: np.ndarray, side: int) -> np.ndarray:
    img = Image.fromarray(digit.astype(np.uint8)).resize((side, side), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.float64)


def paper(
    digit: np.ndarray, size: tuple[int, int] = (200, 160), at: tuple[int, int] = (20, 30), side: int = 100
) -> np.ndarray:
    """Dark ink on light paper: the digit scaled to `side` px placed at `at` (row, col)."""
    page = np.full(size, 235.0)
    r, c = at
    page[r : r + side, c : c + side] -= upscale(digit, side) * (200.0 / 255.0)
    return page
