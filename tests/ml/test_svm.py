"""VoteMarginSVC: scores = votes + weighted one-vs-one margins; predict = argmax."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_blobs

from ml.svm import MARGIN_WEIGHT, VoteMarginSVC, vote_margin_scores


def test_scores_by_hand():
    # 3 classes -> pairs (0,1), (0,2), (1,2); positive margin favours the first class.
    ovo = np.array([[2.0, 1.0, -0.5]])
    votes = np.array([2, 0, 1])
    margins = np.array([3.0, -2.0 - 0.5, -1.0 + 0.5])
    np.testing.assert_allclose(vote_margin_scores(ovo, 3)[0], votes + MARGIN_WEIGHT * margins)


def test_predict_is_argmax_and_matches_plain_svc_mostly():
    X, y = make_blobs(n_samples=600, centers=5, cluster_std=2.5, random_state=0)
    ours = VoteMarginSVC(decision_function_shape="ovo").fit(X[:400], y[:400])
    scores = ours.decision_function(X[400:])
    assert scores.shape == (200, 5)
    np.testing.assert_array_equal(ours.predict(X[400:]), ours.classes_[scores.argmax(axis=1)])
    from sklearn.svm import SVC

    plain = SVC().fit(X[:400], y[:400]).predict(X[400:])
    assert (ours.predict(X[400:]) == plain).mean() >= 0.97


def test_requires_ovo_shape():
    X, y = make_blobs(n_samples=60, centers=3, random_state=0)
    with pytest.raises(ValueError, match="ovo"):
        VoteMarginSVC().fit(X, y).decision_function(X)
