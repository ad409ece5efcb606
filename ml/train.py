"""Train the digit model: `build_pipeline().fit(X, y)` on augmented digits; save artifacts.

The model is one scikit-learn Pipeline: Deskew -> HogFeatures -> PCA(48) ->
CalibratedKernelSVC; every parameter lives in a step's __init__ (`build_pipeline(**params)`
takes Pipeline parameter names) and the metadata records `pipeline.get_params()`.

Splits (all stratified, fixed seeds): 5,000 MNIST = 1,000 held-out (reported only, never fitted
or tuned on) + 4,000 training; of those, 500 calibration digits (temperature + low-confidence
threshold). Each training digit gets `copies` distorted copies; `clf__groups` ties copies to
their digit so only undistorted originals calibrate. Why these parameters, and every candidate
tried, is in docs/model.md.
More data (`--data`, ml/sources.py), held-out parts per source, provenance, and the copies and
kernel bounds as data grows: docs/model-data.md.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA
from sklearn.pipeline import Pipeline
from tqdm import tqdm

from ml import data, sources
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
# Bounds on the kernel as data grows (plan_fit; measured in docs/model-data.md).
MAX_AUGMENTED_ROWS = 24_000  # copies only while digits x (copies + 1) stay within this
MAX_FIT_DIGITS = 70_000  # beyond this, a stratified subsample of the digits is fitted
UPLOAD_LIKE_MAX = 2_000  # held-out digits rendered like uploads (rendering costs ~1 ms each)


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


def train(
    models_dir: Path,
    augment: dict | None = None,
    set_latest: bool = True,
    extra_sources: Sequence[sources.Source] = (),
    bundled: bool = True,
    max_rows: int = MAX_AUGMENTED_ROWS,
    max_digits: int = MAX_FIT_DIGITS,
    **params,
) -> Path:
    """Fit on the bundled digits (unless `bundled=False`) and `extra_sources`, each with its
    held-out part split off first (sources.split: fixed seed, never fitted or tuned on), and
    save the model with its provenance and per-source held-out scores."""
    started = time.perf_counter()
    chosen = ([sources.bundled()] if bundled else []) + list(extra_sources)
    if not chosen:
        raise sources.SourceError("no training data: --no-bundled needs at least one --data")
    parts, dropped = sources.drop_held_out([sources.split(s, data.HOLDOUT_SEED) for s in chosen])
    for source in chosen:
        tqdm.write(source.summary())
    if dropped:
        tqdm.write(f"{dropped} training digit(s) identical to a held-out digit dropped")
    X = np.concatenate([p.X_train for p in parts])
    y = np.concatenate([p.y_train for p in parts])
    owner = np.concatenate([np.full(len(p.y_train), i) for i, p in enumerate(parts)])
    rows, augment = plan_fit(y, augment or DEFAULT_AUGMENT, max_rows, max_digits)
    X, y, fitted = X[rows], y[rows], np.bincount(owner[rows], minlength=len(parts))
    # An eighth of the digits calibrate (500 of the bundled 4,000), so that small data sets work.
    params.setdefault("clf__calibration_size", min(CALIBRATION_SIZE, max(20, len(y) // 8)))
    pipeline, threshold = fit_model(X, y, augment, build_pipeline(**params))
    fit_seconds = time.perf_counter() - started
    clf = pipeline[-1]

    from ml.model import DigitModel  # evaluate through the serving path

    model = DigitModel(pipeline, {"version": "unsaved", "low_confidence_threshold": threshold})
    X_ho = np.concatenate([p.X_holdout for p in parts])
    y_ho = np.concatenate([p.y_holdout for p in parts])
    proba = model.predict_proba_arrays(to_mnist_batch(X_ho, "preprocess (held-out)"))
    holdout = classification_metrics(proba, y_ho, threshold)
    holdout_raw = classification_metrics(model.predict_proba_arrays(X_ho), y_ho, threshold)
    upload_rows = np.random.default_rng(0).permutation(len(y_ho))[:UPLOAD_LIKE_MAX]
    upload = upload_like_metrics(model, X_ho[np.sort(upload_rows)], y_ho[np.sort(upload_rows)])
    y_cal = np.searchsorted(clf.classes_, clf.calibration_y_)
    provenance = _provenance(parts, fitted, proba, threshold)
    metadata = {
        "training_data": data.DATA_DESCRIPTION
        if [s.kind for s in chosen] == ["bundled"]
        else _describe(parts),
        "sources": provenance,
        "params": {"pipeline": pipeline_params(pipeline), "augment": augment},
        "low_confidence_threshold": threshold,
        "low_confidence_rule": (
            "smallest calibrated confidence t such that calibration-split predictions with "
            f"confidence >= t are >= {TARGET_CONFIDENT_ACCURACY:.1%} correct (clamped 0.5..0.99)"
        ),
        "n_fit": int(len(y) * (augment["copies"] + 1)),
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
    for row in provenance:
        score = row["held_out_accuracy"]
        tqdm.write(f"  held-out {row['kind']} {row['name']}: {row['held_out']} digits, accuracy {score}")
    tqdm.write(
        f"saved {out} in {time.perf_counter() - started:.0f}s: held-out accuracy "
        f"{holdout['accuracy']:.4f}, upload-like {upload['accuracy']:.4f}, "
        f"ECE {holdout['ece']:.4f}, threshold {threshold:.3f}, "
        f"{metadata['n_support_vectors']} support vectors"
    )
    return out


def plan_fit(y: np.ndarray, augment: dict, max_rows: int, max_digits: int) -> tuple[np.ndarray, dict]:
    """Keep the kernel's size bounded as data grows: at most `max_digits` digits (a stratified,
    seeded subsample: the rows to fit are returned), and distorted copies only while digits x
    (copies + 1) fit in `max_rows` (the 4,000 bundled digits keep their 2).
    docs/model-data.md has the measurements."""
    rows = np.arange(len(y))
    if len(y) > max_digits:
        from sklearn.model_selection import train_test_split

        rows, _ = train_test_split(rows, train_size=max_digits, stratify=y, random_state=data.HOLDOUT_SEED)
        rows = np.sort(rows)
        tqdm.write(f"subsampled to {max_digits} training digits (the kernel cap)")
    copies = min(int(augment["copies"]), max(0, max_rows // max(len(rows), 1) - 1))
    if copies != augment["copies"]:
        tqdm.write(f"{copies} distorted copies per digit instead of {augment['copies']} ({len(rows)} digits)")
    return rows, {**augment, "copies": copies}


def _provenance(
    parts: list[sources.Part], fitted: np.ndarray, proba: np.ndarray, threshold: float
) -> list[dict]:
    """Each source's provenance, how many digits it gave to training and to the held-out set,
    and the model's accuracy on its held-out part (`proba` rows are the parts' in order)."""
    rows, start = [], 0
    for part, n_fitted in zip(parts, fitted, strict=True):
        n = len(part.y_holdout)
        mine = proba[start : start + n]
        start += n
        accuracy = None
        if n:
            accuracy = round(classification_metrics(mine, part.y_holdout, threshold)["accuracy"], 5)
        rows.append(
            {
                **part.source.provenance(),
                "train": int(len(part.y_train)),
                "fitted": int(n_fitted),  # fewer than `train` when the kernel cap subsampled
                "held_out": int(n),
                "held_out_accuracy": accuracy,
            }
        )
    return rows


def _describe(parts: list[sources.Part]) -> str:
    named = ", ".join(f"{p.source.kind} {p.source.name} ({p.source.count})" for p in parts)
    return (
        f"{named}; from each a held-out part (its own test files, else {sources.HOLDOUT_FRACTION:.0%} "
        f"drawn with seed {data.HOLDOUT_SEED}) never used for fitting or tuning"
    )


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
