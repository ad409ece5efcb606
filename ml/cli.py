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

from ml import candidates

DEFAULT_MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def register_train(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a model into models/<version>, update LATEST")
    p.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    p.add_argument("--no-latest", action="store_true", help="do not point LATEST at it")
    _add_data_arguments(p)
    p.add_argument("--no-bundled", action="store_true", help="leave out the 5,000 bundled MNIST digits")
    p.add_argument(
        "--max-rows",
        type=int,
        default=None,
        help="distorted copies only while digits x (copies + 1) fit in this (default 24,000)",
    )
    p.add_argument(
        "--max-digits", type=int, default=None, help="fit a stratified subsample of at most this many digits"
    )
    p.set_defaults(handler=cmd_train)


def _add_data_arguments(p) -> None:
    p.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="SOURCE",
        help="more labelled digits (repeatable): an MNIST IDX folder, a folder of 0/..9/ image "
        "folders, ARCHIVE.zip:LABELS.csv (name,digit rows), `feedback` (the labelled-data store) "
        "or `mnist` (downloads the official files once, SHA-256 pinned)",
    )


def _load_sources(specs: list[str]):
    """The --data sources, loaded and validated; SystemExit with the message naming the file."""
    from core.feedback import export
    from ml.sources import SourceError, load

    try:
        return [load(spec, export) for spec in specs]
    except SourceError as exc:
        raise SystemExit(f"data error: {exc}") from None


def cmd_train(args) -> int:
    from ml.sources import SourceError
    from ml.train import MAX_AUGMENTED_ROWS, MAX_FIT_DIGITS, train

    extra = _load_sources(args.data)
    try:
        train(
            args.models_dir,
            set_latest=not args.no_latest,
            extra_sources=extra,
            bundled=not args.no_bundled,
            max_rows=args.max_rows or MAX_AUGMENTED_ROWS,
            max_digits=args.max_digits or MAX_FIT_DIGITS,
        )
    except SourceError as exc:
        raise SystemExit(f"data error: {exc}") from None
    return 0


def register_evaluate(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="held-out + upload-like metrics, confusion plots")
    p.add_argument("--model", type=Path, default=DEFAULT_MODELS_DIR, help="models dir or version dir")
    p.add_argument("--out", type=Path, default=None, help="report dir (default <model>/evaluation)")
    p.add_argument(
        "--report",
        type=Path,
        default=None,
        metavar="DIR",
        help="also write confusion.png, reliability.png, worst_confused.png and report.md there",
    )
    p.set_defaults(handler=cmd_evaluate)


def cmd_evaluate(args) -> int:
    from ml.evaluate import evaluate_model, write_report

    model = _load(args.model)
    report = evaluate_model(model)
    out_dir = args.out or model.model_dir / "evaluation"
    json_path, plots = write_report(report, out_dir)
    for name, m in report["sets"].items():
        print(
            f"{name}: accuracy {m['accuracy']:.4f}  ECE {m['ece']:.4f}  Brier {m['brier']:.4f}  "
            f"low-confidence {m.get('low_confidence_rate', 0):.3f}"
        )
        if m.get("accuracy_when_confident") is not None:  # what a reviewer of the flagged items needs
            print(
                f"  coverage {m['coverage']:.3f} (unflagged: accuracy {m['accuracy_when_confident']:.4f}, "
                f"{m['errors_when_confident']} of {round(m['coverage'] * m['n'])} wrong)"
            )
        for k, c in m["per_class"].items():
            print(f"  {k}: precision {c['precision']:.3f} recall {c['recall']:.3f} f1 {c['f1']:.3f}")
    print(json.dumps({"holdout_confusion_matrix": report["sets"]["holdout"]["confusion_matrix"]}))
    print(f"report: {json_path}")
    for plot in plots:
        print(f"confusion matrix plot: {plot}")
    if args.report:
        from ml.evaluate import write_model_report

        for what, path in write_model_report(model, args.report, report).items():
            print(f"{what}: {path}")
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

    return DigitModel.load(resolve_local_model_dir(path))


def _registry_uri(given: str | None) -> str:
    import os

    uri = given or os.environ.get("MODEL_REGISTRY")
    if not uri:
        raise SystemExit("set MODEL_REGISTRY=s3://bucket/prefix (or pass --registry)")
    return uri


def register_push(subparsers) -> None:
    p = subparsers.add_parser("push", help="upload a model to the S3 registry, move its latest pointer")
    p.add_argument("model_dir", type=Path, nargs="?", default=DEFAULT_MODELS_DIR, help="models/version dir")
    p.add_argument("--registry", default=None, help="s3://bucket/prefix (default $MODEL_REGISTRY)")
    p.add_argument("--no-latest", action="store_true", help="do not move the latest pointer")
    p.add_argument(
        "--candidate",
        action="store_true",
        help="upload only (latest stays): then `compare` it and `promote` it",
    )
    p.set_defaults(handler=cmd_push)


