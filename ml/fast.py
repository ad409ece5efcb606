"""Batched inference: HOG and the RBF-SVM + temperature calibration as numpy array maths.

The saved Pipeline (skimage HOG per image, sklearn SVC) is the reference; `FastClassifier`
reproduces its numbers for a whole batch at once and is what `DigitModel` serves with.
"""

from __future__ import annotations

import numpy as np

from ml.deskew import as_images, deskew_batch
from ml.hog import normalise_images
from ml.svm import VoteMarginSVC, pair_incidence, vote_margin_scores

L2HYS_CLIP = 0.2
EPS = 1e-5  # skimage's block-normalisation epsilon


def hog_batch(
    images: np.ndarray,
    orientations: int = 9,
    cell_sizes: tuple[int, ...] = (4,),
    cells_per_block: int = 2,
) -> np.ndarray:
    """skimage.feature.hog(..., block_norm='L2-Hys') for a batch (N, H, W), vectorised."""
    x = normalise_images(as_images(images))
    n, h, w = x.shape
    g_row = np.zeros_like(x)
    g_col = np.zeros_like(x)
    g_row[:, 1:-1, :] = x[:, 2:, :] - x[:, :-2, :]
    g_col[:, :, 1:-1] = x[:, :, 2:] - x[:, :, :-2]
    magnitude = np.hypot(g_col, g_row)
    angle = np.rad2deg(np.arctan2(g_row, g_col)) % 180.0
    # skimage bins orientation i as [180/n*i, 180/n*(i+1)): a hard assignment.
    bins = np.minimum((angle / (180.0 / orientations)).astype(np.intp), orientations - 1)
    # A tiny negative angle wraps to exactly 180.0, which falls in no skimage bin: drop it too.
    magnitude = np.where(angle < 180.0, magnitude, 0.0)
    parts = [_hog_one_size(magnitude, bins, orientations, c, cells_per_block) for c in cell_sizes]
    return np.concatenate(parts, axis=1)


def _hog_one_size(
    magnitude: np.ndarray, bins: np.ndarray, orientations: int, cell: int, block: int
) -> np.ndarray:
    n, h, w = magnitude.shape
    n_rows, n_cols = h // cell, w // cell
    mag = magnitude[:, : n_rows * cell, : n_cols * cell]
    b = bins[:, : n_rows * cell, : n_cols * cell]
    cell_r = np.arange(n_rows * cell) // cell
    cell_c = np.arange(n_cols * cell) // cell
    # One flat index per (image, cell row, cell col, bin); bincount does the histogramming.
    index = (
        (np.arange(n)[:, None, None] * n_rows + cell_r[None, :, None]) * n_cols + cell_c[None, None, :]
    ) * orientations + b
    counts = np.bincount(index.ravel(), weights=mag.ravel(), minlength=n * n_rows * n_cols * orientations)
    hist = counts.reshape(n, n_rows, n_cols, orientations) / (cell * cell)
    nb_r, nb_c = n_rows - block + 1, n_cols - block + 1
    blocks = np.empty((n, nb_r, nb_c, block, block, orientations))
    for i in range(block):
        for j in range(block):
            blocks[:, :, :, i, j, :] = hist[:, i : i + nb_r, j : j + nb_c, :]
    blocks = _l2hys(blocks.reshape(n, nb_r, nb_c, -1))
    return blocks.reshape(n, -1)


def _l2hys(blocks: np.ndarray) -> np.ndarray:
    out = blocks / np.sqrt(np.sum(blocks**2, axis=-1, keepdims=True) + EPS**2)
    out = np.minimum(out, L2HYS_CLIP)
    return out / np.sqrt(np.sum(out**2, axis=-1, keepdims=True) + EPS**2)


def features_batch(images: np.ndarray, hog_params: dict) -> np.ndarray:
    """Deskew + HOG (+ pooled pixels) for a batch: the Pipeline's feature steps, vectorised."""
    from ml.hog import pooled_pixels

    deskewed = deskew_batch(images) if hog_params.get("deskew", True) else as_images(images)
    features = hog_batch(
        deskewed,
        orientations=hog_params["orientations"],
        cell_sizes=tuple(hog_params["cell_sizes"]),
        cells_per_block=hog_params["cells_per_block"],
    )
    if hog_params.get("pixel_pool"):
        pooled = pooled_pixels(normalise_images(deskewed), hog_params["pixel_pool"])
        features = np.hstack([features, pooled])
    return features


