"""Microseconds per image for the digit model, step by step, in one process.

Two inputs: 28x28 MNIST-style PNGs (the throughput case: `make bench`'s zip) and upload-like
photos (larger, dark-on-light JPEG/PNG). Steps: decode (bytes -> grey array), preprocess
(-> 28x28 MNIST convention), features (the pipeline's deskew + HOG + PCA, whole batch),
classify (the calibrated kernel SVM, whole batch), and `DigitModel.predict_images` end to end.
For reference, the features and classifier one image at a time, and one image served as a
worker serves a /predict (a chunk of one). One BLAS thread, as in a worker.
Run: .venv/bin/python bench/bench_model.py [--n 1000] [--repeats 5] [--model models]
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ml import DigitModel, resolve_local_model_dir  # noqa: E402
from ml.data import load_splits, upload_like_set  # noqa: E402
from ml.preprocess import decode_image, preprocess_batch, to_mnist  # noqa: E402


def timed(fn, repeats: int) -> float:
    """Best wall time of `fn()` over `repeats` runs, in seconds (the machine is shared: the
    minimum is the least disturbed run)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench(model: DigitModel, name: str, blobs: list[bytes], repeats: int) -> None:
    n = len(blobs)
    us = 1e6 / n
    grays = [decode_image(b) for b in blobs]
    digits = preprocess_batch(grays)[0].reshape(n, -1)
    features_step, classify_step = model.pipeline[:-1], model.pipeline[-1]
    features = features_step.transform(digits)
    rows = [
        ("decode", timed(lambda: [decode_image(b) for b in blobs], repeats)),
        ("preprocess", timed(lambda: preprocess_batch(grays), repeats)),
        ("features", timed(lambda: features_step.transform(digits), repeats)),
        ("classify", timed(lambda: classify_step.predict_proba(features), repeats)),
    ]
    total = timed(lambda: model.predict_images(blobs), repeats)
    print(f"\n{name}: {n} images, best of {repeats} runs, us/image")
    for step, seconds in rows:
        print(f"  {step:<12}{seconds * us:>9.1f}")
    print(f"  {'sum':<12}{sum(s for _, s in rows) * us:>9.1f}")
    print(f"  {'end to end':<12}{total * us:>9.1f}   (DigitModel.predict_images, one batch)")
    k = min(n, 100)
    one_feat = timed(lambda: [features_step.transform(digits[i : i + 1]) for i in range(k)], 1)
    one_cls = timed(lambda: [classify_step.predict_proba(features[i : i + 1]) for i in range(k)], 1)
    print(f"  one image at a time: features {one_feat * 1e6 / k:.1f}, classify {one_cls * 1e6 / k:.1f}")
    per_image_pre = timed(lambda: [to_mnist(g) for g in grays[:k]], 1)
    print(f"  per-image to_mnist (the general path): {per_image_pre * 1e6 / k:.1f}")
    # What a worker does for one /predict image: a chunk of one, prepared then classified.
    one_served = timed(lambda: [model.predict_prepared([model.prepare(b)]) for b in blobs[:k]], 1)
    print(f"  one image served (prepare + predict_prepared, a chunk of one): {one_served * 1e6 / k:.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=1000, help="images per run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", type=Path, default=Path("models"))
    args = parser.parse_args()
    threadpool_limits(1)  # one BLAS thread, as in a worker process (worker/app.py)

    model = DigitModel.load(resolve_local_model_dir(args.model))
    meta = model.metadata
    print(f"model {model.version}: {meta.get('n_support_vectors')} support vectors")
    digits = load_splits().X_holdout
    digits = np.concatenate([digits] * (-(-args.n // len(digits))))[: args.n]
    bench(model, "28x28 MNIST-style PNG", [_png(d) for d in digits], args.repeats)
    bench(model, "upload-like photos (80-260 px JPEG/PNG)", upload_like_set(digits, seed=1), args.repeats)
    return 0


def _png(digit: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.clip(digit, 0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


if __name__ == "__main__":
    raise SystemExit(main())
