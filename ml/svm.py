"""The classifier: an RBF SVM, temperature-calibrated, that predicts with a few matrix products.

`CalibratedKernelSVC.fit` trains scikit-learn's `SVC` (libsvm) and keeps only what prediction
needs, read from the SVC's public attributes: the support vectors and one (n_SV, n_pairs)
coefficient matrix, so every one-vs-one decision value of a whole batch is
`exp(-gamma * squared distances) @ coefficients`. `SVC` itself stays the test reference.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import train_test_split
from sklearn.svm import SVC
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

MARGIN_WEIGHT = 0.25


def vote_margin_scores(ovo: np.ndarray, n_classes: int, margin_weight: float = MARGIN_WEIGHT) -> np.ndarray:
    """Per class: one-vs-one votes won + margin_weight * summed signed one-vs-one margins.

    sklearn's 'ovr' shape squashes the margins into (-1/3, 1/3), so the integer votes
    dominate and temperature scaling can only produce a handful of confidence levels
    (~0.98 for nearly everything). Adding the raw margins keeps the vote ordering in the
    usual case but gives the softmax a continuous, informative score.
    `ovo` columns are libsvm's pairs (0,1), (0,2), ..., positive favouring the first class.
    """
    first, second = pair_incidence(n_classes)
    votes = (ovo >= 0) @ first + (ovo < 0) @ second
    margins = ovo @ first - ovo @ second
    return votes + margin_weight * margins


@lru_cache(maxsize=8)
def pair_incidence(n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(n_pairs, n_classes) 0/1 matrices of each libsvm pair's first and second class (cached:
    built once, not per call; read-only)."""
    pairs = [(i, j) for i in range(n_classes) for j in range(i + 1, n_classes)]
    first = np.zeros((len(pairs), n_classes))
    second = np.zeros((len(pairs), n_classes))
    for p, (i, j) in enumerate(pairs):
        first[p, i] = 1.0
        second[p, j] = 1.0
    first.flags.writeable = second.flags.writeable = False
    return first, second


def fit_temperature(scores: np.ndarray, y_index: np.ndarray) -> float:
    """The inverse temperature beta minimising the log-loss of softmax(beta * scores)."""

    def nll(log_beta: float) -> float:
        logp = log_softmax(np.exp(log_beta) * scores, axis=1)
        return -float(logp[np.arange(len(y_index)), y_index].mean())

    found = minimize_scalar(nll, bounds=(np.log(1e-3), np.log(1e3)), method="bounded")
    return float(np.exp(found.x))


