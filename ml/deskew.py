"""Moment-based deskewing, vectorised over a batch of 28x28 digits.

Slant is the biggest nuisance variation in handwriting; shearing each digit so its principal
axis is vertical (and its centre of mass centred) makes the classifier's job much easier.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

MAX_SKEW = 1.5  # |shear| cap; real slants are well inside, this only tames degenerate blobs


def as_images(X: np.ndarray, side: int = 28) -> np.ndarray:
    """(N, 784) or (N, 28, 28) -> float32 (N, 28, 28) (float32 throughout: half the memory
    traffic of float64, and the features need no more precision)."""
    X = np.asarray(X, dtype=np.float32)
    return X.reshape(-1, side, side)


def deskew_batch(images: np.ndarray) -> np.ndarray:
    """Shear each image so mu11 = 0 and move its centre of mass to the field centre.

    Same maths as the classic `affine_transform(img, [[1,0],[a,1]], offset=c - A @ centre)`
    with a = mu11/mu02, but with bilinear sampling done for the whole batch at once.
    """
    x = as_images(images)
    n, h, w = x.shape
    rows, cols = np.mgrid[:h, :w].astype(np.float32)
    total = x.sum(axis=(1, 2))
    safe = np.where(total > 0, total, np.float32(1.0))
    cy = np.einsum("nij,ij->n", x, rows) / safe
    cx = np.einsum("nij,ij->n", x, cols) / safe
    dr = rows[None] - cy[:, None, None]
    dc = cols[None] - cx[:, None, None]
    mu02 = np.einsum("nij,nij->n", x, dr * dr) / safe
    mu11 = np.einsum("nij,nij->n", x, dr * dc) / safe
    skew = np.where(mu02 > 1e-6, mu11 / np.where(mu02 > 1e-6, mu02, 1.0), 0.0)
    skew = np.clip(skew, -MAX_SKEW, MAX_SKEW).astype(np.float32)
    # Output pixel (r, c) samples input at (r + cy - h/2, c + skew*(r - h/2) + cx - w/2).
    # The row offset is one number per image and the column offset one per output row, so
    # bilinear sampling splits into a vertical blend of two gathered rows, then a horizontal
    # blend of two gathered columns: half the gathers of the 2-D form, no per-pixel clipping.
    out = _shift_columns(_shift_rows(x, cy - np.float32(h / 2.0)), skew, cx, h, w)
    if (total > 0).all():  # the usual case: no blank image to keep as it was
        return out.astype(np.float32, copy=False)
    return np.where(total[:, None, None] > 0, out, x).astype(np.float32, copy=False)


def _shift_rows(x: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """out[n, r] = x[n] sampled at row r + dy[n] (linear between rows, zeros outside)."""
    n, h, w = x.shape
    padded = np.zeros((n, h + 4, w), dtype=x.dtype)  # two zero rows each side
    padded[:, 2 : h + 2] = x
    k = np.floor(dy)
    fr = (dy - k).astype(x.dtype)[:, None, None]
    # Clamped to [-2, h]: a clamped pair of rows lies wholly in the zero padding.
    rows = np.clip(np.arange(h)[None, :] + k.astype(np.intp)[:, None], -2, h) + 2
    images = np.arange(n)[:, None]
    upper = padded[images, rows]
    lower = padded[images, rows + 1]
    return upper * (1 - fr) + lower * fr


def _shift_columns(v: np.ndarray, skew: np.ndarray, cx: np.ndarray, h: int, w: int) -> np.ndarray:
    """out[n, r, c] = v[n, r] sampled at column c + skew[n]*(r - h/2) + cx[n] - w/2."""
    n = len(v)
    dx = skew[:, None] * (np.arange(h, dtype=np.float32) - np.float32(h / 2.0))[None, :]
    dx += (cx - np.float32(w / 2.0))[:, None]
    m = np.floor(dx)
    fc = (dx - m).astype(v.dtype)[:, :, None]
    # Shifts beyond the row read only zeros: clamp them to just beyond, pad w + 2 each side.
    m = np.clip(m, -(w + 1), w + 1).astype(np.intp)
    wide = 3 * w + 4
    padded = np.zeros((n, h, wide), dtype=v.dtype)
    padded[:, :, w + 2 : 2 * w + 2] = v
    # Each output row reads w + 1 consecutive padded values from its own start: one gather of
    # (n, h) windows (a row copy each) instead of two gathers of n * h * w single values.
    s_n, s_r, s_c = padded.strides
    windows = np.lib.stride_tricks.as_strided(
        padded, (n, h, wide - w, w + 1), (s_n, s_r, s_c, s_c), writeable=False
    )
    picked = windows[np.arange(n)[:, None], np.arange(h)[None, :], m + (w + 2)]
    return picked[..., :w] * (1 - fc) + picked[..., 1:] * fc


class Deskew(TransformerMixin, BaseEstimator):
    """Pipeline step: (N, 784) or (N, 28, 28) MNIST-convention pixels -> deskewed (N, 28, 28)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled

    def fit(self, X, y=None):
        self.n_features_in_ = 784
        return self

    def transform(self, X) -> np.ndarray:
        images = as_images(X)
        return deskew_batch(images) if self.enabled else images
