"""The worker's model steps on 28x28 digits, another commit's ml/ code against this checkout's,
alternated in one process: CPU µs per image of each side, medians, and their ratio.

On a shared machine two benchmark runs minutes apart see different loads (single `make bench`
runs swing 2x); runs alternated in one process see the same. The other side's `ml/preprocess.py`,
`ml/deskew.py` and `ml/hog.py` come from `git show REF:...`; both sides run on the same chunks of
CHUNK_SIZE digits (`make bench`'s PNGs, decoded once) with this checkout's model, PCA and
classifier, and one BLAS thread as in a worker process.
Run: .venv/bin/python bench/bench_ab.py REF [--images 2000] [--repeats 15]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_e2e import digit_pngs, load_model  # noqa: E402

from core.config import get_settings  # noqa: E402
from ml import deskew, preprocess, serving  # noqa: E402


def module_at(ref: str, name: str) -> types.ModuleType:
    """ml/<name>.py as it is at `ref`, as a module of its own."""
    source = subprocess.run(
        ["git", "show", f"{ref}:ml/{name}.py"], capture_output=True, text=True, check=True
    )
    module = types.ModuleType(f"{name}_at_{ref}")
    module.__file__ = f"{ref}:ml/{name}.py"
    exec(compile(source.stdout, module.__file__, "exec"), module.__dict__)  # noqa: S102 - our own history
    return module


def alternated(
    before: Callable[[], object], after: Callable[[], object], repeats: int
) -> tuple[float, float]:
    """Median CPU seconds of `before` and `after`, run in turn `repeats` times each."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for side, fn in zip(times, (before, after), strict=True):
            start = time.process_time()
            fn()
            side.append(time.process_time() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("ref", help="the commit to compare with, e.g. main")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    threadpool_limits(1)  # after numpy is loaded: one BLAS thread, as in a worker process
    old_pre, old_deskew, old_hog_module = (module_at(args.ref, m) for m in ("preprocess", "deskew", "hog"))
    model = load_model()
    _, new_hog, pca, classifier = (step for _, step in model.pipeline.steps)
    old_hog = old_hog_module.HogFeatures(**new_hog.get_params()).fit(None)
    size = get_settings().chunk_size
    grays = [preprocess.decode_image(b) for b in digit_pngs(args.images)]
    chunks = [grays[i : i + size] for i in range(0, len(grays), size)]
    digits = [preprocess.preprocess_batch(c)[0].reshape(-1, 28 * 28) for c in chunks]
    straight = [deskew.deskew_batch(d) for d in digits]

    def model_path(pre, desk, features) -> None:
        for chunk in chunks:
            out = features.transform(desk(pre(chunk)[0].reshape(-1, 28 * 28)))
            classifier.predict_proba_unchecked(serving._pca_project(pca, out))

    steps = {
        "preprocess": (
            lambda: [old_pre.preprocess_batch(c) for c in chunks],
            lambda: [preprocess.preprocess_batch(c) for c in chunks],
        ),
        "deskew": (
            lambda: [old_deskew.deskew_batch(d) for d in digits],
            lambda: [deskew.deskew_batch(d) for d in digits],
        ),
        "hog": (
            lambda: [old_hog.transform(d) for d in straight],
            lambda: [new_hog.transform(d) for d in straight],
        ),
        "all (+PCA, SVM)": (
            lambda: model_path(old_pre.preprocess_batch, old_deskew.deskew_batch, old_hog),
            lambda: model_path(preprocess.preprocess_batch, deskew.deskew_batch, new_hog),
        ),
    }
    us = 1e6 / len(grays)
    print(f"{len(grays)} digits in chunks of {size}, CPU µs/image, medians of {args.repeats} alternated runs")
    print(f"  {'step':<18}{args.ref:>10}{'this':>10}{'ratio':>8}")
    for name, (before, after) in steps.items():
        old, new = alternated(before, after, args.repeats)
        print(f"  {name:<18}{old * us:10.1f}{new * us:10.1f}{new / old:8.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
