"""K-fold validation of model candidates on the 4,000 training digits (never the held-out set).

Each candidate is a set of `build_pipeline` overrides (Pipeline parameter names). Per fold the
training digits and their augmented copies fit PCA + an RBF SVC (the served classifier's fit,
without the calibration split: accuracy only); the fold's undistorted originals are scored as
28x28 arrays and as upload-like renders through the serving preprocessing. Deskew + HOG are
stateless, so they run once for all rows. Prints mean fold accuracy (and per fold seed, for
paired comparisons) and support vectors. `--augment` overrides `DEFAULT_AUGMENT` for all
candidates of the run (e.g. 'copies=4, elastic=3.0'); `clf__gamma` may be a number.
Run: .venv/bin/python bench/cv_model.py [--folds 5] [--augment 'copies=4'] [--seeds 0 1 2 --] \
    'hog__orientations=12, pca__n_components=64' 'hog__orientations=16, pca__n_components=48'
"""

from __future__ import annotations

import argparse
import ast
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
from sklearn.base import clone
from sklearn.model_selection import StratifiedKFold
from sklearn.svm import SVC

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ml import data  # noqa: E402
from ml.preprocess import decode_image, preprocess_batch, to_mnist_batch  # noqa: E402
from ml.train import DEFAULT_AUGMENT, build_pipeline  # noqa: E402


def overrides(spec: str) -> dict:
    """'hog__orientations=16, hog__cells=(4, 7)' -> keyword arguments; literals only (no eval)."""
    call = ast.parse(f"f({spec})", mode="eval").body
    if not isinstance(call, ast.Call) or call.args:
        raise SystemExit(f"not name=value pairs: {spec!r}")
    return {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords if kw.arg}


def training_rows(X: np.ndarray, a: dict) -> np.ndarray:
    """The training digits then their augmented copies, preprocessed as in `fit_model`."""
    extra = data.augment(X, a["copies"], a["seed"], a["max_rotate"], a["elastic"])
    rows = np.concatenate([X, extra])
    return to_mnist_batch(rows).astype(np.float32).reshape(len(rows), -1)


def upload_like_rows(X: np.ndarray) -> np.ndarray:
    """Each training digit rendered like an upload and brought back by the serving path."""
    blobs = data.upload_like_set(X, seed=101)
    return preprocess_batch([decode_image(b) for b in blobs])[0].astype(np.float32).reshape(len(X), -1)


def fold_scores(pipeline, F, FU, y_all, n, train_idx, val_idx) -> tuple[float, float, int]:
    in_fold = np.isin(np.arange(len(y_all)) % n, train_idx)
    pca = clone(pipeline.named_steps["pca"]).fit(F[in_fold])
    Ft = pca.transform(F[in_fold])
    clf = pipeline.named_steps["clf"]
    gamma = 1.0 / (Ft.shape[1] * Ft.var()) if clf.gamma == "scale" else clf.gamma
    svc = SVC(C=clf.C, gamma=gamma).fit(Ft, y_all[in_fold])
    y_val = y_all[val_idx]
    mnist = float((svc.predict(pca.transform(F[val_idx])) == y_val).mean())
    upload = float((svc.predict(pca.transform(FU[val_idx])) == y_val).mean())
    return mnist, upload, len(svc.support_)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("candidates", nargs="+", help="build_pipeline overrides, e.g. 'pca__n_components=48'")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--augment", default="", help="DEFAULT_AUGMENT overrides, e.g. 'copies=4'")
    args = parser.parse_args()
    augment = {**DEFAULT_AUGMENT, **overrides(args.augment)}
    splits = data.load_splits()
    X, y = splits.X_train, splits.y_train
    n = len(y)
    rows, uploads = training_rows(X, augment), upload_like_rows(X)
    y_all = np.tile(y, len(rows) // n)
    for spec in args.candidates:
        pipeline = build_pipeline(**overrides(spec))
        features = pipeline[:2]  # deskew + HOG: stateless
        F = features.fit_transform(rows)
        FU = features.transform(uploads)
        results = []
        for seed in args.seeds:
            folds = StratifiedKFold(args.folds, shuffle=True, random_state=seed).split(X, y)
            with ThreadPoolExecutor(2) as pool:  # libsvm releases the GIL: one fold per core
                results += pool.map(
                    partial(fold_scores, pipeline, F, FU, y_all, n), *zip(*folds, strict=True)
                )
        r = np.array(results)
        per_seed = "/".join(f"{100 * m:.2f}" for m in r[:, 0].reshape(len(args.seeds), -1).mean(axis=1))
        print(
            f"{spec}: {F.shape[1]} HOG features, MNIST {100 * r[:, 0].mean():.2f}% ({per_seed}), "
            f"upload-like {100 * r[:, 1].mean():.2f}%, support vectors {r[:, 2].mean():.0f} "
            f"({args.folds} folds x seeds {args.seeds}; augment {args.augment or 'default'})",
            flush=True,
        )


if __name__ == "__main__":
    main()
