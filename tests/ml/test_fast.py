"""The batched numpy path must reproduce the reference (skimage HOG + sklearn Pipeline)."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.feature import hog

from ml.data import load_mnist
from ml.deskew import deskew_batch
from ml.fast import hog_batch
from ml.hog import HogFeatures


@pytest.fixture(scope="module")
def digits():
    X, y = load_mnist()
    rng = np.random.default_rng(0)
    idx = rng.choice(len(X), 2000, replace=False)
    return X[idx], y[idx]


@pytest.mark.parametrize("cells", [(4,), (7,), (6,), (4, 7)])
def test_hog_batch_matches_skimage(digits, cells):
    images = deskew_batch(digits[0][:200])
    ref = HogFeatures(cell_sizes=cells).transform(images)
    fast = hog_batch(images, cell_sizes=cells)
    assert fast.shape == ref.shape
    np.testing.assert_allclose(fast, ref, atol=1e-6)


def test_hog_single_image_against_skimage_directly(digits):
    img = digits[0][0] / digits[0][0].max()
    ref = hog(img, orientations=9, pixels_per_cell=(4, 4), cells_per_block=(2, 2))
    np.testing.assert_allclose(hog_batch(img[None])[0], ref, atol=1e-6)


def test_blank_image_features_are_finite():
    assert np.isfinite(hog_batch(np.zeros((2, 28, 28)))).all()


def test_deskew_straightens_a_slanted_bar():
    img = np.zeros((28, 28))
    for r in range(6, 22):  # a stroke leaning right: column grows as row shrinks
        c = 14 + (14 - r) // 2
        img[r, c - 1 : c + 2] = 255
    out = deskew_batch(img[None])[0]
    cols = [np.average(np.arange(28), weights=out[r]) for r in range(8, 20) if out[r].sum() > 0]
    assert np.ptp(cols) < 1.5  # near vertical now
    assert np.ptp([np.average(np.arange(28), weights=img[r]) for r in range(8, 20)]) > 4


def test_fast_probabilities_match_pipeline(model, digits):
    X = digits[0][:300]
    ref = model.pipeline.predict_proba(X.reshape(len(X), -1))
    fast = model.predict_proba_arrays(X)
    np.testing.assert_allclose(fast, ref, atol=1e-4)


def test_fast_predictions_agree_with_reference_on_2000_digits(model, digits):
    X = digits[0]
    ref = model.pipeline.predict(X.reshape(len(X), -1))
    fast = np.array([p.digit for p in model.predict_arrays(X)])
    assert (ref == fast).mean() >= 0.999


def test_fast_scores_match_svc_decision_function(model, digits):
    X = digits[0][:200]
    features = model.pipeline[:-1].transform(X.reshape(len(X), -1))
    svc = model.pipeline[-1].calibrated_classifiers_[0].estimator.estimator
    np.testing.assert_allclose(model.fast.scores(features), svc.decision_function(features), atol=1e-4)
