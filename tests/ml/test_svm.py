"""CalibratedKernelSVC: scikit-learn conventions, vote+margin scores, calibration split."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import make_blobs
from sklearn.svm import SVC
from sklearn.utils.estimator_checks import check_estimator

from ml.svm import MARGIN_WEIGHT, CalibratedKernelSVC, fit_temperature, vote_margin_scores


def test_scores_by_hand():
    # 3 classes -> pairs (0,1), (0,2), (1,2); positive margin favours the first class.
    ovo = np.array([[2.0, 1.0, -0.5]])
    votes = np.array([2, 0, 1])
    margins = np.array([3.0, -2.0 - 0.5, -1.0 + 0.5])
    np.testing.assert_allclose(vote_margin_scores(ovo, 3)[0], votes + MARGIN_WEIGHT * margins)


def test_scikit_learn_estimator_checks():
    float32 = "float32 kernel: BLAS blocking differs with the batch size, results agree to ~1e-6"
    check_estimator(
        CalibratedKernelSVC(calibration_size=0.3),
        expected_failed_checks={"check_methods_subset_invariance": float32},
    )


def test_params_round_trip():
    clf = CalibratedKernelSVC(C=3.0, gamma=0.1)
    assert clf.get_params()["C"] == 3.0
    assert clone(clf.set_params(margin_weight=0.5)).get_params()["margin_weight"] == 0.5


def test_predict_is_argmax_and_matches_plain_svc_mostly():
    X, y = make_blobs(n_samples=700, centers=5, cluster_std=2.5, random_state=0)
    ours = CalibratedKernelSVC(calibration_size=100).fit(X[:500], y[:500])
    scores = ours.decision_function(X[500:])
    assert scores.shape == (200, 5)
    np.testing.assert_array_equal(ours.predict(X[500:]), ours.classes_[scores.argmax(axis=1)])
    plain = SVC().fit(X[:500], y[:500]).predict(X[500:])
    assert (ours.predict(X[500:]) == plain).mean() >= 0.97


def test_binary_and_string_labels_follow_svc():
    X, y = make_blobs(n_samples=300, centers=2, cluster_std=3.0, random_state=1)
    labels = np.array(["cat", "dog"])[y]
    ours = CalibratedKernelSVC(calibration_size=50, refit=False).fit(X[:200], labels[:200])
    assert list(ours.classes_) == ["cat", "dog"]
    svc = SVC(gamma=ours.gamma_).fit(X[:200], labels[:200])
    assert (ours.predict(X[200:]) == svc.predict(X[200:])).mean() >= 0.95


def test_temperature_fit_recovers_a_known_beta():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(4000, 4)) * 3
    logits = 0.7 * scores
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = np.array([rng.choice(4, p=row) for row in p])
    assert fit_temperature(scores, y) == pytest.approx(0.7, rel=0.1)


def test_groups_keep_augmented_copies_out_of_calibration():
    """Rows of a calibration group never train the calibrated SVC; only originals calibrate."""
    X, y = make_blobs(n_samples=200, centers=4, random_state=2)
    copies = X + np.random.default_rng(0).normal(scale=0.05, size=X.shape)
    X2, y2 = np.concatenate([X, copies]), np.tile(y, 2)
    groups = np.tile(np.arange(200), 2)
    clf = CalibratedKernelSVC(calibration_size=40, refit=False)
    fit_rows, cal_rows = clf._calibration_split(np.searchsorted(np.unique(y2), y2), groups)
    assert len(cal_rows) == 40 and (cal_rows < 200).all()  # the originals
    assert not set(groups[fit_rows]) & set(groups[cal_rows])
    clf.fit(X2, y2, groups=groups)
    assert clf.calibration_proba_.shape == (40, 4) and len(clf.calibration_y_) == 40
