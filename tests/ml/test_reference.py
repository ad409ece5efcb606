"""Each pipeline step's vectorised code against its reference: skimage's `hog`, scipy's
`affine_transform` for deskewing, scikit-learn's `SVC` for the kernel machine."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.feature import hog
from sklearn.base import clone
from sklearn.model_selection import train_test_split
from sklearn.svm import SVC

from ml.data import load_mnist
from ml.deskew import MAX_SKEW, Deskew, deskew_batch
from ml.hog import HogFeatures
from ml.svm import vote_margin_scores


@pytest.fixture(scope="module")
def digits():
    X, y = load_mnist()
    rng = np.random.default_rng(0)
    idx = rng.choice(len(X), 2000, replace=False)
    return X[idx], y[idx]


def skimage_hog(images: np.ndarray, orientations: int, cells: tuple[int, ...], block: int = 2) -> np.ndarray:
    rows = []
    for img in np.asarray(images, dtype=np.float64):
        img = img / img.max() if img.max() > 0 else img
        parts = [
            hog(img, orientations=orientations, pixels_per_cell=(c, c), cells_per_block=(block, block))
            for c in cells
        ]
        rows.append(np.concatenate(parts))
    return np.stack(rows)


@pytest.mark.parametrize(
    ("orientations", "cells"), [(9, (4,)), (9, (7,)), (8, (6,)), (12, (4, 7)), (16, (4, 7))]
)
def test_hog_matches_skimage(digits, orientations, cells):
    images = deskew_batch(digits[0][:200])
    fast = HogFeatures(orientations=orientations, cell_sizes=cells).fit_transform(images)
    ref = skimage_hog(images, orientations, cells)
    assert fast.shape == ref.shape and fast.dtype == np.float32
    np.testing.assert_allclose(fast, ref, atol=1e-6)


def test_hog_exact_bin_edges_like_skimage():
    """Gradients lying exactly on bin edges (0, 45, 90, 135 deg) land in skimage's bin."""
    img = np.zeros((16, 16))
    img[4:12, 4:12] = np.add.outer(np.arange(8), np.arange(8))  # 45 deg ramps
    img[2, :] = 5.0  # horizontal and vertical edges
    img[:, 13] = 3.0
    img[10:14, 1:5] = np.subtract.outer(np.arange(4), np.arange(4)) % 3  # 135 deg
    for orientations in (4, 8, 12, 16):
        fast = HogFeatures(orientations=orientations, cell_sizes=(4,), side=16).transform(img[None])
        np.testing.assert_allclose(fast[0], skimage_hog(img[None], orientations, (4,))[0], atol=1e-6)


def test_hog_gradients_a_hair_below_180_degrees():
    """A gradient pointing left with a vertical part of one float32 ulp: its pseudo-angle
    rounds to exactly 2.0; skimage puts it in the last bin."""
    img = np.zeros((8, 8), dtype=np.float32)
    img[:, 2] = 1.0  # g_col = -1 at column 3
    img[2, 3] = 0.25
    img[4, 3] = np.float32(0.25) + np.float32(2**-25)  # g_row = one ulp at (3, 3)
    img[7, 7] = 1.0
    fast = HogFeatures(orientations=9, cell_sizes=(4,), side=8).transform(img[None])
    np.testing.assert_allclose(fast[0], skimage_hog(img[None], 9, (4,))[0], atol=1e-6)


def test_pixel_pool_appends_pooled_pixels(digits):
    images = digits[0][:5]
    with_pool = HogFeatures(pixel_pool=2).transform(images)
    scaled = images / images.max(axis=(1, 2), keepdims=True)
    pooled = scaled.reshape(5, 14, 2, 14, 2).mean(axis=(2, 4)).reshape(5, -1)
    np.testing.assert_allclose(with_pool[:, -196:], pooled, atol=1e-6)


def test_blank_image_features_are_finite():
    assert np.isfinite(HogFeatures(pixel_pool=2).transform(np.zeros((2, 28, 28)))).all()


def reference_deskew(img: np.ndarray) -> np.ndarray:
    """The classic per-image deskew: shear so mu11 = 0, centre of mass to the field centre
    (zeros beyond the edge, interpolated into: scipy's grid-constant mode)."""
    h, w = img.shape
    total = img.sum()
    if total == 0:
        return img
    rows, cols = np.mgrid[:h, :w]
    cy, cx = (img * rows).sum() / total, (img * cols).sum() / total
    mu02 = (img * (rows - cy) ** 2).sum() / total
    mu11 = (img * (rows - cy) * (cols - cx)).sum() / total
    skew = np.clip(mu11 / mu02, -MAX_SKEW, MAX_SKEW) if mu02 > 1e-6 else 0.0
    matrix = np.array([[1.0, 0.0], [skew, 1.0]])
    offset = np.array([cy - h / 2, cx - w / 2 - skew * h / 2])
    return ndimage.affine_transform(img, matrix, offset=offset, order=1, mode="grid-constant", cval=0.0)


def test_deskew_matches_affine_transform(digits):
    images = digits[0][:300]
    ref = np.stack([reference_deskew(img) for img in images])
    np.testing.assert_allclose(deskew_batch(images), ref, atol=2e-3)


def test_deskew_extreme_shear_and_blank():
    img = np.zeros((28, 28))
    img[0:28, 0] = 255  # touches the border: sampling falls outside the image
    img[27, :] = 255
    images = np.stack([img, np.zeros((28, 28)), img.T])
    ref = np.stack([reference_deskew(i) for i in images])
    np.testing.assert_allclose(deskew_batch(images), ref, atol=2e-3)


def test_deskew_straightens_a_slanted_bar():
    img = np.zeros((28, 28))
    for r in range(6, 22):  # a stroke leaning right: column grows as row shrinks
        c = 14 + (14 - r) // 2
        img[r, c - 1 : c + 2] = 255
    out = Deskew().fit_transform(img[None])[0]
    cols = [np.average(np.arange(28), weights=out[r]) for r in range(8, 20) if out[r].sum() > 0]
    assert np.ptp(cols) < 1.5  # near vertical now
    assert np.ptp([np.average(np.arange(28), weights=img[r]) for r in range(8, 20)]) > 4


def test_kernel_machine_matches_svc(model, digits):
    """Our classifier and sklearn's SVC fitted on the same rows: same one-vs-one decisions."""
    features = model.pipeline[:-1].transform(digits[0].reshape(len(digits[0]), -1))
    assert features.dtype == np.float32
    y = digits[1]
    ours = clone(model.pipeline[-1]).set_params(refit=False, calibration_size=300)
    ours.fit(features[:1500], y[:1500])
    # With refit=False the kept SVC is the one fitted without the calibration rows.
    # (Same rows in the same order: libsvm's solution depends on the order within its tolerance.)
    rows = np.arange(1500)
    fit_rows, _ = train_test_split(rows, test_size=300, stratify=y[:1500], random_state=ours.random_state)
    svc = SVC(C=ours.C, gamma=ours.gamma_, decision_function_shape="ovo")
    svc.fit(features[fit_rows], y[fit_rows])
    test = features[1500:]
    np.testing.assert_allclose(ours.decision_ovo(test), svc.decision_function(test), atol=1e-4)
    reference = svc.classes_[
        vote_margin_scores(svc.decision_function(test), 10, ours.margin_weight).argmax(1)
    ]
    assert (ours.predict(test) == reference).mean() >= 0.998
    proba = ours.predict_proba(test)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    assert (proba.argmax(axis=1) == np.searchsorted(ours.classes_, ours.predict(test))).all()
