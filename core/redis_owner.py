"""Whose Redis is listening: a client checks the listener's owner before it sends the password.

`make run`'s embedded Redis listens on a loopback port. Should it crash, the supervisor restarts
it on the same port after a backoff; in that gap another local user can listen there and collect
the `AUTH` password every reconnecting client sends (then read and write every job). With
REDIS_LISTENER_UID set (devstack sets it to its own uid for the Redis it starts), a connection to
a loopback Redis first looks the listening socket up in /proc/net/tcp{,6} and refuses (a
ConnectionError, so a 503 and a retry later) unless that uid owns it. Linux only: elsewhere, and
for non-loopback hosts (compose's `redis` service), nothing is checked.

Every Redis client of digitq uses these connection classes: core/connections.py, core/queue.py
(the broker, kombu's channels included), api/waiting.py.
"""

import os
from pathlib import Path
from typing import Any

import redis
import redis.asyncio

from core.config import get_settings, is_loopback

LISTEN = "0A"  # the TCP state of a listening socket in /proc/net/tcp


def listener_uids(port: int) -> set[int]:
    """The uids owning a listening TCP socket on `port` (any address), from /proc/net/tcp{,6}."""
    uids: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                uids.add(int(fields[7]))
    return uids


def check_listener(host: str, port: int) -> None:
    """Raise redis.ConnectionError if a loopback `host:port` is listened on by another uid than
    REDIS_LISTENER_UID (when set)."""
    expected = get_settings().redis_listener_uid
    if expected is None or not is_loopback(host) or not os.path.exists("/proc/net/tcp"):
        return
    owners = listener_uids(port)
    if owners != {expected}:
        raise redis.ConnectionError(
            f"the listener on {host}:{port} belongs to uid {sorted(owners)}, not {expected} "
            "(REDIS_LISTENER_UID): not sending it the password"
        )


def _checked_connect(connection: redis.Connection) -> None:
    """redis-py's `redis_connect_func`: called once the socket is connected, instead of its
    `on_connect` (which authenticates): check first."""
    check_listener(connection.host, connection.port)
    connection.on_connect()


async def _checked_connect_async(connection: redis.asyncio.Connection) -> None:
    check_listener(connection.host, connection.port)
    await connection.on_connect()


class OwnedConnection(redis.Connection):
    """`connection_class` of every synchronous client (kombu's channels included)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("redis_connect_func", _checked_connect)
        super().__init__(**kwargs)


class AsyncOwnedConnection(redis.asyncio.Connection):
    """`connection_class` of the API's asyncio clients."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("redis_connect_func", _checked_connect_async)
        super().__init__(**kwargs)


def client_options(url: str, asynchronous: bool = False, timeouts: bool = True) -> dict[str, Any]:
    """`from_url` keywords for a digitq Redis client of `url`: the listener check (plain redis://
    only: another scheme keeps its own connection class) and, unless it blocks on reads by design
    (a subscription), the socket timeouts."""
    options: dict[str, Any] = dict(get_settings().redis_timeouts) if timeouts else {}
    if url.startswith("redis://"):
        options["connection_class"] = AsyncOwnedConnection if asynchronous else OwnedConnection
    return options
