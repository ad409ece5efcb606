"""Webhook signing secrets per API key: a job's events are signed with its owner's secret.

With one secret for every tenant, each receiver holds the key that signs every other tenant's
events: tenant A could forge "job succeeded" to B's receiver, and B could point a job at A's
receiver and have the service sign it. So each API key (by its digest, the job's `owner`) has a
secret of its own, `GET /webhook-secret` hands it to that key only, and
`POST /webhook-secret/rotate` replaces it while the old one stays valid for
WEBHOOK_SECRET_GRACE_SECONDS: meanwhile every event carries both signatures, as Standard Webhooks
allows (`webhook-signature: v1,<new> v1,<old>`), so receivers can switch without losing events.

Stored in Redis (`digitq:webhook:secret:<owner>`: current, previous, previous_until), without a
TTL: a secret that expired would silently break its tenant's receivers. Bounded: one small hash
per API key that ever asked for one or submitted a webhook (keys come from API_KEYS only). Random
rather than derived from a master secret: losing Redis then fails closed (new secrets, receivers
refuse) instead of bringing back a secret that a rotation retired.

The open API (no API_KEYS) has one tenant; its secret is WEBHOOK_SECRET, as before.
"""

import time
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property

import redis
from standardwebhooks import Webhook

from core import scripts
from core.config import Settings
from core.webhooks import new_secret, signer

PREFIX = "digitq:webhook:secret:"


class NoSecret(RuntimeError):
    """The event cannot be signed: an open API's job, and no usable WEBHOOK_SECRET."""


@dataclass(frozen=True)
class KeySecrets:
    current: str
    previous: str | None = None
    previous_until: float | None = None  # epoch seconds

    def valid(self, now: float) -> list[str]:
        """The secrets to sign with now: the current one, and the previous one during its grace."""
        keep = self.previous and self.previous_until and now < self.previous_until
        return [self.current, self.previous] if keep else [self.current]  # type: ignore[list-item]


def _text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")


class SigningSecrets:
    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.redis = client
        self.settings = settings
        self._rotate = scripts.register(client, "webhook_secrets_rotate")

    @cached_property
    def _open_signer(self) -> Webhook | None:
        return signer(self.settings)  # logs once if WEBHOOK_SECRET is unusable

    def of(self, owner: str) -> KeySecrets:
        """The owner's secrets, created on first use."""
        key = PREFIX + owner
        self.redis.hsetnx(key, "current", new_secret())
        fields = {_text(k): _text(v) for k, v in self.redis.hgetall(key).items()}
        until = fields.get("previous_until")
        return KeySecrets(fields["current"], fields.get("previous") or None, float(until) if until else None)

    def rotate(self, owner: str) -> KeySecrets:
        """A new current secret; the old one signs too until the grace period ends."""
        until = time.time() + self.settings.webhook_secret_grace_seconds
        self._rotate(keys=[PREFIX + owner], args=[new_secret(), until])
        return self.of(owner)

    def signature(self, owner: str | None, msg_id: str, when: datetime, body: str) -> str:
        """The `webhook-signature` header: one `v1,<sig>` per valid secret, space-separated."""
        if owner is None:  # the open API: one tenant, WEBHOOK_SECRET
            if self._open_signer is None:
                raise NoSecret("no usable WEBHOOK_SECRET on the workers: events cannot be signed")
            return self._open_signer.sign(msg_id, when, body)
        valid = self.of(owner).valid(when.timestamp())
        return " ".join(Webhook(secret).sign(msg_id, when, body) for secret in valid)
