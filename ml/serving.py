"""The fitted pipeline's predict_proba without scikit-learn's per-call checks.

`Pipeline.predict_proba` validates the input at every step (check_array, feature names, dataframe
sniffing, fitted-ness): ~0.5 ms a call, more than the maths of one 28x28 digit. Serving feeds
the pipeline arrays it built itself, of the shape and dtype it was fitted on, so the checks
prove nothing there. Same operations in the same order and dtypes as the checked path, so the
probabilities are identical (tests/ml/test_model.py compares them bit for bit).
"""

from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA
from sklearn.pipeline import Pipeline

from ml.deskew import Deskew
from ml.hog import HogFeatures
from ml.svm import CalibratedKernelSVC


def _pca_project(pca: PCA, X: np.ndarray) -> np.ndarray:
    """PCA.transform of a dense float array, as scikit-learn's `_BasePCA._transform` does it."""
    if X.dtype not in (np.float32, np.float64):
        X = X.astype(np.float64)
    out = X @ pca.components_.T
    out -= pca.mean_.reshape(1, -1) @ pca.components_.T
    if pca.whiten:
        scale = np.sqrt(pca.explained_variance_)
        scale[scale < np.finfo(scale.dtype).eps] = np.finfo(scale.dtype).eps
        out /= scale
    return out


def _fast_transform(step, X: np.ndarray) -> np.ndarray | None:
    """The step's transform without its checks, or None for a step this module does not know."""
    if isinstance(step, Deskew | HogFeatures):
        return step.transform(X)  # ours: no checks to skip
    if type(step) is PCA:
        return _pca_project(step, X)
    return None


def predict_proba(pipeline: Pipeline, X: np.ndarray) -> np.ndarray:
    """`pipeline.predict_proba(X)` for (N, 784) float32 digits; falls back to it for pipelines
    with other steps (models trained by another version of the code)."""
    *transforms, (_, classifier) = pipeline.steps
    if type(classifier) is not CalibratedKernelSVC:
        return pipeline.predict_proba(X)
    out = X
    for _, step in transforms:
        if step is None or step == "passthrough":
            continue
        transformed = _fast_transform(step, out)
        if transformed is None:
            return pipeline.predict_proba(X)
        out = transformed
    return classifier.predict_proba_unchecked(out)
