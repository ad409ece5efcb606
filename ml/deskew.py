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
    half_h, half_w = np.float32(h / 2.0), np.float32(w / 2.0)
    src_r = rows[None] + (cy - half_h)[:, None, None]
    src_c = cols[None] + skew[:, None, None] * (rows[None] - half_h) + (cx - half_w)[:, None, None]
    out = _bilinear(x, src_r, src_c)
    return np.where(total[:, None, None] > 0, out, x).astype(np.float32, copy=False)


def _bilinear(x: np.ndarray, src_r: np.ndarray, src_c: np.ndarray) -> np.ndarray:
    """Sample x[n] at fractional (src_r, src_c); outside the image counts as 0."""
    n, h, w = x.shape
    r0 = np.floor(src_r).astype(np.intp)
    c0 = np.floor(src_c).astype(np.intp)
    fr = src_r - r0
    fc = src_c - c0
    # Pad by two pixels of zeros and clamp the top-left neighbour to [-2, side]: a clamped
    # neighbour pair then lies wholly in the padding, so "outside" reads 0 without masks.
    pad = 2
    wp = w + 2 * pad
    padded = np.zeros((n, h + 2 * pad, wp), dtype=x.dtype)
    padded[:, pad : h + pad, pad : w + pad] = x
    flat = padded.reshape(-1)
    r = np.clip(r0, -pad, h) + pad
    c = np.clip(c0, -pad, w) + pad
    index = (np.arange(n)[:, None, None] * (h + 2 * pad) + r) * wp + c
    top = flat[index] * (1 - fc) + flat[index + 1] * fc
    bottom = flat[index + wp] * (1 - fc) + flat[index + wp + 1] * fc
    return top * (1 - fr) + bottom * fr


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
