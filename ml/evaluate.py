"""Metrics: accuracy, per-class report, confusion matrix (JSON + PNG), calibration."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    log_loss,
    precision_recall_fscore_support,
)

ECE_BINS = 15


def expected_calibration_error(proba: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label ECE: |accuracy - mean confidence| averaged over equal-width confidence bins."""
    conf = proba.max(axis=1)
    correct = proba.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.mean() * abs(correct[mask].mean() - conf[mask].mean())
    return float(total)


def brier_score(proba: np.ndarray, y: np.ndarray) -> float:
    """Multiclass Brier: mean over samples of sum_k (p_k - 1[y=k])^2 (0 best, 2 worst)."""
    onehot = np.eye(proba.shape[1])[y]
    return float(np.mean(np.sum((proba - onehot) ** 2, axis=1)))


def choose_threshold(
    proba: np.ndarray, y: np.ndarray, target_accuracy: float = 0.995, floor: float = 0.5
) -> float:
    """Smallest confidence t such that predictions with confidence >= t are at least
    `target_accuracy` accurate (on the calibration split); clamped to [floor, 0.99]."""
    conf = proba.max(axis=1)
    correct = proba.argmax(axis=1) == y
    order = np.argsort(-conf)
    running = np.cumsum(correct[order]) / np.arange(1, len(order) + 1)
    ok = np.flatnonzero(running >= target_accuracy)
    if ok.size == 0:
        return 0.99
    # Accept the longest prefix (by descending confidence) that still meets the target.
    t = float(conf[order][ok[-1]])
    return float(np.clip(t, floor, 0.99))


def classification_metrics(proba: np.ndarray, y: np.ndarray, threshold: float | None = None):
    pred = proba.argmax(axis=1)
    labels = np.arange(proba.shape[1])
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    out = {
        "n": int(len(y)),
        "accuracy": float(accuracy_score(y, pred)),
        "ece": expected_calibration_error(proba, y),
        "brier": brier_score(proba, y),
        "log_loss": float(log_loss(y, np.clip(proba, 1e-12, 1.0), labels=labels)),
        "per_class": {
            str(k): {
                "precision": float(p[k]),
                "recall": float(r[k]),
                "f1": float(f[k]),
                "support": int(s[k]),
            }
            for k in labels
        },
        "confusion_matrix": confusion_matrix(y, pred, labels=labels).tolist(),
    }
    if threshold is not None:
        accepted = proba.max(axis=1) >= threshold
        out["low_confidence_rate"] = float(1.0 - accepted.mean())
        out["accuracy_when_confident"] = (
            float((pred[accepted] == y[accepted]).mean()) if accepted.any() else None
        )
    return out


def summary(metrics: dict) -> dict:
    """The headline numbers only (what goes into metadata.json next to the full report)."""
    keep = ("n", "accuracy", "ece", "brier", "log_loss", "low_confidence_rate")
    return {k: metrics[k] for k in (*keep, "accuracy_when_confident") if k in metrics}


def plot_confusion(cm: list[list[int]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm_arr = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(6, 5.5))
    ax.imshow(cm_arr, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm_arr):
        colour = "white" if v > cm_arr.max() / 2 else "black"
        ax.text(j, i, str(v), ha="center", va="center", color=colour, fontsize=8)
    ax.set(xticks=range(10), yticks=range(10), xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(report: dict, out_dir: Path) -> tuple[Path, list[Path]]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "evaluation.json"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    plots = [
        plot_confusion(m["confusion_matrix"], out_dir / f"confusion_{name}.png", name)
        for name, m in report["sets"].items()
    ]
    return json_path, plots


def evaluate_model(model, upload_like: bool = True) -> dict:
    """Held-out MNIST digits as arrays, and the same digits rendered as upload-like files."""
    from ml.data import load_splits

    splits = load_splits()
    t = model.low_confidence_threshold
    from ml.preprocess import to_mnist_batch

    y = splits.y_holdout
    proba = model.predict_proba_arrays(to_mnist_batch(splits.X_holdout))
    raw = model.predict_proba_arrays(splits.X_holdout)
    sets = {
        "holdout": classification_metrics(proba, y, t),
        "holdout_raw_arrays": classification_metrics(raw, y, t),
    }
    if upload_like:
        sets["upload_like"] = upload_like_metrics(model, splits.X_holdout, splits.y_holdout)
    return {"version": model.version, "low_confidence_threshold": t, "sets": sets}


def upload_like_metrics(model, X: np.ndarray, y: np.ndarray) -> dict:
    """Render digits as dark-on-light, bigger, off-centre, noisy JPEG/PNG files; classify.
    An image the preprocessing rejects counts as a uniform (wrong) prediction."""
    from ml.data import upload_like_set
    from ml.preprocess import ImageError, preprocess_bytes

    n_classes = len(model.classes)
    proba = np.full((len(y), n_classes), 1.0 / n_classes)
    ok, digits = [], []
    for i, blob in enumerate(upload_like_set(X)):
        try:
            digits.append(preprocess_bytes(blob))
            ok.append(i)
        except ImageError:
            pass
    if digits:
        proba[ok] = model.predict_proba_arrays(np.stack(digits))
    out = classification_metrics(proba, y, model.low_confidence_threshold)
    out["errors"] = int(len(y) - len(ok))
    return out
