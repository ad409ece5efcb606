"""Train the digit model: `build_pipeline().fit(X, y)` on augmented digits; save artifacts.

The model is one scikit-learn Pipeline: Deskew -> HogFeatures -> PCA(48) ->
CalibratedKernelSVC; every parameter lives in a step's __init__ (`build_pipeline(**params)`
takes Pipeline parameter names) and the metadata records `pipeline.get_params()`.

Splits (all stratified, fixed seeds): 5,000 MNIST = 1,000 held-out (reported only, never fitted
or tuned on) + 4,000 training; of those, 500 calibration digits (temperature + low-confidence
threshold). Each training digit gets `copies` distorted copies; `clf__groups` ties copies to
their digit so only undistorted originals calibrate. Why these parameters, and every candidate
tried, is in docs/model.md.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA
from sklearn.pipeline import Pipeline
from tqdm import tqdm

from ml import data
from ml.artifacts import save_model
from ml.deskew import Deskew
from ml.evaluate import choose_threshold, classification_metrics, summary, upload_like_metrics
from ml.hog import HogFeatures
from ml.preprocess import to_mnist_batch
from ml.svm import CalibratedKernelSVC

CALIBRATION_SIZE = 500
TARGET_CONFIDENT_ACCURACY = 0.995

# Training data, not model: how many distorted copies of each training digit to add.
DEFAULT_AUGMENT: dict = {"copies": 2, "max_rotate": 12.0, "elastic": 1.0, "seed": 3}


def build_pipeline(**params) -> Pipeline:
    """The model. Every parameter lives in one step's __init__; override with Pipeline
    parameter names, e.g. build_pipeline(hog__orientations=9, pca__n_components=100)."""
    pipeline = Pipeline(
        [
            ("deskew", Deskew()),
            ("hog", HogFeatures(orientations=16, cell_sizes=(4, 7), cells_per_block=2, pixel_pool=2)),
            ("pca", PCA(n_components=48, random_state=0)),
            ("clf", CalibratedKernelSVC(C=5.0, calibration_size=CALIBRATION_SIZE, random_state=11)),
        ]
    )
    return pipeline.set_params(**params)


def fit_model(
    X: np.ndarray, y: np.ndarray, augment: dict, pipeline: Pipeline | None = None
) -> tuple[Pipeline, float]:
    """Augment and preprocess the training digits, `pipeline.fit` them; returns the fitted
    pipeline and the low-confidence threshold chosen on its calibration digits."""
    pipeline = pipeline if pipeline is not None else build_pipeline()
    groups = np.arange(len(y))  # one group per source digit: copies never leak into calibration
    if augment["copies"]:
        extra = data.augment(
            X, augment["copies"], augment["seed"], augment["max_rotate"], augment["elastic"], True
        )
        X = np.concatenate([X, extra])
        y = np.tile(y, augment["copies"] + 1)
        groups = np.tile(groups, augment["copies"] + 1)
    # Same preprocessing as serving (re-crop, 20 px box, COM-centre, ink normalisation).
    X = to_mnist_batch(X, "preprocess").astype(np.float32).reshape(len(X), -1)
    tqdm.write(f"fitting the pipeline on {len(X)} digits ...")
    pipeline.fit(X, y, clf__groups=groups)
    clf = pipeline[-1]
    y_cal = np.searchsorted(clf.classes_, clf.calibration_y_)
    threshold = choose_threshold(clf.calibration_proba_, y_cal, TARGET_CONFIDENT_ACCURACY)
    return pipeline, threshold


def train(models_dir: Path, augment: dict | None = None, set_latest: bool = True, **params) -> Path:
    augment = augment or DEFAULT_AUGMENT
    started = time.perf_counter()
    splits = data.load_splits()
    pipeline, threshold = fit_model(splits.X_train, splits.y_train, augment, build_pipeline(**params))
    fit_seconds = time.perf_counter() - started
    clf = pipeline[-1]

    from ml.model import DigitModel  # evaluate through the serving path

    model = DigitModel(pipeline, {"version": "unsaved", "low_confidence_threshold": threshold})
    holdout = classification_metrics(
        model.predict_proba_arrays(to_mnist_batch(splits.X_holdout, "preprocess (held-out)")),
        splits.y_holdout,
        threshold,
    )
    holdout_raw = classification_metrics(
        model.predict_proba_arrays(splits.X_holdout), splits.y_holdout, threshold
    )
    upload = upload_like_metrics(model, splits.X_holdout, splits.y_holdout)
    y_cal = np.searchsorted(clf.classes_, clf.calibration_y_)
    metadata = {
        "training_data": data.DATA_DESCRIPTION,
        "params": {"pipeline": pipeline_params(pipeline), "augment": augment},
        "low_confidence_threshold": threshold,
        "low_confidence_rule": (
            "smallest calibrated confidence t such that calibration-split predictions with "
            f"confidence >= t are >= {TARGET_CONFIDENT_ACCURACY:.1%} correct (clamped 0.5..0.99)"
        ),
        "n_fit": int(len(splits.y_train) * (augment["copies"] + 1)),
        "n_calibration": int(len(y_cal)),
        "temperature_beta": float(clf.beta_),
        "n_support_vectors": int(clf.support_vectors_.shape[0]),
        "metrics": {
            "holdout": summary(holdout),
            "holdout_confusion_matrix": holdout["confusion_matrix"],
            "holdout_raw_arrays": summary(holdout_raw),
            "upload_like": {**summary(upload), "errors": upload["errors"]},
            "calibration_split": summary(classification_metrics(clf.calibration_proba_, y_cal, threshold)),
            "train_seconds": round(fit_seconds, 1),
        },
        "library_versions": _library_versions(),
    }
    out = save_model(pipeline, metadata, models_dir, set_latest=set_latest)
    tqdm.write(
        f"saved {out} in {time.perf_counter() - started:.0f}s: held-out accuracy "
        f"{holdout['accuracy']:.4f}, upload-like {upload['accuracy']:.4f}, "
        f"ECE {holdout['ece']:.4f}, threshold {threshold:.3f}"
    )
    return out


def pipeline_params(pipeline: Pipeline) -> dict:
    """The steps' constructor parameters (JSON-friendly), e.g. {"hog__orientations": 12, ...}."""
    params = pipeline.get_params(deep=True)
    return {
        k: _jsonable(v)
        for k, v in params.items()
        if "__" in k and isinstance(v, int | float | str | bool | tuple | type(None))
    }


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, tuple | list):
        return [_jsonable(v) for v in obj]
    return obj


def _library_versions() -> dict:
    from importlib.metadata import version

    packages = ("numpy", "scipy", "scikit-learn", "scikit-image", "pillow", "joblib", "mlxtend")
    return {"python": platform.python_version(), **{p: version(p) for p in packages}}
