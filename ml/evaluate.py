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
        # What a reviewer needs: the share of items the flag leaves unflagged (they are not looked
        # at), the accuracy among them, and how many of them are still wrong.
        out["coverage"] = float(accepted.mean())
        out["accuracy_when_confident"] = (
            float((pred[accepted] == y[accepted]).mean()) if accepted.any() else None
        )
        out["errors_when_confident"] = int((pred[accepted] != y[accepted]).sum())
    return out


def summary(metrics: dict) -> dict:
    """The headline numbers only (what goes into metadata.json next to the full report)."""
    keep = ("n", "accuracy", "ece", "brier", "log_loss", "low_confidence_rate", "coverage")
    return {
        k: metrics[k] for k in (*keep, "accuracy_when_confident", "errors_when_confident") if k in metrics
    }


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


def plot_reliability(proba: np.ndarray, y: np.ndarray, path: Path, bins: int = ECE_BINS) -> Path:
    """Reliability diagram: accuracy per confidence bin against the diagonal, with counts."""
    plt = _pyplot()
    conf = proba.max(axis=1)
    correct = proba.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    centres, accuracy, counts = [], [], []
    for b in range(bins):
        mask = which == b
        if mask.any():
            centres.append(conf[mask].mean())
            accuracy.append(correct[mask].mean())
            counts.append(int(mask.sum()))
    fig, (ax, ax_n) = plt.subplots(2, 1, figsize=(5.5, 6.5), height_ratios=[3, 1], sharex=True)
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.plot(centres, accuracy, "o-", label="model")
    ece = expected_calibration_error(proba, y, bins)
    ax.set(ylabel="accuracy", title=f"reliability (ECE {ece:.4f}, {len(y)} digits)", ylim=(0, 1.02))
    ax.legend(loc="upper left")
    ax_n.bar(centres, counts, width=0.8 / bins)
    ax_n.set(xlabel="confidence (mean of bin)", ylabel="digits", yscale="log", xlim=(0, 1.02))
    return _save(fig, path)


def plot_worst(images: np.ndarray, proba: np.ndarray, y: np.ndarray, path: Path, limit: int = 24) -> Path:
    """The misclassified digits the model was surest about, as a grid (true -> predicted)."""
    plt = _pyplot()
    pred = proba.argmax(axis=1)
    wrong = np.flatnonzero(pred != y)
    wrong = wrong[np.argsort(-proba[wrong, pred[wrong]])][:limit]
    cols = 6
    rows = max(1, -(-len(wrong) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.5, rows * 1.7))
    for ax in np.atleast_1d(axes).ravel():
        ax.axis("off")
    for ax, i in zip(np.atleast_1d(axes).ravel(), wrong, strict=False):
        ax.imshow(images[i], cmap="gray_r")
        ax.set_title(f"{y[i]} -> {pred[i]} ({proba[i, pred[i]]:.2f})", fontsize=8)
    fig.suptitle("worst-confused held-out digits: true -> predicted (confidence)", fontsize=9)
    return _save(fig, path)


def _reviewer(m: dict) -> str:
    """Coverage and the accuracy among the unflagged items, as table cells."""
    accuracy = m.get("accuracy_when_confident")
    if "coverage" not in m or accuracy is None:
        return " | "
    return f"{m['coverage']:.3f} | {accuracy:.4f} ({m['errors_when_confident']} wrong)"


def write_markdown(report: dict, path: Path, pictures: dict[str, str]) -> Path:
    """Headline metrics per set, per-class precision/recall of the held-out set, the plots."""
    lines = [f"# Model report: {report['version']}", ""]
    lines += [
        "| set | n | accuracy | ECE | Brier | log-loss | low-confidence | coverage | accuracy unflagged |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in report["sets"].items():
        lines.append(
            f"| {name} | {m['n']} | {m['accuracy']:.4f} | {m['ece']:.4f} | {m['brier']:.4f} | "
            f"{m['log_loss']:.4f} | {m.get('low_confidence_rate', 0):.3f} | {_reviewer(m)} |"
        )
    lines += ["", "## Per class (held-out MNIST digits)", ""]
    lines += ["| digit | precision | recall | f1 | support |", "|---|---|---|---|---|"]
    for k, c in report["sets"]["holdout"]["per_class"].items():
        lines.append(f"| {k} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} | {c['support']} |")
    lines.append("")
    for title, file in pictures.items():
        lines += [f"## {title}", "", f"![{title}]({file})", ""]
    path.write_text("\n".join(lines))
    return path


def write_model_report(model, out_dir: Path, report: dict | None = None) -> dict[str, Path]:
    """`python -m ml evaluate --report DIR`: confusion matrix, reliability diagram and
    worst-confused grid (PNGs) of the held-out digits, and a Markdown summary."""
    from ml.data import load_splits
    from ml.preprocess import to_mnist_batch

    out_dir.mkdir(parents=True, exist_ok=True)
    splits = load_splits()
    digits = to_mnist_batch(splits.X_holdout)
    proba = model.predict_proba_arrays(digits)
    report = report or evaluate_model(model)
    holdout = report["sets"]["holdout"]
    files = {
        "confusion matrix": plot_confusion(
            holdout["confusion_matrix"], out_dir / "confusion.png", "held-out"
        ),
        "reliability": plot_reliability(proba, splits.y_holdout, out_dir / "reliability.png"),
        "worst-confused digits": plot_worst(digits, proba, splits.y_holdout, out_dir / "worst_confused.png"),
    }
    files["summary"] = write_markdown(report, out_dir / "report.md", {k: p.name for k, p in files.items()})
    return files


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


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
