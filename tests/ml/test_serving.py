"""ml/serving.py: the pipeline's predict_proba without per-call checks gives the same numbers."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from ml import serving


@pytest.fixture(scope="module")
def digits(splits) -> np.ndarray:
    return splits.X_holdout[:300].astype(np.float32).reshape(-1, 28 * 28)


def test_same_probabilities_as_the_checked_pipeline_bit_for_bit(model, digits):
    assert np.array_equal(serving.predict_proba(model.pipeline, digits), model.pipeline.predict_proba(digits))


def test_same_probabilities_one_image_at_a_time(model, digits):
    for one in digits[:20]:
        one = one[None]
        assert np.array_equal(serving.predict_proba(model.pipeline, one), model.pipeline.predict_proba(one))


def test_whitened_pca_projects_as_scikit_learn(model, digits):
    pca = model.pipeline.named_steps["pca"]
    whitened = type(pca)(n_components=8, whiten=True).fit(digits.astype(np.float64))
    assert np.array_equal(serving._pca_project(whitened, digits), whitened.transform(digits))


def test_a_step_it_does_not_know_falls_back_to_the_checked_path(model, digits):
    steps = list(model.pipeline.steps)
    scaler = StandardScaler().fit(model.pipeline[:-2].transform(digits))
    pipeline = Pipeline([*steps[:-2], ("scale", scaler), steps[-2], steps[-1]])
    # PCA after a scaler it was not fitted behind gives other numbers, but the same ones both ways.
    assert np.array_equal(serving.predict_proba(pipeline, digits[:50]), pipeline.predict_proba(digits[:50]))
