"""Microseconds per image for the digit model: batched numpy path vs one-image-at-a-time.

Per-image reference = Deskew + skimage.feature.hog for one image + the Pipeline's SVC.predict
on that one feature row (same model). Decode and preprocess are per-image in both paths.
Also times the same digits as 28x28 MNIST-style PNGs (decode, preprocess, end-to-end).
Run: .venv/bin/python bench/bench_model.py [--n 500] [--repeats 3] [--model models]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ml import DigitModel, resolve_local_model_dir  # noqa: E402
from ml.data import load_splits, upload_like_set  # noqa: E402
from ml.fast import features_batch  # noqa: E402
from ml.preprocess import decode_image, to_mnist  # noqa: E402


def timed(fn, repeats: int) -> float:
    """Median wall time of `fn()` over `repeats` runs, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=500, help="images per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", type=Path, default=Path("models"))
    args = parser.parse_args()

    model = DigitModel.load(resolve_local_model_dir(args.model))
    svc = model.pipeline[-1].calibrated_classifiers_[0].estimator.estimator
    feature_steps = model.pipeline[:-1]
    blobs = upload_like_set(load_splits().X_holdout[: args.n], seed=1)
    n = len(blobs)

    grays = [decode_image(b) for b in blobs]
    digits = np.stack([to_mnist(g) for g in grays])
    flat = digits.reshape(n, -1)
    feats = features_batch(digits, model.fast.hog_params)

    t_decode = timed(lambda: [decode_image(b) for b in blobs], args.repeats)
    t_pre = timed(lambda: [to_mnist(g) for g in grays], args.repeats)
    # The same digits as 28x28 MNIST-style PNGs (light ink on black): the other typical input.
    small_blobs = [_png(d) for d in load_splits().X_holdout[: args.n]]
    small_grays = [decode_image(b) for b in small_blobs]
    t_small_decode = timed(lambda: [decode_image(b) for b in small_blobs], args.repeats)
    t_small_pre = timed(lambda: [to_mnist(g) for g in small_grays], args.repeats)
    small_end_to_end = timed(lambda: model.predict_images(small_blobs), args.repeats)
    fast_feat = timed(lambda: features_batch(digits, model.fast.hog_params), args.repeats)
    fast_cls = timed(lambda: model.fast.predict_proba_features(feats), args.repeats)
    slow_feat = timed(lambda: [feature_steps.transform(flat[i : i + 1]) for i in range(n)], args.repeats)
    slow_cls = timed(lambda: [svc.predict(feats[i : i + 1]) for i in range(n)], args.repeats)
    sk_batch_cls = timed(lambda: svc.predict(feats), args.repeats)
    end_to_end = timed(lambda: model.predict_images(blobs), args.repeats)

    us = 1e6 / n
    rows = [
        ("decode", t_decode, t_decode),
        ("preprocess", t_pre, t_pre),
        ("features (deskew+HOG)", fast_feat, slow_feat),
        ("classify (SVM+calib.)", fast_cls, slow_cls),
    ]
    print(f"model {model.version}, {n} upload-like images, median of {args.repeats} runs")
    print(f"{'stage':<24}{'batched us/img':>16}{'per-image us/img':>18}{'ratio':>8}")
    for name, fast, slow in rows:
        print(f"{name:<24}{fast * us:>16.1f}{slow * us:>18.1f}{slow / fast:>7.1f}x")
    fast_total = sum(r[1] for r in rows)
    slow_total = sum(r[2] for r in rows)
    model_fast, model_slow = fast_feat + fast_cls, slow_feat + slow_cls
    print(
        f"{'features+classify':<24}{model_fast * us:>16.1f}{model_slow * us:>18.1f}"
        f"{model_slow / model_fast:>7.1f}x"
    )
    print(f"{'total':<24}{fast_total * us:>16.1f}{slow_total * us:>18.1f}{slow_total / fast_total:>7.1f}x")
    print(
        f"predict_images end-to-end: {end_to_end * us:.1f} us/img; "
        f"sklearn SVC.predict on the whole batch: {sk_batch_cls * us:.1f} us/img"
    )
    us_small = 1e6 / len(small_blobs)
    print(
        f"28x28 PNG inputs: decode {t_small_decode * us_small:.1f}, preprocess "
        f"{t_small_pre * us_small:.1f}, predict_images end-to-end {small_end_to_end * us_small:.1f} us/img"
    )
    return 0


def _png(digit: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.clip(digit, 0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


if __name__ == "__main__":
    raise SystemExit(main())
