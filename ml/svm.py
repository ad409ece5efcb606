"""The classifier: an RBF SVC whose decision values make good logits for calibration."""

from __future__ import annotations

import numpy as np
from sklearn.svm import SVC

MARGIN_WEIGHT = 0.25


def vote_margin_scores(ovo: np.ndarray, n_classes: int) -> np.ndarray:
    """Per class: one-vs-one votes won + MARGIN_WEIGHT * summed signed one-vs-one margins.

    sklearn's 'ovr' shape squashes the margins into (-1/3, 1/3), so the integer votes
    dominate and temperature scaling can only produce a handful of confidence levels
    (~0.98 for nearly everything). Adding the raw margins keeps the vote ordering in the
    usual case but gives the softmax a continuous, informative score.
    """
    first, second = pair_incidence(n_classes)
    votes = (ovo >= 0) @ first + (ovo < 0) @ second
    margins = ovo @ first - ovo @ second
    return votes + MARGIN_WEIGHT * margins


def pair_incidence(n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(n_pairs, n_classes) 0/1 matrices of each libsvm pair's first and second class."""
    pairs = [(i, j) for i in range(n_classes) for j in range(i + 1, n_classes)]
    first = np.zeros((len(pairs), n_classes))
    second = np.zeros((len(pairs), n_classes))
    for p, (i, j) in enumerate(pairs):
        first[p, i] = 1.0
        second[p, j] = 1.0
    return first, second


class VoteMarginSVC(SVC):
    """SVC with `decision_function` = `vote_margin_scores` and `predict` = its argmax.

    Construct with decision_function_shape="ovo" (checked); all SVC parameters apply.
    """

    def decision_function(self, X) -> np.ndarray:
        if self.decision_function_shape != "ovo":
            raise ValueError("VoteMarginSVC needs decision_function_shape='ovo'")
        ovo = super().decision_function(X)
        if ovo.ndim == 1:  # binary: one margin, positive favours classes_[1] in sklearn
            return np.stack([-ovo, ovo], axis=1)
        return vote_margin_scores(ovo, len(self.classes_))

    def predict(self, X) -> np.ndarray:
        return self.classes_[np.argmax(self.decision_function(X), axis=1)]
