"""Moment-based deskewing, vectorised over a batch of 28x28 digits.

Slant is the biggest nuisance variation in handwriting; shearing each digit so its principal
axis is vertical (and its centre of mass centred) makes the classifier's job much easier.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

MAX_SKEW = 1.5  # |shear| cap; real slants are well inside, this only tames degenerate blobs


def as_images(X: np.ndarray, side: int = 28) -> np.ndarray:
    """(N, 784) or (N, 28, 28) -> float64 (N, 28, 28)."""
    X = np.asarray(X, dtype=np.float64)
    return X.reshape(-1, side, side)


def deskew_batch(images: np.ndarray) -> np.ndarray:
    """Shear each image so mu11 = 0 and move its centre of mass to the field centre.

    Same maths as the classic `affine_transform(img, [[1,0],[a,1]], offset=c - A @ centre)`
    with a = mu11/mu02, but with bilinear sampling done for the whole batch at once.
    """
    x = as_images(images)
    n, h, w = x.shape
    rows, cols = np.mgrid[:h, :w].astype(np.float64)
    total = x.sum(axis=(1, 2))
    safe = np.where(total > 0, total, 1.0)
    cy = np.einsum("nij,ij->n", x, rows) / safe
    cx = np.einsum("nij,ij->n", x, cols) / safe
    dr = rows[None] - cy[:, None, None]
    dc = cols[None] - cx[:, None, None]
    mu02 = np.einsum("nij,nij->n", x, dr * dr) / safe
    mu11 = np.einsum("nij,nij->n", x, dr * dc) / safe
    skew = np.where(mu02 > 1e-6, mu11 / np.where(mu02 > 1e-6, mu02, 1.0), 0.0)
    skew = np.clip(skew, -MAX_SKEW, MAX_SKEW)
    # Output pixel (r, c) samples input at (r + cy - h/2, c + skew*(r - h/2) + cx - w/2).
    src_r = rows[None] + (cy - h / 2.0)[:, None, None]
    src_c = cols[None] + skew[:, None, None] * (rows[None] - h / 2.0) + (cx - w / 2.0)[:, None, None]
    out = _bilinear(x, src_r, src_c)
    return np.where(total[:, None, None] > 0, out, x)


def _bilinear(x: np.ndarray, src_r: np.ndarray, src_c: np.ndarray) -> np.ndarray:
    """Sample x[n] at fractional (src_r, src_c); outside the image counts as 0."""
    n, h, w = x.shape
    r0 = np.floor(src_r).astype(np.intp)
    c0 = np.floor(src_c).astype(np.intp)
    fr = src_r - r0
    fc = src_c - c0
    idx_n = np.arange(n)[:, None, None]
    out = np.zeros_like(src_r)
    for dr, wr in ((0, 1.0 - fr), (1, fr)):
        for dc, wc in ((0, 1.0 - fc), (1, fc)):
            r, c = r0 + dr, c0 + dc
            valid = (r >= 0) & (r < h) & (c >= 0) & (c < w)
            vals = x[idx_n, np.clip(r, 0, h - 1), np.clip(c, 0, w - 1)]
            out += np.where(valid, vals, 0.0) * wr * wc
    return out


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
