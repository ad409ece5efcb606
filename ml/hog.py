"""HOG features as a scikit-learn transformer (the reference implementation, via skimage).

`ml.fast.hog_batch` computes the same numbers for a whole batch with numpy; this class is
what the saved Pipeline uses and what the fast path is tested against.
"""

from __future__ import annotations

import numpy as np
from skimage.feature import hog
from sklearn.base import BaseEstimator, TransformerMixin

from ml.deskew import as_images


class HogFeatures(TransformerMixin, BaseEstimator):
    """Histogram-of-oriented-gradients features of 28x28 digits, one HOG per cell size.

    Images are scaled to 0..1 by their own maximum first so 0..255 and 0..1 inputs give the
    same features. Several `cell_sizes` are concatenated (fine cells see stroke detail, coarse
    cells see the overall shape). `pixel_pool > 0` appends the image average-pooled by that
    factor (e.g. 2 -> 14x14 = 196 values), which HOG alone under-represents (ink mass).
    """

    def __init__(
        self,
        orientations: int = 9,
        cell_sizes: tuple[int, ...] = (4,),
        cells_per_block: int = 2,
        block_norm: str = "L2-Hys",
        pixel_pool: int = 0,
    ):
        self.orientations = orientations
        self.cell_sizes = cell_sizes
        self.cells_per_block = cells_per_block
        self.block_norm = block_norm
        self.pixel_pool = pixel_pool

    def fit(self, X, y=None):
        self.n_features_in_ = 784
        return self

    def transform(self, X) -> np.ndarray:
        images = normalise_images(as_images(X))
        features = np.stack([self._one(img) for img in images])
        if self.pixel_pool:
            features = np.hstack([features, pooled_pixels(images, self.pixel_pool)])
        return features

    def _one(self, img: np.ndarray) -> np.ndarray:
        parts = [
            hog(
                img,
                orientations=self.orientations,
                pixels_per_cell=(c, c),
                cells_per_block=(self.cells_per_block, self.cells_per_block),
                block_norm=self.block_norm,
                feature_vector=True,
            )
            for c in self.cell_sizes
        ]
        return np.concatenate(parts)


def normalise_images(images: np.ndarray) -> np.ndarray:
    """Scale each image to max 1 (blank images stay 0)."""
    top = images.max(axis=(1, 2), keepdims=True)
    return images / np.where(top > 0, top, 1.0)


def pooled_pixels(images: np.ndarray, pool: int) -> np.ndarray:
    """Average-pool normalised (N, H, W) images by `pool` and flatten."""
    n, h, w = images.shape
    h2, w2 = h // pool, w // pool
    cropped = images[:, : h2 * pool, : w2 * pool]
    return cropped.reshape(n, h2, pool, w2, pool).mean(axis=(2, 4)).reshape(n, -1)