def cmd_push(args) -> int:
    # MODEL_SIGNING_KEY is a setting (core/config.py, also read from .env); imported here so ml
    # itself stays free of core.
    from core.config import get_settings
    from core.promotion import PointerError, RegistryPointer
    from ml.registry import RegistryUnavailable, S3Registry
    from ml.trust import ModelTrust

    trust = ModelTrust.from_settings(get_settings())
    registry = S3Registry(_registry_uri(args.registry), trust=trust)
    set_latest = not (args.no_latest or args.candidate)
    try:
        version = registry.push(args.model_dir, set_latest=False)
        if set_latest:  # through the pointer, so that `rollback` can come back
            RegistryPointer(registry.uri).move_latest(version)
    except (RegistryUnavailable, PointerError) as exc:  # unreachable, or may not write there
        print(f"push failed: {exc}", file=sys.stderr)
        return 1
    print(f"pushed {version} to {registry.uri}/{version}" + (" (latest)" if set_latest else ""))
    if args.candidate:
        print(f"candidate: `python -m ml compare {version}`, then `python -m ml promote {version}`")
    if trust.signing_key is None:
        sha = registry.metadata(version)["sha256"]
        print(
            f"warning: unsigned (MODEL_SIGNING_KEY is not set): workers load it only if "
            f"TRUSTED_MODEL_SHA256 lists {sha}",
            file=sys.stderr,
        )
    return 0


def register_list(subparsers) -> None:
    p = subparsers.add_parser("list", help="versions in the S3 registry with their metrics")
    p.add_argument("--registry", default=None, help="s3://bucket/prefix (default $MODEL_REGISTRY)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_list)


def cmd_list(args) -> int:
    from ml.registry import RegistryUnavailable, S3Registry

    registry = S3Registry(_registry_uri(args.registry))
    versions = registry.versions()
    try:
        latest = registry.latest()
    except (FileNotFoundError, RegistryUnavailable):
        latest = None
    if args.json:
        rows = [{"version": v.version, "latest": v.version == latest, **v.metadata} for v in versions]
        print(json.dumps(rows, indent=2))
        return 0
    for v in versions:
        holdout = v.metadata.get("metrics", {}).get("holdout", {})
        acc, ece = holdout.get("accuracy"), holdout.get("ece")
        acc_text = "?" if acc is None else f"{acc:.4f}"
        ece_text = "?" if ece is None else f"{ece:.4f}"
        mark = "*" if v.version == latest else " "
        created = v.metadata.get("created_at", "?")
        print(f"{mark} {v.version}  created {created}  holdout accuracy {acc_text}  ECE {ece_text}")
        for source in v.metadata.get("sources", []):
            print(f"    {_describe_source(source)}")
    if not versions:
        print(f"no versions in {registry.uri}")
    return 0


def _describe_source(source: dict) -> str:
    """One line of a model's provenance (train.py's metadata["sources"])."""
    acc = source.get("held_out_accuracy")
    score = "" if acc is None else f", held-out accuracy {acc:.4f}"
    skipped = f", {source['skipped']} unreadable skipped" if source.get("skipped") else ""
    return (
        f"learnt from {source['kind']} {source['name']}: {source['count']} digits "
        f"({source.get('train', '?')} trained, {source.get('held_out', '?')} held out{score}{skipped}), "
        f"sha256 {source['sha256'][:16]}"
    )


def register_reload(subparsers) -> None:
    p = subparsers.add_parser("reload", help="move every running worker to VERSION (needs REDIS_URL)")
    p.add_argument("version")
    p.add_argument("--timeout", type=float, default=120.0)
    p.set_defaults(handler=cmd_reload)


def cmd_reload(args) -> int:
    # The fleet protocol lives in core (Redis only); imported here so ml itself stays free of it.
    from core.connections import get_redis
    from core.fleet import ReloadError, request_reload

    try:
        result = request_reload(get_redis(), args.version, args.timeout)
    except ReloadError as exc:
        print(f"reload refused: {exc}", file=sys.stderr)
        return 1
    print(f"model {result.previous} -> {result.version} on {len(result.workers)} worker(s)")
    for w in result.workers:
        print(f"  {w['hostname']}: {w.get('model_version')}")
    return 0


def register_feedback(subparsers) -> None:
    p = subparsers.add_parser("feedback", help="the items people labelled (the labelled-data store)")
    actions = p.add_subparsers(dest="action", required=True)
    export = actions.add_parser("export", help="write them as DIR/<digit>/*.png")
    export.add_argument("dir", type=Path)
    export.set_defaults(handler=cmd_feedback_export)


def cmd_feedback_export(args) -> int:
    from core.feedback import export

    counts = export(args.dir)
    per_digit = ", ".join(f"{digit}: {n}" for digit, n in counts.items()) or "none"
    print(f"{sum(counts.values())} labelled item(s) written to {args.dir} ({per_digit})")
    return 0


COMMANDS: list[Callable] = [
    register_train,
    register_evaluate,
    register_predict,
    register_push,
    register_list,
    register_reload,
    register_feedback,
    *candidates.COMMANDS,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ml", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for register in COMMANDS:
        register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)
