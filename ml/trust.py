"""Which registry models a worker may unpickle: trust that the bucket's writers cannot forge.

A joblib file is a pickle: loading it runs whatever code it names. The sha256 in metadata.json
only proves the file is the one its metadata describes — and whoever can write the bucket writes
both. So a model from a registry is loaded only if, besides matching its sha256, either

- its metadata carries a valid `signature`, HMAC-SHA256 keyed with MODEL_SIGNING_KEY over the
  canonical JSON of the rest of the metadata (version, sha256, metrics, ...). `python -m ml push`
  signs with the deployer's key; the workers hold the same key, the bucket never does. Any change
  to the metadata (another sha256, another version name) breaks the signature; or
- its sha256 is listed in TRUSTED_MODEL_SHA256, an allow-list in the deployment's settings (for
  deployments that pin exact models and would rather not hand the workers a signing key).

Local model dirs (`models/`, MODEL_URI=./models) are the operator's own files, as trusted as the
code next to them: whoever can write them can edit the code too. They need neither.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ml.artifacts import ModelIntegrityError

SIGNATURE_FIELD = "signature"
SCHEME = "hmac-sha256:"


class UntrustedModelError(ModelIntegrityError):
    """The model matches its metadata, but nothing the deployer controls vouches for it."""


def canonical(metadata: dict) -> bytes:
    """The signed bytes: the metadata without its signature, in one fixed JSON form."""
    unsigned = {k: v for k, v in metadata.items() if k != SIGNATURE_FIELD}
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


@dataclass(frozen=True)
class ModelTrust:
    signing_key: bytes | None = None
    trusted_sha256: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def of(cls, signing_key: str | None, trusted_sha256: Iterable[str] = ()) -> ModelTrust:
        key = signing_key.encode() if signing_key else None
        return cls(key, frozenset(s.lower() for s in trusted_sha256))

    @classmethod
    def from_settings(cls, settings: Any) -> ModelTrust:
        """From core.config.Settings (MODEL_SIGNING_KEY, TRUSTED_MODEL_SHA256); ml imports no core."""
        key = settings.model_signing_key
        return cls.of(key.get_secret_value() if key else None, settings.trusted_model_digests)

    def _mac(self, metadata: dict) -> str:
        assert self.signing_key is not None
        return SCHEME + hmac.new(self.signing_key, canonical(metadata), hashlib.sha256).hexdigest()

    def sign(self, metadata: dict) -> dict:
        """The metadata with its signature (unchanged, unsigned, without a key)."""
        if self.signing_key is None:
            return {k: v for k, v in metadata.items() if k != SIGNATURE_FIELD}
        return {**metadata, SIGNATURE_FIELD: self._mac(metadata)}

    def check(self, metadata: dict, where: str) -> None:
        """Raise UntrustedModelError unless the signature or the allow-list vouches for it.

        Call it after the file was verified against `metadata["sha256"]` and before unpickling.
        """
        sha = str(metadata.get("sha256", "")).lower()
        if sha and sha in self.trusted_sha256:
            return
        given = metadata.get(SIGNATURE_FIELD)
        signed = self.signing_key is not None and isinstance(given, str)
        if signed and hmac.compare_digest(str(given).encode(), self._mac(metadata).encode()):
            return
        if self.signing_key is None:
            why = "MODEL_SIGNING_KEY is not set"
        else:
            why = "its signature does not match MODEL_SIGNING_KEY" if given else "it is unsigned"
        raise UntrustedModelError(
            f"model {metadata.get('version')!r} from {where} is not trusted ({why}, and its sha256 "
            f"{sha[:12]}... is not in TRUSTED_MODEL_SHA256); it was not loaded. Push it with "
            "`python -m ml push` and MODEL_SIGNING_KEY set, or list its sha256 in TRUSTED_MODEL_SHA256"
        )
