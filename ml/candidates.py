"""`python -m ml compare | promote | rollback`: a candidate must not be worse than the current model.

    python -m ml push models/<version> --candidate   # uploaded, latest unchanged
    python -m ml compare <version> --data PATH       # McNemar on the held-out digits; recorded
    python -m ml promote <version> [--force]         # latest -> <version>, fleet reloaded
    python -m ml rollback                            # latest -> the version before

A model is a local version dir or a version in the registry (MODEL_REGISTRY or --registry).
The comparison record lives next to the version in the registry (core/promotion.py), so the
API's /admin promote route can check it without scikit-learn.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def _registry_arg(p) -> None:
    p.add_argument("--registry", default=None, help="s3://bucket/prefix (default $MODEL_REGISTRY)")


def _registry_uri(given: str | None) -> str | None:
    import os

    return given or os.environ.get("MODEL_REGISTRY") or None


def _load(ref: str, registry_uri: str | None):
    """A DigitModel from a local dir, or from the registry (fetched, verified, trusted)."""
    from ml.artifacts import resolve_local_model_dir
    from ml.model import DigitModel

    if Path(ref).exists():
        return DigitModel.load(resolve_local_model_dir(Path(ref)))
    if not registry_uri:
        raise SystemExit(f"{ref}: no such model dir (set MODEL_REGISTRY to name registry versions)")
    from core.config import get_settings
    from ml.registry import S3Registry
    from ml.trust import ModelTrust

    settings = get_settings()
    registry = S3Registry(registry_uri, settings.model_cache_dir, trust=ModelTrust.from_settings(settings))
    return DigitModel.load(registry.fetch(registry.resolve(ref)))


def _default_against(registry_uri: str | None) -> str:
    from ml.cli import DEFAULT_MODELS_DIR

    if registry_uri:
        from core.promotion import RegistryPointer

        latest = RegistryPointer(registry_uri).latest()
        if latest:
            return latest
    return str(DEFAULT_MODELS_DIR)


def run_compare(candidate_ref: str, against_ref: str | None, specs: list[str], bundled: bool, registry_uri):
    """Compare, print, and record the result in the registry when the candidate is there."""
    from ml.cli import _load_sources
    from ml.compare import compare, describe, held_out_items

    against_ref = against_ref or _default_against(registry_uri)
    candidate = _load(candidate_ref, registry_uri)
    current = _load(against_ref, registry_uri)
    record = compare(candidate, current, held_out_items(_load_sources(specs), bundled))
    print(describe(record))
    if registry_uri:
        from core.promotion import RegistryPointer

        pointer = RegistryPointer(registry_uri)
        if pointer.exists(candidate.version):
            pointer.record_comparison(record)
            print(f"recorded in {pointer.uri}/{candidate.version}/comparison.json")
    return record


def register_compare(subparsers) -> None:
    from ml.cli import _add_data_arguments

    p = subparsers.add_parser("compare", help="candidate vs current model on held-out digits (McNemar)")
    p.add_argument("candidate", help="a model dir, or a version in the registry")
    p.add_argument(
        "--against", default=None, help="model dir or version (default: the registry's latest, else models/)"
    )
    _add_data_arguments(p)
    p.add_argument("--no-bundled", action="store_true", help="leave out the bundled held-out digits")
    p.add_argument("--json", action="store_true", help="print the record as JSON too")
    _registry_arg(p)
    p.set_defaults(handler=cmd_compare)


def cmd_compare(args) -> int:
    record = run_compare(
        args.candidate, args.against, args.data, not args.no_bundled, _registry_uri(args.registry)
    )
    if args.json:
        print(json.dumps(record, indent=2))
    return 0


def register_promote(subparsers) -> None:
    from ml.cli import _add_data_arguments

    p = subparsers.add_parser("promote", help="make a registry version latest and reload the fleet")
    p.add_argument("version")
    p.add_argument("--force", action="store_true", help="promote even if significantly worse (logged)")
    _add_data_arguments(p)
    _switch_args(p)
    p.set_defaults(handler=cmd_promote)


def _switch_args(p) -> None:
    p.add_argument("--no-reload", action="store_true", help="move the pointer only")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for every worker")
    _registry_arg(p)


def _pointer(args):
    from core.promotion import RegistryPointer
    from ml.cli import _registry_uri as required_registry_uri

    return RegistryPointer(required_registry_uri(args.registry))


def cmd_promote(args) -> int:
    from core.promotion import PointerError, PromotionRefused

    pointer = _pointer(args)
    try:
        if not args.force:
            record = pointer.comparison(args.version)
            latest = pointer.latest()
            if latest and (record is None or record.get("against") != latest):
                # No comparison against today's latest: run it now, on the bundled held-out
                # digits and any --data, and record it (the check below reads it).
                run_compare(args.version, latest, args.data, True, pointer.uri)
        pointer.allow(args.version, force=args.force)
        if not args.no_reload and _reload(args.version, args.timeout):
            return 1  # the fleet refused it: latest stays where it was
        previous = pointer.move_latest(args.version)
    except PromotionRefused as exc:
        print(f"promote refused: {exc}", file=sys.stderr)
        return 1
    except PointerError as exc:
        print(f"promote failed: {exc}", file=sys.stderr)
        return 1
    if args.force:
        log.warning("promote --force: %s -> %s", previous, args.version)
        print(f"forced: {args.version} promoted without its comparison check (logged)", file=sys.stderr)
    print(f"latest: {previous} -> {args.version}")
    return 0


def register_rollback(subparsers) -> None:
    p = subparsers.add_parser("rollback", help="latest back to the previous version; reload the fleet")
    _switch_args(p)
    p.set_defaults(handler=cmd_rollback)


def cmd_rollback(args) -> int:
    from core.promotion import PointerError

    pointer = _pointer(args)
    try:
        target = pointer.previous()
        if not args.no_reload and _reload(target, args.timeout):
            return 1
        result = pointer.rollback()
    except PointerError as exc:
        print(f"rollback failed: {exc}", file=sys.stderr)
        return 1
    print(f"latest: {result.previous} -> {result.version}")
    return 0


def _reload(version: str, timeout: float) -> int:
    """Move the running workers too; with none running, the pointer alone is the change."""
    import redis

    from core.connections import get_redis
    from core.fleet import ReloadError, point_idle_fleet, request_reload

    try:
        if point_idle_fleet(get_redis(), version):
            print("no live workers: they start on this version")
            return 0
        result = request_reload(get_redis(), version, timeout)
    except ReloadError as exc:
        print(f"fleet not reloaded: {exc}", file=sys.stderr)
        return 1
    except (redis.RedisError, RuntimeError) as exc:
        print(f"fleet not reloaded (Redis: {type(exc).__name__}); workers start on latest", file=sys.stderr)
        return 0
    print(f"fleet: {result.previous} -> {result.version} on {len(result.workers)} worker(s)")
    return 0


COMMANDS = [register_compare, register_promote, register_rollback]