class FastClassifier:
    """RBF-SVC one-vs-one decision + 'ovr' aggregation + temperature softmax, as matmuls.

    Built once from the fitted Pipeline (support vectors, their squared norms and a
    (n_SV, n_pairs) coefficient matrix are precomputed) and then applied to whole batches.
    """

    def __init__(self, pipeline):
        if pipeline.steps[1][1].block_norm != "L2-Hys":
            raise ValueError("fast path implements block_norm='L2-Hys' only")
        deskew, hog_step, calibrated = (step for _, step in pipeline.steps)
        inner = calibrated.calibrated_classifiers_[0]
        svc = inner.estimator
        svc = getattr(svc, "estimator", svc)  # unwrap FrozenEstimator
        if svc.kernel != "rbf":
            raise ValueError("fast path implements the RBF kernel only")
        self.hog_params = {
            "deskew": deskew.enabled,
            "orientations": hog_step.orientations,
            "cell_sizes": tuple(hog_step.cell_sizes),
            "cells_per_block": hog_step.cells_per_block,
            "pixel_pool": hog_step.pixel_pool,
        }
        self.classes = np.asarray(calibrated.classes_)
        self.beta = float(np.asarray(inner.calibrators[0].beta_))
        self.gamma = float(svc._gamma)
        sv = np.asarray(svc.support_vectors_, dtype=np.float64)
        # float32 for the big X @ SV.T product (2x faster, errors ~1e-7 of a kernel value);
        # squared norms in float64 so ||x||^2 + ||sv||^2 - 2 x.sv doesn't lose precision.
        self.sv32 = np.ascontiguousarray(sv, dtype=np.float32)
        self.sv_sq = np.einsum("ij,ij->i", sv, sv)
        self.intercept = np.asarray(svc.intercept_, dtype=np.float64)
        self.pair_coef = _pair_coefficients(svc.dual_coef_, svc.n_support_)
        self.pair_i, self.pair_j = pair_incidence(len(svc.n_support_))
        # Which logits the calibrator was fitted on: VoteMarginSVC's or sklearn's 'ovr'.
        self.vote_margin = isinstance(svc, VoteMarginSVC)

    def decision_ovo(self, features: np.ndarray) -> np.ndarray:
        """libsvm's one-vs-one decision values (N, n_pairs); positive favours the first class."""
        x = np.asarray(features, dtype=np.float64)
        sq = np.einsum("ij,ij->i", x, x)
        cross = np.ascontiguousarray(x, dtype=np.float32) @ self.sv32.T
        dist = sq[:, None] + self.sv_sq[None, :] - 2.0 * cross
        kernel = np.exp(-self.gamma * np.maximum(dist, 0.0))
        return kernel @ self.pair_coef + self.intercept

    def decision_ovr(self, features: np.ndarray) -> np.ndarray:
        """sklearn's decision_function_shape='ovr': votes plus squashed summed confidences."""
        dec = self.decision_ovo(features)
        votes = (dec >= 0) @ self.pair_i + (dec < 0) @ self.pair_j
        conf = dec @ self.pair_i - dec @ self.pair_j
        return votes + conf / (3.0 * (np.abs(conf) + 1.0))

    def scores(self, features: np.ndarray) -> np.ndarray:
        """The classifier's decision_function (the calibrator's input), (N, n_classes)."""
        if self.vote_margin:
            return vote_margin_scores(self.decision_ovo(features), len(self.classes))
        return self.decision_ovr(features)

    def predict_proba_features(self, features: np.ndarray) -> np.ndarray:
        logits = self.beta * self.scores(features)
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """(N, 28, 28) or (N, 784) MNIST-convention pixels -> calibrated (N, n_classes)."""
        return self.predict_proba_features(features_batch(images, self.hog_params))


def _pair_coefficients(dual_coef: np.ndarray, n_support: np.ndarray) -> np.ndarray:
    """Scatter libsvm's dual coefficients into one (n_SV, n_pairs) matrix so that all
    one-vs-one decision values are a single kernel @ matrix product."""
    n_classes = len(n_support)
    starts = np.concatenate([[0], np.cumsum(n_support)])
    pairs = [(i, j) for i in range(n_classes) for j in range(i + 1, n_classes)]
    coef = np.zeros((dual_coef.shape[1], len(pairs)))
    for p, (i, j) in enumerate(pairs):
        si = slice(starts[i], starts[i + 1])
        sj = slice(starts[j], starts[j + 1])
        coef[si, p] = dual_coef[j - 1, si]
        coef[sj, p] = dual_coef[i, sj]
    return coef
