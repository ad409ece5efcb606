"""Train the digit model: deskew -> HOG -> RBF SVC, temperature-calibrated; save artifacts.

Splits (all stratified, fixed seeds):
  5,000 MNIST = 1,000 held-out (reported only) + 4,000 training
  4,000 training = 500 calibration (temperature + low-confidence threshold) + 3,500 fit
The 3,500 fit digits get `augment.copies` distorted copies each; an SVC fitted on them is
temperature-calibrated on the 500 calibration digits, which also choose the low-confidence
threshold. With `calibration.refit_all` (default) the served SVC is then refitted on all
4,000 digits (+ copies) and keeps that temperature. Checked on two 2,800/400/800 splits of
the training digits: accuracy 98.88/98.62% -> 98.88/98.75%, log-loss 0.064/0.072 ->
0.057/0.063, ECE 0.007/0.005 -> 0.008/0.006 (transferred beta 1.62/1.90 vs 1.76/1.73 fitted
on the validation part itself).

Hyper-parameters were chosen by mean accuracy over three stratified 3,200/800 splits of the
4,000 training digits (never the held-out set); fits use 1 augmented copy unless noted:
  HOG 4px cells, no deskew 97.4% | deskew 98.1% | + 7px cells + 14x14 pooled pixels 98.7%
  C in {3, 5, 10} and gamma x{0.7, 1, 1.5} all 98.71% (C barely matters: near hard margin)
  2 copies 98.83% | 2 copies + elastic(1.0) 98.83% | + 12 orientations 98.92% (chosen)
  2 copies + elastic(2.0) 98.79% | 3 copies + elastic(1.0) 98.88% (slower, no better)
  training on `to_mnist`-preprocessed digits (as served) 98.92% vs raw arrays 98.71%
  to_mnist with a noise-adaptive floor (keeps faint edges of clean digits), 3 other splits:
  served 98.83 -> 98.88%, raw arrays 98.79% both, upload-like 98.87 -> 98.88%
  tried, not kept: the second distorted copy rendered as an upload and preprocessed from its
  bytes. Six 3,200/800 splits: served 98.27 -> 98.33%, upload-like 98.38 -> 98.52%, within
  noise; the model built so flagged 5% of digits low-confidence instead of 2%.

Calibration: temperature scaling (CalibratedClassifierCV(FrozenEstimator(svc),
method="temperature")) on the 500-digit calibration split. The logits are VoteMarginSVC's
votes + 0.25 * summed one-vs-one margins: same accuracy as sklearn's 'ovr' scores on the
validation splits (98.83%), lower log-loss (0.042 vs 0.058) and graded confidences instead
of ~0.98 for everything.
"""

from __future__ import annotations

import platform
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.frozen import FrozenEstimator
from sklearn.pipeline import Pipeline
from tqdm import tqdm

from ml import data
from ml.artifacts import save_model
from ml.deskew import Deskew
from ml.evaluate import choose_threshold, classification_metrics, summary, upload_like_metrics
from ml.fast import features_batch
from ml.hog import HogFeatures
from ml.preprocess import to_mnist_batch
from ml.svm import VoteMarginSVC

CALIBRATION_SIZE = 500
CALIBRATION_SEED = 11
TARGET_CONFIDENT_ACCURACY = 0.995

DEFAULT_PARAMS: dict = {
    "deskew": True,
    "hog": {"orientations": 12, "cell_sizes": (4, 7), "cells_per_block": 2, "pixel_pool": 2},
    "svc": {"C": 5.0, "gamma": "scale", "kernel": "rbf", "decision_function_shape": "ovo"},
    "augment": {"copies": 2, "max_rotate": 12.0, "elastic": 1.0, "seed": 3},
    "calibration": {"method": "temperature", "size": CALIBRATION_SIZE, "refit_all": True},
}


def build_features(params: dict) -> Pipeline:
    """The feature half of the model (stateless transformers)."""
    return Pipeline([("deskew", Deskew(enabled=params["deskew"])), ("hog", HogFeatures(**params["hog"]))])


def transform_chunked(params: dict, X: np.ndarray, desc: str, chunk: int = 1000) -> np.ndarray:
    """Training features via the vectorised path (tests pin it to the skimage reference)."""
    hog_params = {"deskew": params["deskew"], **params["hog"]}
    parts = [
        features_batch(X[i : i + chunk], hog_params)
        for i in tqdm(range(0, len(X), chunk), desc=desc, unit="chunk", leave=False)
    ]
    return np.concatenate(parts)


