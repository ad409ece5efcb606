"""HOG features as a scikit-learn transformer, computed for a whole batch with numpy.

Reproduces `skimage.feature.hog(..., block_norm="L2-Hys")` image by image (the tests pin it to
skimage, which stays the reference), but as a handful of array operations over (N, H, W), in
float32: serving feeds it a chunk of hundreds of digits at once.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from ml.deskew import as_images

L2HYS_CLIP = 0.2
EPS = np.float32(1e-5)  # skimage's block-normalisation epsilon


class HogFeatures(TransformerMixin, BaseEstimator):
    """Histogram-of-oriented-gradients features of square digits, one HOG per cell size.

    Images are scaled to 0..1 by their own maximum first so 0..255 and 0..1 inputs give the
    same features. Several `cell_sizes` are concatenated (fine cells see stroke detail, coarse
    cells see the overall shape). `pixel_pool > 0` appends the image average-pooled by that
    factor (e.g. 2 -> 14x14 = 196 values), which HOG alone under-represents (ink mass).
    Input: (N, side*side) or (N, side, side); output float32 (N, n_features).
    """

    def __init__(
        self,
        orientations: int = 9,
        cell_sizes: tuple[int, ...] = (4,),
        cells_per_block: int = 2,
        pixel_pool: int = 0,
        side: int = 28,
    ):
        self.orientations = orientations
        self.cell_sizes = cell_sizes
        self.cells_per_block = cells_per_block
        self.pixel_pool = pixel_pool
        self.side = side

    def fit(self, X, y=None):
        self.n_features_in_ = self.side * self.side
        return self

    def transform(self, X) -> np.ndarray:
        images = normalise_images(as_images(X, self.side))
        magnitude, bins = _gradients(images, self.orientations)
        parts = [
            _hog_one_size(magnitude, bins, self.orientations, c, self.cells_per_block)
            for c in self.cell_sizes
        ]
        if self.pixel_pool:
            parts.append(pooled_pixels(images, self.pixel_pool))
        return np.concatenate(parts, axis=1)


def _gradients(x: np.ndarray, orientations: int) -> tuple[np.ndarray, np.ndarray]:
    """skimage's centred differences (zero on the border), magnitude and hard orientation bin.

    skimage bins the unsigned orientation degrees(arctan2(g_row, g_col)) % 180 as
    [180/n*i, 180/n*(i+1)). arctan2 is the costliest step by far, so the bin comes from a
    pseudo-angle instead: fold the gradient into the upper half-plane (same orientation) and
    take p = 1 - u/(|u| + v), which rises monotonically from 0 (0 deg) over 1 (90 deg) to 2
    (180 deg); the bin is how many bin edges' p values are <= p. Edges on exact ratios
    (45, 90, 135 deg) give exactly the same p as a gradient lying on them, like arctan2.
    """
    g_row = np.zeros_like(x)
    g_col = np.zeros_like(x)
    np.subtract(x[:, 2:, :], x[:, :-2, :], out=g_row[:, 1:-1, :])
    np.subtract(x[:, :, 2:], x[:, :, :-2], out=g_col[:, :, 1:-1])
    magnitude = np.sqrt(g_row * g_row + g_col * g_col)
    # Orientation 0 deg includes (-g_col, 0); everything below the axis is turned by 180 deg.
    flip = (g_row < 0) | ((g_row == 0) & (g_col < 0))
    u = np.where(flip, -g_col, g_col)
    v = np.abs(g_row)
    denom = np.abs(u) + v
    pseudo = 1 - u / np.where(denom > 0, denom, np.float32(1.0))
    # Bin lookup: a table gives the bin at the lower end of p's 1/LEVELS-wide level, and one
    # comparison with the next edge settles it (a level holds at most one edge). Exact, and
    # far cheaper than n-1 comparisons or np.searchsorted over every pixel.
    edges = _edges(orientations)
    level = (pseudo * np.float32(LEVELS)).astype(np.intp)  # exact: LEVELS is a power of two
    # p < 2 in exact arithmetic, but float32 rounding can reach 2.0 itself (a gradient a hair
    # below 180 deg): the table's last entry covers it, in the last bin as with arctan2.
    lower = np.searchsorted(edges, np.arange(2 * LEVELS + 1, dtype=np.float32) / LEVELS, side="right")
    above = np.append(edges, np.float32(np.inf))
    low = lower[level]
    bins = low + (pseudo >= above[low])
    return magnitude, bins


LEVELS = 2048  # pseudo-angle levels per unit: edges are >= 0.2 apart, a level is 1/2048 wide


def _edges(orientations: int) -> np.ndarray:
    """Pseudo-angles (see `_gradients`) of the inner bin edges 180/n*k, k = 1..n-1."""
    angle = np.deg2rad(180.0 / orientations * np.arange(1, orientations))
    # Rounded so cos == sin at 45 deg and cos == 0 at 90 deg exactly (float error otherwise).
    u, v = np.round(np.cos(angle), 12), np.round(np.sin(angle), 12)
    return (1 - u / (np.abs(u) + v)).astype(np.float32)


def _hog_one_size(
    magnitude: np.ndarray, bins: np.ndarray, orientations: int, cell: int, block: int
) -> np.ndarray:
    n, h, w = magnitude.shape
    n_rows, n_cols = h // cell, w // cell
    mag = magnitude[:, : n_rows * cell, : n_cols * cell]
    b = bins[:, : n_rows * cell, : n_cols * cell]
    # One flat index per (image, cell row, cell col, bin); bincount does the histogramming.
    cell_of = (np.arange(n_rows * cell) // cell)[:, None] * n_cols + np.arange(n_cols * cell) // cell
    per_image = n_rows * n_cols * orientations
    index = (cell_of * orientations)[None] + b + (np.arange(n) * per_image)[:, None, None]
    counts = np.bincount(index.ravel(), weights=mag.ravel(), minlength=n * per_image)
    hist = counts.astype(np.float32).reshape(n, n_rows, n_cols, orientations)
    hist *= np.float32(1.0 / (cell * cell))
    nb_r, nb_c = n_rows - block + 1, n_cols - block + 1
    blocks = np.empty((n, nb_r, nb_c, block, block, orientations), dtype=np.float32)
    for i in range(block):
        for j in range(block):
            blocks[:, :, :, i, j, :] = hist[:, i : i + nb_r, j : j + nb_c, :]
    blocks = _l2hys(blocks.reshape(n, nb_r, nb_c, -1))
    return blocks.reshape(n, -1)


def _l2hys(blocks: np.ndarray) -> np.ndarray:
    # einsum for the per-block sums of squares: numpy's axis=-1 sum is slow on short rows.
    out = blocks / np.sqrt(np.einsum("...i,...i->...", blocks, blocks) + EPS**2)[..., None]
    np.minimum(out, np.float32(L2HYS_CLIP), out=out)
    return out / np.sqrt(np.einsum("...i,...i->...", out, out) + EPS**2)[..., None]


def normalise_images(images: np.ndarray) -> np.ndarray:
    """Scale each image to max 1 (blank images stay 0)."""
    top = images.max(axis=(1, 2), keepdims=True)
    return images / np.where(top > 0, top, np.float32(1.0))


def pooled_pixels(images: np.ndarray, pool: int) -> np.ndarray:
    """Average-pool normalised (N, H, W) images by `pool` and flatten."""
    n, h, w = images.shape
    h2, w2 = h // pool, w // pool
    cropped = images[:, : h2 * pool, : w2 * pool]
    # Sum of pool*pool strided slices: many times faster than reshape(...).mean(axis=(2, 4)).
    total = np.zeros((n, h2, w2), dtype=images.dtype)
    for i in range(pool):
        for j in range(pool):
            total += cropped[:, i::pool, j::pool]
    return (total * np.float32(1.0 / (pool * pool))).reshape(n, -1)