class CalibratedKernelSVC(ClassifierMixin, BaseEstimator):
    """RBF SVC (libsvm fit) with vote+margin scores, temperature-calibrated probabilities.

    fit(X, y): `calibration_size` rows (an int, or a fraction like `test_size`) are split off,
    stratified; an SVC fitted on the rest scores them and the inverse temperature `beta_` is
    fitted to those scores. With `refit=True` the served SVC is then fitted on all rows (in a
    second thread: libsvm releases the GIL) and keeps that beta: a single scalar that
    transfers between SVCs trained the same way on slightly different amounts of data.
    `calibration_proba_` / `calibration_y_` are the held-out calibrated probabilities (from
    the SVC that never saw those rows), for choosing thresholds honestly.

    `groups` (a fit parameter, e.g. `pipeline.fit(X, y, clf__groups=g)`): rows sharing a
    group are one source digit and its augmented copies. The split is then by group, and
    only each calibration group's first row (the undistorted original) is used to fit
    beta; the copies never reach the SVC that is calibrated.

    `gamma="scale"` is 1 / (n_features * X.var()), as in SVC.
    """

    def __init__(
        self,
        C: float = 5.0,
        gamma: float | str = "scale",
        margin_weight: float = MARGIN_WEIGHT,
        calibration_size: int | float = 0.1,
        refit: bool = True,
        random_state: int | None = 0,
    ):
        self.C = C
        self.gamma = gamma
        self.margin_weight = margin_weight
        self.calibration_size = calibration_size
        self.refit = refit
        self.random_state = random_state

    def fit(self, X, y, groups=None):
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        self.classes_, y_index = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"needs at least 2 classes, got {len(self.classes_)} class(es)")
        self.gamma_ = self._gamma_value(X)
        fit_rows, cal_rows = self._calibration_split(y_index, groups)
        with ThreadPoolExecutor(max_workers=2) as pool:
            calibration_svc = pool.submit(self._svc().fit, X[fit_rows], y_index[fit_rows])
            final_svc = pool.submit(self._svc().fit, X, y_index) if self.refit else None
            svc = calibration_svc.result()
            self._keep(svc)
            cal_scores = self.class_scores(X[cal_rows])
            self.beta_ = fit_temperature(cal_scores, y_index[cal_rows])
            self.calibration_proba_ = _softmax(self.beta_ * cal_scores)
            self.calibration_y_ = self.classes_[y_index[cal_rows]]
            if final_svc is not None:
                self._keep(final_svc.result())
        return self

    def _svc(self) -> SVC:
        return SVC(C=self.C, kernel="rbf", gamma=self.gamma_, decision_function_shape="ovo")

    def _gamma_value(self, X: np.ndarray) -> float:
        if self.gamma == "scale":
            var = float(X.var())
            return 1.0 / (X.shape[1] * var) if var > 0 else 1.0
        return float(self.gamma)

    def _calibration_split(self, y_index: np.ndarray, groups) -> tuple[np.ndarray, np.ndarray]:
        rows = np.arange(len(y_index))
        if groups is None:
            return train_test_split(
                rows, test_size=self.calibration_size, stratify=y_index, random_state=self.random_state
            )
        groups = np.asarray(groups)
        names, first_row = np.unique(groups, return_index=True)
        _, cal_names = train_test_split(
            names,
            test_size=self.calibration_size,
            stratify=y_index[first_row],
            random_state=self.random_state,
        )
        in_cal = np.isin(groups, cal_names)
        cal_rows = np.intersect1d(first_row, rows[in_cal])  # the originals only
        return rows[~in_cal], cal_rows

    def _keep(self, svc: SVC) -> None:
        """What prediction needs, from the SVC's public attributes."""
        # float32 throughout prediction: half the memory traffic and twice the SIMD width of
        # float64 for the (N, n_SV) kernel, decision values within ~1e-4 of libsvm's (tested).
        sv = np.asarray(svc.support_vectors_, dtype=np.float64)
        self.support_vectors_ = np.ascontiguousarray(sv, dtype=np.float32)
        self.support_sq_norms_ = np.einsum("ij,ij->i", sv, sv).astype(np.float32)
        pair_coef, self.intercept_ = _pair_coefficients(svc.dual_coef_, svc.intercept_, svc.n_support_)
        self.pair_coef_ = pair_coef.astype(np.float32)

    def decision_ovo(self, X) -> np.ndarray:
        """libsvm's one-vs-one decision values (N, n_pairs); positive favours the first class."""
        check_is_fitted(self)
        return self._decision_ovo(validate_data(self, X, reset=False, dtype=np.float32))

    def _decision_ovo(self, X: np.ndarray) -> np.ndarray:
        # exp(-gamma * ||x - sv||^2) with ||x - sv||^2 = ||x||^2 + ||sv||^2 - 2 x.sv: one matrix
        # product, then in-place passes over the (N, n_SV) array.
        kernel = X @ self.support_vectors_.T
        kernel *= -2.0
        kernel += np.einsum("ij,ij->i", X, X)[:, None]
        kernel += self.support_sq_norms_[None, :]
        np.maximum(kernel, 0.0, out=kernel)
        kernel *= np.float32(-self.gamma_)
        np.exp(kernel, out=kernel)
        return kernel @ self.pair_coef_ + self.intercept_

    def class_scores(self, X) -> np.ndarray:
        """Votes + margin_weight * summed margins, (N, n_classes): the calibrated logits / beta."""
        check_is_fitted(self)
        return vote_margin_scores(self.decision_ovo(X), len(self.classes_), self.margin_weight)

    def decision_function(self, X) -> np.ndarray:
        """`class_scores`; for two classes one column, positive favouring classes_[1] (sklearn's
        convention)."""
        scores = self.class_scores(X)
        return scores[:, 1] - scores[:, 0] if len(self.classes_) == 2 else scores

    def predict_proba(self, X) -> np.ndarray:
        check_is_fitted(self)
        return _softmax(self.beta_ * self.class_scores(X))

    def predict_proba_unchecked(self, X: np.ndarray) -> np.ndarray:
        """`predict_proba` of a fitted model on a (N, n_features) array, without scikit-learn's
        checks (~0.2 ms a call: most of the cost of one digit; ml/serving.py)."""
        X = np.asarray(X, dtype=np.float32)
        scores = vote_margin_scores(self._decision_ovo(X), len(self.classes_), self.margin_weight)
        return _softmax(self.beta_ * scores)

    def predict(self, X) -> np.ndarray:
        check_is_fitted(self)
        return self.classes_[np.argmax(self.class_scores(X), axis=1)]


def _softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def _pair_coefficients(
    dual_coef: np.ndarray, intercept: np.ndarray, n_support: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Scatter libsvm's dual coefficients into one (n_SV, n_pairs) matrix so that all
    one-vs-one decision values are a single kernel @ matrix product. For two classes SVC's
    public attributes are sign-flipped (positive favours classes_[1]): flip them back."""
    n_classes = len(n_support)
    if n_classes == 2:
        return -dual_coef[0][:, None].astype(np.float64), -np.asarray(intercept, dtype=np.float64)
    starts = np.concatenate([[0], np.cumsum(n_support)])
    pairs = [(i, j) for i in range(n_classes) for j in range(i + 1, n_classes)]
    coef = np.zeros((dual_coef.shape[1], len(pairs)))
    for p, (i, j) in enumerate(pairs):
        si = slice(starts[i], starts[i + 1])
        sj = slice(starts[j], starts[j + 1])
        coef[si, p] = dual_coef[j - 1, si]
        coef[sj, p] = dual_coef[i, sj]
    return coef, np.asarray(intercept, dtype=np.float64)
