"""The registry's `latest` pointer with its history, and the comparison records that gate it.

Objects under `s3://BUCKET/PREFIX/` (ml/registry.py writes the versions):

    latest                      # the version the fleet serves by default
    history.json                # earlier `latest` values, oldest first (bounded): rollback's stack
    <version>/comparison.json   # `python -m ml compare`'s verdict of <version> against the
                                # version that was latest then (ml/compare.py)

Promoting a version moves `latest` (pushing the old value on the history) only if its
comparison against the current latest exists and is not significantly worse, unless forced.
boto3 only (no scikit-learn): the API's /admin routes and `python -m ml promote/rollback` both
use it; the comparison itself runs in ml/.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

log = logging.getLogger(__name__)
LATEST_KEY = "latest"
HISTORY_KEY = "history.json"
COMPARISON_FILE = "comparison.json"
METADATA_FILE = "metadata.json"
MAX_HISTORY = 50


class PromotionRefused(Exception):
    """The version may not become latest (no comparison, a stale one, or significantly worse)."""


class PointerError(Exception):
    """The registry could not be read or written (unreachable, denied, no history)."""


class UnknownVersion(PointerError):
    """No such version in the registry."""


def valid_version(version: str) -> str:
    if not version or "/" in version or version.startswith(".") or version == LATEST_KEY:
        raise UnknownVersion(f"invalid model version name {version!r}")
    return version


@dataclass(frozen=True)
class Promotion:
    version: str
    previous: str | None
    forced: bool = False


class RegistryPointer:
    """`latest`, `history.json` and the comparison records of one registry (s3://bucket/prefix)."""

    def __init__(self, uri: str, client: Any = None) -> None:
        import boto3
        from botocore.config import Config

        url = urlparse(uri)
        if url.scheme != "s3" or not url.netloc:
            raise PointerError(f"expected s3://bucket/prefix, got {uri!r}")
        self.uri = uri.rstrip("/")
        self.bucket, self.prefix = url.netloc, url.path.strip("/")
        config = Config(connect_timeout=3, read_timeout=30, retries={"max_attempts": 2, "mode": "standard"})
        self.s3 = client or boto3.client("s3", config=config)

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def _get(self, key: str) -> bytes | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self.s3.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return None
            raise PointerError(f"{self.uri}/{key}: {exc}") from None
        except BotoCoreError as exc:
            raise PointerError(f"{self.uri}/{key}: {exc}") from None

    def _put(self, key: str, body: bytes, content_type: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.s3.put_object(Bucket=self.bucket, Key=self._key(key), Body=body, ContentType=content_type)
        except (ClientError, BotoCoreError) as exc:
            raise PointerError(f"{self.uri}/{key}: {exc}") from None

    def latest(self) -> str | None:
        raw = self._get(LATEST_KEY)
        return raw.decode().strip() if raw else None

    def history(self) -> list[str]:
        raw = self._get(HISTORY_KEY)
        return list(json.loads(raw)) if raw else []

    def exists(self, version: str) -> bool:
        return self._get(f"{valid_version(version)}/{METADATA_FILE}") is not None

    def comparison(self, version: str) -> dict | None:
        raw = self._get(f"{valid_version(version)}/{COMPARISON_FILE}")
        return json.loads(raw) if raw else None

    def record_comparison(self, record: dict) -> None:
        body = (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()
        self._put(f"{valid_version(record['candidate'])}/{COMPARISON_FILE}", body, "application/json")

    def check(self, version: str) -> dict:
        """The comparison that allows `version` to replace the current latest; PromotionRefused
        if there is none against the current latest, or it found `version` significantly worse."""
        current = self.latest()
        record = self.comparison(version)
        if record is None:
            raise PromotionRefused(
                f"{version} has no comparison record: run `python -m ml compare {version}` first (or force)"
            )
        if current is not None and record.get("against") != current:
            raise PromotionRefused(
                f"{version} was compared against {record.get('against')}, but latest is now {current}: "
                f"compare again (or force)"
            )
        if record.get("verdict") == "worse":
            raise PromotionRefused(
                f"{version} is significantly worse than {record.get('against')} on "
                f"{record.get('items')} held-out digits (McNemar p = {record.get('p_value'):.3g}; "
                f"{record.get('candidate_accuracy'):.4f} vs {record.get('against_accuracy'):.4f}); "
                "force to promote anyway"
            )
        return record

    def allow(self, version: str, force: bool = False) -> None:
        """Raise unless `version` may become latest: it must exist, and (unless forced, which
        is logged) pass `check`. Callers reload the fleet next, then `move_latest`."""
        if not self.exists(version):
            raise UnknownVersion(f"{version} is not in {self.uri}")
        if force:
            log.warning("model %s promoted with force: its comparison check was skipped", version)
        else:
            self.check(version)

    def promote(self, version: str, force: bool = False) -> Promotion:
        """`allow`, then move latest to `version`."""
        self.allow(version, force)
        return Promotion(version, self.move_latest(version), force)

    def previous(self) -> str:
        """The version `rollback` would go back to."""
        history = self.history()
        if not history:
            raise PointerError(f"no earlier version to roll back to in {self.uri}")
        return history[-1]

    def move_latest(self, version: str) -> str | None:
        """Point latest at `version`, pushing the old value on the history; returns it."""
        previous = self.latest()
        if previous and previous != version:
            history = (self.history() + [previous])[-MAX_HISTORY:]
            self._put(HISTORY_KEY, json.dumps(history).encode(), "application/json")
        self._put(LATEST_KEY, (version + "\n").encode(), "text/plain")
        return previous

    def rollback(self) -> Promotion:
        """Latest back to the version before it (popped from the history)."""
        history = self.history()
        target = self.previous()
        previous = self.latest()
        self._put(LATEST_KEY, (target + "\n").encode(), "text/plain")
        self._put(HISTORY_KEY, json.dumps(history[:-1]).encode(), "application/json")
        log.warning("model rolled back: %s -> %s", previous, target)
        return Promotion(target, previous)