def fit_pipeline(
    X_fit, y_fit, X_cal, y_cal, params: dict, X_final=None, y_final=None
) -> tuple[Pipeline, np.ndarray, float]:
    """Fit SVC on the fit split, temperature-calibrate it on the calibration split.

    With `X_final`/`y_final` (fit + calibration digits), the served SVC is then refitted on
    those and reuses the temperature found above (a single scalar: it transfers between
    SVCs trained the same way on 3,500 vs 4,000 digits). Returns the whole Pipeline, the
    calibration split's calibrated probabilities (from the SVC that never saw it, so the
    low-confidence threshold is chosen honestly) and the temperature's inverse `beta`.
    """
    features = build_features(params).fit(X_fit[:2])  # stateless: fit only marks it fitted
    F_fit = transform_chunked(params, X_fit, "features (fit)")
    F_cal = transform_chunked(params, X_cal, "features (calibration)")
    F_final = None if X_final is None else transform_chunked(params, X_final, "features (final)")
    sizes = " and ".join(f"{F.shape[0]}" for F in (F_fit, F_final) if F is not None)
    tqdm.write(f"fitting SVC on {sizes} x {F_fit.shape[1]} features ...")
    # libsvm releases the GIL: the calibration SVC and the final SVC train in parallel.
    with ThreadPoolExecutor(max_workers=2) as pool:
        fit_job = pool.submit(VoteMarginSVC(**params["svc"]).fit, F_fit, y_fit)
        final_job = None
        if F_final is not None:
            final_job = pool.submit(VoteMarginSVC(**params["svc"]).fit, F_final, y_final)
        svc = fit_job.result()
        final_svc = None if final_job is None else final_job.result()
    calibrated = CalibratedClassifierCV(FrozenEstimator(svc), method="temperature")
    calibrated.fit(F_cal, y_cal)
    cal_proba = calibrated.predict_proba(F_cal)
    beta = float(np.asarray(calibrated.calibrated_classifiers_[0].calibrators[0].beta_))
    if final_svc is not None:
        calibrated = CalibratedClassifierCV(FrozenEstimator(final_svc), method="temperature")
        calibrated.fit(F_cal, y_cal)  # builds the calibrator object; its beta is replaced:
        calibrated.calibrated_classifiers_[0].calibrators[0].beta_ = beta
    pipeline = Pipeline([*features.steps, ("clf", calibrated)])
    return pipeline, cal_proba, beta


def train(models_dir: Path, params: dict | None = None, set_latest: bool = True) -> Path:
    params = params or DEFAULT_PARAMS
    started = time.perf_counter()
    splits = data.load_splits()
    X_fit, X_cal, y_fit, y_cal = data.split_off(
        splits.X_train, splits.y_train, CALIBRATION_SIZE, CALIBRATION_SEED
    )
    aug = params["augment"]
    refit_all = params["calibration"].get("refit_all", False)
    X_fit_aug, y_fit_aug = _augmented(X_fit, y_fit, aug, aug["seed"])
    # Same preprocessing as serving (re-crop, 20 px box, COM-centre, ink normalisation).
    X_fit_aug = to_mnist_batch(X_fit_aug, "preprocess (fit)")
    X_cal_pre = to_mnist_batch(X_cal, "preprocess (calibration)")
    X_final = y_final = None
    if refit_all:  # the calibration digits (+ their own augmented copies) join the final fit
        X_cal_aug, y_cal_aug = _augmented(X_cal, y_cal, aug, aug["seed"] + 1)
        X_final = np.concatenate([X_fit_aug, X_cal_pre, to_mnist_batch(X_cal_aug[len(X_cal) :])])
        y_final = np.concatenate([y_fit_aug, y_cal_aug])
    pipeline, cal_proba, beta = fit_pipeline(X_fit_aug, y_fit_aug, X_cal_pre, y_cal, params, X_final, y_final)
    y_fit = y_fit_aug if y_final is None else y_final
    threshold = choose_threshold(cal_proba, y_cal, TARGET_CONFIDENT_ACCURACY)
    fit_seconds = time.perf_counter() - started

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
    metadata = {
        "training_data": data.DATA_DESCRIPTION,
        "params": _jsonable(params),
        "low_confidence_threshold": threshold,
        "low_confidence_rule": (
            "smallest calibrated confidence t such that calibration-split predictions with "
            f"confidence >= t are >= {TARGET_CONFIDENT_ACCURACY:.1%} correct (clamped 0.5..0.99)"
        ),
        "n_fit": int(len(y_fit)),
        "n_calibration": int(len(y_cal)),
        "temperature_beta": beta,
        "n_support_vectors": int(
            pipeline[-1].calibrated_classifiers_[0].estimator.estimator.support_vectors_.shape[0]
        ),
        "metrics": {
            "holdout": summary(holdout),
            "holdout_confusion_matrix": holdout["confusion_matrix"],
            "holdout_raw_arrays": summary(holdout_raw),
            "upload_like": {**summary(upload), "errors": upload["errors"]},
            "calibration_split": summary(classification_metrics(cal_proba, y_cal, threshold)),
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


def _augmented(X: np.ndarray, y: np.ndarray, aug: dict, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The digits followed by `aug["copies"]` distorted copies of them, with labels."""
    if not aug["copies"]:
        return X, y
    extra = data.augment(X, aug["copies"], seed, aug["max_rotate"], aug["elastic"], progress=True)
    return np.concatenate([X, extra]), np.tile(y, aug["copies"] + 1)


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
