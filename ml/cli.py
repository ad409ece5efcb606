"""`python -m ml <command>`. Each command is a `register(subparsers)` + handler pair; add new
ones (push, list, reload, ...) by appending their register function to COMMANDS."""

from __future__ import annotations

import argparse
import csv
import json
import sys
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

DEFAULT_MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def register_train(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a model into models/<version>, update LATEST")
    p.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    p.add_argument("--no-latest", action="store_true", help="do not point LATEST at it")
    p.set_defaults(handler=cmd_train)


def cmd_train(args) -> int:
    from ml.train import train

    train(args.models_dir, set_latest=not args.no_latest)
    return 0


def register_evaluate(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="held-out + upload-like metrics, confusion plots")
    p.add_argument("--model", type=Path, default=DEFAULT_MODELS_DIR, help="models dir or version dir")
    p.add_argument("--out", type=Path, default=None, help="report dir (default <model>/evaluation)")
    p.set_defaults(handler=cmd_evaluate)


def cmd_evaluate(args) -> int:
    from ml.evaluate import evaluate_model, write_report

    model = _load(args.model)
    report = evaluate_model(model)
    out_dir = args.out or Path(model.metadata["_dir"]) / "evaluation"
    json_path, plots = write_report(report, out_dir)
    for name, m in report["sets"].items():
        print(
            f"{name}: accuracy {m['accuracy']:.4f}  ECE {m['ece']:.4f}  Brier {m['brier']:.4f}  "
            f"low-confidence {m.get('low_confidence_rate', 0):.3f}"
        )
        for k, c in m["per_class"].items():
            print(f"  {k}: precision {c['precision']:.3f} recall {c['recall']:.3f} f1 {c['f1']:.3f}")
    print(json.dumps({"holdout_confusion_matrix": report["sets"]["holdout"]["confusion_matrix"]}))
    print(f"report: {json_path}")
    for plot in plots:
        print(f"confusion matrix plot: {plot}")
    return 0


def register_predict(subparsers) -> None:
    p = subparsers.add_parser("predict", help="classify a file, a folder or a zip -> CSV")
    p.add_argument("path", type=Path)
    p.add_argument("--model", type=Path, default=DEFAULT_MODELS_DIR)
    p.add_argument("--out", type=Path, default=None, help="CSV file (default stdout)")
    p.add_argument("--batch-size", type=int, default=256)
    p.set_defaults(handler=cmd_predict)


def cmd_predict(args) -> int:
    model = _load(args.model)
    out = open(args.out, "w", newline="") if args.out else sys.stdout  # noqa: SIM115
    try:
        writer = csv.writer(out)
        writer.writerow(["name", "digit", "confidence", "low_confidence", "error"])
        for batch in _batches(iter_inputs(args.path), args.batch_size):
            names = [n for n, _ in batch]
            for name, pred in zip(names, model.predict_images([b for _, b in batch]), strict=True):
                conf = "" if pred.confidence is None else f"{pred.confidence:.4f}"
                digit = "" if pred.digit is None else pred.digit
                writer.writerow([name, digit, conf, int(pred.low_confidence), pred.error or ""])
    finally:
        if args.out:
            out.close()
    return 0


def iter_inputs(path: Path) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) for a single file, every image in a folder (recursive) or a zip."""
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
            yield str(f.relative_to(path)), f.read_bytes()
    elif zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.is_dir() and Path(info.filename).suffix.lower() in IMAGE_SUFFIXES:
                    yield info.filename, zf.read(info)
    else:
        yield path.name, path.read_bytes()


def _batches(items, size: int):
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _load(path: Path):
    from ml.artifacts import resolve_local_model_dir
    from ml.model import DigitModel

    model_dir = resolve_local_model_dir(path)
    model = DigitModel.load(model_dir)
    model.metadata["_dir"] = str(model_dir)
    return model


COMMANDS: list[Callable] = [register_train, register_evaluate, register_predict]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ml", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for register in COMMANDS:
        register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)
