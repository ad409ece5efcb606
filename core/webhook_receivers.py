"""At most WEBHOOK_MAX_PER_RECEIVER attempts in flight per receiver (host:port), across every node.

A receiver that answers slowly holds each sender that calls it for up to the attempt's deadline;
without a cap, a few events to it take every sender of every node, and every tenant's events
wait. With it, an event whose receiver is at its cap is put back a moment later (not counted as an
attempt) and the sender moves on.

A slot is a member of `digitq:webhook:receiver:<digest of host:port>`, a sorted set scored by when
the slot lapses: the attempt's lease, renewed with it. A worker that dies holding a slot frees it
when that lease ends; the set expires two leases after its last slot was taken or renewed.
"""

import hashlib
import time

import redis

from core import scripts
from core.config import Settings
from core.webhooks import lease_seconds

PREFIX = "digitq:webhook:receiver:"


def receiver_key(host: str, port: int) -> str:
    """One key per host:port (hashed: a host name may be long)."""
    digest = hashlib.sha256(f"{host.lower()}:{port}".encode()).hexdigest()[:24]
    return PREFIX + digest


class ReceiverSlots:
    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.redis = client
        self.cap = settings.webhook_max_per_receiver
        self.lease = lease_seconds(settings)
        self._take = scripts.register(client, "webhook_receivers_take")
        self._renew = scripts.register(client, "webhook_receivers_renew")

    def take(self, key: str, event_id: str) -> bool:
        """A slot for this event's attempt, or False when the receiver is at its cap."""
        now = time.time()
        args: list[str | float | int] = [now, now + self.lease, event_id, self.cap, int(self.lease * 2000)]
        return self._take(keys=[key], args=args) == 1

    def renew(self, key: str, event_id: str) -> None:
        self._renew(keys=[key], args=[time.time() + self.lease, event_id, int(self.lease * 2000)])

    def give_back(self, key: str, event_id: str) -> None:
        self.redis.zrem(key, event_id)
